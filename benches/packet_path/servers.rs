//! Stand-in for `integration/traffic/servers.rs`, so that `integration/traffic/cluster.rs` can
//! be included as is. The traffic tests' servers (TCP/UDP echo on every endpoint, raw SCTP
//! recorders) would pull in the probe module and the spec oracle and would compete for the
//! CPU with what the bench measures, so the endpoints of the bench cluster serve nothing
//! through this path: the bench starts its own servers, on the probed pod only
//! (`load.rs`).

use std::net::IpAddr;

use crate::netns::Netns;

/// What `Cluster::new` takes; the bench passes `Ports::default()`.
#[derive(Clone, Debug, Default)]
pub struct Ports;

/// Serves nothing.
pub struct Servers;

impl Servers {
    pub fn start(_ns: &Netns, _addrs: &[IpAddr], _ports: &Ports) -> Servers {
        Servers
    }
}
