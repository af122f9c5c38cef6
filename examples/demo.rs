//! `make demo`: kube-nftpol enforcing NetworkPolicy on a two-node Flannel-like cluster built
//! from network namespaces on this machine, with every verdict measured by real connections.
//!
//! 1. Builds the cluster of the traffic tests (integration/README.md): an underlay, nodes
//!    `node-a` and `node-b` (each a namespace with `cni0`, `flannel.1` VXLAN and forwarding),
//!    and one namespace per pod. Every pod serves TCP 53, 80, 5432 and 8080 and UDP 53 (echo).
//! 2. Writes Namespace, Node and Pod manifests into a directory and starts one
//!    `kube-nftpol run --manifests DIR` per node, inside the node's namespace.
//! 3. Applies the application's policies step by step. After each step it waits until both
//!    daemons have committed exactly the ruleset the library compiles for the new manifests
//!    (`--status-file`), then probes every source pod to every destination with real TCP
//!    connects and UDP exchanges, prints the table, compares each cell with the matrix the
//!    NetworkPolicy semantics imply (written by hand below), and prints node-a's table.
//! 4. Stops the daemons and removes the namespaces and the directory: also on failure and on
//!    SIGINT/SIGTERM (exit status 130).
//!
//! Needs root. Exit status: 0 when every cell was as expected, 1 otherwise (or on failure).
//! `KNP_DEMO_KEEP=1` keeps the manifests and daemon logs directory; `KNP_DEMO_BIN` names the
//! kube-nftpol binary (default: `../kube-nftpol` next to this example's directory, i.e.
//! `target/release/kube-nftpol`).

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kube_nftpol::compile::{compile_with, fnv1a64, Options};
use kube_nftpol::model::Cluster as Model;
use kube_nftpol::render::text;
use kube_nftpol::sources::manifests;

// The traffic harness's cluster, servers and probes, used as they are.
#[allow(dead_code)]
#[path = "../integration/traffic/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../integration/traffic/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "../integration/traffic/probe.rs"]
mod probe;
#[allow(dead_code)]
#[path = "../integration/traffic/servers.rs"]
mod servers;

/// What probe.rs needs from tests/support (the rest of which is the oracle).
mod support {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Proto {
        Tcp,
        Udp,
        // probe.rs also sends raw SCTP INITs; the demo does not.
        #[allow(dead_code)]
        Sctp,
    }
}

use cluster::{Cluster, PodNet};
use probe::Probe;
use servers::Ports;
use support::Proto;

const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The application
// ---------------------------------------------------------------------------------------

struct PodDef {
    namespace: &'static str,
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// Container ports (name, protocol, number) for the manifest.
    ports: &'static [(&'static str, &'static str, u16)],
    /// 0 = node-a, 1 = node-b.
    node: usize,
    /// Host part of its address: 10.244.<node+1>.<host>.
    host: u8,
}

const NAMESPACES: [&str; 4] = ["shop", "data", "client", "kube-system"];

const FRONTEND: usize = 0;
const BACKEND: usize = 1;
const DATABASE: usize = 2;
const CLIENT: usize = 3;
const DNS: usize = 4;

const PODS: [PodDef; 5] = [
    PodDef {
        namespace: "shop",
        name: "frontend",
        labels: &[("app", "frontend")],
        ports: &[("http", "TCP", 80)],
        node: 0,
        host: 10,
    },
    PodDef {
        namespace: "shop",
        name: "backend",
        labels: &[("app", "backend")],
        ports: &[("http", "TCP", 8080)],
        node: 1,
        host: 10,
    },
    PodDef {
        namespace: "data",
        name: "database",
        labels: &[("app", "database")],
        ports: &[("postgres", "TCP", 5432)],
        node: 0,
        host: 11,
    },
    PodDef {
        namespace: "client",
        name: "client",
        labels: &[("app", "client")],
        ports: &[],
        node: 1,
        host: 11,
    },
    PodDef {
        namespace: "kube-system",
        name: "coredns",
        labels: &[("k8s-app", "kube-dns")],
        ports: &[("dns", "UDP", 53), ("dns-tcp", "TCP", 53)],
        node: 0,
        host: 12,
    },
];

