//! A Flannel-like two-node cluster built from network namespaces (see integration/README.md
//! for the picture):
//!
//! - `<prefix>ul`, the underlay: bridge `ul0` joining the nodes' `eth0`, and the "outside"
//!   host 192.168.56.100 / fd00:192:168:56::100 on `ul0`, with routes to each node's pod
//!   CIDRs via that node.
//! - `<prefix>na`, `<prefix>nb`, the nodes `node-a` (192.168.56.10, fd00:192:168:56::10) and
//!   `node-b` (.11, ::11): bridge `cni0` (10.244.<n>.1/24, fd00:10:244:<n>::1/64), VXLAN
//!   `flannel.1` (vni 1, port 8472, nolearning, 10.244.<n>.0/32) with the static FDB,
//!   neighbour and route entries flanneld programs for the other node, IPv4/IPv6
//!   forwarding, `bridge-nf-call-ip(6)tables=1`. `n` is 1 for node-a and 2 for node-b, as in
//!   the golden scenarios.
//! - `<prefix>p<id>`, one per pod: `eth0` (veth, MTU 1450) whose peer `vp<id>` is a port of
//!   the node's `cni0`, default routes via the `cni0` addresses.
//!
//! Interface names are fixed inside each namespace (they are per namespace), so they are
//! short and never collide between clusters built in parallel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::netns::Netns;
use crate::servers::{Ports, Servers};

pub const NODE_NAMES: [&str; 2] = ["node-a", "node-b"];
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 100);
pub const VXLAN_MTU: u32 = 1450;

pub fn outside_v6() -> Ipv6Addr {
    parse6("fd00:192:168:56::100")
}

/// Node `i` (0-based): 192.168.56.10+i.
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 56, 10 + i as u8)
}

/// Node `i`: fd00:192:168:56::10+i (written in decimal digits, like the v4 address).
pub fn node_v6(i: usize) -> Ipv6Addr {
    parse6(&format!("fd00:192:168:56::{}", 10 + i))
}

/// The `n` of node `i`'s pod CIDRs 10.244.<n>.0/24 and fd00:10:244:<n>::/64.
pub fn cidr_index(i: usize) -> usize {
    i + 1
}

/// Node `i`'s own address on `cni0`, inside its pod CIDR.
pub fn cni_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, cidr_index(i) as u8, 1)
}

pub fn cni_v6(i: usize) -> Ipv6Addr {
    parse6(&format!("fd00:10:244:{}::1", cidr_index(i)))
}

/// Node `i`'s address on `flannel.1`: the source of its own traffic to other nodes' pods.
pub fn vtep_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, cidr_index(i) as u8, 0)
}

pub fn pod_v4(node: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, cidr_index(node) as u8, host)
}

/// `fd00:10:244:<n>::<host>`, the host part written with the same digits as in IPv4.
pub fn pod_v6(node: usize, host: u8) -> Ipv6Addr {
    parse6(&format!("fd00:10:244:{}::{host}", cidr_index(node)))
}

/// Node `i`'s pod CIDRs: 10.244.<n>.0/24 and fd00:10:244:<n>::/64 (what its Node object's
/// `spec.podCIDRs`, or Flannel's `subnet.env`, says).
pub fn pod_cidrs(i: usize) -> [IpNet; 2] {
    let n = cidr_index(i);
    [format!("10.244.{n}.0/24"), format!("fd00:10:244:{n}::/64")].map(|text| {
        text.parse()
            .unwrap_or_else(|e| panic!("bad CIDR {text}: {e}"))
    })
}

/// Every address node `i` has (node IPs, `cni0`, `flannel.1`): traffic from these is the
/// node's own.
pub fn node_own_addrs(i: usize) -> [IpAddr; 5] {
    [
        node_v4(i).into(),
        node_v6(i).into(),
        cni_v4(i).into(),
        cni_v6(i).into(),
        vtep_v4(i).into(),
    ]
}

fn parse6(text: &str) -> Ipv6Addr {
    text.parse()
        .unwrap_or_else(|e| panic!("bad IPv6 address {text}: {e}"))
}

fn mac(kind: u8, i: usize) -> String {
    format!("02:6b:6e:{kind:02x}:00:{:02x}", i + 1)
}

