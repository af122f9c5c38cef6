//! `kube-nftpol run` as users run it: the real binary in a network namespace of its own,
//! fed by a manifests directory. Convergence is read from `--status-file` (the fingerprint
//! of the committed ruleset) and compared with what `render` says for the same directory.
//! Needs root.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube_nftpol::compile::{compile_with, fnv1a64, Options};
use kube_nftpol::dataplane::probe;
use kube_nftpol::model::Cluster;
use kube_nftpol::render::text;
use kube_nftpol::sources::manifests;
use support::netns::{assert_root, in_private_netns, nft, nft_status, normalised_listing};

const BIN: &str = env!("CARGO_BIN_EXE_kube-nftpol");
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, a manifests directory and (while running) a daemon in it.
struct Node {
    ns: String,
    dir: PathBuf,
    status: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
    /// `--node-name`.
    name: &'static str,
}

impl Node {
    fn new(scenario: &str) -> Node {
        assert_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let ns = format!("knpd-{}-{n}", std::process::id());
        let base = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("manifests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules/scenarios")
            .join(scenario)
            .join("input");
        for entry in std::fs::read_dir(src).expect("scenario input") {
            let p = entry.expect("entry").path();
            std::fs::copy(&p, dir.join(p.file_name().expect("file name"))).expect("copy manifest");
        }
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "ip netns add {ns}");
        let ok = Command::new("ip")
            .args(["-n", &ns, "link", "set", "lo", "up"])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "lo up in {ns}");
        Node {
            status: base.join("status"),
            log: base.join("daemon.log"),
            ns,
            dir,
            daemon: None,
            name: "node-a",
        }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    fn start(&mut self, extra: &[&str]) {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args = vec!["--manifests", &dir];
        args.extend(extra);
        self.start_raw(&args);
    }

    /// The daemon with exactly these flags besides the node name and status file.
    fn start_raw(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                BIN,
                "run",
                "--node-name",
                self.name,
            ])
            .arg("--status-file")
            .arg(&self.status)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon starts");
        self.daemon = Some(child);
    }

    fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.daemon.take().expect("daemon running");
        // `ip netns exec` execs the daemon: the child's pid is the daemon's.
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {signal}");
        wait_timeout(&mut child, Duration::from_secs(5)).expect("daemon exits after the signal")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The fingerprint `render` gives for the directory now.
    fn expected(&self) -> String {
        let loaded = manifests::load_dir(&self.dir).expect("manifests");
        let (cluster, _) = Cluster::from_objects(loaded.objects);
        format!(
            "{:016x}",
            fnv1a64(
                text::render(&compile_with(&cluster, "node-a", &kernel_options()).ruleset)
                    .as_bytes()
            )
        )
    }

    fn status(&self) -> String {
        std::fs::read_to_string(&self.status)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn wait_converged(&self) {
        let want = self.expected();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status() != want {
            assert!(
                Instant::now() < deadline,
                "daemon did not converge to {want} (status {:?}); log:\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.dir.join(name)).expect("rename");
    }

    /// The table as `nft -f` of the render of the directory would make it.
    fn reference(&self) -> String {
        let loaded = manifests::load_dir(&self.dir).expect("manifests");
        let (cluster, _) = Cluster::from_objects(loaded.objects);
        let script = text::render(&compile_with(&cluster, "node-a", &kernel_options()).ruleset);
        in_private_netns(move |ns| {
            nft(ns, &["-f", "-"], Some(&script));
            normalised_listing(ns)
        })
    }

    fn last_sync_line(&self) -> String {
        self.log()
            .lines()
            .rfind(|l| l.contains("sync committed"))
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if let Some(base) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ruleset shape the daemon picks on this kernel (its start-up probe, run once).
fn kernel_options() -> Options {
    static OPTIONS: std::sync::OnceLock<Options> = std::sync::OnceLock::new();
    OPTIONS
        .get_or_init(|| in_private_netns(|_| probe::probe().expect("the kernel probe").options()))
        .clone()
}

const EXTRA_BACKEND: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: backend-2, namespace: shop, labels: {app: backend}}\n\
spec: {nodeName: node-b, containers: [{name: c, image: x}]}\n\
status: {phase: Running, hostIP: 192.168.56.11, podIP: 10.244.2.99, podIPs: [{ip: 10.244.2.99}]}\n";

/// On node-b, labelled like nothing scenario 007's policies select.
const OTHER_NODE_CACHE: &str =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: cache, namespace: shop, labels: {app: cache}}\n\
spec: {nodeName: node-b, containers: [{name: c, image: x}]}\n\
status: {phase: Running, hostIP: 192.168.56.11, podIP: 10.244.2.98, podIPs: [{ip: 10.244.2.98}]}\n";

#[test]
fn converges_follows_edits_incrementally_and_keeps_the_objects_of_a_broken_file() {
    let mut node = Node::new("007-db-only-from-backend");
    node.start(&[]);
    node.wait_converged();
    assert_eq!(
        normalised_listing(&node.path()),
        node.reference(),
        "the kernel holds what render prints"
    );
    assert!(
        node.last_sync_line().contains("kind=\"full\""),
        "first sync is full: {}",
        node.last_sync_line()
    );
    assert!(
        node.last_sync_line().contains("trigger=\"initial\""),
        "{}",
        node.last_sync_line()
    );

    node.write("extra.yaml", EXTRA_BACKEND);
    node.wait_converged();
    let line = node.last_sync_line();
    assert!(
        line.contains("kind=\"incremental\""),
        "a new peer pod is an incremental sync: {line}"
    );
    assert!(
        line.contains("rules_added=0") && line.contains("chains_rewritten=0"),
        "elements only: {line}"
    );
    assert_eq!(normalised_listing(&node.path()), node.reference());

    // The policy file breaks: its policy stays enforced.
    let policy_file = std::fs::read_dir(&node.dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("kind: NetworkPolicy")))
        .expect("a policy file");
    let before = node.status();
    let good = std::fs::read_to_string(&policy_file).expect("read");
    std::fs::write(&policy_file, format!("kind: [unclosed\n---\n{good}")).expect("break it");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node.status(), before, "nothing changed in the kernel");
    assert!(
        node.log().contains("keeping its last good objects"),
        "{}",
        node.log()
    );

    // Deleted, the policy goes away.
    std::fs::remove_file(&policy_file).expect("rm");
    node.wait_converged();
    assert_ne!(node.status(), before);
    assert_eq!(normalised_listing(&node.path()), node.reference());
    assert_eq!(node.signal("-TERM").code(), Some(0));
}

