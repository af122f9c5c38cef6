//! `compile::Reads`: the daemon skips the compile for a change to another node's pod that no
//! version of which the last ruleset read. Checked here against full compiles on seeded random
//! clusters (`tests/support/gen.rs`): for every pod of another node and every variant of it
//! (deleted, each label rewritten or removed, its address changed), whenever `Reads::sees`
//! says neither version is read, the recompiled ruleset must be equal to the old one.
//!
//! `READS_CLUSTERS` (default 300) clusters from seed `READS_SEED`.

mod support;

use k8s_openapi::api::core::v1::{Pod, PodIP};
use kube_nftpol::compile::compile;
use kube_nftpol::model::{Cluster, Object};
use support::gen;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
        })
        .unwrap_or(default)
}

/// Variants of a pod a watch could deliver next (`None`: deleted).
fn variants(pod: &Pod) -> Vec<(String, Option<Pod>)> {
    let mut out = vec![("deleted".to_string(), None)];
    for (key, values) in gen::POD_VOCAB {
        for value in values.iter() {
            let mut p = pod.clone();
            p.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(key.to_string(), value.to_string());
            if p != *pod {
                out.push((format!("label {key}={value}"), Some(p)));
            }
        }
        let mut p = pod.clone();
        if let Some(labels) = p.metadata.labels.as_mut() {
            if labels.remove(*key).is_some() {
                out.push((format!("label {key} removed"), Some(p)));
            }
        }
    }
    let mut p = pod.clone();
    if let Some(status) = p.status.as_mut() {
        if status.pod_ip.is_some() {
            // An address no generated pod has.
            status.pod_ip = Some("10.99.0.7".to_string());
            status.pod_ips = Some(vec![PodIP {
                ip: "10.99.0.7".to_string(),
            }]);
            out.push(("address changed".to_string(), Some(p)));
        }
    }
    out
}

fn objects(g: &gen::Generated) -> Vec<Object> {
    let w = &g.world;
    let namespaces = w.namespaces.iter().cloned().map(Object::Namespace);
    let pods = w.pods.iter().cloned().map(Object::Pod);
    let policies = w.policies.iter().cloned().map(Object::NetworkPolicy);
    namespaces.chain(pods).chain(policies).collect()
}

#[test]
fn changes_reads_does_not_see_leave_the_ruleset_unchanged() {
    let clusters = env_u64("READS_CLUSTERS", 300);
    let base = env_u64("READS_SEED", 0x7265_6164_7300);
    let (mut skipped, mut seen, mut seen_and_changed) = (0usize, 0usize, 0usize);
    for seed in base..base + clusters {
        let g = gen::cluster(seed);
        let (cluster, _) = Cluster::from_objects(objects(&g));
        for node in &g.nodes {
            let before = compile(&cluster, node);
            for pod in &g.world.pods {
                if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(node) {
                    continue;
                }
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let Some(old) = cluster.pod(&ns, &name) else {
                    continue;
                };
                for (what, variant) in variants(pod) {
                    let mut after_cluster = cluster.clone();
                    match &variant {
                        Some(p) => {
                            after_cluster.apply(&Object::Pod(p.clone()));
                        }
                        None => after_cluster.delete(&Object::Pod(pod.clone()).object_ref()),
                    }
                    let new = after_cluster.pod(&ns, &name);
                    let sees = before.reads.sees(&cluster, node, old)
                        || new.is_some_and(|p| before.reads.sees(&after_cluster, node, p));
                    let after = compile(&after_cluster, node);
                    if sees {
                        seen += 1;
                        if after.ruleset != before.ruleset {
                            seen_and_changed += 1;
                        }
                        continue;
                    }
                    skipped += 1;
                    assert!(
                        after.ruleset == before.ruleset,
                        "seed {seed}, node {node}: pod {ns}/{name} {what} was judged unseen, \
                         but the ruleset changed\nreads: {:?}",
                        before.reads
                    );
                }
            }
        }
    }
    eprintln!(
        "{clusters} clusters: {skipped} changes skipped (ruleset equal, checked), {seen} seen \
         ({seen_and_changed} of them changed the ruleset)"
    );
    // Both answers must occur often, or the test checks nothing.
    assert!(skipped > 1000, "only {skipped} changes were judged unseen");
    assert!(
        seen_and_changed > 1000,
        "only {seen_and_changed} seen changes changed a ruleset"
    );
}
