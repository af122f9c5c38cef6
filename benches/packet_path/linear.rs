//! Configuration (c): the same policies in the classic linear shape iptables-based
//! controllers produce. Bench-only code, not a product backend.
//!
//! Table `inet knp-linear`, same hooks, priority and conntrack handling as kube-nftpol's
//! (`filter + 10`, policy accept, `ct state established,related accept`, `ct state invalid
//! drop`, IPv6 neighbour discovery accepted; see rules/README.md):
//!
//! ```text
//! chain forward { type filter hook forward priority filter + 10; policy accept;
//!     ct state established,related accept
//!     ct state invalid counter drop
//!     icmpv6 type { nd-... } accept
//!     ip saddr 10.244.1.11 jump egr-ns-042/bench-client      # one rule per local pod isolated for egress
//!     ...
//!     ip daddr 10.244.1.10 jump ing-ns-042/bench-server      # one rule per local pod isolated for ingress
//!     ...
//! }
//! chain input { ... established, nd, then the same egress dispatch }
//! chain ing-ns-042/bench-server {                            # one chain per pod and direction
//!     ip saddr 10.244.1.10 return                            # the pod itself
//!     ip saddr 10.64.3.17 meta l4proto tcp th dport 5432 return   # one rule per allowed peer address
//!     ...
//!     counter drop
//! }
//! ```
//!
//! Per-pod chains `return` (like kube-nftpol's) rather than `accept`: an `accept` would end
//! the base chain, so a packet between two local pods would skip the destination's ingress
//! chain once the source's egress chain allowed it. Rules follow the policies in name order,
//! their rules in spec order, peers in order and peer pods in (namespace, name) order; the
//! rules of the probed peer are moved to the end of their chain, as an iptables controller
//! has them for a peer that appeared last. Named ports are resolved on the target pod
//! (ingress) or on each destination pod (egress), as in kube-nftpol. A peer allowed on several
//! protocols or port ranges gets one rule for each (no anonymous sets, see `l4_matches`);
//! ipBlocks become one rule per disjoint range (`compile::ipblock_ranges`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use kube_nftpol::compile::{as_prefix, ipblock_contains, ipblock_ranges};
use kube_nftpol::model::{
    Cluster, Direction, Labels, NamespaceSel, Peer, Pod, PortRange, PortSel, Protocol, Selector,
};

pub const TABLE: &str = "knp-linear";
/// Rules a new packet passes in the base chain before the dispatch rules.
pub const BASE_RULES_BEFORE_DISPATCH: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    One(IpAddr),
    Range(IpAddr, IpAddr),
}

impl Addr {
    fn contains(&self, ip: IpAddr) -> bool {
        match *self {
            Addr::One(a) => a == ip,
            Addr::Range(a, b) => a.is_ipv4() == ip.is_ipv4() && a <= ip && ip <= b,
        }
    }

    fn text(&self, field: &str) -> String {
        let proto = |ip: &IpAddr| if ip.is_ipv4() { "ip" } else { "ip6" };
        match self {
            Addr::One(a) => format!("{} {field} {a}", proto(a)),
            Addr::Range(a, b) => match as_prefix(*a, *b) {
                Some(net) => format!("{} {field} {net}", proto(a)),
                None => format!("{} {field} {a}-{b}", proto(a)),
            },
        }
    }
}

/// `meta l4proto tcp [th dport 80 | th dport 8000-8100]`; `ports: None` is every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: Protocol,
    pub ports: Option<PortRange>,
}

/// One `return` rule of a per-pod chain. The address is the remote end: the source in an
/// ingress chain, the destination in an egress chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LRule {
    pub addr: Option<Addr>,
    pub l4: Option<L4>,
}

impl LRule {
    fn matches(&self, remote: IpAddr, proto: Protocol, port: u16) -> bool {
        self.addr.is_none_or(|a| a.contains(remote))
            && self
                .l4
                .is_none_or(|l4| l4.proto == proto && l4.ports.is_none_or(|r| r.contains(port)))
    }
}

pub struct PodChain {
    pub name: String,
    pub direction: Direction,
    pub ips: Vec<IpAddr>,
    /// Every rule is a `return`; the chain ends with `counter drop` (not listed).
    pub rules: Vec<LRule>,
}

pub struct Linear {
    pub node: String,
    /// In pod order, both directions.
    pub chains: Vec<PodChain>,
}

/// Where a packet went through the linear ruleset.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    pub accepted: bool,
    /// Rules evaluated: base chain, dispatch rules, per-pod chain rules (the final drop
    /// included when reached).
    pub rules: usize,
    /// For each per-pod chain entered: its name, and the index of the rule that returned
    /// (`None`: fell through to the drop).
    pub chains: Vec<(String, Option<usize>)>,
}

