//! Getting the product's rulesets into the node namespaces, and knowing when they are there.
//!
//! - `daemon`: one `kube-nftpol run --node-name N --manifests DIR --status-file F` per node,
//!   inside the node's namespace. After every committed sync the daemon writes to F the
//!   FNV-1a-64 (16 hex digits) of the text `kube-nftpol render` prints for what it
//!   committed. [`Driver::sync`] computes that text for the current manifests with the
//!   library, and waits until every node's status file shows its hash.
//! - `render` (stand-in until `run` exists): [`Driver::sync`] renders each node's ruleset
//!   with the library and replaces the table atomically with `nft -f`.
//!
//! A node whose daemon runs with `--fail-closed` ([`Target::fail_closed`]) has its text
//! compiled with the guard: the pod CIDRs of its Node object (from the manifests) plus the
//! ones the harness wrote into its `--flannel-subnet-env` file.
//!
//! Where the objects live is pluggable: by default the manifests directory (`--manifests
//! DIR`); with an [`ObjectStore`] (e.g. a real API server, see tests/kube_api.rs) every
//! manifest the harness writes or removes is also created, updated or deleted there, the
//! daemons get the store's flags (e.g. `--kubeconfig F`) instead of `--manifests`, and the
//! expected text is computed from the objects the store lists back.
//!
//! `KNP_TRAFFIC_DRIVER=render|daemon` chooses; without it, `daemon` when the binary has a
//! `run` subcommand, else `render` (said loudly on stderr).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kube_nftpol::compile::{compile_with, fnv1a64, Options};
use kube_nftpol::model::{Cluster as Model, Object};
use kube_nftpol::render::text;
use kube_nftpol::sources::manifests;

use crate::netns::run;

pub const BINARY: &str = env!("CARGO_BIN_EXE_kube-nftpol");
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Render,
    Daemon,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Render => "render",
            Kind::Daemon => "daemon",
        }
    }
}

/// The driver of this process, chosen once.
pub fn kind() -> Kind {
    static KIND: OnceLock<Kind> = OnceLock::new();
    *KIND.get_or_init(|| {
        let has_run = Command::new(BINARY)
            .args(["run", "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let chosen = match std::env::var("KNP_TRAFFIC_DRIVER").as_deref() {
            Ok("render") => Kind::Render,
            Ok("daemon") => Kind::Daemon,
            Ok(other) => panic!("KNP_TRAFFIC_DRIVER={other}: expected render or daemon"),
            Err(_) if has_run => Kind::Daemon,
            Err(_) => {
                // Straight to the process's stderr: libtest captures eprintln! per test.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** traffic tests: `{BINARY} run` does not exist (yet): using the RENDER \
                     STAND-IN driver (library render + `nft -f` per node), not the daemon ***\n"
                );
                Kind::Render
            }
        };
        if chosen == Kind::Daemon && !has_run {
            panic!("KNP_TRAFFIC_DRIVER=daemon but `{BINARY} run --help` fails");
        }
        chosen
    })
}

/// The ruleset shape `kube-nftpol run` picks on this kernel (its start-up probe, run once).
pub fn kernel_options() -> Options {
    static OPTIONS: std::sync::OnceLock<Options> = std::sync::OnceLock::new();
    OPTIONS
        .get_or_init(|| {
            std::thread::spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET)");
                kube_nftpol::dataplane::probe::probe()
                    .expect("the kernel probe")
                    .options()
            })
            .join()
            .expect("probe thread")
        })
        .clone()
}

/// Somewhere other than the manifests directory that the daemons read the cluster from.
/// The harness still writes every manifest into the directory (the oracle reads it there)
/// and mirrors each change here.
pub trait ObjectStore: Send + Sync {
    /// The flags that point `kube-nftpol run` at the store, instead of `--manifests DIR`.
    fn daemon_args(&self) -> Vec<String>;
    /// Creates or updates the object of one manifest (YAML with `kind`).
    fn put(&self, yaml: &str);
    /// Deletes the object of one manifest.
    fn remove(&self, yaml: &str);
    /// Every object the store holds now, as the daemons would see it.
    fn objects(&self) -> Vec<Object>;
}