/// What every pod serves (the harness serves the same ports everywhere).
fn served() -> Ports {
    Ports {
        tcp: vec![53, 80, 5432, 8080],
        udp: vec![53],
    }
}

/// Rows of the tables: the pods connections are made from.
const ROWS: [usize; 4] = [CLIENT, FRONTEND, BACKEND, DATABASE];

/// Columns: destination pod, protocol, port.
struct Column {
    pod: usize,
    proto: Proto,
    port: u16,
    label: &'static str,
}

const COLUMNS: [Column; 6] = [
    Column {
        pod: FRONTEND,
        proto: Proto::Tcp,
        port: 80,
        label: "frontend:80",
    },
    Column {
        pod: BACKEND,
        proto: Proto::Tcp,
        port: 8080,
        label: "backend:8080",
    },
    Column {
        pod: BACKEND,
        proto: Proto::Tcp,
        port: 80,
        label: "backend:80",
    },
    Column {
        pod: DATABASE,
        proto: Proto::Tcp,
        port: 5432,
        label: "database:5432",
    },
    Column {
        pod: DNS,
        proto: Proto::Udp,
        port: 53,
        label: "dns:53/udp",
    },
    Column {
        pod: DNS,
        proto: Proto::Tcp,
        port: 53,
        label: "dns:53/tcp",
    },
];

struct Policy {
    namespace: &'static str,
    name: &'static str,
    /// One line: what it does.
    summary: &'static str,
    spec: &'static str,
}

