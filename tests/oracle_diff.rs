//! Differential test: the compiled per-node rulesets (`explain::NodeRulesets::flow`) against
//! the independent spec oracle (`tests/support/oracle.rs`) on seeded random clusters.
//!
//! `ORACLE_CLUSTERS` (default 10000) clusters from seed `ORACLE_SEED` (default below) on. On
//! the first disagreement the cluster is shrunk and the test fails with the seed, the minimal
//! manifest, the probe, both answers and the FlowVerdict. Replay one cluster with
//! `ORACLE_SEED=<seed> ORACLE_CLUSTERS=1 cargo test --test oracle_diff -- --nocapture`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kube_nftpol::compile::Options;
use kube_nftpol::explain::NodeRulesets;
use kube_nftpol::model::{Cluster, Object, Protocol};
use kube_nftpol::ruleset::Match;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use support::gen::{self, Generated, Probe};
use support::oracle::{self, Oracle, World};
use support::Proto;

const DEFAULT_SEED: u64 = 0x6b75_6265_6e66_7400; // "kubenft\0"
const DEFAULT_CLUSTERS: u64 = 10_000;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}"))
        }
    }
}

fn objects(world: &World) -> Vec<Object> {
    let namespaces = world.namespaces.iter().cloned().map(Object::Namespace);
    let pods = world.pods.iter().cloned().map(Object::Pod);
    let policies = world.policies.iter().cloned().map(Object::NetworkPolicy);
    namespaces.chain(pods).chain(policies).collect()
}

fn protocol(proto: Proto) -> Protocol {
    match proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
        Proto::Sctp => Protocol::Sctp,
    }
}

/// What went wrong on one cluster.
struct Disagreement {
    probe: Option<Probe>,
    oracle: Option<bool>,
    product: String,
}

#[derive(Default)]
struct Tally {
    clusters: u64,
    probes: u64,
    allowed: u64,
    denied: u64,
    features: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.clusters += other.clusters;
        self.probes += other.probes;
        self.allowed += other.allowed;
        self.denied += other.denied;
        for (k, v) in other.features {
            *self.features.entry(k).or_default() += v;
        }
    }
}

/// Runs every probe through both sides; the first disagreement, or a panic of the product.
fn check(g: &Generated, tally: &mut Tally) -> Option<Disagreement> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let (cluster, _diagnostics) = Cluster::from_objects(objects(&g.world));
        // Every other cluster in the shape kernels with intervals in concatenations get.
        let options = Options {
            concat_ports: g.seed % 2 == 1,
            ..Options::default()
        };
        let nodes = NodeRulesets::compile_with(&cluster, &options);
        let oracle = Oracle::new(&g.world);
        let (mut allowed, mut denied) = (0, 0);
        for &(src, dst, proto, port) in &g.probes {
            let expected = oracle.allowed(src, dst, proto, port);
            let verdict = nodes.flow(src, dst, protocol(proto), port);
            if verdict.allowed != expected {
                return Err(Disagreement {
                    probe: Some((src, dst, proto, port)),
                    oracle: Some(expected),
                    product: format!("{verdict:#?}"),
                });
            }
            if expected {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
        let concat_rules = nodes
            .rulesets
            .values()
            .flat_map(|rs| rs.chains.values())
            .flat_map(|c| c.rules.iter())
            .filter(|r| r.matches.iter().any(|m| matches!(m, Match::ProtoPorts(_))))
            .count();
        Ok((allowed, denied, concat_rules))
    }));
    match outcome {
        Ok(Ok((allowed, denied, concat_rules))) => {
            if concat_rules > 0 {
                *tally
                    .features
                    .entry("concatenated port match (compiled)")
                    .or_default() += 1;
            }
            tally.clusters += 1;
            tally.probes += allowed + denied;
            tally.allowed += allowed;
            tally.denied += denied;
            for what in gen::features(g) {
                *tally.features.entry(what).or_default() += 1;
            }
            None
        }
        Ok(Err(disagreement)) => Some(disagreement),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".to_string());
            Some(Disagreement {
                probe: None,
                oracle: None,
                product: format!("the product panicked: {message}"),
            })
        }
    }
}

