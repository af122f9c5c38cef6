//! What the daemon tells Prometheus, and the health it reports.
//!
//! All metrics are prefixed `kube_nftpol_`; `docs/metrics.md` lists them. They are updated by
//! the state loop and encoded (OpenMetrics text) by the HTTP server in `http.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// How long the state loop may go without a turn before `/healthz` fails.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

pub struct Metrics {
    pub registry: Registry,
    /// Compile + commit, by kind (`full`, `incremental`, `unchanged`).
    pub sync_duration: Family<Labels, Histogram>,
    /// From the first change of a sync being read to the kernel's acknowledgement.
    pub event_to_commit: Histogram,
    pub syncs: Family<Labels, Counter>,
    pub sync_failures: Family<Labels, Counter>,
    /// Changes that could not alter this node's ruleset, by reason: no compile, no sync.
    pub changes_skipped: Family<Labels, Counter>,
    pub watch_restarts: Family<Labels, Counter>,
    pub drift_repairs: Counter,
    pub local_targets: Gauge,
    pub target_chains: Gauge,
    pub policies: Gauge,
    pub pods: Gauge,
    pub peer_set_elements: Gauge,
    pub fail_closed_cidrs: Gauge,
    pub bridge_netfilter: Family<Labels, Gauge>,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.25 ms … 8 s.
    exponential_buckets(0.00025, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kube_nftpol");
        let sync_duration =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let event_to_commit = Histogram::new(latency_buckets());
        let m = Metrics {
            sync_duration,
            event_to_commit,
            syncs: Family::default(),
            sync_failures: Family::default(),
            changes_skipped: Family::default(),
            watch_restarts: Family::default(),
            drift_repairs: Counter::default(),
            local_targets: Gauge::default(),
            target_chains: Gauge::default(),
            policies: Gauge::default(),
            pods: Gauge::default(),
            peer_set_elements: Gauge::default(),
            fail_closed_cidrs: Gauge::default(),
            bridge_netfilter: Family::default(),
            last_sync: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_duration_seconds",
            "Time to compile and commit one sync, by kind (full, incremental, unchanged)",
            m.sync_duration.clone(),
        );
        registry.register(
            "event_to_commit_seconds",
            "Time from the first change of a sync being read from the source to the kernel acknowledging its transaction",
            m.event_to_commit.clone(),
        );
        registry.register("syncs", "Syncs committed, by kind", m.syncs.clone());
        registry.register(
            "sync_failures",
            "Syncs that failed, by reason; the previous rules stayed in force",
            m.sync_failures.clone(),
        );
        registry.register(
            "changes_skipped",
            "Changes read that could not alter this node's ruleset, so were not compiled: \
             reason=\"unchanged\" (equal to what was known once trimmed, e.g. a pod status \
             update), reason=\"not_read\" (a pod of another node that no peer set here selects)",
            m.changes_skipped.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch errors of the Kubernetes source, by resource; each is retried with backoff",
            m.watch_restarts.clone(),
        );
        registry.register(
            "drift_repairs",
            "Times the table was found changed by someone else and replaced",
            m.drift_repairs.clone(),
        );
        registry.register(
            "local_targets",
            "Dispatch elements: local pod addresses isolated in a direction",
            m.local_targets.clone(),
        );
        registry.register(
            "target_chains",
            "Target chains in the table",
            m.target_chains.clone(),
        );
        registry.register(
            "policies",
            "NetworkPolicies known, cluster-wide",
            m.policies.clone(),
        );
        registry.register("pods", "Pods known, cluster-wide", m.pods.clone());
        registry.register(
            "peer_set_elements",
            "Elements of the peer address sets",
            m.peer_set_elements.clone(),
        );
        registry.register(
            "fail_closed_cidrs",
            "Pod CIDRs guarded by --fail-closed (0 when off or unknown)",
            m.fail_closed_cidrs.clone(),
        );
        registry.register(
            "bridge_netfilter",
            "1 when net.bridge.bridge-nf-call-<family> is on, so same-node pod traffic is filtered",
            m.bridge_netfilter.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            m.last_sync.clone(),
        );
        registry.register(
            "ready",
            "1 once the first full sync is committed and bridge netfilter is on",
            m.ready.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn mark_synced(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What `/healthz` and `/readyz` answer, shared between the state loop and the server.
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the state loop's last turn.
    heartbeat_ms: AtomicU64,
    synced: AtomicBool,
    bridge_ok: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            bridge_ok: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn set_bridge_ok(&self, ok: bool) {
        self.bridge_ok.store(ok, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && self.bridge_ok.load(Ordering::Relaxed)
    }

    /// `/healthz`: the state loop turned recently. Err says why not.
    pub fn live(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        if since > STALL_LIMIT {
            Err(format!(
                "the state loop has not run for {}s",
                since.as_secs()
            ))
        } else {
            Ok(())
        }
    }

    /// `/readyz`: Err says why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.bridge_ok.load(Ordering::Relaxed) {
            Err("bridge netfilter is off: same-node pod traffic is not filtered")
        } else if !self.synced.load(Ordering::Relaxed) {
            Err("the first full sync has not been committed yet")
        } else {
            Ok(())
        }
    }
}

/// Both, as the daemon shares them.
#[derive(Clone, Default)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_names_every_metric_with_the_prefix() {
        let m = Metrics::new();
        m.syncs.get_or_create(&vec![("kind", "full")]).inc();
        m.sync_duration
            .get_or_create(&vec![("kind", "full")])
            .observe(0.003);
        let text = m.encode();
        for name in [
            "kube_nftpol_syncs_total{kind=\"full\"} 1",
            "kube_nftpol_sync_duration_seconds_bucket{le=\"0.004\",kind=\"full\"} 1",
            "kube_nftpol_event_to_commit_seconds_count 0",
            "kube_nftpol_last_sync_timestamp_seconds",
            "kube_nftpol_ready 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn health_needs_a_sync_and_bridge_netfilter_to_be_ready() {
        let h = Health::default();
        h.beat();
        assert!(h.live().is_ok());
        assert!(h.readiness().is_err());
        h.set_synced();
        assert!(h.readiness().is_ok());
        h.set_bridge_ok(false);
        assert_eq!(
            h.readiness(),
            Err("bridge netfilter is off: same-node pod traffic is not filtered")
        );
    }
}
