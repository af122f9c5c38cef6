//! Packet-path benchmark: what enforcing the (10k pods, 1k policies) cluster costs the packets
//! of two pods, measured with real traffic in the netns cluster of `integration/` (two
//! Flannel-like nodes: `cni0` bridge with br_netfilter, `flannel.1` VXLAN).
//!
//! Configurations, measured in the same run and interleaved as finely as switching allows: in
//! every round, each (pair, metric) is measured under all configurations back to back, in an
//! order that rotates, so drift and background load hit all of them alike:
//!
//! - (a) no ruleset at all in the node namespaces;
//! - (a') conntrack only: `ct state established,related accept` + `ct state invalid drop` in
//!   a forward and an input chain, the floor every stateful policy implementation pays
//!   (reference column; `BENCH_CT_BASELINE=0` leaves it out);
//! - (b) kube-nftpol: each node's ruleset compiled by `compile::compile_with` (kernel features
//!   probed as the daemon does) and committed by `dataplane::Dataplane`;
//! - (c) the same policies rendered the classic linear way (one chain per pod, one rule per
//!   allowed peer, one dispatch rule per pod: `packet_path/linear.rs`), loaded with `nft -f`.
//!
//! Metrics (`packet_path/load.rs`): TCP throughput, new TCP connections per second, UDP
//! request/response rate; for a same-node pair (both pods on node-a) and a cross-node pair
//! (client on node-b, server on node-a). Results are medians over the rounds; the ratios to
//! (a) are medians of the per-round ratios (each pairs measurements taken seconds apart).
//! Each round, when a configuration is first switched on, the bench probes the pairs (must
//! connect) and a stranger pod on each node (must be dropped under (b) and (c), must connect
//! without rules): a ruleset that allowed everything would make the figures meaningless. It also
//! checks that (b) and (c) decide alike on thousands of sampled flows, and where the
//! allowing rule of the probed pair is in each (`packet_path/scenario.rs` explains how it is
//! kept from being the first one evaluated).
//!
//! Asserts nothing about the figures. Needs root. `cargo bench --bench packet_path`;
//! `BENCH_SECONDS` (per measurement, default 1), `BENCH_ROUNDS` (default 5),
//! `BENCH_WARMUP` (seconds per configuration, pair and metric before the rounds, default
//! 0.3), `BENCH_METRICS` (a subset of `stream,crr,udp`), `BENCH_CONCAT_PORTS=0|1` ((b)'s port
//! shape; default: what the kernel probe finds, as the daemon does). About 3.5 minutes with the defaults, a third of it loading (c).

#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/cluster.rs"]
mod cluster;
#[path = "packet_path/linear.rs"]
mod linear;
#[path = "packet_path/load.rs"]
mod load;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/netns.rs"]
mod netns;
#[path = "packet_path/scenario.rs"]
mod scenario;
#[path = "packet_path/servers.rs"]
mod servers;
#[allow(dead_code)]
#[path = "synth/mod.rs"]
mod synth;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_nftpol::compile::compile_with;
use kube_nftpol::dataplane::{probe, Dataplane};
use kube_nftpol::model::{Cluster as Model, Direction, Protocol};
use kube_nftpol::ruleset::eval::{eval, Packet};
use kube_nftpol::ruleset::{Action, Hook, Origin, Ruleset};

use cluster::{Cluster, PodNet, NODE_NAMES};
use linear::Linear;
use load::{Metric, Probe, Sample};
use scenario::{
    BenchPod, ALLOWING_EGRESS, ALLOWING_INGRESS, CLIENT, CLIENT_REMOTE, SERVER, STRANGER,
    STRANGER_REMOTE, TCP_CRR_PORT, UDP_RR_PORT,
};

