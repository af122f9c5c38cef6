//! Scenarios: the pods, namespaces and policies of one test, the cluster built for them,
//! the manifests the product reads, and the checks.
//!
//! Expectations never come from the product: a full table is evaluated by the independent
//! spec oracle (`tests/support/oracle.rs`) over the same manifests the product reads, and
//! each scenario adds hand-written flows (its statement of intent), which are checked
//! against the oracle first (so a scenario and the oracle cannot silently disagree) and
//! then probed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HostIP, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod,
    PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cluster::{self, Cluster, PodNet, NODE_NAMES, OUTSIDE_V4};
use crate::driver::{self, Driver, ObjectStore, Target};
use crate::netns::{self, Netns};
use crate::probe::{self, Outcome, Probe, LONG, SHORT};
use crate::servers::Ports;
use crate::support::oracle::{self, World, NAMESPACE_NAME_LABEL};
use crate::support::Proto;
use crate::table::{self, Endpoint, Fam, ProbeKind};

pub use crate::support::Proto::{Sctp, Tcp, Udp};

/// What every table probes unless a scenario says otherwise.
pub const DEFAULT_KINDS: [ProbeKind; 5] = [(Tcp, 80), (Tcp, 81), (Udp, 80), (Udp, 81), (Sctp, 80)];

pub type Labels = BTreeMap<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod of a scenario.
#[derive(Clone, Debug)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: usize,
    pub v4: bool,
    pub v6: bool,
    /// Host part of its addresses (10.244.<n>.<host>, fd00:10:244:<n>::<host>); `None` =
    /// the next free one from 10 on its node.
    pub host: Option<u8>,
    /// Container ports: (name, protocol, number).
    pub ports: Vec<(String, Proto, u16)>,
}

/// `pod("ns/name")`: on node-a, IPv4 only, no labels, no container ports.
pub fn pod(key: &str) -> PodDef {
    let (namespace, name) = key
        .split_once('/')
        .unwrap_or_else(|| panic!("pod key {key:?} is not namespace/name"));
    PodDef {
        namespace: namespace.into(),
        name: name.into(),
        labels: Labels::new(),
        node: 0,
        v4: true,
        v6: false,
        host: None,
        ports: Vec::new(),
    }
}

impl PodDef {
    /// On node `i` (0 = node-a, 1 = node-b).
    pub fn on(mut self, node: usize) -> Self {
        assert!(node < NODE_NAMES.len(), "no node {node}");
        self.node = node;
        self
    }
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.labels = labels(pairs);
        self
    }
    pub fn dual_stack(mut self) -> Self {
        self.v4 = true;
        self.v6 = true;
        self
    }
    pub fn v6_only(mut self) -> Self {
        self.v4 = false;
        self.v6 = true;
        self
    }
    pub fn host(mut self, host: u8) -> Self {
        self.host = Some(host);
        self
    }
    pub fn port(mut self, name: &str, proto: Proto, number: u16) -> Self {
        self.ports.push((name.into(), proto, number));
        self
    }
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where a node's pod CIDRs (10.244.<n>.0/24, fd00:10:244:<n>::/64) are published, for
/// `--fail-closed` (see [`Scenario::pod_cidrs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCidrSource {
    /// `spec.podCIDRs` of the node's `kind: Node` manifest (the in-cluster path: the Node
    /// object from the API server). Its daemon's `--flannel-subnet-env` file does not exist.
    NodeObject,
    /// `FLANNEL_SUBNET`/`FLANNEL_IPV6_SUBNET` of a per-node `subnet.env` (as flanneld writes
    /// it), passed with `--flannel-subnet-env`; its Node manifest has no `spec.podCIDRs`.
    SubnetEnv,
}

/// Makes the [`ObjectStore`] of a scenario once its cluster exists (e.g. starts an API
/// server in the underlay namespace); gets the cluster and the scenario's work directory.
pub type StoreFactory = Box<dyn FnOnce(&Cluster, &Path) -> Arc<dyn ObjectStore>>;

/// A scenario before its cluster exists.
pub struct Scenario {
    /// Where the daemons read the objects from, when not the manifests directory.
    store: Option<StoreFactory>,
    name: String,
    namespaces: BTreeMap<String, Labels>,
    pods: Vec<PodDef>,
    policies: Vec<String>,
    kinds: Vec<ProbeKind>,
    daemon_args: Vec<String>,
    /// One per node when set.
    pod_cidrs: Option<Vec<PodCidrSource>>,
    fail_closed: bool,
}

impl Scenario {
    pub fn new(name: &str) -> Self {
        Scenario {
            store: None,
            name: name.into(),
            namespaces: BTreeMap::new(),
            pods: Vec::new(),
            policies: Vec::new(),
            kinds: DEFAULT_KINDS.to_vec(),
            daemon_args: Vec::new(),
            pod_cidrs: None,
            fail_closed: false,
        }
    }

    /// Publishes each node's pod CIDRs, one source per node (node-a, node-b): a `kind: Node`
    /// manifest for every node (`status.addresses` = its node IPs, `spec.podCIDRs` for
    /// [`PodCidrSource::NodeObject`]), and a `subnet.env` file per node passed to its
    /// daemon as `--flannel-subnet-env` (written for [`PodCidrSource::SubnetEnv`], absent
    /// otherwise, so the host's `/run/flannel/subnet.env` never counts).
    pub fn pod_cidrs(mut self, sources: &[PodCidrSource]) -> Self {
        assert_eq!(
            sources.len(),
            NODE_NAMES.len(),
            "one pod CIDR source per node"
        );
        self.pod_cidrs = Some(sources.to_vec());
        self
    }

