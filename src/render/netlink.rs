//! The ruleset as nf_tables bytecode: expressions, set definitions and element encodings,
//! exactly as `nft -f` of the text render produces them (checked by the kernel round-trip
//! test). Pure data — the dataplane turns it into libnftnl objects and netlink messages.
//!
//! Encodings, from the kernel's and libnftnl's headers:
//! - addresses and ports are in network byte order; `ct state` and `meta` values in host order;
//! - in a concatenation every component starts on a 32-bit register boundary and is padded
//!   to 4 bytes; a component at word `w` uses register `NFT_REG_1 + w/4` when `w` is a multiple
//!   of 4, else `NFT_REG32_00 + w` (what nft emits);
//! - interval sets hold a start element per range and an "interval end" element at
//!   `last + 1`; a range reaching the top of the key space has no end element and its start is
//!   marked "open" in the element's user data; when the first range does not start at 0 an
//!   end element at 0 comes first.

use std::net::IpAddr;

use crate::model::{PortRange, Protocol};
use crate::ruleset::{
    Action, AddrField, CtState, Element, Family, Hook, Map, Match, Rule, Set, SetKey,
};

// linux/netfilter/nf_tables.h
pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG32_00: u32 = 8;
pub const NFT_META_NFPROTO: u32 = 15;
pub const NFT_META_L4PROTO: u32 = 16;
pub const NFT_META_IIF: u32 = 4;
/// The loopback device's ifindex, the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
pub const NFT_CMP_LTE: u32 = 3;
pub const NFT_CMP_GTE: u32 = 5;
pub const NFT_CT_STATE: u32 = 0;
pub const NFT_SET_ANONYMOUS: u32 = 0x1;
pub const NFT_SET_CONSTANT: u32 = 0x2;
pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_MAP: u32 = 0x8;
/// Keys are concatenations whose fields may be ranges (Linux 5.6, the pipapo set type).
pub const NFT_SET_CONCAT: u32 = 0x80;
pub const NFT_BYTEORDER_HTON: u32 = 1;
pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
pub const NF_INET_LOCAL_IN: u32 = 1;
pub const NF_INET_FORWARD: u32 = 2;

// nft's datatype ids (src/datatype.h), which name a set's key type.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_ICMP6_TYPE: u32 = 29;
const TYPE_BITS: u32 = 6;

// libnftnl's user data tags (libnftnl/udata.h).
const UDATA_RULE_COMMENT: u8 = 0;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;
const UDATA_SET_ELEM_FLAGS: u8 = 1;
const SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
// nft's byte orders (src/datatype.h: BYTEORDER_INVALID, _HOST_ENDIAN, _BIG_ENDIAN).
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

