//! Seeded random clusters for the differential test: namespaces, pods and NetworkPolicies that
//! draw on every field, about one policy in ten with one deliberately invalid field, and the
//! probes to ask about them. Deterministic for a seed; no dependencies beyond k8s-openapi.
//!
//! Addresses: node i (`node-a`, `node-b`, `node-c`) is 192.168.56.10+i and, in IPv6 and
//! dual-stack clusters, fd00:192:168:56::10+i (the pods' `status.hostIP`/`hostIPs`; the v6
//! one is `hostIP` in IPv6-only clusters). Pods get 10.244.<node>.<n> and/or
//! fd00:10:244:<node>::<n>, unique among live pods; finished pods get a fresh address or
//! reuse a live pod's; hostNetwork pods have their node's. Outside addresses: 203.0.113.7,
//! 203.0.113.200, 2001:db8::7, 2001:db8::1:200.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HostIP, Namespace, Pod, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::oracle::{Cidr, World, DEFAULT_NAMESPACE, NAMESPACE_NAME_LABEL};
use super::Proto;

/// `(source, destination, protocol, destination port)`.
pub type Probe = (IpAddr, IpAddr, Proto, u16);

#[derive(Clone, Debug)]
pub struct Generated {
    pub seed: u64,
    pub world: World,
    pub probes: Vec<Probe>,
    /// Node names, `node-a`…; every pod with an IP is bound to one of them.
    pub nodes: Vec<String>,
    /// The deliberately invalid fields, one line each (`Kind namespace/name: what`).
    pub invalid: Vec<String>,
}

/// Ports every probe set asks about; 9999 is never served by a container.
pub const BASE_PORTS: [u16; 5] = [53, 80, 81, 443, 9999];

pub const NODE_NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

// ---------------------------------------------------------------------------------------------
// PRNG

/// splitmix64.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[usize]) -> usize {
        let total: usize = weights.iter().sum();
        let mut roll = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if roll < *w {
                return i;
            }
            roll -= w;
        }
        weights.len() - 1
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

const NAMESPACE_POOL: [&str; 4] = ["default", "alpha", "beta", "gamma"];

/// Pod label keys and values; `""` is a real value. `zone` is never set on a pod.
pub const POD_VOCAB: &[(&str, &[&str])] = &[
    ("app", &["web", "db", "api"]),
    ("tier", &["front", "back"]),
    ("env", &["prod", "dev", ""]),
];
const GHOST_KEY: &str = "zone";

const NAMESPACE_VOCAB: &[(&str, &[&str])] =
    &[("team", &["red", "blue"]), ("env", &["prod", "dev", ""])];

/// Container port templates `(name, number, protocol)`: the same name with different numbers
/// and with different protocols (on different pods).
const CONTAINER_PORTS: &[(Option<&str>, i32, Option<&str>)] = &[
    (Some("http"), 80, None),
    (Some("http"), 8080, None),
    (Some("http"), 81, Some("TCP")),
    (Some("dns"), 53, Some("UDP")),
    (Some("dns"), 53, Some("TCP")),
    (Some("dns"), 5353, Some("SCTP")),
    (Some("metrics"), 9090, None),
    (Some("metrics"), 443, Some("UDP")),
    (Some("web-alt"), 443, None),
    (Some("web-alt"), 8443, Some("SCTP")),
    (None, 80, None),
    (None, 53, Some("UDP")),
];

const POLICY_PORT_NAMES: [&str; 5] = ["http", "dns", "metrics", "web-alt", "nosuch"];
const POLICY_PORT_NUMBERS: [i32; 10] = [53, 80, 81, 443, 8080, 9090, 5353, 9999, 1, 65535];
const POLICY_PORT_RANGES: [(i32, i32); 7] = [
    (80, 443),
    (53, 81),
    (80, 80),
    (1, 65535),
    (444, 9998),
    (81, 8080),
    (5353, 9090),
];

// ---------------------------------------------------------------------------------------------
// Cluster

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Dual,
}

impl Family {
    fn has_v4(self) -> bool {
        self != Family::V6
    }
    fn has_v6(self) -> bool {
        self != Family::V4
    }
}

fn node_v4(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 56, 10 + node as u8))
}

fn node_v6(node: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x192,
        0x168,
        0x56,
        0,
        0,
        0,
        0x10 + node as u16,
    ))
}

fn pod_v4(node: usize, host: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, node as u8, host as u8))
}

fn pod_v6(node: usize, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        node as u16,
        0,
        0,
        0,
        host,
    ))
}

/// What the generator knows while it writes policies.
struct Ctx {
    family: Family,
    node_count: usize,
    namespaces: Vec<String>,
    /// IPs of live, non-hostNetwork pods.
    pod_ips: Vec<IpAddr>,
    invalid: Vec<String>,
}

impl Ctx {
    fn node_ips(&self, node: usize) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        if self.family.has_v4() {
            ips.push(node_v4(node));
        }
        if self.family.has_v6() {
            ips.push(node_v6(node));
        }
        ips
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodKind {
    Running,
    PhaseUnset,
    Unknown,
    HostNetwork,
    PendingNoIp,
    PendingUnscheduled,
    Succeeded,
    Failed,
}

impl PodKind {
    fn is_policy_pod(self) -> bool {
        matches!(
            self,
            PodKind::Running | PodKind::PhaseUnset | PodKind::Unknown
        )
    }
}

/// A random cluster for `seed`.
pub fn cluster(seed: u64) -> Generated {
    let mut rng = Rng::new(seed);
    let family = match rng.below(10) {
        0..=3 => Family::V4,
        4..=5 => Family::V6,
        _ => Family::Dual,
    };
    let node_count = rng.between(2, 3);
    let nodes: Vec<String> = NODE_NAMES[..node_count]
        .iter()
        .map(|n| n.to_string())
        .collect();

    // Namespaces: 2–4 names, some without a Namespace object.
    let mut pool: Vec<&str> = NAMESPACE_POOL.to_vec();
    let mut namespaces = Vec::new();
    for _ in 0..rng.between(2, 4) {
        let i = rng.below(pool.len());
        namespaces.push(pool.remove(i).to_string());
    }
    let mut ctx = Ctx {
        family,
        node_count,
        namespaces,
        pod_ips: Vec::new(),
        invalid: Vec::new(),
    };
    let mut world = World::default();
    for name in &ctx.namespaces {
        if rng.percent(25) {
            continue;
        }
        world.namespaces.push(gen_namespace(&mut rng, name));
    }

    world.pods = gen_pods(&mut rng, &mut ctx, &nodes);

    for index in 0..rng.between(1, 6) {
        let mut policy = gen_policy(&mut rng, &ctx, index);
        if rng.percent(10) {
            let what = inject_invalid(&mut rng, &ctx, &mut policy);
            ctx.invalid.push(format!(
                "NetworkPolicy {}: {what}",
                object_key(&policy.metadata)
            ));
        }
        world.policies.push(policy);
    }

    let probes = gen_probes(&mut rng, &ctx, &world);
    Generated {
        seed,
        world,
        probes,
        nodes,
        invalid: ctx.invalid,
    }
}

fn object_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        meta.name.as_deref().unwrap_or("")
    )
}

