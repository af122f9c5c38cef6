//! `kube-nftpol run`: sources feed events to one state loop, which owns the cluster state,
//! coalesces bursts, compiles and hands the ruleset to the dataplane.
//!
//! ```text
//!  kube watchers or ─┐  Change / Reset / InitDone
//!  manifests watcher │
//!  signals ──────────┼──────────────────────► state loop ──► compile ──► dataplane ──► kernel
//!                    │                         (Cluster)      (node)      (one transaction)
//!  /metrics /healthz /readyz ◄── metrics + health ◄──┘
//! ```
//!
//! - Nothing is written before the source's first complete read (InitDone: every watch
//!   listed once, or the directory read once): the rules of a previous run stay in force
//!   meanwhile, and a half-read state never opens or closes the wrong doors. While the API
//!   server is unreachable, the last committed ruleset stays in force and watches retry.
//! - A lone change is synced at once (leading edge: the first change after a quiet period
//!   does not wait). What arrives while a sync runs, or right after it, is a burst and
//!   becomes one sync: the loop waits until the source has been quiet for the debounce time
//!   (20 ms by default), or at most ten times that since the first change. Events already
//!   queued are taken together (for at most that cap), so no sync sees half of a directory
//!   scan.
//! - Each sync logs its trigger, kind (full / incremental / unchanged), size, and the time from
//!   the first change being read to the kernel's acknowledgement.
//! - A failed sync is retried with backoff, as a full replace. Every `--resync-interval` and
//!   on SIGHUP the table is replaced whole; every `--drift-check-interval` it is compared with
//!   what was committed. SIGTERM/SIGINT exit, leaving the rules in force (`kube-nftpol
//!   cleanup` removes them).
//! - Every few seconds the loop checks bridge netfilter again (turning it back on if someone
//!   turned it off, and saying so loudly) and beats the `/healthz` heartbeat.

pub mod bridge;
pub mod http;
pub mod metrics;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use crate::compile::{compile_with, fnv1a64, guarded_cidrs, Compiled, Options, Reads};
use crate::dataplane::{probe, Dataplane, SyncKind};
use crate::model::{Cluster, Diagnostic, Stored};
use crate::render::text;
use crate::ruleset::Ruleset;
use crate::sources::watch::Watcher;
use crate::sources::{self, Change, Update};
use metrics::Shared;

/// How often the manifests directory is scanned.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// How often the state loop turns at least: heartbeat and bridge netfilter check.
pub const TICK: Duration = Duration::from_secs(5);

