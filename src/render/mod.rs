//! Ways out of a [`Ruleset`](crate::ruleset::Ruleset) value.
//!
//! - [`text`]: canonical nft syntax, for golden files, the `render` command and people.

pub mod netlink;
pub mod text;