/// The nft text `kube-nftpol run` commits for `target` on the manifests in `dir` (or on the
/// objects `store` lists, when there is one), computed
/// with the library: the kernel's shape, plus the `--fail-closed` guard when the target's
/// daemon runs with it (its pod CIDRs: the Node object's, read from `dir` by the library,
/// plus the ones the harness wrote into the daemon's `--flannel-subnet-env` file). The
/// harness writes only valid manifests: any problem is a harness bug.
pub fn expected_text(dir: &Path, store: Option<&dyn ObjectStore>, target: &Target) -> String {
    let node = target.node.as_str();
    let objects = match store {
        Some(store) => store.objects(),
        None => {
            let loaded = manifests::load_dir(dir)
                .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
            assert!(
                loaded.problems.is_empty(),
                "the harness wrote manifests the product complains about: {:#?}",
                loaded.problems
            );
            loaded.objects
        }
    };
    let (model, diagnostics) = Model::from_objects(objects);
    let options = Options {
        fail_closed: target.fail_closed,
        pod_cidrs: if target.fail_closed {
            target.subnet_env_cidrs.clone()
        } else {
            Vec::new()
        },
        ..kernel_options()
    };
    let compiled = compile_with(&model, node, &options);
    let all: Vec<String> = diagnostics
        .iter()
        .chain(&compiled.diagnostics)
        .map(|d| d.to_string())
        .collect();
    assert!(
        all.is_empty(),
        "the scenario's manifests have bad fields: {all:#?}"
    );
    text::render(&compiled.ruleset)
}

