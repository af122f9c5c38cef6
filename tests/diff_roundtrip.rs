//! Transactions between random cluster states: `incremental(old, new)` applied to `old` by the
//! fake kernel (which checks references and existence like nf_tables) yields exactly `new`,
//! and so does `full(new)` over any old table. Pairs come from the seeded generator: pods
//! removed, relabelled or moved, policies removed, and unrelated clusters.

mod support;

use std::collections::BTreeSet;

use kube_nftpol::compile::compile;
use kube_nftpol::model::{Cluster, Object};
use kube_nftpol::ruleset::diff::{full, incremental, Fake, Summary};
use kube_nftpol::ruleset::Ruleset;
use support::gen::{self, Rng};
use support::oracle::World;

fn objects(w: &World) -> Vec<Object> {
    let mut out: Vec<Object> = w
        .namespaces
        .iter()
        .cloned()
        .map(Object::Namespace)
        .collect();
    out.extend(w.pods.iter().cloned().map(Object::Pod));
    out.extend(w.policies.iter().cloned().map(Object::NetworkPolicy));
    out
}

fn rulesets(w: &World, nodes: &BTreeSet<String>) -> Vec<Ruleset> {
    let (cluster, _) = Cluster::from_objects(objects(w));
    nodes.iter().map(|n| compile(&cluster, n).ruleset).collect()
}

/// A changed copy of the world, and what kind of change it is.
fn mutate(rng: &mut Rng, w: &World, seed: u64) -> (World, &'static str) {
    let mut m = w.clone();
    match rng.below(5) {
        0 if !m.pods.is_empty() => {
            let i = rng.below(m.pods.len());
            m.pods.remove(i);
            (m, "pod removed")
        }
        1 if m.pods.len() > 1 => {
            let i = rng.below(m.pods.len());
            let j = rng.below(m.pods.len());
            let labels = m.pods[j].metadata.labels.clone();
            m.pods[i].metadata.labels = labels;
            (m, "pod relabelled")
        }
        2 if !m.policies.is_empty() => {
            let i = rng.below(m.policies.len());
            m.policies.remove(i);
            (m, "policy removed")
        }
        3 if !m.namespaces.is_empty() => {
            let i = rng.below(m.namespaces.len());
            m.namespaces[i].metadata.labels = None;
            (m, "namespace relabelled")
        }
        _ => (gen::cluster(seed ^ 0x5a5a_5a5a).world, "another cluster"),
    }
}

#[test]
fn incremental_and_full_transactions_reach_the_desired_ruleset() {
    let clusters: u64 = std::env::var("DIFF_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut pairs = 0;
    let mut elements_only = 0;
    let mut kinds = std::collections::BTreeMap::new();
    for seed in 0..clusters {
        let g = gen::cluster(seed);
        let mut rng = Rng::new(seed.wrapping_mul(31));
        let (changed, kind) = mutate(&mut rng, &g.world, seed);
        *kinds.entry(kind).or_insert(0) += 1;
        let mut nodes: BTreeSet<String> = g.nodes.iter().cloned().collect();
        nodes.extend(["node-a", "node-b", "node-c"].map(String::from));
        let before = rulesets(&g.world, &nodes);
        let after = rulesets(&changed, &nodes);
        for (old, new) in before.iter().zip(&after) {
            pairs += 1;
            let ops = incremental(old, new)
                .unwrap_or_else(|e| panic!("seed {seed} ({kind}): needs full: {e:?}"));
            if Summary::of(&ops).elements_only() {
                elements_only += 1;
            }
            let mut fake = Fake {
                table: Some(old.clone()),
            };
            if let Err(e) = fake.commit(&ops) {
                panic!("seed {seed} ({kind}): the kernel would reject the incremental transaction: {e}");
            }
            assert!(
                fake.table.as_ref() == Some(new),
                "seed {seed} ({kind}): incremental result differs from the desired ruleset"
            );
            let mut fake = Fake {
                table: Some(old.clone()),
            };
            fake.commit(&full(new))
                .unwrap_or_else(|e| panic!("seed {seed}: full replace rejected: {e}"));
            assert!(
                fake.table.as_ref() == Some(new),
                "seed {seed}: full replace differs"
            );
        }
    }
    println!("diff round trip: {pairs} ruleset pairs, {elements_only} element-only transactions, changes {kinds:?}");
    assert!(
        elements_only > pairs / 10,
        "too few element-only changes to mean anything: {elements_only}/{pairs}"
    );
}
