//! `kube-nftpol run`: sources feed events to one state loop, which owns the cluster state,
//! coalesces bursts, compiles and hands the ruleset to the dataplane.
//!
//! ```text
//!  manifests watcher ─┐  Change / InitDone
//!  signals ───────────┼──────────────────────► state loop ──► compile ──► dataplane ──► kernel
//!                     │                         (Cluster)      (node)      (one transaction)
//! ```
//!
//! - Nothing is written before the source's first complete read (InitDone): the rules of a
//!   previous run stay in force meanwhile, and a half-read directory never opens or closes
//!   the wrong doors.
//! - A burst of changes becomes one sync: the loop waits until the source has been quiet for
//!   the debounce time (20 ms by default), or at most ten times that since the first change.
//! - Each sync logs its trigger, kind (full / incremental / unchanged), size, and the time from
//!   the first change being read to the kernel's acknowledgement.
//! - A failed sync is retried with backoff, as a full replace. SIGHUP forces a full replace
//!   now; SIGTERM/SIGINT exit, leaving the rules in force (`kube-nftpol cleanup` removes them).

pub mod bridge;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::compile::{compile_with, fnv1a64, Options};
use crate::dataplane::{probe, Dataplane};
use crate::model::Cluster;
use crate::render::text;
use crate::sources::watch::{Change, Watcher};

/// How often the manifests directory is scanned.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub manifests: PathBuf,
    /// Written after every successful sync: the FNV-1a-64 of the committed ruleset's text.
    pub status_file: Option<PathBuf>,
    pub debounce: Duration,
    pub drift_check_interval: Duration,
    /// Where the `net.bridge.*` sysctls live (tests point it elsewhere).
    pub proc_sys: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bridge netfilter: {0}")]
    BridgeNetfilter(String),
    #[error("this kernel cannot hold the kube-nftpol ruleset: {0}")]
    Kernel(crate::dataplane::netlink::Error),
    #[error("netlink: {0}")]
    Netlink(crate::dataplane::netlink::Error),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::BridgeNetfilter(_) => "bridge_netfilter",
            Error::Kernel(_) => "kernel_probe",
            Error::Netlink(_) => "netlink",
            Error::Signals(_) => "signals",
        }
    }
}

/// What arrives at the state loop.
#[derive(Debug)]
pub enum Event {
    Change {
        change: Change,
        read_at: Instant,
    },
    /// The source has delivered its complete initial state.
    InitDone,
    Signal(i32),
}

/// Changes waiting for a sync.
struct Pending {
    trigger: &'static str,
    first_read: Instant,
    last_event: Instant,
    events: usize,
}

/// Runs until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), Error> {
    match bridge::ensure(&config.proc_sys, "modprobe") {
        Ok(r) => {
            if r.loaded_module {
                info!("loaded the br_netfilter module");
            }
            for s in &r.enabled {
                info!(sysctl = %s, "enabled bridge netfilter");
            }
        }
        Err(e) => {
            error!("{e}");
            return Err(Error::BridgeNetfilter(e));
        }
    }
    let features = probe::probe().map_err(Error::Kernel)?;
    match &features.concat_intervals_refused {
        None => info!("kernel probe: intervals in concatenations available; port matches use one lookup per rule"),
        Some(why) => info!(refused = %why, "kernel probe: no intervals in concatenations; port matches use one rule per protocol group"),
    }
    info!(
        ruleset = features.ruleset,
        "kernel probe: every object and rule shape of the ruleset is accepted"
    );
    let dataplane = Dataplane::new().map_err(Error::Netlink)?;

    let (tx, rx) = mpsc::channel();
    spawn_signals(tx.clone())?;
    spawn_manifests(config.manifests.clone(), tx);
    info!(node = %config.node_name, manifests = %config.manifests.display(), "started; waiting for the initial state");
    StateLoop::new(config, dataplane, features.options()).run(rx);
    Ok(())
}

fn spawn_signals(tx: Sender<Event>) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Error::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })
        .map_err(Error::Signals)?;
    Ok(())
}

