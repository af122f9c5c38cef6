//! Object names: `<role>-<hash>-<readable hint>`.
//!
//! The hash is of the object's identity (what it stands for, never what else exists), so a
//! name is stable across syncs and a change to one policy renames nothing else. The readable
//! hint is for people running `nft list table`; it is sanitised to the characters nft accepts
//! unquoted and cut so the whole name stays short. Comments carry the exact meaning.

use std::collections::BTreeMap;

use crate::model::{NamespaceSel, Op, Selector};

/// Names are kept this short for readability; the kernel would accept 255.
pub const NAME_BUDGET: usize = 64;

/// FNV-1a, 64 bits: tiny, dependency-free and stable across Rust releases (unlike std's
/// `DefaultHasher`), which names that must survive upgrades need.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Keeps `[A-Za-z0-9/._-]`, maps everything else to `_`.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A short readable form of a selector for names: `app.db_tier.not.cache_!legacy` style.
pub fn selector_hint(selector: &Selector) -> String {
    if selector.is_everything() {
        return "all".to_string();
    }
    let parts: Vec<String> = selector
        .requirements()
        .iter()
        .map(|r| {
            let values = |v: &std::collections::BTreeSet<String>| {
                v.iter().cloned().collect::<Vec<_>>().join(".")
            };
            match &r.op {
                Op::In(v) => format!("{}.{}", r.key, values(v)),
                Op::NotIn(v) => format!("{}.not.{}", r.key, values(v)),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("no.{}", r.key),
            }
        })
        .collect();
    parts.join("_")
}

pub fn namespace_hint(ns: &NamespaceSel) -> String {
    match ns {
        NamespaceSel::Own(name) => name.clone(),
        NamespaceSel::Matching(s) if s.is_everything() => "ns.all".to_string(),
        NamespaceSel::Matching(s) => format!("ns.{}", selector_hint(s)),
    }
}

/// Hands out names and guarantees that different identities never share one.
#[derive(Default)]
pub struct Namer {
    taken: BTreeMap<String, String>,
}

impl Namer {
    /// Name for `identity` with role prefix `role` (e.g. `pods-v4`) and readable `hint`.
    /// Asking again for the same identity returns the same name.
    pub fn name(&mut self, role: &str, identity: &str, hint: &str) -> String {
        let hash = fnv1a64(identity.as_bytes());
        let short = self.compose(role, &format!("{:08x}", hash as u32), hint);
        match self.taken.get(&short) {
            None => {
                self.taken.insert(short.clone(), identity.to_string());
                short
            }
            Some(owner) if owner == identity => short,
            // A 32-bit collision (or a hint cut to the same prefix): use all 64 bits.
            Some(_) => {
                let long = self.compose(role, &format!("{hash:016x}"), hint);
                self.taken.insert(long.clone(), identity.to_string());
                long
            }
        }
    }

    fn compose(&self, role: &str, hash: &str, hint: &str) -> String {
        let mut name = format!("{role}-{hash}-{}", sanitize(hint));
        name.truncate(NAME_BUDGET);
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn names_are_stable_sanitised_and_bounded() {
        let mut a = Namer::default();
        let n = a.name("ing", "ingress|ns|p1,p2", "ns/p1_p2");
        assert_eq!(
            n,
            Namer::default().name("ing", "ingress|ns|p1,p2", "ns/p1_p2"),
            "stable"
        );
        assert_eq!(
            a.name("ing", "ingress|ns|p1,p2", "ns/p1_p2"),
            n,
            "idempotent"
        );
        assert!(n.starts_with("ing-") && n.ends_with("-ns/p1_p2"));
        let long = a.name("ing", "x", &"a=b ".repeat(40));
        assert_eq!(long.len(), NAME_BUDGET);
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
            "{long}"
        );
    }

    #[test]
    fn identities_with_the_same_short_name_get_distinct_names() {
        let mut namer = Namer::default();
        // Make "identity-2"'s short name already belong to another identity, as a 32-bit
        // hash collision would.
        let short = namer.compose(
            "egr",
            &format!("{:08x}", fnv1a64(b"identity-2") as u32),
            "h",
        );
        namer.taken.insert(short.clone(), "someone-else".into());
        let second = namer.name("egr", "identity-2", "h");
        assert_ne!(second, short);
        assert_eq!(second, format!("egr-{:016x}-h", fnv1a64(b"identity-2")));
        assert_eq!(
            namer.name("egr", "identity-2", "h"),
            second,
            "stable after the collision"
        );
    }
}
