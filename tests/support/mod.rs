//! Test support shared by the oracle self-tests and the differential driver.
//!
//! `oracle` and `gen` do not use the crate under test: `oracle` is an independent
//! NetworkPolicy evaluator written from `docs/semantics.md` and the Kubernetes spec, `gen` a
//! seeded cluster generator. `scenario` reads a golden scenario's flags into the crate's
//! `Options`; `netns` runs things in private network namespaces.

// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod gen;
pub mod netns;
pub mod oracle;
pub mod scenario;

/// Transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    /// The spelling Kubernetes uses in `protocol` fields.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}
