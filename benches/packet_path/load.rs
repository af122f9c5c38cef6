//! The traffic: servers in the server pod's namespace, and the three client loops (run on a
//! thread that entered the client pod's namespace).
//!
//! - TCP throughput: one stream; the client writes 128 KiB buffers for the duration, then
//!   shuts down its side; the server counts the bytes and the time from the first byte to
//!   EOF, and answers with both (so bytes still in flight when the client stops count, and
//!   over the time they took).
//! - New TCP connections per second: connect; the server accepts and closes at once; the
//!   client waits for that close (EOF), then closes with SO_LINGER 0 (RST). Neither side keeps
//!   TIME_WAIT, so ephemeral ports never run out, and conntrack keeps the entry 10 s (CLOSE).
//!   Every connection is a new flow: its SYN goes through the whole ruleset.
//! - UDP request/response: one connected socket, one outstanding 64-byte request, echoed by
//!   the server. Only the first datagram is a new flow; the rest is conntrack's fast path.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::netns::Netns;
use crate::scenario::{TCP_CRR_PORT, TCP_STREAM_PORT, UDP_RR_PORT};

const TICK: Duration = Duration::from_millis(100);
const WRITE_BUF: usize = 128 * 1024;
const READ_BUF: usize = 256 * 1024;
const UDP_PAYLOAD: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    TcpStream,
    TcpCrr,
    UdpRr,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::TcpStream, Metric::TcpCrr, Metric::UdpRr];

    pub fn label(self) -> &'static str {
        match self {
            Metric::TcpStream => "TCP throughput (Gbit/s)",
            Metric::TcpCrr => "new TCP connections/s",
            Metric::UdpRr => "UDP request/response/s",
        }
    }

    /// `stream`, `crr`, `udp` (`BENCH_METRICS`).
    pub fn parse(name: &str) -> Option<Metric> {
        match name {
            "stream" => Some(Metric::TcpStream),
            "crr" => Some(Metric::TcpCrr),
            "udp" => Some(Metric::UdpRr),
            _ => None,
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Metric::TcpStream => TCP_STREAM_PORT,
            Metric::TcpCrr => TCP_CRR_PORT,
            Metric::UdpRr => UDP_RR_PORT,
        }
    }
}

/// One measurement: the figure, and operations that failed (connections not completed,
/// requests without an answer within 200 ms).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub value: f64,
    pub failures: u64,
}

/// The server pod's servers; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns: &Netns, addr: Ipv4Addr) -> Servers {
        let (stream, crr, udp) = ns.run(|| {
            let stream = listener(addr, TCP_STREAM_PORT).expect("TCP stream listener");
            let crr = listener(addr, TCP_CRR_PORT).expect("TCP connect listener");
            let udp = UdpSocket::bind(SocketAddrV4::new(addr, UDP_RR_PORT)).expect("UDP socket");
            udp.set_read_timeout(Some(TICK)).expect("SO_RCVTIMEO");
            (stream, crr, udp)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .expect("spawning a server thread")
        };
        let threads = vec![
            {
                let stop = stop.clone();
                spawn(
                    "stream-accept",
                    Box::new(move || stream_accept(stream, &stop)),
                )
            },
            {
                let stop = stop.clone();
                spawn("crr-accept", Box::new(move || crr_accept(crr, &stop)))
            },
            {
                let stop = stop.clone();
                spawn("udp-echo", Box::new(move || udp_echo(udp, &stop)))
            },
        ];
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn listener(addr: Ipv4Addr, port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(SocketAddrV4::new(addr, port)).into())?;
    socket.listen(1024)?;
    // SO_RCVTIMEO bounds accept() on Linux, so the loops see the stop flag.
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket)
}

fn idle(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn stream_accept(listener: Socket, stop: &Arc<AtomicBool>) {
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || sink(conn.into(), &stop)));
                conns.retain(|h: &JoinHandle<()>| !h.is_finished());
            }
            Err(e) if idle(&e) => {}
            Err(_) => std::thread::sleep(TICK),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// Counts bytes until EOF, then answers (bytes, nanoseconds from the first byte to EOF).
fn sink(mut conn: TcpStream, stop: &AtomicBool) {
    if conn.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let mut buf = vec![0u8; READ_BUF];
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => {
                let nanos = first.map_or(0, |t| t.elapsed().as_nanos() as u64);
                let mut answer = [0u8; 16];
                answer[..8].copy_from_slice(&bytes.to_be_bytes());
                answer[8..].copy_from_slice(&nanos.to_be_bytes());
                let _ = conn.write_all(&answer);
                return;
            }
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                bytes += n as u64;
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

fn crr_accept(listener: Socket, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            // Dropped at once: close, the client sees EOF.
            Ok((conn, _)) => drop(conn),
            Err(e) if idle(&e) => {}
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

fn udp_echo(socket: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = socket.send_to(&buf[..n], from);
            }
            Err(e) if idle(&e) => {}
            Err(_) => {}
        }
    }
}