fn gen_namespace(rng: &mut Rng, name: &str) -> Namespace {
    let mut labels = BTreeMap::new();
    for (key, values) in NAMESPACE_VOCAB {
        if rng.percent(55) {
            labels.insert(key.to_string(), rng.pick(values).to_string());
        }
    }
    if rng.percent(20) {
        // What the API server would have added anyway.
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: (!labels.is_empty() || rng.percent(50)).then_some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn namespace_field(rng: &mut Rng, namespace: &str) -> Option<String> {
    // Objects in `default` sometimes leave the namespace out.
    if namespace == DEFAULT_NAMESPACE && rng.percent(50) {
        None
    } else {
        Some(namespace.to_string())
    }
}

fn gen_pods(rng: &mut Rng, ctx: &mut Ctx, nodes: &[String]) -> Vec<Pod> {
    let count = rng.between(3, 10);
    let mut kinds: Vec<PodKind> = (0..count)
        .map(|_| {
            const KINDS: [PodKind; 8] = [
                PodKind::Running,
                PodKind::PhaseUnset,
                PodKind::Unknown,
                PodKind::HostNetwork,
                PodKind::PendingNoIp,
                PodKind::PendingUnscheduled,
                PodKind::Succeeded,
                PodKind::Failed,
            ];
            KINDS[rng.weighted(&[55, 4, 3, 10, 6, 4, 6, 12])]
        })
        .collect();
    // At least two pods that policies can see.
    while kinds.iter().filter(|k| k.is_policy_pod()).count() < 2 {
        let i = rng.below(kinds.len());
        kinds[i] = PodKind::Running;
    }

    let mut next_host = vec![2u16; ctx.node_count];
    let mut fresh_ips = |node: usize, rng: &mut Rng| -> Vec<IpAddr> {
        let host = next_host[node];
        next_host[node] += 1;
        match ctx.family {
            Family::V4 => vec![pod_v4(node, host)],
            Family::V6 => vec![pod_v6(node, host)],
            Family::Dual if rng.percent(20) => vec![pod_v6(node, host), pod_v4(node, host)],
            Family::Dual => vec![pod_v4(node, host), pod_v6(node, host)],
        }
    };

    // Pass 1: nodes and IPs of the pods that are not finished.
    let mut placed: Vec<(Option<usize>, Vec<IpAddr>)> = Vec::new();
    let mut live_owners: Vec<(usize, Vec<IpAddr>)> = Vec::new();
    for kind in &kinds {
        let node = rng.below(ctx.node_count);
        let entry = match kind {
            PodKind::Running | PodKind::PhaseUnset | PodKind::Unknown => {
                let ips = fresh_ips(node, rng);
                live_owners.push((node, ips.clone()));
                (Some(node), ips)
            }
            PodKind::HostNetwork => (Some(node), ctx.node_ips(node)),
            PodKind::PendingNoIp => (Some(node), Vec::new()),
            PodKind::PendingUnscheduled => (None, Vec::new()),
            PodKind::Succeeded | PodKind::Failed => (Some(node), Vec::new()),
        };
        placed.push(entry);
    }
    // Pass 2: finished pods get a fresh IP or reuse the IP of a live pod on the same node.
    for (kind, entry) in kinds.iter().zip(placed.iter_mut()) {
        if matches!(kind, PodKind::Succeeded | PodKind::Failed) {
            if !live_owners.is_empty() && rng.percent(50) {
                let (node, ips) = rng.pick(&live_owners).clone();
                *entry = (Some(node), ips);
            } else if let Some(node) = entry.0 {
                entry.1 = fresh_ips(node, rng);
            }
        }
    }
    for (_, ips) in &live_owners {
        ctx.pod_ips.extend(ips.iter().copied());
    }

    let mut pods = Vec::new();
    for (i, (kind, (node, ips))) in kinds.iter().zip(placed).enumerate() {
        let namespace = rng.pick(&ctx.namespaces).clone();
        let name = format!("pod-{i}");
        let mut labels = BTreeMap::new();
        for (key, values) in POD_VOCAB {
            if rng.percent(60) {
                labels.insert(key.to_string(), rng.pick(values).to_string());
            }
        }
        let containers = gen_containers(rng, ctx, &namespace, &name);

        let phase = match kind {
            PodKind::Running | PodKind::HostNetwork => Some("Running"),
            PodKind::PhaseUnset => None,
            PodKind::Unknown => Some("Unknown"),
            PodKind::PendingNoIp | PodKind::PendingUnscheduled => Some("Pending"),
            PodKind::Succeeded => Some("Succeeded"),
            PodKind::Failed => Some("Failed"),
        };
        let mut status = PodStatus {
            phase: phase.map(str::to_string),
            ..PodStatus::default()
        };
        if let Some(node) = node {
            let host_ips = ctx.node_ips(node);
            status.host_ip = Some(host_ips[0].to_string());
            if rng.percent(90) {
                status.host_ips = Some(
                    host_ips
                        .iter()
                        .map(|ip| HostIP { ip: ip.to_string() })
                        .collect(),
                );
            }
        }
        if let Some(first) = ips.first() {
            status.pod_ip = Some(first.to_string());
            if ips.len() > 1 || rng.percent(85) {
                status.pod_ips = Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
            }
            if kind.is_policy_pod() && rng.percent(3) {
                let garbage = rng
                    .pick(&["10.244.0.300", "fd00::zz", "not-an-ip"])
                    .to_string();
                ctx.invalid.push(format!(
                    "Pod {namespace}/{name}: unparsable status.podIPs entry {garbage:?}"
                ));
                status
                    .pod_ips
                    .get_or_insert_with(|| {
                        vec![PodIP {
                            ip: first.to_string(),
                        }]
                    })
                    .push(PodIP { ip: garbage });
            }
        }

        pods.push(Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: namespace_field(rng, &namespace),
                labels: (!labels.is_empty()).then_some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers,
                node_name: node.map(|n| nodes[n].clone()),
                host_network: match kind {
                    PodKind::HostNetwork => Some(true),
                    _ if rng.percent(10) => Some(false),
                    _ => None,
                },
                ..PodSpec::default()
            }),
            status: Some(status),
        });
    }
    pods
}

fn gen_containers(rng: &mut Rng, ctx: &mut Ctx, namespace: &str, pod: &str) -> Vec<Container> {
    let mut containers = Vec::new();
    let mut pod_names: Vec<&str> = Vec::new();
    for c in 0..rng.between(1, 2) {
        let mut ports: Vec<ContainerPort> = Vec::new();
        for _ in 0..rng.between(0, 3) {
            let (name, number, protocol) = *rng.pick(CONTAINER_PORTS);
            // Port names are unique within the pod by the API reference, but the API server
            // checks only within a container. Now and then a later container repeats a name
            // (semantics.md: the first declaration of a name/protocol wins, and it is
            // reported). The same name occurs with other numbers and protocols on other pods.
            if let Some(name) = name {
                if pod_names.contains(&name) {
                    let in_this_container = ports.iter().any(|p| p.name.as_deref() == Some(name));
                    if in_this_container || !rng.percent(15) {
                        continue;
                    }
                    ctx.invalid
                        .push(format!("Pod {namespace}/{pod}: port name {name} repeated"));
                } else {
                    pod_names.push(name);
                }
            }
            ports.push(ContainerPort {
                name: name.map(str::to_string),
                container_port: number,
                protocol: protocol.map(str::to_string),
                ..ContainerPort::default()
            });
        }
        if !ports.is_empty() && rng.percent(3) {
            // Ignored for named-port lookups.
            let i = rng.below(ports.len());
            let port = &mut ports[i];
            let what = if rng.percent(50) {
                port.name = Some(rng.pick(&["HTTP", "-http", "dns--x"]).to_string());
                format!("invalid container port name {:?}", port.name)
            } else {
                port.protocol = Some(rng.pick(&["tcp", "ICMP"]).to_string());
                format!("invalid container port protocol {:?}", port.protocol)
            };
            ctx.invalid.push(format!("Pod {namespace}/{pod}: {what}"));
        }
        containers.push(Container {
            name: format!("c{c}"),
            ports: (!ports.is_empty() || rng.percent(30)).then_some(ports),
            ..Container::default()
        });
    }
    containers
}

