//! NetworkPolicy → [`Ruleset`] for one node.
//!
//! Only the node's own pods are targets, so the work is proportional to the local pods and
//! the policies that select them; peers are resolved cluster-wide but once per distinct
//! selector. The result is a pure function of the cluster state and the node name: equal
//! inputs give equal rulesets, with equal names.
//!
//! Shape of the output (see `rules/README.md` for the why):
//! - `ingress-v4`/`-v6`, `egress-v4`/`-v6`: verdict maps, local pod address → `jump` to the
//!   pod's target chain. Pods not isolated in a direction have no element there.
//! - one target chain per distinct (direction, selecting policies, resolved named ports):
//!   replicas share it. One `return` rule per (policy rule × peer × family × port group),
//!   then `counter drop`.
//! - named sets of peer addresses, one per distinct peer and family, shared by all chains.

mod ipblock;
mod names;

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

pub use ipblock::{as_prefix, contains as ipblock_contains, ranges as ipblock_ranges};
pub use names::{fnv1a64, NAME_BUDGET};

use crate::model::{
    Cluster, Diagnostic, Direction, Effect, IpBlock, Key, Kind, Labels, NamespaceSel, ObjectRef,
    Peer, Pod, Policy, PortRange, PortSel, Protocol,
};
use crate::ruleset::{
    Action, AddrField, Chain, CtState, Element, Family, Hook, Map, Match, Origin, Rule, Ruleset,
    Set, SetKey, ICMPV6_ND_TYPES,
};
use names::Namer;

/// A compiled node ruleset and what was wrong on the way.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub ruleset: Ruleset,
    pub diagnostics: Vec<Diagnostic>,
    /// What the ruleset read of other nodes' pods.
    pub reads: Reads,
}

/// What a compiled ruleset read of the pods of other nodes: the selector peers whose sets it
/// filled, and whether a named-port set looked at every pod having such a port. Everything
/// else it read — the node's own pods, the policies of their namespaces, namespace labels,
/// the node's pod CIDRs — does not depend on other nodes' pods. So a change to a pod of
/// another node that no version of which [`Reads::sees`] cannot change the ruleset: the daemon
/// skips the compile (tests/compile_reads.rs checks this against full compiles).
#[derive(Clone, Debug, Default)]
pub struct Reads {
    peers: Vec<(NamespaceSel, crate::model::Selector)>,
    any_pod_ports: bool,
}

impl Reads {
    /// Could `pod` (one version of it) be read by the ruleset of `node`?
    pub fn sees(&self, cluster: &Cluster, node: &str, pod: &Pod) -> bool {
        if pod.node_name.as_deref() == Some(node) {
            return true;
        }
        if !pod.is_policy_pod() {
            // Neither a target nor a peer: only policy pods enter sets.
            return false;
        }
        if self.any_pod_ports && !pod.named_ports.is_empty() {
            return true;
        }
        let mut namespace_labels = None;
        self.peers.iter().any(|(namespaces, selector)| {
            selector.matches(&pod.labels)
                && match namespaces {
                    NamespaceSel::Own(ns) => *ns == pod.namespace,
                    NamespaceSel::Matching(sel) => sel.matches(
                        namespace_labels
                            .get_or_insert_with(|| cluster.namespace_labels(&pod.namespace)),
                    ),
                }
        })
    }
}

/// Names of the fixed objects.
pub fn dispatch_map(direction: Direction, family: Family) -> String {
    format!("{}-{}", direction.as_str(), family.suffix())
}

pub fn self_set(family: Family) -> String {
    format!("self-{}", family.suffix())
}

/// Choices of ruleset shape: what depends on the kernel (see the kernel probe) and what the
/// operator chose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Kernels with intervals in concatenations (Linux 5.6) match all protocols and ports of
    /// a rule in one lookup, `meta l4proto . th dport { tcp . 80, udp . 8000-9000 }`, where
    /// older ones need one rule per group of protocols sharing their ports. Only rules whose
    /// protocols differ in their ports change; off, the ruleset runs on Linux 4.18.
    pub concat_ports: bool,
    /// `--fail-closed`: drop traffic from or to an address of the node's pod CIDRs that is
    /// not a local pod the ruleset knows (see [`fail_closed_set`]), so a new pod is
    /// unreachable until the transaction that programs its rules. The CIDRs are the Node
    /// object's `spec.podCIDRs` plus [`Options::pod_cidrs`].
    pub fail_closed: bool,
    /// Pod CIDRs of the node known from elsewhere than its Node object (Flannel's
    /// `subnet.env`).
    pub pod_cidrs: Vec<IpNet>,
}