/// Runs `metric` against `server` for `secs`, from the calling thread's namespace.
pub fn run(metric: Metric, server: Ipv4Addr, secs: Duration) -> Result<Sample, String> {
    let addr = SocketAddr::from(SocketAddrV4::new(server, metric.port()));
    match metric {
        Metric::TcpStream => tcp_stream(addr, secs),
        Metric::TcpCrr => tcp_crr(addr, secs),
        Metric::UdpRr => udp_rr(addr, secs),
    }
}

fn tcp_stream(addr: SocketAddr, secs: Duration) -> Result<Sample, String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; WRITE_BUF];
    let start = Instant::now();
    while start.elapsed() < secs {
        conn.write_all(&buf)
            .map_err(|e| format!("write to {addr}: {e}"))?;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 16];
    conn.read_exact(&mut answer)
        .map_err(|e| format!("reading the server's count from {addr}: {e}"))?;
    let bytes = u64::from_be_bytes(answer[..8].try_into().expect("8 bytes"));
    let nanos = u64::from_be_bytes(answer[8..].try_into().expect("8 bytes"));
    if nanos == 0 {
        return Err(format!("the server at {addr} received nothing"));
    }
    Ok(Sample {
        value: bytes as f64 * 8.0 / nanos as f64,
        failures: 0,
    })
}

fn tcp_crr(addr: SocketAddr, secs: Duration) -> Result<Sample, String> {
    let mut done = 0u64;
    let mut failures = 0u64;
    let mut last_error = String::new();
    let start = Instant::now();
    while start.elapsed() < secs {
        match one_connection(addr) {
            Ok(()) => done += 1,
            Err(e) => {
                failures += 1;
                last_error = e;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if done == 0 {
        return Err(format!(
            "no connection to {addr} completed ({failures} failed; last: {last_error})"
        ));
    }
    Ok(Sample {
        value: done as f64 / elapsed,
        failures,
    })
}

fn one_connection(addr: SocketAddr) -> Result<(), String> {
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let eof = conn.read(&mut byte);
    // RST on close: no TIME_WAIT on either side.
    let _ = SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    match eof {
        Ok(0) => Ok(()),
        Ok(_) => Err("unexpected data".into()),
        Err(e) => Err(format!("waiting for the server's close: {e}")),
    }
}

fn udp_rr(addr: SocketAddr, secs: Duration) -> Result<Sample, String> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| format!("UDP bind: {e}"))?;
    socket
        .connect(addr)
        .map_err(|e| format!("UDP connect: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let request = [0x42u8; UDP_PAYLOAD];
    let mut answer = [0u8; 2048];
    let mut done = 0u64;
    let mut failures = 0u64;
    let start = Instant::now();
    while start.elapsed() < secs {
        if socket.send(&request).is_err() {
            failures += 1;
            continue;
        }
        match socket.recv(&mut answer) {
            Ok(n) if n == UDP_PAYLOAD => done += 1,
            _ => failures += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if done == 0 {
        return Err(format!("no UDP answer from {addr} ({failures} failed)"));
    }
    Ok(Sample {
        value: done as f64 / elapsed,
        failures,
    })
}

/// Outcome of a single TCP connection attempt (the policy probes).
#[derive(Debug)]
pub enum Probe {
    Connected,
    /// No answer: what a policy drop gives.
    TimedOut,
    // Read through `Debug` in the bench's messages.
    #[allow(dead_code)]
    Failed(String),
}

pub fn probe_tcp(server: Ipv4Addr, port: u16, timeout: Duration) -> Probe {
    let addr = SocketAddr::from(SocketAddrV4::new(server, port));
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(conn) => {
            let _ = SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            Probe::Connected
        }
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            Probe::TimedOut
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// One UDP request with a fresh socket (a new flow): answered within `timeout`?
pub fn probe_udp(server: Ipv4Addr, port: u16, timeout: Duration) -> Result<bool, String> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| format!("UDP bind: {e}"))?;
    socket
        .connect(SocketAddrV4::new(server, port))
        .map_err(|e| format!("UDP connect: {e}"))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    socket
        .send(&[0x42u8; UDP_PAYLOAD])
        .map_err(|e| format!("UDP send: {e}"))?;
    let mut answer = [0u8; 2048];
    match socket.recv(&mut answer) {
        Ok(_) => Ok(true),
        Err(e) if idle(&e) => Ok(false),
        Err(e) => Err(format!("UDP recv: {e}")),
    }
}