fn fails(g: &Generated) -> bool {
    check(g, &mut Tally::default()).is_some()
}

fn report(g: &Generated) -> String {
    let minimal = {
        // Shrinking provokes more panics when the product panics; keep them quiet.
        let hook = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let minimal = gen::shrink(g, fails);
        panic::set_hook(hook);
        minimal
    };
    let found = check(g, &mut Tally::default());
    let shrunk = check(&minimal, &mut Tally::default());
    let describe = |d: &Option<Disagreement>| match d {
        None => "(no disagreement on replay: flaky?)".to_string(),
        Some(d) => {
            let probe = match d.probe {
                Some((src, dst, proto, port)) => {
                    format!("{src} -> {dst} {}/{port}", proto.k8s_name())
                }
                None => "(no probe: panic)".to_string(),
            };
            let oracle = match d.oracle {
                Some(true) => "allowed",
                Some(false) => "denied",
                None => "-",
            };
            format!("probe: {probe}\noracle: {oracle}\nproduct: {}", d.product)
        }
    };
    let diagnostics = {
        let (_, diagnostics) = Cluster::from_objects(objects(&minimal.world));
        format!("{diagnostics:#?}")
    };
    format!(
        "oracle and product disagree on seed {seed} (replay: ORACLE_SEED={seed} \
         ORACLE_CLUSTERS=1)\n\
         == first disagreement in the full cluster ==\n{full}\n\
         == minimal cluster ==\n{yaml}\n\
         == on the minimal cluster ==\n{small}\n\
         == diagnostics of the minimal cluster ==\n{diagnostics}",
        seed = g.seed,
        full = describe(&found),
        yaml = gen::to_yaml(&minimal),
        small = describe(&shrunk),
    )
}

#[test]
fn compiled_rulesets_agree_with_the_spec_oracle() {
    let base = env_u64("ORACLE_SEED", DEFAULT_SEED);
    let count = env_u64("ORACLE_CLUSTERS", DEFAULT_CLUSTERS);
    assert!(count > 0, "ORACLE_CLUSTERS must be positive");
    println!(
        "oracle_diff: seeds {base}..{} ({count} clusters)",
        base.wrapping_add(count)
    );
    let started = Instant::now();

    // Seeds are dealt round-robin to the workers; each stops past the lowest failing seed
    // found so far, so the failure reported is always the lowest failing seed.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let first_failure = AtomicU64::new(u64::MAX);
    let mut tally = Tally::default();
    let failures: Vec<Generated> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.min(count))
            .map(|worker| {
                let first_failure = &first_failure;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let mut failure = None;
                    let mut offset = worker;
                    while offset < count && offset < first_failure.load(Ordering::SeqCst) {
                        let g = gen::cluster(base.wrapping_add(offset));
                        if check(&g, &mut tally).is_some() {
                            first_failure.fetch_min(offset, Ordering::SeqCst);
                            failure = Some(g);
                            break;
                        }
                        offset += workers;
                    }
                    (tally, failure)
                })
            })
            .collect();
        let mut failures = Vec::new();
        for handle in handles {
            let (t, failure) = handle.join().expect("worker thread");
            tally.add(t);
            failures.extend(failure);
        }
        failures
    });
    let seconds = started.elapsed().as_secs_f64();

    if let Some(lowest) = failures.iter().min_by_key(|g| g.seed.wrapping_sub(base)) {
        panic!("{}", report(lowest));
    }

    println!(
        "oracle_diff: {} clusters, {} probes, {} allowed, {} denied, {seconds:.1}s",
        tally.clusters, tally.probes, tally.allowed, tally.denied
    );

    // The test must not pass vacuously: both answers in numbers, every feature generated.
    assert_eq!(tally.clusters, count);
    assert!(
        tally.allowed * 10 >= tally.probes && tally.denied * 10 >= tally.probes,
        "answers too one-sided: {} allowed, {} denied of {}",
        tally.allowed,
        tally.denied,
        tally.probes
    );
    if count >= 1000 {
        // In 2000 clusters each feature shows up in at least 120 (about 6%); ask for 2%.
        let wanted = count / 50;
        for what in gen::FEATURES
            .iter()
            .copied()
            .chain(["concatenated port match (compiled)"])
        {
            let n = tally.features.get(what).copied().unwrap_or(0);
            assert!(
                n >= wanted,
                "feature {what:?} in only {n} of {count} clusters"
            );
        }
    }
}