struct Settings {
    metrics: Vec<Metric>,
    seconds: f64,
    rounds: usize,
    warmup: f64,
    ct_baseline: bool,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    None,
    CtOnly,
    Product,
    Linear,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::None => "(a) no ruleset",
            Config::CtOnly => "(a') conntrack",
            Config::Product => "(b) kube-nftpol",
            Config::Linear => "(c) linear",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Config::None => "(a)",
            Config::CtOnly => "(a')",
            Config::Product => "(b)",
            Config::Linear => "(c)",
        }
    }
    /// Does this configuration enforce the policies?
    fn enforces(self) -> bool {
        matches!(self, Config::Product | Config::Linear)
    }
}

/// A probed pair: client → server.
#[derive(Clone, Copy)]
struct Pair {
    label: &'static str,
    client: usize,
    stranger: usize,
}

const PAIRS: [Pair; 2] = [
    Pair {
        label: "same node: bench-client (node-a) -> bench-server (node-a)",
        client: CLIENT,
        stranger: STRANGER,
    },
    Pair {
        label: "cross node: bench-client-remote (node-b) -> bench-server (node-a)",
        client: CLIENT_REMOTE,
        stranger: STRANGER_REMOTE,
    },
];

const CT_TABLE: &str = "knp-ct";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` builds bench targets; only `cargo bench` runs this.
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        println!("packet_path bench: skipped (needs root to build the netns cluster)");
        return;
    }
    let metrics = std::env::var("BENCH_METRICS").unwrap_or_default();
    let settings = Settings {
        metrics: if metrics.trim().is_empty() {
            Metric::ALL.to_vec()
        } else {
            metrics
                .split(',')
                .map(|m| {
                    Metric::parse(m.trim()).unwrap_or_else(|| {
                        panic!("BENCH_METRICS: unknown metric {m:?} (stream, crr, udp)")
                    })
                })
                .collect()
        },
        seconds: env_f64("BENCH_SECONDS", 1.0),
        rounds: env_f64("BENCH_ROUNDS", 5.0).max(1.0) as usize,
        warmup: env_f64("BENCH_WARMUP", 0.3),
        ct_baseline: env_f64("BENCH_CT_BASELINE", 1.0) != 0.0,
    };
    let started = Instant::now();
    let prefix = run(&settings);
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    println!(
        "\ntotal bench time {:.0} s; load average at the end: {}; namespaces of this run left: {}",
        started.elapsed().as_secs_f64(),
        loadavg(),
        if left.is_empty() {
            "none".to_string()
        } else {
            left.join(" ")
        }
    );
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// On SIGINT/SIGTERM/SIGHUP: removes this run's namespaces and scratch directory, then
/// exits (a panic unwinds through the owners' `Drop`s instead; a killed run is cleaned by the
/// next one, `netns::clean_stale`).
fn cleanup_on_signal(prefix: &str) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).expect("signal handlers");
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("signal {signal}: removing the namespaces {prefix}*");
            for name in netns_list().into_iter().filter(|n| n.starts_with(&prefix)) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{prefix}work")));
            std::process::exit(128 + signal);
        }
    });
}

/// Removes the bench's scratch directory, also when unwinding.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn machine() {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "machine: {} CPUs ({cpu}), kernel {}, {nft}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease"),
        loadavg()
    );
}

/// Returns the namespace prefix of this run.
fn run(settings: &Settings) -> String {
    machine();
    netns::prepare_host();

    // The model: synthetic cluster + the real pods and their policies.
    let t = Instant::now();
    let sc = scenario::build();
    let (model, diagnostics) = Model::from_objects(sc.objects.iter().cloned());
    assert!(
        diagnostics.is_empty(),
        "the bench cluster has problems: {diagnostics:?}"
    );
    let pods_total = model.pods().count();
    let policies_total = model.policies().count();
    let per_node: Vec<usize> = NODE_NAMES
        .iter()
        .map(|n| {
            model
                .pods()
                .filter(|p| p.node_name.as_deref() == Some(*n))
                .count()
        })
        .collect();
    println!(
        "cluster: {pods_total} pods, {policies_total} policies, {} namespaces; {} pods on node-a, {} on node-b; bench pods in namespace {} (built in {:.0} ms)",
        model.namespace_names().len(),
        per_node[0],
        per_node[1],
        sc.namespace,
        ms(t.elapsed())
    );

    // The netns cluster and the five real pods.
    let prefix = netns::unique_prefix();
    cleanup_on_signal(&prefix);
    let t = Instant::now();
    let mut cluster = Cluster::new(&prefix, servers::Ports);
    let pods: Vec<PodNet> = sc
        .pods
        .iter()
        .map(|p| cluster.add_pod(p.node, p.host, true, false))
        .collect();
    for (p, net) in sc.pods.iter().zip(&pods) {
        assert_eq!(net.v4, Some(p.v4()), "address of {}", p.name);
    }
    println!(
        "netns cluster {prefix}*: 2 nodes, {} pods (built in {:.0} ms)",
        pods.len(),
        ms(t.elapsed())
    );

    // (b): what the daemon would commit on this kernel.
    let features = cluster.node(0).ns.run(probe::probe).expect("kernel probe");
    let mut options = features.options();
    // BENCH_CONCAT_PORTS=0|1 overrides what the probe found (to compare the two port shapes).
    if let Ok(v) = std::env::var("BENCH_CONCAT_PORTS") {
        options.concat_ports = v == "1";
    }
    let t = Instant::now();
    let product: Vec<Ruleset> = NODE_NAMES
        .iter()
        .map(|node| {
            let compiled = compile_with(&model, node, &options);
            assert!(
                compiled.diagnostics.is_empty(),
                "{:?}",
                compiled.diagnostics
            );
            compiled.ruleset
        })
        .collect();
    println!(
        "\n(b) kube-nftpol: compiled both nodes in {:.0} ms (concat_ports: {})",
        ms(t.elapsed()),
        options.concat_ports
    );
    for (node, rs) in NODE_NAMES.iter().zip(&product) {
        print_product_size(node, rs);
    }

    // (c): the linear rendering; the probed peers' rules last in their chains.
    let t = Instant::now();
    let last: Vec<IpAddr> = [CLIENT, CLIENT_REMOTE, SERVER]
        .iter()
        .map(|i| sc.pods[*i].ip())
        .collect();
    let linear: Vec<Linear> = NODE_NAMES
        .iter()
        .map(|node| linear::build(&model, node, &last))
        .collect();
    println!(
        "\n(c) linear: built both nodes in {:.0} ms",
        ms(t.elapsed())
    );
    for l in &linear {
        println!(
            "  {}: {} rules: {} per-pod chains ({} egress, {} ingress), {} dispatch rules in forward (egress {}, ingress {}), {} in input",
            l.node,
            l.rule_count(),
            l.chains.len(),
            l.chains.iter().filter(|c| c.direction == Direction::Egress).count(),
            l.chains.iter().filter(|c| c.direction == Direction::Ingress).count(),
            l.dispatch_count(Direction::Egress) + l.dispatch_count(Direction::Ingress),
            l.dispatch_count(Direction::Egress),
            l.dispatch_count(Direction::Ingress),
            l.dispatch_count(Direction::Egress),
        );
    }

    // Where the probed pair is allowed, in (b) and (c); the strangers are denied by both.
    println!("\nprobed flows (first packet), evaluated on the rulesets before loading them:");
    explain_pairs(&sc.pods, &sc.namespace, &product, &linear);
    let t = Instant::now();
    let checked = cross_check(&model, &product, &linear);
    println!(
        "  (b) and (c) agree on {checked} sampled new flows through node-a's and node-b's forward hooks ({:.0} ms)",
        ms(t.elapsed())
    );

    // Load (c)'s chains once (without base chains: inert until switched on).
    let work = WorkDir(std::env::temp_dir().join(format!("{prefix}work")));
    std::fs::create_dir_all(&work.0).expect("scratch directory");
    // Both nodes at once (nft is single-threaded); whole chains, ~100k rules per `nft -f`.
    let t = Instant::now();
    let loaded: Vec<(usize, usize, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = linear
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (ns, dir) = (&cluster.node(i).ns.name, &work.0);
                s.spawn(move || {
                    let t = Instant::now();
                    let scripts = l.table_scripts(100_000);
                    let mut bytes = 0;
                    for (n, script) in scripts.iter().enumerate() {
                        let path = dir.join(format!("linear-{}-{n}.nft", l.node));
                        std::fs::write(&path, script).expect("writing the linear ruleset");
                        bytes += script.len();
                        let path_text = path.to_string_lossy().into_owned();
                        netns::run(
                            Command::new("ip").args(["netns", "exec", ns, "nft", "-f", &path_text]),
                            None,
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                    (bytes, scripts.len(), t.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for (l, (bytes, scripts, secs)) in linear.iter().zip(loaded) {
        println!(
            "  (c) {}: {:.1} MB of nft text loaded with {scripts} nft -f in {secs:.1} s",
            l.node,
            bytes as f64 / 1e6,
        );
    }
    println!(
        "  (c) both nodes loaded in {:.1} s (in parallel)",
        t.elapsed().as_secs_f64()
    );

    let server_ip = sc.pods[SERVER].v4();
    let _servers = load::Servers::start(&pods[SERVER].ns, server_ip);
    let mut switch = Switch {
        cluster: &cluster,
        product: &product,
        linear: &linear,
        current: Config::None,
        times: BTreeMap::new(),
    };
    let mut configs = vec![Config::None];
    if settings.ct_baseline {
        configs.push(Config::CtOnly);
    }
    configs.extend([Config::Product, Config::Linear]);

    // Warm-up: every configuration, pair and metric once, discarded.
    let warmup = Duration::from_secs_f64(settings.warmup);
    if !warmup.is_zero() {
        for &config in &configs {
            switch.to(config);
            for pair in PAIRS {
                for &metric in &settings.metrics {
                    measure(&pods, pair, metric, server_ip, warmup, config);
                }
            }
        }
    }

    println!(
        "\nmeasuring: {} rounds; in each, every pair and metric is measured {} s under every configuration back to back (the order rotates), and each configuration is probed when first entered",
        settings.rounds,
        settings.seconds
    );
    let secs = Duration::from_secs_f64(settings.seconds);
    let mut results: BTreeMap<(usize, usize, Config), Vec<Sample>> = BTreeMap::new();
    let mut probes = 0;
    for round in 0..settings.rounds {
        let mut probed = Vec::new();
        for (p, pair) in PAIRS.iter().enumerate() {
            for (m, metric) in settings.metrics.iter().enumerate() {
                let mut order = configs.clone();
                order.rotate_left((round + p * settings.metrics.len() + m) % configs.len());
                for config in order {
                    switch.to(config);
                    if !probed.contains(&config) {
                        probes += check_policy(&pods, &sc.pods, config);
                        probed.push(config);
                    }
                    let sample = measure(&pods, *pair, *metric, server_ip, secs, config);
                    results.entry((p, m, config)).or_default().push(sample);
                }
            }
        }
        println!("  round {} done, load average {}", round + 1, loadavg());
    }
    switch.to(Config::None);
    println!(
        "policy probes: {probes}, all as expected (pairs connect everywhere; strangers dropped by (b) and (c), connect under (a){})",
        if settings.ct_baseline { " and (a')" } else { "" }
    );
    print!("switching configuration (median, both nodes):");
    for (config, times) in &switch.times {
        print!(" to {} {:.0} ms;", config.short(), ms(median_d(times)));
    }
    println!();

    report(&configs, &settings.metrics, &results);
    prefix
}

fn print_product_size(node: &str, rs: &Ruleset) {
    let target = rs.chains.values().filter(|c| c.hook.is_none()).count();
    let rules: usize = rs.chains.values().map(|c| c.rules.len()).sum();
    let elements: usize = rs.sets.values().map(|s| s.elements.len()).sum();
    let map_elements: usize = rs.maps.values().map(|m| m.elements.len()).sum();
    println!(
        "  {node}: {rules} rules in {} chains ({target} target chains), {} sets with {elements} elements, {map_elements} verdict-map elements",
        rs.chains.len(),
        rs.sets.len(),
    );
}

/// Switches both nodes between configurations.
struct Switch<'a> {
    cluster: &'a Cluster,
    product: &'a [Ruleset],
    linear: &'a [Linear],
    current: Config,
    times: BTreeMap<Config, Vec<Duration>>,
}

impl Switch<'_> {
    fn to(&mut self, to: Config) {
        if to == self.current {
            return;
        }
        let t = Instant::now();
        for (i, node) in self.cluster.nodes.iter().enumerate() {
            let mut script = String::new();
            match self.current {
                Config::None => {}
                Config::CtOnly => script.push_str(&format!("delete table inet {CT_TABLE}\n")),
                Config::Product => script.push_str("delete table inet kube-nftpol\n"),
                Config::Linear => script.push_str(&Linear::base_chains_delete()),
            }
            match to {
                Config::CtOnly => script.push_str(&ct_table()),
                Config::Linear => script.push_str(&self.linear[i].base_chains_add()),
                Config::None | Config::Product => {}
            }
            if !script.is_empty() {
                node.ns.nft(&script);
            }
            if to == Config::Product {
                let ruleset = self.product[i].clone();
                node.ns.run(move || {
                    let mut dp = Dataplane::new().expect("netlink");
                    dp.apply(ruleset)
                        .unwrap_or_else(|e| panic!("kube-nftpol apply: {e}"));
                });
            }
        }
        self.times.entry(to).or_default().push(t.elapsed());
        self.current = to;
    }
}

fn ct_table() -> String {
    format!(
        "table inet {CT_TABLE} {{\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter + 10; policy accept;\n\
         \t\tct state established,related accept\n\t\tct state invalid counter drop\n\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority filter + 10; policy accept;\n\
         \t\tct state established,related accept\n\t}}\n}}\n"
    )
}

fn measure(
    pods: &[PodNet],
    pair: Pair,
    metric: Metric,
    server: Ipv4Addr,
    secs: Duration,
    config: Config,
) -> Sample {
    pods[pair.client]
        .ns
        .run(|| load::run(metric, server, secs))
        .unwrap_or_else(|e| {
            panic!(
                "{} / {} / {}: {e}",
                config.label(),
                pair.label,
                metric.label()
            )
        })
}

/// The pairs must connect (TCP and UDP, new flows); the strangers must be dropped when the
/// configuration enforces the policies and connect otherwise. Returns the number of probes.
fn check_policy(pods: &[PodNet], bench: &[BenchPod], config: Config) -> usize {
    let server = bench[SERVER].v4();
    let mut n = 0;
    for pair in PAIRS {
        let client = &bench[pair.client];
        let tcp = pods[pair.client]
            .ns
            .run(|| load::probe_tcp(server, TCP_CRR_PORT, Duration::from_secs(2)));
        assert!(
            matches!(tcp, Probe::Connected),
            "{}: {} -> bench-server TCP {TCP_CRR_PORT} must connect: {tcp:?}",
            config.label(),
            client.name
        );
        let udp = pods[pair.client]
            .ns
            .run(|| load::probe_udp(server, UDP_RR_PORT, Duration::from_secs(2)));
        assert!(
            matches!(udp, Ok(true)),
            "{}: {} -> bench-server UDP {UDP_RR_PORT} must be answered: {udp:?}",
            config.label(),
            client.name
        );
        let stranger = &bench[pair.stranger];
        // A drop leaves the SYN unanswered; a SYN-ACK between two namespaces of this host
        // takes microseconds, so 250 ms is ample (and below the 1 s SYN retransmission).
        let timeout = Duration::from_millis(if config.enforces() { 250 } else { 2000 });
        let got = pods[pair.stranger]
            .ns
            .run(|| load::probe_tcp(server, TCP_CRR_PORT, timeout));
        match (config.enforces(), &got) {
            (true, Probe::TimedOut) | (false, Probe::Connected) => {}
            (true, _) => panic!(
                "{}: the negative probe {} -> bench-server TCP {TCP_CRR_PORT} was not dropped: {got:?}",
                config.label(),
                stranger.name
            ),
            (false, _) => panic!(
                "{}: without policy, {} -> bench-server TCP {TCP_CRR_PORT} must connect: {got:?}",
                config.label(),
                stranger.name
            ),
        }
        n += 3;
    }
    n
}

/// Prints where the probed flows are decided in (b) and (c), and checks that the allowing
/// policy of the pair is not the first one evaluated and that the strangers are denied.
fn explain_pairs(bench: &[BenchPod], ns: &str, product: &[Ruleset], linear: &[Linear]) {
    let server = &bench[SERVER];
    // (client, [(node index, what the hop checks)])
    let flows = [
        (CLIENT, vec![(0, "egress+ingress")]),
        (CLIENT_REMOTE, vec![(1, "egress"), (0, "ingress")]),
    ];
    for (client, hops) in flows {
        let c = &bench[client];
        println!(
            "  {} ({}) -> {} ({}) TCP {TCP_CRR_PORT}:",
            c.name,
            c.ip(),
            server.name,
            server.ip()
        );
        for (node, what) in hops {
            let packet = Packet::new_connection(c.ip(), server.ip(), Protocol::Tcp, TCP_CRR_PORT);
            let rs = &product[node];
            let decision = eval(rs, Hook::Forward, &packet);
            assert!(
                decision.accepted,
                "(b) {} forward drops {} -> {}",
                NODE_NAMES[node], c.name, server.name
            );
            let mut summary = Vec::new();
            for step in &decision.trace {
                let Some(Origin::Allow {
                    policy, direction, ..
                }) = &step.origin
                else {
                    continue;
                };
                let chain = &rs.chains[&step.chain];
                let order: Vec<String> = match chain.rules.last().and_then(|r| r.origin.as_ref()) {
                    Some(Origin::Isolated { policies, .. }) => policies.clone(),
                    _ => vec![],
                };
                let expected = match direction {
                    Direction::Ingress => ALLOWING_INGRESS,
                    Direction::Egress => ALLOWING_EGRESS,
                };
                let position = order.iter().position(|p| *p == format!("{ns}/{expected}"));
                assert_eq!(
                    policy,
                    &format!("{ns}/{expected}"),
                    "(b) the probed pair must be allowed by {expected}"
                );
                assert!(
                    position.is_some_and(|p| p > 0),
                    "(b) {expected} must not be the first policy evaluated: {order:?}"
                );
                summary.push(format!(
                    "{direction} chain {} allows at rule {} of {} ({policy}), after policies {}",
                    step.chain,
                    step.rule + 1,
                    chain.rules.len(),
                    order[..position.unwrap_or(0)]
                        .iter()
                        .map(|p| p.rsplit('/').next().unwrap_or(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let dispatches = decision
                .trace
                .iter()
                .filter(|s| {
                    rs.chains[&s.chain].hook.is_some()
                        && matches!(
                            rs.chains[&s.chain].rules[s.rule].action,
                            Action::Dispatch { .. }
                        )
                })
                .count();
            println!(
                "    {} forward ({what}), (b): {dispatches} verdict-map lookup(s); {}",
                NODE_NAMES[node],
                summary.join("; ")
            );
            let walk = linear[node].forward(c.ip(), server.ip(), Protocol::Tcp, TCP_CRR_PORT);
            assert!(
                walk.accepted,
                "(c) {} drops {} -> {}",
                NODE_NAMES[node], c.name, server.name
            );
            let chains: Vec<String> = walk
                .chains
                .iter()
                .map(|(name, hit)| {
                    let len = linear[node]
                        .chains
                        .iter()
                        .find(|c| &c.name == name)
                        .map_or(0, |c| c.rules.len() + 1);
                    format!(
                        "{name} returns at rule {} of {len}",
                        hit.map_or(0, |h| h + 1)
                    )
                })
                .collect();
            let positions: Vec<String> = [
                (Direction::Egress, c.ip()),
                (Direction::Ingress, server.ip()),
            ]
            .iter()
            .filter_map(|(d, ip)| {
                linear[node].dispatch_position(*d, *ip).map(|pos| {
                    format!(
                        "{d} dispatch rule {pos} of {}",
                        linear[node].dispatch_count(*d)
                    )
                })
            })
            .collect();
            println!(
                "    {} forward ({what}), (c): {} rules evaluated; {}; {}",
                NODE_NAMES[node],
                walk.rules,
                positions.join(", "),
                chains.join("; ")
            );
        }
    }
    for stranger in [STRANGER, STRANGER_REMOTE] {
        let s = &bench[stranger];
        let packet = Packet::new_connection(s.ip(), server.ip(), Protocol::Tcp, TCP_CRR_PORT);
        let b = eval(&product[0], Hook::Forward, &packet);
        let c = linear[0].forward(s.ip(), server.ip(), Protocol::Tcp, TCP_CRR_PORT);
        assert!(
            !b.accepted && !c.accepted,
            "{} -> {} must be dropped by (b) and (c) on node-a",
            s.name,
            server.name
        );
        println!(
            "  {} ({}) -> {} TCP {TCP_CRR_PORT}: dropped on node-a by (b) ({}) and by (c) after {} rules",
            s.name,
            s.ip(),
            server.name,
            b.trace
                .last()
                .and_then(|s| s.origin.as_ref())
                .map_or("?".to_string(), |o| o.to_string()),
            c.rules
        );
    }
}

/// Compares (b) and (c) on sampled new flows through each node's forward hook; panics on a
/// disagreement (then (c) would not be the same policies). Returns how many were compared.
fn cross_check(model: &Model, product: &[Ruleset], linear: &[Linear]) -> usize {
    const PORTS: [u16; 18] = [
        22, 53, 80, 443, 5201, 5202, 5203, 5432, 6379, 7999, 8000, 8050, 8080, 8100, 8443, 9000,
        9090, 9091,
    ];
    const SAMPLES: usize = 4000;
    let externals: Vec<IpAddr> = [
        "8.8.8.8",
        "1.1.1.1",
        "172.16.5.4",
        "192.168.1.1",
        "10.250.0.9",
    ]
    .iter()
    .map(|a| a.parse().expect("address"))
    .collect();
    let all: Vec<IpAddr> = model
        .pods()
        .filter(|p| p.is_policy_pod())
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let mut rng = synth::Rng::new(7);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (i, node) in NODE_NAMES.iter().enumerate() {
        let local: Vec<IpAddr> = model
            .pods()
            .filter(|p| p.is_policy_pod() && p.node_name.as_deref() == Some(*node))
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        for _ in 0..SAMPLES {
            let (src, dst) = match rng.below(5) {
                0 => (*rng.pick(&local), *rng.pick(&all)),
                1 => (*rng.pick(&all), *rng.pick(&local)),
                2 => (*rng.pick(&local), *rng.pick(&local)),
                3 => (*rng.pick(&local), *rng.pick(&externals)),
                _ => (*rng.pick(&externals), *rng.pick(&local)),
            };
            let proto = *rng.pick(&Protocol::ALL);
            let port = *rng.pick(&PORTS);
            let b = eval(
                &product[i],
                Hook::Forward,
                &Packet::new_connection(src, dst, proto, port),
            )
            .accepted;
            let c = linear[i].forward(src, dst, proto, port).accepted;
            checked += 1;
            if b != c && wrong.len() < 10 {
                wrong.push(format!(
                    "{node}: {src} -> {dst} {proto} {port}: (b) {b}, (c) {c}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "(b) and (c) disagree:\n{}",
        wrong.join("\n")
    );
    checked
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_d(v: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(
        &v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    ))
}

fn fmt_value(metric: Metric, v: f64) -> String {
    match metric {
        Metric::TcpStream => format!("{v:.2}"),
        _ => {
            let n = v.round() as u64;
            let s = n.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
    }
}

fn report(
    configs: &[Config],
    metrics: &[Metric],
    results: &BTreeMap<(usize, usize, Config), Vec<Sample>>,
) {
    let ct = configs.contains(&Config::CtOnly);
    for (p, pair) in PAIRS.iter().enumerate() {
        println!(
            "\n{} (values: medians; ratios: medians of the per-round ratios)",
            pair.label
        );
        let mut header = format!("{:<26}", "metric");
        for c in configs {
            header.push_str(&format!(" {:>16}", c.label()));
        }
        header.push_str(&format!(" {:>8} {:>8}", "(b)/(a)", "(c)/(a)"));
        if ct {
            header.push_str(&format!(" {:>9}", "(b)/(a')"));
        }
        println!("{header}");
        for (m, metric) in metrics.iter().enumerate() {
            let med = |c: Config| -> f64 {
                let values: Vec<f64> = results
                    .get(&(p, m, c))
                    .map(|s| s.iter().map(|s| s.value).collect())
                    .unwrap_or_default();
                median(&values)
            };
            let mut line = format!("{:<26}", metric.label());
            for c in configs {
                line.push_str(&format!(" {:>16}", fmt_value(*metric, med(*c))));
            }
            // Median of the per-round ratios: each round measured the configurations of
            // this pair and metric back to back.
            let ratio = |x: Config, y: Config| -> f64 {
                let (xs, ys) = match (results.get(&(p, m, x)), results.get(&(p, m, y))) {
                    (Some(xs), Some(ys)) => (xs, ys),
                    _ => return f64::NAN,
                };
                let r: Vec<f64> = xs.iter().zip(ys).map(|(x, y)| x.value / y.value).collect();
                median(&r)
            };
            line.push_str(&format!(
                " {:>8.3} {:>8.3}",
                ratio(Config::Product, Config::None),
                ratio(Config::Linear, Config::None)
            ));
            if ct {
                line.push_str(&format!(" {:>9.3}", ratio(Config::Product, Config::CtOnly)));
            }
            println!("{line}");
        }
    }
    println!("\nevery round (in round order; failures = connections not completed / requests unanswered in 200 ms):");
    for (p, pair) in PAIRS.iter().enumerate() {
        let short = pair.label.split(':').next().unwrap_or(pair.label);
        for (m, metric) in metrics.iter().enumerate() {
            let mut parts = Vec::new();
            for c in configs {
                let samples = results.get(&(p, m, *c)).cloned().unwrap_or_default();
                let values: Vec<String> = samples
                    .iter()
                    .map(|s| fmt_value(*metric, s.value))
                    .collect();
                let failures: u64 = samples.iter().map(|s| s.failures).sum();
                let mut part = format!("{} {}", c.short(), values.join(" "));
                if failures > 0 {
                    part.push_str(&format!(" ({failures} failures)"));
                }
                parts.push(part);
            }
            println!("  {short:<10} {:<26} {}", metric.label(), parts.join(" | "));
        }
    }
}