/// A set a lookup refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetRef {
    Named(String),
    /// Index into the rule's [`RuleDef::anonymous_sets`].
    Anonymous(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Cmp {
        op: u32,
        sreg: u32,
        data: Vec<u8>,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Lookup {
        sreg: u32,
        set: SetRef,
        dreg: Option<u32>,
        /// `!=`: matches when the key is NOT in the set (NFT_LOOKUP_F_INV).
        invert: bool,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    Counter,
    Immediate {
        verdict: Verdict,
    },
}

/// Attributes of a set (or verdict map).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDef {
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// Data type and length, for maps.
    pub data: Option<(u32, u32)>,
    pub userdata: Vec<u8>,
    /// Number of elements, declared for anonymous sets.
    pub size: Option<u32>,
    /// Byte length of each field of a concatenation with intervals (empty otherwise).
    pub concat_fields: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElemDef {
    pub key: Vec<u8>,
    /// Last key of a range, in sets of concatenations with intervals.
    pub key_end: Option<Vec<u8>>,
    pub flags: u32,
    pub verdict: Option<Verdict>,
    pub userdata: Option<Vec<u8>>,
}

/// An anonymous, constant set created with the rule that uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnonymousSet {
    pub def: SetDef,
    pub elements: Vec<ElemDef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleDef {
    pub exprs: Vec<Expr>,
    pub anonymous_sets: Vec<AnonymousSet>,
    pub userdata: Option<Vec<u8>>,
}

/// Base chain attributes: hook number, priority, type `filter`, policy accept.
pub fn hook(hook: Hook) -> (u32, i32) {
    let num = match hook {
        Hook::Forward => NF_INET_FORWARD,
        Hook::Input => NF_INET_LOCAL_IN,
    };
    (num, crate::ruleset::BASE_PRIORITY_OFFSET)
}

/// Register for the 32-bit word `w` of a concatenation.
fn reg_for_word(w: u32) -> u32 {
    if w.is_multiple_of(4) {
        NFT_REG_1 + w / 4
    } else {
        NFT_REG32_00 + w
    }
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

fn addr_type(family: Family) -> u32 {
    match family {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// Offset of the source or destination address in the network header.
fn addr_offset(family: Family, field: AddrField) -> u32 {
    match (family, field) {
        (Family::V4, AddrField::Saddr) => 12,
        (Family::V4, AddrField::Daddr) => 16,
        (Family::V6, AddrField::Saddr) => 8,
        (Family::V6, AddrField::Daddr) => 24,
    }
}

fn udata_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    // Lengths are bounded by callers (comments are cut to 128 bytes).
    out.push(tag);
    out.push(value.len().min(255) as u8);
    out.extend_from_slice(&value[..value.len().min(255)]);
}

fn strz(text: &str) -> Vec<u8> {
    let mut v: Vec<u8> = text.bytes().filter(|b| *b != 0).collect();
    v.truncate(254);
    v.push(0);
    v
}

/// A rule comment as nft stores it.
pub fn rule_comment(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    udata_tlv(&mut out, UDATA_RULE_COMMENT, &strz(text));
    out
}

pub fn set_def(set: &Set) -> SetDef {
    let family = set.key.family();
    let (key_type, key_len, byteorder) = match set.key {
        SetKey::Addr(f) => (addr_type(f), addr_len(f), BYTEORDER_BIG_ENDIAN),
        SetKey::AddrProtoPort(f) => (
            (((addr_type(f) << TYPE_BITS) | TYPE_INET_PROTOCOL) << TYPE_BITS) | TYPE_INET_SERVICE,
            addr_len(family) + 4 + 4,
            BYTEORDER_INVALID,
        ),
        SetKey::AddrPair(f) => (
            (addr_type(f) << TYPE_BITS) | addr_type(f),
            2 * addr_len(f),
            BYTEORDER_INVALID,
        ),
    };
    let mut userdata = Vec::new();
    udata_tlv(
        &mut userdata,
        UDATA_SET_KEYBYTEORDER,
        &byteorder.to_ne_bytes(),
    );
    udata_tlv(
        &mut userdata,
        UDATA_SET_COMMENT,
        &strz(&crate::render::text::comment_text(&set.comment)),
    );
    SetDef {
        flags: if set.interval { NFT_SET_INTERVAL } else { 0 },
        key_type,
        key_len,
        data: None,
        userdata,
        size: None,
        concat_fields: vec![],
    }
}

pub fn map_def(map: &Map) -> SetDef {
    let mut userdata = Vec::new();
    udata_tlv(
        &mut userdata,
        UDATA_SET_KEYBYTEORDER,
        &BYTEORDER_BIG_ENDIAN.to_ne_bytes(),
    );
    udata_tlv(
        &mut userdata,
        UDATA_SET_DATABYTEORDER,
        &BYTEORDER_INVALID.to_ne_bytes(),
    );
    udata_tlv(&mut userdata, UDATA_SET_DATA_INTERVAL, &0u32.to_ne_bytes());
    SetDef {
        flags: NFT_SET_MAP,
        key_type: addr_type(map.family),
        key_len: addr_len(map.family),
        data: Some((NFT_DATA_VERDICT, 0)),
        userdata,
        size: None,
        concat_fields: vec![],
    }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Key bytes of a non-interval element.
fn element_key(e: &Element) -> Vec<u8> {
    match e {
        Element::Addr(a) | Element::Range(a, _) => addr_bytes(a),
        Element::AddrProtoPort(a, proto, port) => {
            let mut k = addr_bytes(a);
            k.extend_from_slice(&[proto.number(), 0, 0, 0]);
            k.extend_from_slice(&port.to_be_bytes());
            k.extend_from_slice(&[0, 0]);
            k
        }
        Element::AddrPair(a, b) => {
            let mut k = addr_bytes(a);
            k.extend(addr_bytes(b));
            k
        }
    }
}

/// Elements of a set as messages carry them. For interval sets this is the whole set (the
/// encoding of one range depends on its neighbours, which is why interval sets are only ever
/// written whole).
pub fn set_elements<'a>(
    set: &Set,
    elements: impl IntoIterator<Item = &'a Element>,
) -> Vec<ElemDef> {
    if !set.interval {
        return elements
            .into_iter()
            .map(|e| ElemDef {
                key: element_key(e),
                key_end: None,
                flags: 0,
                verdict: None,
                userdata: None,
            })
            .collect();
    }
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = elements
        .into_iter()
        .filter_map(|e| match e {
            Element::Range(a, b) => Some((addr_bytes(a), addr_bytes(b))),
            Element::Addr(a) => Some((addr_bytes(a), addr_bytes(a))),
            _ => None,
        })
        .collect();
    intervals(&ranges)
}

/// The interval encoding of disjoint, sorted, non-adjacent big-endian ranges.
fn intervals(ranges: &[(Vec<u8>, Vec<u8>)]) -> Vec<ElemDef> {
    let mut out = Vec::new();
    let elem = |key: Vec<u8>, end: bool| ElemDef {
        key,
        key_end: None,
        flags: if end { NFT_SET_ELEM_INTERVAL_END } else { 0 },
        verdict: None,
        userdata: None,
    };
    if let Some((first, _)) = ranges.first() {
        if first.iter().any(|b| *b != 0) {
            out.push(elem(vec![0; first.len()], true));
        }
    }
    for (start, last) in ranges {
        match successor(last) {
            Some(end) => {
                out.push(elem(start.clone(), false));
                out.push(elem(end, true));
            }
            None => {
                let mut open = Vec::new();
                udata_tlv(
                    &mut open,
                    UDATA_SET_ELEM_FLAGS,
                    &SET_ELEM_F_INTERVAL_OPEN.to_ne_bytes(),
                );
                out.push(ElemDef {
                    userdata: Some(open),
                    ..elem(start.clone(), false)
                });
            }
        }
    }
    out
}

/// `bytes + 1` as a big-endian number of the same width; `None` on overflow.
fn successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut v = bytes.to_vec();
    for b in v.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Some(v);
        }
    }
    None
}

pub fn map_elements(elements: &[(IpAddr, String)]) -> Vec<ElemDef> {
    elements
        .iter()
        .map(|(ip, chain)| ElemDef {
            key: addr_bytes(ip),
            key_end: None,
            flags: 0,
            verdict: Some(Verdict::Jump(chain.clone())),
            userdata: None,
        })
        .collect()
}

pub fn map_keys(keys: &[IpAddr]) -> Vec<ElemDef> {
    keys.iter()
        .map(|ip| ElemDef {
            key: addr_bytes(ip),
            key_end: None,
            flags: 0,
            verdict: None,
            userdata: None,
        })
        .collect()
}

fn anonymous(key_type: u32, key_len: u32, interval: bool, elements: Vec<ElemDef>) -> AnonymousSet {
    let mut userdata = Vec::new();
    udata_tlv(
        &mut userdata,
        UDATA_SET_KEYBYTEORDER,
        &BYTEORDER_BIG_ENDIAN.to_ne_bytes(),
    );
    let mut flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
    if interval {
        flags |= NFT_SET_INTERVAL;
    }
    AnonymousSet {
        def: SetDef {
            flags,
            key_type,
            key_len,
            data: None,
            userdata,
            size: Some(elements.len() as u32),
            concat_fields: vec![],
        },
        elements,
    }
}

/// `meta l4proto . th dport { tcp . 80, udp . 8000-9000 }` as nft builds it: the protocol byte
/// and the port each in a 32-bit field, every element a range (`key` .. `key_end`).
fn proto_port_set(pairs: &std::collections::BTreeSet<(Protocol, PortRange)>) -> AnonymousSet {
    let key = |p: Protocol, port: u16| -> Vec<u8> {
        let mut k = vec![p.number(), 0, 0, 0];
        k.extend_from_slice(&port.to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        k
    };
    let elements: Vec<ElemDef> = pairs
        .iter()
        .map(|(p, r)| ElemDef {
            key: key(*p, r.first),
            key_end: Some(key(*p, r.last)),
            flags: 0,
            verdict: None,
            userdata: None,
        })
        .collect();
    let mut userdata = Vec::new();
    udata_tlv(
        &mut userdata,
        UDATA_SET_KEYBYTEORDER,
        &BYTEORDER_INVALID.to_ne_bytes(),
    );
    AnonymousSet {
        def: SetDef {
            flags: NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL | NFT_SET_CONCAT,
            key_type: (TYPE_INET_PROTOCOL << TYPE_BITS) | TYPE_INET_SERVICE,
            key_len: 8,
            data: None,
            userdata,
            size: Some(elements.len() as u32),
            concat_fields: vec![1, 2],
        },
        elements,
    }
}

fn plain(key: Vec<u8>) -> ElemDef {
    ElemDef {
        key,
        key_end: None,
        flags: 0,
        verdict: None,
        userdata: None,
    }
}

struct Builder {
    exprs: Vec<Expr>,
    sets: Vec<AnonymousSet>,
    /// The `meta nfproto` dependency is emitted once per rule.
    family: Option<Family>,
}

impl Builder {
    fn require_family(&mut self, family: Family) {
        if self.family != Some(family) {
            self.family = Some(family);
            self.exprs.push(Expr::Meta {
                key: NFT_META_NFPROTO,
                dreg: NFT_REG_1,
            });
            self.exprs.push(Expr::Cmp {
                op: NFT_CMP_EQ,
                sreg: NFT_REG_1,
                data: vec![nfproto(family)],
            });
        }
    }

    fn lookup_anonymous(&mut self, set: AnonymousSet) {
        self.sets.push(set);
        let index = self.sets.len() - 1;
        self.exprs.push(Expr::Lookup {
            sreg: NFT_REG_1,
            set: SetRef::Anonymous(index),
            dreg: None,
            invert: false,
        });
    }

    /// Register 1 equals one of `values` (all of one length): a compare for one value, an
    /// anonymous set for several, as nft does.
    fn equals_one_of(&mut self, mut values: Vec<Vec<u8>>, key_type: u32) {
        if values.len() == 1 {
            let data = values.remove(0);
            self.exprs.push(Expr::Cmp {
                op: NFT_CMP_EQ,
                sreg: NFT_REG_1,
                data,
            });
        } else {
            let len = values.first().map_or(0, |v| v.len() as u32);
            let elements = values.into_iter().map(plain).collect();
            self.lookup_anonymous(anonymous(key_type, len, false, elements));
        }
    }

    fn addr(&mut self, family: Family, field: AddrField, dreg: u32) {
        self.exprs.push(Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset: addr_offset(family, field),
            len: addr_len(family),
            dreg,
        });
    }

    fn dport(&mut self, dreg: u32) {
        self.exprs.push(Expr::Payload {
            base: NFT_PAYLOAD_TRANSPORT_HEADER,
            offset: 2,
            len: 2,
            dreg,
        });
    }

    fn push_match(&mut self, m: &Match) {
        match m {
            Match::CtState(states) => {
                let mask: u32 = states.iter().map(|s| ct_bit(*s)).fold(0, |a, b| a | b);
                self.exprs.push(Expr::Ct {
                    key: NFT_CT_STATE,
                    dreg: NFT_REG_1,
                });
                self.exprs.push(Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    len: 4,
                    mask: mask.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                });
                self.exprs.push(Expr::Cmp {
                    op: NFT_CMP_NEQ,
                    sreg: NFT_REG_1,
                    data: vec![0; 4],
                });
            }
            Match::Icmpv6Type(types) => {
                self.require_family(Family::V6);
                self.exprs.push(Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: NFT_REG_1,
                });
                self.exprs.push(Expr::Cmp {
                    op: NFT_CMP_EQ,
                    sreg: NFT_REG_1,
                    data: vec![58],
                });
                self.exprs.push(Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 0,
                    len: 1,
                    dreg: NFT_REG_1,
                });
                self.equals_one_of(types.iter().map(|t| vec![*t]).collect(), TYPE_ICMP6_TYPE);
            }
            Match::AddrInSet { field, family, set }
            | Match::AddrNotInSet { field, family, set } => {
                self.require_family(*family);
                self.addr(*family, *field, NFT_REG_1);
                self.exprs.push(Expr::Lookup {
                    sreg: NFT_REG_1,
                    set: SetRef::Named(set.clone()),
                    dreg: None,
                    invert: matches!(m, Match::AddrNotInSet { .. }),
                });
            }
            Match::NotLoopback => {
                self.exprs.push(Expr::Meta {
                    key: NFT_META_IIF,
                    dreg: NFT_REG_1,
                });
                self.exprs.push(Expr::Cmp {
                    op: NFT_CMP_NEQ,
                    sreg: NFT_REG_1,
                    data: LOOPBACK_IFINDEX.to_ne_bytes().to_vec(),
                });
            }
            Match::AddrPairInSet { family, set } => {
                self.require_family(*family);
                let words = addr_len(*family) / 4;
                self.addr(*family, AddrField::Saddr, NFT_REG_1);
                self.addr(*family, AddrField::Daddr, reg_for_word(words));
                self.exprs.push(Expr::Lookup {
                    sreg: NFT_REG_1,
                    set: SetRef::Named(set.clone()),
                    dreg: None,
                    invert: false,
                });
            }
            Match::AddrProtoPortInSet { field, family, set } => {
                self.require_family(*family);
                let words = addr_len(*family) / 4;
                self.addr(*family, *field, NFT_REG_1);
                self.exprs.push(Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: reg_for_word(words),
                });
                self.dport(reg_for_word(words + 1));
                self.exprs.push(Expr::Lookup {
                    sreg: NFT_REG_1,
                    set: SetRef::Named(set.clone()),
                    dreg: None,
                    invert: false,
                });
            }
            Match::L4Proto(protos) => {
                self.exprs.push(Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: NFT_REG_1,
                });
                self.equals_one_of(
                    protos.iter().map(|p| vec![p.number()]).collect(),
                    TYPE_INET_PROTOCOL,
                );
            }
            Match::ProtoPorts(pairs) => {
                self.exprs.push(Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: NFT_REG_1,
                });
                // nft puts every field of an interval concatenation in network order.
                self.exprs.push(Expr::Byteorder {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    op: NFT_BYTEORDER_HTON,
                    len: 1,
                    size: 2,
                });
                self.dport(reg_for_word(1));
                self.lookup_anonymous(proto_port_set(pairs));
            }
            Match::Dport(ranges) => {
                self.dport(NFT_REG_1);
                match ranges.iter().collect::<Vec<_>>()[..] {
                    [r] if r.first == r.last => {
                        self.exprs.push(Expr::Cmp {
                            op: NFT_CMP_EQ,
                            sreg: NFT_REG_1,
                            data: r.first.to_be_bytes().to_vec(),
                        });
                    }
                    [r] => {
                        self.exprs.push(Expr::Cmp {
                            op: NFT_CMP_GTE,
                            sreg: NFT_REG_1,
                            data: r.first.to_be_bytes().to_vec(),
                        });
                        self.exprs.push(Expr::Cmp {
                            op: NFT_CMP_LTE,
                            sreg: NFT_REG_1,
                            data: r.last.to_be_bytes().to_vec(),
                        });
                    }
                    _ => self.lookup_anonymous(port_set(ranges.iter())),
                }
            }
        }
    }
}