/// The MAC of node `i`'s `flannel.1`, fixed so the other node's entries can name it.
pub fn vtep_mac(i: usize) -> String {
    mac(3, i)
}

/// Sysctls that make addresses usable at once (no duplicate address detection).
const NO_DAD: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

pub struct Node {
    pub name: &'static str,
    pub index: usize,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    servers: Option<Servers>,
    pub ns: Netns,
}

impl Node {
    pub fn addrs(&self) -> Vec<IpAddr> {
        vec![self.v4.into(), self.v6.into()]
    }
}

/// A pod's network: namespace, addresses, the node-side veth.
pub struct PodNet {
    servers: Option<Servers>,
    pub ns: Netns,
    pub node: usize,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// The veth's name in the node namespace (a port of `cni0`).
    pub veth: String,
}

impl PodNet {
    pub fn addrs(&self) -> Vec<IpAddr> {
        let v4 = self.v4.map(IpAddr::from);
        let v6 = self.v6.map(IpAddr::from);
        v4.into_iter().chain(v6).collect()
    }
}

pub struct Cluster {
    pub prefix: String,
    ports: Ports,
    next_pod: usize,
    outside_servers: Option<Servers>,
    pub nodes: Vec<Node>,
    pub underlay: Netns,
}

impl Cluster {
    /// Builds the underlay and both nodes; every endpoint serves `ports`.
    pub fn new(prefix: &str, ports: Ports) -> Cluster {
        let underlay = Netns::create(&format!("{prefix}ul"));
        underlay.sysctls(&NO_DAD);
        // The underlay bridge is a plain wire: no netfilter on it.
        if underlay.has_sysctl("net.bridge.bridge-nf-call-iptables") {
            underlay.sysctls(&[
                ("net.bridge.bridge-nf-call-iptables", "0"),
                ("net.bridge.bridge-nf-call-ip6tables", "0"),
            ]);
        }
        underlay.ip(&[
            "link set lo up".into(),
            "link add ul0 type bridge".into(),
            format!("link set ul0 address {}", mac(1, 99)),
            "link set ul0 up".into(),
            format!("addr add {OUTSIDE_V4}/24 dev ul0"),
            format!("addr add {}/64 dev ul0 nodad", outside_v6()),
        ]);
        let mut cluster = Cluster {
            prefix: prefix.to_string(),
            ports,
            next_pod: 0,
            outside_servers: None,
            nodes: Vec::new(),
            underlay,
        };
        for (index, name) in NODE_NAMES.iter().enumerate() {
            let node = cluster.build_node(index, name);
            cluster.nodes.push(node);
        }
        cluster.program_flannel_peers();
        for node in &mut cluster.nodes {
            let mut addrs = node.addrs();
            addrs.push(cni_v4(node.index).into());
            addrs.push(cni_v6(node.index).into());
            node.servers = Some(Servers::start(&node.ns, &addrs, &cluster.ports));
        }
        let outside = [IpAddr::from(OUTSIDE_V4), outside_v6().into()];
        cluster.outside_servers = Some(Servers::start(&cluster.underlay, &outside, &cluster.ports));
        cluster
    }

