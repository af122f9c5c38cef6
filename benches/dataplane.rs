//! Dataplane benchmark: synthetic clusters (110 pods on the node under test; sizes below)
//! committed to the kernel in a private network namespace, then the syncs that
//! follow single changes: a replica added on another node and on this node, a pod deleted, a
//! pod relabelled, a policy added, a policy edited. Prints compile and apply times (the
//! apply time is building the transaction through the kernel's last acknowledgement) and
//! what each transaction contained. Asserts nothing. Needs root.
//!
//! `cargo bench --bench dataplane`: (1k pods, 100 policies), (10k, 1k) and (50k, 5k), each in
//! a fresh network namespace. Sizes: `BENCH_SIZES=1000x100,...` or one size with
//! `BENCH_PODS`/`BENCH_POLICIES`; `BENCH_ROUNDS` changes of each kind (30).

#[path = "synth/mod.rs"]
mod synth;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PodIP, PodStatus};
use kube_nftpol::compile::compile;
use kube_nftpol::dataplane::{Applied, Dataplane};
use kube_nftpol::model::{Cluster, Object};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Sample {
    compile: Duration,
    apply: Duration,
    applied: Applied,
}

fn sync(cluster: &Cluster, node: &str, dp: &mut Dataplane) -> Sample {
    let t = Instant::now();
    let compiled = compile(cluster, node);
    let compile_time = t.elapsed();
    let applied = dp
        .apply(compiled.ruleset)
        .unwrap_or_else(|e| panic!("apply: {e}"));
    Sample {
        compile: compile_time,
        apply: applied.elapsed,
        applied,
    }
}

fn report(what: &str, samples: &[Sample]) {
    let pct = |mut v: Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let compile: Vec<Duration> = samples.iter().map(|s| s.compile).collect();
    let apply: Vec<Duration> = samples.iter().map(|s| s.apply).collect();
    let last = &samples[samples.len() - 1].applied;
    let s = last.summary;
    println!(
        "{what:<28} {:>4} | compile p50 {:>7.2} ms p99 {:>7.2} | apply p50 {:>7.2} ms p99 {:>7.2} | {:<11} msgs {:>5} bytes {:>8} +el {:>5} -el {:>5} chains {:>3} rules {:>4}",
        samples.len(),
        ms(pct(compile.clone(), 0.5)),
        ms(pct(compile, 0.99)),
        ms(pct(apply.clone(), 0.5)),
        ms(pct(apply, 0.99)),
        last.kind.as_str(),
        last.sent.messages,
        last.sent.bytes,
        s.elements_added,
        s.elements_deleted,
        s.chains_rewritten,
        s.rules_added,
    );
}