    /// `kube-nftpol run --fail-closed` on every node (needs [`Scenario::pod_cidrs`]). The
    /// expected rulesets are compiled with the guard, and expected verdicts add it to the
    /// oracle's (see [`FailClosedGuard`]).
    pub fn fail_closed(mut self) -> Self {
        self.fail_closed = true;
        self
    }

    /// The daemons read the objects from the store `factory` makes after the cluster is
    /// built, instead of the manifests directory: every manifest written or removed is
    /// mirrored there, and convergence is computed from what the store lists back. The
    /// directory stays what the oracle reads.
    #[allow(dead_code)] // only tests/kube_api.rs uses it
    pub fn store(
        mut self,
        factory: impl FnOnce(&Cluster, &Path) -> Arc<dyn ObjectStore> + 'static,
    ) -> Self {
        self.store = Some(Box::new(factory));
        self
    }

    /// More flags for every `kube-nftpol run` (daemon driver only).
    pub fn daemon_args(mut self, args: &[&str]) -> Self {
        self.daemon_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A Namespace with labels (namespaces of pods get a Namespace object anyway).
    pub fn namespace(mut self, name: &str, pairs: &[(&str, &str)]) -> Self {
        self.namespaces.insert(name.into(), labels(pairs));
        self
    }

    pub fn pod(mut self, pod: PodDef) -> Self {
        self.pods.push(pod);
        self
    }

    pub fn policy(mut self, yaml: &str) -> Self {
        self.policies.push(yaml.into());
        self
    }

    /// The protocol/ports probed for every pair (and served by every endpoint), instead of
    /// [`DEFAULT_KINDS`].
    pub fn kinds(mut self, kinds: &[ProbeKind]) -> Self {
        self.kinds = kinds.to_vec();
        self
    }

    /// Builds the cluster, writes the manifests, starts the driver and waits until the
    /// nodes enforce them.
    pub fn start(self) -> Env {
        netns::prepare_host();
        let started = Instant::now();
        let prefix = netns::unique_prefix();
        let work = WorkDir::create(&prefix);
        let manifests = work.path.join("manifests");
        std::fs::create_dir(&manifests).expect("creating the manifests directory");

        let mut ports = Ports::default();
        for (proto, port) in &self.kinds {
            let list = match proto {
                Proto::Tcp => &mut ports.tcp,
                Proto::Udp => &mut ports.udp,
                Proto::Sctp => continue,
            };
            if !list.contains(port) {
                list.push(*port);
            }
        }
        assert!(
            !self.fail_closed || self.pod_cidrs.is_some(),
            "scenario {}: fail_closed() needs pod_cidrs(..) (else the daemon would read the \
             host's /run/flannel/subnet.env)",
            self.name
        );
        let cluster = Cluster::new(&prefix, ports);
        println!(
            "scenario {}: netns prefix {prefix}, driver {}, manifests {}{}",
            self.name,
            driver::kind().name(),
            manifests.display(),
            if self.fail_closed {
                ", --fail-closed"
            } else {
                ""
            }
        );
        let guarded = match (&self.pod_cidrs, self.fail_closed) {
            (Some(_), true) => (0..NODE_NAMES.len())
                .map(|i| cluster::pod_cidrs(i).to_vec())
                .collect(),
            _ => Vec::new(),
        };
        let store = self.store.map(|factory| factory(&cluster, &work.path));
        let mut env = Env {
            store,
            name: self.name,
            kinds: self.kinds,
            namespaces: self.namespaces,
            manifests,
            deferred: false,
            guarded,
            driver: None,
            pods: Vec::new(),
            cluster,
            work,
        };
        for def in self.pods {
            env.create_pod(def, PodStage::Running);
        }
        env.write_namespaces();
        for yaml in &self.policies {
            env.write_policy(yaml);
        }
        let mut targets = Vec::new();
        for (i, node) in env.cluster.nodes.iter().enumerate() {
            let mut target = Target {
                node: node.name.to_string(),
                netns: node.ns.name.clone(),
                args: Vec::new(),
                fail_closed: self.fail_closed,
                subnet_env_cidrs: Vec::new(),
            };
            if let Some(sources) = &self.pod_cidrs {
                let source = sources[i];
                env.write_node(i, source == PodCidrSource::NodeObject);
                let subnet_env = env.work.path.join(format!("subnet-{}.env", node.name));
                if source == PodCidrSource::SubnetEnv {
                    write_subnet_env(&subnet_env, i);
                    target.subnet_env_cidrs = cluster::pod_cidrs(i).to_vec();
                }
                target.args.push("--flannel-subnet-env".into());
                target.args.push(subnet_env.display().to_string());
            }
            if self.fail_closed {
                target.args.push("--fail-closed".into());
            }
            targets.push(target);
        }
        env.driver = Some(Driver::start(
            driver::kind(),
            &env.manifests,
            &env.work.path,
            targets,
            self.daemon_args,
            env.store.clone(),
        ));
        println!("scenario {}: ready in {:.2?}", env.name, started.elapsed());
        env
    }
}

/// Node `i`'s `subnet.env` as flanneld writes it: `FLANNEL_SUBNET` is `cni0`'s address with
/// the prefix length of the node's pod CIDR (and FLANNEL_NETWORK, the whole cluster's, must
/// not count as this node's).
fn write_subnet_env(path: &std::path::Path, i: usize) {
    let text = format!(
        "FLANNEL_NETWORK=10.244.0.0/16\n\
         FLANNEL_SUBNET={}/24\n\
         FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
         FLANNEL_IPV6_SUBNET={}/64\n\
         FLANNEL_MTU={}\n\
         FLANNEL_IPMASQ=true\n",
        cluster::cni_v4(i),
        cluster::cni_v6(i),
        cluster::VXLAN_MTU
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The per-test temporary directory (manifests, daemon status files and logs).
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(prefix: &str) -> WorkDir {
        let path = std::env::temp_dir().join(format!("{prefix}work"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        WorkDir { path }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("KNP_TRAFFIC_KEEP_WORK").is_some() {
            eprintln!("keeping {} (KNP_TRAFFIC_KEEP_WORK)", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where a pod's manifest is. Only [`PodStage::Running`] makes its address a pod to policy;
/// in every other stage the address is up but a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodStage {
    /// The CNI's part only (namespace, address, servers): no manifest yet.
    NetworkOnly,
    /// Manifest `phase: Pending` without `podIPs` (scheduled; its IP not reported yet).
    Pending,
    /// Manifest `phase: Running` with its `podIPs`.
    Running,
    /// Manifest deleted: the namespace and address stay.
    Deleted,
}

struct PodRec {
    def: PodDef,
    net: PodNet,
    stage: PodStage,
}

/// A running scenario. Dropping it stops the daemons, the servers, deletes every namespace
/// and the temporary directory, in that order (field order), also when a check panicked.
pub struct Env {
    name: String,
    kinds: Vec<ProbeKind>,
    namespaces: BTreeMap<String, Labels>,
    manifests: PathBuf,
    /// Inside [`Env::together`]: changes do not wait for convergence.
    deferred: bool,
    /// `--fail-closed`: each node's guarded pod CIDRs (empty without the flag).
    guarded: Vec<Vec<IpNet>>,
    driver: Option<Driver>,
    /// Where the daemons read the objects, when not `manifests` (dropped after the daemons,
    /// before the namespaces).
    store: Option<Arc<dyn ObjectStore>>,
    pods: Vec<PodRec>,
    cluster: Cluster,
    work: WorkDir,
}

/// Flows probed continuously in the background (see [`Env::watch`]).
pub struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<WatchResult>>>,
}

/// How one watched flow fared.
#[derive(Debug)]
pub struct WatchResult {
    pub flow: String,
    pub probes: usize,
    /// Every probe whose outcome contradicted the flow's verdict.
    pub wrong: Vec<String>,
}

impl Watch {
    pub fn finish(mut self) -> Vec<WatchResult> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .map(|h| h.join().expect("the watch thread"))
            .unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A flow a scenario states: `src` and `dst` are `ns/name`, `node-a`, `node-b`,
/// `outside`, or a node's address on one of its interfaces: `node-a@cni0` (10.244.1.1,
/// fd00:10:244:1::1), `node-b@flannel.1` (10.244.2.0).
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: String,
    pub dst: String,
    pub fam: Fam,
    pub proto: Proto,
    pub port: u16,
    pub allow: bool,
    /// The oracle's model does not cover this flow (see [`Flow::beyond_oracle`]).
    pub beyond_oracle: bool,
}

pub fn allow(src: &str, dst: &str, proto: Proto, port: u16) -> Flow {
    Flow {
        src: src.into(),
        dst: dst.into(),
        fam: Fam::V4,
        proto,
        port,
        allow: true,
        beyond_oracle: false,
    }
}

pub fn deny(src: &str, dst: &str, proto: Proto, port: u16) -> Flow {
    Flow {
        allow: false,
        ..allow(src, dst, proto, port)
    }
}

impl Flow {
    pub fn v6(mut self) -> Self {
        self.fam = Fam::V6;
        self
    }

    /// Not checked against the oracle, only probed: for flows whose verdict comes from the
    /// path (e.g. a node's traffic to its own pods is never filtered, whatever source
    /// address it uses) rather than from the addresses the oracle reasons about.
    pub fn beyond_oracle(mut self) -> Self {
        self.beyond_oracle = true;
        self
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {} {}/{} {}",
            self.src,
            self.dst,
            self.fam.name(),
            table::proto_name(self.proto),
            self.port,
            if self.allow { "allow" } else { "deny" }
        )
    }
}

impl Env {
    // ---------------------------------------------------------------------------------
    // Manifests

    fn create_pod(&mut self, mut def: PodDef, stage: PodStage) {
        assert!(
            !self.pods.iter().any(|p| p.def.key() == def.key()),
            "pod {} twice",
            def.key()
        );
        let host = match def.host {
            Some(h) => h,
            None => (10..=250)
                .find(|h| {
                    !self
                        .pods
                        .iter()
                        .any(|p| p.def.node == def.node && p.def.host == Some(*h))
                })
                .expect("a free host number"),
        };
        assert!(
            !self
                .pods
                .iter()
                .any(|p| p.def.node == def.node && p.def.host == Some(host)),
            "address host part {host} used twice on node {}",
            def.node
        );
        def.host = Some(host);
        let net = self.cluster.add_pod(def.node, host, def.v4, def.v6);
        let rec = PodRec { def, net, stage };
        if stage != PodStage::NetworkOnly {
            self.write_pod(&rec);
        }
        self.pods.push(rec);
    }

    fn write_file(&self, file: &str, text: &str) {
        // Written aside under a hidden name (the product skips those), then renamed: a
        // reader never sees half a file.
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.manifests.join(file)).expect("renaming a manifest into place");
        if let Some(store) = &self.store {
            store.put(text);
        }
    }

    fn remove_file(&self, file: &str) {
        let path = self.manifests.join(file);
        let text = self
            .store
            .as_ref()
            .map(|_| std::fs::read_to_string(&path).unwrap_or_default());
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        if let (Some(store), Some(text)) = (&self.store, text) {
            store.remove(&text);
        }
    }

    fn pod_file(key: &str) -> String {
        format!("pod-{}.yaml", key.replace('/', "-"))
    }

    /// The pod's manifest: `Running` with its addresses, or `Pending` without any in
    /// [`PodStage::Pending`].
    fn write_pod(&self, rec: &PodRec) {
        let def = &rec.def;
        let node = self.cluster.node(def.node);
        let running = rec.stage != PodStage::Pending;
        let ips: Vec<String> = if running {
            rec.net.addrs().iter().map(|a| a.to_string()).collect()
        } else {
            Vec::new()
        };
        let ports: Vec<ContainerPort> = def
            .ports
            .iter()
            .map(|(name, proto, number)| ContainerPort {
                container_port: i32::from(*number),
                name: Some(name.clone()),
                protocol: Some(proto.k8s_name().into()),
                ..Default::default()
            })
            .collect();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(def.name.clone()),
                namespace: Some(def.namespace.clone()),
                labels: Some(def.labels.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.name.into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("registry.k8s.io/e2e-test-images/agnhost:2.52".into()),
                    ports: (!ports.is_empty()).then_some(ports),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(if running { "Running" } else { "Pending" }.into()),
                host_ip: Some(node.v4.to_string()),
                host_ips: Some(vec![
                    HostIP {
                        ip: node.v4.to_string(),
                    },
                    HostIP {
                        ip: node.v6.to_string(),
                    },
                ]),
                pod_ip: ips.first().cloned(),
                pod_ips: running.then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
                ..Default::default()
            }),
        };
        let yaml = serde_yaml::to_string(&pod).expect("serialising a Pod");
        self.write_file(&Self::pod_file(&def.key()), &yaml);
    }

    /// One Namespace object per namespace of the scenario and of its pods and policies.
    fn write_namespaces(&mut self) {
        for rec in &self.pods {
            self.namespaces
                .entry(rec.def.namespace.clone())
                .or_default();
        }
        for name in self.namespaces.keys() {
            self.write_namespace(name);
        }
    }

    fn write_namespace(&self, name: &str) {
        let mut labels = self.namespaces.get(name).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let yaml = serde_yaml::to_string(&ns).expect("serialising a Namespace");
        self.write_file(&format!("ns-{name}.yaml"), &yaml);
    }

    /// Node `i`'s `kind: Node` manifest: its addresses, and `spec.podCIDRs` when `cidrs`.
    fn write_node(&self, i: usize, cidrs: bool) {
        let node = self.cluster.node(i);
        let pod_cidrs: Vec<String> = cluster::pod_cidrs(i)
            .iter()
            .map(|c| c.to_string())
            .collect();
        let object = Node {
            metadata: ObjectMeta {
                name: Some(node.name.into()),
                labels: Some(labels(&[("kubernetes.io/hostname", node.name)])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.then(|| pod_cidrs[0].clone()),
                pod_cidrs: cidrs.then_some(pod_cidrs),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: node.v4.to_string(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: node.v6.to_string(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: node.name.into(),
                    },
                ]),
                ..Default::default()
            }),
        };
        let yaml = serde_yaml::to_string(&object).expect("serialising a Node");
        self.write_file(&format!("node-{}.yaml", node.name), &yaml);
    }

    fn policy_file(namespace: &str, name: &str) -> String {
        format!("np-{namespace}-{name}.yaml")
    }

    fn write_policy(&mut self, yaml: &str) {
        let policy: NetworkPolicy = serde_yaml::from_str(yaml)
            .unwrap_or_else(|e| panic!("scenario policy does not parse: {e}\n{yaml}"));
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| oracle::DEFAULT_NAMESPACE.into());
        let name = policy.metadata.name.clone().expect("policy has a name");
        if !self.namespaces.contains_key(&namespace) {
            self.namespaces.insert(namespace.clone(), Labels::new());
            self.write_namespace(&namespace);
        }
        self.write_file(&Self::policy_file(&namespace, &name), yaml);
    }