impl Linear {
    pub fn rule_count(&self) -> usize {
        let chains: usize = self.chains.iter().map(|c| c.rules.len() + 1).sum();
        chains + self.base_rule_count()
    }

    fn dispatch(&self, direction: Direction) -> impl Iterator<Item = (IpAddr, &PodChain)> {
        self.chains
            .iter()
            .filter(move |c| c.direction == direction)
            .flat_map(|c| c.ips.iter().map(move |ip| (*ip, c)))
    }

    pub fn dispatch_count(&self, direction: Direction) -> usize {
        self.dispatch(direction).count()
    }

    pub fn base_rule_count(&self) -> usize {
        let egress = self.dispatch_count(Direction::Egress);
        let ingress = self.dispatch_count(Direction::Ingress);
        // forward: 3 + egress + ingress; input: 2 + egress.
        BASE_RULES_BEFORE_DISPATCH + egress + ingress + 2 + egress
    }

    /// The 1-based position of `ip`'s dispatch rule among the dispatch rules of `direction`.
    pub fn dispatch_position(&self, direction: Direction, ip: IpAddr) -> Option<usize> {
        self.dispatch(direction)
            .position(|(a, _)| a == ip)
            .map(|i| i + 1)
    }

    /// The forward hook's verdict on the first packet of a new connection, as the kernel
    /// would reach it with this table loaded.
    pub fn forward(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> Walk {
        let mut walk = Walk {
            accepted: true,
            rules: BASE_RULES_BEFORE_DISPATCH,
            chains: Vec::new(),
        };
        for (direction, field) in [(Direction::Egress, src), (Direction::Ingress, dst)] {
            let remote = if direction == Direction::Egress {
                dst
            } else {
                src
            };
            for (ip, chain) in self.dispatch(direction) {
                walk.rules += 1;
                if ip != field {
                    continue;
                }
                let hit = chain
                    .rules
                    .iter()
                    .position(|r| r.matches(remote, proto, port));
                walk.rules += hit.map_or(chain.rules.len() + 1, |i| i + 1);
                walk.chains.push((chain.name.clone(), hit));
                if hit.is_none() {
                    walk.accepted = false;
                    return walk;
                }
            }
        }
        walk
    }

    /// The whole table except its base chains (those are `base_chains_add`), as scripts of
    /// at most about `max_rules` rules each (whole chains): one `nft -f` per script keeps
    /// nft's memory bounded (it needs some kilobytes per rule while parsing).
    pub fn table_scripts(&self, max_rules: usize) -> Vec<String> {
        let mut scripts = Vec::new();
        let mut out = String::new();
        let mut rules = 0;
        for chain in &self.chains {
            if out.is_empty() {
                let _ = writeln!(out, "table inet {TABLE} {{");
            }
            let field = match chain.direction {
                Direction::Ingress => "saddr",
                Direction::Egress => "daddr",
            };
            let _ = writeln!(out, "\tchain {} {{", chain.name);
            for rule in &chain.rules {
                let _ = writeln!(out, "\t\t{}", rule_text(rule, field));
            }
            out.push_str("\t\tcounter drop\n\t}\n");
            rules += chain.rules.len() + 1;
            if rules >= max_rules {
                out.push_str("}\n");
                scripts.push(std::mem::take(&mut out));
                rules = 0;
            }
        }
        if !out.is_empty() {
            out.push_str("}\n");
            scripts.push(out);
        }
        scripts
    }

    /// Adds the base chains (what switches configuration (c) on).
    pub fn base_chains_add(&self) -> String {
        let mut forward = String::new();
        let mut input = String::new();
        let nd = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, \
                  nd-neighbor-advert, nd-redirect } accept";
        let hook = |name: &str| {
            format!(
                "\tchain {name} {{\n\t\ttype filter hook {name} priority filter + 10; policy accept;\n"
            )
        };
        forward.push_str(&hook("forward"));
        let _ = writeln!(forward, "\t\tct state established,related accept");
        let _ = writeln!(forward, "\t\tct state invalid counter drop");
        let _ = writeln!(forward, "\t\t{nd}");
        input.push_str(&hook("input"));
        let _ = writeln!(input, "\t\tct state established,related accept");
        let _ = writeln!(input, "\t\t{nd}");
        for (ip, chain) in self.dispatch(Direction::Egress) {
            let line = format!("\t\t{} jump {}\n", Addr::One(ip).text("saddr"), chain.name);
            forward.push_str(&line);
            input.push_str(&line);
        }
        for (ip, chain) in self.dispatch(Direction::Ingress) {
            let _ = writeln!(
                forward,
                "\t\t{} jump {}",
                Addr::One(ip).text("daddr"),
                chain.name
            );
        }
        forward.push_str("\t}\n");
        input.push_str("\t}\n");
        format!("table inet {TABLE} {{\n{forward}{input}}}\n")
    }

