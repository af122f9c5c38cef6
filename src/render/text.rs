//! Canonical nft text of a ruleset: what `nft -f` accepts and loads into the same table the
//! netlink dataplane builds. Deterministic: sets, maps and chains sorted by name (base chains
//! last), set elements sorted, one element per line so golden diffs stay readable.

use std::fmt::Write;

use crate::compile::as_prefix;
use crate::model::PortRange;
use crate::ruleset::{
    Action, AddrField, Chain, Element, Family, Map, Match, Rule, Ruleset, Set, SetKey,
    BASE_PRIORITY_OFFSET, TABLE_FAMILY, TABLE_NAME,
};

/// Longest comment we write; the kernel's limit for rule user data is 256 bytes.
pub const COMMENT_MAX: usize = 128;

/// The whole table as an nft script (`table inet kube-nftpol { ... }`).
pub fn render(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {TABLE_FAMILY} {TABLE_NAME} {{");
    let mut blocks: Vec<String> = Vec::new();
    for (name, set) in &ruleset.sets {
        blocks.push(set_block(name, set));
    }
    for (name, map) in &ruleset.maps {
        blocks.push(map_block(name, map));
    }
    let (base, target): (Vec<_>, Vec<_>) =
        ruleset.chains.iter().partition(|(_, c)| c.hook.is_some());
    for (name, chain) in target.into_iter().chain(base) {
        blocks.push(chain_block(name, chain));
    }
    out.push_str(&blocks.join("\n"));
    out.push_str("}\n");
    out
}

fn set_block(name: &str, set: &Set) -> String {
    let mut b = format!("\tset {name} {{\n\t\ttype {}\n", key_type(set.key));
    if set.interval {
        b.push_str("\t\tflags interval\n");
    }
    let _ = writeln!(b, "\t\tcomment \"{}\"", comment_text(&set.comment));
    let elements: Vec<String> = set.elements.iter().map(element).collect();
    push_elements(&mut b, &elements);
    b.push_str("\t}\n");
    b
}

fn map_block(name: &str, map: &Map) -> String {
    let mut b = format!(
        "\tmap {name} {{\n\t\ttype {} : verdict\n",
        addr_type(map.family)
    );
    let elements: Vec<String> = map
        .elements
        .iter()
        .map(|(ip, chain)| format!("{ip} : jump {chain}"))
        .collect();
    push_elements(&mut b, &elements);
    b.push_str("\t}\n");
    b
}

fn push_elements(b: &mut String, elements: &[String]) {
    if elements.is_empty() {
        return;
    }
    b.push_str("\t\telements = {\n");
    for e in elements {
        let _ = writeln!(b, "\t\t\t{e},");
    }
    b.push_str("\t\t}\n");
}

fn chain_block(name: &str, chain: &Chain) -> String {
    let mut b = format!("\tchain {name} {{\n");
    if let Some(hook) = chain.hook {
        let _ = writeln!(
            b,
            "\t\ttype filter hook {} priority filter + {BASE_PRIORITY_OFFSET}; policy accept;",
            hook.as_str()
        );
    }
    for rule in &chain.rules {
        let _ = writeln!(b, "\t\t{}", rule_text(rule));
    }
    b.push_str("\t}\n");
    b
}

/// One rule in nft syntax.
pub fn rule_text(rule: &Rule) -> String {
    let mut parts: Vec<String> = rule.matches.iter().map(match_text).collect();
    if rule.counter {
        parts.push("counter".to_string());
    }
    parts.push(match &rule.action {
        Action::Accept => "accept".to_string(),
        Action::Drop => "drop".to_string(),
        Action::Return => "return".to_string(),
        Action::Dispatch { field, family, map } => {
            format!("{} vmap @{map}", addr_expr(*family, *field))
        }
    });
    if let Some(origin) = &rule.origin {
        parts.push(format!("comment \"{}\"", comment_text(&origin.to_string())));
    }
    parts.join(" ")
}

fn match_text(m: &Match) -> String {
    match m {
        Match::CtState(states) => {
            let s: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            format!("ct state {}", s.join(","))
        }
        Match::Icmpv6Type(types) => {
            let t: Vec<String> = types.iter().map(|t| icmpv6_type_name(*t)).collect();
            format!("icmpv6 type {}", braces(&t))
        }
        Match::AddrInSet { field, family, set } => format!("{} @{set}", addr_expr(*family, *field)),
        Match::AddrNotInSet { field, family, set } => {
            format!("{} != @{set}", addr_expr(*family, *field))
        }
        Match::NotLoopback => "iif != \"lo\"".to_string(),
        Match::AddrPairInSet { family, set } => format!(
            "{} . {} @{set}",
            addr_expr(*family, AddrField::Saddr),
            addr_expr(*family, AddrField::Daddr)
        ),
        Match::AddrProtoPortInSet { field, family, set } => {
            format!(
                "{} . meta l4proto . th dport @{set}",
                addr_expr(*family, *field)
            )
        }
        Match::L4Proto(protos) => {
            let p: Vec<String> = protos.iter().map(|p| p.nft_name().to_string()).collect();
            format!("meta l4proto {}", braces(&p))
        }
        Match::ProtoPorts(pairs) => {
            let p: Vec<String> = pairs
                .iter()
                .map(|(proto, r)| format!("{} . {}", proto.nft_name(), port_range(r)))
                .collect();
            // Always a set: nft needs the braces for a concatenation with intervals.
            format!("meta l4proto . th dport {{ {} }}", p.join(", "))
        }
        Match::Dport(ranges) => {
            let r: Vec<String> = ranges.iter().map(port_range).collect();
            format!("th dport {}", braces(&r))
        }
    }
}

/// `x` for one item, `{ x, y }` for several.
fn braces(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

fn port_range(r: &PortRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}-{}", r.first, r.last)
    }
}

fn addr_expr(family: Family, field: AddrField) -> String {
    let proto = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let field = match field {
        AddrField::Saddr => "saddr",
        AddrField::Daddr => "daddr",
    };
    format!("{proto} {field}")
}

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn key_type(key: SetKey) -> String {
    match key {
        SetKey::Addr(f) => addr_type(f).to_string(),
        SetKey::AddrProtoPort(f) => format!("{} . inet_proto . inet_service", addr_type(f)),
        SetKey::AddrPair(f) => format!("{0} . {0}", addr_type(f)),
    }
}

fn element(e: &Element) -> String {
    match e {
        Element::Addr(ip) => ip.to_string(),
        Element::Range(a, b) if a == b => a.to_string(),
        Element::Range(a, b) => match as_prefix(*a, *b) {
            Some(net) => net.to_string(),
            None => format!("{a}-{b}"),
        },
        Element::AddrProtoPort(ip, proto, port) => format!("{ip} . {} . {port}", proto.nft_name()),
        Element::AddrPair(a, b) => format!("{a} . {b}"),
    }
}

fn icmpv6_type_name(t: u8) -> String {
    match t {
        133 => "nd-router-solicit".into(),
        134 => "nd-router-advert".into(),
        135 => "nd-neighbor-solicit".into(),
        136 => "nd-neighbor-advert".into(),
        137 => "nd-redirect".into(),
        other => other.to_string(),
    }
}

/// Comments are double-quoted nft strings: no quotes or control characters inside, and a
/// bounded length (cut on a character boundary).
pub fn comment_text(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c == '"' || c.is_control() { '\'' } else { c })
        .collect();
    if s.len() > COMMENT_MAX {
        let mut cut = COMMENT_MAX - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
