//! From one ruleset to the next: the ordered operations of one kernel transaction.
//!
//! [`full`] replaces the whole table; [`incremental`] changes only what differs. Pod churn
//! becomes element operations; a policy change flushes and refills the chains it owns. The
//! order respects what the kernel checks inside a transaction: a set or chain exists before a
//! rule or map element refers to it, and nothing is deleted while still referenced.
//!
//! [`Fake`] applies operations to a ruleset value with those same checks, so ordering mistakes
//! fail in unit tests, without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Action, Chain, Element, Family, Map, Match, Rule, Ruleset, Set};

/// One step of a transaction on table `inet kube-nftpol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if missing (never fails).
    EnsureTable,
    DeleteTable,
    AddSet {
        name: String,
        set: Set,
    },
    AddElements {
        set: String,
        elements: Vec<Element>,
    },
    DeleteElements {
        set: String,
        elements: Vec<Element>,
    },
    DeleteSet {
        name: String,
    },
    AddMap {
        name: String,
        family: Family,
    },
    AddMapElements {
        map: String,
        elements: Vec<(IpAddr, String)>,
    },
    DeleteMapElements {
        map: String,
        keys: Vec<IpAddr>,
    },
    DeleteMap {
        name: String,
    },
    /// Creates a chain (a base chain when `chain.hook` is set) without its rules.
    AddChain {
        name: String,
        chain: Chain,
    },
    FlushChain {
        name: String,
    },
    AddRule {
        chain: String,
        rule: Rule,
    },
    DeleteChain {
        name: String,
    },
}

impl Op {
    /// Short description for errors and logs: `add rule to chain forward`.
    pub fn describe(&self) -> String {
        match self {
            Op::EnsureTable => "create table".into(),
            Op::DeleteTable => "delete table".into(),
            Op::AddSet { name, .. } => format!("add set {name}"),
            Op::AddElements { set, elements } => {
                format!("add {} elements to set {set}", elements.len())
            }
            Op::DeleteElements { set, elements } => {
                format!("delete {} elements from set {set}", elements.len())
            }
            Op::DeleteSet { name } => format!("delete set {name}"),
            Op::AddMap { name, .. } => format!("add map {name}"),
            Op::AddMapElements { map, elements } => {
                format!("add {} elements to map {map}", elements.len())
            }
            Op::DeleteMapElements { map, keys } => {
                format!("delete {} elements from map {map}", keys.len())
            }
            Op::DeleteMap { name } => format!("delete map {name}"),
            Op::AddChain { name, .. } => format!("add chain {name}"),
            Op::FlushChain { name } => format!("flush chain {name}"),
            Op::AddRule { chain, .. } => format!("add rule to chain {chain}"),
            Op::DeleteChain { name } => format!("delete chain {name}"),
        }
    }
}

/// What an incremental transaction changes, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_rewritten: usize,
    pub objects_added: usize,
    pub objects_deleted: usize,
    pub rules_added: usize,
}

impl Summary {
    pub fn of(ops: &[Op]) -> Summary {
        let mut s = Summary::default();
        for op in ops {
            match op {
                Op::AddElements { elements, .. } => s.elements_added += elements.len(),
                Op::AddMapElements { elements, .. } => s.elements_added += elements.len(),
                Op::DeleteElements { elements, .. } => s.elements_deleted += elements.len(),
                Op::DeleteMapElements { keys, .. } => s.elements_deleted += keys.len(),
                Op::FlushChain { .. } => s.chains_rewritten += 1,
                Op::AddSet { .. } | Op::AddMap { .. } | Op::AddChain { .. } => s.objects_added += 1,
                Op::DeleteSet { .. } | Op::DeleteMap { .. } | Op::DeleteChain { .. } => {
                    s.objects_deleted += 1
                }
                Op::AddRule { .. } => s.rules_added += 1,
                Op::EnsureTable | Op::DeleteTable => {}
            }
        }
        s
    }

    /// True when the transaction only adds and removes set and map elements.
    pub fn elements_only(&self) -> bool {
        self.chains_rewritten == 0
            && self.objects_added == 0
            && self.objects_deleted == 0
            && self.rules_added == 0
    }
}