struct Step {
    title: &'static str,
    policies: &'static [Policy],
    /// What the policies in force (this step's and every earlier one's) imply, one string per
    /// row of [`ROWS`], one character per column of [`COLUMNS`]: `o` reachable, `-` blocked,
    /// `.` not probed (a pod to itself). Written from the NetworkPolicy semantics, never
    /// from the demo's output.
    expected: [&'static str; 4],
}

const DEFAULT_DENY: &str = "
  podSelector: {}
  policyTypes: [Ingress, Egress]";

const STEPS: [Step; 5] = [
    Step {
        title: "no NetworkPolicy: every pod reaches every pod",
        policies: &[],
        //         frontend:80 backend:8080 backend:80 database:5432 dns:53/udp dns:53/tcp
        expected: [
            "oooooo", // client
            ".ooooo", // frontend
            "o..ooo", // backend
            "ooo.oo", // database
        ],
    },
    Step {
        title: "default deny, ingress and egress, in the app namespaces shop and data",
        policies: &[
            Policy {
                namespace: "shop",
                name: "default-deny",
                summary: "every pod of shop: isolated for ingress and egress, nothing allowed",
                spec: DEFAULT_DENY,
            },
            Policy {
                namespace: "data",
                name: "default-deny",
                summary: "every pod of data: isolated for ingress and egress, nothing allowed",
                spec: DEFAULT_DENY,
            },
        ],
        // The client and kube-system namespaces have no policy: the client still reaches
        // DNS, and nothing else (every other destination is isolated for ingress). The app
        // pods can neither send nor receive.
        expected: [
            "----oo", // client
            ".-----", // frontend
            "-..---", // backend
            "---.--", // database
        ],
    },
    Step {
        title: "allow backend -> database on TCP 5432",
        policies: &[
            Policy {
                namespace: "data",
                name: "database-from-backend",
                summary: "app=database: ingress from shop's app=backend, TCP 5432",
                spec: "
  podSelector: {matchLabels: {app: database}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
      podSelector: {matchLabels: {app: backend}}
    ports: [{protocol: TCP, port: 5432}]",
            },
            Policy {
                namespace: "shop",
                name: "backend-to-database",
                summary: "app=backend: egress to data's app=database, TCP 5432",
                spec: "
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}
      podSelector: {matchLabels: {app: database}}
    ports: [{protocol: TCP, port: 5432}]",
            },
        ],
        // Both ends are isolated, so it takes both policies: the backend's egress and the
        // database's ingress. Only that one flow opens.
        expected: [
            "----oo", // client
            ".-----", // frontend
            "-..o--", // backend
            "---.--", // database
        ],
    },
    Step {
        title: "allow frontend -> backend on TCP 8080",
        policies: &[
            Policy {
                namespace: "shop",
                name: "backend-from-frontend",
                summary: "app=backend: ingress from app=frontend (same namespace), TCP 8080",
                spec: "
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    ports: [{protocol: TCP, port: 8080}]",
            },
            Policy {
                namespace: "shop",
                name: "frontend-to-backend",
                summary: "app=frontend: egress to app=backend (same namespace), TCP 8080",
                spec: "
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: backend}}
    ports: [{protocol: TCP, port: 8080}]",
            },
        ],
        // frontend -> backend:8080 opens; backend:80 stays closed (the rules name 8080).
        expected: [
            "----oo", // client
            ".o----", // frontend
            "-..o--", // backend
            "---.--", // database
        ],
    },
    Step {
        title: "allow DNS egress (UDP and TCP 53 to kube-system's k8s-app=kube-dns)",
        policies: &[
            Policy {
                namespace: "shop",
                name: "allow-dns",
                summary: "every pod of shop: egress to kube-system's k8s-app=kube-dns, UDP+TCP 53",
                spec: DNS_EGRESS,
            },
            Policy {
                namespace: "data",
                name: "allow-dns",
                summary: "every pod of data: egress to kube-system's k8s-app=kube-dns, UDP+TCP 53",
                spec: DNS_EGRESS,
            },
        ],
        // kube-system has no policy, so the DNS pod's ingress is open: the app pods' egress
        // to it is all it takes.
        expected: [
            "----oo", // client
            ".o--oo", // frontend
            "-..ooo", // backend
            "---.oo", // database
        ],
    },
];

const DNS_EGRESS: &str = "
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]";

// ---------------------------------------------------------------------------------------
// Process-wide state, so that a signal can clean up from anywhere
// ---------------------------------------------------------------------------------------

struct Daemon {
    node: &'static str,
    child: Child,
    status: PathBuf,
    log: PathBuf,
}