#[test]
fn exit_leaves_the_rules_and_a_restart_replaces_them_atomically() {
    let mut node = Node::new("003-deny-all-ingress-namespace");
    node.start(&[]);
    node.wait_converged();
    let enforced = normalised_listing(&node.path());
    assert_eq!(
        node.signal("-TERM").code(),
        Some(0),
        "SIGTERM is a clean exit"
    );
    assert_eq!(
        normalised_listing(&node.path()),
        enforced,
        "rules stay after exit"
    );
    assert!(node.log().contains("the rules stay in force"));

    // Changed while nobody was running; the restart converges with one full replace.
    node.write(
        "extra.yaml",
        &EXTRA_BACKEND.replace("namespace: shop", "namespace: app"),
    );
    node.start(&[]);
    node.wait_converged();
    assert!(
        node.last_sync_line().contains("kind=\"full\""),
        "{}",
        node.last_sync_line()
    );
    assert_eq!(normalised_listing(&node.path()), node.reference());

    // kill -9 leaves the rules too.
    let status = node.signal("-KILL");
    assert!(!status.success());
    assert_eq!(
        normalised_listing(&node.path()),
        node.reference(),
        "rules stay after kill -9"
    );
}

#[test]
fn bridge_netfilter_is_turned_on_and_drift_is_repaired() {
    let mut node = Node::new("024-policies-add-up");
    let ns = node.ns.clone();
    let sysctl = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "sysctl"])
            .args(args)
            .output()
            .expect("sysctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sysctl(&["-w", "net.bridge.bridge-nf-call-iptables=0"]);
    assert_eq!(sysctl(&["-n", "net.bridge.bridge-nf-call-iptables"]), "0");
    node.start(&["--drift-check-interval", "300ms"]);
    node.wait_converged();
    assert_eq!(
        sysctl(&["-n", "net.bridge.bridge-nf-call-iptables"]),
        "1",
        "{}",
        node.log()
    );
    assert!(
        node.log().contains("enabled bridge netfilter"),
        "{}",
        node.log()
    );

    let want = node.reference();
    nft(&node.path(), &["delete table inet kube-nftpol"], None);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (exists, _, _) = nft_status(
            &node.path(),
            &["list", "table", "inet", "kube-nftpol"],
            None,
        );
        if exists && normalised_listing(&node.path()) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "table not restored; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.log().contains("changed by someone else"),
        "{}",
        node.log()
    );
}