    /// Removes the base chains (switches (c) off; the per-pod chains stay loaded, unused).
    pub fn base_chains_delete() -> String {
        ["forward", "input"]
            .iter()
            .map(|c| format!("flush chain inet {TABLE} {c}\ndelete chain inet {TABLE} {c}\n"))
            .collect()
    }
}

fn rule_text(rule: &LRule, field: &str) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &rule.addr {
        parts.push(a.text(field));
    }
    if let Some(l4) = &rule.l4 {
        parts.push(format!("meta l4proto {}", l4.proto.nft_name()));
        match l4.ports {
            Some(r) if r.first == r.last => parts.push(format!("th dport {}", r.first)),
            Some(r) => parts.push(format!("th dport {}-{}", r.first, r.last)),
            None => {}
        }
    }
    parts.push("return".to_string());
    parts.join(" ")
}

/// Ports of one protocol a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ports {
    All,
    Ranges(BTreeSet<PortRange>),
}

type PerProto = BTreeMap<Protocol, Ports>;

fn add_port(per: &mut PerProto, proto: Protocol, range: Option<PortRange>) {
    let entry = per
        .entry(proto)
        .or_insert_with(|| Ports::Ranges(BTreeSet::new()));
    match (entry, range) {
        (Ports::All, _) => {}
        (entry, None) => *entry = Ports::All,
        (Ports::Ranges(r), Some(range)) => {
            r.insert(range);
        }
    }
}

fn merge(ranges: &BTreeSet<PortRange>) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last)
            }
            _ => out.push(*r),
        }
    }
    out
}

/// One match per protocol and port range, in protocol order. No `{ .. }` lists: an anonymous
/// set per rule is what nftables would need for them, and the kernel's name allocation for
/// anonymous sets makes loading hundreds of thousands of them quadratic (and iptables
/// controllers have no set there either).
fn l4_matches(per: &PerProto) -> Vec<L4> {
    let mut out = Vec::new();
    for (proto, ports) in per {
        match ports {
            Ports::All => out.push(L4 {
                proto: *proto,
                ports: None,
            }),
            Ports::Ranges(r) => out.extend(merge(r).into_iter().map(|r| L4 {
                proto: *proto,
                ports: Some(r),
            })),
        }
    }
    out
}

struct Index<'c> {
    pods_by_ns: BTreeMap<&'c str, Vec<&'c Pod>>,
    namespaces: Vec<(&'c str, Labels)>,
    memo: HashMap<(NamespaceSel, Selector), Vec<&'c Pod>>,
}

impl<'c> Index<'c> {
    fn new(cluster: &'c Cluster) -> Self {
        let mut pods_by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for p in cluster.pods().filter(|p| p.is_policy_pod()) {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(p);
        }
        let namespaces = cluster
            .namespace_names()
            .into_iter()
            .map(|n| (n, cluster.namespace_labels(n)))
            .collect();
        Index {
            pods_by_ns,
            namespaces,
            memo: HashMap::new(),
        }
    }

    fn peer_pods(&mut self, namespaces: &NamespaceSel, selector: &Selector) -> Vec<&'c Pod> {
        let key = (namespaces.clone(), selector.clone());
        if let Some(p) = self.memo.get(&key) {
            return p.clone();
        }
        let in_ns = |ns: &str| -> Vec<&'c Pod> {
            self.pods_by_ns
                .get(ns)
                .into_iter()
                .flatten()
                .filter(|p| selector.matches(&p.labels))
                .copied()
                .collect()
        };
        let pods: Vec<&Pod> = match namespaces {
            NamespaceSel::Own(ns) => in_ns(ns),
            NamespaceSel::Matching(sel) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .flat_map(|(ns, _)| in_ns(ns))
                .collect(),
        };
        self.memo.insert(key, pods.clone());
        pods
    }

    fn all_pods(&self) -> impl Iterator<Item = &'c Pod> + '_ {
        self.pods_by_ns.values().flatten().copied()
    }
}