    fn build_node(&self, i: usize, name: &'static str) -> Node {
        let suffix = if i == 0 { "na" } else { "nb" };
        let ns = Netns::create(&format!("{}{suffix}", self.prefix));
        for key in [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
        ] {
            assert!(
                ns.has_sysctl(key),
                "{key} does not exist in a fresh network namespace: br_netfilter is not loaded \
                 or not per-namespace on this kernel"
            );
        }
        ns.sysctls(&NO_DAD);
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
            ("net.bridge.bridge-nf-call-ip6tables", "1"),
        ]);
        let n = cidr_index(i);
        let (v4, v6) = (node_v4(i), node_v6(i));
        let uplink = format!("u{i}");
        self.underlay.ip(&[
            format!(
                "link add {uplink} type veth peer name eth0 netns {}",
                ns.name
            ),
            format!("link set {uplink} master ul0"),
            format!("link set {uplink} up"),
            format!("route add 10.244.{n}.0/24 via {v4}"),
            format!("route add fd00:10:244:{n}::/64 via {v6}"),
        ]);
        ns.ip(&[
            "link set lo up".into(),
            format!("link set eth0 address {}", mac(2, i)),
            "link set eth0 up".into(),
            format!("addr add {v4}/24 dev eth0"),
            format!("addr add {v6}/64 dev eth0 nodad"),
            "link add cni0 type bridge".into(),
            // A fixed MAC: a bridge otherwise takes its ports' lowest MAC, which changes
            // as pods come and go and would break the pods' neighbour entries.
            format!("link set cni0 address {}", mac(4, i)),
            "link set cni0 up".into(),
            format!("addr add {}/24 dev cni0", cni_v4(i)),
            format!("addr add {}/64 dev cni0 nodad", cni_v6(i)),
            format!(
                "link add flannel.1 type vxlan id 1 local {v4} dev eth0 dstport 8472 nolearning"
            ),
            format!("link set flannel.1 address {}", vtep_mac(i)),
            "link set flannel.1 up".into(),
            format!("addr add {}/32 dev flannel.1", vtep_v4(i)),
        ]);
        Node {
            name,
            index: i,
            v4,
            v6,
            servers: None,
            ns,
        }
    }

    /// What flanneld programs on each node for every other node.
    fn program_flannel_peers(&self) {
        for node in &self.nodes {
            let mut fdb = Vec::new();
            let mut ip = Vec::new();
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let m = cidr_index(other.index);
                let mac = vtep_mac(other.index);
                fdb.push(format!("fdb append {mac} dev flannel.1 dst {}", other.v4));
                ip.push(format!(
                    "neigh replace 10.244.{m}.0 lladdr {mac} dev flannel.1 nud permanent"
                ));
                ip.push(format!(
                    "route replace 10.244.{m}.0/24 via 10.244.{m}.0 dev flannel.1 onlink"
                ));
                ip.push(format!(
                    "neigh replace fd00:10:244:{m}:: lladdr {mac} dev flannel.1 nud permanent"
                ));
                ip.push(format!(
                    "route replace fd00:10:244:{m}::/64 via fd00:10:244:{m}:: dev flannel.1 onlink"
                ));
            }
            node.ns.bridge(&fdb);
            node.ns.ip(&ip);
        }
    }

    /// A pod namespace on node `node` with host part `host` in the families asked for,
    /// serving the cluster's ports.
    pub fn add_pod(&mut self, node: usize, host: u8, v4: bool, v6: bool) -> PodNet {
        let id = self.next_pod;
        self.next_pod += 1;
        let ns = Netns::create(&format!("{}p{id}", self.prefix));
        ns.sysctls(&NO_DAD);
        let veth = format!("vp{id}");
        let node_ns = &self
            .nodes
            .get(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .ns;
        node_ns.ip(&[
            format!(
                "link add {veth} mtu {VXLAN_MTU} type veth peer name eth0 mtu {VXLAN_MTU} netns {}",
                ns.name
            ),
            format!("link set {veth} master cni0"),
            format!("link set {veth} up"),
        ]);
        let mut pod = PodNet {
            servers: None,
            ns,
            node,
            v4: v4.then(|| pod_v4(node, host)),
            v6: v6.then(|| pod_v6(node, host)),
            veth,
        };
        let mut commands = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
        if let Some(a) = pod.v4 {
            commands.push(format!("addr add {a}/24 dev eth0"));
            commands.push(format!("route add default via {}", cni_v4(node)));
        }
        if let Some(a) = pod.v6 {
            commands.push(format!("addr add {a}/64 dev eth0 nodad"));
            commands.push(format!("route add ::/0 via {}", cni_v6(node)));
        }
        pod.ns.ip(&commands);
        pod.servers = Some(Servers::start(&pod.ns, &pod.addrs(), &self.ports));
        pod
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes.get(i).unwrap_or_else(|| panic!("no node {i}"))
    }

    /// `bridge link set dev <veth> hairpin on`: the bridge may send a frame back out of the
    /// port it came in on (a pod reaching itself through a Service).
    pub fn hairpin_on(&self, pod: &PodNet) {
        self.node(pod.node)
            .ns
            .bridge(&[format!("link set dev {} hairpin on", pod.veth)]);
    }
}
