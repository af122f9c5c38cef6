//! Label selectors with apimachinery semantics.

use std::collections::BTreeSet;
use std::fmt;

use super::Labels;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            // apimachinery: NotIn matches objects that do not have the key at all.
            Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

/// A validated selector: requirements AND-ed, kept sorted and deduplicated so that equal
/// selectors compare (and hash into names) equal whichever way they were written.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector `{}`: matches everything.
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn new(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// kubectl-like text: `app in (db),tier notin (a,b),!legacy,owner`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(",");
            match &r.op {
                Op::In(v) if v.len() == 1 => write!(f, "{}={}", r.key, list(v))?,
                Op::In(v) => write!(f, "{} in ({})", r.key, list(v))?,
                Op::NotIn(v) => write!(f, "{} notin ({})", r.key, list(v))?,
                Op::Exists => write!(f, "{}", r.key)?,
                Op::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn req(key: &str, op: Op) -> Requirement {
        Requirement {
            key: key.into(),
            op,
        }
    }

    #[test]
    fn not_in_and_does_not_exist_match_objects_without_the_key() {
        let none = labels(&[]);
        assert!(req("tier", Op::NotIn(set(&["db"]))).matches(&none));
        assert!(req("tier", Op::DoesNotExist).matches(&none));
        assert!(!req("tier", Op::In(set(&["db"]))).matches(&none));
        assert!(!req("tier", Op::Exists).matches(&none));
    }

    #[test]
    fn not_in_rejects_listed_values_only() {
        let r = req("tier", Op::NotIn(set(&["db", "cache"])));
        assert!(!r.matches(&labels(&[("tier", "db")])));
        assert!(r.matches(&labels(&[("tier", "web")])));
    }

    #[test]
    fn empty_value_requires_the_key() {
        let r = req("canary", Op::In(set(&[""])));
        assert!(r.matches(&labels(&[("canary", "")])));
        assert!(!r.matches(&labels(&[])));
        assert!(!r.matches(&labels(&[("canary", "yes")])));
    }

    #[test]
    fn requirements_are_anded_and_empty_selects_all() {
        let s = Selector::new(vec![
            req("app", Op::In(set(&["db"]))),
            req("tier", Op::Exists),
        ]);
        assert!(s.matches(&labels(&[("app", "db"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
        assert!(Selector::everything().matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn equal_selectors_written_differently_are_equal() {
        let a = Selector::new(vec![req("b", Op::Exists), req("a", Op::In(set(&["1"])))]);
        let b = Selector::new(vec![
            req("a", Op::In(set(&["1"]))),
            req("b", Op::Exists),
            req("b", Op::Exists),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=1,b");
    }
}
