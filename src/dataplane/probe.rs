//! Can this kernel hold our ruleset? Asked once at start by sending, in check mode (a batch
//! without its end marker: the kernel validates every message, answers each, then aborts),
//! a ruleset that uses every kind of object and every rule shape the compiler emits, into a
//! scratch table (`inet kube-nftpol-probe`). Nothing is committed, so the probe cannot touch
//! traffic. A kernel that lacks something fails here, naming the operation it refused,
//! instead of in the middle of enforcing. No decision is ever taken from the kernel's version
//! string.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::netlink::{Error, Netlink};
use crate::model::{Direction, PortRange, Protocol};
use crate::ruleset::diff::full;
use crate::ruleset::{
    Action, AddrField, Chain, CtState, Element, Family, Hook, Map, Match, Origin, Rule, Ruleset,
    Set, SetKey, ICMPV6_ND_TYPES,
};

pub const PROBE_TABLE: &str = "kube-nftpol-probe";

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Every object and rule shape of the ruleset was accepted.
    pub ruleset: bool,
    /// Intervals inside concatenations (Linux 5.6): `meta l4proto . th dport { tcp . 80-90 }`.
    /// Without them the compiler falls back to one rule per protocol group.
    pub concat_intervals: bool,
    /// Why `concat_intervals` is false, as the kernel said it.
    pub concat_intervals_refused: Option<String>,
}

impl Features {
    /// The ruleset shape for this kernel.
    pub fn options(&self) -> crate::compile::Options {
        crate::compile::Options {
            concat_ports: self.concat_intervals,
            ..Default::default()
        }
    }
}

/// A ruleset using intervals inside a concatenation, the one optional feature.
pub fn concat_sample() -> Ruleset {
    let mut rs = Ruleset::default();
    let pairs = BTreeSet::from([
        (Protocol::Tcp, PortRange::single(80)),
        (
            Protocol::Udp,
            PortRange {
                first: 8000,
                last: 9000,
            },
        ),
    ]);
    let rule = Rule {
        matches: vec![Match::ProtoPorts(pairs)],
        counter: false,
        action: Action::Return,
        origin: None,
    };
    rs.chains.insert(
        "target".into(),
        Chain {
            hook: None,
            rules: vec![rule],
        },
    );
    rs
}

/// A small ruleset with one of everything the compiler can emit.
pub fn sample() -> Ruleset {
    let ip = |s: &str| -> IpAddr { s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])) };
    let mut rs = Ruleset::default();
    let set = |key, interval, elements: Vec<Element>| Set {
        key,
        interval,
        comment: "probe".into(),
        elements: elements.into_iter().collect(),
    };
    for family in Family::BOTH {
        let (a, b) = match family {
            Family::V4 => (ip("10.0.0.1"), ip("10.0.0.2")),
            Family::V6 => (ip("fd00::1"), ip("fd00::2")),
        };
        let s = family.suffix();
        rs.sets.insert(
            format!("pods-{s}"),
            set(SetKey::Addr(family), false, vec![Element::Addr(a)]),
        );
        rs.sets.insert(
            format!("cidr-{s}"),
            set(SetKey::Addr(family), true, vec![Element::Range(a, b)]),
        );
        rs.sets.insert(
            format!("nport-{s}"),
            set(
                SetKey::AddrProtoPort(family),
                false,
                vec![Element::AddrProtoPort(a, Protocol::Tcp, 80)],
            ),
        );
        rs.sets.insert(
            format!("self-{s}"),
            set(
                SetKey::AddrPair(family),
                false,
                vec![Element::AddrPair(a, a)],
            ),
        );
        rs.maps.insert(
            format!("map-{s}"),
            Map {
                family,
                elements: BTreeMap::from([(a, "target".to_string())]),
            },
        );
    }
    let ret = |matches: Vec<Match>| Rule {
        matches,
        counter: false,
        action: Action::Return,
        origin: None,
    };
    let mut target = Vec::new();
    for family in Family::BOTH {
        let s = family.suffix();
        let field = AddrField::Saddr;
        target.push(ret(vec![
            Match::AddrInSet {
                field,
                family,
                set: format!("pods-{s}"),
            },
            Match::L4Proto(BTreeSet::from([Protocol::Tcp, Protocol::Udp])),
            Match::Dport(BTreeSet::from([
                PortRange::single(53),
                PortRange {
                    first: 8000,
                    last: 9000,
                },
            ])),
        ]));
        target.push(ret(vec![
            Match::AddrInSet {
                field,
                family,
                set: format!("cidr-{s}"),
            },
            Match::L4Proto(BTreeSet::from([Protocol::Sctp])),
            Match::Dport(BTreeSet::from([PortRange {
                first: 80,
                last: 81,
            }])),
        ]));
        target.push(ret(vec![Match::AddrProtoPortInSet {
            field: AddrField::Daddr,
            family,
            set: format!("nport-{s}"),
        }]));
    }
    target.push(Rule {
        matches: vec![],
        counter: true,
        action: Action::Drop,
        origin: Some(Origin::Isolated {
            direction: Direction::Ingress,
            policies: vec!["probe/probe".into()],
        }),
    });
    rs.chains.insert(
        "target".into(),
        Chain {
            hook: None,
            rules: target,
        },
    );
    let mut base = vec![
        Rule {
            matches: vec![Match::CtState(BTreeSet::from([
                CtState::Established,
                CtState::Related,
            ]))],
            counter: false,
            action: Action::Accept,
            origin: Some(Origin::Builtin("probe")),
        },
        Rule {
            matches: vec![Match::Icmpv6Type(ICMPV6_ND_TYPES.into_iter().collect())],
            counter: false,
            action: Action::Accept,
            origin: None,
        },
    ];
    for family in Family::BOTH {
        let s = family.suffix();
        // The --fail-closed guard: `iif != "lo"` and an inverted lookup.
        base.push(Rule {
            matches: vec![
                Match::NotLoopback,
                Match::AddrInSet {
                    field: AddrField::Saddr,
                    family,
                    set: format!("cidr-{s}"),
                },
                Match::AddrNotInSet {
                    field: AddrField::Saddr,
                    family,
                    set: format!("pods-{s}"),
                },
            ],
            counter: true,
            action: Action::Drop,
            origin: None,
        });
        base.push(Rule {
            matches: vec![Match::AddrPairInSet {
                family,
                set: format!("self-{s}"),
            }],
            counter: false,
            action: Action::Accept,
            origin: None,
        });
        base.push(Rule {
            matches: vec![],
            counter: false,
            action: Action::Dispatch {
                field: AddrField::Daddr,
                family,
                map: format!("map-{s}"),
            },
            origin: None,
        });
    }
    rs.chains.insert(
        "forward".into(),
        Chain {
            hook: Some(Hook::Forward),
            rules: base,
        },
    );
    rs
}

/// Checks [`sample`] (required) and [`concat_sample`] (optional) against the kernel without
/// committing either.
pub fn probe() -> Result<Features, Error> {
    let mut nl = Netlink::open_for(PROBE_TABLE)?;
    nl.check(&full(&sample()))?;
    let concat = nl.check(&full(&concat_sample()));
    Ok(Features {
        ruleset: true,
        concat_intervals: concat.is_ok(),
        concat_intervals_refused: concat.err().map(|e| e.to_string()),
    })
}
