//! An independent NetworkPolicy evaluator, written from `docs/semantics.md` and the upstream
//! Kubernetes NetworkPolicy specification. It shares no code with the compiler: it walks the
//! k8s-openapi objects directly for every question it is asked.
//!
//! `allowed(world, src, dst, proto, port)` answers: is a NEW connection from `src` to `dst`
//! allowed cluster-wide? That is the egress policy of the source pod (when `src` belongs to a
//! live, non-hostNetwork pod) AND the ingress policy of the destination pod (when `dst` belongs
//! to one), with the always-allowed cases (a pod reaching itself, a node reaching its own pods).
//!
//! Choices where `docs/semantics.md` is silent are marked `DECISION:`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Proto;

/// The label every namespace carries.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespaced object without `metadata.namespace` lives here.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Everything the oracle looks at.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
}

/// Is a new connection `src → dst` (`proto`, destination `port`) allowed?
pub fn allowed(world: &World, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> bool {
    Oracle::new(world).allowed(src, dst, proto, port)
}

/// The oracle with the per-world facts (which pods are live, node IPs, namespace labels)
/// worked out once; policies are still evaluated from the objects on every question.
pub struct Oracle<'w> {
    world: &'w World,
    /// Live pods (hostNetwork ones included, flagged).
    live_pods: Vec<LivePod<'w>>,
    /// Labels of every namespace that holds a live pod or has a Namespace object.
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Node name → its IPs.
    node_ips: BTreeMap<&'w str, Vec<IpAddr>>,
    /// Stand-in for a NetworkPolicy without `spec`. DECISION: no spec = the Go zero value:
    /// `podSelector: {}`, default policyTypes, so it denies all ingress to its namespace.
    empty_spec: NetworkPolicySpec,
}

struct LivePod<'w> {
    pod: &'w Pod,
    namespace: &'w str,
    node: Option<&'w str>,
    ips: Vec<IpAddr>,
    host_network: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// One ingress or egress rule, direction-neutral.