fn with_ip(mut pod: k8s_openapi::api::core::v1::Pod, name: &str, ip: &str) -> Object {
    pod.metadata.name = Some(name.to_string());
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.pod_ip = Some(ip.to_string());
    status.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
    Object::Pod(pod)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` builds bench targets; only `cargo bench` runs this.
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        println!("dataplane bench: skipped (needs root to create a private network namespace)");
        return;
    }
    let rounds = env("BENCH_ROUNDS", 30);
    for (pods, policies) in sizes() {
        // A fresh network namespace per size: the thread unshares its own.
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            run(pods, policies, rounds);
        })
        .join()
        .expect("bench thread");
        println!();
    }
}

/// `BENCH_SIZES` (`pods x policies`, comma-separated), or `BENCH_PODS`/`BENCH_POLICIES` for
/// one size; by default the three sizes of BENCHMARKS.md.
fn sizes() -> Vec<(usize, usize)> {
    if std::env::var_os("BENCH_PODS").is_some() || std::env::var_os("BENCH_POLICIES").is_some() {
        return vec![(env("BENCH_PODS", 10_000), env("BENCH_POLICIES", 1_000))];
    }
    let text = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000x100,10000x1000,50000x5000".to_string());
    text.split(',')
        .map(|size| {
            let parsed = size
                .trim()
                .split_once('x')
                .and_then(|(p, q)| Some((p.parse().ok()?, q.parse().ok()?)));
            parsed.unwrap_or_else(|| panic!("BENCH_SIZES: {size:?} is not PODSxPOLICIES"))
        })
        .collect()
}

fn run(pods: usize, policies: usize, rounds: usize) {
    let s = synth::generate(&synth::Params {
        pods,
        policies,
        namespaces: (pods / 100).max(10),
        local_pods: 110,
        seed: 42,
    });
    let node = s.node.clone();
    let local: Vec<k8s_openapi::api::core::v1::Pod> = s
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p)
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()) =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect();
    let remote: Vec<k8s_openapi::api::core::v1::Pod> = s
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p)
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node.as_str()) =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect();
    let policy_objects: Vec<k8s_openapi::api::networking::v1::NetworkPolicy> = s
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let (mut cluster, _) = Cluster::from_objects(s.objects);
    let mut dp = Dataplane::new().expect("netlink");
    println!("cluster: {pods} pods, {policies} policies, {} local pods on {node}; {rounds} rounds per change", local.len());

    let full: Vec<Sample> = (0..3)
        .map(|_| {
            dp.force_full("bench");
            sync(&cluster, &node, &mut dp)
        })
        .collect();
    report("full apply", &full);

    let mut next_ip = 0u32;
    let mut fresh_ip = || {
        next_ip += 1;
        format!("10.250.{}.{}", next_ip / 250, 1 + next_ip % 250)
    };
    let mut samples = Vec::new();
    for i in 0..rounds {
        let template = remote[i % remote.len()].clone();
        cluster.apply(&with_ip(
            template,
            &format!("bench-remote-{i}"),
            &fresh_ip(),
        ));
        samples.push(sync(&cluster, &node, &mut dp));
    }
    report("replica added (other node)", &samples);

    let mut samples = Vec::new();
    for i in 0..rounds {
        let template = local[i % local.len()].clone();
        cluster.apply(&with_ip(template, &format!("bench-local-{i}"), &fresh_ip()));
        samples.push(sync(&cluster, &node, &mut dp));
    }
    report("replica added (this node)", &samples);

    let mut samples = Vec::new();
    for i in 0..rounds {
        let gone = Object::Pod(remote[i % remote.len()].clone()).object_ref();
        cluster.delete(&gone);
        samples.push(sync(&cluster, &node, &mut dp));
    }
    report("pod deleted", &samples);

    let mut samples = Vec::new();
    for i in 0..rounds {
        let mut pod = local[(i + 7) % local.len()].clone();
        let donor = remote[(i * 13) % remote.len()].metadata.labels.clone();
        pod.metadata.labels = donor;
        cluster.apply(&Object::Pod(pod));
        samples.push(sync(&cluster, &node, &mut dp));
    }
    report("pod relabelled (this node)", &samples);

    let mut samples = Vec::new();
    for i in 0..rounds {
        let mut p = policy_objects[(i * 17) % policy_objects.len()].clone();
        p.metadata.name = Some(format!("bench-added-{i}"));
        cluster.apply(&Object::NetworkPolicy(p));
        samples.push(sync(&cluster, &node, &mut dp));
    }
    report("policy added", &samples);

    let mut samples = Vec::new();
    for i in 0..rounds {
        let mut p = policy_objects[(i * 31) % policy_objects.len()].clone();
        if let Some(spec) = p.spec.as_mut() {
            for rule in spec.ingress.iter_mut().flatten() {
                rule.ports = Some(vec![k8s_openapi::api::networking::v1::NetworkPolicyPort {
                    port: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                            10_000 + i as i32,
                        ),
                    ),
                    ..Default::default()
                }]);
            }
        }
        cluster.apply(&Object::NetworkPolicy(p));
        samples.push(sync(&cluster, &node, &mut dp));
    }
    report("policy edited", &samples);
}