/// Builds node `node`'s linear ruleset. Rules whose address is one of `last` are moved to
/// the end of their chain.
pub fn build(cluster: &Cluster, node: &str, last: &[IpAddr]) -> Linear {
    let mut index = Index::new(cluster);
    let mut chains = Vec::new();
    let local: Vec<&Pod> = cluster
        .pods()
        .filter(|p| p.is_policy_pod() && p.node_name.as_deref() == Some(node))
        .collect();
    for pod in local {
        for direction in [Direction::Egress, Direction::Ingress] {
            let policies: Vec<_> = cluster
                .policies()
                .filter(|p| p.rules(direction).is_some() && p.selects(pod))
                .collect();
            if policies.is_empty() {
                continue;
            }
            let mut rules: Vec<LRule> = pod
                .ips
                .iter()
                .map(|ip| LRule {
                    addr: Some(Addr::One(*ip)),
                    l4: None,
                })
                .collect();
            for policy in policies {
                for rule in policy.rules(direction).unwrap_or_default() {
                    policy_rule(&mut index, direction, pod, rule, &mut rules);
                }
            }
            // The probed peer last (a stable partition: the order of the rest is kept).
            let (tail, mut head): (Vec<LRule>, Vec<LRule>) = rules.into_iter().partition(|r| {
                matches!(r.addr, Some(Addr::One(a)) if last.contains(&a) && !pod.ips.contains(&a))
            });
            head.extend(tail);
            let role = match direction {
                Direction::Ingress => "ing",
                Direction::Egress => "egr",
            };
            chains.push(PodChain {
                name: format!("{role}-{}/{}", pod.namespace, pod.name),
                direction,
                ips: pod.ips.clone(),
                rules: head,
            });
        }
    }
    Linear {
        node: node.to_string(),
        chains,
    }
}

fn policy_rule(
    index: &mut Index<'_>,
    direction: Direction,
    target: &Pod,
    rule: &kube_nftpol::model::Rule,
    out: &mut Vec<LRule>,
) {
    // Numeric ports (and, for ingress, named ports resolved on the target); egress named
    // ports are resolved per destination pod below.
    let mut numeric: Option<PerProto> = None;
    let mut named: Vec<(String, Protocol)> = Vec::new();
    if let Some(specs) = &rule.ports {
        let mut per = PerProto::new();
        for spec in specs {
            match &spec.port {
                PortSel::All => add_port(&mut per, spec.protocol, None),
                PortSel::Range(r) => add_port(&mut per, spec.protocol, Some(*r)),
                PortSel::Named(name) => match direction {
                    Direction::Ingress => {
                        if let Some(port) = target.resolve_port(name, spec.protocol) {
                            add_port(&mut per, spec.protocol, Some(PortRange::single(port)));
                        }
                    }
                    Direction::Egress => named.push((name.clone(), spec.protocol)),
                },
            }
        }
        numeric = Some(per);
    }
    let all_ports = rule.ports.is_none();
    let with_named = |per: &PerProto, pod: &Pod| -> PerProto {
        let mut per = per.clone();
        for (name, proto) in &named {
            if let Some(port) = pod.resolve_port(name, *proto) {
                add_port(&mut per, *proto, Some(PortRange::single(port)));
            }
        }
        per
    };
    let mut emit = |addr: Option<Addr>, per: Option<&PerProto>| match per {
        None => out.push(LRule { addr, l4: None }),
        Some(per) => {
            for l4 in l4_matches(per) {
                out.push(LRule { addr, l4: Some(l4) });
            }
        }
    };
    let empty = PerProto::new();
    let numeric_ref = if all_ports { None } else { numeric.as_ref() };
    let peers: Vec<Option<&Peer>> = match &rule.peers {
        None => vec![None],
        Some(peers) => peers.iter().map(Some).collect(),
    };
    for peer in peers {
        match peer {
            Some(Peer::Pods { namespaces, pods }) => {
                for pod in index.peer_pods(namespaces, pods) {
                    for ip in &pod.ips {
                        match numeric_ref {
                            None => emit(Some(Addr::One(*ip)), None),
                            Some(per) => emit(Some(Addr::One(*ip)), Some(&with_named(per, pod))),
                        }
                    }
                }
            }
            Some(Peer::IpBlock(block)) => {
                for (a, b) in ipblock_ranges(block) {
                    let addr = if a == b {
                        Addr::One(a)
                    } else {
                        Addr::Range(a, b)
                    };
                    emit(Some(addr), numeric_ref);
                }
                if !named.is_empty() {
                    for pod in index.all_pods() {
                        for ip in pod.ips.iter().filter(|ip| ipblock_contains(block, ip)) {
                            emit(Some(Addr::One(*ip)), Some(&with_named(&empty, pod)));
                        }
                    }
                }
            }
            None => {
                emit(None, numeric_ref);
                if !named.is_empty() {
                    for pod in index.all_pods() {
                        for ip in &pod.ips {
                            emit(Some(Addr::One(*ip)), Some(&with_named(&empty, pod)));
                        }
                    }
                }
            }
        }
    }
}
