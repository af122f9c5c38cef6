//! The compiler's structural promises (rules/README.md, "Goals that shape it"), checked on
//! small clusters. Semantics are covered by the golden scenarios and the oracle test.

use std::path::Path;

use super::*;
use crate::model::Object;
use crate::sources::manifests::parse_file;

fn objects(yaml: &str) -> Vec<Object> {
    let (objects, problems) = parse_file(Path::new("test.yaml"), yaml);
    assert!(problems.is_empty(), "{problems:?}");
    objects
}

fn cluster(yaml: &str) -> Cluster {
    let (c, diags) = Cluster::from_objects(objects(yaml));
    assert!(diags.is_empty(), "{diags:?}");
    c
}

fn pod(ns: &str, name: &str, labels: &str, node: &str, ip: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, ports: [{ports}]}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

const DB_POLICY: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: db, namespace: shop}\n\
    spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: pg}]}]}\n";

fn base() -> String {
    let mut y = String::new();
    y += &pod(
        "shop",
        "db-0",
        "app: db",
        "a",
        "10.0.0.1",
        "{name: pg, containerPort: 5432}",
    );
    y += &pod(
        "shop",
        "db-1",
        "app: db",
        "a",
        "10.0.0.2",
        "{name: pg, containerPort: 5432}",
    );
    y += &pod("shop", "api-0", "app: api", "b", "10.0.1.1", "");
    y += DB_POLICY;
    y
}

/// Names of sets, maps and chains, and every chain's rules: what pod churn must not touch.
fn structure(rs: &Ruleset) -> (Vec<String>, Vec<String>, BTreeMap<String, Chain>) {
    (
        rs.sets.keys().cloned().collect(),
        rs.maps.keys().cloned().collect(),
        rs.chains.clone(),
    )
}

#[test]
fn replicas_share_one_target_chain() {
    let rs = compile(&cluster(&base()), "a").ruleset;
    let targets: Vec<&String> = rs
        .chains
        .iter()
        .filter(|(_, c)| c.hook.is_none())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let map = &rs.maps[&dispatch_map(Direction::Ingress, Family::V4)];
    assert_eq!(map.elements.len(), 2);
    assert!(map.elements.values().all(|c| c == targets[0]));
    assert!(
        rs.maps[&dispatch_map(Direction::Egress, Family::V4)]
            .elements
            .is_empty(),
        "not isolated for egress"
    );
}

#[test]
fn pod_churn_changes_elements_only() {
    let before = compile(&cluster(&base()), "a").ruleset;
    let variants = [
        // A peer pod appears (also an IPv6 one, in a family that had no pods).
        base() + &pod("shop", "api-1", "app: api", "a", "10.0.0.9", ""),
        base() + &pod("shop", "api-6", "app: api", "b", "fd00::9", ""),
        // A replica appears on this node.
        base()
            + &pod(
                "shop",
                "db-2",
                "app: db",
                "a",
                "10.0.0.3",
                "{name: pg, containerPort: 5432}",
            ),
        // A peer is relabelled out of the selector.
        base().replace(
            "name: api-0, namespace: shop, labels: {app: api}",
            "name: api-0, namespace: shop, labels: {app: old}",
        ),
        // A replica disappears.
        pod(
            "shop",
            "db-0",
            "app: db",
            "a",
            "10.0.0.1",
            "{name: pg, containerPort: 5432}",
        ) + &pod("shop", "api-0", "app: api", "b", "10.0.1.1", "")
            + DB_POLICY,
    ];
    for (i, yaml) in variants.iter().enumerate() {
        let after = compile(&cluster(yaml), "a").ruleset;
        assert_ne!(after, before, "variant {i} changes something");
        assert_eq!(
            structure(&after),
            structure(&before),
            "variant {i}: only elements may change"
        );
    }
}

