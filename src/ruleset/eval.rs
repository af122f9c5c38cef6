//! A packet evaluator over a [`Ruleset`] value, with the kernel's semantics for exactly the
//! expressions the ruleset uses: base chain → rules in order → `vmap` jump into a target
//! chain → `return` back (or the end of the target chain, an implicit return) → next rule →
//! the base chain's policy (`accept`).
//!
//! It is how tests ask "what would the kernel do with this packet", and how `explain`
//! attributes a verdict to a policy rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Action, AddrField, CtState, Element, Family, Hook, Match, Origin, Ruleset, Set};
use crate::model::Protocol;

/// The layer-4 part of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP, UDP or SCTP with a destination port.
    Port(Protocol, u16),
    Icmp,
    /// ICMPv6 with its type.
    Icmpv6(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub ct: CtState,
}

impl Packet {
    /// The first packet of a new connection to `dst` on `protocol`/`port`.
    pub fn new_connection(src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> Packet {
        Packet {
            src,
            dst,
            l4: L4::Port(protocol, port),
            ct: CtState::New,
        }
    }

    fn family(&self) -> Option<Family> {
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => Some(Family::V4),
            (IpAddr::V6(_), IpAddr::V6(_)) => Some(Family::V6),
            _ => None,
        }
    }

    fn addr(&self, field: AddrField) -> IpAddr {
        match field {
            AddrField::Saddr => self.src,
            AddrField::Daddr => self.dst,
        }
    }
}

/// A rule that fired while evaluating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub chain: String,
    /// Index of the rule in its chain.
    pub rule: usize,
    pub origin: Option<Origin>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub accepted: bool,
    /// Every rule that fired, in order: dispatches, `return`s that allowed, the final
    /// `accept` or `drop` if there was one.
    pub trace: Vec<Step>,
}

impl Decision {
    /// The origins of the rules that decided: the allowing rules, or the rule that dropped.
    pub fn reasons(&self) -> impl Iterator<Item = &Origin> {
        self.trace.iter().filter_map(|s| s.origin.as_ref())
    }
}

enum Flow {
    Continue,
    Return,
    Verdict(bool),
}

/// Runs `packet` through the base chain of `hook`.
pub fn eval(ruleset: &Ruleset, hook: Hook, packet: &Packet) -> Decision {
    let mut trace = Vec::new();
    let accepted = match run_chain(ruleset, hook.as_str(), packet, &mut trace, 0) {
        Flow::Verdict(v) => v,
        // Base chain policy.
        Flow::Continue | Flow::Return => true,
    };
    Decision { accepted, trace }
}

fn run_chain(
    ruleset: &Ruleset,
    name: &str,
    packet: &Packet,
    trace: &mut Vec<Step>,
    depth: u8,
) -> Flow {
    let Some(chain) = ruleset.chains.get(name) else {
        return Flow::Continue;
    };
    for (index, rule) in chain.rules.iter().enumerate() {
        if !rule.matches.iter().all(|m| matches(ruleset, m, packet)) {
            continue;
        }
        let step = Step {
            chain: name.to_string(),
            rule: index,
            origin: rule.origin.clone(),
        };
        match &rule.action {
            Action::Accept => {
                trace.push(step);
                return Flow::Verdict(true);
            }
            Action::Drop => {
                trace.push(step);
                return Flow::Verdict(false);
            }
            Action::Return => {
                trace.push(step);
                return Flow::Return;
            }
            Action::Dispatch { field, family, map } => {
                if packet.family() != Some(*family) {
                    continue;
                }
                let target = ruleset
                    .maps
                    .get(map)
                    .and_then(|m| m.elements.get(&packet.addr(*field)));
                // The kernel caps jump depth; our shape is base → target only.
                if let (Some(target), true) = (target, depth < 16) {
                    trace.push(step);
                    if let Flow::Verdict(v) = run_chain(ruleset, target, packet, trace, depth + 1) {
                        return Flow::Verdict(v);
                    }
                }
            }
        }
    }
    Flow::Continue
}

fn matches(ruleset: &Ruleset, m: &Match, packet: &Packet) -> bool {
    let family = packet.family();
    let set = |name: &str| ruleset.sets.get(name);
    match m {
        Match::CtState(states) => states.contains(&packet.ct),
        Match::Icmpv6Type(types) => {
            family == Some(Family::V6) && matches!(packet.l4, L4::Icmpv6(t) if types.contains(&t))
        }
        Match::AddrInSet {
            field,
            family: f,
            set: s,
        } => family == Some(*f) && set(s).is_some_and(|s| contains_addr(s, packet.addr(*field))),
        Match::AddrNotInSet {
            field,
            family: f,
            set: s,
        } => family == Some(*f) && set(s).is_some_and(|s| !contains_addr(s, packet.addr(*field))),
        // Evaluated packets are pod traffic, never the node talking to itself.
        Match::NotLoopback => true,
        Match::AddrPairInSet { family: f, set: s } => {
            family == Some(*f)
                && set(s).is_some_and(|s| {
                    s.elements
                        .contains(&Element::AddrPair(packet.src, packet.dst))
                })
        }
        Match::AddrProtoPortInSet {
            field,
            family: f,
            set: s,
        } => match packet.l4 {
            L4::Port(proto, port) if family == Some(*f) => set(s).is_some_and(|s| {
                s.elements
                    .contains(&Element::AddrProtoPort(packet.addr(*field), proto, port))
            }),
            _ => false,
        },
        Match::L4Proto(protos) => matches!(packet.l4, L4::Port(p, _) if protos.contains(&p)),
        Match::ProtoPorts(pairs) => matches!(
            packet.l4,
            L4::Port(p, port) if pairs.iter().any(|(q, r)| *q == p && r.contains(port))
        ),
        Match::Dport(ranges) => {
            matches!(packet.l4, L4::Port(_, port) if ranges.iter().any(|r| r.contains(port)))
        }
    }
}

fn contains_addr(set: &Set, addr: IpAddr) -> bool {
    if !set.interval {
        return set.elements.contains(&Element::Addr(addr));
    }
    // Interval sets hold disjoint ranges (validated): the candidate is the range with the
    // greatest start not above `addr`.
    let top = match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::MAX)),
    };
    match set.elements.range(..=Element::Range(addr, top)).next_back() {
        Some(Element::Range(first, last)) => *first <= addr && addr <= *last,
        Some(Element::Addr(a)) => *a == addr,
        _ => false,
    }
}