    fn sync(&mut self) {
        if self.deferred {
            return;
        }
        let started = Instant::now();
        let waited = self
            .driver
            .as_mut()
            .expect("the driver runs once the scenario started")
            .sync();
        if waited {
            println!("  converged in {:.2?}", started.elapsed());
        } else {
            println!("  daemons stopped: not waiting for convergence");
        }
    }

    /// Makes all of `changes` (manifest writes, back to back) and only then waits, once,
    /// for the nodes to enforce the end state.
    pub fn together(&mut self, changes: impl FnOnce(&mut Env)) {
        self.deferred = true;
        changes(self);
        self.deferred = false;
        self.sync();
    }

    /// What the manifests directory says, as the oracle reads it.
    fn world(&self) -> World {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.manifests)
            .expect("reading the manifests directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        files.sort();
        let mut all = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("reading a manifest");
            // Node objects only carry pod CIDRs (the --fail-closed guard, which the harness
            // models itself); the oracle reads Namespaces, Pods and NetworkPolicies.
            let kind = serde_yaml::from_str::<serde_yaml::Value>(&text)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string));
            if kind.as_deref() == Some("Node") {
                continue;
            }
            all.push_str("---\n");
            all.push_str(&text);
            all.push('\n');
        }
        oracle::world_from_yaml(&all)
            .unwrap_or_else(|e| panic!("the oracle cannot read the manifests: {e}"))
    }

    // ---------------------------------------------------------------------------------
    // Changes mid-test (each waits until the nodes enforce it)

    /// Creates or replaces a NetworkPolicy.
    pub fn apply_policy(&mut self, yaml: &str) {
        println!("step: apply policy");
        self.write_policy(yaml);
        self.sync();
    }

    /// Deletes the NetworkPolicy `namespace/name`.
    pub fn delete_policy(&mut self, key: &str) {
        println!("step: delete policy {key}");
        let (namespace, name) = key.split_once('/').expect("namespace/name");
        self.remove_file(&Self::policy_file(namespace, name));
        self.sync();
    }

    /// Replaces a namespace's labels (the name label stays, as the API server keeps it).
    pub fn label_namespace(&mut self, name: &str, pairs: &[(&str, &str)]) {
        println!("step: label namespace {name} {pairs:?}");
        self.namespaces.insert(name.into(), labels(pairs));
        self.write_namespace(name);
        self.sync();
    }

    /// Replaces a pod's labels.
    pub fn label_pod(&mut self, key: &str, pairs: &[(&str, &str)]) {
        println!("step: label pod {key} {pairs:?}");
        let i = self.pod_index(key);
        if let Some(rec) = self.pods.get_mut(i) {
            rec.def.labels = labels(pairs);
        }
        if let Some(rec) = self
            .pods
            .get(i)
            .filter(|p| matches!(p.stage, PodStage::Pending | PodStage::Running))
        {
            self.write_pod(rec);
        }
        self.sync();
    }

    /// A new pod: its namespace (veth, addresses, servers) first, then its manifest, as
    /// the CNI and the kubelet would.
    pub fn add_pod(&mut self, def: PodDef) {
        println!("step: add pod {}", def.key());
        let namespace = def.namespace.clone();
        self.create_pod(def, PodStage::Running);
        self.ensure_namespace(&namespace);
        self.sync();
    }

    fn ensure_namespace(&mut self, namespace: &str) {
        if !self.namespaces.contains_key(namespace) {
            self.namespaces.insert(namespace.into(), Labels::new());
            self.write_namespace(namespace);
        }
    }

    /// The CNI's part of a new pod only: its namespace, veth, addresses and servers are up,
    /// but no manifest says so yet (nothing to wait for). To policy its address is a
    /// stranger until [`Env::write_pod_manifest`]; in the tables it shows as `(no manifest)`.
    pub fn add_pod_network(&mut self, def: PodDef) {
        println!("step: pod network {} up, no manifest", def.key());
        self.create_pod(def, PodStage::NetworkOnly);
    }

    /// Writes the manifest of a pod made with [`Env::add_pod_network`]: `Pending` without
    /// addresses (scheduled, its IP not reported yet; still a stranger to policy), or
    /// `Running` with its addresses.
    pub fn write_pod_manifest(&mut self, key: &str, stage: PodStage) {
        assert!(
            matches!(stage, PodStage::Pending | PodStage::Running),
            "a written manifest is Pending or Running"
        );
        println!("step: write the manifest of {key} ({stage:?})");
        let i = self.pod_index(key);
        let namespace = self.pods[i].def.namespace.clone();
        self.pods[i].stage = stage;
        self.ensure_namespace(&namespace);
        self.write_pod(&self.pods[i]);
        self.sync();
    }

    /// Deletes a pod's manifest but keeps its namespace and address: from now on that
    /// address is a stranger (not a pod) to policy, and stays in the tables as `(deleted)`.
    pub fn delete_pod_manifest(&mut self, key: &str) {
        println!("step: delete pod {key} from the API");
        let i = self.pod_index(key);
        if let Some(rec) = self.pods.get_mut(i) {
            assert!(
                matches!(rec.stage, PodStage::Pending | PodStage::Running),
                "pod {key} has no manifest to delete"
            );
            rec.stage = PodStage::Deleted;
        }
        self.remove_file(&Self::pod_file(key));
        self.sync();
    }

    /// Removes a pod's namespace (after [`Env::delete_pod_manifest`]).
    pub fn remove_pod_network(&mut self, key: &str) {
        let i = self.pod_index(key);
        assert!(
            !self
                .pods
                .get(i)
                .is_some_and(|p| matches!(p.stage, PodStage::Pending | PodStage::Running)),
            "delete the manifest of {key} first"
        );
        self.pods.remove(i);
    }

    // ---------------------------------------------------------------------------------
    // Access to the cluster

    fn pod_index(&self, key: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.def.key() == key)
            .unwrap_or_else(|| panic!("scenario {} has no pod {key}", self.name))
    }

    pub fn pod_net(&self, key: &str) -> &PodNet {
        &self.pods[self.pod_index(key)].net
    }

    pub fn pod_addr(&self, key: &str, fam: Fam) -> IpAddr {
        let net = self.pod_net(key);
        match fam {
            Fam::V4 => net.v4.map(IpAddr::from),
            Fam::V6 => net.v6.map(IpAddr::from),
        }
        .unwrap_or_else(|| panic!("pod {key} has no {} address", fam.name()))
    }

    pub fn node_ns(&self, i: usize) -> &Netns {
        &self.cluster.node(i).ns
    }

    /// Every pod (also deleted ones still on the network), both nodes, the outside host.
    fn endpoints(&self) -> Vec<Endpoint<'_>> {
        let mut list: Vec<Endpoint<'_>> = self
            .pods
            .iter()
            .map(|p| Endpoint {
                label: match p.stage {
                    PodStage::Running => p.def.key(),
                    PodStage::NetworkOnly => format!("{} (no manifest)", p.def.key()),
                    PodStage::Pending => format!("{} (pending)", p.def.key()),
                    PodStage::Deleted => format!("{} (deleted)", p.def.key()),
                },
                ns: &p.net.ns,
                v4: p.net.v4.map(IpAddr::from),
                v6: p.net.v6.map(IpAddr::from),
                infra: false,
            })
            .collect();
        for node in &self.cluster.nodes {
            list.push(Endpoint {
                label: node.name.into(),
                ns: &node.ns,
                v4: Some(node.v4.into()),
                v6: Some(node.v6.into()),
                infra: true,
            });
        }
        list.push(Endpoint {
            label: "outside".into(),
            ns: &self.cluster.underlay,
            v4: Some(OUTSIDE_V4.into()),
            v6: Some(cluster::outside_v6().into()),
            infra: true,
        });
        list
    }

    /// (source namespace, source address, destination namespace, destination address).
    fn resolve(&self, flow: &Flow) -> (&Netns, IpAddr, &Netns, IpAddr) {
        let endpoints_ns = |name: &str| -> (&Netns, IpAddr) {
            let (base, iface) = match name.split_once('@') {
                Some((base, iface)) => (base, Some(iface)),
                None => (name, None),
            };
            if let Some(i) = NODE_NAMES.iter().position(|n| *n == base) {
                let node = self.cluster.node(i);
                let addr: IpAddr = match (flow.fam, iface) {
                    (Fam::V4, None) => node.v4.into(),
                    (Fam::V6, None) => node.v6.into(),
                    (Fam::V4, Some("cni0")) => cluster::cni_v4(i).into(),
                    (Fam::V6, Some("cni0")) => cluster::cni_v6(i).into(),
                    (Fam::V4, Some("flannel.1")) => cluster::vtep_v4(i).into(),
                    (fam, Some(other)) => {
                        panic!("no {} address of {base} on {other:?}", fam.name())
                    }
                };
                return (&node.ns, addr);
            }
            let cni = iface.is_some();
            assert!(!cni, "@<interface> only applies to nodes: {name}");
            if base == "outside" {
                let addr: IpAddr = match flow.fam {
                    Fam::V4 => OUTSIDE_V4.into(),
                    Fam::V6 => cluster::outside_v6().into(),
                };
                return (&self.cluster.underlay, addr);
            }
            (&self.pod_net(base).ns, self.pod_addr(base, flow.fam))
        };
        let (src_ns, src) = endpoints_ns(&flow.src);
        let (dst_ns, dst) = endpoints_ns(&flow.dst);
        (src_ns, src, dst_ns, dst)
    }

    // ---------------------------------------------------------------------------------
    // Checks

    /// The full truth table, every pair × family × probe kind, expected by the oracle.
    pub fn check(&self, step: &str) {
        let world = self.world();
        let oracle = oracle::Oracle::new(&world);
        let guard = self.guard(&world);
        let title = format!("{} / {step} [driver {}]", self.name, driver::kind().name());
        let endpoints = self.endpoints();
        let result = table::verify(&title, &endpoints, &self.kinds, |src, dst, proto, port| {
            oracle.allowed(src, dst, proto, port) && !guard.drops(src, dst)
        });
        if let Err(report) = result {
            panic!("{report}{}", self.daemon_logs());
        }
    }

    fn daemon_logs(&self) -> String {
        let logs = self.driver.as_ref().map(Driver::logs).unwrap_or_default();
        if logs.is_empty() {
            logs
        } else {
            format!("\ndaemon logs (last lines):\n{logs}")
        }
    }

    /// Stops the daemons with SIGTERM (daemon driver only; returns false for the render
    /// driver). Changes made while they are stopped are not waited for.
    pub fn stop_daemons(&mut self) -> bool {
        let driver = self.driver.as_mut().expect("the driver runs");
        if driver.kind() != driver::Kind::Daemon {
            return false;
        }
        println!("step: stop the daemons");
        for (node, status) in driver.stop_daemons() {
            assert!(
                status.is_some_and(|s| s.success()),
                "the daemon of {node} did not exit cleanly on SIGTERM: {status:?}"
            );
        }
        true
    }

    /// Kills the daemons with SIGKILL (daemon driver only; returns false for the render
    /// driver).
    pub fn kill_daemons(&mut self) -> bool {
        let driver = self.driver.as_mut().expect("the driver runs");
        if driver.kind() != driver::Kind::Daemon {
            return false;
        }
        println!("step: kill -9 the daemons");
        driver.kill_daemons();
        true
    }

    /// Probes `flows` (each probe a new connection) one after the other on a background
    /// thread until [`Watch::finish`], checking every outcome against the flow's verdict. An
    /// allowed flow that times out gets one retry with the long timeout before it counts as
    /// broken; a denied flow that gets through counts at once.
    pub fn watch(&self, flows: &[Flow]) -> Watch {
        struct Owned {
            label: String,
            src: std::fs::File,
            bind: IpAddr,
            dst: IpAddr,
            proto: Proto,
            port: u16,
            sctp_owner: String,
            allow: bool,
        }
        let owned: Vec<Owned> = flows
            .iter()
            .map(|flow| {
                let (src_ns, src, dst_ns, dst) = self.resolve(flow);
                Owned {
                    label: flow.to_string(),
                    src: src_ns
                        .file()
                        .try_clone()
                        .expect("duplicate a namespace handle"),
                    bind: src,
                    dst,
                    proto: flow.proto,
                    port: flow.port,
                    sctp_owner: dst_ns.name.clone(),
                    allow: flow.allow,
                }
            })
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            // One prober per allowed flow, four per denied flow: a denied probe waits out its
            // timeout, so several keep a SYN going out every ~75 ms.
            std::thread::scope(|scope| {
                let jobs: Vec<_> = owned
                    .iter()
                    .flat_map(|o| std::iter::repeat_n(o, if o.allow { 1 } else { 4 }))
                    .map(|o| {
                        let flag = &flag;
                        scope.spawn(move || {
                            let mut probes = 0;
                            let mut wrong = Vec::new();
                            if let Err(e) = netns::enter(&o.src) {
                                wrong.push(format!("setns: {e}"));
                                return (o.label.clone(), probes, wrong);
                            }
                            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                                let mut probe = Probe {
                                    src: &o.src,
                                    bind: Some(o.bind),
                                    dst: o.dst,
                                    proto: o.proto,
                                    port: o.port,
                                    sctp_owner: &o.sctp_owner,
                                    timeout: SHORT,
                                };
                                let at = started.elapsed();
                                let mut outcome = probe::run_one(&probe);
                                if o.allow && outcome.reachable() != Some(true) {
                                    probe.timeout = LONG;
                                    outcome = probe::run_one(&probe);
                                }
                                probes += 1;
                                if outcome.reachable() != Some(o.allow) {
                                    wrong.push(format!("at {at:.2?}: {outcome}"));
                                }
                            }
                            (o.label.clone(), probes, wrong)
                        })
                    })
                    .collect();
                let mut results: Vec<WatchResult> = owned
                    .iter()
                    .map(|o| WatchResult {
                        flow: o.label.clone(),
                        probes: 0,
                        wrong: Vec::new(),
                    })
                    .collect();
                for job in jobs {
                    let (label, probes, wrong) = job.join().expect("a prober");
                    if let Some(r) = results.iter_mut().find(|r| r.flow == label) {
                        r.probes += probes;
                        r.wrong.extend(wrong);
                    }
                }
                results
            })
        });
        Watch {
            stop,
            handle: Some(handle),
        }
    }

    pub fn driver_kind(&self) -> driver::Kind {
        driver::kind()
    }

    /// New daemons; waits until they enforce the manifests.
    pub fn resume_daemons(&mut self) {
        println!("step: start new daemons");
        let started = Instant::now();
        self.driver
            .as_mut()
            .expect("the driver runs")
            .resume_daemons();
        println!("  converged in {:.2?}", started.elapsed());
    }

    /// Hand-written expectations: each must agree with the oracle, then is probed.
    pub fn expect(&self, step: &str, flows: &[Flow]) {
        self.agree(step, flows);
        let mut probes = Vec::new();
        for flow in flows {
            let (src_ns, src, dst_ns, dst) = self.resolve(flow);
            probes.push(Probe {
                src: src_ns.file(),
                bind: Some(src),
                dst,
                proto: flow.proto,
                port: flow.port,
                sctp_owner: &dst_ns.name,
                timeout: SHORT,
            });
        }
        let mut outcomes = probe::run_all(&probes);
        for (i, flow) in flows.iter().enumerate() {
            let ok = outcomes.get(i).and_then(Outcome::reachable) == Some(flow.allow);
            if !ok && flow.allow {
                if let (Some(p), Some(slot)) = (probes.get(i), outcomes.get_mut(i)) {
                    *slot = probe::run_one_in(&Probe {
                        timeout: LONG,
                        ..*p
                    });
                }
            }
        }
        let bad: Vec<String> = flows
            .iter()
            .zip(&outcomes)
            .filter(|(f, o)| o.reachable() != Some(f.allow))
            .map(|(f, o)| format!("  {f}: got {o}"))
            .collect();
        println!("{} / {step}: {} stated flows", self.name, flows.len());
        assert!(
            bad.is_empty(),
            "{} / {step} [driver {}]: stated flows not as expected:\n{}\n{}",
            self.name,
            driver::kind().name(),
            bad.join("\n"),
            self.daemon_logs()
        );
    }

    /// Checks that each of `flows` states what the oracle (plus the `--fail-closed` guard,
    /// when the daemons run with it) says, without probing; [`Env::expect`] does this first.
    /// For flows handed to [`Env::watch`].
    pub fn agree(&self, step: &str, flows: &[Flow]) {
        let world = self.world();
        let oracle = oracle::Oracle::new(&world);
        let guard = self.guard(&world);
        for flow in flows {
            let (_, src, _, dst) = self.resolve(flow);
            let says = oracle.allowed(src, dst, flow.proto, flow.port);
            let guarded = guard.drops(src, dst);
            assert!(
                flow.beyond_oracle || (says && !guarded) == flow.allow,
                "{} / {step}: the scenario states `{flow}` but the spec oracle says {}{}: the \
                 scenario (or the oracle) is wrong",
                self.name,
                if says { "allow" } else { "deny" },
                if guarded {
                    " and the --fail-closed guard drops it"
                } else {
                    ""
                }
            );
        }
    }

    /// The `--fail-closed` guard for the manifests now in the directory (inactive without
    /// the flag).
    fn guard(&self, world: &World) -> FailClosedGuard {
        let nodes = self
            .guarded
            .iter()
            .enumerate()
            .map(|(i, cidrs)| {
                let name = self.cluster.node(i).name;
                GuardedNode {
                    cidrs: cidrs.clone(),
                    programmed: world
                        .pods
                        .iter()
                        .filter(|p| {
                            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name)
                        })
                        .flat_map(live_pod_ips)
                        .collect(),
                    own: cluster::node_own_addrs(i).to_vec(),
                }
            })
            .collect();
        FailClosedGuard { nodes }
    }

    /// One probe to an arbitrary address (e.g. a Service IP), from `src` (an endpoint name).
    pub fn probe(
        &self,
        src: &str,
        dst: IpAddr,
        proto: Proto,
        port: u16,
        timeout: Duration,
    ) -> Outcome {
        let fam = if dst.is_ipv4() { Fam::V4 } else { Fam::V6 };
        let flow = Flow {
            fam,
            ..allow(src, src, proto, port)
        };
        let (src_ns, src_addr, _, _) = self.resolve(&flow);
        probe::run_one_in(&Probe {
            src: src_ns.file(),
            bind: Some(src_addr),
            dst,
            proto,
            port,
            sctp_owner: "",
            timeout,
        })
    }

    /// An open TCP connection from pod `src` to `dst` (an endpoint name) port `port`.
    pub fn connect(&self, src: &str, dst: &str, port: u16) -> TcpStream {
        let flow = allow(src, dst, Tcp, port);
        let (src_ns, src_addr, _, dst_addr) = self.resolve(&flow);
        src_ns.run(|| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(std::net::SocketAddr::new(dst_addr, port)),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .expect("a TCP socket");
            socket
                .bind(&std::net::SocketAddr::new(src_addr, 0).into())
                .expect("binding the source address");
            socket
                .connect_timeout(&std::net::SocketAddr::new(dst_addr, port).into(), LONG)
                .unwrap_or_else(|e| panic!("connecting {src} -> {dst}:{port}: {e}"));
            TcpStream::from(socket)
        })
    }

    /// Loads an extra nft script into a node (e.g. a fake kube-proxy).
    pub fn node_nft(&self, node: usize, script: &str) {
        self.node_ns(node).nft(script);
    }

    /// Hairpin mode on the pod's bridge port.
    pub fn hairpin_on(&self, key: &str) {
        self.cluster.hairpin_on(self.pod_net(key));
    }
}