/// Where the cluster state comes from.
#[derive(Clone, Debug)]
pub enum Source {
    Manifests(PathBuf),
    /// The API server: from a kubeconfig file, or the in-cluster service account.
    Kube {
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub source: Source,
    /// Written after every successful sync: the FNV-1a-64 of the committed ruleset's text.
    pub status_file: Option<PathBuf>,
    pub debounce: Duration,
    pub drift_check_interval: Duration,
    /// A full replace of the table this often (besides SIGHUP).
    pub resync_interval: Duration,
    /// Where the `net.bridge.*` sysctls live (tests point it elsewhere).
    pub proc_sys: PathBuf,
    /// `/metrics`, `/healthz`, `/readyz`; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    pub fail_closed: bool,
    /// Flannel's `subnet.env`: `FLANNEL_SUBNET`/`FLANNEL_IPV6_SUBNET` are pod CIDRs of this
    /// node for `--fail-closed`, besides the Node object's.
    pub flannel_subnet_env: PathBuf,
}

impl Config {
    /// Defaults of every flag, for `node_name` reading `source`.
    pub fn new(node_name: &str, source: Source) -> Config {
        Config {
            node_name: node_name.to_string(),
            source,
            status_file: None,
            debounce: Duration::from_millis(20),
            drift_check_interval: Duration::from_secs(300),
            resync_interval: Duration::from_secs(1800),
            proc_sys: PathBuf::from("/proc/sys"),
            metrics_addr: None,
            fail_closed: false,
            flannel_subnet_env: PathBuf::from("/run/flannel/subnet.env"),
        }
    }
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
    /// Bad configuration (kubeconfig, metrics address): exit 2.
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::BridgeNetfilter(_) => "bridge_netfilter",
            Error::Kernel(_) => "kernel_probe",
            Error::Netlink(_) => "netlink",
            Error::Signals(_) => "signals",
            Error::Usage(_) => "usage",
            Error::Runtime(_) => "runtime",
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
    WatchError {
        resource: &'static str,
        error: String,
    },
    Signal(i32),
}

impl Event {
    fn from_update(update: Update) -> Event {
        match update {
            Update::Change(change) => Event::Change {
                change,
                read_at: Instant::now(),
            },
            Update::InitDone => Event::InitDone,
            Update::WatchError { resource, error } => Event::WatchError { resource, error },
        }
    }
}

/// One committed sync, as reported to [`StateLoop::reports`] (the load bench listens).
#[derive(Clone, Debug)]
pub struct SyncReport {
    pub trigger: &'static str,
    pub kind: SyncKind,
    pub events: usize,
    /// From the first change being read to the kernel's acknowledgement.
    pub latency: Duration,
    pub compile: Duration,
    pub apply: Duration,
    /// False when every change was skipped (could not alter the ruleset): nothing was
    /// compiled or sent.
    pub compiled: bool,
}

/// Changes waiting for a sync.
struct Pending {
    trigger: &'static str,
    first_read: Instant,
    last_event: Instant,
    events: usize,
    /// The first change after a quiet period: synced at once (leading edge), without
    /// waiting for the debounce; what arrives while that sync runs is debounced.
    leading: bool,
    /// Some change may alter the ruleset. When none can (every one was skipped, see
    /// [`StateLoop::apply`]), the sync compiles and sends nothing.
    matters: bool,
}

/// Events the sources may queue ahead of the state loop. A source that gets further ahead
/// (an event storm: a rolling restart of every pod) waits — the API watch stops reading,
/// TCP flow control does the rest — so a storm costs bounded memory, not one queued object
/// per event. The loop takes what is queued before each sync, so a full queue is taken
/// whole by the next sync.
pub const EVENT_QUEUE: usize = 1024;

/// Runs until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), Error> {
    let shared = Shared::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    // Configuration errors first, before anything touches the node.
    let client = match &config.source {
        Source::Kube { kubeconfig } => Some(
            runtime
                .block_on(sources::kube::client(kubeconfig.as_deref()))
                .map_err(|e| Error::Usage(e.to_string()))?,
        ),
        Source::Manifests(_) => None,
    };
    let listener = match config.metrics_addr {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| Error::Usage(format!("--metrics-addr {addr}: {e}")))?;
            Some(l)
        }
        None => None,
    };

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
    let options = Options {
        fail_closed: config.fail_closed,
        ..features.options()
    };

    let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
    spawn_signals(tx.clone())?;
    match &config.source {
        Source::Manifests(dir) => spawn_manifests(dir.clone(), tx.clone()),
        Source::Kube { .. } => {}
    }
    let node = config.node_name.clone();
    let async_shared = shared.clone();
    std::thread::Builder::new()
        .name("async".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Some(l) = listener {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            if let Ok(addr) = l.local_addr() {
                                info!(%addr, "serving /metrics, /healthz and /readyz");
                            }
                            tokio::spawn(http::serve(l, async_shared));
                        }
                        Err(e) => error!("cannot serve metrics: {e}"),
                    }
                }
                match client {
                    Some(client) => {
                        sources::kube::run(client, node, |u| tx.send(Event::from_update(u)).is_ok())
                            .await
                    }
                    None => std::future::pending().await,
                }
            })
        })
        .map_err(Error::Runtime)?;
    let source = match &config.source {
        Source::Manifests(dir) => format!("manifests {}", dir.display()),
        Source::Kube {
            kubeconfig: Some(p),
        } => format!("kubeconfig {}", p.display()),
        Source::Kube { kubeconfig: None } => "in-cluster API server".to_string(),
    };
    info!(node = %config.node_name, %source, fail_closed = config.fail_closed, "started; waiting for the initial state");
    StateLoop::new(config, dataplane, options, shared).run(rx);
    Ok(())
}

