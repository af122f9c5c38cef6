//! What every endpoint (pod, node, outside host) serves: TCP and UDP echo on the scenario's
//! ports, and a raw IPPROTO_SCTP socket per family that records the INIT chunks arriving in
//! its namespace.
//!
//! The sockets are created by a thread that entered the endpoint's namespace (a socket
//! belongs to the namespace it was created in); the threads serving them run anywhere. TCP
//! listens on `[::]` dual-stack; UDP binds each of the endpoint's addresses, so a reply
//! always leaves from the address the request was sent to (a node has several).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{recvfrom, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;
use crate::probe::{init_tag, sctp_registry, IPPROTO_SCTP};

/// How often blocked server calls wake up to look at the stop flag.
const TICK: Duration = Duration::from_millis(100);
const STACK: usize = 128 * 1024;

/// Ports an endpoint serves.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// The serving threads of one endpoint; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Servers {
    /// Starts serving in `ns`. `udp_addrs` are the endpoint's addresses.
    pub fn start(ns: &Netns, udp_addrs: &[IpAddr], ports: &Ports) -> Servers {
        let (listeners, udp, raw) = ns.run(|| {
            let listeners: Vec<Socket> = ports
                .tcp
                .iter()
                .map(|port| {
                    tcp_listener(*port).unwrap_or_else(|e| {
                        panic!("TCP listener on port {port} in {}: {e}", ns.name)
                    })
                })
                .collect();
            let mut udp = Vec::new();
            for addr in udp_addrs {
                for port in &ports.udp {
                    let socket = udp_socket(*addr, *port).unwrap_or_else(|e| {
                        panic!("UDP socket on {addr} port {port} in {}: {e}", ns.name)
                    });
                    udp.push(socket);
                }
            }
            let raw: Vec<Socket> = [Domain::IPV4, Domain::IPV6]
                .into_iter()
                .map(|domain| {
                    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_SCTP)))
                        .unwrap_or_else(|e| panic!("raw SCTP socket in {}: {e}", ns.name));
                    socket
                        .set_read_timeout(Some(TICK))
                        .expect("SO_RCVTIMEO on a raw socket");
                    socket
                })
                .collect();
            (listeners, udp, raw)
        });

        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for listener in listeners {
            let (stop, connections) = (stop.clone(), connections.clone());
            threads.push(spawn("tcp-accept", move || {
                accept_loop(listener, &stop, &connections)
            }));
        }
        for socket in udp {
            let stop = stop.clone();
            threads.push(spawn("udp-echo", move || udp_loop(socket, &stop)));
        }
        for socket in raw {
            let (stop, owner) = (stop.clone(), ns.name.clone());
            threads.push(spawn("sctp-record", move || {
                sctp_loop(socket, &owner, &stop)
            }));
        }
        Servers {
            stop,
            threads,
            connections,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let connections = match self.connections.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for thread in connections {
            let _ = thread.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK)
        .spawn(f)
        .expect("spawning a server thread")
}

fn tcp_listener(port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
    socket.listen(256)?;
    // SO_RCVTIMEO bounds accept() too on Linux.
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket)
}

fn udp_socket(addr: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let domain = Domain::for_address(SocketAddr::new(addr, port));
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&SocketAddr::new(addr, port).into())?;
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket.into())
}

fn idle(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn accept_loop(listener: Socket, stop: &Arc<AtomicBool>, connections: &Mutex<Vec<JoinHandle<()>>>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let stop = stop.clone();
                let handle = spawn("tcp-echo", move || echo_connection(conn.into(), &stop));
                if let Ok(mut list) = connections.lock() {
                    list.retain(|h| !h.is_finished());
                    list.push(handle);
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

fn echo_connection(mut stream: TcpStream, stop: &AtomicBool) {
    if stream.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let Some(data) = buf.get(..n) else { return };
                if stream.write_all(data).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

fn udp_loop(socket: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(data) = buf.get(..n) {
                    let _ = socket.send_to(data, from);
                }
            }
            Err(e) if idle(&e) => {}
            // ICMP errors from earlier replies surface here; keep serving.
            Err(_) => {}
        }
    }
}

fn sctp_loop(socket: Socket, owner: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match recvfrom::<SockaddrStorage>(socket.as_raw_fd(), &mut buf) {
            Ok((n, from)) => {
                let Some(packet) = buf.get(..n) else { continue };
                // IPv4 raw sockets deliver the IP header, IPv6 ones do not.
                let is_v4 = from.as_ref().and_then(|a| a.as_sockaddr_in()).is_some();
                let sctp = if is_v4 {
                    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
                    packet.get(ihl..)
                } else {
                    Some(packet)
                };
                if let Some(tag) = sctp.and_then(init_tag) {
                    sctp_registry().record(tag, owner);
                }
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(TICK),
        }
    }
}