// ---------------------------------------------------------------------------------------------
// Policies

fn gen_policy(rng: &mut Rng, ctx: &Ctx, index: usize) -> NetworkPolicy {
    let namespace = rng.pick(&ctx.namespaces).clone();
    let metadata = ObjectMeta {
        name: Some(format!("np-{index}")),
        namespace: namespace_field(rng, &namespace),
        ..ObjectMeta::default()
    };
    if rng.percent(2) {
        // No spec at all: `podSelector: {}`, deny all ingress.
        return NetworkPolicy {
            metadata,
            spec: None,
        };
    }
    let pod_selector = match rng.below(20) {
        0..=1 => None,
        2..=6 => Some(LabelSelector::default()),
        _ => Some(gen_pod_selector(rng)),
    };
    let policy_types = match rng.weighted(&[30, 5, 20, 20, 20, 5]) {
        0 => None,
        1 => Some(vec![]),
        2 => Some(vec!["Ingress".to_string()]),
        3 => Some(vec!["Egress".to_string()]),
        4 => Some(vec!["Ingress".to_string(), "Egress".to_string()]),
        _ => Some(vec!["Egress".to_string(), "Ingress".to_string()]),
    };
    let ingress = gen_rule_list(rng, ctx).map(|rules| {
        rules
            .into_iter()
            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
            .collect()
    });
    let egress = gen_rule_list(rng, ctx).map(|rules| {
        rules
            .into_iter()
            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
            .collect()
    });
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector,
            policy_types,
            ingress,
            egress,
        }),
    }
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

/// Absent, `[]`, `[{}]` or 1–3 random rules.
fn gen_rule_list(rng: &mut Rng, ctx: &Ctx) -> Option<Vec<RuleParts>> {
    match rng.weighted(&[20, 12, 10, 58]) {
        0 => None,
        1 => Some(vec![]),
        2 => Some(vec![(None, None)]),
        _ => Some((0..rng.between(1, 3)).map(|_| gen_rule(rng, ctx)).collect()),
    }
}

fn gen_rule(rng: &mut Rng, ctx: &Ctx) -> RuleParts {
    let peers = match rng.weighted(&[25, 10, 65]) {
        0 => None,
        1 => Some(vec![]),
        _ => Some((0..rng.between(1, 3)).map(|_| gen_peer(rng, ctx)).collect()),
    };
    let ports = match rng.weighted(&[30, 10, 6, 54]) {
        0 => None,
        1 => Some(vec![]),
        2 => Some(vec![NetworkPolicyPort::default()]),
        _ => Some((0..rng.between(1, 3)).map(|_| gen_port(rng)).collect()),
    };
    (peers, ports)
}

fn gen_peer(rng: &mut Rng, ctx: &Ctx) -> NetworkPolicyPeer {
    match rng.weighted(&[28, 22, 22, 28]) {
        0 => NetworkPolicyPeer {
            pod_selector: Some(gen_pod_selector(rng)),
            ..NetworkPolicyPeer::default()
        },
        1 => NetworkPolicyPeer {
            namespace_selector: Some(gen_namespace_selector(rng, ctx)),
            ..NetworkPolicyPeer::default()
        },
        2 => NetworkPolicyPeer {
            pod_selector: Some(gen_pod_selector(rng)),
            namespace_selector: Some(gen_namespace_selector(rng, ctx)),
            ..NetworkPolicyPeer::default()
        },
        _ => NetworkPolicyPeer {
            ip_block: Some(gen_ip_block(rng, ctx)),
            ..NetworkPolicyPeer::default()
        },
    }
}

fn gen_pod_selector(rng: &mut Rng) -> LabelSelector {
    let vocab: Vec<(String, Vec<String>)> = POD_VOCAB
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect();
    gen_selector(rng, &vocab)
}

fn gen_namespace_selector(rng: &mut Rng, ctx: &Ctx) -> LabelSelector {
    let mut vocab: Vec<(String, Vec<String>)> = NAMESPACE_VOCAB
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect();
    let mut names = ctx.namespaces.clone();
    names.push("nowhere".to_string());
    vocab.push((NAMESPACE_NAME_LABEL.to_string(), names));
    gen_selector(rng, &vocab)
}

/// `{}`, matchLabels, matchExpressions with every operator, or both.
fn gen_selector(rng: &mut Rng, vocab: &[(String, Vec<String>)]) -> LabelSelector {
    let (with_labels, with_expressions) = match rng.below(10) {
        0..=1 => (false, false),
        2..=4 => (true, false),
        5..=7 => (false, true),
        _ => (true, true),
    };
    let mut selector = LabelSelector::default();
    if with_labels {
        let mut labels = BTreeMap::new();
        for _ in 0..rng.between(1, 2) {
            let (key, values) = rng.pick(vocab);
            labels.insert(key.clone(), rng.pick(values).clone());
        }
        selector.match_labels = Some(labels);
    }
    if with_expressions {
        let mut expressions = Vec::new();
        for _ in 0..rng.between(1, 2) {
            let (key, values) = if rng.percent(15) {
                (GHOST_KEY.to_string(), vec!["a".to_string()])
            } else {
                rng.pick(vocab).clone()
            };
            let operator = *rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
            let values = match operator {
                "In" | "NotIn" => {
                    let mut chosen: Vec<String> = Vec::new();
                    for _ in 0..rng.between(1, 2) {
                        let v = rng.pick(&values).clone();
                        if !chosen.contains(&v) {
                            chosen.push(v);
                        }
                    }
                    if rng.percent(20) {
                        chosen.push("unused".to_string());
                    }
                    Some(chosen)
                }
                // `values: []` is as good as no values.
                _ if rng.percent(15) => Some(vec![]),
                _ => None,
            };
            expressions.push(LabelSelectorRequirement {
                key,
                operator: operator.to_string(),
                values,
            });
        }
        selector.match_expressions = Some(expressions);
    }
    selector
}

fn wants_v6(rng: &mut Rng, family: Family) -> bool {
    match family {
        Family::V4 => rng.percent(12),
        Family::V6 => !rng.percent(12),
        Family::Dual => rng.percent(50),
    }
}

/// A live pod IP of the family, if there is one.
fn some_pod_ip(rng: &mut Rng, ctx: &Ctx, v6: bool) -> Option<IpAddr> {
    let ips: Vec<IpAddr> = ctx
        .pod_ips
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv6() == v6)
        .collect();
    (!ips.is_empty()).then(|| *rng.pick(&ips))
}