fn port_set<'a>(ranges: impl Iterator<Item = &'a PortRange>) -> AnonymousSet {
    let ranges: Vec<&PortRange> = ranges.collect();
    if ranges.iter().all(|r| r.first == r.last) {
        let elements = ranges
            .iter()
            .map(|r| plain(r.first.to_be_bytes().to_vec()))
            .collect();
        return anonymous(TYPE_INET_SERVICE, 2, false, elements);
    }
    let spans: Vec<(Vec<u8>, Vec<u8>)> = ranges
        .iter()
        .map(|r| {
            (
                r.first.to_be_bytes().to_vec(),
                r.last.to_be_bytes().to_vec(),
            )
        })
        .collect();
    anonymous(TYPE_INET_SERVICE, 2, true, intervals(&spans))
}

fn ct_bit(state: CtState) -> u32 {
    // NF_CT_STATE_BIT(ctinfo) = 1 << (ctinfo + 1); invalid and untracked have their own bits.
    match state {
        CtState::Invalid => 1,
        CtState::Established => 1 << 1,
        CtState::Related => 1 << 2,
        CtState::New => 1 << 3,
        CtState::Untracked => 1 << 6,
    }
}

/// The bytecode of one rule.
pub fn rule(rule: &Rule) -> RuleDef {
    let mut b = Builder {
        exprs: Vec::new(),
        sets: Vec::new(),
        family: None,
    };
    for m in &rule.matches {
        b.push_match(m);
    }
    if rule.counter {
        b.exprs.push(Expr::Counter);
    }
    match &rule.action {
        Action::Accept => b.exprs.push(Expr::Immediate {
            verdict: Verdict::Accept,
        }),
        Action::Drop => b.exprs.push(Expr::Immediate {
            verdict: Verdict::Drop,
        }),
        Action::Return => b.exprs.push(Expr::Immediate {
            verdict: Verdict::Return,
        }),
        Action::Dispatch { field, family, map } => {
            b.require_family(*family);
            b.addr(*family, *field, NFT_REG_1);
            b.exprs.push(Expr::Lookup {
                sreg: NFT_REG_1,
                set: SetRef::Named(map.clone()),
                dreg: Some(NFT_REG_VERDICT),
                invert: false,
            });
        }
    }
    let userdata = rule
        .origin
        .as_ref()
        .map(|o| rule_comment(&crate::render::text::comment_text(&o.to_string())));
    RuleDef {
        exprs: b.exprs,
        anonymous_sets: b.sets,
        userdata,
    }
}

