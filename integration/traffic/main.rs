//! Real-traffic tests: a Flannel-like two-node cluster built from network namespaces, the
//! product enforcing NetworkPolicy on each node, and truth tables measured with real TCP,
//! UDP and SCTP packets. Needs root. See integration/README.md.

#[path = "../../tests/support/mod.rs"]
mod support;

mod cluster;
mod driver;
mod harness;
mod netns;
mod probe;
mod scenarios;
mod servers;
mod shared;
mod table;
