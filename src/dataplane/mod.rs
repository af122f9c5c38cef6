//! Puts a [`Ruleset`] into the kernel.
//!
//! The first sync, and every sync after an error or a detected drift, replaces the whole table
//! in one transaction (the old rules stay in force until it commits). Every other sync sends
//! only the difference from what was last committed ([`crate::ruleset::diff::incremental`]):
//! element operations for pod churn, flushed and refilled chains for policy changes. The
//! kernel is never read on this path; [`Dataplane::check_drift`] reads it on a timer.

pub mod netlink;
pub mod probe;

use std::time::{Duration, Instant};

use crate::ruleset::diff::{full, incremental, NeedsFull, Op, Summary};
use crate::ruleset::Ruleset;
use netlink::{expected_listing, Error, Netlink, Sent};

/// How a sync reached the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Incremental,
    /// Nothing to change; nothing sent.
    Unchanged,
}

impl SyncKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Incremental => "incremental",
            SyncKind::Unchanged => "unchanged",
        }
    }
}

/// What one [`Dataplane::apply`] did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub kind: SyncKind,
    /// Why a full replace was needed.
    pub reason: Option<String>,
    pub sent: Sent,
    pub summary: Summary,
    /// From building the transaction to the kernel's last acknowledgement.
    pub elapsed: Duration,
}

pub struct Dataplane {
    netlink: Netlink,
    /// What the kernel holds as far as we know; `None` means "unknown: replace it all".
    committed: Option<Ruleset>,
    full_reason: String,
}

impl Dataplane {
    /// Opens netlink in the current network namespace. Nothing is written until `apply`.
    pub fn new() -> Result<Dataplane, Error> {
        Ok(Dataplane {
            netlink: Netlink::open()?,
            committed: None,
            full_reason: "first sync".into(),
        })
    }

    /// Makes the kernel hold `desired` (kept as the new reference for the next diff).
    pub fn apply(&mut self, desired: Ruleset) -> Result<Applied, Error> {
        let start = Instant::now();
        let (ops, kind, reason): (Vec<Op>, SyncKind, Option<String>) = match &self.committed {
            None => (
                full(&desired),
                SyncKind::Full,
                Some(self.full_reason.clone()),
            ),
            Some(old) => match incremental(old, &desired) {
                Ok(ops) if ops.is_empty() => {
                    return Ok(Applied {
                        kind: SyncKind::Unchanged,
                        reason: None,
                        sent: Sent::default(),
                        summary: Summary::default(),
                        elapsed: start.elapsed(),
                    })
                }
                Ok(ops) => (ops, SyncKind::Incremental, None),
                Err(NeedsFull(why)) => (full(&desired), SyncKind::Full, Some(why)),
            },
        };
        let summary = Summary::of(&ops);
        match self.netlink.commit(&ops) {
            Ok(sent) => {
                self.committed = Some(desired);
                Ok(Applied {
                    kind,
                    reason,
                    sent,
                    summary,
                    elapsed: start.elapsed(),
                })
            }
            Err(e) => {
                // The kernel rolled the transaction back, but we cannot be sure what it holds
                // (an unanswered batch may have committed): replace everything next time.
                self.committed = None;
                self.full_reason = format!("previous sync failed ({})", e.metric_label());
                Err(e)
            }
        }
    }

    /// What was last committed, if the kernel is known to hold it.
    pub fn committed(&self) -> Option<&Ruleset> {
        self.committed.as_ref()
    }

    /// Forces the next sync to replace the whole table (SIGHUP, drift).
    pub fn force_full(&mut self, why: &str) {
        self.committed = None;
        self.full_reason = why.to_string();
    }

    /// Compares the kernel's table with what was last committed. Returns a description of the
    /// first difference, and then the next sync replaces the table.
    pub fn check_drift(&mut self) -> Result<Option<String>, Error> {
        let Some(committed) = &self.committed else {
            return Ok(None);
        };
        let expected = expected_listing(committed);
        let drift = match self.netlink.list()? {
            None => Some("table inet kube-nftpol is gone".to_string()),
            Some(actual) => describe_difference(&expected, &actual),
        };
        if let Some(d) = &drift {
            self.force_full(&format!("drift: {d}"));
        }
        Ok(drift)
    }
}

fn describe_difference(expected: &netlink::Listing, actual: &netlink::Listing) -> Option<String> {
    for (name, chain) in &expected.chains {
        match actual.chains.get(name) {
            None => return Some(format!("chain {name} is missing")),
            Some(a) if a.hook != chain.hook => {
                return Some(format!("chain {name} has another hook"))
            }
            Some(a) if a.rules != chain.rules => {
                let first = a.rules.iter().zip(&chain.rules).position(|(x, y)| x != y);
                return Some(match first {
                    Some(i) => format!(
                        "chain {name}: rule {i} is [{}], expected [{}]",
                        a.rules[i].replace('\n', " "),
                        chain.rules[i].replace('\n', " ")
                    ),
                    None => format!(
                        "chain {name} has {} rules, {} expected",
                        a.rules.len(),
                        chain.rules.len()
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = actual
        .chains
        .keys()
        .find(|n| !expected.chains.contains_key(*n))
    {
        return Some(format!("unexpected chain {extra}"));
    }
    for (name, set) in &expected.sets {
        match actual.sets.get(name) {
            None => return Some(format!("set {name} is missing")),
            Some(a)
                if (a.flags, a.key_type, a.key_len) != (set.flags, set.key_type, set.key_len) =>
            {
                return Some(format!("set {name} has another type"))
            }
            Some(a) if a.elements != set.elements => {
                return Some(format!(
                    "set {name} has {} elements, {} expected, or they differ",
                    a.elements.len(),
                    set.elements.len()
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = actual.sets.keys().find(|n| !expected.sets.contains_key(*n)) {
        return Some(format!("unexpected set {extra}"));
    }
    None
}

/// Deletes table `inet kube-nftpol` and nothing else. Returns whether it existed.
pub fn cleanup() -> Result<bool, Error> {
    let mut nl = Netlink::open()?;
    let existed = nl.list()?.is_some();
    if existed {
        nl.commit(&[Op::EnsureTable, Op::DeleteTable])?;
    }
    Ok(existed)
}
