//! The ruleset as a value: exactly what goes into the kernel, typed (no rule strings), in a
//! canonical order. The compiler produces it; the text renderer prints it; [`eval`] runs
//! packets through it; the dataplane diffs two of them.
//!
//! The shape (see `rules/README.md`): one table `inet kube-nftpol`; base chains `forward`
//! and `input`; verdict maps from local pod address to the pod's target chain, per direction
//! and family; target chains with one `return` per allowing (policy rule × peer × port group)
//! and a final `drop`; named sets of peer addresses shared between chains.

pub mod diff;
pub mod eval;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::model::{Direction, PortRange, Protocol};

/// The one table we own.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "kube-nftpol";

/// Base chains run after kube-proxy's DNAT (priority dstnat) and after the `filter` tables of
/// Flannel, firewalld and friends, so we see real pod addresses and have the last word.
pub const BASE_PRIORITY_OFFSET: i32 = 10;

/// Longest object name the kernel accepts (NFT_NAME_MAXLEN is 256 bytes with the NUL).
pub const KERNEL_NAME_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

/// What a set's elements are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKey {
    /// `ipv4_addr` / `ipv6_addr`; with [`Set::interval`] the elements are ranges.
    Addr(Family),
    /// `ipvX_addr . inet_proto . inet_service`: a destination pod and one of its named ports.
    AddrProtoPort(Family),
    /// `ipvX_addr . ipvX_addr`: (source, destination) pairs.
    AddrPair(Family),
}

impl SetKey {
    pub fn family(self) -> Family {
        match self {
            SetKey::Addr(f) | SetKey::AddrProtoPort(f) | SetKey::AddrPair(f) => f,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Addr(IpAddr),
    /// Inclusive range, in interval sets.
    Range(IpAddr, IpAddr),
    AddrProtoPort(IpAddr, Protocol, u16),
    AddrPair(IpAddr, IpAddr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub key: SetKey,
    pub interval: bool,
    /// What the set stands for, in Kubernetes terms.
    pub comment: String,
    pub elements: BTreeSet<Element>,
}

/// A verdict map: local pod address → `jump <target chain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    pub family: Family,
    pub elements: BTreeMap<IpAddr, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Forward,
    Input,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
        }
    }
}

/// Conntrack states a rule can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    Invalid,
    Established,
    Related,
    New,
    Untracked,
}

impl CtState {
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::Invalid => "invalid",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::New => "new",
            CtState::Untracked => "untracked",
        }
    }
}

/// ICMPv6 neighbour discovery (RFC 4861): never subject to policy, or IPv6 pods could not even
/// resolve each other's link-layer addresses.
pub const ICMPV6_ND_TYPES: [u8; 5] = [133, 134, 135, 136, 137];

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    CtState(BTreeSet<CtState>),
    /// `icmpv6 type { ... }`.
    Icmpv6Type(BTreeSet<u8>),
    /// `ip saddr @set` (the family comes from the set).
    AddrInSet {
        field: AddrField,
        family: Family,
        set: String,
    },
    /// `ip saddr != @set`: the address is not in the set (family from the set).
    AddrNotInSet {
        field: AddrField,
        family: Family,
        set: String,
    },
    /// `iif != "lo"`: the packet did not come from the node itself through the loopback
    /// device (ifindex 1 in every network namespace).
    NotLoopback,
    /// `ip saddr . ip daddr @set`.
    AddrPairInSet {
        family: Family,
        set: String,
    },
    /// `ip daddr . meta l4proto . th dport @set`.
    AddrProtoPortInSet {
        field: AddrField,
        family: Family,
        set: String,
    },
    /// `meta l4proto { tcp, udp }`.
    L4Proto(BTreeSet<Protocol>),
    /// `th dport { 80, 8000-9000 }`; always follows an [`Match::L4Proto`].
    Dport(BTreeSet<PortRange>),
    /// `meta l4proto . th dport { tcp . 80, udp . 8000-9000 }`: every protocol and port of a
    /// rule in one lookup. Needs intervals in concatenations (Linux 5.6); the compiler only
    /// emits it when the kernel probe found them (see [`crate::compile::Options`]).
    ProtoPorts(BTreeSet<(Protocol, PortRange)>),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Drop,
    Return,
    /// `ip saddr vmap @map`: jump to the chain the map holds for the address, if any.
    Dispatch {
        field: AddrField,
        family: Family,
        map: String,
    },
}