struct Rule<'a> {
    /// `from` (ingress) or `to` (egress).
    peers: Option<&'a [NetworkPolicyPeer]>,
    ports: Option<&'a [NetworkPolicyPort]>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'w> Oracle<'w> {
    pub fn new(world: &'w World) -> Self {
        let mut live_pods = Vec::new();
        for pod in &world.pods {
            let ips = pod_ips(pod);
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let terminated = matches!(phase, Some("Succeeded") | Some("Failed"));
            if ips.is_empty() || terminated {
                continue;
            }
            let spec = pod.spec.as_ref();
            live_pods.push(LivePod {
                pod,
                namespace: namespace_of(&pod.metadata.namespace),
                node: spec.and_then(|s| s.node_name.as_deref()),
                ips,
                host_network: spec.and_then(|s| s.host_network) == Some(true),
            });
        }

        // Namespace labels: the object's labels plus the name label. A namespace without an
        // object has only the name label. DECISION: a manifest's own
        // `kubernetes.io/metadata.name` label is overwritten with the name, as the API server
        // does.
        let mut namespace_labels = BTreeMap::new();
        for pod in &live_pods {
            namespace_labels
                .entry(pod.namespace.to_string())
                .or_insert_with(|| name_label_only(pod.namespace));
        }
        for ns in &world.namespaces {
            let Some(name) = ns.metadata.name.as_deref() else {
                continue;
            };
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
            namespace_labels.insert(name.to_string(), labels);
        }

        // A node's IPs: hostIP/hostIPs of the pods bound to it, and the IPs of its hostNetwork
        // pods. DECISION: every pod counts here whatever its phase (a finished pod still
        // reports its node's address correctly).
        let mut node_ips: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
        for pod in &world.pods {
            let Some(spec) = pod.spec.as_ref() else {
                continue;
            };
            let Some(node) = spec.node_name.as_deref() else {
                continue;
            };
            let ips = node_ips.entry(node).or_default();
            if let Some(status) = pod.status.as_ref() {
                let host_ips = status.host_ip.iter().map(String::as_str);
                let more = status.host_ips.iter().flatten().map(|h| h.ip.as_str());
                for ip in host_ips.chain(more) {
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        push_unique(ips, ip);
                    }
                }
            }
            if spec.host_network == Some(true) {
                for ip in pod_ips(pod) {
                    push_unique(ips, ip);
                }
            }
        }

        Oracle {
            world,
            live_pods,
            namespace_labels,
            node_ips,
            empty_spec: NetworkPolicySpec::default(),
        }
    }

    /// Is a new connection `src → dst` allowed?
    pub fn allowed(&self, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> bool {
        // Always allowed: a pod reaching itself.
        if src == dst {
            return true;
        }
        // Egress of the source pod.
        if let Some(source) = self.policy_pod_at(src) {
            let named_port_pod = self.policy_pod_at(dst);
            let ok =
                self.direction_allows(source, Direction::Egress, dst, named_port_pod, proto, port);
            if !ok {
                return false;
            }
        }
        // Ingress of the destination pod, unless its own node is connecting (kubelet probes).
        if let Some(dest) = self.policy_pod_at(dst) {
            let from_own_node = dest.node.is_some_and(|node| self.is_node_ip(node, src));
            if !from_own_node {
                let ok =
                    self.direction_allows(dest, Direction::Ingress, src, Some(dest), proto, port);
                if !ok {
                    return false;
                }
            }
        }
        true
    }

    /// The live, non-hostNetwork pod owning `ip`: the only kind of pod policies see.
    fn policy_pod_at(&self, ip: IpAddr) -> Option<&LivePod<'w>> {
        self.live_pods
            .iter()
            .find(|p| !p.host_network && p.ips.contains(&ip))
    }

    fn is_node_ip(&self, node: &str, ip: IpAddr) -> bool {
        self.node_ips.get(node).is_some_and(|ips| ips.contains(&ip))
    }

    /// Does `target`'s policy for `direction` let the connection through? `remote` is the
    /// other end; `named_port_pod` is the pod named ports are looked up on.
    fn direction_allows(
        &self,
        target: &LivePod<'w>,
        direction: Direction,
        remote: IpAddr,
        named_port_pod: Option<&LivePod<'w>>,
        proto: Proto,
        port: u16,
    ) -> bool {
        let mut isolated = false;
        for policy in &self.world.policies {
            if !self.policy_selects(policy, target) {
                continue;
            }
            let spec = policy.spec.as_ref().unwrap_or(&self.empty_spec);
            let (ingress, egress) = effective_policy_types(spec);
            let applies = match direction {
                Direction::Ingress => ingress,
                Direction::Egress => egress,
            };
            if !applies {
                continue;
            }
            isolated = true;
            let policy_namespace = namespace_of(&policy.metadata.namespace);
            for rule in rules(spec, direction) {
                if self.rule_allows(&rule, policy_namespace, remote, named_port_pod, proto, port) {
                    return true;
                }
            }
        }
        !isolated
    }

    /// A policy selects the live non-hostNetwork pods of its namespace matching its
    /// `podSelector`. DECISION: an absent podSelector = `{}`. An invalid one selects every pod.
    fn policy_selects(&self, policy: &NetworkPolicy, pod: &LivePod<'w>) -> bool {
        if pod.host_network || pod.namespace != namespace_of(&policy.metadata.namespace) {
            return false;
        }
        match policy.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) {
            None => true,
            Some(selector) if !selector_is_valid(selector) => true,
            Some(selector) => selector_matches(selector, pod_labels(pod.pod)),
        }
    }

    fn rule_allows(
        &self,
        rule: &Rule<'_>,
        policy_namespace: &str,
        remote: IpAddr,
        named_port_pod: Option<&LivePod<'w>>,
        proto: Proto,
        port: u16,
    ) -> bool {
        // Fail closed: an invalid rule allows nothing.
        if !rule_is_valid(rule) {
            return false;
        }
        let peer_ok = match rule.peers {
            None | Some([]) => true,
            Some(peers) => peers
                .iter()
                .any(|peer| self.peer_matches(peer, policy_namespace, remote)),
        };
        let port_ok = match rule.ports {
            None | Some([]) => true,
            Some(ports) => ports
                .iter()
                .any(|entry| port_entry_matches(entry, named_port_pod, proto, port)),
        };
        peer_ok && port_ok
    }

    /// Only called on valid peers.
    fn peer_matches(
        &self,
        peer: &NetworkPolicyPeer,
        policy_namespace: &str,
        remote: IpAddr,
    ) -> bool {
        if let Some(block) = &peer.ip_block {
            return ip_block_matches(block, remote);
        }
        // Selectors only ever match live, non-hostNetwork pods.
        let Some(pod) = self.policy_pod_at(remote) else {
            return false;
        };
        let namespace_ok = match &peer.namespace_selector {
            None => pod.namespace == policy_namespace,
            Some(selector) => selector_matches(selector, self.labels_of_namespace(pod.namespace)),
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(selector) => selector_matches(selector, pod_labels(pod.pod)),
        };
        namespace_ok && pod_ok
    }

    fn labels_of_namespace(&self, namespace: &str) -> &BTreeMap<String, String> {
        // Every live pod's namespace was entered in `new`.
        self.namespace_labels.get(namespace).unwrap_or(&NO_LABELS)
    }
}