fn cidr_candidates(rng: &mut Rng, ctx: &Ctx, v6: bool) -> Vec<String> {
    let node = rng.below(ctx.node_count);
    let mut out = if v6 {
        vec![
            "fd00:10:244::/48".to_string(),
            format!("fd00:10:244:{node}::/64"),
            "::/0".to_string(),
            "fd00:192:168:56::/64".to_string(),
            format!("{}/128", node_v6(node)),
            "2001:db8::/32".to_string(),
            "fd00::/8".to_string(),
        ]
    } else {
        vec![
            "10.244.0.0/16".to_string(),
            format!("10.244.{node}.0/24"),
            format!("10.244.{node}.0/25"),
            "0.0.0.0/0".to_string(),
            "192.168.56.0/24".to_string(),
            format!("{}/32", node_v4(node)),
            "203.0.113.0/24".to_string(),
            "10.0.0.0/8".to_string(),
        ]
    };
    if let Some(ip) = some_pod_ip(rng, ctx, v6) {
        out.push(format!("{ip}/{}", if v6 { 128 } else { 32 }));
    }
    out
}

fn except_candidates(rng: &mut Rng, ctx: &Ctx, v6: bool) -> Vec<String> {
    let node = rng.below(ctx.node_count);
    let mut out = if v6 {
        vec![
            format!("fd00:10:244:{node}::/64"),
            format!("fd00:10:244:{node}::/120"),
            format!("{}/128", node_v6(node)),
            "fd00:192:168:56::/64".to_string(),
            "2001:db8::/48".to_string(),
            "fd00:10:244::/48".to_string(),
            "2001:db8::7/128".to_string(),
        ]
    } else {
        vec![
            format!("10.244.{node}.0/24"),
            format!("10.244.{node}.0/25"),
            format!("{}/32", node_v4(node)),
            "192.168.56.0/24".to_string(),
            "203.0.113.0/25".to_string(),
            "10.244.0.0/16".to_string(),
            "203.0.113.7/32".to_string(),
        ]
    };
    for _ in 0..2 {
        if let Some(ip) = some_pod_ip(rng, ctx, v6) {
            out.push(format!("{ip}/{}", if v6 { 128 } else { 32 }));
        }
    }
    out
}

/// A valid ipBlock: a cidr and 0–2 excepts that are strict subsets of it.
fn gen_ip_block(rng: &mut Rng, ctx: &Ctx) -> IPBlock {
    let v6 = wants_v6(rng, ctx.family);
    let cidr = if !v6 && rng.percent(3) {
        // Host bits set: parsable, means 10.244.0.0/16.
        "10.244.1.77/16".to_string()
    } else {
        let candidates = cidr_candidates(rng, ctx, v6);
        rng.pick(&candidates).clone()
    };
    let parsed = Cidr::parse(&cidr).expect("generated cidr candidates parse");
    let wanted = rng.weighted(&[45, 35, 20]);
    let candidates: Vec<String> = except_candidates(rng, ctx, v6)
        .into_iter()
        .filter(|e| Cidr::parse(e).is_some_and(|e| parsed.strictly_contains(&e)))
        .collect();
    let mut except: Vec<String> = Vec::new();
    for _ in 0..wanted {
        if candidates.is_empty() {
            break;
        }
        let e = rng.pick(&candidates).clone();
        if !except.contains(&e) {
            except.push(e);
        }
    }
    IPBlock {
        cidr,
        except: if except.is_empty() {
            match rng.below(4) {
                0 => Some(vec![]),
                _ => None,
            }
        } else {
            Some(except)
        },
    }
}