/// Names of the `--fail-closed` sets: the node's pod CIDRs, and the local pod addresses
/// programmed so far.
pub fn fail_closed_set(role: FailClosedSet, family: Family) -> String {
    let role = match role {
        FailClosedSet::PodCidrs => "podcidrs",
        FailClosedSet::Programmed => "programmed",
    };
    format!("{role}-{}", family.suffix())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailClosedSet {
    PodCidrs,
    Programmed,
}

/// The pod CIDRs `--fail-closed` guards on `node`: its Node object's and the extra ones, per
/// family, without duplicates.
pub fn guarded_cidrs(cluster: &Cluster, node: &str, options: &Options) -> Vec<IpNet> {
    let mut cidrs: Vec<IpNet> = cluster.node_pod_cidrs(node).to_vec();
    cidrs.extend(options.pod_cidrs.iter().map(IpNet::trunc));
    cidrs.sort();
    cidrs.dedup();
    cidrs
}

/// Compiles the ruleset of `node` in the shape every supported kernel accepts.
pub fn compile(cluster: &Cluster, node: &str) -> Compiled {
    compile_with(cluster, node, &Options::default())
}

/// Compiles the ruleset of `node` for a kernel with the given abilities.
pub fn compile_with(cluster: &Cluster, node: &str, options: &Options) -> Compiled {
    let index = Index::new(cluster);
    let mut b = Builder {
        index: &index,
        concat_ports: options.concat_ports,
        namer: Namer::default(),
        chains: BTreeMap::new(),
        sets: BTreeMap::new(),
        peer_memo: HashMap::new(),
        any_pod_ports: false,
    };
    let mut diagnostics = Vec::new();

    // Dispatch elements: address → (target chain, the pod that owns the address).
    let mut maps: BTreeMap<(Direction, Family), BTreeMap<IpAddr, (String, Key)>> = BTreeMap::new();
    let mut self_pairs: BTreeMap<Family, BTreeSet<Element>> = BTreeMap::new();
    let mut programmed: BTreeMap<Family, BTreeSet<Element>> = BTreeMap::new();

    let local = cluster
        .pods()
        .filter(|p| p.is_policy_pod() && p.node_name.as_deref() == Some(node));
    for pod in local {
        for ip in &pod.ips {
            self_pairs
                .entry(Family::of(ip))
                .or_default()
                .insert(Element::AddrPair(*ip, *ip));
            programmed
                .entry(Family::of(ip))
                .or_default()
                .insert(Element::Addr(*ip));
        }
        for direction in Direction::BOTH {
            let policies: Vec<&Policy> = index
                .policies_in(&pod.namespace)
                .filter(|p| p.rules(direction).is_some() && p.selects(pod))
                .collect();
            if policies.is_empty() {
                continue;
            }
            let chain = b.target_chain(direction, &policies, pod);
            for ip in &pod.ips {
                let entry = maps.entry((direction, Family::of(ip))).or_default();
                match entry.get(ip) {
                    Some((existing, (ns, name))) if *existing != chain => {
                        // Two live pods claim one address (stale state): the first, in name
                        // order, keeps it; isolation always wins over no isolation because a
                        // pod without policies never takes an element.
                        diagnostics.push(Diagnostic {
                            object: ObjectRef {
                                kind: Kind::Pod,
                                namespace: Some(pod.namespace.clone()),
                                name: pod.name.clone(),
                            },
                            field: "status.podIPs".to_string(),
                            message: format!(
                                "address {ip} is also claimed by pod {ns}/{name}, \
                                 whose {direction} rules apply to it"
                            ),
                            effect: Effect::AddressIgnored,
                        });
                    }
                    Some(_) => {}
                    None => {
                        entry.insert(*ip, (chain.clone(), pod.key()));
                    }
                }
            }
        }
    }

    let mut ruleset = Ruleset::default();
    for direction in Direction::BOTH {
        for family in Family::BOTH {
            let elements = maps
                .remove(&(direction, family))
                .unwrap_or_default()
                .into_iter()
                .map(|(ip, (chain, _))| (ip, chain))
                .collect();
            ruleset
                .maps
                .insert(dispatch_map(direction, family), Map { family, elements });
        }
    }
    for family in Family::BOTH {
        ruleset.sets.insert(
            self_set(family),
            Set {
                key: SetKey::AddrPair(family),
                interval: false,
                comment: "local pods: a pod may always reach itself".to_string(),
                elements: self_pairs.remove(&family).unwrap_or_default(),
            },
        );
    }
    let mut forward = forward_chain();
    let mut input = input_chain();
    if options.fail_closed {
        let cidrs = guarded_cidrs(cluster, node, options);
        let (mut forward_guard, mut input_guard) = (Vec::new(), Vec::new());
        for family in Family::BOTH {
            let ranges: BTreeSet<Element> = cidrs
                .iter()
                .filter(|c| Family::of(&c.addr()) == family)
                .map(|c| Element::Range(c.network(), c.broadcast()))
                .collect();
            if ranges.is_empty() {
                continue;
            }
            let guard = fail_closed_rules(family);
            // The node talking to itself (through `lo`) may use an address of its pod CIDR.
            input_guard.extend(guard.iter().take(1).cloned().map(|mut r| {
                r.matches.insert(0, Match::NotLoopback);
                r
            }));
            forward_guard.extend(guard);
            ruleset.sets.insert(
                fail_closed_set(FailClosedSet::PodCidrs, family),
                Set {
                    key: SetKey::Addr(family),
                    interval: true,
                    comment: format!("--fail-closed: pod CIDRs of node {node}"),
                    elements: ranges,
                },
            );
            ruleset.sets.insert(
                fail_closed_set(FailClosedSet::Programmed, family),
                Set {
                    key: SetKey::Addr(family),
                    interval: false,
                    comment: "--fail-closed: local pods whose rules are programmed".to_string(),
                    elements: programmed.remove(&family).unwrap_or_default(),
                },
            );
        }
        // After conntrack and neighbour discovery, before anything can accept.
        forward.rules.splice(3..3, forward_guard);
        input.rules.splice(2..2, input_guard);
    }
    ruleset
        .chains
        .insert(Hook::Forward.as_str().to_string(), forward);
    ruleset
        .chains
        .insert(Hook::Input.as_str().to_string(), input);
    for (name, rules) in std::mem::take(&mut b.chains) {
        ruleset.chains.insert(name, Chain { hook: None, rules });
    }
    for (name, spec) in std::mem::take(&mut b.sets) {
        ruleset.sets.insert(name, b.fill(spec));
    }
    let reads = Reads {
        peers: b.peer_memo.into_keys().collect(),
        any_pod_ports: b.any_pod_ports,
    };
    Compiled {
        ruleset,
        diagnostics,
        reads,
    }
}

fn builtin(matches: Vec<Match>, counter: bool, action: Action, why: &'static str) -> Rule {
    Rule {
        matches,
        counter,
        action,
        origin: Some(Origin::Builtin(why)),
    }
}

fn established() -> Rule {
    let states = BTreeSet::from([CtState::Established, CtState::Related]);
    builtin(
        vec![Match::CtState(states)],
        false,
        Action::Accept,
        "established connections",
    )
}

fn neighbour_discovery() -> Rule {
    let types = ICMPV6_ND_TYPES.into_iter().collect();
    builtin(
        vec![Match::Icmpv6Type(types)],
        false,
        Action::Accept,
        "IPv6 neighbour discovery",
    )
}

/// `--fail-closed`: an address of the node's pod CIDRs that is not a programmed local pod is
/// dropped, as source and as destination.
fn fail_closed_rules(family: Family) -> Vec<Rule> {
    [
        (AddrField::Saddr, "--fail-closed: source not programmed yet"),
        (
            AddrField::Daddr,
            "--fail-closed: destination not programmed yet",
        ),
    ]
    .into_iter()
    .map(|(field, why)| {
        builtin(
            vec![
                Match::AddrInSet {
                    field,
                    family,
                    set: fail_closed_set(FailClosedSet::PodCidrs, family),
                },
                Match::AddrNotInSet {
                    field,
                    family,
                    set: fail_closed_set(FailClosedSet::Programmed, family),
                },
            ],
            true,
            Action::Drop,
            why,
        )
    })
    .collect()
}

fn dispatch(field: AddrField, direction: Direction) -> Vec<Rule> {
    Family::BOTH
        .into_iter()
        .map(|family| Rule {
            matches: vec![],
            counter: false,
            action: Action::Dispatch {
                field,
                family,
                map: dispatch_map(direction, family),
            },
            origin: None,
        })
        .collect()
}

/// Forward hook: pod ↔ pod on this node (bridged, via br_netfilter), pod ↔ other nodes and
/// the world. Egress of the source first, then ingress of the destination: a packet between
/// two local pods must pass both.
fn forward_chain() -> Chain {
    let mut rules = vec![
        established(),
        builtin(
            vec![Match::CtState(BTreeSet::from([CtState::Invalid]))],
            true,
            Action::Drop,
            "invalid packets",
        ),
        neighbour_discovery(),
    ];
    for family in Family::BOTH {
        rules.push(builtin(
            vec![Match::AddrPairInSet {
                family,
                set: self_set(family),
            }],
            false,
            Action::Accept,
            "pod to itself",
        ));
    }
    rules.extend(dispatch(AddrField::Saddr, Direction::Egress));
    rules.extend(dispatch(AddrField::Daddr, Direction::Ingress));
    Chain {
        hook: Some(Hook::Forward),
        rules,
    }
}

/// Input hook: a pod talking to its own node is egress traffic of the pod. Nothing else of
/// the node's own traffic is touched (no invalid-state drop here).
fn input_chain() -> Chain {
    let mut rules = vec![established(), neighbour_discovery()];
    rules.extend(dispatch(AddrField::Saddr, Direction::Egress));
    Chain {
        hook: Some(Hook::Input),
        rules,
    }
}

/// Lookups over the cluster the compiler needs, built once per compile.
/// Protocol → port name → the pods having it, with its number on each.
type NamedPortIndex<'c> = HashMap<Protocol, HashMap<&'c str, Vec<(&'c Pod, u16)>>>;

struct Index<'c> {
    policies_by_ns: BTreeMap<&'c str, Vec<&'c Policy>>,
    /// Policy pods (live, not hostNetwork) by namespace.
    pods_by_ns: BTreeMap<&'c str, Vec<&'c Pod>>,
    namespaces: Vec<(&'c str, Labels)>,
    /// Policy pods having a named port, by (name, protocol), with what it resolves to:
    /// built on first use by a named-port set whose remote end is any pod.
    named_ports: OnceCell<NamedPortIndex<'c>>,
}

impl<'c> Index<'c> {
    fn new(cluster: &'c Cluster) -> Self {
        let mut policies_by_ns: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
        for p in cluster.policies() {
            policies_by_ns
                .entry(p.namespace.as_str())
                .or_default()
                .push(p);
        }
        // Pods are kept in (namespace, name) order: group runs instead of a map lookup per pod.
        let mut runs: Vec<(&str, Vec<&Pod>)> = Vec::new();
        for p in cluster.pods().filter(|p| p.is_policy_pod()) {
            match runs.last_mut() {
                Some((ns, pods)) if *ns == p.namespace => pods.push(p),
                _ => runs.push((p.namespace.as_str(), vec![p])),
            }
        }
        let mut pods_by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for (ns, pods) in runs {
            pods_by_ns.entry(ns).or_default().extend(pods);
        }
        // Namespaces without policy pods select no peers: the explicit ones and those of the
        // pods are all a namespace selector can draw from.
        let names: BTreeSet<&str> = cluster
            .namespaces()
            .map(|n| n.name.as_str())
            .chain(pods_by_ns.keys().copied())
            .collect();
        let namespaces = names
            .into_iter()
            .map(|n| (n, cluster.namespace_labels(n)))
            .collect();
        Index {
            policies_by_ns,
            pods_by_ns,
            namespaces,
            named_ports: OnceCell::new(),
        }
    }

    /// Policy pods with a port `name`/`protocol`, and its number on each.
    fn pods_with_port(&self, name: &str, protocol: Protocol) -> &[(&'c Pod, u16)] {
        let index = self.named_ports.get_or_init(|| {
            let mut index = NamedPortIndex::new();
            for pod in self.all_pods() {
                for port in &pod.named_ports {
                    // The first port of a name and protocol is the one that resolves.
                    if pod.resolve_port(&port.name, port.protocol) != Some(port.port) {
                        continue;
                    }
                    index
                        .entry(port.protocol)
                        .or_default()
                        .entry(port.name.as_str())
                        .or_default()
                        .push((pod, port.port));
                }
            }
            index
        });
        index
            .get(&protocol)
            .and_then(|by_name| by_name.get(name))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn policies_in(&self, namespace: &str) -> impl Iterator<Item = &'c Policy> + '_ {
        self.policies_by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .copied()
    }

    fn pods_in(&self, namespace: &str) -> impl Iterator<Item = &'c Pod> + '_ {
        self.pods_by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Pods a selector peer selects, cluster-wide.
    fn peer_pods(&self, namespaces: &NamespaceSel, pods: &crate::model::Selector) -> Vec<&'c Pod> {
        let in_ns = |ns: &str| -> Vec<&'c Pod> {
            self.pods_in(ns)
                .filter(|p| pods.matches(&p.labels))
                .collect()
        };
        match namespaces {
            NamespaceSel::Own(ns) => in_ns(ns),
            NamespaceSel::Matching(sel) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .flat_map(|(ns, _)| in_ns(ns))
                .collect(),
        }
    }

    fn all_pods(&self) -> impl Iterator<Item = &'c Pod> + '_ {
        self.pods_by_ns.values().flatten().copied()
    }
}

/// The remote end of a rule, for one rule emission.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Remote {
    Any,
    Peer(Peer),
}

/// A named set to be filled once every chain is built.
#[derive(Clone, Debug)]
enum SetSpec {
    /// Addresses of the pods a selector peer selects.
    Pods {
        namespaces: NamespaceSel,
        pods: crate::model::Selector,
        family: Family,
    },
    /// An ipBlock's ranges.
    Cidr { block: IpBlock },
    /// `addr . proto . port` of each destination pod of `remote` having one of the named ports.
    NamedPorts {
        remote: Remote,
        family: Family,
        ports: BTreeSet<(String, Protocol)>,
    },
}

/// Ports of one protocol a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ProtoPorts {
    All,
    Ranges(BTreeSet<PortRange>),
}

struct Builder<'i, 'c> {
    index: &'i Index<'c>,
    concat_ports: bool,
    namer: Namer,
    chains: BTreeMap<String, Vec<Rule>>,
    sets: BTreeMap<String, SetSpec>,
    /// A named-port set read every pod having one of its ports (remote end any pod or an
    /// ipBlock), wherever it runs.
    any_pod_ports: bool,
    /// Pods each selector peer selects: computed once per compile, shared by the v4, v6 and
    /// named-port sets of the same peer.
    peer_memo: HashMap<(NamespaceSel, crate::model::Selector), Vec<&'c Pod>>,
}

impl<'c> Builder<'_, 'c> {
    /// The chain for `pod` in `direction`, built on first use. Its identity is the set of
    /// policies and, for ingress, what their named ports resolve to on this pod.
    fn target_chain(&mut self, direction: Direction, policies: &[&Policy], pod: &Pod) -> String {
        let resolved: BTreeMap<(String, Protocol), Option<u16>> = match direction {
            Direction::Egress => BTreeMap::new(),
            Direction::Ingress => policies
                .iter()
                .flat_map(|p| p.rules(direction).unwrap_or_default())
                .flat_map(|r| r.ports.iter().flatten())
                .filter_map(|spec| match &spec.port {
                    PortSel::Named(n) => Some((
                        (n.clone(), spec.protocol),
                        pod.resolve_port(n, spec.protocol),
                    )),
                    _ => None,
                })
                .collect(),
        };
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        let mut identity = format!("{direction}|{}|{}", pod.namespace, names.join(","));
        for ((name, proto), port) in &resolved {
            identity.push_str(&format!(
                "|{name}/{proto}={}",
                port.map_or("-".into(), |p| p.to_string())
            ));
        }
        let role = match direction {
            Direction::Ingress => "ing",
            Direction::Egress => "egr",
        };
        let chain = self.namer.name(
            role,
            &identity,
            &format!("{}/{}", pod.namespace, names.join("_")),
        );
        if !self.chains.contains_key(&chain) {
            let rules = self.chain_rules(direction, policies, &resolved);
            self.chains.insert(chain.clone(), rules);
        }
        chain
    }

    fn chain_rules(
        &mut self,
        direction: Direction,
        policies: &[&Policy],
        resolved: &BTreeMap<(String, Protocol), Option<u16>>,
    ) -> Vec<Rule> {
        let mut rules = Vec::new();
        for policy in policies {
            let policy_id = format!("{}/{}", policy.namespace, policy.name);
            for rule in policy.rules(direction).unwrap_or_default() {
                let origin = Origin::Allow {
                    policy: policy_id.clone(),
                    direction,
                    rule: rule.index,
                };
                let PortMatch { numeric, named } = port_match(
                    direction,
                    rule.ports.as_deref(),
                    resolved,
                    self.concat_ports,
                );
                let remotes: Vec<Remote> = match &rule.peers {
                    None => vec![Remote::Any],
                    Some(peers) => peers.iter().cloned().map(Remote::Peer).collect(),
                };
                for remote in remotes {
                    if let Some(groups) = &numeric {
                        for addr in self.remote_matches(direction, &remote) {
                            for ports in groups {
                                let mut matches: Vec<Match> = addr.iter().cloned().collect();
                                matches.extend(ports.iter().cloned());
                                rules.push(Rule {
                                    matches,
                                    counter: false,
                                    action: Action::Return,
                                    origin: Some(origin.clone()),
                                });
                            }
                        }
                    }
                    if !named.is_empty() {
                        for family in remote_families(&remote) {
                            let set = self.named_port_set(&remote, family, &named);
                            rules.push(Rule {
                                matches: vec![Match::AddrProtoPortInSet {
                                    field: AddrField::Daddr,
                                    family,
                                    set,
                                }],
                                counter: false,
                                action: Action::Return,
                                origin: Some(origin.clone()),
                            });
                        }
                    }
                }
            }
        }
        let policies = policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        rules.push(Rule {
            matches: vec![],
            counter: true,
            action: Action::Drop,
            origin: Some(Origin::Isolated {
                direction,
                policies,
            }),
        });
        rules
    }

    /// The address match of a remote: none for "anyone", one per family for a selector peer
    /// (both sets always exist, so pods appearing never change the chain), one for an ipBlock.
    fn remote_matches(&mut self, direction: Direction, remote: &Remote) -> Vec<Option<Match>> {
        let field = match direction {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        };
        match remote {
            Remote::Any => vec![None],
            Remote::Peer(peer) => remote_families(remote)
                .into_iter()
                .map(|family| {
                    let set = self.peer_set(peer, family);
                    Some(Match::AddrInSet { field, family, set })
                })
                .collect(),
        }
    }

    fn peer_set(&mut self, peer: &Peer, family: Family) -> String {
        let (role, identity, hint, spec) = match peer {
            Peer::Pods { namespaces, pods } => (
                format!("pods-{}", family.suffix()),
                peer_identity(peer),
                format!(
                    "{}/{}",
                    names::namespace_hint(namespaces),
                    names::selector_hint(pods)
                ),
                SetSpec::Pods {
                    namespaces: namespaces.clone(),
                    pods: pods.clone(),
                    family,
                },
            ),
            Peer::IpBlock(block) => (
                format!("cidr-{}", family.suffix()),
                peer_identity(peer),
                block_hint(block),
                SetSpec::Cidr {
                    block: block.clone(),
                },
            ),
        };
        let name = self.namer.name(&role, &identity, &hint);
        self.sets.entry(name.clone()).or_insert(spec);
        name
    }

    fn named_port_set(
        &mut self,
        remote: &Remote,
        family: Family,
        ports: &BTreeSet<(String, Protocol)>,
    ) -> String {
        let (peer_id, peer_hint) = match remote {
            Remote::Any => ("any".to_string(), "any".to_string()),
            Remote::Peer(p @ Peer::Pods { namespaces, pods }) => (
                peer_identity(p),
                format!(
                    "{}/{}",
                    names::namespace_hint(namespaces),
                    names::selector_hint(pods)
                ),
            ),
            Remote::Peer(p @ Peer::IpBlock(block)) => (peer_identity(p), block_hint(block)),
        };
        let port_list: Vec<String> = ports.iter().map(|(n, p)| format!("{n}/{p}")).collect();
        let identity = format!("{peer_id}|{}", port_list.join(","));
        let hint = format!(
            "{peer_hint}.{}",
            ports
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(".")
        );
        let name = self
            .namer
            .name(&format!("nport-{}", family.suffix()), &identity, &hint);
        self.sets
            .entry(name.clone())
            .or_insert_with(|| SetSpec::NamedPorts {
                remote: remote.clone(),
                family,
                ports: ports.clone(),
            });
        name
    }

    /// The pods a selector peer selects (memoised for this compile).
    fn peer_pods(
        &mut self,
        namespaces: &NamespaceSel,
        pods: &crate::model::Selector,
    ) -> &[&'c Pod] {
        let index = self.index;
        self.peer_memo
            .entry((namespaces.clone(), pods.clone()))
            .or_insert_with(|| index.peer_pods(namespaces, pods))
    }

    /// Computes the elements of a named set.
    fn fill(&mut self, spec: SetSpec) -> Set {
        match spec {
            SetSpec::Pods {
                namespaces,
                pods,
                family,
            } => {
                let elements = self
                    .peer_pods(&namespaces, &pods)
                    .iter()
                    .flat_map(|p| p.ips.iter())
                    .filter(|ip| Family::of(ip) == family)
                    .map(|ip| Element::Addr(*ip))
                    .collect();
                let comment = peer_comment(&namespaces, &pods);
                Set {
                    key: SetKey::Addr(family),
                    interval: false,
                    comment,
                    elements,
                }
            }
            SetSpec::Cidr { block } => {
                let family = block_family(&block);
                let elements = ipblock::ranges(&block)
                    .into_iter()
                    .map(|(a, b)| Element::Range(a, b))
                    .collect();
                Set {
                    key: SetKey::Addr(family),
                    interval: true,
                    comment: block_comment(&block),
                    elements,
                }
            }
            SetSpec::NamedPorts {
                remote,
                family,
                ports,
            } => {
                let mut elements = BTreeSet::new();
                let mut add = |pod: &Pod, proto: Protocol, port: u16| {
                    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
                        if let Remote::Peer(Peer::IpBlock(block)) = &remote {
                            if !ipblock::contains(block, ip) {
                                continue;
                            }
                        }
                        elements.insert(Element::AddrProtoPort(*ip, proto, port));
                    }
                };
                match &remote {
                    Remote::Peer(Peer::Pods { namespaces, pods }) => {
                        let pods = self.peer_pods(namespaces, pods);
                        for pod in pods {
                            for (name, proto) in &ports {
                                if let Some(port) = pod.resolve_port(name, *proto) {
                                    add(pod, *proto, port);
                                }
                            }
                        }
                    }
                    // Any pod, or any pod inside the block (filtered per address above).
                    Remote::Any | Remote::Peer(Peer::IpBlock(_)) => {
                        self.any_pod_ports = true;
                        for (name, proto) in &ports {
                            for (pod, port) in self.index.pods_with_port(name, *proto) {
                                add(pod, *proto, *port);
                            }
                        }
                    }
                }
                let who = match &remote {
                    Remote::Any => "any pod".to_string(),
                    Remote::Peer(Peer::Pods { namespaces, pods }) => peer_comment(namespaces, pods),
                    Remote::Peer(Peer::IpBlock(block)) => {
                        format!("pods in {}", block_comment(block))
                    }
                };
                let list: Vec<String> = ports.iter().map(|(n, p)| format!("{n}/{p}")).collect();
                Set {
                    key: SetKey::AddrProtoPort(family),
                    interval: false,
                    comment: format!("named ports {} of {who}", list.join(",")),
                    elements,
                }
            }
        }
    }
}