/// Why a rule is there; rendered as the rule's comment, reported by [`eval`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Rule `rule` of `spec.<direction>` of policy `namespace/name` allows this.
    Allow {
        policy: String,
        direction: Direction,
        rule: usize,
    },
    /// Pods selected by these policies are isolated in this direction: what no rule allowed.
    Isolated {
        direction: Direction,
        policies: Vec<String>,
    },
    /// Part of the fixed skeleton.
    Builtin(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Allow {
                policy,
                direction,
                rule,
            } => write!(f, "{policy} {direction}[{rule}]"),
            Origin::Isolated {
                direction,
                policies,
            } => {
                write!(f, "{direction} isolated by {}", policies.join(","))
            }
            Origin::Builtin(what) => f.write_str(what),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    pub action: Action,
    pub origin: Option<Origin>,
}

/// A base chain's hook; priority is `filter + BASE_PRIORITY_OFFSET`, policy `accept`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// Everything in table `inet kube-nftpol`, keyed by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, Set>,
    pub maps: BTreeMap<String, Map>,
    pub chains: BTreeMap<String, Chain>,
}

impl Ruleset {
    /// Checks what the kernel would check when the ruleset is loaded: every referenced set,
    /// map and chain exists with a fitting type, element families match their set, names fit
    /// the kernel's limit, and jumps do not loop. The compiler guarantees all of this; tests
    /// and the dataplane call it to catch a mistake before the kernel does.
    pub fn validate(&self) -> Result<(), String> {
        let names = self
            .sets
            .keys()
            .chain(self.maps.keys())
            .chain(self.chains.keys());
        for name in names {
            if name.is_empty() || name.len() > KERNEL_NAME_MAX {
                return Err(format!(
                    "name {name:?} is empty or longer than {KERNEL_NAME_MAX}"
                ));
            }
        }
        for (name, set) in &self.sets {
            let family = set.key.family();
            for e in &set.elements {
                let ok = match (set.key, e) {
                    (SetKey::Addr(_), Element::Addr(a)) => Family::of(a) == family,
                    (SetKey::Addr(_), Element::Range(a, b)) => {
                        set.interval && Family::of(a) == family && Family::of(b) == family && a <= b
                    }
                    (SetKey::AddrProtoPort(_), Element::AddrProtoPort(a, _, _)) => {
                        Family::of(a) == family
                    }
                    (SetKey::AddrPair(_), Element::AddrPair(a, b)) => {
                        Family::of(a) == family && Family::of(b) == family
                    }
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "set {name}: element {e:?} does not fit key {:?}",
                        set.key
                    ));
                }
            }
        }
        for (name, map) in &self.maps {
            for (addr, chain) in &map.elements {
                if Family::of(addr) != map.family {
                    return Err(format!("map {name}: {addr} is not {:?}", map.family));
                }
                match self.chains.get(chain) {
                    Some(c) if c.hook.is_none() => {}
                    _ => return Err(format!("map {name}: jump to missing or base chain {chain}")),
                }
            }
        }
        for (name, chain) in &self.chains {
            for rule in &chain.rules {
                for m in &rule.matches {
                    let (set, want) = match m {
                        Match::AddrInSet { family, set, .. }
                        | Match::AddrNotInSet { family, set, .. } => (set, SetKey::Addr(*family)),
                        Match::AddrPairInSet { family, set } => (set, SetKey::AddrPair(*family)),
                        Match::AddrProtoPortInSet { family, set, .. } => {
                            (set, SetKey::AddrProtoPort(*family))
                        }
                        _ => continue,
                    };
                    match self.sets.get(set) {
                        Some(s) if s.key == want => {}
                        _ => return Err(format!("chain {name}: missing or mistyped set {set}")),
                    }
                }
                if let Action::Dispatch { family, map, .. } = &rule.action {
                    match self.maps.get(map) {
                        Some(m) if m.family == *family => {}
                        _ => return Err(format!("chain {name}: missing or mistyped map {map}")),
                    }
                    if chain.hook.is_none() {
                        return Err(format!("chain {name}: dispatch outside a base chain"));
                    }
                }
            }
        }
        Ok(())
    }
}