/// Replaces whatever the table holds by `desired`, atomically: the table is created if
/// missing, deleted, and built again, all in one transaction, so the old rules stay in force
/// until the new ones are committed.
pub fn full(desired: &Ruleset) -> Vec<Op> {
    let mut ops = vec![Op::EnsureTable, Op::DeleteTable, Op::EnsureTable];
    ops.extend(create_all(desired));
    ops
}

/// Creates every object of `rs` in an empty table.
fn create_all(rs: &Ruleset) -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, set) in &rs.sets {
        ops.extend(add_set(name, set));
    }
    for (name, chain) in &rs.chains {
        ops.push(Op::AddChain {
            name: name.clone(),
            chain: Chain {
                hook: chain.hook,
                rules: vec![],
            },
        });
    }
    for (name, map) in &rs.maps {
        ops.push(Op::AddMap {
            name: name.clone(),
            family: map.family,
        });
        if !map.elements.is_empty() {
            let elements = map.elements.iter().map(|(k, v)| (*k, v.clone())).collect();
            ops.push(Op::AddMapElements {
                map: name.clone(),
                elements,
            });
        }
    }
    for (name, chain) in &rs.chains {
        ops.extend(chain.rules.iter().map(|r| Op::AddRule {
            chain: name.clone(),
            rule: r.clone(),
        }));
    }
    ops
}

fn add_set(name: &str, set: &Set) -> Vec<Op> {
    let mut ops = vec![Op::AddSet {
        name: name.to_string(),
        set: Set {
            elements: BTreeSet::new(),
            ..set.clone()
        },
    }];
    if !set.elements.is_empty() {
        ops.push(Op::AddElements {
            set: name.to_string(),
            elements: set.elements.iter().copied().collect(),
        });
    }
    ops
}

/// Why an incremental transaction cannot express a change (the caller replaces the table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedsFull(pub String);