// ---------------------------------------------------------------------------------------------
// Objects

fn namespace_of(namespace: &Option<String>) -> &str {
    namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

fn name_label_only(namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())])
}

fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

/// `status.podIPs`, else `status.podIP`; unparsable entries are ignored.
/// DECISION: a non-empty `podIPs` wins even when none of its entries parses.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let texts: Vec<&str> = match &status.pod_ips {
        Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.as_str()).collect(),
        _ => status.pod_ip.iter().map(String::as_str).collect(),
    };
    let mut ips = Vec::new();
    for text in texts {
        if let Ok(ip) = text.parse::<IpAddr>() {
            push_unique(&mut ips, ip);
        }
    }
    ips
}

fn push_unique(ips: &mut Vec<IpAddr>, ip: IpAddr) {
    if !ips.contains(&ip) {
        ips.push(ip);
    }
}

/// `(isolates ingress, isolates egress)`.
fn effective_policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            // Default: Ingress, plus Egress when there is at least one egress rule.
            // DECISION: an invalid egress rule still counts as a rule here.
            let has_egress_rules = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
            (true, has_egress_rules)
        }
        Some(types) => {
            if types.iter().any(|t| t != "Ingress" && t != "Egress") {
                // Fail closed: isolate both directions.
                // DECISION: the rules of both directions then apply.
                return (true, true);
            }
            (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            )
        }
    }
}

fn rules(spec: &NetworkPolicySpec, direction: Direction) -> Vec<Rule<'_>> {
    match direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| Rule {
                peers: r.from.as_deref(),
                ports: r.ports.as_deref(),
            })
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| Rule {
                peers: r.to.as_deref(),
                ports: r.ports.as_deref(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (fail closed)

fn rule_is_valid(rule: &Rule<'_>) -> bool {
    rule.peers.iter().flat_map(|p| p.iter()).all(peer_is_valid)
        && rule
            .ports
            .iter()
            .flat_map(|p| p.iter())
            .all(port_entry_is_valid)
}

fn peer_is_valid(peer: &NetworkPolicyPeer) -> bool {
    let selectors = [&peer.pod_selector, &peer.namespace_selector];
    let selector_count = selectors.iter().filter(|s| s.is_some()).count();
    match &peer.ip_block {
        Some(block) => selector_count == 0 && ip_block_is_valid(block),
        None => {
            selector_count > 0
                && selectors
                    .iter()
                    .all(|s| s.as_ref().is_none_or(selector_is_valid))
        }
    }
}

fn ip_block_is_valid(block: &IPBlock) -> bool {
    let Some(cidr) = Cidr::parse(&block.cidr) else {
        return false;
    };
    block
        .except
        .iter()
        .flatten()
        .all(|text| match Cidr::parse(text) {
            Some(except) => cidr.strictly_contains(&except),
            None => false,
        })
}

fn port_entry_is_valid(entry: &NetworkPolicyPort) -> bool {
    if let Some(protocol) = &entry.protocol {
        if parse_protocol(protocol).is_none() {
            return false;
        }
    }
    match (&entry.port, entry.end_port) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(IntOrString::Int(port)), end_port) => {
            let port_ok = (1..=65535).contains(port);
            let end_ok = end_port.is_none_or(|end| end >= *port && end <= 65535);
            port_ok && end_ok
        }
        (Some(IntOrString::String(name)), end_port) => {
            // A string is always a name: `port: "80"` is an invalid name, not port 80.
            end_port.is_none() && is_valid_port_name(name)
        }
    }
}

/// Exactly `TCP`, `UDP` or `SCTP` (so `protocol: ""` is invalid, not the default).
fn parse_protocol(text: &str) -> Option<Proto> {
    Proto::ALL.into_iter().find(|p| p.k8s_name() == text)
}

