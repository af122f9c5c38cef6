//! Probes: one new connection (TCP, UDP) or one SCTP INIT from a source namespace to an
//! address and port, and what came of it. Many probes run at once on a pool of threads, each
//! entering the source namespace of its probe before opening its socket.
//!
//! What counts as "reachable" (the packet got through the policy):
//! - TCP: the connection is established and echoes a token (`Open`), or it is refused by a
//!   RST (`Refused`: the SYN reached the destination, nothing listened; the harness serves
//!   every probed port, so this only shows up when a scenario probes an unserved one).
//!   No answer within the timeout is `Timeout` (what a policy `drop` gives); an ICMP error
//!   or any other failure is `Error`, counted as not reachable and shown as such.
//! - UDP: a datagram comes back with the token (`Open`), or an ICMP port unreachable
//!   (`Refused`, again: the packet got through).
//! - SCTP (no SCTP sockets on this kernel): a hand-built INIT with a unique initiate tag is
//!   sent on a raw socket; it is `Open` iff the raw IPPROTO_SCTP socket of the destination's
//!   namespace recorded that tag within the timeout. Nobody answers INITs, so SCTP checks
//!   the request direction only.
//!
//! A connection that was established but did not echo is `Broken`: neither reachable nor
//! blocked, always a mismatch.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns;
use crate::support::Proto;

/// How long a probe waits before calling a flow blocked.
pub const SHORT: Duration = Duration::from_millis(300);
/// Second chance for a flow that was expected to get through and did not.
pub const LONG: Duration = Duration::from_millis(1500);
/// Worker threads per batch of probes.
const WORKERS: usize = 64;

pub const IPPROTO_SCTP: i32 = 132;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Open,
    Refused,
    Timeout,
    Broken(String),
    Error(String),
}

impl Outcome {
    /// `Some(true)` reachable, `Some(false)` blocked, `None` neither (broken).
    pub fn reachable(&self) -> Option<bool> {
        match self {
            Outcome::Open | Outcome::Refused => Some(true),
            Outcome::Timeout | Outcome::Error(_) => Some(false),
            Outcome::Broken(_) => None,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Open => write!(f, "reachable"),
            Outcome::Refused => write!(f, "reachable (refused)"),
            Outcome::Timeout => write!(f, "blocked (timeout)"),
            Outcome::Broken(why) => write!(f, "broken: {why}"),
            Outcome::Error(why) => write!(f, "blocked (error: {why})"),
        }
    }
}

/// One probe: from the namespace `src`, bound to `bind` when given, to `dst:port`.
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub src: &'a File,
    pub bind: Option<IpAddr>,
    pub dst: IpAddr,
    pub proto: Proto,
    pub port: u16,
    /// Name of the namespace whose SCTP recorder must see the INIT.
    pub sctp_owner: &'a str,
    pub timeout: Duration,
}

/// Runs all probes concurrently; results in the same order.
pub fn run_all(probes: &[Probe<'_>]) -> Vec<Outcome> {
    let results: Vec<Mutex<Option<Outcome>>> = probes.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = WORKERS.min(probes.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            let worker = std::thread::Builder::new()
                .name("probe".into())
                .stack_size(256 * 1024);
            worker
                .spawn_scoped(s, || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(probe) = probes.get(i) else {
                        break;
                    };
                    let outcome = match netns::enter(probe.src) {
                        Ok(()) => run_one(probe),
                        Err(e) => Outcome::Error(format!("setns: {e}")),
                    };
                    if let Some(slot) = results.get(i) {
                        *slot.lock().expect("result slot") = Some(outcome);
                    }
                })
                .expect("spawning a probe worker");
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("result slot")
                .unwrap_or_else(|| Outcome::Error("probe did not run".into()))
        })
        .collect()
}

/// Runs one probe on a thread of its own (which enters the probe's source namespace).
pub fn run_one_in(probe: &Probe<'_>) -> Outcome {
    run_all(std::slice::from_ref(probe))
        .into_iter()
        .next()
        .unwrap_or_else(|| Outcome::Error("probe did not run".into()))
}

/// Runs one probe on the calling thread, in whatever namespace that thread is in.
pub fn run_one(probe: &Probe<'_>) -> Outcome {
    let result = match probe.proto {
        Proto::Tcp => tcp(probe),
        Proto::Udp => udp(probe),
        Proto::Sctp => sctp(probe),
    };
    result.unwrap_or_else(|e| Outcome::Error(e.to_string()))
}

fn token() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "knp-probe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn socket(dst: IpAddr, ty: Type, proto: Protocol, bind: Option<IpAddr>) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(dst, 0)),
        ty,
        Some(proto),
    )?;
    if let Some(addr) = bind {
        socket.bind(&SocketAddr::new(addr, 0).into())?;
    }
    Ok(socket)
}

fn tcp(p: &Probe<'_>) -> std::io::Result<Outcome> {
    let socket = socket(p.dst, Type::STREAM, Protocol::TCP, p.bind)?;
    match socket.connect_timeout(&SocketAddr::new(p.dst, p.port).into(), p.timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Outcome::Refused),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            return Ok(Outcome::Timeout)
        }
        Err(e) => return Ok(Outcome::Error(e.to_string())),
    }
    let mut stream = TcpStream::from(socket);
    Ok(echo(&mut stream, p.timeout.max(Duration::from_secs(1))))
}