/// Protocol numbers as the bytecode compares them (exposed for tests).
pub fn protocol_byte(p: Protocol) -> u8 {
    p.number()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_follow_nft() {
        assert_eq!(reg_for_word(0), 1);
        assert_eq!(reg_for_word(1), 9);
        assert_eq!(reg_for_word(4), 2);
        assert_eq!(reg_for_word(5), 13);
    }

    #[test]
    fn interval_encoding_matches_nft() {
        // nft --debug=netlink for `elements = { 10.0.0.0/8, 200.0.0.0-255.255.255.255 }`:
        // 0.0.0.0 end, 10.0.0.0, 11.0.0.0 end, 200.0.0.0 (open).
        let r = |a: [u8; 4], b: [u8; 4]| (a.to_vec(), b.to_vec());
        let e = intervals(&[
            r([10, 0, 0, 0], [10, 255, 255, 255]),
            r([200, 0, 0, 0], [255, 255, 255, 255]),
        ]);
        let keys: Vec<(Vec<u8>, u32, bool)> = e
            .iter()
            .map(|e| (e.key.clone(), e.flags, e.userdata.is_some()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (vec![0, 0, 0, 0], 1, false),
                (vec![10, 0, 0, 0], 0, false),
                (vec![11, 0, 0, 0], 1, false),
                (vec![200, 0, 0, 0], 0, true),
            ]
        );
        // A set starting at 0 has no leading end element.
        let e = intervals(&[r([0, 0, 0, 0], [9, 255, 255, 255])]);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].flags, 0);
    }

    #[test]
    fn concatenated_keys_are_padded_per_component() {
        let e = Element::AddrProtoPort("10.0.0.1".parse().expect("ip"), Protocol::Tcp, 80);
        assert_eq!(element_key(&e), vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
    }

    #[test]
    fn set_key_types_match_nft() {
        let set = |key| Set {
            key,
            interval: false,
            comment: "x".into(),
            elements: Default::default(),
        };
        assert_eq!(
            set_def(&set(SetKey::AddrProtoPort(Family::V4))).key_type,
            0x730d
        );
        assert_eq!(set_def(&set(SetKey::AddrProtoPort(Family::V4))).key_len, 12);
        assert_eq!(set_def(&set(SetKey::AddrPair(Family::V6))).key_len, 32);
        assert_eq!(
            set_def(&set(SetKey::Addr(Family::V4))).userdata,
            vec![0, 4, 2, 0, 0, 0, 7, 2, b'x', 0]
        );
    }
}