/// A rule's port part, split for rule emission.
struct PortMatch {
    /// Match lists for the numeric ports, one per group of protocols sharing the same ports.
    numeric: Option<Vec<Vec<Match>>>,
    /// Egress named ports, resolved per destination pod through a set.
    named: BTreeSet<(String, Protocol)>,
}

/// Splits a rule's ports into numeric match groups and (egress) named ports.
///
/// `numeric` is `None` when no numeric match is left (every entry was a named port, or named
/// ports that do not resolve): then only the named-port rule, if any, can allow. `Some(vec![])`
/// never occurs; "all ports and protocols" is `Some(vec![vec![]])`, one rule with no port match.
fn port_match(
    direction: Direction,
    ports: Option<&[crate::model::PortSpec]>,
    resolved: &BTreeMap<(String, Protocol), Option<u16>>,
    concat_ports: bool,
) -> PortMatch {
    let Some(ports) = ports else {
        return PortMatch {
            numeric: Some(vec![vec![]]),
            named: BTreeSet::new(),
        };
    };
    let mut per_proto: BTreeMap<Protocol, ProtoPorts> = BTreeMap::new();
    let mut named = BTreeSet::new();
    let mut add = |proto: Protocol, range: Option<PortRange>| {
        let entry = per_proto
            .entry(proto)
            .or_insert(ProtoPorts::Ranges(BTreeSet::new()));
        match (entry, range) {
            (ProtoPorts::All, _) => {}
            (entry, None) => *entry = ProtoPorts::All,
            (ProtoPorts::Ranges(r), Some(range)) => {
                r.insert(range);
            }
        }
    };
    for spec in ports {
        match &spec.port {
            PortSel::All => add(spec.protocol, None),
            PortSel::Range(r) => add(spec.protocol, Some(*r)),
            PortSel::Named(name) => match direction {
                Direction::Ingress => {
                    if let Some(Some(port)) = resolved.get(&(name.clone(), spec.protocol)) {
                        add(spec.protocol, Some(PortRange::single(*port)));
                    }
                }
                Direction::Egress => {
                    named.insert((name.clone(), spec.protocol));
                }
            },
        }
    }
    // Protocols allowing the same ports share one rule: `meta l4proto { tcp, udp } th dport 53`.
    let mut groups: BTreeMap<ProtoPorts, BTreeSet<Protocol>> = BTreeMap::new();
    for (proto, ports) in per_proto {
        let ports = match ports {
            ProtoPorts::Ranges(r) => ProtoPorts::Ranges(merge_ranges(r)),
            all => all,
        };
        groups.entry(ports).or_default().insert(proto);
    }
    if concat_ports && groups.len() > 1 {
        let pairs = groups
            .iter()
            .flat_map(|(ports, protos)| {
                protos.iter().flat_map(move |p| match ports {
                    ProtoPorts::All => vec![(*p, PortRange::ALL)],
                    ProtoPorts::Ranges(r) => r.iter().map(|r| (*p, *r)).collect(),
                })
            })
            .collect();
        return PortMatch {
            numeric: Some(vec![vec![Match::ProtoPorts(pairs)]]),
            named,
        };
    }
    let numeric: Vec<Vec<Match>> = groups
        .into_iter()
        .map(|(ports, protos)| {
            let mut m = vec![Match::L4Proto(protos)];
            if let ProtoPorts::Ranges(r) = ports {
                m.push(Match::Dport(r));
            }
            m
        })
        .collect();
    PortMatch {
        numeric: (!numeric.is_empty()).then_some(numeric),
        named,
    }
}

