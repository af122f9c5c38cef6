//! Daemon load benchmark: the daemon's own state and sync path — [`StateLoop::run`] fed
//! through its channel, with its debounce (leading edge for a lone change; a burst waits for
//! 20 ms of quiet, at most ten times that) and the real netlink [`Dataplane`] committing into
//! a private network namespace — under event storms and at steady state, on a seeded
//! synthetic cluster (`synth`: 10,000 pods, 1,000 policies, 110 pods on the node under test
//! by default). Prints one table; asserts nothing. Root only.
//!
//! What is measured (`latency` is [`SyncReport::latency`]: from the first change of a sync
//! being read to the kernel's acknowledgement, so it includes any debounce wait and the time
//! spent queued; `compile+apply` is the same sync without them):
//!
//! 1. **Initial load**: namespaces, then policies, then pods as `Change` events, then
//!    `InitDone`; the one full sync that follows (and the time from `InitDone` to it). The
//!    wall time includes parsing the objects from JSON, as a watch would.
//! 2. **Steady state**, changes in turn: a pod added on another node, one added on this
//!    node, a pod relabelled, a pod deleted, a policy edited. *Lone changes*: each sent 60 ms
//!    after the previous one was committed, so each is its own sync (and, the loop being
//!    quiet, synced at once). *Stream*: one change every 60 ms by the clock, committed or not,
//!    as a busy cluster sends them (a change arriving less than the debounce after a sync
//!    ends waits for it). Latency, compile+apply, compile and apply, p50/p99/max. The
//!    issue's target is p99 below 50 ms per change. A change the daemon judges unable to
//!    alter this node's ruleset (`compile::Reads`: a pod of another node no peer set here
//!    selects) is not compiled: column `skip`. Done with the default 20 ms debounce and
//!    again, by a second daemon, with a 1 ms debounce.
//! 3. **Storm A, "created"**: a rolling restart of every pod, sent from a producer thread as
//!    fast as it can: for each pod, its replacement appears (new name and pod-template-hash,
//!    `Pending` without an address), then gets its address (`Running`), then the old pod is
//!    deleted — three watch events per pod, as a Deployment rollout produces them.
//!    **Storm B, "relabelled"**: every pod's `tier` label is rewritten (frontend → backend →
//!    db → cache → frontend), as `kubectl label --overwrite` on all pods would: every pod moves
//!    between the peer sets of tier-selecting policies, and local pods move in and out of the
//!    policies selecting `tier in (backend, db)`. For each: events sent, wall time from the
//!    first event to the commit of the last one, events/s absorbed, syncs, and per sync the
//!    latency, compile and apply. A storm not absorbed within `BENCH_STORM_BUDGET_S` is
//!    reported as such and ends that daemon; storm B then runs on a daemon of its own, just
//!    after its initial load.
//! 4. **Memory**: VmRSS and VmHWM (peak RSS) of the daemon's process from
//!    `/proc/self/status` at start, after the initial load, and after each later phase; the
//!    peak is reset (`/proc/self/clear_refs`) after the initial load, so later peaks are
//!    those of the phases. The target is RSS below 64 MiB at 10,000 pods.
//!
//! Each daemon runs in a child process (this binary, re-executed), so that its memory
//! figures are its own and a storm that is not absorbed can be abandoned. The parent
//! generates the cluster once and writes it as JSON, one object a line; a child parses one
//! object at a time and sends it, as a watch delivers them, so no generator's copy of the
//! cluster inflates the daemon's figures (the child keeps a few strings per pod to make the
//! storms' changes: its size is printed). The state loop runs on a thread that first
//! unshares its network namespace, which disappears with the process. The bridge netfilter
//! sysctls are read from a temporary directory holding `1`s, not the host's. Drift checks
//! and periodic resyncs are pushed out of the run (one hour), so that every sync is caused
//! by the bench's events. Warnings of the daemon go to stderr (`RUST_LOG` to change). The
//! load average is printed: on a busy machine, compile times are too.
//!
//! Run, as root: `cargo bench --bench daemon_load`. Sizes: `BENCH_PODS` (10000),
//! `BENCH_POLICIES` (1000), `BENCH_STEADY_CHANGES` (200), `BENCH_STORM_BUDGET_S` (60).
//! `BENCH_LOAD_ONLY=1`: only the initial load by one daemon (its memory holding the cluster).

#[path = "synth/mod.rs"]
mod synth;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nftpol::daemon::metrics::Shared;
use kube_nftpol::daemon::{Config, Event, Source, StateLoop, SyncReport, EVENT_QUEUE};
use kube_nftpol::dataplane::{probe, Dataplane, SyncKind};
use kube_nftpol::model::{Kind, Object, ObjectRef};
use kube_nftpol::sources::Change;
use serde::{Deserialize, Serialize};