fn gen_port(rng: &mut Rng) -> NetworkPolicyPort {
    let protocol = match rng.weighted(&[35, 25, 20, 20]) {
        0 => None,
        1 => Some("TCP".to_string()),
        2 => Some("UDP".to_string()),
        _ => Some("SCTP".to_string()),
    };
    let (port, end_port) = match rng.weighted(&[12, 45, 28, 15]) {
        0 => (None, None),
        1 => (
            Some(IntOrString::Int(*rng.pick(&POLICY_PORT_NUMBERS))),
            None,
        ),
        2 => (
            Some(IntOrString::String(
                rng.pick(&POLICY_PORT_NAMES).to_string(),
            )),
            None,
        ),
        _ => {
            let (first, last) = *rng.pick(&POLICY_PORT_RANGES);
            (Some(IntOrString::Int(first)), Some(last))
        }
    };
    NetworkPolicyPort {
        protocol,
        port,
        end_port,
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid fields (fail closed)

const INVALID_KIND_COUNT: usize = 18;

/// Puts exactly one invalid field into `policy`; returns what it did.
fn inject_invalid(rng: &mut Rng, ctx: &Ctx, policy: &mut NetworkPolicy) -> String {
    let kind = rng.below(INVALID_KIND_COUNT);
    let spec = policy.spec.get_or_insert_with(NetworkPolicySpec::default);
    match kind {
        16 => {
            let selector = bad_selector(rng);
            let what = format!("spec.podSelector invalid: {:?}", selector.match_expressions);
            spec.pod_selector = Some(selector);
            return what;
        }
        17 => {
            let bogus = rng.pick(&["ingress", "Both", "", "EGRESS"]).to_string();
            let types = spec.policy_types.get_or_insert_with(Vec::new);
            let at = rng.between(0, types.len());
            types.insert(at, bogus.clone());
            return format!("spec.policyTypes has {bogus:?}");
        }
        _ => {}
    }

    // Everything else breaks one rule.
    let ingress = rng.percent(50);
    let (peers, ports, direction) = if ingress {
        let rules = spec.ingress.get_or_insert_with(Vec::new);
        if rules.is_empty() {
            rules.push(NetworkPolicyIngressRule::default());
        }
        let i = rng.below(rules.len());
        let rule = &mut rules[i];
        (&mut rule.from, &mut rule.ports, format!("ingress[{i}]"))
    } else {
        let rules = spec.egress.get_or_insert_with(Vec::new);
        if rules.is_empty() {
            rules.push(NetworkPolicyEgressRule::default());
        }
        let i = rng.below(rules.len());
        let rule = &mut rules[i];
        (&mut rule.to, &mut rule.ports, format!("egress[{i}]"))
    };

    let v6 = wants_v6(rng, ctx.family);
    let candidates = cidr_candidates(rng, ctx, v6);
    let good_cidr = rng.pick(&candidates).clone();
    let bad_peer = |peer: NetworkPolicyPeer, what: String| (Some(peer), None, what);
    let bad_port = |port: NetworkPolicyPort, what: String| (None, Some(port), what);
    let block = |cidr: String, except: Option<Vec<String>>| NetworkPolicyPeer {
        ip_block: Some(IPBlock { cidr, except }),
        ..NetworkPolicyPeer::default()
    };
    let protocol = || Some("TCP".to_string());

    let (peer, port, what): (Option<NetworkPolicyPeer>, Option<NetworkPolicyPort>, String) =
        match kind {
            0 => {
                let mut peer = block(good_cidr, None);
                if rng.percent(50) {
                    peer.pod_selector = Some(gen_pod_selector(rng));
                } else {
                    peer.namespace_selector = Some(gen_namespace_selector(rng, ctx));
                }
                bad_peer(peer, "peer with ipBlock and a selector".to_string())
            }
            1 => bad_peer(
                NetworkPolicyPeer::default(),
                "peer with no field".to_string(),
            ),
            2 => {
                let cidr = rng
                    .pick(&[
                        "10.244.0.0/33",
                        "fd00::/129",
                        "10.244.0.0",
                        "",
                        "10.244.0.0/-1",
                        "banana/8",
                        "10.244.0.256/24",
                        "10.244.0.0/+8",
                    ])
                    .to_string();
                let what = format!("unparsable cidr {cidr:?}");
                bad_peer(block(cidr, None), what)
            }
            3 => {
                let except = rng
                    .pick(&["10.244.1.0/40", "garbage", "fd00::/200", ""])
                    .to_string();
                let what = format!("unparsable except {except:?}");
                bad_peer(block(good_cidr, Some(vec![except])), what)
            }
            4 => {
                let (cidr, except) = if v6 {
                    (good_cidr, "10.244.0.0/24".to_string())
                } else {
                    (good_cidr, "fd00:10:244::/64".to_string())
                };
                let what = format!("except {except:?} of the other family than {cidr:?}");
                bad_peer(block(cidr, Some(vec![except])), what)
            }
            5 => {
                let (cidr, except) = *rng.pick(&[
                    ("10.244.0.0/16", "10.244.0.0/16"),
                    ("10.244.0.0/16", "10.0.0.0/8"),
                    ("10.244.0.0/16", "192.168.56.0/24"),
                    ("10.244.1.0/24", "10.244.0.0/24"),
                    ("0.0.0.0/0", "0.0.0.0/0"),
                    ("fd00:10:244::/48", "fd00:10:244::/48"),
                    ("fd00:10:244:1::/64", "fd00:10:244::/48"),
                    ("::/0", "::/0"),
                ]);
                // A valid except next to the bad one must not rescue the rule.
                let mut excepts = vec![except.to_string()];
                if rng.percent(30) && cidr == "10.244.0.0/16" {
                    excepts.insert(0, "10.244.2.0/24".to_string());
                }
                let what = format!("except {except:?} not a strict subset of {cidr:?}");
                bad_peer(block(cidr.to_string(), Some(excepts)), what)
            }
            6 => {
                let proto = rng.pick(&["tcp", "ICMP", "", "Tcp", "udp"]).to_string();
                let what = format!("protocol {proto:?}");
                let port = NetworkPolicyPort {
                    protocol: Some(proto),
                    port: Some(IntOrString::Int(80)),
                    end_port: None,
                };
                bad_port(port, what)
            }
            7 => {
                let number = *rng.pick(&[0, 65536, -80, 70000]);
                let port = NetworkPolicyPort {
                    protocol: protocol(),
                    port: Some(IntOrString::Int(number)),
                    end_port: None,
                };
                bad_port(port, format!("port {number} out of range"))
            }
            8 => {
                let name = rng
                    .pick(&[
                        "HTTP",
                        "80",
                        "-web",
                        "web-",
                        "we--b",
                        "sixteen-chars-xx",
                        "",
                        "http_alt",
                    ])
                    .to_string();
                let what = format!("invalid named port {name:?}");
                let port = NetworkPolicyPort {
                    protocol: None,
                    port: Some(IntOrString::String(name)),
                    end_port: None,
                };
                bad_port(port, what)
            }
            9 => {
                let port = NetworkPolicyPort {
                    protocol: protocol(),
                    port: None,
                    end_port: Some(443),
                };
                bad_port(port, "endPort without port".to_string())
            }
            10 => {
                let port = NetworkPolicyPort {
                    protocol: None,
                    port: Some(IntOrString::String("http".to_string())),
                    end_port: Some(8080),
                };
                bad_port(port, "endPort with a named port".to_string())
            }
            11 => {
                let port = NetworkPolicyPort {
                    protocol: protocol(),
                    port: Some(IntOrString::Int(443)),
                    end_port: Some(80),
                };
                bad_port(port, "endPort below port".to_string())
            }
            12 => {
                let port = NetworkPolicyPort {
                    protocol: protocol(),
                    port: Some(IntOrString::Int(80)),
                    end_port: Some(65536),
                };
                bad_port(port, "endPort above 65535".to_string())
            }
            13..=15 => {
                let requirement = match kind {
                    13 => LabelSelectorRequirement {
                        key: "app".to_string(),
                        operator: rng.pick(&["in", "Equals", "exists", ""]).to_string(),
                        values: Some(vec!["web".to_string()]),
                    },
                    14 => LabelSelectorRequirement {
                        key: "app".to_string(),
                        operator: rng.pick(&["In", "NotIn"]).to_string(),
                        values: if rng.percent(50) { None } else { Some(vec![]) },
                    },
                    _ => LabelSelectorRequirement {
                        key: "app".to_string(),
                        operator: rng.pick(&["Exists", "DoesNotExist"]).to_string(),
                        values: Some(vec!["web".to_string()]),
                    },
                };
                let what = format!("peer selector requirement {requirement:?}");
                let mut selector = if rng.percent(50) {
                    gen_pod_selector(rng)
                } else {
                    LabelSelector::default()
                };
                selector
                    .match_expressions
                    .get_or_insert_with(Vec::new)
                    .push(requirement);
                let peer = match rng.below(3) {
                    0 => NetworkPolicyPeer {
                        pod_selector: Some(selector),
                        ..NetworkPolicyPeer::default()
                    },
                    1 => NetworkPolicyPeer {
                        namespace_selector: Some(selector),
                        ..NetworkPolicyPeer::default()
                    },
                    _ => NetworkPolicyPeer {
                        pod_selector: Some(gen_pod_selector(rng)),
                        namespace_selector: Some(selector),
                        ..NetworkPolicyPeer::default()
                    },
                };
                bad_peer(peer, what)
            }
            _ => unreachable!("invalid kind {kind} handled above"),
        };
    if let Some(peer) = peer {
        let list = peers.get_or_insert_with(Vec::new);
        let at = rng.between(0, list.len());
        list.insert(at, peer);
    }
    if let Some(port) = port {
        let list = ports.get_or_insert_with(Vec::new);
        let at = rng.between(0, list.len());
        list.insert(at, port);
    }
    format!("{direction}: {what}")
}

/// A selector with one broken requirement.
fn bad_selector(rng: &mut Rng) -> LabelSelector {
    let requirement = match rng.below(3) {
        0 => LabelSelectorRequirement {
            key: "app".to_string(),
            operator: "Matches".to_string(),
            values: Some(vec!["web".to_string()]),
        },
        1 => LabelSelectorRequirement {
            key: "app".to_string(),
            operator: "In".to_string(),
            values: None,
        },
        _ => LabelSelectorRequirement {
            key: "tier".to_string(),
            operator: "DoesNotExist".to_string(),
            values: Some(vec!["front".to_string()]),
        },
    };
    let mut selector = gen_pod_selector(rng);
    selector
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(requirement);
    selector
}

// ---------------------------------------------------------------------------------------------
// Probes

fn gen_probes(rng: &mut Rng, ctx: &Ctx, world: &World) -> Vec<Probe> {
    // Addresses: live pod IPs; node IPs, outside addresses and IPs only finished pods hold.
    let pod_ips = ctx.pod_ips.clone();
    let mut others: Vec<IpAddr> = Vec::new();
    for node in 0..ctx.node_count {
        others.extend(ctx.node_ips(node));
    }
    if ctx.family.has_v4() {
        others.push("203.0.113.7".parse().expect("literal"));
        others.push("203.0.113.200".parse().expect("literal"));
    }
    if ctx.family.has_v6() {
        others.push("2001:db8::7".parse().expect("literal"));
        others.push("2001:db8::1:200".parse().expect("literal"));
    }
    for pod in &world.pods {
        let status = pod.status.as_ref();
        for ip in status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
        {
            if let Ok(ip) = ip.ip.parse::<IpAddr>() {
                if !pod_ips.contains(&ip) && !others.contains(&ip) {
                    others.push(ip);
                }
            }
        }
    }

    let mut pairs: Vec<(IpAddr, IpAddr)> = Vec::new();
    let same_family = |a: &IpAddr, b: &IpAddr| a.is_ipv4() == b.is_ipv4();
    for a in &pod_ips {
        for b in pod_ips.iter().filter(|b| same_family(a, b)) {
            pairs.push((*a, *b));
        }
        for o in others.iter().filter(|o| same_family(a, o)) {
            pairs.push((*a, *o));
            pairs.push((*o, *a));
        }
    }
    for _ in 0..2 {
        let a = *rng.pick(&others);
        let b = *rng.pick(&others);
        if same_family(&a, &b) {
            pairs.push((a, b));
        }
    }

    let mut ports: Vec<u16> = BASE_PORTS.to_vec();
    for pod in &world.pods {
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for port in container.ports.iter().flatten() {
                if let Ok(number) = u16::try_from(port.container_port) {
                    if number > 0 && !ports.contains(&number) {
                        ports.push(number);
                    }
                }
            }
        }
    }
    ports.sort_unstable();

    let mut probes = Vec::with_capacity(pairs.len() * ports.len() * 3);
    for (src, dst) in pairs {
        for port in &ports {
            for proto in Proto::ALL {
                probes.push((src, dst, proto, *port));
            }
        }
    }
    probes
}

// ---------------------------------------------------------------------------------------------
// Shrinking

/// Greedily removes policies, rules, peers, ports, selector terms, pods, namespaces and probes
/// while `still_fails` holds. `g` itself must fail.
pub fn shrink(g: &Generated, still_fails: impl Fn(&Generated) -> bool) -> Generated {
    let mut best = g.clone();

    // Probes first, by halves, then one at a time: everything after is cheaper.
    while best.probes.len() > 1 {
        let half = best.probes.len() / 2;
        let mut first = best.clone();
        first.probes.truncate(half);
        let mut second = best.clone();
        second.probes.drain(..half);
        if still_fails(&first) {
            best = first;
        } else if still_fails(&second) {
            best = second;
        } else {
            break;
        }
    }
    let mut i = 0;
    while best.probes.len() > 1 && i < best.probes.len() {
        let mut candidate = best.clone();
        candidate.probes.remove(i);
        if still_fails(&candidate) {
            best = candidate;
        } else {
            i += 1;
        }
    }

    // Then the world, one edit at a time, until nothing can go.
    let mut index = 0;
    loop {
        let candidates = reductions(&best);
        let Some(candidate) = candidates.get(index) else {
            break;
        };
        if still_fails(candidate) {
            best = candidate.clone();
        } else {
            index += 1;
        }
    }
    best
}

/// Every world one step smaller than `g`.
fn reductions(g: &Generated) -> Vec<Generated> {
    let mut out = Vec::new();
    let with = |edit: &dyn Fn(&mut World)| {
        let mut c = g.clone();
        edit(&mut c.world);
        c
    };
    let world = &g.world;

    for p in 0..world.policies.len() {
        out.push(with(&|w| {
            w.policies.remove(p);
        }));
    }
    for (p, policy) in world.policies.iter().enumerate() {
        let Some(spec) = &policy.spec else { continue };
        if spec.policy_types.is_some() {
            out.push(with(&|w| spec_mut(w, p).policy_types = None));
        }
        if spec
            .pod_selector
            .as_ref()
            .is_some_and(|s| *s != LabelSelector::default())
        {
            out.push(with(&|w| {
                spec_mut(w, p).pod_selector = Some(LabelSelector::default())
            }));
        }
        if let Some(selector) = &spec.pod_selector {
            for edit in selector_reductions(selector) {
                out.push(with(&|w| {
                    edit(spec_mut(w, p).pod_selector.as_mut().expect("exists"))
                }));
            }
        }
        for (r, rule) in spec.ingress.iter().flatten().enumerate() {
            out.push(with(&|w| {
                spec_mut(w, p).ingress.as_mut().expect("exists").remove(r);
            }));
            let at = RuleAt {
                policy: p,
                ingress: true,
                rule: r,
            };
            rule_reductions(&mut out, g, at, &rule.from, &rule.ports);
        }
        for (r, rule) in spec.egress.iter().flatten().enumerate() {
            out.push(with(&|w| {
                spec_mut(w, p).egress.as_mut().expect("exists").remove(r);
            }));
            let at = RuleAt {
                policy: p,
                ingress: false,
                rule: r,
            };
            rule_reductions(&mut out, g, at, &rule.to, &rule.ports);
        }
    }
    for p in 0..world.pods.len() {
        out.push(with(&|w| {
            w.pods.remove(p);
        }));
    }
    for (p, pod) in world.pods.iter().enumerate() {
        if pod.metadata.labels.as_ref().is_some_and(|l| l.is_empty()) {
            out.push(with(&|w| w.pods[p].metadata.labels = None));
        }
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(false) {
            out.push(with(&|w| {
                if let Some(spec) = w.pods[p].spec.as_mut() {
                    spec.host_network = None;
                }
            }));
        }
        for key in pod.metadata.labels.iter().flatten().map(|(k, _)| k.clone()) {
            out.push(with(&|w| {
                if let Some(labels) = w.pods[p].metadata.labels.as_mut() {
                    labels.remove(&key);
                }
            }));
        }
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .enumerate();
        for (c, container) in containers {
            out.push(with(&|w| {
                if let Some(spec) = w.pods[p].spec.as_mut() {
                    spec.containers.remove(c);
                }
            }));
            for port in 0..container.ports.as_ref().map_or(0, Vec::len) {
                out.push(with(&|w| {
                    if let Some(spec) = w.pods[p].spec.as_mut() {
                        if let Some(ports) = spec.containers[c].ports.as_mut() {
                            ports.remove(port);
                        }
                    }
                }));
            }
        }
    }
    for n in 0..world.namespaces.len() {
        out.push(with(&|w| {
            w.namespaces.remove(n);
        }));
    }
    for (n, ns) in world.namespaces.iter().enumerate() {
        for key in ns.metadata.labels.iter().flatten().map(|(k, _)| k.clone()) {
            out.push(with(&|w| {
                if let Some(labels) = w.namespaces[n].metadata.labels.as_mut() {
                    labels.remove(&key);
                }
            }));
        }
    }
    out
}

type RulePeers<'a> = &'a mut Option<Vec<NetworkPolicyPeer>>;
type RulePorts<'a> = &'a mut Option<Vec<NetworkPolicyPort>>;

fn spec_mut(w: &mut World, policy: usize) -> &mut NetworkPolicySpec {
    w.policies[policy].spec.as_mut().expect("policy has a spec")
}

/// Where a rule is: policy index, direction, rule index.
#[derive(Clone, Copy)]
struct RuleAt {
    policy: usize,
    ingress: bool,
    rule: usize,
}

fn rule_parts(w: &mut World, at: RuleAt) -> (RulePeers<'_>, RulePorts<'_>) {
    let spec = spec_mut(w, at.policy);
    if at.ingress {
        let rule = &mut spec.ingress.as_mut().expect("rule exists")[at.rule];
        (&mut rule.from, &mut rule.ports)
    } else {
        let rule = &mut spec.egress.as_mut().expect("rule exists")[at.rule];
        (&mut rule.to, &mut rule.ports)
    }
}

fn peer_mut(peers: RulePeers<'_>, i: usize) -> &mut NetworkPolicyPeer {
    &mut peers.as_mut().expect("peers exist")[i]
}

fn rule_reductions(
    out: &mut Vec<Generated>,
    g: &Generated,
    at: RuleAt,
    peers: &Option<Vec<NetworkPolicyPeer>>,
    ports: &Option<Vec<NetworkPolicyPort>>,
) {
    let with = |edit: &dyn Fn(RulePeers<'_>, RulePorts<'_>)| {
        let mut c = g.clone();
        let (peers, ports) = rule_parts(&mut c.world, at);
        edit(peers, ports);
        c
    };
    if peers.is_some() {
        out.push(with(&|peers, _| *peers = None));
    }
    if ports.is_some() {
        out.push(with(&|_, ports| *ports = None));
    }
    for (i, peer) in peers.iter().flatten().enumerate() {
        out.push(with(&|peers, _| {
            peers.as_mut().expect("peers exist").remove(i);
        }));
        if peer.pod_selector.is_some() && peer.namespace_selector.is_some() {
            out.push(with(&|peers, _| peer_mut(peers, i).pod_selector = None));
            out.push(with(&|peers, _| {
                peer_mut(peers, i).namespace_selector = None
            }));
        }
        let excepts = peer.ip_block.as_ref().and_then(|b| b.except.as_ref());
        for e in 0..excepts.map_or(0, Vec::len) {
            out.push(with(&|peers, _| {
                let block = peer_mut(peers, i).ip_block.as_mut();
                if let Some(except) = block.and_then(|b| b.except.as_mut()) {
                    except.remove(e);
                }
            }));
        }
        if let Some(selector) = &peer.pod_selector {
            for edit in selector_reductions(selector) {
                out.push(with(&|peers, _| {
                    if let Some(s) = peer_mut(peers, i).pod_selector.as_mut() {
                        edit(s);
                    }
                }));
            }
        }
        if let Some(selector) = &peer.namespace_selector {
            for edit in selector_reductions(selector) {
                out.push(with(&|peers, _| {
                    if let Some(s) = peer_mut(peers, i).namespace_selector.as_mut() {
                        edit(s);
                    }
                }));
            }
        }
    }
    for i in 0..ports.as_ref().map_or(0, Vec::len) {
        out.push(with(&|_, ports| {
            ports.as_mut().expect("ports exist").remove(i);
        }));
    }
}

type SelectorEdit = Box<dyn Fn(&mut LabelSelector)>;

/// Removing one matchLabels entry or one requirement.
fn selector_reductions(selector: &LabelSelector) -> Vec<SelectorEdit> {
    let mut edits: Vec<SelectorEdit> = Vec::new();
    for key in selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
    {
        edits.push(Box::new(move |s: &mut LabelSelector| {
            if let Some(labels) = s.match_labels.as_mut() {
                labels.remove(&key);
            }
        }));
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        edits.push(Box::new(move |s: &mut LabelSelector| {
            if let Some(expressions) = s.match_expressions.as_mut() {
                expressions.remove(i);
            }
        }));
        let values = requirement.values.as_ref().map_or(0, Vec::len);
        if values > 1 {
            for v in 0..values {
                edits.push(Box::new(move |s: &mut LabelSelector| {
                    let requirement = s.match_expressions.as_mut().map(|e| &mut e[i]);
                    if let Some(values) = requirement.and_then(|r| r.values.as_mut()) {
                        values.remove(v);
                    }
                }));
            }
        }
    }
    if selector.match_labels.as_ref().is_some_and(|l| l.is_empty()) {
        edits.push(Box::new(|s: &mut LabelSelector| s.match_labels = None));
    }
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| e.is_empty())
    {
        edits.push(Box::new(|s: &mut LabelSelector| s.match_expressions = None));
    }
    edits
}