/// The objects that must get a diagnostic (`Kind namespace/name`), by the oracle's reading,
/// and the objects that may (any bad field at all).
fn expected_reports(world: &World) -> (BTreeSet<String>, BTreeSet<String>) {
    let key = |kind: &str, meta: &ObjectMeta| {
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        format!("{kind} {namespace}/{}", meta.name.as_deref().unwrap_or(""))
    };
    let oracle = Oracle::new(world);
    let mut must = BTreeSet::new();
    let mut may = BTreeSet::new();
    for policy in &world.policies {
        if oracle.policy_has_bad_field_that_matters(policy) {
            must.insert(key("NetworkPolicy", &policy.metadata));
        }
        if !oracle::policy_is_valid(policy) {
            may.insert(key("NetworkPolicy", &policy.metadata));
        }
    }
    for pod in &world.pods {
        if oracle::pod_has_reportable_bad_field(pod) {
            must.insert(key("Pod", &pod.metadata));
        }
        // Pods may be reported beyond where it matters (a finished pod's bad port, say).
        if oracle::pod_has_any_bad_field(pod) {
            may.insert(key("Pod", &pod.metadata));
        }
    }
    (must, may)
}

/// The objects the product reported on.
fn reported(world: &World) -> (BTreeSet<String>, Vec<String>) {
    let (cluster, diagnostics) = Cluster::from_objects(objects(world));
    let nodes = NodeRulesets::compile(&cluster);
    let lines: Vec<String> = diagnostics
        .iter()
        .chain(&nodes.diagnostics)
        .map(|d| d.to_string())
        .collect();
    let objects = lines
        .iter()
        .map(|line| line.split(": ").next().unwrap_or(line).to_string())
        .collect();
    (objects, lines)
}

/// "Bad fields are reported as a diagnostic naming `Kind namespace/name`": every object with
/// a bad field that changes enforcement gets one, and no object without a bad field does.
#[test]
fn bad_fields_are_reported_and_only_they() {
    let base = env_u64("ORACLE_SEED", DEFAULT_SEED);
    let count = env_u64("ORACLE_CLUSTERS", DEFAULT_CLUSTERS);
    let mismatch = |g: &Generated| {
        let (objects, lines) = reported(&g.world);
        let (must, may) = expected_reports(&g.world);
        let missing: Vec<_> = must.difference(&objects).collect();
        let extra: Vec<_> = objects.difference(&may).collect();
        (!missing.is_empty() || !extra.is_empty()).then(|| {
            format!("missing: {missing:?}\nunexpected: {extra:?}\ndiagnostics: {lines:#?}")
        })
    };
    let mut reports = 0;
    for offset in 0..count {
        let g = gen::cluster(base.wrapping_add(offset));
        reports += expected_reports(&g.world).0.len();
        if mismatch(&g).is_some() {
            let minimal = gen::shrink(&g, |g| mismatch(g).is_some());
            panic!(
                "diagnostics differ from the bad fields on seed {seed} (replay: \
                 ORACLE_SEED={seed} ORACLE_CLUSTERS=1)\n{}\n== minimal cluster ==\n{}",
                mismatch(&minimal).unwrap_or_default(),
                gen::to_yaml(&minimal),
                seed = g.seed,
            );
        }
    }
    println!("bad_fields: {count} clusters, {reports} objects with bad fields, all reported");
    assert!(
        count < 100 || reports as u64 >= count / 10,
        "only {reports} bad objects"
    );
}