struct Shared {
    /// `knp-<pid>-<n>-`: every namespace of the demo starts with it.
    prefix: String,
    work: PathBuf,
    daemons: Mutex<Vec<Daemon>>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
/// Held while namespaces are created and daemons started, so a signal cleans up after that,
/// never in the middle of it.
static SETUP: Mutex<()> = Mutex::new(());
/// Held, never released, by whoever cleans up and exits.
static EXIT: Mutex<()> = Mutex::new(());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn shared() -> &'static Shared {
    SHARED.get().expect("shared state is set first thing")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A failure while a signal is being handled is the signal's doing: say nothing about it.
/// (Ctrl-C in a terminal also reaches the daemons and `ip` children, which may make the main
/// thread fail a moment before the signal thread sees the signal.)
fn interrupted() -> bool {
    if !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(300));
    }
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Once a signal came, the main thread stops here (the signal thread cleans up and exits):
/// nothing measured while the daemons and namespaces are being taken down is shown.
fn checkpoint() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// Stops the daemons, deletes every namespace named with our prefix and the work directory,
/// and exits. Only the first caller gets here; any other blocks until the process is gone.
fn cleanup_and_exit(code: i32) -> ! {
    let _exit = lock(&EXIT);
    let state = shared();
    let daemons: Vec<Daemon> = std::mem::take(&mut *lock(&state.daemons));
    for daemon in &daemons {
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for mut daemon in daemons {
        loop {
            match daemon.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("daemon of {} ignored SIGTERM: killing it", daemon.node);
                    let _ = daemon.child.kill();
                    let _ = daemon.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let ours = |state: &Shared| -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(&state.prefix))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names = ours(state);
    names.sort();
    for name in &names {
        let out = Command::new("ip").args(["netns", "del", name]).output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!(
                    "warning: ip netns del {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    let left = ours(state);
    if std::env::var_os("KNP_DEMO_KEEP").is_some_and(|v| v == "1") {
        if state.work.exists() {
            eprintln!("kept {} (manifests, daemon logs)", state.work.display());
        }
    } else {
        let _ = std::fs::remove_dir_all(&state.work);
    }
    if left.is_empty() {
        println!(
            "cleaned up: daemons stopped, {} network namespaces removed",
            names.len()
        );
    } else {
        eprintln!("warning: could not remove the network namespaces {left:?}");
    }
    std::process::exit(code)
}

fn install_signal_handler() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing the SIGINT/SIGTERM handler")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                eprintln!("\n{name}: stopping the daemons and removing the namespaces ...");
                // Let a namespace or daemon being created finish first, so it is removed too.
                let _setup = lock(&SETUP);
                cleanup_and_exit(130);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the demo builds network namespaces, veths, bridges and nftables tables: run it as root");
        std::process::exit(1);
    }
    // Namespaces and directories of earlier runs that were killed (their pid is gone).
    netns::clean_stale();
    let prefix = netns::unique_prefix();
    let work = std::env::temp_dir().join(format!("{prefix}work"));
    let _ = SHARED.set(Shared {
        prefix,
        work,
        daemons: Mutex::new(Vec::new()),
    });
    if let Err(e) = install_signal_handler() {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !interrupted() {
            default_hook(info);
        }
    }));
    let started = Instant::now();
    let code = match std::panic::catch_unwind(run) {
        Ok(Ok(0)) => {
            println!(
                "\nAll cells as the policies imply. Demo took {:.1?}.",
                started.elapsed()
            );
            0
        }
        Ok(Ok(unexpected)) => {
            println!("\nUNEXPECTED: {unexpected} cell(s) differ from what the policies imply.");
            1
        }
        Ok(Err(e)) => {
            if !interrupted() {
                eprintln!("\ndemo failed: {e:#}");
            }
            1
        }
        Err(_) => 1,
    };
    let code = if code != 0 && interrupted() {
        130
    } else {
        code
    };
    cleanup_and_exit(code)
}

// ---------------------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------------------