/// Sends a token over an established connection and expects it back.
pub fn echo(stream: &mut TcpStream, timeout: Duration) -> Outcome {
    let token = token();
    let mut back = vec![0u8; token.len()];
    let result = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.write_all(token.as_bytes()))
        .and_then(|()| stream.read_exact(&mut back));
    match result {
        Ok(()) if back == token.as_bytes() => Outcome::Open,
        Ok(()) => Outcome::Broken("echo returned other bytes".into()),
        Err(e) => Outcome::Broken(format!("connected, but no echo: {e}")),
    }
}

/// Source ports for UDP probes, in turn: the kernel may hand a just-closed UDP port out
/// again, and a new probe on the 5-tuple of a recent one would ride its conntrack entry
/// (still "established" after a policy change). Cycling through 28,000 ports, a port comes
/// back only after far more probes than one test sends to one destination.
fn udp_socket(p: &Probe<'_>) -> std::io::Result<Socket> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let local = p.bind.unwrap_or(match p.dst {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    });
    let mut last = None;
    for _ in 0..20 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 28_000;
        let port = 33_000 + n as u16;
        let socket = Socket::new(
            Domain::for_address(SocketAddr::new(p.dst, 0)),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        match socket.bind(&SocketAddr::new(local, port).into()) {
            Ok(()) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free UDP source port")))
}

fn udp(p: &Probe<'_>) -> std::io::Result<Outcome> {
    let socket = UdpSocket::from(udp_socket(p)?);
    socket.connect(SocketAddr::new(p.dst, p.port))?;
    let token = token();
    let deadline = Instant::now() + p.timeout;
    socket.send(token.as_bytes())?;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::Timeout);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            Ok(n) if buf.get(..n) == Some(token.as_bytes()) => return Ok(Outcome::Open),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Ok(Outcome::Refused)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Ok(Outcome::Timeout)
            }
            Err(e) => return Ok(Outcome::Error(e.to_string())),
        }
    }
}

fn sctp(p: &Probe<'_>) -> std::io::Result<Outcome> {
    let socket = socket(p.dst, Type::RAW, Protocol::from(IPPROTO_SCTP), p.bind)?;
    let tag = next_tag();
    // A fresh source port per probe: a new conntrack entry every time.
    let src_port = 20000 + (tag % 40000) as u16;
    let packet = sctp_init(src_port, p.port, tag);
    socket.send_to(&packet, &SocketAddr::new(p.dst, 0).into())?;
    Ok(match sctp_registry().wait(tag, p.timeout) {
        None => Outcome::Timeout,
        Some(owner) if owner == p.sctp_owner => Outcome::Open,
        Some(owner) => Outcome::Broken(format!("INIT arrived in namespace {owner}")),
    })
}

fn next_tag() -> u32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761)));
    loop {
        let tag = next.fetch_add(1, Ordering::Relaxed);
        if tag != 0 {
            return tag;
        }
    }
}

/// An SCTP packet with one INIT chunk (RFC 9260 3.3.2): verification tag 0, the initiate
/// tag `tag`, a correct CRC32c.
pub fn sctp_init(src_port: u16, dst_port: u16, tag: u32) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0..2].copy_from_slice(&src_port.to_be_bytes());
    p[2..4].copy_from_slice(&dst_port.to_be_bytes());
    // p[4..8]: verification tag 0 (required for INIT); p[8..12]: checksum, filled below.
    p[12] = 1; // chunk type INIT
    p[13] = 0; // flags
    p[14..16].copy_from_slice(&20u16.to_be_bytes()); // chunk length
    p[16..20].copy_from_slice(&tag.to_be_bytes()); // initiate tag
    p[20..24].copy_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&tag.to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    // The CRC32c goes on the wire least significant byte first (RFC 9260 appendix A).
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// CRC32c (Castagnoli), reflected, as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

/// The initiate tag of an SCTP packet whose first chunk is an INIT.
pub fn init_tag(sctp: &[u8]) -> Option<u32> {
    if sctp.get(12) != Some(&1) {
        return None;
    }
    let bytes: [u8; 4] = sctp.get(16..20)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// INITs seen by the recorders of all clusters of this process: tag → namespace name.
pub struct SctpRegistry {
    seen: Mutex<HashMap<u32, String>>,
    changed: Condvar,
}

pub fn sctp_registry() -> &'static SctpRegistry {
    static REGISTRY: OnceLock<SctpRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| SctpRegistry {
        seen: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
    })
}

impl SctpRegistry {
    pub fn record(&self, tag: u32, owner: &str) {
        let mut seen = self.seen.lock().expect("sctp registry");
        seen.entry(tag).or_insert_with(|| owner.to_string());
        self.changed.notify_all();
    }

    /// Waits until `tag` was recorded, and forgets it.
    fn wait(&self, tag: u32, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.seen.lock().expect("sctp registry");
        loop {
            if let Some(owner) = seen.remove(&tag) {
                return Some(owner);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            seen = self
                .changed
                .wait_timeout(seen, left)
                .expect("sctp registry")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{crc32c, init_tag, sctp_init};

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_roundtrip() {
        let p = sctp_init(1234, 80, 0xdead_beef);
        assert_eq!(init_tag(&p), Some(0xdead_beef));
        // The checksum over the packet with its checksum field zeroed is what it carries.
        let mut zeroed = p;
        zeroed[8..12].fill(0);
        assert_eq!(p[8..12], crc32c(&zeroed).to_le_bytes());
    }
}