fn spawn_manifests(dir: PathBuf, tx: Sender<Event>) {
    let spawned = std::thread::Builder::new().name("manifests".into()).spawn(move || {
        let mut watcher = Watcher::new(&dir);
        let mut initial = true;
        let mut failing = false;
        loop {
            match watcher.scan() {
                Ok(scan) => {
                    if failing {
                        info!(dir = %dir.display(), "manifests directory readable again");
                        failing = false;
                    }
                    for p in &scan.problems {
                        warn!("{p}");
                    }
                    for (file, n) in &scan.kept {
                        warn!(file = %file.display(), objects = n, "file does not parse; keeping its last good objects until it does");
                    }
                    let read_at = Instant::now();
                    for change in scan.changes {
                        if tx.send(Event::Change { change, read_at }).is_err() {
                            return;
                        }
                    }
                    if initial {
                        initial = false;
                        if tx.send(Event::InitDone).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    // The last known state stays in force (and nothing is synced before the
                    // first complete read).
                    if !failing {
                        error!(reason = e.metric_label(), "{e}; keeping the last known state");
                        failing = true;
                    }
                }
            }
            std::thread::sleep(SCAN_INTERVAL);
        }
    });
    if let Err(e) = spawned {
        error!("cannot start the manifests watcher: {e}");
    }
}

struct StateLoop {
    config: Config,
    options: Options,
    dataplane: Dataplane,
    cluster: Cluster,
    ready: bool,
    pending: Option<Pending>,
    next_drift_check: Instant,
    retry: Option<(Instant, Duration)>,
}

impl StateLoop {
    fn new(config: Config, dataplane: Dataplane, options: Options) -> Self {
        let next_drift_check = Instant::now() + config.drift_check_interval;
        StateLoop {
            config,
            options,
            dataplane,
            cluster: Cluster::default(),
            ready: false,
            pending: None,
            next_drift_check,
            retry: None,
        }
    }

    fn note(&mut self, trigger: &'static str, read_at: Instant) {
        let now = Instant::now();
        let p = self.pending.get_or_insert(Pending {
            trigger,
            first_read: read_at,
            last_event: now,
            events: 0,
        });
        p.events += 1;
        p.last_event = now;
        p.first_read = p.first_read.min(read_at);
    }

    /// When the next sync is due, if one is.
    fn sync_due(&self) -> Option<Instant> {
        let p = self.pending.as_ref().filter(|_| self.ready)?;
        let quiet = p.last_event + self.config.debounce;
        let cap = p.first_read + self.config.debounce * 10;
        let due = quiet.min(cap);
        Some(match self.retry {
            Some((at, _)) => due.max(at),
            None => due,
        })
    }

    fn run(mut self, rx: Receiver<Event>) {
        loop {
            let now = Instant::now();
            let mut wake = self.next_drift_check;
            if let Some(due) = self.sync_due() {
                wake = wake.min(due);
            }
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Event::Change { change, read_at }) => {
                    self.apply(change);
                    self.note("change", read_at);
                }
                Ok(Event::InitDone) => {
                    info!(
                        objects = self.cluster.pods().count()
                            + self.cluster.policies().count()
                            + self.cluster.namespaces().count(),
                        "initial state read"
                    );
                    self.ready = true;
                    self.note("initial", Instant::now());
                    if let Some(p) = self.pending.as_mut() {
                        p.trigger = "initial";
                    }
                }
                Ok(Event::Signal(s)) if s == signal_hook::consts::SIGHUP => {
                    info!("SIGHUP: full resync");
                    self.dataplane.force_full("SIGHUP");
                    self.note("SIGHUP", Instant::now());
                }
                Ok(Event::Signal(s)) => {
                    info!(
                        signal = s,
                        "exiting; the rules stay in force (`kube-nftpol cleanup` removes them)"
                    );
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    error!("all sources stopped; exiting with the rules in force");
                    return;
                }
            }
            let now = Instant::now();
            if self.sync_due().is_some_and(|due| due <= now) {
                self.sync();
            }
            if now >= self.next_drift_check {
                self.next_drift_check = now + self.config.drift_check_interval;
                self.check_drift();
            }
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Apply(object) => {
                for d in self.cluster.apply(&object) {
                    warn!(object = %d.object, field = %d.field, "{d}");
                }
            }
            Change::Delete(object) => self.cluster.delete(&object),
        }
    }

    fn sync(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let started = Instant::now();
        let compiled = compile_with(&self.cluster, &self.config.node_name, &self.options);
        for d in &compiled.diagnostics {
            warn!(object = %d.object, field = %d.field, "{d}");
        }
        let compile_time = started.elapsed();
        let fingerprint = self
            .config
            .status_file
            .as_ref()
            .map(|_| fnv1a64(text::render(&compiled.ruleset).as_bytes()));
        match self.dataplane.apply(compiled.ruleset) {
            Ok(applied) => {
                self.retry = None;
                let s = applied.summary;
                info!(
                    trigger = pending.trigger,
                    kind = applied.kind.as_str(),
                    reason = applied.reason.as_deref().unwrap_or(""),
                    events = pending.events,
                    latency_ms = millis(pending.first_read.elapsed()),
                    compile_ms = millis(compile_time),
                    apply_ms = millis(applied.elapsed),
                    messages = applied.sent.messages,
                    bytes = applied.sent.bytes,
                    elements_added = s.elements_added,
                    elements_deleted = s.elements_deleted,
                    chains_rewritten = s.chains_rewritten,
                    rules_added = s.rules_added,
                    "sync committed"
                );
                if let Some(f) = fingerprint {
                    self.write_status(f);
                }
            }
            Err(e) => {
                let backoff = self.retry.map_or(Duration::from_millis(500), |(_, b)| {
                    (b * 2).min(Duration::from_secs(30))
                });
                error!(reason = e.metric_label(), retry_in_ms = millis(backoff), "sync failed: {e}; the previous rules stay in force, the next sync replaces the table");
                self.retry = Some((Instant::now() + backoff, backoff));
                self.pending = Some(Pending {
                    trigger: "retry",
                    ..pending
                });
            }
        }
    }

    fn check_drift(&mut self) {
        match self.dataplane.check_drift() {
            Ok(None) => debug!("drift check: the table is as committed"),
            Ok(Some(what)) => {
                warn!(drift = %what, "the table was changed by someone else; replacing it");
                self.note("drift", Instant::now());
            }
            Err(e) => warn!(reason = e.metric_label(), "drift check failed: {e}"),
        }
    }

    fn write_status(&self, fingerprint: u64) {
        let Some(path) = &self.config.status_file else {
            return;
        };
        if let Err(e) = write_atomically(path, &format!("{fingerprint:016x}\n")) {
            warn!(file = %path.display(), "cannot write the status file: {e}");
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