/// Returns the number of cells that differed from the expected matrices.
fn run() -> Result<usize> {
    let state = shared();
    let binary = daemon_binary()?;
    let manifests = state.work.join("manifests");

    println!("kube-nftpol demo: a two-node Flannel-like cluster from network namespaces");
    println!(
        "(namespaces {}*, work directory {})\n",
        state.prefix,
        state.work.display()
    );

    let setup = lock(&SETUP);
    let t = Instant::now();
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("creating {}", manifests.display()))?;
    let options = kernel_options()?;
    // Never dropped: cleanup_and_exit removes the namespaces by name, whatever happens.
    let cluster: &'static mut Cluster = Box::leak(Box::new(Cluster::new(&state.prefix, served())));
    let mut nets = Vec::new();
    for def in &PODS {
        nets.push(cluster.add_pod(def.node, def.host, true, false));
    }
    let nets: &'static [PodNet] = nets.leak();
    let cluster: &'static Cluster = cluster;

    for name in NAMESPACES {
        write_manifest(
            &manifests,
            &format!("ns-{name}.yaml"),
            &namespace_yaml(name),
        )?;
    }
    for node in &cluster.nodes {
        write_manifest(
            &manifests,
            &format!("node-{}.yaml", node.name),
            &node_yaml(node),
        )?;
    }
    for (def, net) in PODS.iter().zip(nets) {
        let yaml = pod_yaml(def, net, cluster);
        write_manifest(
            &manifests,
            &format!("pod-{}-{}.yaml", def.namespace, def.name),
            &yaml,
        )?;
    }
    let built = t.elapsed();
    let t = Instant::now();
    for node in &cluster.nodes {
        let daemon = spawn_daemon(&binary, node, &manifests, &state.work)?;
        lock(&state.daemons).push(daemon);
    }
    // Never wait in checkpoint() while holding this: the signal thread takes it first.
    drop(setup);
    checkpoint();
    println!("cluster built in {built:.2?}:");
    for node in &cluster.nodes {
        println!(
            "  {}  netns {}  eth0 {}  pod CIDR 10.244.{}.0/24 on cni0, VXLAN flannel.1",
            node.name,
            node.ns.name,
            node.v4,
            cluster::cidr_index(node.index)
        );
    }
    for (def, net) in PODS.iter().zip(nets) {
        let labels: Vec<String> = def.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  pod {:<20} {:<17} {:<12} on {}",
            format!("{}/{}", def.namespace, def.name),
            labels.join(","),
            addr(net).to_string(),
            cluster::NODE_NAMES[def.node]
        );
    }
    wait_converged(&manifests, &options)?;
    checkpoint();
    println!(
        "\ndaemons started: {} run --node-name node-a|node-b --manifests {} (one per node namespace); first sync committed after {:.2?}",
        binary.display(),
        manifests.display(),
        t.elapsed()
    );

    let mut unexpected = 0;
    for (i, step) in STEPS.iter().enumerate() {
        checkpoint();
        println!("\n{}", "=".repeat(100));
        println!("Step {i}: {}", step.title);
        for policy in step.policies {
            write_manifest(
                &manifests,
                &format!("np-{}-{}.yaml", policy.namespace, policy.name),
                &policy_yaml(policy),
            )?;
            println!(
                "  + NetworkPolicy {:<30} {}",
                format!("{}/{}", policy.namespace, policy.name),
                policy.summary
            );
        }
        if step.policies.is_empty() {
            println!("  (none: the manifests hold Namespaces, Nodes and Pods only)");
        }
        let t = Instant::now();
        wait_converged(&manifests, &options)?;
        let converged = t.elapsed();
        let t = Instant::now();
        let table = measure(nets, step)?;
        checkpoint();
        if step.policies.is_empty() {
            println!("  {} probes in {:.2?}\n", table.probes, t.elapsed());
        } else {
            println!(
                "  enforced by both daemons {converged:.0?} after the manifests were written; {} probes in {:.2?}\n",
                table.probes,
                t.elapsed()
            );
        }
        print!("{}", table.text);
        unexpected += table.unexpected;
        let listing = nft_list(&cluster.nodes[0].ns.name)?;
        checkpoint();
        println!("\n  node-a: nft list table inet kube-nftpol (short: policy chains and non-empty sets/maps)");
        for line in condensed(&listing).lines() {
            println!("  | {line}");
        }
    }

    let listing = nft_list(&cluster.nodes[0].ns.name)?;
    checkpoint();
    println!("\n{}", "=".repeat(100));
    println!("node-a: nft list table inet kube-nftpol (full, after the last step)");
    for line in listing.lines() {
        println!("  | {line}");
    }
    Ok(unexpected)
}

fn daemon_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KNP_DEMO_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the demo executable")?;
    // target/<profile>/examples/demo -> target/<profile>/kube-nftpol
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("kube-nftpol"))
        .ok_or_else(|| anyhow!("no directory above {}", exe.display()))?;
    if !binary.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release --bin kube-nftpol) or set KNP_DEMO_BIN",
            binary.display()
        );
    }
    Ok(binary)
}