/// Merges overlapping and adjacent ranges (nft interval sets reject overlaps).
fn merge_ranges(ranges: BTreeSet<PortRange>) -> BTreeSet<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.first as u32 <= last.last as u32 + 1 => {
                last.last = last.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out.into_iter().collect()
}

fn remote_families(remote: &Remote) -> Vec<Family> {
    match remote {
        Remote::Peer(Peer::IpBlock(block)) => vec![block_family(block)],
        _ => Family::BOTH.to_vec(),
    }
}

fn block_family(block: &IpBlock) -> Family {
    match block.cidr {
        ipnet::IpNet::V4(_) => Family::V4,
        ipnet::IpNet::V6(_) => Family::V6,
    }
}

/// Identity text of a peer; equal peers (selectors normalised) give equal text.
fn peer_identity(peer: &Peer) -> String {
    match peer {
        Peer::Pods {
            namespaces: NamespaceSel::Own(ns),
            pods,
        } => format!("pods|ns={ns}|{pods}"),
        Peer::Pods {
            namespaces: NamespaceSel::Matching(n),
            pods,
        } => format!("pods|nsel={n}|{pods}"),
        Peer::IpBlock(block) => format!("cidr|{}", block_comment(block)),
    }
}

/// `pods app=db in namespace shop`, `all pods in namespaces team=a`, `all pods in all namespaces`.
fn peer_comment(namespaces: &NamespaceSel, pods: &crate::model::Selector) -> String {
    let pods = if pods.is_everything() {
        "all pods".to_string()
    } else {
        format!("pods {pods}")
    };
    match namespaces {
        NamespaceSel::Own(ns) => format!("{pods} in namespace {ns}"),
        NamespaceSel::Matching(s) if s.is_everything() => format!("{pods} in all namespaces"),
        NamespaceSel::Matching(s) => format!("{pods} in namespaces {s}"),
    }
}

fn block_hint(block: &IpBlock) -> String {
    let mut hint = block.cidr.to_string();
    if !block.except.is_empty() {
        hint.push_str(&format!(".x{}", block.except.len()));
    }
    hint
}

fn block_comment(block: &IpBlock) -> String {
    if block.except.is_empty() {
        return block.cidr.to_string();
    }
    let except: Vec<String> = block.except.iter().map(|e| e.to_string()).collect();
    format!("{} except {}", block.cidr, except.join(","))
}

#[cfg(test)]
mod tests;
