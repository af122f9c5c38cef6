//! Cluster state as the compiler needs it: namespaces, pods and NetworkPolicies, already
//! validated. Kubernetes objects (`k8s-openapi` types) enter through [`Cluster::apply`] and are
//! converted in exactly one place, [`convert`]; everything downstream works on these types.
//!
//! Bad fields never panic and never disappear silently: each becomes a [`Diagnostic`] naming
//! the object and the field path, and the converted value is the fail-closed reading of the
//! object (see `docs/semantics.md`, "Bad input").

mod convert;
mod diag;
mod selector;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;

pub use diag::{Diagnostic, Effect, Kind, ObjectRef};
pub use selector::{Op, Requirement, Selector};

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// `(namespace, name)` of a namespaced object.
pub type Key = (String, String);

/// A Kubernetes object the model accepts, as the sources deliver it.
// Objects are transient (converted on arrival, never stored), so their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(core::Namespace),
    Node(core::Node),
    Pod(core::Pod),
    NetworkPolicy(net::NetworkPolicy),
}

impl Object {
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Object::Namespace(o) => ObjectRef::new(Kind::Namespace, None, &o.metadata.name),
            Object::Node(o) => ObjectRef::new(Kind::Node, None, &o.metadata.name),
            Object::Pod(o) => {
                ObjectRef::new(Kind::Pod, Some(&o.metadata.namespace), &o.metadata.name)
            }
            Object::NetworkPolicy(o) => ObjectRef::new(
                Kind::NetworkPolicy,
                Some(&o.metadata.namespace),
                &o.metadata.name,
            ),
        }
    }
}

/// Transport protocols NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; exact case, as the API server demands).
    pub fn from_api(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn api_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The nft keyword (also the lower-case name used in flows files).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always contains [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

/// What the ruleset needs of a node: its pod CIDRs (the addresses `--fail-closed` guards)
/// and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Valid prefixes of `spec.podCIDRs` (or `spec.podCIDR`), host bits cleared.
    pub pod_cidrs: Vec<IpNet>,
    /// `InternalIP` and `ExternalIP` addresses from `status.addresses`.
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A container port that has a name (only those matter for policies).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub host_network: bool,
    pub phase: PodPhase,
    /// Valid addresses from `status.podIPs` (or `status.podIP`), in API order, no duplicates.
    pub ips: Vec<IpAddr>,
    /// The addresses of the node the pod runs on (`status.hostIP(s)`).
    pub host_ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    /// Has an address and is not finished: the only pods policies can see.
    pub fn is_live(&self) -> bool {
        !self.ips.is_empty() && !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    /// Live and not on the host network: can be a policy target or a selector peer.
    pub fn is_policy_pod(&self) -> bool {
        self.is_live() && !self.host_network
    }

    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// The port number a named port resolves to on this pod, if it has one of that name and
    /// protocol.
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Which namespaces a pod peer draws from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceSel {
    /// No `namespaceSelector`: the policy's own namespace.
    Own(String),
    /// `namespaceSelector` given (`{}` selects all namespaces).
    Matching(Selector),
}

/// An ipBlock: `cidr` minus every `except`. Validated: excepts are strict subsets of `cidr`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pods {
        namespaces: NamespaceSel,
        pods: Selector,
    },
    IpBlock(IpBlock),
}

/// Inclusive port range; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSel {
    /// No `port`: every port of the protocol.
    All,
    Range(PortRange),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortSel,
}

/// One valid rule of a policy. Invalid rules are not represented: they allow nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Position in `spec.ingress` / `spec.egress`, for attribution.
    pub index: usize,
    /// `None`: `from`/`to` absent or empty, every remote address.
    pub peers: Option<Vec<Peer>>,
    /// `None`: `ports` absent or empty, every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// `None` when `spec.podSelector` is invalid: the policy then selects every pod of its
    /// namespace (fail closed).
    pub pod_selector: Option<Selector>,
    /// `Some` when the policy isolates ingress, holding its valid ingress rules.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates egress, holding its valid egress rules.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether this policy selects `pod` (which must be in the policy's namespace to match).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace
            && pod.is_policy_pod()
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
    }
}

/// One object as the model holds it (owned): what a change did is `before != after`.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    NetworkPolicy(Policy),
}

/// The whole cluster as far as policy is concerned.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, Namespace>,
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<Key, Pod>,
    policies: BTreeMap<Key, Policy>,
}