/// The operations that turn `old` (what the kernel holds) into `desired`.
pub fn incremental(old: &Ruleset, desired: &Ruleset) -> Result<Vec<Op>, NeedsFull> {
    // Objects whose definition changed under the same name cannot be altered in place while
    // referenced; names are derived from identities, so this only happens across program
    // versions or on a hash collision.
    for (name, set) in &desired.sets {
        if let Some(o) = old.sets.get(name) {
            if (o.key, o.interval, &o.comment) != (set.key, set.interval, &set.comment) {
                return Err(NeedsFull(format!("set {name} changed its definition")));
            }
            // Interval sets are identified by their content (an ipBlock), so their elements
            // never change; the two-element interval encoding is not safe to patch.
            if set.interval && o.elements != set.elements {
                return Err(NeedsFull(format!(
                    "interval set {name} changed its elements"
                )));
            }
        }
    }
    for (name, map) in &desired.maps {
        if old.maps.get(name).is_some_and(|o| o.family != map.family) {
            return Err(NeedsFull(format!("map {name} changed its family")));
        }
    }
    for (name, chain) in &desired.chains {
        if old.chains.get(name).is_some_and(|o| o.hook != chain.hook) {
            return Err(NeedsFull(format!("chain {name} changed its hook")));
        }
    }

    let mut ops = Vec::new();
    // 1. New objects (empty chains first: rules and map elements refer to them).
    for (name, set) in desired
        .sets
        .iter()
        .filter(|(n, _)| !old.sets.contains_key(*n))
    {
        ops.extend(add_set(name, set));
    }
    for (name, chain) in desired
        .chains
        .iter()
        .filter(|(n, _)| !old.chains.contains_key(*n))
    {
        ops.push(Op::AddChain {
            name: name.clone(),
            chain: Chain {
                hook: chain.hook,
                rules: vec![],
            },
        });
    }
    for (name, map) in desired
        .maps
        .iter()
        .filter(|(n, _)| !old.maps.contains_key(*n))
    {
        ops.push(Op::AddMap {
            name: name.clone(),
            family: map.family,
        });
    }
    // 2. Elements joining existing sets. Most sets are unchanged in any one sync: find the
    // changed ones with one equality pass, and work out their differences once.
    let changed: Vec<(&String, Vec<Element>, Vec<Element>)> = desired
        .sets
        .iter()
        .filter_map(|(name, set)| {
            let o = old.sets.get(name).filter(|o| o.elements != set.elements)?;
            let added = set.elements.difference(&o.elements).copied().collect();
            let gone = o.elements.difference(&set.elements).copied().collect();
            Some((name, added, gone))
        })
        .collect();
    for (name, added, _) in &changed {
        if !added.is_empty() {
            ops.push(Op::AddElements {
                set: (*name).clone(),
                elements: added.clone(),
            });
        }
    }
    // 3. Rules: chains whose rules changed are flushed and refilled; new chains filled.
    for (name, chain) in &desired.chains {
        match old.chains.get(name) {
            Some(o) if o.rules == chain.rules => continue,
            Some(_) => ops.push(Op::FlushChain { name: name.clone() }),
            None => {}
        }
        ops.extend(chain.rules.iter().map(|r| Op::AddRule {
            chain: name.clone(),
            rule: r.clone(),
        }));
    }
    // 4. Dispatch: elements leaving or changing target first, then arriving.
    for (name, map) in &desired.maps {
        let empty = BTreeMap::new();
        let before = old.maps.get(name).map_or(&empty, |m| &m.elements);
        if *before == map.elements {
            continue;
        }
        let gone: Vec<IpAddr> = before
            .iter()
            .filter(|(k, v)| map.elements.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .collect();
        let arriving: Vec<(IpAddr, String)> = map
            .elements
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if !gone.is_empty() {
            ops.push(Op::DeleteMapElements {
                map: name.clone(),
                keys: gone,
            });
        }
        if !arriving.is_empty() {
            ops.push(Op::AddMapElements {
                map: name.clone(),
                elements: arriving,
            });
        }
    }
    for (name, map) in old
        .maps
        .iter()
        .filter(|(n, _)| !desired.maps.contains_key(*n))
    {
        if !map.elements.is_empty() {
            ops.push(Op::DeleteMapElements {
                map: name.clone(),
                keys: map.elements.keys().copied().collect(),
            });
        }
        ops.push(Op::DeleteMap { name: name.clone() });
    }
    // 5. Chains nobody dispatches to any more.
    for name in old
        .chains
        .keys()
        .filter(|n| !desired.chains.contains_key(*n))
    {
        ops.push(Op::FlushChain { name: name.clone() });
        ops.push(Op::DeleteChain { name: name.clone() });
    }
    // 6. Elements leaving sets, and sets no rule refers to any more.
    for (name, _, gone) in changed {
        if !gone.is_empty() {
            ops.push(Op::DeleteElements {
                set: name.clone(),
                elements: gone,
            });
        }
    }
    for name in old.sets.keys().filter(|n| !desired.sets.contains_key(*n)) {
        ops.push(Op::DeleteSet { name: name.clone() });
    }
    Ok(ops)
}

/// A stand-in for the kernel's nf_tables transaction: applies operations to a copy of a
/// ruleset with the checks the kernel makes, and commits only if every one passes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fake {
    /// `None` while the table does not exist.
    pub table: Option<Ruleset>,
}

impl Fake {
    /// Applies `ops` atomically; on error the table is left as it was and the error names the
    /// failing operation, as the kernel's error for that message would.
    pub fn commit(&mut self, ops: &[Op]) -> Result<(), String> {
        let mut table = self.table.clone();
        for (i, op) in ops.iter().enumerate() {
            step(&mut table, op).map_err(|e| format!("operation {i} ({}): {e}", op.describe()))?;
        }
        self.table = table;
        Ok(())
    }
}