/// Set in a child: which daemon run it is.
const CHILD_ENV: &str = "DAEMON_LOAD_CHILD";
/// Set in a child: the parent's temporary directory.
const TMP_ENV: &str = "DAEMON_LOAD_TMP";
/// Set in a child: the node under test.
const NODE_ENV: &str = "DAEMON_LOAD_NODE";
/// Set (to anything): only the initial load, by the first daemon — the memory of a daemon
/// holding the cluster, for the sizes of BENCHMARKS.md.
const LOAD_ONLY_ENV: &str = "BENCH_LOAD_ONLY";
fn load_only() -> bool {
    std::env::var_os(LOAD_ONLY_ENV).is_some()
}

/// Prefix of a child's result lines on its stdout.
const MARK: &str = "@daemon_load ";

const TIERS: [&str; 4] = ["frontend", "backend", "db", "cache"];
const NEW_HASH: &str = "7d9f8c6b5";
const STEADY_KINDS: [&str; 5] = [
    "pod added (other node)",
    "pod added (this node)",
    "pod relabelled",
    "pod deleted",
    "policy edited",
];
const STEADY_SPACING: Duration = Duration::from_millis(60);
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Sizes {
    pods: usize,
    policies: usize,
    steady_changes: usize,
    storm_budget: Duration,
}

impl Sizes {
    fn from_env() -> Sizes {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Sizes {
            pods: env("BENCH_PODS", 10_000),
            policies: env("BENCH_POLICIES", 1_000),
            steady_changes: env("BENCH_STEADY_CHANGES", 200),
            storm_budget: Duration::from_secs(env("BENCH_STORM_BUDGET_S", 60) as u64),
        }
    }

    fn local_pods(&self) -> usize {
        110.min(self.pods)
    }