/// What `kube-nftpol run --fail-closed` adds to the verdicts, written from README.md and
/// rules/README.md (the spec oracle does not model it): each node drops, in its forward
/// hook, packets from or to an address of its pod CIDRs that is not a live pod on that node
/// (a pod the daemon has programmed), and, in its input hook, packets from such an address
/// that do not come through `lo`. The node's own traffic (output hook) is not filtered, and
/// the node's own addresses (`cni0`, `flannel.1`) are not pods.
struct FailClosedGuard {
    nodes: Vec<GuardedNode>,
}

struct GuardedNode {
    cidrs: Vec<IpNet>,
    /// Every address of a live pod on the node, as the manifests say.
    programmed: BTreeSet<IpAddr>,
    own: Vec<IpAddr>,
}

impl GuardedNode {
    /// In the node's pod CIDRs, but neither a programmed pod nor the node itself.
    fn dark(&self, addr: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(&addr))
            && !self.programmed.contains(&addr)
            && !self.own.contains(&addr)
    }
}

impl FailClosedGuard {
    /// Does the guard drop a new flow `src → dst`? A dark source never gets past its node
    /// (forward or input). A dark destination is reached through its node's forward hook,
    /// except from the node itself. An address talking to itself never leaves its
    /// namespace.
    fn drops(&self, src: IpAddr, dst: IpAddr) -> bool {
        src != dst
            && self
                .nodes
                .iter()
                .any(|n| n.dark(src) || (n.dark(dst) && !n.own.contains(&src)))
    }
}

/// The addresses of a pod the product programs: not finished, not hostNetwork, with
/// `status.podIPs` (or `podIP`).
fn live_pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if finished || host_network {
        return Vec::new();
    }
    let listed = status.and_then(|s| s.pod_ips.as_ref());
    let texts: Vec<&str> = match listed {
        Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.as_str()).collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .collect(),
    };
    texts.iter().filter_map(|t| t.parse().ok()).collect()
}