/// The ruleset shape `kube-nftpol run` picks on this kernel: its start-up probe, run in a
/// throwaway network namespace (check mode: nothing is committed anyway).
fn kernel_options() -> Result<Options> {
    std::thread::spawn(|| -> Result<Options> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET)")?;
        let features = kube_nftpol::dataplane::probe::probe().context("the kernel probe")?;
        Ok(features.options())
    })
    .join()
    .map_err(|_| anyhow!("the kernel probe thread panicked"))?
}

fn addr(net: &PodNet) -> IpAddr {
    IpAddr::from(net.v4.expect("demo pods are IPv4"))
}

// ---------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------

/// Written under a hidden name (the daemon skips those), then renamed into place.
fn write_manifest(dir: &Path, file: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("renaming {}", tmp.display()))
}

fn namespace_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    kubernetes.io/metadata.name: {name}
"
    )
}

fn node_yaml(node: &cluster::Node) -> String {
    let n = cluster::cidr_index(node.index);
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
    kubernetes.io/hostname: {name}
spec:
  podCIDR: 10.244.{n}.0/24
  podCIDRs:
  - 10.244.{n}.0/24
status:
  addresses:
  - type: InternalIP
    address: {ip}
  - type: Hostname
    address: {name}
",
        name = node.name,
        ip = node.v4,
    )
}

fn pod_yaml(def: &PodDef, net: &PodNet, cluster: &Cluster) -> String {
    let node = cluster.node(def.node);
    let mut labels = String::new();
    for (k, v) in def.labels {
        labels.push_str(&format!("\n    {k}: {v}"));
    }
    let mut ports = String::new();
    if !def.ports.is_empty() {
        ports.push_str("\n    ports:");
        for (name, proto, number) in def.ports {
            ports.push_str(&format!(
                "\n    - name: {name}\n      protocol: {proto}\n      containerPort: {number}"
            ));
        }
    }
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:{labels}
spec:
  nodeName: {node_name}
  containers:
  - name: main
    image: registry.k8s.io/e2e-test-images/agnhost:2.52{ports}
status:
  phase: Running
  hostIP: {host_ip}
  hostIPs:
  - ip: {host_ip}
  podIP: {ip}
  podIPs:
  - ip: {ip}
",
        name = def.name,
        namespace = def.namespace,
        node_name = node.name,
        host_ip = node.v4,
        ip = addr(net),
    )
}

fn policy_yaml(policy: &Policy) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {}
  namespace: {}
spec:{}
",
        policy.name, policy.namespace, policy.spec
    )
}

// ---------------------------------------------------------------------------------------
// Daemons and convergence
// ---------------------------------------------------------------------------------------

fn spawn_daemon(
    binary: &Path,
    node: &cluster::Node,
    manifests: &Path,
    work: &Path,
) -> Result<Daemon> {
    let status = work.join(format!("status-{}", node.name));
    let log = work.join(format!("daemon-{}.log", node.name));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("cloning the log handle")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns.name]);
    // The daemon gets SIGTERM if the demo dies without cleaning up (SIGKILL).
    if Path::new("/usr/bin/setpriv").exists() {
        cmd.args(["/usr/bin/setpriv", "--pdeathsig", "TERM", "--"]);
    }
    cmd.arg(binary)
        .args(["run", "--node-name", node.name, "--metrics-addr", ""])
        .arg("--manifests")
        .arg(manifests)
        .arg("--status-file")
        .arg(&status)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    Ok(Daemon {
        node: node.name,
        child,
        status,
        log,
    })
}

/// The text `kube-nftpol run` commits on `node` for the manifests now in `dir`.
fn expected_text(dir: &Path, node: &str, options: &Options) -> Result<String> {
    let loaded = manifests::load_dir(dir).with_context(|| format!("loading {}", dir.display()))?;
    if !loaded.problems.is_empty() {
        bail!(
            "the demo wrote manifests the product complains about: {:#?}",
            loaded.problems
        );
    }
    let (model, diagnostics) = Model::from_objects(loaded.objects);
    let compiled = compile_with(&model, node, options);
    let all: Vec<String> = diagnostics
        .iter()
        .chain(&compiled.diagnostics)
        .map(|d| d.to_string())
        .collect();
    if !all.is_empty() {
        bail!("the demo's manifests have bad fields: {all:#?}");
    }
    Ok(text::render(&compiled.ruleset))
}