    fn namespaces(&self) -> usize {
        (self.pods / 100).max(10)
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` builds bench targets; only `cargo bench` runs this.
    }
    let sizes = Sizes::from_env();
    if let Ok(run) = std::env::var(CHILD_ENV) {
        let tmp = std::env::var_os(TMP_ENV).expect("the parent sets DAEMON_LOAD_TMP");
        child(&run, Path::new(&tmp), sizes);
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("daemon_load bench: skipped (needs root to create a private network namespace)");
        return;
    }
    parent(sizes);
}

// ---------------------------------------------------------------------------------------
// Results, as the children send them to the parent.

#[derive(Serialize, Deserialize)]
enum Msg {
    Row(Row),
    Memory {
        what: String,
        rss_kib: u64,
        hwm_kib: u64,
    },
    Note(String),
    /// Storm A was not absorbed, so storm B needs a daemon of its own.
    StormBSkipped,
}

#[derive(Serialize, Deserialize)]
struct Row {
    /// 1 initial load, 2 steady state, 3 storms: the table's order.
    section: u8,
    phase: String,
    events: usize,
    /// Events covered by committed syncs (less than `events` for a storm not absorbed).
    committed: usize,
    wall_ms: Option<f64>,
    latency_ms: Vec<f64>,
    compile_ms: Vec<f64>,
    apply_ms: Vec<f64>,
    /// Syncs that were full, incremental, unchanged (compiled, nothing to send), skipped
    /// (every change judged unable to alter the ruleset: not compiled).
    kinds: [usize; 4],
}

impl Row {
    fn new(section: u8, phase: &str, events: usize, wall: Option<Duration>) -> Row {
        Row {
            section,
            phase: phase.to_string(),
            events,
            committed: 0,
            wall_ms: wall.map(ms),
            latency_ms: Vec::new(),
            compile_ms: Vec::new(),
            apply_ms: Vec::new(),
            kinds: [0; 4],
        }
    }

    fn with<'a>(mut self, reports: impl IntoIterator<Item = &'a SyncReport>) -> Row {
        for r in reports {
            self.committed += r.events;
            self.latency_ms.push(ms(r.latency));
            self.compile_ms.push(ms(r.compile));
            self.apply_ms.push(ms(r.apply));
            self.kinds[match r.kind {
                _ if !r.compiled => 3,
                SyncKind::Full => 0,
                SyncKind::Incremental => 1,
                SyncKind::Unchanged => 2,
            }] += 1;
        }
        self
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A child's output channel: one JSON message per line, after [`MARK`].
fn emit(msg: &Msg) {
    let json = serde_json::to_string(msg).expect("results serialise");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{json}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

fn status_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn emit_memory(what: &str) {
    let (rss_kib, hwm_kib) = status_kib();
    emit(&Msg::Memory {
        what: what.to_string(),
        rss_kib,
        hwm_kib,
    });
}

/// Resets VmHWM to the current RSS (Linux 4.0+).
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        emit(&Msg::Note(format!(
            "cannot reset the peak RSS ({e}): later VmHWM figures include the generator's"
        )));
    }
}

// ---------------------------------------------------------------------------------------
// The parent: runs the children, prints the table.

/// The daemon runs, each in a child process: (name, what it does).
const RUNS: [(&str, &str); 3] = [
    (
        "debounce-20ms",
        "initial load, steady state, storm A, storm B (20 ms debounce)",
    ),
    ("debounce-1ms", "initial load, steady state (1 ms debounce)"),
    (
        "storm-b",
        "initial load, storm B (20 ms debounce; only when daemon 1 could not run it)",
    ),
];

/// The temporary directory: bridge sysctls reading 1, an empty manifests directory, the
/// cluster as JSON lines.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("kube-nftpol-daemon-load-{}", std::process::id()));
        let bridge = dir.join("proc-sys/net/bridge");
        std::fs::create_dir_all(&bridge).expect("create the temporary proc-sys directory");
        for name in kube_nftpol::daemon::bridge::SYSCTLS {
            std::fs::write(bridge.join(name), "1\n").expect("write a bridge sysctl file");
        }
        std::fs::create_dir_all(dir.join("manifests")).expect("create the manifests directory");
        TempDir(dir)
    }

    fn cluster(&self) -> PathBuf {
        self.0.join("cluster.jsonl")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the synthetic cluster, namespaces then policies then pods, one `Kind<TAB>json`
/// line per object. Returns the node under test.
fn write_cluster(path: &Path, sizes: Sizes) -> String {
    let s = synth::generate(&synth::Params {
        pods: sizes.pods,
        policies: sizes.policies,
        namespaces: sizes.namespaces(),
        local_pods: sizes.local_pods(),
        seed: 42,
    });
    let file = std::fs::File::create(path).expect("create the cluster file");
    let mut out = std::io::BufWriter::new(file);
    let rank = |o: &Object| match o {
        Object::Namespace(_) | Object::Node(_) => 0,
        Object::NetworkPolicy(_) => 1,
        Object::Pod(_) => 2,
    };
    for pass in 0..3 {
        for o in s.objects.iter().filter(|o| rank(o) == pass) {
            let (kind, json) = match o {
                Object::Namespace(x) => ("Namespace", serde_json::to_string(x)),
                Object::Node(x) => ("Node", serde_json::to_string(x)),
                Object::NetworkPolicy(x) => ("NetworkPolicy", serde_json::to_string(x)),
                Object::Pod(x) => ("Pod", serde_json::to_string(x)),
            };
            let json = json.expect("k8s objects serialise");
            writeln!(out, "{kind}\t{json}").expect("write the cluster file");
        }
    }
    out.flush().expect("write the cluster file");
    s.node
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn parent(sizes: Sizes) {
    let started = Instant::now();
    let load_before = load_average();
    let tmp = TempDir::create();
    let node = write_cluster(&tmp.cluster(), sizes);
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut msgs: Vec<(usize, Msg)> = Vec::new();
    for (i, (run, what)) in RUNS.iter().enumerate() {
        let d = i + 1;
        if i > 0 && load_only() {
            break;
        }
        if *run == "storm-b" && !msgs.iter().any(|(_, m)| matches!(m, Msg::StormBSkipped)) {
            continue;
        }
        let what = if load_only() {
            "initial load only"
        } else {
            what
        };
        eprintln!("daemon_load: daemon {d}: {what} ...");
        let mut child = Command::new(&exe)
            .arg("--bench")
            .env(CHILD_ENV, run)
            .env(TMP_ENV, &tmp.0)
            .env(NODE_ENV, &node)
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-run this bench as a child process");
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read the child's output");
            match line.strip_prefix(MARK) {
                Some(json) => msgs.push((
                    d,
                    serde_json::from_str(json).expect("a result line of the child"),
                )),
                None => println!("{line}"),
            }
        }
        let status = child.wait().expect("wait for the child");
        if !status.success() {
            msgs.push((
                d,
                Msg::Note(format!("daemon {d} ({run}) ended with {status}")),
            ));
        }
    }
    let load_after = load_average();
    print_table(sizes, &msgs, started.elapsed(), [&load_before, &load_after]);
}

/// Nearest-rank percentile of unsorted samples.
fn pct(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn three(samples: &[f64]) -> String {
    if samples.is_empty() {
        return format!("{:>23}", "-");
    }
    format!(
        "{:>7.1} {:>7.1} {:>7.1}",
        pct(samples, 0.50),
        pct(samples, 0.99),
        pct(samples, 1.0)
    )
}

fn print_table(sizes: Sizes, msgs: &[(usize, Msg)], total: Duration, load: [&str; 2]) {
    println!();
    println!(
        "daemon_load: {} pods ({} on the node under test), {} policies, {} namespaces; \
         {} steady changes; storm budget {} s; whole run {:.0} s; load average {} before, {} after",
        sizes.pods,
        sizes.local_pods(),
        sizes.policies,
        sizes.namespaces(),
        sizes.steady_changes,
        sizes.storm_budget.as_secs(),
        total.as_secs_f64(),
        load[0],
        load[1],
    );
    for (i, (_, what)) in RUNS.iter().enumerate() {
        if msgs.iter().any(|(d, _)| *d == i + 1) {
            let what = if load_only() {
                "initial load only"
            } else {
                what
            };
            println!("  daemon ({}): {what}", i + 1);
        }
    }
    println!();
    let rule = "-".repeat(208);
    println!(
        "{:<44} {:>6} {:>7} {:>5} {:>18} {:>8} {:>9} | {:^23} | {:^23} | {:^23} | {:^23}",
        "phase (daemon)",
        "events",
        "commit",
        "syncs",
        "full/inc/unch/skip",
        "wall s",
        "events/s",
        "latency ms",
        "compile+apply ms",
        "compile ms",
        "apply ms"
    );
    let sub = format!("{:>7} {:>7} {:>7}", "p50", "p99", "max");
    println!(
        "{:<44} {:>6} {:>7} {:>5} {:>18} {:>8} {:>9} | {sub} | {sub} | {sub} | {sub}",
        "", "", "", "", "", "", ""
    );
    println!("{rule}");
    let mut rows: Vec<(usize, &Row)> = msgs
        .iter()
        .filter_map(|(d, m)| match m {
            Msg::Row(r) => Some((*d, r)),
            _ => None,
        })
        .collect();
    rows.sort_by_key(|(d, r)| (r.section, *d));
    let mut section = 0;
    for (d, r) in rows {
        if section != 0 && r.section != section {
            println!();
        }
        section = r.section;
        let wall = r
            .wall_ms
            .map_or("-".to_string(), |w| format!("{:.2}", w / 1000.0));
        let rate = match r.wall_ms {
            Some(w) if w > 0.0 && r.section >= 2 => {
                format!("{:.0}", r.committed as f64 / (w / 1000.0))
            }
            _ => "-".to_string(),
        };
        let both: Vec<f64> = r
            .compile_ms
            .iter()
            .zip(&r.apply_ms)
            .map(|(c, a)| c + a)
            .collect();
        let (events, committed, syncs, kinds) = if r.events == 0 && r.latency_ms.is_empty() {
            ("-".into(), "-".into(), "-".into(), "-".into())
        } else {
            (
                r.events.to_string(),
                r.committed.to_string(),
                r.latency_ms.len().to_string(),
                format!(
                    "{}/{}/{}/{}",
                    r.kinds[0], r.kinds[1], r.kinds[2], r.kinds[3]
                ),
            )
        };
        println!(
            "{:<44} {:>6} {:>7} {:>5} {:>18} {:>8} {:>9} | {} | {} | {} | {}",
            format!("{} ({d})", r.phase),
            events,
            committed,
            syncs,
            kinds,
            wall,
            rate,
            three(&r.latency_ms),
            three(&both),
            three(&r.compile_ms),
            three(&r.apply_ms),
        );
    }
    println!("{rule}");
    println!(
        "{:<78} {:>10} {:>10}",
        "memory (daemon)", "VmRSS MiB", "VmHWM MiB"
    );
    for (d, m) in msgs {
        if let Msg::Memory {
            what,
            rss_kib,
            hwm_kib,
        } = m
        {
            println!(
                "{:<78} {:>10.1} {:>10.1}",
                format!("{what} ({d})"),
                *rss_kib as f64 / 1024.0,
                *hwm_kib as f64 / 1024.0
            );
        }
    }
    println!("{rule}");
    println!(
        "latency: from the first event of a sync being read to the kernel's acknowledgement; it includes any \
         debounce wait (a lone change after a quiet period is synced at once) and the time queued."
    );
    println!(
        "compile+apply: the sync itself, without debounce and queueing. events: sent (initial load: objects + InitDone); \
         commit: events covered by committed syncs."
    );
    println!("targets (issue 4): steady-state latency p99 < 50 ms per change; RSS < 64 MiB at 10,000 pods.");
    for (d, m) in msgs {
        if let Msg::Note(n) = m {
            println!("note ({d}): {n}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A child: one daemon.

fn child(run: &str, tmp: &Path, sizes: Sizes) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let debounce = match run {
        "debounce-20ms" | "storm-b" => Duration::from_millis(20),
        "debounce-1ms" => Duration::from_millis(1),
        other => panic!("unknown daemon run {other:?}"),
    };
    let label = format!("{} ms debounce", debounce.as_millis());
    let load_only = load_only();
    let node = std::env::var(NODE_ENV).expect("the parent sets DAEMON_LOAD_NODE");
    emit_memory("start");
    let mut world = World::new(&node, sizes.pods);
    let daemon = Daemon::start(tmp, &node, debounce);
    initial_load(&daemon, &tmp.join("cluster.jsonl"), &mut world, &label);
    emit_memory("after the initial load and full sync (peak: since start)");
    emit(&Msg::Note(format!(
        "the bench's own bookkeeping in each daemon's process: {:.1} MiB ({} pods, {} policies)",
        world.heap_bytes() as f64 / 1_048_576.0,
        world.pods.len(),
        world.policies.len()
    )));
    if load_only {
        daemon.stop();
        return;
    }
    reset_peak();

    let absorbed = match run {
        "storm-b" => {
            let absorbed = storm(&daemon, &mut world, Storm::Relabelled, sizes.storm_budget);
            emit_memory("after storm B (peak: since the load)");
            absorbed
        }
        _ => {
            let mut changes = Changes::new(&world);
            steady_lone(
                &daemon,
                &mut world,
                &mut changes,
                sizes.steady_changes,
                &label,
            );
            steady_stream(
                &daemon,
                &mut world,
                &mut changes,
                sizes.steady_changes,
                &label,
            );
            emit_memory(&format!(
                "after the steady state, {label} (peak: since the load)"
            ));
            if run == "debounce-1ms" {
                true
            } else {
                let a = storm(&daemon, &mut world, Storm::Created, sizes.storm_budget);
                emit_memory("after storm A (peak: since the load)");
                if a {
                    let b = storm(&daemon, &mut world, Storm::Relabelled, sizes.storm_budget);
                    emit_memory("after storm B (peak: since the load)");
                    b
                } else {
                    emit(&Msg::Note(
                        "storm A was not absorbed: storm B runs on a daemon of its own".into(),
                    ));
                    emit(&Msg::StormBSkipped);
                    false
                }
            }
        }
    };
    if absorbed {
        daemon.stop();
    } else {
        // The loop is still working through the storm: leave it to end with the process (a
        // stop event would wait behind the backlog).
        std::process::exit(0);
    }
}

/// The daemon under test: a [`StateLoop`] on a thread of its own network namespace.
struct Daemon {
    tx: SyncSender<Event>,
    reports: Receiver<SyncReport>,
    thread: Option<JoinHandle<()>>,
}

/// Syncs collected for a number of events.
struct Collected {
    reports: Vec<SyncReport>,
    committed: usize,
    last_commit: Option<Instant>,
    complete: bool,
}

impl Daemon {
    fn start(tmp: &Path, node: &str, debounce: Duration) -> Daemon {
        let mut config = Config::new(node, Source::Manifests(tmp.join("manifests")));
        config.proc_sys = tmp.join("proc-sys");
        config.debounce = debounce;
        // Every sync of the run is caused by the bench's events.
        config.drift_check_interval = Duration::from_secs(3600);
        config.resync_interval = Duration::from_secs(3600);
        // Bounded as in `daemon::run`: a storm's producer waits when the loop is behind.
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
        let (report_tx, reports) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-loop".into())
            .spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET)");
                let options = probe::probe()
                    .expect("kernel probe in the private network namespace")
                    .options();
                let dataplane = Dataplane::new().expect("netlink socket");
                let mut state = StateLoop::new(config, dataplane, options, Shared::default());
                state.reports = Some(report_tx);
                ready_tx
                    .send(())
                    .expect("the bench waits for the state loop");
                state.run(rx);
            })
            .expect("spawn the state loop thread");
        ready_rx
            .recv()
            .expect("the state loop thread starts (see its panic above)");
        Daemon {
            tx,
            reports,
            thread: Some(thread),
        }
    }

    fn send(&self, change: Change) {
        send(&self.tx, change);
    }

    /// Reports until they account for `events` events in all, or `deadline` passes.
    fn collect(&self, events: usize, deadline: Instant) -> Collected {
        let mut c = Collected {
            reports: Vec::new(),
            committed: 0,
            last_commit: None,
            complete: false,
        };
        while c.committed < events {
            match self
                .reports
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(r) => {
                    c.last_commit = Some(Instant::now());
                    c.committed += r.events;
                    c.reports.push(r);
                }
                Err(RecvTimeoutError::Timeout) => return c,
                Err(RecvTimeoutError::Disconnected) => panic!("the state loop stopped"),
            }
        }
        c.complete = true;
        c
    }

    /// Stops the loop as SIGTERM does, and waits for it.
    fn stop(mut self) {
        let _ = self.tx.send(Event::Signal(libc::SIGTERM));
        if let Some(t) = self.thread.take() {
            t.join().expect("the state loop thread ends cleanly");
        }
    }
}

fn send(tx: &SyncSender<Event>, change: Change) {
    tx.send(Event::Change {
        change,
        read_at: Instant::now(),
    })
    .expect("the state loop is running");
}

/// What the bench knows of the cluster to generate changes: a few strings per pod, not the
/// objects (they would count in the daemon's memory figures).
struct World {
    node: String,
    pods: Vec<PodSeed>,
    /// Some policies with ingress rules, to edit.
    policies: Vec<NetworkPolicy>,
    /// Pod addresses handed out so far (synth uses `pod_ip(0..pods)`).
    next_ip: usize,
}

#[derive(Clone)]
struct PodSeed {
    namespace: String,
    name: String,
    app: String,
    hash: String,
    tier: usize,
    node: String,
    ip: String,
    /// The container port named `http`.
    port: i32,
}

impl World {
    fn new(node: &str, pods: usize) -> World {
        World {
            node: node.to_string(),
            pods: Vec::with_capacity(pods),
            policies: Vec::new(),
            next_ip: pods,
        }
    }

    /// Notes what the bench needs of an object of the initial state.
    fn observe(&mut self, object: &Object) {
        match object {
            Object::Pod(p) => self.pods.push(PodSeed::of(p)),
            Object::NetworkPolicy(p)
                if self.policies.len() < 64
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.ingress.as_ref())
                        .is_some_and(|i| !i.is_empty()) =>
            {
                self.policies.push(p.clone())
            }
            _ => {}
        }
    }

    fn fresh_ip(&mut self) -> String {
        self.next_ip += 1;
        synth::pod_ip(self.next_ip)
    }

    /// About what the bench's bookkeeping takes (policies counted by their JSON size).
    fn heap_bytes(&self) -> usize {
        let seeds: usize = self
            .pods
            .iter()
            .map(|p| {
                std::mem::size_of::<PodSeed>()
                    + [&p.namespace, &p.name, &p.app, &p.hash, &p.node, &p.ip]
                        .iter()
                        .map(|s| s.capacity())
                        .sum::<usize>()
            })
            .sum();
        let policies: usize = self
            .policies
            .iter()
            .map(|p| serde_json::to_string(p).map_or(0, |j| j.len()))
            .sum();
        seeds + policies
    }
}

impl PodSeed {
    fn of(pod: &Pod) -> PodSeed {
        let labels = pod
            .metadata
            .labels
            .as_ref()
            .expect("synth pods have labels");
        let label = |k: &str| labels.get(k).cloned().expect("synth pods' labels");
        let tier = label("tier");
        PodSeed {
            namespace: pod.metadata.namespace.clone().expect("synth pod namespace"),
            name: pod.metadata.name.clone().expect("synth pod name"),
            app: label("app"),
            hash: label("pod-template-hash"),
            tier: TIERS
                .iter()
                .position(|t| *t == tier)
                .expect("a tier synth uses"),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .expect("synth pods are bound"),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .expect("synth pods have an address"),
            port: pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .and_then(|p| p.first())
                .map(|p| p.container_port)
                .expect("synth pods have a named port"),
        }
    }

    /// The pod, shaped as synth makes them; without an address unless `running`.
    fn object(&self, running: bool) -> Object {
        let ip = running.then(|| self.ip.clone());
        Object::Pod(Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app".to_string(), self.app.clone()),
                    ("tier".to_string(), TIERS[self.tier].to_string()),
                    ("pod-template-hash".to_string(), self.hash.clone()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(self.node.clone()),
                containers: vec![Container {
                    name: "main".into(),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("http".into()),
                            container_port: self.port,
                            ..Default::default()
                        },
                        ContainerPort {
                            name: Some("metrics".into()),
                            container_port: 9090,
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(if running { "Running" } else { "Pending" }.into()),
                pod_ip: ip.clone(),
                pod_ips: ip.map(|ip| vec![PodIP { ip }]),
                host_ip: Some("192.168.0.1".into()),
                ..Default::default()
            }),
        })
    }

    fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: Kind::Pod,
            namespace: Some(self.namespace.clone()),
            name: self.name.clone(),
        }
    }
}

/// Phase 1: the whole cluster, parsed one object at a time from the parent's file, then
/// InitDone; one full sync.
fn initial_load(daemon: &Daemon, cluster: &Path, world: &mut World, label: &str) {
    let file = std::fs::File::open(cluster).expect("the parent's cluster file");
    let started = Instant::now();
    let mut sent = 0;
    for line in BufReader::new(file).lines() {
        let line = line.expect("read the cluster file");
        let (kind, json) = line.split_once('\t').expect("Kind<TAB>json lines");
        let object = match kind {
            "Namespace" => serde_json::from_str(json).map(Object::Namespace),
            "Node" => serde_json::from_str(json).map(Object::Node),
            "NetworkPolicy" => serde_json::from_str(json).map(Object::NetworkPolicy),
            "Pod" => serde_json::from_str(json).map(Object::Pod),
            other => panic!("unknown kind {other} in the cluster file"),
        }
        .expect("objects the parent wrote");
        world.observe(&object);
        daemon.send(Change::Apply(Box::new(object)));
        sent += 1;
    }
    let init = Instant::now();
    daemon
        .tx
        .send(Event::InitDone)
        .expect("the state loop is running");
    sent += 1;
    let c = daemon.collect(sent, Instant::now() + LOAD_TIMEOUT);
    assert!(
        c.complete,
        "the initial load was not committed within {LOAD_TIMEOUT:?} (see the daemon's errors above)"
    );
    let committed = c.last_commit.expect("a sync was committed");
    emit(&Msg::Row(
        Row::new(
            1,
            &format!("initial load, {label}"),
            sent,
            Some(committed - started),
        )
        .with(&c.reports),
    ));
    emit(&Msg::Row(Row::new(
        1,
        "  of which InitDone -> committed",
        0,
        Some(committed - init),
    )));
}

/// The steady-state changes, in turn: a pod added on another node, one added on this node,
/// a pod relabelled (alternately of this node and of another), one of the two pods just
/// added deleted, a policy edited (its ingress ports).
struct Changes {
    local: Vec<usize>,
    remote: Vec<usize>,
    added: [Option<PodSeed>; 2],
    made: usize,
}

impl Changes {
    fn new(world: &World) -> Changes {
        let (local, remote) =
            (0..world.pods.len()).partition(|&i| world.pods[i].node == world.node);
        Changes {
            local,
            remote,
            added: [None, None],
            made: 0,
        }
    }

    /// The next change and its kind (an index of [`STEADY_KINDS`]).
    fn next(&mut self, world: &mut World) -> (usize, Change) {
        let k = self.made;
        self.made += 1;
        let round = k / STEADY_KINDS.len();
        let mut kind = k % STEADY_KINDS.len();
        if kind == 4 && world.policies.is_empty() {
            kind = 0;
        }
        let pick = |ids: &[usize], n: usize| {
            if ids.is_empty() {
                0
            } else {
                ids[n % ids.len()]
            }
        };
        let change = match kind {
            // A replica of an existing deployment, on another node or on this one.
            0 | 1 => {
                let ids = if kind == 0 { &self.remote } else { &self.local };
                let mut seed = world.pods[pick(ids, round * 13)].clone();
                seed.name = format!("{}-steady-{k}", seed.app);
                seed.ip = world.fresh_ip();
                let object = seed.object(true);
                self.added[kind] = Some(seed);
                Change::Apply(Box::new(object))
            }
            2 => {
                let ids = if round.is_multiple_of(2) {
                    &self.local
                } else {
                    &self.remote
                };
                let seed = &mut world.pods[pick(ids, round * 7 + 3)];
                seed.tier = (seed.tier + 1) % TIERS.len();
                Change::Apply(Box::new(seed.object(true)))
            }
            3 => match self.added[round % 2].take() {
                Some(seed) => Change::Delete(seed.reference()),
                None => Change::Delete(world.pods[pick(&self.remote, round)].reference()),
            },
            _ => {
                let i = round % world.policies.len();
                let policy = &mut world.policies[i];
                if let Some(spec) = policy.spec.as_mut() {
                    for rule in spec.ingress.iter_mut().flatten() {
                        rule.ports = Some(vec![NetworkPolicyPort {
                            port: Some(IntOrString::Int(20_000 + k as i32)),
                            ..Default::default()
                        }]);
                    }
                }
                Change::Apply(Box::new(Object::NetworkPolicy(policy.clone())))
            }
        };
        (kind, change)
    }
}

/// Phase 2a: lone changes, each sent `STEADY_SPACING` after the previous one was committed,
/// so each is its own sync.
fn steady_lone(
    daemon: &Daemon,
    world: &mut World,
    changes: &mut Changes,
    count: usize,
    label: &str,
) {
    let mut samples: Vec<(usize, SyncReport)> = Vec::new();
    for _ in 0..count {
        let (kind, change) = changes.next(world);
        let sent_at = Instant::now();
        daemon.send(change);
        let c = daemon.collect(1, sent_at + STEP_TIMEOUT);
        assert!(
            c.complete,
            "a steady-state change was not committed within {STEP_TIMEOUT:?}"
        );
        samples.extend(c.reports.into_iter().map(|r| (kind, r)));
        std::thread::sleep(STEADY_SPACING);
    }
    emit(&Msg::Row(
        Row::new(2, &format!("lone changes, {label}: all"), count, None)
            .with(samples.iter().map(|(_, r)| r)),
    ));
    for (kind, name) in STEADY_KINDS.iter().enumerate() {
        let of_kind: Vec<&SyncReport> = samples
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| r)
            .collect();
        let events = of_kind.iter().map(|r| r.events).sum();
        emit(&Msg::Row(
            Row::new(2, &format!("  {name}"), events, None).with(of_kind),
        ));
    }
}

/// Phase 2b: a steady stream, one change every `STEADY_SPACING` by the clock, whether the
/// previous one is committed or not (changes may then share a sync).
fn steady_stream(
    daemon: &Daemon,
    world: &mut World,
    changes: &mut Changes,
    count: usize,
    label: &str,
) {
    let started = Instant::now();
    for i in 0..count {
        let (_, change) = changes.next(world);
        std::thread::sleep(
            (started + STEADY_SPACING * i as u32).saturating_duration_since(Instant::now()),
        );
        daemon.send(change);
    }
    let c = daemon.collect(count, Instant::now() + STEP_TIMEOUT);
    assert!(
        c.complete,
        "the steady stream was not committed within {STEP_TIMEOUT:?} of its last change"
    );
    let wall = c.last_commit.map(|t| t - started);
    emit(&Msg::Row(
        Row::new(
            2,
            &format!("stream, 1 per {} ms, {label}", STEADY_SPACING.as_millis()),
            count,
            wall,
        )
        .with(&c.reports),
    ));
}

#[derive(Clone, Copy, PartialEq)]
enum Storm {
    /// A rolling restart of every pod: replacement Pending, then Running, old pod deleted.
    Created,
    /// Every pod's tier label rewritten.
    Relabelled,
}

/// Phase 3: a storm from a producer thread, as fast as it goes. Returns whether the daemon
/// committed all of it within `budget`.
fn storm(daemon: &Daemon, world: &mut World, storm: Storm, budget: Duration) -> bool {
    let pods = std::mem::take(&mut world.pods);
    let events = match storm {
        Storm::Created => 3 * pods.len(),
        Storm::Relabelled => pods.len(),
    };
    let first_ip = world.next_ip;
    world.next_ip += pods.len();
    let tx = daemon.tx.clone();
    let started = Instant::now();
    let producer = std::thread::Builder::new()
        .name("producer".into())
        .spawn(move || {
            let mut now = Vec::with_capacity(pods.len());
            for (i, old) in pods.into_iter().enumerate() {
                match storm {
                    Storm::Created => {
                        let new = PodSeed {
                            name: format!("{}-{NEW_HASH}-{i:05x}", old.app),
                            hash: NEW_HASH.to_string(),
                            ip: synth::pod_ip(first_ip + 1 + i),
                            ..old.clone()
                        };
                        send(&tx, Change::Apply(Box::new(new.object(false))));
                        send(&tx, Change::Apply(Box::new(new.object(true))));
                        send(&tx, Change::Delete(old.reference()));
                        now.push(new);
                    }
                    Storm::Relabelled => {
                        let mut pod = old;
                        pod.tier = (pod.tier + 1) % TIERS.len();
                        send(&tx, Change::Apply(Box::new(pod.object(true))));
                        now.push(pod);
                    }
                }
            }
            (now, started.elapsed())
        })
        .expect("spawn the producer");
    let c = daemon.collect(events, started + budget);
    let (pods, sending) = producer.join().expect("the producer ends");
    world.pods = pods;
    let (name, what) = match storm {
        Storm::Created => (
            "storm A: created (rolling restart, 3 ev/pod)",
            "storm A (created)",
        ),
        Storm::Relabelled => (
            "storm B: relabelled (tier of every pod)",
            "storm B (relabelled)",
        ),
    };
    let wall = match (c.complete, c.last_commit) {
        (true, Some(at)) => at - started,
        _ => budget,
    };
    emit(&Msg::Row(
        Row::new(3, name, events, Some(wall)).with(&c.reports),
    ));
    let per_sync: Vec<f64> = c.reports.iter().map(|r| r.events as f64).collect();
    let spread = if per_sync.is_empty() {
        "no sync committed".to_string()
    } else {
        format!(
            "events per sync: first {}, p50 {}, max {}; {} of {} syncs covered a single event",
            per_sync[0],
            pct(&per_sync, 0.5),
            pct(&per_sync, 1.0),
            per_sync.iter().filter(|n| **n == 1.0).count(),
            per_sync.len()
        )
    };
    emit(&Msg::Note(format!(
        "{what}: the producer sent its {events} events in {:.0} ms; {spread}",
        ms(sending)
    )));
    if !c.complete {
        emit(&Msg::Note(format!(
            "{what}: NOT absorbed within {} s: {} of {events} events committed in {} syncs",
            budget.as_secs(),
            c.committed,
            c.reports.len()
        )));
    }
    c.complete
}
