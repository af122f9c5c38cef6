//! Compile-time benchmark: a synthetic 10,000-pod / 1,000-policy cluster, 110 pods on the
//! node being compiled (and smaller/larger sizes for the trend). Prints figures; asserts
//! nothing. `cargo bench --bench compile` (or `make bench`).

#[path = "synth/mod.rs"]
mod synth;

use std::time::{Duration, Instant};

use kube_nftpol::compile::compile;
use kube_nftpol::model::Cluster;
use kube_nftpol::render::text;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo test` runs bench targets in test mode with --bench absent; stay quick there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[(usize, usize, usize)] = if quick {
        &[(1_000, 100, 20)]
    } else {
        &[(1_000, 100, 20), (10_000, 1_000, 100), (50_000, 5_000, 400)]
    };
    println!(
        "{:>7} {:>8} {:>6} | {:>10} {:>12} {:>12} {:>10} | {:>6} {:>5} {:>8} {:>9}",
        "pods",
        "policies",
        "local",
        "convert ms",
        "compile p50",
        "compile max",
        "render ms",
        "chains",
        "sets",
        "elements",
        "nft bytes"
    );
    for &(pods, policies, namespaces) in sizes {
        let s = synth::generate(&synth::Params {
            pods,
            policies,
            namespaces,
            local_pods: 110,
            seed: 42,
        });
        let t = Instant::now();
        let (cluster, diags) = Cluster::from_objects(s.objects.clone());
        let convert = t.elapsed();
        assert!(
            diags.is_empty(),
            "synthetic cluster is valid: {:?}",
            diags.first()
        );
        let runs = if quick { 3 } else { 21 };
        let mut times = Vec::new();
        let mut compiled = None;
        for _ in 0..runs {
            let t = Instant::now();
            let c = compile(&cluster, &s.node);
            times.push(t.elapsed());
            compiled = Some(c);
        }
        let Some(compiled) = compiled else { return };
        let max = times.iter().max().copied().unwrap_or_default();
        let t = Instant::now();
        let rendered = text::render(&compiled.ruleset);
        let render = t.elapsed();
        let rs = &compiled.ruleset;
        let elements: usize = rs.sets.values().map(|s| s.elements.len()).sum::<usize>()
            + rs.maps.values().map(|m| m.elements.len()).sum::<usize>();
        let local = cluster
            .pods()
            .filter(|p| p.node_name.as_deref() == Some(&s.node))
            .count();
        println!(
            "{pods:>7} {policies:>8} {local:>6} | {:>10.1} {:>12.2} {:>12.2} {:>10.2} | {:>6} {:>5} {:>8} {:>9}",
            ms(convert), ms(median(times)), ms(max), ms(render), rs.chains.len(), rs.sets.len(), elements, rendered.len()
        );
    }
}