pub fn status_line(text: &str) -> String {
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// A node the driver programs.
pub struct Target {
    pub node: String,
    pub netns: String,
    /// More flags for this node's `kube-nftpol run` (after the scenario's common ones).
    pub args: Vec<String>,
    /// Its daemon runs with `--fail-closed`.
    pub fail_closed: bool,
    /// The pod CIDRs in the file its daemon reads as `--flannel-subnet-env` (as the
    /// network, e.g. 10.244.2.0/24 for `FLANNEL_SUBNET=10.244.2.1/24`).
    pub subnet_env_cidrs: Vec<IpNet>,
}

struct Daemon {
    node: String,
    child: Child,
    status: PathBuf,
    log: PathBuf,
}

pub struct Driver {
    kind: Kind,
    dir: PathBuf,
    work: PathBuf,
    targets: Vec<Target>,
    daemons: Vec<Daemon>,
    /// Daemon generation, so a restarted daemon logs to a new file.
    generation: usize,
    /// More flags for `kube-nftpol run`.
    extra_args: Vec<String>,
    /// Where the daemons read the cluster from, when not `dir`.
    store: Option<Arc<dyn ObjectStore>>,
}

impl Driver {
    /// Starts the daemons (daemon driver) and brings every node to the current manifests.
    pub fn start(
        kind: Kind,
        dir: &Path,
        work: &Path,
        targets: Vec<Target>,
        extra_args: Vec<String>,
        store: Option<Arc<dyn ObjectStore>>,
    ) -> Driver {
        let mut driver = Driver {
            kind,
            dir: dir.to_path_buf(),
            work: work.to_path_buf(),
            targets,
            daemons: Vec::new(),
            generation: 0,
            extra_args,
            store,
        };
        if kind == Kind::Daemon {
            driver.spawn_daemons();
        }
        driver.sync();
        driver
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn spawn_daemons(&mut self) {
        self.generation += 1;
        for target in &self.targets {
            let status = self.work.join(format!("status-{}", target.node));
            // A status left by an earlier daemon must not read as convergence.
            let _ = std::fs::remove_file(&status);
            let log = self
                .work
                .join(format!("daemon-{}.{}.log", target.node, self.generation));
            let out = File::create(&log).expect("creating the daemon log");
            let err = out.try_clone().expect("cloning the daemon log handle");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &target.netns]);
            // The daemon dies with the thread that started it if we die without running
            // Drop (SIGKILL of the test process).
            if Path::new("/usr/bin/setpriv").exists() {
                cmd.args(["/usr/bin/setpriv", "--pdeathsig", "TERM", "--"]);
            }
            cmd.arg(BINARY).args(["run", "--node-name", &target.node]);
            match &self.store {
                Some(store) => cmd.args(store.daemon_args()),
                None => cmd.arg("--manifests").arg(&self.dir),
            };
            cmd.arg("--status-file")
                .arg(&status)
                .args(&self.extra_args)
                .args(&target.args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
            self.daemons.push(Daemon {
                node: target.node.clone(),
                child,
                status,
                log,
            });
        }
    }

    /// SIGTERM to every daemon; waits for them to exit. Returns `node: exit status` of
    /// each (`None` when one had to be killed after ignoring SIGTERM).
    pub fn stop_daemons(&mut self) -> Vec<(String, Option<std::process::ExitStatus>)> {
        for daemon in &mut self.daemons {
            let pid = daemon.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut exits = Vec::new();
        for mut daemon in self.daemons.drain(..) {
            let status = loop {
                match daemon.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Err(_) => break None,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("daemon for {} ignored SIGTERM; killing it", daemon.node);
                        let _ = daemon.child.kill();
                        let _ = daemon.child.wait();
                        break None;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            exits.push((daemon.node, status));
        }
        exits
    }

    /// Starts new daemons (after [`Driver::stop_daemons`]) and waits for convergence.
    /// SIGKILL to every daemon, as a crash or an OOM kill would; returns once they are gone.
    pub fn kill_daemons(&mut self) {
        for mut daemon in self.daemons.drain(..) {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
    }

    pub fn resume_daemons(&mut self) {
        assert!(self.daemons.is_empty(), "the daemons still run");
        self.spawn_daemons();
        self.sync();
    }

    /// Brings every node to the manifests now in the directory; returns once they are
    /// enforced. False when there was nothing to wait for (daemons stopped).
    pub fn sync(&mut self) -> bool {
        match self.kind {
            Kind::Render => {
                for target in &self.targets {
                    let text = expected_text(&self.dir, self.store.as_deref(), target);
                    let script =
                        format!("table inet kube-nftpol\ndelete table inet kube-nftpol\n{text}");
                    run(
                        Command::new("ip").args(["netns", "exec", &target.netns, "nft", "-f", "-"]),
                        Some(&script),
                    );
                }
                true
            }
            Kind::Daemon if self.daemons.is_empty() => false,
            Kind::Daemon => {
                self.wait_for_daemons();
                true
            }
        }
    }

    fn wait_for_daemons(&mut self) {
        let expected: Vec<String> = self
            .daemons
            .iter()
            .map(|d| {
                let target = self
                    .targets
                    .iter()
                    .find(|t| t.node == d.node)
                    .expect("every daemon has its target");
                status_line(&expected_text(&self.dir, self.store.as_deref(), target))
            })
            .collect();
        let deadline = Instant::now() + CONVERGENCE_DEADLINE;
        loop {
            let mut pending = Vec::new();
            for (daemon, want) in self.daemons.iter_mut().zip(&expected) {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    panic!(
                        "kube-nftpol run for {} exited ({status}); its log:\n{}",
                        daemon.node,
                        tail(&daemon.log)
                    );
                }
                let have = std::fs::read_to_string(&daemon.status).unwrap_or_default();
                if have.trim() != want {
                    pending.push((daemon.node.clone(), have.trim().to_string(), want.clone()));
                }
            }
            if pending.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let mut msg =
                    format!("the daemons did not converge within {CONVERGENCE_DEADLINE:?}:\n");
                for (node, have, want) in &pending {
                    msg.push_str(&format!(
                        "  {node}: status file says {have:?}, expected {want:?}\n"
                    ));
                    if let Some(d) = self.daemons.iter().find(|d| &d.node == node) {
                        msg.push_str(&format!("  log of {node}:\n{}\n", tail(&d.log)));
                    }
                }
                panic!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log of the node's daemon (empty for the render driver).
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| format!("--- {} ---\n{}", d.node, tail(&d.log)))
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop_daemons();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