fn step(table: &mut Option<Ruleset>, op: &Op) -> Result<(), String> {
    if let Op::EnsureTable = op {
        table.get_or_insert_with(Ruleset::default);
        return Ok(());
    }
    let Some(rs) = table.as_mut() else {
        return Err("no such table (ENOENT)".into());
    };
    match op {
        Op::EnsureTable => {}
        Op::DeleteTable => *table = None,
        Op::AddSet { name, set } => {
            if rs.sets.contains_key(name) || rs.maps.contains_key(name) {
                return Err("set exists (EEXIST)".into());
            }
            rs.sets.insert(name.clone(), set.clone());
        }
        Op::AddElements { set, elements } => {
            let s = rs.sets.get_mut(set).ok_or("no such set (ENOENT)")?;
            for e in elements {
                if !s.elements.insert(*e) {
                    return Err(format!("element {e:?} exists (EEXIST)"));
                }
            }
        }
        Op::DeleteElements { set, elements } => {
            let s = rs.sets.get_mut(set).ok_or("no such set (ENOENT)")?;
            for e in elements {
                if !s.elements.remove(e) {
                    return Err(format!("element {e:?} missing (ENOENT)"));
                }
            }
        }
        Op::DeleteSet { name } => {
            if referenced_sets(rs).contains(name.as_str()) {
                return Err("set in use (EBUSY)".into());
            }
            rs.sets.remove(name).ok_or("no such set (ENOENT)")?;
        }
        Op::AddMap { name, family } => {
            if rs.maps.contains_key(name) || rs.sets.contains_key(name) {
                return Err("map exists (EEXIST)".into());
            }
            rs.maps.insert(
                name.clone(),
                Map {
                    family: *family,
                    elements: BTreeMap::new(),
                },
            );
        }
        Op::AddMapElements { map, elements } => {
            let m = rs.maps.get_mut(map).ok_or("no such map (ENOENT)")?;
            for (k, chain) in elements {
                match rs.chains.get(chain) {
                    Some(c) if c.hook.is_none() => {}
                    Some(_) => return Err(format!("jump to base chain {chain} (EOPNOTSUPP)")),
                    None => return Err(format!("jump to missing chain {chain} (ENOENT)")),
                }
                if m.elements.insert(*k, chain.clone()).is_some() {
                    return Err(format!("map element {k} exists (EEXIST)"));
                }
            }
        }
        Op::DeleteMapElements { map, keys } => {
            let m = rs.maps.get_mut(map).ok_or("no such map (ENOENT)")?;
            for k in keys {
                m.elements
                    .remove(k)
                    .ok_or(format!("map element {k} missing (ENOENT)"))?;
            }
        }
        Op::DeleteMap { name } => {
            if referenced_maps(rs).contains(name.as_str()) {
                return Err("map in use (EBUSY)".into());
            }
            rs.maps.remove(name).ok_or("no such map (ENOENT)")?;
        }
        Op::AddChain { name, chain } => {
            if rs.chains.contains_key(name) {
                return Err("chain exists (EEXIST)".into());
            }
            rs.chains.insert(name.clone(), chain.clone());
        }
        Op::FlushChain { name } => rs
            .chains
            .get_mut(name)
            .ok_or("no such chain (ENOENT)")?
            .rules
            .clear(),
        Op::AddRule { chain, rule } => {
            for m in &rule.matches {
                if let Some(set) = match_set(m) {
                    if !rs.sets.contains_key(set) {
                        return Err(format!("rule refers to missing set {set} (ENOENT)"));
                    }
                }
            }
            if let Action::Dispatch { map, .. } = &rule.action {
                if !rs.maps.contains_key(map) {
                    return Err(format!("rule refers to missing map {map} (ENOENT)"));
                }
            }
            rs.chains
                .get_mut(chain)
                .ok_or("no such chain (ENOENT)")?
                .rules
                .push(rule.clone());
        }
        Op::DeleteChain { name } => {
            let c = rs.chains.get(name).ok_or("no such chain (ENOENT)")?;
            if !c.rules.is_empty() {
                return Err("chain not empty (EBUSY)".into());
            }
            if rs
                .maps
                .values()
                .any(|m| m.elements.values().any(|t| t == name))
            {
                return Err("chain is a jump target (EBUSY)".into());
            }
            rs.chains.remove(name);
        }
    }
    Ok(())
}

fn match_set(m: &Match) -> Option<&str> {
    match m {
        Match::AddrInSet { set, .. }
        | Match::AddrNotInSet { set, .. }
        | Match::AddrPairInSet { set, .. }
        | Match::AddrProtoPortInSet { set, .. } => Some(set),
        _ => None,
    }
}

fn referenced_sets(rs: &Ruleset) -> BTreeSet<&str> {
    rs.chains
        .values()
        .flat_map(|c| c.rules.iter())
        .flat_map(|r| r.matches.iter())
        .filter_map(match_set)
        .collect()
}

fn referenced_maps(rs: &Ruleset) -> BTreeSet<&str> {
    rs.chains
        .values()
        .flat_map(|c| c.rules.iter())
        .filter_map(|r| match &r.action {
            Action::Dispatch { map, .. } => Some(map.as_str()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
