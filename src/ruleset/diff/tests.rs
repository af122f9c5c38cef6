use std::path::Path;

use super::*;
use crate::compile::compile;
use crate::model::Cluster;
use crate::sources::manifests::parse_file;

fn ruleset(yaml: &str) -> Ruleset {
    let (objects, problems) = parse_file(Path::new("t.yaml"), yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let (cluster, _) = Cluster::from_objects(objects);
    compile(&cluster, "a").ruleset
}

fn pod(name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns, labels: {{{labels}}}}}\n\
         spec: {{nodeName: a, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
    )
}

const ALLOW_API: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\n\
    spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]}\n";

const DENY_ALL: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: ns}\n\
    spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";

fn applied(old: &Ruleset, ops: &[Op]) -> Ruleset {
    let mut fake = Fake {
        table: Some(old.clone()),
    };
    fake.commit(ops)
        .unwrap_or_else(|e| panic!("{e}\nops: {ops:#?}"));
    fake.table.expect("table exists")
}

#[test]
fn full_replace_builds_the_table_from_nothing_and_from_anything() {
    let a = ruleset(&(pod("db", "app: db", "10.0.0.1") + ALLOW_API));
    let b = ruleset(&(pod("x", "app: x", "10.0.0.9") + DENY_ALL));
    let mut fake = Fake::default();
    fake.commit(&full(&a)).expect("from nothing");
    assert_eq!(fake.table.as_ref(), Some(&a));
    fake.commit(&full(&b)).expect("over another table");
    assert_eq!(fake.table, Some(b));
}

#[test]
fn pod_churn_is_elements_only() {
    let old = ruleset(
        &(pod("db", "app: db", "10.0.0.1") + &pod("api", "app: api", "10.0.0.2") + ALLOW_API),
    );
    let new = ruleset(
        &(pod("db", "app: db", "10.0.0.1")
            + &pod("db2", "app: db", "10.0.0.3")
            + &pod("api2", "app: api", "10.0.0.4")
            + ALLOW_API),
    );
    let ops = incremental(&old, &new).expect("incremental");
    let s = Summary::of(&ops);
    assert!(s.elements_only(), "{ops:#?}");
    // Added: api2 to the api peer set, db2 and api2 to self-v4, db2 to ingress-v4.
    // Deleted: api from the peer set and from self-v4.
    assert_eq!((s.elements_added, s.elements_deleted), (4, 2), "{ops:#?}");
    assert_eq!(applied(&old, &ops), new);
}

#[test]
fn policy_change_rewrites_chains_and_unused_objects_go_away() {
    let old = ruleset(&(pod("db", "app: db", "10.0.0.1") + ALLOW_API));
    let new = ruleset(&(pod("db", "app: db", "10.0.0.1") + DENY_ALL));
    let ops = incremental(&old, &new).expect("incremental");
    assert!(
        ops.iter().any(|o| matches!(o, Op::DeleteSet { .. })),
        "the api peer sets are dropped"
    );
    assert!(
        ops.iter().any(|o| matches!(o, Op::DeleteChain { .. })),
        "the old target chain is dropped"
    );
    assert_eq!(applied(&old, &ops), new);
    assert_eq!(incremental(&new, &new).expect("no change"), vec![]);
}

#[test]
fn the_fake_kernel_rejects_what_the_kernel_rejects_and_commits_nothing() {
    let rs = ruleset(&(pod("db", "app: db", "10.0.0.1") + ALLOW_API));
    let set = rs
        .sets
        .keys()
        .find(|n| n.starts_with("pods-v4"))
        .expect("peer set")
        .clone();
    let chain = rs
        .chains
        .keys()
        .find(|n| n.starts_with("ing-"))
        .expect("target chain")
        .clone();
    let cases = vec![
        (vec![Op::DeleteSet { name: set.clone() }], "set in use"),
        (
            vec![
                Op::FlushChain {
                    name: chain.clone(),
                },
                Op::DeleteChain {
                    name: chain.clone(),
                },
            ],
            "jump target",
        ),
        (
            vec![Op::DeleteChain {
                name: chain.clone(),
            }],
            "not empty",
        ),
        (
            vec![Op::AddElements {
                set: "self-v4".into(),
                elements: vec![Element::AddrPair(
                    "10.0.0.1".parse().expect("ip"),
                    "10.0.0.1".parse().expect("ip"),
                )],
            }],
            "exists",
        ),
        (
            vec![Op::AddRule {
                chain: chain.clone(),
                rule: Rule {
                    matches: vec![Match::AddrInSet {
                        field: super::super::AddrField::Saddr,
                        family: Family::V4,
                        set: "nope".into(),
                    }],
                    counter: false,
                    action: Action::Return,
                    origin: None,
                },
            }],
            "missing set",
        ),
        (
            vec![Op::AddMapElements {
                map: "ingress-v4".into(),
                elements: vec![("10.0.0.7".parse().expect("ip"), "nope".into())],
            }],
            "missing chain",
        ),
        (
            vec![
                Op::DeleteTable,
                Op::AddSet {
                    name: "x".into(),
                    set: rs.sets[&set].clone(),
                },
            ],
            "no such table",
        ),
    ];
    for (ops, why) in cases {
        let mut fake = Fake {
            table: Some(rs.clone()),
        };
        let err = fake.commit(&ops).expect_err(why);
        assert!(err.contains(why), "{why}: {err}");
        assert_eq!(fake.table.as_ref(), Some(&rs), "{why}: nothing committed");
    }
}

#[test]
fn changed_definitions_need_a_full_replace() {
    let old = ruleset(&(pod("db", "app: db", "10.0.0.1") + ALLOW_API));
    let mut new = old.clone();
    let set = new.sets.values_mut().next().expect("a set");
    set.comment.push_str(" changed");
    assert!(incremental(&old, &new).is_err());
}
