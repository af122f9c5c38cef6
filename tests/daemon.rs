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
        Node {
            status: base.join("status"),
            log: base.join("daemon.log"),
            ns,
            dir,
            daemon: None,
        }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    fn start(&mut self, extra: &[&str]) {
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
                "node-a",
                "--manifests",
            ])
            .arg(&self.dir)
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
}