// ---------------------------------------------------------------------------------------------
// Replay

/// The world as a multi-document YAML manifest, with the seed, the probes and the invalid
/// fields as comments, ready for the product's CLI.
pub fn to_yaml(g: &Generated) -> String {
    let mut out = format!("# kube-nftpol oracle cluster, seed {}\n", g.seed);
    out.push_str(&format!("# nodes: {}\n", g.nodes.join(", ")));
    for what in &g.invalid {
        out.push_str(&format!("# invalid on purpose: {what}\n"));
    }
    const SHOWN: usize = 20;
    for (src, dst, proto, port) in g.probes.iter().take(SHOWN) {
        out.push_str(&format!(
            "# probe: {src} -> {dst} {}/{port}\n",
            proto.k8s_name()
        ));
    }
    if g.probes.len() > SHOWN {
        out.push_str(&format!("# … and {} more probes\n", g.probes.len() - SHOWN));
    }
    let mut document = |result: Result<String, serde_yaml::Error>| {
        out.push_str("---\n");
        match result {
            Ok(text) => out.push_str(&text),
            Err(e) => out.push_str(&format!("# cannot serialize: {e}\n")),
        }
    };
    for ns in &g.world.namespaces {
        document(serde_yaml::to_string(ns));
    }
    for pod in &g.world.pods {
        document(serde_yaml::to_string(pod));
    }
    for policy in &g.world.policies {
        document(serde_yaml::to_string(policy));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Coverage

/// Every feature the differential test relies on, so a driver can check none went missing.
pub const FEATURES: &[&str] = &[
    "namespace without object",
    "three nodes",
    "hostNetwork pod",
    "Failed pod",
    "Succeeded pod",
    "Pending pod without IP",
    "dead pod reusing a live IP",
    "IPv6 pod",
    "dual-stack pod",
    "same port name, two numbers",
    "same port name, two protocols",
    "port name and protocol repeated in a pod",
    "policy without spec",
    "policyTypes absent",
    "policyTypes Egress only",
    "ingress: []",
    "ingress: [{}]",
    "egress: [{}]",
    "from/to: []",
    "ports: []",
    "port entry {}",
    "named port",
    "endPort",
    "UDP port",
    "SCTP port",
    "ipBlock except",
    "ipBlock 0.0.0.0/0",
    "ipBlock ::/0",
    "peer with both selectors",
    "namespaceSelector {}",
    "matchLabels empty value",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "invalid policy field",
    "invalid pod field",
    "IPv6 probe",
    "SCTP probe",
];

/// The entries of `FEATURES` this cluster exercises.
pub fn features(g: &Generated) -> Vec<&'static str> {
    let w = &g.world;
    let mut out = Vec::new();
    let mut hit = |what: &'static str, yes: bool| {
        debug_assert!(FEATURES.contains(&what), "unlisted feature {what}");
        if yes {
            out.push(what);
        }
    };
    static NO_STATUS: PodStatus = PodStatus {
        conditions: None,
        container_statuses: None,
        ephemeral_container_statuses: None,
        host_ip: None,
        host_ips: None,
        init_container_statuses: None,
        message: None,
        nominated_node_name: None,
        observed_generation: None,
        phase: None,
        pod_ip: None,
        pod_ips: None,
        qos_class: None,
        reason: None,
        resize: None,
        resource_claim_statuses: None,
        start_time: None,
    };
    fn status(p: &Pod) -> &PodStatus {
        p.status.as_ref().unwrap_or(&NO_STATUS)
    }
    let phase = |p: &Pod| status(p).phase.clone().unwrap_or_default();
    let dead = |p: &Pod| phase(p) == "Failed" || phase(p) == "Succeeded";

    hit(
        "namespace without object",
        w.pods.iter().any(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            !w.namespaces
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(ns))
        }),
    );
    hit("three nodes", g.nodes.len() == 3);
    hit(
        "port name and protocol repeated in a pod",
        w.pods.iter().any(|p| {
            let mut seen: Vec<(&str, &str)> = Vec::new();
            p.spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .any(|cp| {
                    let Some(name) = cp.name.as_deref() else {
                        return false;
                    };
                    let key = (name, cp.protocol.as_deref().unwrap_or("TCP"));
                    let repeated = seen.contains(&key);
                    seen.push(key);
                    repeated
                })
        }),
    );
    hit(
        "hostNetwork pod",
        w.pods
            .iter()
            .any(|p| p.spec.as_ref().and_then(|s| s.host_network) == Some(true)),
    );
    hit("Failed pod", w.pods.iter().any(|p| phase(p) == "Failed"));
    hit(
        "Succeeded pod",
        w.pods.iter().any(|p| phase(p) == "Succeeded"),
    );
    hit(
        "Pending pod without IP",
        w.pods
            .iter()
            .any(|p| phase(p) == "Pending" && status(p).pod_ip.is_none()),
    );
    let live_ips: Vec<&String> = w
        .pods
        .iter()
        .filter(|p| !dead(p))
        .filter_map(|p| status(p).pod_ip.as_ref())
        .collect();
    hit(
        "dead pod reusing a live IP",
        w.pods.iter().any(|p| {
            dead(p)
                && status(p)
                    .pod_ip
                    .as_ref()
                    .is_some_and(|ip| live_ips.contains(&ip))
        }),
    );
    hit(
        "IPv6 pod",
        w.pods
            .iter()
            .any(|p| status(p).pod_ip.as_ref().is_some_and(|ip| ip.contains(':'))),
    );
    hit(
        "dual-stack pod",
        w.pods
            .iter()
            .any(|p| status(p).pod_ips.as_ref().is_some_and(|ips| ips.len() >= 2)),
    );
    let mut numbers: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    let mut protocols: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for container in w
        .pods
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| &s.containers))
    {
        for port in container.ports.iter().flatten() {
            if let Some(name) = port.name.as_deref() {
                let n = numbers.entry(name).or_default();
                if !n.contains(&port.container_port) {
                    n.push(port.container_port);
                }
                let proto = port.protocol.as_deref().unwrap_or("TCP");
                let p = protocols.entry(name).or_default();
                if !p.contains(&proto) {
                    p.push(proto);
                }
            }
        }
    }
    hit(
        "same port name, two numbers",
        numbers.values().any(|n| n.len() > 1),
    );
    hit(
        "same port name, two protocols",
        protocols.values().any(|p| p.len() > 1),
    );

    hit(
        "policy without spec",
        w.policies.iter().any(|p| p.spec.is_none()),
    );
    let specs: Vec<&NetworkPolicySpec> =
        w.policies.iter().filter_map(|p| p.spec.as_ref()).collect();
    hit(
        "policyTypes absent",
        specs.iter().any(|s| s.policy_types.is_none()),
    );
    hit(
        "policyTypes Egress only",
        specs
            .iter()
            .any(|s| s.policy_types.as_deref() == Some(&["Egress".to_string()][..])),
    );
    hit(
        "ingress: []",
        specs
            .iter()
            .any(|s| s.ingress.as_ref().is_some_and(Vec::is_empty)),
    );
    hit(
        "ingress: [{}]",
        specs.iter().any(|s| {
            s.ingress
                .iter()
                .flatten()
                .any(|r| r.from.is_none() && r.ports.is_none())
        }),
    );
    hit(
        "egress: [{}]",
        specs.iter().any(|s| {
            s.egress
                .iter()
                .flatten()
                .any(|r| r.to.is_none() && r.ports.is_none())
        }),
    );
    let mut peer_lists: Vec<&Option<Vec<NetworkPolicyPeer>>> = Vec::new();
    let mut port_lists: Vec<&Option<Vec<NetworkPolicyPort>>> = Vec::new();
    for spec in &specs {
        for rule in spec.ingress.iter().flatten() {
            peer_lists.push(&rule.from);
            port_lists.push(&rule.ports);
        }
        for rule in spec.egress.iter().flatten() {
            peer_lists.push(&rule.to);
            port_lists.push(&rule.ports);
        }
    }
    hit(
        "from/to: []",
        peer_lists
            .iter()
            .any(|l| l.as_ref().is_some_and(Vec::is_empty)),
    );
    hit(
        "ports: []",
        port_lists
            .iter()
            .any(|l| l.as_ref().is_some_and(Vec::is_empty)),
    );
    let peers: Vec<&NetworkPolicyPeer> =
        peer_lists.iter().flat_map(|l| l.iter().flatten()).collect();
    let ports: Vec<&NetworkPolicyPort> =
        port_lists.iter().flat_map(|l| l.iter().flatten()).collect();
    hit(
        "port entry {}",
        ports.iter().any(|p| **p == NetworkPolicyPort::default()),
    );
    hit(
        "named port",
        ports
            .iter()
            .any(|p| matches!(p.port, Some(IntOrString::String(_)))),
    );
    hit("endPort", ports.iter().any(|p| p.end_port.is_some()));
    hit(
        "UDP port",
        ports.iter().any(|p| p.protocol.as_deref() == Some("UDP")),
    );
    hit(
        "SCTP port",
        ports.iter().any(|p| p.protocol.as_deref() == Some("SCTP")),
    );
    let blocks: Vec<&IPBlock> = peers.iter().filter_map(|p| p.ip_block.as_ref()).collect();
    hit(
        "ipBlock except",
        blocks
            .iter()
            .any(|b| b.except.as_ref().is_some_and(|e| !e.is_empty())),
    );
    hit(
        "ipBlock 0.0.0.0/0",
        blocks.iter().any(|b| b.cidr == "0.0.0.0/0"),
    );
    hit("ipBlock ::/0", blocks.iter().any(|b| b.cidr == "::/0"));
    hit(
        "peer with both selectors",
        peers
            .iter()
            .any(|p| p.pod_selector.is_some() && p.namespace_selector.is_some()),
    );
    hit(
        "namespaceSelector {}",
        peers
            .iter()
            .any(|p| p.namespace_selector == Some(LabelSelector::default())),
    );
    let mut selectors: Vec<&LabelSelector> = Vec::new();
    for peer in &peers {
        selectors.extend(peer.pod_selector.iter());
        selectors.extend(peer.namespace_selector.iter());
    }
    selectors.extend(specs.iter().filter_map(|s| s.pod_selector.as_ref()));
    hit(
        "matchLabels empty value",
        selectors
            .iter()
            .any(|s| s.match_labels.iter().flatten().any(|(_, v)| v.is_empty())),
    );
    for op in ["In", "NotIn", "Exists", "DoesNotExist"] {
        hit(
            op,
            selectors.iter().any(|s| {
                s.match_expressions
                    .iter()
                    .flatten()
                    .any(|r| r.operator == op)
            }),
        );
    }
    hit(
        "invalid policy field",
        g.invalid.iter().any(|l| l.starts_with("NetworkPolicy ")),
    );
    hit(
        "invalid pod field",
        g.invalid.iter().any(|l| l.starts_with("Pod ")),
    );
    hit("IPv6 probe", g.probes.iter().any(|p| p.0.is_ipv6()));
    hit("SCTP probe", g.probes.iter().any(|p| p.2 == Proto::Sctp));
    out
}