impl Cluster {
    /// Builds a cluster from objects; later objects with the same identity replace earlier ones.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> (Cluster, Vec<Diagnostic>) {
        let mut cluster = Cluster::default();
        let mut diagnostics = Vec::new();
        for object in objects {
            diagnostics.extend(cluster.apply(&object));
        }
        (cluster, diagnostics)
    }

    /// Adds or replaces one object. Returns what was wrong with it.
    pub fn apply(&mut self, object: &Object) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        match object {
            Object::Namespace(ns) => {
                let ns = convert::namespace(ns);
                self.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Node(node) => {
                let node = convert::node(node, &mut diags);
                self.nodes.insert(node.name.clone(), node);
            }
            Object::Pod(pod) => {
                let pod = convert::pod(pod, &mut diags);
                self.pods.insert(pod.key(), pod);
            }
            Object::NetworkPolicy(policy) => {
                let policy = convert::policy(policy, &mut diags);
                self.policies.insert(policy.key(), policy);
            }
        }
        diags
    }

    /// The model's copy of one object, if known.
    pub fn stored(&self, object: &ObjectRef) -> Option<Stored> {
        let key = || {
            (
                object.namespace.clone().unwrap_or_default(),
                object.name.clone(),
            )
        };
        match object.kind {
            Kind::Namespace => self
                .namespaces
                .get(&object.name)
                .cloned()
                .map(Stored::Namespace),
            Kind::Node => self.nodes.get(&object.name).cloned().map(Stored::Node),
            Kind::Pod => self.pods.get(&key()).cloned().map(Stored::Pod),
            Kind::NetworkPolicy => self
                .policies
                .get(&key())
                .cloned()
                .map(Stored::NetworkPolicy),
        }
    }

    /// Removes one object; unknown objects are ignored.
    pub fn delete(&mut self, object: &ObjectRef) {
        let key = || {
            (
                object.namespace.clone().unwrap_or_default(),
                object.name.clone(),
            )
        };
        match object.kind {
            Kind::Namespace => {
                self.namespaces.remove(&object.name);
            }
            Kind::Node => {
                self.nodes.remove(&object.name);
            }
            Kind::Pod => {
                self.pods.remove(&key());
            }
            Kind::NetworkPolicy => {
                self.policies.remove(&key());
            }
        }
    }

    /// Replaces every object of `kind` with `objects` (a source listed them all again): objects
    /// of that kind not among them are deleted. Objects of other kinds are ignored.
    pub fn reset(&mut self, kind: Kind, objects: &[Object]) -> Vec<Diagnostic> {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::NetworkPolicy => self.policies.clear(),
        }
        let mut diags = Vec::new();
        for object in objects.iter().filter(|o| o.object_ref().kind == kind) {
            diags.extend(self.apply(object));
        }
        diags
    }

    /// The Node objects known.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The pod CIDRs of a node, from its Node object (none if the object is unknown).
    pub fn node_pod_cidrs(&self, name: &str) -> &[IpNet] {
        self.nodes.get(name).map_or(&[], |n| n.pod_cidrs.as_slice())
    }

    /// Labels of a namespace; a namespace known only from its pods or policies has just the
    /// name label, as the API server would have given it.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => implicit_namespace_labels(name),
        }
    }

    /// Every namespace that exists explicitly or through a pod or policy in it.
    pub fn namespace_names(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = self.namespaces.keys().map(String::as_str).collect();
        names.extend(self.pods.values().map(|p| p.namespace.as_str()));
        names.extend(self.policies.values().map(|p| p.namespace.as_str()));
        names
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// Names of every node some pod is bound to.
    pub fn node_names(&self) -> BTreeSet<&str> {
        self.pods
            .values()
            .filter_map(|p| p.node_name.as_deref())
            .collect()
    }

    /// The addresses of a node, as its Node object and its pods report them.
    pub fn node_ips(&self, node: &str) -> BTreeSet<IpAddr> {
        let mut ips: BTreeSet<IpAddr> = self
            .nodes
            .get(node)
            .map(|n| n.addresses.iter().copied().collect())
            .unwrap_or_default();
        for pod in self
            .pods
            .values()
            .filter(|p| p.node_name.as_deref() == Some(node))
        {
            ips.extend(pod.host_ips.iter().copied());
            if pod.host_network && pod.is_live() {
                ips.extend(pod.ips.iter().copied());
            }
        }
        ips
    }
}

fn implicit_namespace_labels(name: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: &str) -> Object {
        let text = format!(
            r#"{{"metadata": {{"name": "{name}", "namespace": "{ns}"}},
                "spec": {{"nodeName": "node-a", "containers": []}},
                "status": {{"phase": "Running", "podIPs": [{{"ip": "{ip}"}}]}}}}"#
        );
        Object::Pod(serde_json::from_str(&text).expect("pod json"))
    }

    fn namespace(name: &str) -> Object {
        let text = format!(r#"{{"metadata": {{"name": "{name}"}}}}"#);
        Object::Namespace(serde_json::from_str(&text).expect("namespace json"))
    }

    #[test]
    fn a_reset_replaces_one_kind_and_drops_what_is_gone() {
        let (mut cluster, _) = Cluster::from_objects([
            namespace("a"),
            namespace("b"),
            pod("a", "p1", "10.0.0.1"),
            pod("a", "p2", "10.0.0.2"),
        ]);
        // A re-list of pods: p1 is gone, p2 moved, p3 is new.
        let diags = cluster.reset(
            Kind::Pod,
            &[
                pod("a", "p2", "10.0.0.22"),
                pod("b", "p3", "10.0.0.3"),
                namespace("c"),
            ],
        );
        assert!(diags.is_empty());
        let pods: Vec<(String, Vec<IpAddr>)> = cluster
            .pods()
            .map(|p| (p.name.clone(), p.ips.clone()))
            .collect();
        assert_eq!(
            pods,
            [
                ("p2".to_string(), vec!["10.0.0.22".parse().expect("ip")]),
                ("p3".to_string(), vec!["10.0.0.3".parse().expect("ip")]),
            ]
        );
        // Other kinds are untouched, and objects of other kinds in the list are ignored.
        let namespaces: Vec<&str> = cluster.namespaces().map(|n| n.name.as_str()).collect();
        assert_eq!(namespaces, ["a", "b"]);
    }
}