/// IANA_SVC_NAME: 1–15 characters of `[a-z0-9-]`, at least one letter, no leading, trailing
/// or doubled `-`.
pub fn is_valid_port_name(name: &str) -> bool {
    let charset_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (1..=15).contains(&name.len())
        && charset_ok
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Operators are known (exact case); `In`/`NotIn` have values; `Exists`/`DoesNotExist` have
/// none (DECISION: `values: []` counts as none, as in apimachinery).
/// DECISION: label key/value syntax is not validated (semantics.md does not list it).
fn selector_is_valid(selector: &LabelSelector) -> bool {
    selector.match_expressions.iter().flatten().all(|req| {
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        match req.operator.as_str() {
            "In" | "NotIn" => has_values,
            "Exists" | "DoesNotExist" => !has_values,
            _ => false,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Matching

/// apimachinery label selector semantics. Only called on valid selectors.
fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|req| {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or(&[]);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Only called on valid blocks.
fn ip_block_matches(block: &IPBlock, ip: IpAddr) -> bool {
    let Some(cidr) = Cidr::parse(&block.cidr) else {
        return false;
    };
    cidr.contains(ip)
        && !block
            .except
            .iter()
            .flatten()
            .filter_map(|e| Cidr::parse(e))
            .any(|except| except.contains(ip))
}

/// Only called on valid entries.
fn port_entry_matches(
    entry: &NetworkPolicyPort,
    named_port_pod: Option<&LivePod<'_>>,
    proto: Proto,
    port: u16,
) -> bool {
    let entry_proto = match &entry.protocol {
        None => Proto::Tcp,
        Some(text) => match parse_protocol(text) {
            Some(p) => p,
            None => return false,
        },
    };
    if entry_proto != proto {
        return false;
    }
    let port = i32::from(port);
    match &entry.port {
        None => true,
        Some(IntOrString::Int(first)) => match entry.end_port {
            None => *first == port,
            Some(last) => (*first..=last).contains(&port),
        },
        Some(IntOrString::String(name)) => {
            named_port_pod.is_some_and(|pod| pod_has_named_port(pod.pod, name, proto, port))
        }
    }
}

/// Does the pod's container port `name`/`proto` have number `port`? Per semantics.md, when
/// several containers declare the same name and protocol, the first declaration in spec order
/// counts. Ports with an invalid name, protocol or number are ignored.
fn pod_has_named_port(pod: &Pod, name: &str, proto: Proto, port: i32) -> bool {
    valid_named_ports(pod)
        .into_iter()
        .find(|(n, p, _)| *n == name && *p == proto)
        .is_some_and(|(_, _, number)| number == port)
}

/// The pod's usable named container ports in spec order: (name, protocol, number).
fn valid_named_ports(pod: &Pod) -> Vec<(&str, Proto, i32)> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            let name = cp.name.as_deref().filter(|n| is_valid_port_name(n))?;
            let proto = match &cp.protocol {
                None => Proto::Tcp,
                Some(text) => parse_protocol(text)?,
            };
            (1..=65535)
                .contains(&cp.container_port)
                .then_some((name, proto, cp.container_port))
        })
        .collect()
}

/// Does a name/protocol pair appear twice among the pod's usable named ports?
fn has_duplicate_named_port(pod: &Pod) -> bool {
    let ports = valid_named_ports(pod);
    ports
        .iter()
        .enumerate()
        .any(|(i, (n, p, _))| ports[..i].iter().any(|(m, q, _)| m == n && q == p))
}

// ---------------------------------------------------------------------------------------------
// CIDRs

/// A parsed CIDR, address masked to the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `address/prefix`, the prefix plain decimal digits within the family's width.
    /// DECISION: host bits are allowed and masked off (Go's ParseCIDR does the same; the API
    /// server only warns). A bare address without `/prefix` is unparsable.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > max_prefix(addr) {
            return None;
        }
        Some(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Same family and same leading `prefix` bits.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// `other` is a strict subset: same family, longer prefix, inside.
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        other.prefix > self.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// Reads a multi-document YAML manifest of Namespaces, Pods and NetworkPolicies (the format
/// `gen::to_yaml` writes). Other kinds are an error.
pub fn world_from_yaml(text: &str) -> Result<World, String> {
    use serde::Deserialize;
    let mut world = World::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {index}: {e}"))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| format!("document {index}: no kind"))?
            .to_string();
        let err = |e: serde_yaml::Error| format!("document {index} ({kind}): {e}");
        match kind.as_str() {
            "Namespace" => world
                .namespaces
                .push(serde_yaml::from_value(value).map_err(err)?),
            "Pod" => world.pods.push(serde_yaml::from_value(value).map_err(err)?),
            "NetworkPolicy" => world
                .policies
                .push(serde_yaml::from_value(value).map_err(err)?),
            other => return Err(format!("document {index}: unexpected kind {other}")),
        }
    }
    Ok(world)
}

// ---------------------------------------------------------------------------------------------
// Introspection for tests

/// Is every field of the policy valid (spec.podSelector, policyTypes and every rule)?
pub fn policy_is_valid(policy: &NetworkPolicy) -> bool {
    let Some(spec) = policy.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec.pod_selector.as_ref().is_none_or(selector_is_valid);
    let types_ok = spec
        .policy_types
        .iter()
        .flatten()
        .all(|t| t == "Ingress" || t == "Egress");
    let rules_ok = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .all(|d| rules(spec, d).iter().all(rule_is_valid));
    selector_ok && types_ok && rules_ok
}

/// Does the pod have a bad field semantics.md says is reported (an unparsable pod IP, a
/// container port with an invalid name or protocol) where it matters?
/// DECISION: only pods that are not finished count, and container ports only when named and
/// on pods that are live and not hostNetwork (nobody looks them up anywhere else).
pub fn pod_has_reportable_bad_field(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return false;
    }
    let texts: Vec<&str> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.as_str()).collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .collect(),
    };
    let bad_ip = texts.iter().any(|t| t.parse::<IpAddr>().is_err());
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let live = !pod_ips(pod).is_empty();
    let bad_port = live
        && !host_network
        && spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .any(|cp| {
                // An unnamed port is never looked up, whatever its protocol.
                let Some(name) = cp.name.as_deref() else {
                    return false;
                };
                let proto_bad = cp
                    .protocol
                    .as_deref()
                    .is_some_and(|p| parse_protocol(p).is_none());
                !is_valid_port_name(name) || proto_bad
            });
    bad_ip || bad_port || (live && !host_network && has_duplicate_named_port(pod))
}