/// Waits until each daemon's status file holds the fingerprint of the ruleset the library
/// compiles for its node from the manifests now in `dir`: the change is in the kernel.
fn wait_converged(dir: &Path, options: &Options) -> Result<()> {
    let state = shared();
    let want: Vec<(&'static str, String)> = lock(&state.daemons)
        .iter()
        .map(|d| {
            expected_text(dir, d.node, options)
                .map(|text| (d.node, format!("{:016x}", fnv1a64(text.as_bytes()))))
        })
        .collect::<Result<_>>()?;
    if want.is_empty() {
        bail!("the daemons are gone");
    }
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    loop {
        let mut pending = Vec::new();
        {
            let mut daemons = lock(&state.daemons);
            for (daemon, (_, want)) in daemons.iter_mut().zip(&want) {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    bail!(
                        "kube-nftpol run for {} exited ({status}); its log:\n{}",
                        daemon.node,
                        tail(&daemon.log)
                    );
                }
                let have = std::fs::read_to_string(&daemon.status).unwrap_or_default();
                if have.trim() != want {
                    pending.push((daemon.node, tail(&daemon.log)));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut msg = format!("the daemons did not converge within {CONVERGENCE_DEADLINE:?}:");
            for (node, log) in pending {
                msg.push_str(&format!("\n--- log of {node} ---\n{log}"));
            }
            bail!(msg);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------

struct Table {
    text: String,
    probes: usize,
    unexpected: usize,
}

/// Probes every cell of the step's table (all at once), compares with the expected matrix.
fn measure(nets: &[PodNet], step: &Step) -> Result<Table> {
    let mut cells = Vec::new(); // (row, column, expected reachable)
    for (r, &src) in ROWS.iter().enumerate() {
        let expected: Vec<char> = step.expected[r].chars().collect();
        if expected.len() != COLUMNS.len() {
            bail!(
                "expected matrix row {r} of step {:?} has the wrong length",
                step.title
            );
        }
        for (c, col) in COLUMNS.iter().enumerate() {
            match expected[c] {
                'o' => cells.push((r, c, true)),
                '-' => cells.push((r, c, false)),
                '.' if col.pod == src => {}
                other => bail!(
                    "bad expected cell {other:?} (row {r}, column {c}) in {:?}",
                    step.title
                ),
            }
        }
    }
    let probe_of = |r: usize, c: usize, timeout: Duration| {
        let (src, dst) = (&nets[ROWS[r]], &nets[COLUMNS[c].pod]);
        Probe {
            src: src.ns.file(),
            bind: Some(addr(src)),
            dst: addr(dst),
            proto: COLUMNS[c].proto,
            port: COLUMNS[c].port,
            sctp_owner: &dst.ns.name,
            timeout,
        }
    };
    let probes: Vec<Probe> = cells
        .iter()
        .map(|&(r, c, _)| probe_of(r, c, probe::SHORT))
        .collect();
    let mut outcomes = probe::run_all(&probes);
    // A flow that should get through and did not gets a second, longer chance (a slow
    // machine must not make a drop appear); one that got through is never retried.
    let retry: Vec<usize> = (0..cells.len())
        .filter(|&i| cells[i].2 && outcomes[i].reachable() != Some(true))
        .collect();
    let mut count = probes.len();
    if !retry.is_empty() {
        let again: Vec<Probe> = retry
            .iter()
            .map(|&i| probe_of(cells[i].0, cells[i].1, probe::LONG))
            .collect();
        count += again.len();
        for (&i, outcome) in retry.iter().zip(probe::run_all(&again)) {
            outcomes[i] = outcome;
        }
    }

    let mut grid: Vec<Vec<String>> = vec![vec!["·".to_string(); COLUMNS.len()]; ROWS.len()];
    let mut notes = Vec::new();
    for (&(r, c, want), outcome) in cells.iter().zip(&outcomes) {
        let got = outcome.reachable();
        let mut cell = match got {
            Some(true) => "ok".to_string(),
            Some(false) => "--".to_string(),
            None => "??".to_string(),
        };
        if got != Some(want) {
            cell.push_str(" UNEXPECTED");
            let src = &PODS[ROWS[r]];
            let col = &COLUMNS[c];
            notes.push(format!(
                "  UNEXPECTED: {}/{} -> {} ({}): {outcome}, but the policies say {}",
                src.namespace,
                src.name,
                col.label,
                addr(&nets[col.pod]),
                if want { "reachable" } else { "blocked" }
            ));
        }
        grid[r][c] = cell;
    }

    let first = 24;
    let width = COLUMNS
        .iter()
        .map(|c| c.label.len())
        .chain(grid.iter().flatten().map(|s| s.chars().count()))
        .max()
        .unwrap_or(0)
        + 2;
    let mut lines = Vec::new();
    let mut header = format!("  {:<first$}", "from \\ to");
    for col in &COLUMNS {
        header.push_str(&format!("{:<width$}", col.label));
    }
    lines.push(header);
    for (r, &src) in ROWS.iter().enumerate() {
        let def = &PODS[src];
        let label = format!(
            "{}/{} ({})",
            def.namespace,
            def.name,
            cluster::NODE_NAMES[def.node]
        );
        let mut line = format!("  {label:<first$}");
        for cell in &grid[r] {
            // `{:<width$}` pads by chars, so "·" lines up with the rest.
            line.push_str(&format!("{cell:<width$}"));
        }
        lines.push(line);
    }
    let mut text = String::new();
    for line in lines {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text.push_str("  (ok = connected and echoed, -- = no answer within 300 ms, · = not probed: a pod to itself; TCP unless /udp)\n");
    for note in &notes {
        text.push_str(note);
        text.push('\n');
    }
    Ok(Table {
        text,
        probes: count,
        unexpected: notes.len(),
    })
}

// ---------------------------------------------------------------------------------------
// nft
// ---------------------------------------------------------------------------------------

fn nft_list(netns: &str) -> Result<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "nft",
            "list",
            "table",
            "inet",
            "kube-nftpol",
        ])
        .output()
        .context("running nft list table")?;
    if !out.status.success() {
        bail!(
            "nft list table inet kube-nftpol in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The table without its base chains (`forward`, `input`: the same at every step) and
/// without sets and maps that have no elements.
fn condensed(listing: &str) -> String {
    let mut kept = String::new();
    let mut omitted = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("\t\t") {
            block.push(line);
            continue;
        }
        let Some(rest) = line.strip_prefix('\t') else {
            // `table inet kube-nftpol {`, its `}`, blank lines between blocks.
            continue;
        };
        if rest.trim() != "}" {
            block.push(line);
            continue;
        }
        let header = block.first().map_or("", |h| h.trim());
        let body = block.get(1..).unwrap_or_default();
        let base = body.iter().any(|l| l.contains(" hook "));
        let empty = (header.starts_with("set ") || header.starts_with("map "))
            && !body.iter().any(|l| l.contains("elements = "));
        if base || empty {
            omitted.push(header.trim_end_matches('{').trim().to_string());
        } else {
            for l in &block {
                kept.push_str(l);
                kept.push('\n');
            }
            kept.push_str(line);
            kept.push('\n');
        }
        block.clear();
    }
    if kept.is_empty() {
        kept.push_str("(no pod is isolated: no policy chains, empty dispatch maps)\n");
    }
    kept.push_str(&format!("(not shown: {})\n", omitted.join(", ")));
    kept
}