fn spawn_signals(tx: SyncSender<Event>) -> Result<(), Error> {
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

fn spawn_manifests(dir: PathBuf, tx: SyncSender<Event>) {
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

/// The daemon's state: the cluster as the sources describe it, what is pending, and the
/// dataplane. Public so that the load bench drives the very same path.
pub struct StateLoop {
    config: Config,
    options: Options,
    dataplane: Dataplane,
    shared: Shared,
    cluster: Cluster,
    ready: bool,
    synced_once: bool,
    pending: Option<Pending>,
    /// What the last compiled ruleset read of other nodes' pods.
    reads: Option<Reads>,
    next_drift_check: Instant,
    next_resync: Instant,
    next_tick: Instant,
    retry: Option<(Instant, Duration)>,
    /// When the last sync ended.
    last_sync: Option<Instant>,
    /// Diagnostics already logged: each is logged once, not at every sync.
    logged: BTreeSet<Diagnostic>,
    fail_closed_warned: bool,
    /// The pod CIDRs last read from Flannel's subnet file (re-read every tick).
    flannel_cidrs: Vec<IpNet>,
    bridge_warned: bool,
    /// Where to send a [`SyncReport`] after each committed sync.
    pub reports: Option<Sender<SyncReport>>,
}

impl StateLoop {
    pub fn new(config: Config, dataplane: Dataplane, options: Options, shared: Shared) -> Self {
        let now = Instant::now();
        StateLoop {
            next_drift_check: now + config.drift_check_interval,
            next_resync: now + config.resync_interval,
            next_tick: now,
            config,
            options,
            dataplane,
            shared,
            cluster: Cluster::default(),
            ready: false,
            synced_once: false,
            pending: None,
            reads: None,
            retry: None,
            last_sync: None,
            logged: BTreeSet::new(),
            fail_closed_warned: false,
            flannel_cidrs: Vec::new(),
            bridge_warned: false,
            reports: None,
        }
    }

    fn note(&mut self, trigger: &'static str, read_at: Instant, matters: bool) {
        let now = Instant::now();
        let quiet = self
            .last_sync
            .is_none_or(|t| now.duration_since(t) >= self.config.debounce);
        let p = self.pending.get_or_insert(Pending {
            trigger,
            first_read: read_at,
            last_event: now,
            events: 0,
            leading: quiet,
            matters: false,
        });
        p.events += 1;
        p.matters |= matters;
        p.last_event = now;
        p.first_read = p.first_read.min(read_at);
    }

    /// When the next sync is due, if one is.
    fn sync_due(&self) -> Option<Instant> {
        let p = self.pending.as_ref().filter(|_| self.ready)?;
        let quiet = p.last_event + self.config.debounce;
        let cap = p.first_read + self.config.debounce * 10;
        let due = if p.leading {
            p.last_event
        } else {
            quiet.min(cap)
        };
        Some(match self.retry {
            Some((at, _)) => due.max(at),
            None => due,
        })
    }

    /// Handles events until SIGTERM/SIGINT or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Event>) {
        loop {
            let now = Instant::now();
            let mut wake = self
                .next_drift_check
                .min(self.next_resync)
                .min(self.next_tick);
            if let Some(due) = self.sync_due() {
                wake = wake.min(due);
            }
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(event) => {
                    if self.handle(event).is_break() {
                        return;
                    }
                    // Everything already queued belongs to the same moment (a directory
                    // scan, events that arrived during the last sync): take it before
                    // syncing, so no sync sees half of it — but for at most the debounce
                    // cap, so a source faster than the loop cannot starve the syncs.
                    let until = Instant::now() + self.config.debounce * 10;
                    while Instant::now() < until {
                        let Ok(event) = rx.try_recv() else { break };
                        if self.handle(event).is_break() {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    error!("all sources stopped; exiting with the rules in force");
                    return;
                }
            }
            self.turn();
        }
    }

    /// Takes one event into the state (a sync happens later, in [`StateLoop::turn`]).
    /// `Break` on SIGTERM/SIGINT: the loop is to exit, leaving the rules in force.
    pub fn handle(&mut self, event: Event) -> ControlFlow<()> {
        match event {
            Event::Change { change, read_at } => {
                let skipped = self.apply(change);
                if let Some(reason) = skipped {
                    self.shared
                        .metrics
                        .changes_skipped
                        .get_or_create(&vec![("reason", reason)])
                        .inc();
                }
                self.note("change", read_at, skipped.is_none());
            }
            Event::InitDone => {
                info!(
                    namespaces = self.cluster.namespaces().count(),
                    pods = self.cluster.pods().count(),
                    policies = self.cluster.policies().count(),
                    "initial state read"
                );
                self.warn_if_node_unknown();
                self.ready = true;
                self.note("initial", Instant::now(), true);
                if let Some(p) = self.pending.as_mut() {
                    p.trigger = "initial";
                }
            }
            Event::WatchError { resource, error } => {
                self.shared
                    .metrics
                    .watch_restarts
                    .get_or_create(&vec![("resource", resource)])
                    .inc();
                warn!(
                    resource,
                    "watch failed: {error}; retrying, the last committed rules stay in force"
                );
            }
            Event::Signal(s) if s == signal_hook::consts::SIGHUP => {
                info!("SIGHUP: full resync");
                self.dataplane.force_full("SIGHUP");
                self.note("SIGHUP", Instant::now(), true);
            }
            Event::Signal(s) => {
                info!(
                    signal = s,
                    "exiting; the rules stay in force (`kube-nftpol cleanup` removes them)"
                );
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Does what is due: a sync, a drift check, a resync, the heartbeat.
    pub fn turn(&mut self) {
        let now = Instant::now();
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick();
        }
        if self.sync_due().is_some_and(|due| due <= now) {
            self.sync();
        }
        if now >= self.next_drift_check {
            self.next_drift_check = now + self.config.drift_check_interval;
            self.check_drift();
        }
        if now >= self.next_resync {
            self.next_resync = now + self.config.resync_interval;
            if self.synced_once {
                self.dataplane.force_full("periodic resync");
                self.note("resync", now, true);
            }
        }
    }

    fn tick(&mut self) {
        self.shared.health.beat();
        if self.config.fail_closed {
            // flanneld may write or change its subnet file at any time: the guard follows
            // within a tick, not at the next cluster change.
            let cidrs = flannel_subnets(&self.config.flannel_subnet_env);
            if cidrs != self.flannel_cidrs {
                info!(file = %self.config.flannel_subnet_env.display(), ?cidrs, "Flannel subnet file changed");
                self.flannel_cidrs = cidrs;
                self.note("subnet.env", Instant::now(), true);
            }
        }
        let on = bridge::state(&self.config.proc_sys);
        for (name, on) in ["ipv4", "ipv6"].into_iter().zip(on) {
            self.shared
                .metrics
                .bridge_netfilter
                .get_or_create(&vec![("family", name)])
                .set(i64::from(on));
        }
        if on.iter().all(|x| *x) {
            if self.bridge_warned {
                info!("bridge netfilter is on again");
                self.bridge_warned = false;
            }
            self.shared.health.set_bridge_ok(true);
        } else {
            // Someone turned it off (or unloaded br_netfilter): same-node traffic bypasses
            // every policy until it is back.
            match bridge::ensure(&self.config.proc_sys, "modprobe") {
                Ok(_) => {
                    warn!("bridge netfilter had been turned off; turned it back on");
                    self.shared.health.set_bridge_ok(true);
                }
                Err(e) => {
                    if !self.bridge_warned {
                        error!("{e}; not ready until it is back");
                    }
                    self.bridge_warned = true;
                    self.shared.health.set_bridge_ok(false);
                }
            }
        }
        self.shared
            .metrics
            .ready
            .set(i64::from(self.shared.health.ready()));
    }

    /// Takes one change into the cluster state. Returns why it cannot alter this node's
    /// ruleset, if it cannot: `unchanged` (equal to what was known once trimmed — most pod
    /// updates are status changes policies do not see) or `not_read` (a pod of another node
    /// that no peer set of the last compiled ruleset selects, before or after; see
    /// [`Reads`], checked against full compiles by tests/compile_reads.rs).
    fn apply(&mut self, change: Change) -> Option<&'static str> {
        let (target, before, diags) = match change {
            Change::Apply(object) => {
                let target = object.object_ref();
                let before = self.cluster.stored(&target);
                let diags = self.cluster.apply(&object);
                (target, before, diags)
            }
            Change::Delete(target) => {
                let before = self.cluster.stored(&target);
                self.cluster.delete(&target);
                (target, before, vec![])
            }
            Change::Reset(kind, objects) => {
                debug!(kind = kind.as_str(), objects = objects.len(), "re-listed");
                for d in self.cluster.reset(kind, &objects) {
                    warn!(object = %d.object, field = %d.field, "{d}");
                }
                return None;
            }
        };
        for d in diags {
            warn!(object = %d.object, field = %d.field, "{d}");
        }
        let after = self.cluster.stored(&target);
        if before == after {
            return Some("unchanged");
        }
        let reads = self.reads.as_ref()?;
        let node = self.config.node_name.as_str();
        let seen = |version: &Option<Stored>| match version {
            None => false,
            Some(Stored::Pod(pod)) => reads.sees(&self.cluster, node, pod),
            Some(_) => true,
        };
        if seen(&before) || seen(&after) {
            return None;
        }
        Some("not_read")
    }

    fn options(&mut self) -> Options {
        if !self.config.fail_closed {
            return self.options.clone();
        }
        let mut options = self.options.clone();
        options.pod_cidrs = self.flannel_cidrs.clone();
        let guarded = guarded_cidrs(&self.cluster, &self.config.node_name, &options);
        self.shared
            .metrics
            .fail_closed_cidrs
            .set(guarded.len() as i64);
        if guarded.is_empty() && !self.fail_closed_warned {
            error!(
                node = %self.config.node_name,
                subnet_env = %self.config.flannel_subnet_env.display(),
                "--fail-closed: no pod CIDR known for this node (no spec.podCIDRs on its Node \
                 object, no FLANNEL_SUBNET in the subnet file); new pods are NOT guarded until one is"
            );
            self.fail_closed_warned = true;
        } else if !guarded.is_empty() && self.fail_closed_warned {
            info!(cidrs = ?guarded, "--fail-closed: guarding the node's pod CIDRs");
            self.fail_closed_warned = false;
        }
        options
    }

    fn sync(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if !pending.matters && self.reads.is_some() && self.retry.is_none() {
            // Every change since the last sync was skipped: the committed ruleset is still
            // the one the cluster gives. Nothing to compile or send.
            debug!(
                events = pending.events,
                "changes cannot alter this node's ruleset; nothing to sync"
            );
            self.cluster_gauges();
            if let Some(tx) = &self.reports {
                let _ = tx.send(SyncReport {
                    trigger: pending.trigger,
                    kind: SyncKind::Unchanged,
                    events: pending.events,
                    latency: pending.first_read.elapsed(),
                    compile: Duration::ZERO,
                    apply: Duration::ZERO,
                    compiled: false,
                });
            }
            return;
        }
        let started = Instant::now();
        let options = self.options();
        let Compiled {
            ruleset,
            diagnostics,
            reads,
        } = compile_with(&self.cluster, &self.config.node_name, &options);
        self.reads = Some(reads);
        for d in &diagnostics {
            if self.logged.insert(d.clone()) {
                warn!(object = %d.object, field = %d.field, "{d}");
            }
        }
        let compile_time = started.elapsed();
        let fingerprint = self
            .config
            .status_file
            .as_ref()
            .map(|_| fnv1a64(text::render(&ruleset).as_bytes()));
        self.gauges(&ruleset);
        let m = &self.shared.metrics;
        match self.dataplane.apply(ruleset) {
            Ok(applied) => {
                self.retry = None;
                let s = applied.summary;
                let latency = pending.first_read.elapsed();
                let kind = applied.kind.as_str();
                m.syncs.get_or_create(&vec![("kind", kind)]).inc();
                m.sync_duration
                    .get_or_create(&vec![("kind", kind)])
                    .observe((compile_time + applied.elapsed).as_secs_f64());
                if pending.trigger == "change" {
                    m.event_to_commit.observe(latency.as_secs_f64());
                }
                m.mark_synced();
                info!(
                    trigger = pending.trigger,
                    kind,
                    reason = applied.reason.as_deref().unwrap_or(""),
                    events = pending.events,
                    latency_ms = millis(latency),
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
                if !self.synced_once {
                    self.synced_once = true;
                    self.shared.health.set_synced();
                    m.ready.set(i64::from(self.shared.health.ready()));
                    notify_systemd_ready();
                }
                if let Some(tx) = &self.reports {
                    let _ = tx.send(SyncReport {
                        trigger: pending.trigger,
                        kind: applied.kind,
                        events: pending.events,
                        latency,
                        compile: compile_time,
                        apply: applied.elapsed,
                        compiled: true,
                    });
                }
            }
            Err(e) => {
                m.sync_failures
                    .get_or_create(&vec![("reason", e.metric_label())])
                    .inc();
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
        self.last_sync = Some(Instant::now());
    }

    fn gauges(&self, rs: &Ruleset) {
        let m = &self.shared.metrics;
        m.local_targets
            .set(rs.maps.values().map(|m| m.elements.len() as i64).sum());
        m.target_chains
            .set(rs.chains.values().filter(|c| c.hook.is_none()).count() as i64);
        let peer = |name: &str| {
            ["pods-", "cidr-", "nport-"]
                .iter()
                .any(|p| name.starts_with(p))
        };
        m.peer_set_elements.set(
            rs.sets
                .iter()
                .filter(|(n, _)| peer(n))
                .map(|(_, s)| s.elements.len() as i64)
                .sum(),
        );
        self.cluster_gauges();
    }

    /// A `--node-name` that names no node is not an error the daemon can detect for sure (a
    /// new node may have no pods yet), but it silently enforces nothing — and with
    /// `--fail-closed` it darkens every pod of the node. Said once, when the state is read.
    fn warn_if_node_unknown(&self) {
        let node = self.config.node_name.as_str();
        let known = self.cluster.node(node).is_some()
            || self
                .cluster
                .pods()
                .any(|p| p.node_name.as_deref() == Some(node));
        if known {
            return;
        }
        let consequence = if self.config.fail_closed {
            "no pod here counts as programmed, so --fail-closed drops every address of the \
             node's pod CIDR"
        } else {
            "no pod here is a policy target"
        };
        warn!(
            node,
            "no Node object of this name and no pod bound to it: is --node-name (NODE_NAME) \
             the name of this node's Node object? Until it is, {consequence}"
        );
    }

    fn cluster_gauges(&self) {
        let m = &self.shared.metrics;
        m.policies.set(self.cluster.policies().count() as i64);
        m.pods.set(self.cluster.pods().count() as i64);
    }

    fn check_drift(&mut self) {
        match self.dataplane.check_drift() {
            Ok(None) => debug!("drift check: the table is as committed"),
            Ok(Some(what)) => {
                warn!(drift = %what, "the table was changed by someone else; replacing it");
                self.shared.metrics.drift_repairs.inc();
                self.note("drift", Instant::now(), true);
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

/// The pod CIDRs in Flannel's `subnet.env` (`FLANNEL_SUBNET=10.244.1.1/24`, the bridge's
/// address and prefix; `FLANNEL_IPV6_SUBNET` likewise). A missing or unreadable file is none.
pub fn flannel_subnets(path: &Path) -> Vec<IpNet> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    parse_subnet_env(&text)
}

fn parse_subnet_env(text: &str) -> Vec<IpNet> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .filter(|(k, _)| matches!(k.trim(), "FLANNEL_SUBNET" | "FLANNEL_IPV6_SUBNET"))
        .filter_map(|(_, v)| v.trim().trim_matches('"').parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// `Type=notify` units: tell systemd we are ready (after the first full sync).
fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| socket.send_to_addr(b"READY=1\n", &addr))
    } else {
        socket.send_to(b"READY=1\n", &path)
    };
    match sent {
        Ok(_) => debug!("told systemd we are ready"),
        Err(e) => warn!("cannot notify systemd: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_subnet_env_gives_the_pod_cidrs() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                    FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
                    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let cidrs: Vec<String> = parse_subnet_env(text)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert!(parse_subnet_env("FLANNEL_SUBNET=garbage\n").is_empty());
        assert!(flannel_subnets(Path::new("/nonexistent/subnet.env")).is_empty());
    }
}