impl Oracle<'_> {
    /// Does the policy have a bad field that changes enforcement: it selects at least one
    /// pod, and the bad field is its podSelector, its policyTypes, or a rule of a direction
    /// it isolates?
    /// DECISION (what must be reported): bad rules of a direction the policy does not
    /// isolate, and bad policies selecting no pod, change nothing; reporting them is allowed
    /// but not required.
    pub fn policy_has_bad_field_that_matters(&self, policy: &NetworkPolicy) -> bool {
        let selects_some_pod = self
            .live_pods
            .iter()
            .any(|pod| self.policy_selects(policy, pod));
        if !selects_some_pod {
            return false;
        }
        let spec = policy.spec.as_ref().unwrap_or(&self.empty_spec);
        let selector_bad = spec
            .pod_selector
            .as_ref()
            .is_some_and(|s| !selector_is_valid(s));
        let types_bad = spec
            .policy_types
            .iter()
            .flatten()
            .any(|t| t != "Ingress" && t != "Egress");
        let (ingress, egress) = effective_policy_types(spec);
        let rule_bad = |direction, isolated| {
            isolated && rules(spec, direction).iter().any(|r| !rule_is_valid(r))
        };
        selector_bad
            || types_bad
            || rule_bad(Direction::Ingress, ingress)
            || rule_bad(Direction::Egress, egress)
    }
}

/// Any unparsable pod IP or host IP, any container port with an invalid name or protocol, or
/// a name/protocol declared twice.
pub fn pod_has_any_bad_field(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let pod_ip_texts = status.and_then(|s| s.pod_ip.as_deref()).into_iter().chain(
        status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str()),
    );
    let host_ip_texts = status.and_then(|s| s.host_ip.as_deref()).into_iter().chain(
        status
            .and_then(|s| s.host_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|h| h.ip.as_str()),
    );
    let bad_ip = pod_ip_texts
        .chain(host_ip_texts)
        .any(|t| t.parse::<IpAddr>().is_err());
    let bad_port = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .any(|cp| {
            cp.name.as_deref().is_some_and(|n| !is_valid_port_name(n))
                || cp
                    .protocol
                    .as_deref()
                    .is_some_and(|p| parse_protocol(p).is_none())
        });
    bad_ip || bad_port || has_duplicate_named_port(pod)
}