fn http_get(node: &Node, port: u16, path: &str) -> Option<(u16, String)> {
    support::netns::http_get(&node.path(), port, path)
}

/// Polls until `GET path` answers, for at most 5 s.
fn http_wait(node: &Node, port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = http_get(node, port, path) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "nothing serves {path}; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of one sample line of the metrics text, by its exact name and labels.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_health_and_readiness_follow_the_syncs() {
    let mut node = Node::new("007-db-only-from-backend");
    node.start(&["--metrics-addr", "127.0.0.1:9476"]);
    node.wait_converged();
    // Ready once the first full sync is committed (the status file is written right after).
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_wait(&node, 9476, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_wait(&node, 9476, "/healthz"), (200, "ok\n".into()));
    let (code, m) = http_wait(&node, 9476, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(&m, "kube_nftpol_syncs_total{kind=\"full\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "kube_nftpol_ready"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "kube_nftpol_bridge_netfilter{family=\"ipv4\"}"),
        Some(1.0),
        "{m}"
    );
    // 007: db isolated for ingress (one address) → one dispatch element.
    assert!(
        sample(&m, "kube_nftpol_local_targets").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    assert!(
        sample(&m, "kube_nftpol_peer_set_elements").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    assert!(
        sample(&m, "kube_nftpol_last_sync_timestamp_seconds").is_some_and(|v| v > 1.7e9),
        "{m}"
    );
    assert_eq!(
        sample(&m, "kube_nftpol_event_to_commit_seconds_count"),
        Some(0.0),
        "{m}"
    );

    node.write("extra.yaml", EXTRA_BACKEND);
    node.wait_converged();
    let (_, m) = http_wait(&node, 9476, "/metrics");
    assert_eq!(
        sample(&m, "kube_nftpol_syncs_total{kind=\"incremental\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "kube_nftpol_event_to_commit_seconds_count"),
        Some(1.0),
        "{m}"
    );
    let pods = sample(&m, "kube_nftpol_pods").expect("pods gauge");
    // A pod of another node that no peer set here selects: read, judged unable to alter
    // this node's ruleset, nothing compiled or sent.
    node.write("other.yaml", OTHER_NODE_CACHE);
    let mut m = String::new();
    wait_for("the change being skipped", &node, || {
        m = http_wait(&node, 9476, "/metrics").1;
        sample(&m, "kube_nftpol_changes_skipped_total{reason=\"not_read\"}") == Some(1.0)
    });
    assert_eq!(
        sample(&m, "kube_nftpol_syncs_total{kind=\"incremental\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "kube_nftpol_pods"),
        Some(pods + 1.0),
        "the pod is known: {m}"
    );
    node.wait_converged();
    assert_eq!(http_wait(&node, 9476, "/nope").0, 404);
}

#[test]
fn an_unreachable_api_server_keeps_the_previous_rules_and_is_not_ready() {
    let mut node = Node::new("007-db-only-from-backend");
    node.start(&[]);
    node.wait_converged();
    let before = normalised_listing(&node.path());
    node.signal("-TERM");

    // Nothing listens on port 1: every watch fails and retries.
    let kubeconfig = node.dir.with_file_name("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
         clusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: x, context: {cluster: c, user: u}}]\n",
    )
    .expect("kubeconfig");
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    node.start_raw(&[
        "--kubeconfig",
        &kubeconfig,
        "--metrics-addr",
        "127.0.0.1:9476",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, m) = http_wait(&node, 9476, "/metrics");
        let restarts: f64 = m
            .lines()
            .filter(|l| l.starts_with("kube_nftpol_watch_restarts_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if restarts >= 4.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no watch restarts counted:\n{m}\nlog:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sample(&metrics, "kube_nftpol_ready"),
        Some(0.0),
        "{metrics}"
    );
    let (code, body) = http_wait(&node, 9476, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("first full sync"), "{body}");
    assert_eq!(http_wait(&node, 9476, "/healthz").0, 200);
    assert_eq!(
        normalised_listing(&node.path()),
        before,
        "the rules stay in force"
    );
    assert!(node.log().contains("watch failed"), "{}", node.log());
    let status = node.signal("-TERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(normalised_listing(&node.path()), before, "and after exit");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let out = Command::new(BIN)
        .args(["run", "--node-name", "n", "--manifests", "/nonexistent/knp"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot read manifests directory /nonexistent/knp"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["run", "--manifests", "/tmp"])
        .env_remove("NODE_NAME")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "node name is required");
    let out = Command::new(BIN)
        .args([
            "run",
            "--node-name",
            "n",
            "--manifests",
            "/tmp",
            "--debounce",
            "soon",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "bad duration");

    let one_line_exit_2 = |args: &[&str], needle: &str| {
        let out = Command::new(BIN)
            .args(["run", "--node-name", "n"])
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    one_line_exit_2(
        &["--kubeconfig", "/nonexistent/kubeconfig"],
        "/nonexistent/kubeconfig",
    );
    one_line_exit_2(&[], "not running in a cluster");
    one_line_exit_2(
        &["--manifests", "/tmp", "--metrics-addr", "nowhere"],
        "--metrics-addr",
    );
    // clap's own usage errors take a few lines (the error, the usage, a hint).
    let out = Command::new(BIN)
        .args([
            "run",
            "--node-name",
            "n",
            "--manifests",
            "/tmp",
            "--kubeconfig",
            "/tmp/k",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "one source only");
}

/// The pod CIDR elements of `set` in the daemon's table (none if the set does not exist).
fn set_elements(node: &Node, set: &str) -> Option<String> {
    let (ok, out, _) = nft_status(
        &node.path(),
        &["list", "set", "inet", "kube-nftpol", set],
        None,
    );
    ok.then(|| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix("elements = "))
            .unwrap_or("")
            .to_string()
    })
}

/// Polls `ok` for at most 15 s (the daemon re-reads Flannel's subnet file every 5 s tick).
fn wait_for(what: &str, node: &Node, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fail_closed_follows_a_flannel_subnet_file_written_and_changed_after_start() {
    let mut node = Node::new("007-db-only-from-backend");
    let env = node.dir.with_file_name("subnet.env");
    let env_arg = env.to_string_lossy().into_owned();
    // No Node object in 007 and no subnet file yet: no pod CIDR known, nothing guarded.
    node.start(&["--fail-closed", "--flannel-subnet-env", &env_arg]);
    wait_for("the first sync", &node, || !node.status().is_empty());
    assert_eq!(set_elements(&node, "podcidrs-v4"), None);
    assert!(
        node.log().contains("no pod CIDR known for this node"),
        "{}",
        node.log()
    );

    // flanneld writes its file after we started.
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n",
    )
    .expect("write subnet.env");
    wait_for("guarding 10.244.1.0/24", &node, || {
        set_elements(&node, "podcidrs-v4").is_some_and(|e| e.contains("10.244.1.0/24"))
    });
    // Every running pod of node-a in the manifests is programmed, so let through.
    let loaded = manifests::load_dir(&node.dir).expect("manifests");
    let (cluster, _) = Cluster::from_objects(loaded.objects);
    let local: Vec<String> = cluster
        .pods()
        .filter(|p| p.node_name.as_deref() == Some("node-a") && p.is_policy_pod())
        .flat_map(|p| p.ips.iter().map(|ip| ip.to_string()))
        .collect();
    assert!(!local.is_empty());
    let programmed = set_elements(&node, "programmed-v4").unwrap_or_default();
    let listed: Vec<&str> = programmed
        .trim_matches(|c| c == '{' || c == '}' || c == ' ')
        .split(", ")
        .collect();
    assert_eq!(listed.len(), local.len(), "{programmed} vs {local:?}");
    assert!(
        local.iter().all(|ip| listed.contains(&ip.as_str())),
        "{programmed} vs {local:?}"
    );

    // The node got another subnet (flanneld restarted with a new lease).
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n",
    )
    .expect("rewrite subnet.env");
    wait_for("guarding 10.244.7.0/24 only", &node, || {
        set_elements(&node, "podcidrs-v4")
            .is_some_and(|e| e.contains("10.244.7.0/24") && !e.contains("10.244.1.0/24"))
    });
    assert!(node.log().contains("Flannel subnet file changed"));
}

#[test]
fn a_node_name_that_names_nothing_is_reported() {
    let mut node = Node::new("007-db-only-from-backend");
    node.start(&[]);
    wait_for("the first sync", &node, || !node.status().is_empty());
    assert!(
        !node.log().contains("no Node object of this name"),
        "{}",
        node.log()
    );
    node.signal("-TERM");

    let mut wrong = Node::new("007-db-only-from-backend");
    wrong.name = "node-z";
    wrong.start(&["--fail-closed"]);
    wait_for("the first sync", &wrong, || !wrong.status().is_empty());
    let log = wrong.log();
    assert!(
        log.contains("no Node object of this name and no pod bound to it")
            && log.contains("node=\"node-z\"")
            && log.contains("--fail-closed drops every address"),
        "{log}"
    );
}