#[test]
fn a_policy_edit_rewrites_only_its_own_chains() {
    let other = pod("web", "front", "app: front", "a", "10.0.0.50", "")
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: web}\nspec: {podSelector: {}}\n";
    let before = compile(&cluster(&(base() + &other)), "a").ruleset;
    let edited =
        base().replace("ports: [{port: pg}]", "ports: [{port: pg}, {port: 9187}]") + &other;
    let after = compile(&cluster(&edited), "a").ruleset;
    let changed: Vec<&String> = before
        .chains
        .iter()
        .filter(|(n, c)| after.chains.get(*n) != Some(c))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(changed.len(), 1, "only the db chain changes: {changed:?}");
    assert!(
        changed[0].starts_with("ing-") && changed[0].contains("shop/db"),
        "{changed:?}"
    );
    assert_eq!(
        before.chains.keys().collect::<Vec<_>>(),
        after.chains.keys().collect::<Vec<_>>(),
        "names are stable"
    );
    assert_eq!(
        before.sets.keys().collect::<Vec<_>>(),
        after.sets.keys().collect::<Vec<_>>()
    );
}

#[test]
fn names_do_not_depend_on_unrelated_objects() {
    let a = compile(&cluster(&base()), "a").ruleset;
    let noise = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: aaa, namespace: elsewhere}\n\
                 spec: {podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]}\n";
    let b = compile(&cluster(&(noise.to_string() + &base())), "a").ruleset;
    assert_eq!(
        a, b,
        "a policy selecting nothing on this node changes nothing"
    );
}

#[test]
fn ingress_named_ports_resolve_per_target_and_split_chains() {
    let y = base().replace("name: db-1, namespace: shop, labels: {app: db}}\nspec: {nodeName: a, containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}",
        "name: db-1, namespace: shop, labels: {app: db}}\nspec: {nodeName: a, containers: [{name: c, ports: [{name: pg, containerPort: 6432}]}]}");
    let rs = compile(&cluster(&y), "a").ruleset;
    let targets: Vec<&Chain> = rs.chains.values().filter(|c| c.hook.is_none()).collect();
    assert_eq!(targets.len(), 2, "different resolutions, different chains");
    let ports: BTreeSet<u16> = targets
        .iter()
        .flat_map(|c| c.rules.iter())
        .flat_map(|r| r.matches.iter())
        .filter_map(|m| match m {
            Match::Dport(r) => Some(r.iter().map(|r| r.first).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(ports, BTreeSet::from([5432, 6432]));
}

#[test]
fn an_unresolved_named_port_allows_nothing_rather_than_everything() {
    let y = base().replace(
        "{name: pg, containerPort: 5432}",
        "{name: other, containerPort: 5432}",
    );
    let rs = compile(&cluster(&y), "a").ruleset;
    let chain = rs
        .chains
        .values()
        .find(|c| c.hook.is_none())
        .expect("db is isolated");
    assert_eq!(
        chain.rules.len(),
        1,
        "only the final drop: {:?}",
        chain.rules
    );
    assert_eq!(chain.rules[0].action, Action::Drop);
}

#[test]
fn two_pods_claiming_one_address_are_reported_and_the_first_keeps_it() {
    let y = base()
        + &pod("shop", "zombie", "app: other", "a", "10.0.0.1", "")
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: z, namespace: shop}\nspec: {podSelector: {matchLabels: {app: other}}}\n";
    let compiled = compile(&cluster(&y), "a");
    assert_eq!(compiled.diagnostics.len(), 1, "{:?}", compiled.diagnostics);
    assert_eq!(compiled.diagnostics[0].object.name, "zombie");
    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
    let chain = &compiled.ruleset.maps[&dispatch_map(Direction::Ingress, Family::V4)].elements[&ip];
    assert!(
        chain.contains("shop/db"),
        "db-0 (first by name) keeps its rules: {chain}"
    );
}

#[test]
fn every_compiled_ruleset_validates_and_compiles_identically_twice() {
    let c = cluster(&base());
    let one = compile(&c, "a");
    assert_eq!(one.ruleset.validate(), Ok(()));
    assert_eq!(one.ruleset, compile(&c, "a").ruleset);
}
