//! Truth tables: every (source, destination, family, protocol/port) of a scenario probed at
//! once, compared with what the scenario expects, and shown as a matrix (rows = sources,
//! columns = destinations) when they differ.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use crate::netns::Netns;
use crate::probe::{self, Outcome, Probe, LONG, SHORT};
use crate::support::Proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub const BOTH: [Fam; 2] = [Fam::V4, Fam::V6];

    pub fn name(self) -> &'static str {
        match self {
            Fam::V4 => "IPv4",
            Fam::V6 => "IPv6",
        }
    }
}

/// A protocol and destination port probed for every pair.
pub type ProbeKind = (Proto, u16);

pub fn kind_name((proto, port): ProbeKind) -> String {
    let p = match proto {
        Proto::Tcp => "T",
        Proto::Udp => "U",
        Proto::Sctp => "S",
    };
    format!("{p}{port}")
}

pub fn proto_name(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

/// Something that sends and serves: a pod, a node, the outside host.
pub struct Endpoint<'a> {
    pub label: String,
    pub ns: &'a Netns,
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    /// Nodes and the outside host: pairs of two of them are not probed (no policy
    /// applies to them).
    pub infra: bool,
}

impl Endpoint<'_> {
    pub fn addr(&self, fam: Fam) -> Option<IpAddr> {
        match fam {
            Fam::V4 => self.v4,
            Fam::V6 => self.v6,
        }
    }
}

/// One probed flow with its expectation and outcome.
pub struct Cell {
    pub src: usize,
    pub dst: usize,
    pub fam: Fam,
    pub kind: usize,
    pub expected: bool,
    pub outcome: Outcome,
    /// The outcome of the first, short try, when a second one was needed.
    pub first: Option<Outcome>,
}

impl Cell {
    pub fn ok(&self) -> bool {
        self.outcome.reachable() == Some(self.expected)
    }
}

/// Probes everything and returns the cells; `expect(src addr, dst addr, proto, port)`.
pub fn measure(
    endpoints: &[Endpoint<'_>],
    kinds: &[ProbeKind],
    expect: impl Fn(IpAddr, IpAddr, Proto, u16) -> bool,
) -> Vec<Cell> {
    let mut cells = Vec::new();
    let mut probes = Vec::new();
    for (si, src) in endpoints.iter().enumerate() {
        for (di, dst) in endpoints.iter().enumerate() {
            if src.infra && dst.infra {
                continue;
            }
            for fam in Fam::BOTH {
                let (Some(from), Some(to)) = (src.addr(fam), dst.addr(fam)) else {
                    continue;
                };
                for (ki, (proto, port)) in kinds.iter().copied().enumerate() {
                    cells.push(Cell {
                        src: si,
                        dst: di,
                        fam,
                        kind: ki,
                        expected: expect(from, to, proto, port),
                        outcome: Outcome::Timeout,
                        first: None,
                    });
                    probes.push(Probe {
                        src: src.ns.file(),
                        bind: Some(from),
                        dst: to,
                        proto,
                        port,
                        sctp_owner: &dst.ns.name,
                        timeout: SHORT,
                    });
                }
            }
        }
    }
    let outcomes = probe::run_all(&probes);
    for (cell, outcome) in cells.iter_mut().zip(outcomes) {
        cell.outcome = outcome;
    }
    // A flow expected to get through gets a second, longer chance: a slow box must not
    // read as a policy drop. A flow that got through when it should not is never retried.
    let retry: Vec<usize> = cells
        .iter()
        .enumerate()
        .filter(|(_, c)| c.expected && !c.ok())
        .map(|(i, _)| i)
        .collect();
    if !retry.is_empty() {
        let again: Vec<Probe<'_>> = retry
            .iter()
            .filter_map(|i| probes.get(*i))
            .map(|p| Probe {
                timeout: LONG,
                ..*p
            })
            .collect();
        for (i, outcome) in retry.iter().zip(probe::run_all(&again)) {
            if let Some(cell) = cells.get_mut(*i) {
                cell.first = Some(std::mem::replace(&mut cell.outcome, outcome));
            }
        }
    }
    cells
}

/// Measures a full table; `Err` holds the matrices and the list of differences.
pub fn verify(
    title: &str,
    endpoints: &[Endpoint<'_>],
    kinds: &[ProbeKind],
    expect: impl Fn(IpAddr, IpAddr, Proto, u16) -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    let cells = measure(endpoints, kinds, expect);
    let bad = cells.iter().filter(|c| !c.ok()).count();
    println!(
        "{title}: {} probes in {:.2?}, {bad} unexpected",
        cells.len(),
        started.elapsed()
    );
    if bad > 0 {
        return Err(report(title, endpoints, kinds, &cells));
    }
    Ok(())
}

/// The matrices (one per family) and the list of mismatches.
pub fn report(
    title: &str,
    endpoints: &[Endpoint<'_>],
    kinds: &[ProbeKind],
    cells: &[Cell],
) -> String {
    let mut out = String::new();
    let bad: Vec<&Cell> = cells.iter().filter(|c| !c.ok()).collect();
    let _ = writeln!(
        out,
        "\n=== {title}: {} of {} flows not as expected ===",
        bad.len(),
        cells.len()
    );
    let kind_names: Vec<String> = kinds.iter().copied().map(kind_name).collect();
    let _ = writeln!(
        out,
        "cell = one character per probe, in the order {}\n\
         `+` reachable as expected   `.` blocked as expected   \
         `A` reachable but expected BLOCKED   `B` blocked but expected REACHABLE   `?` broken",
        kind_names.join(" ")
    );
    for fam in Fam::BOTH {
        if !cells.iter().any(|c| c.fam == fam) {
            continue;
        }
        let width = kinds.len().max(4);
        let label_width = endpoints.iter().map(|e| e.label.len()).max().unwrap_or(0) + 5;
        let _ = writeln!(out, "\n{} (rows: from, columns: to)", fam.name());
        let mut header = format!("{:label_width$}", "");
        for i in 0..endpoints.len() {
            let _ = write!(header, " {:<width$}", format!("[{i}]"));
        }
        let _ = writeln!(out, "{}", header.trim_end());
        for (si, src) in endpoints.iter().enumerate() {
            let mut line = format!("{:<label_width$}", format!("[{si}] {}", src.label));
            for di in 0..endpoints.len() {
                let mut cell: String = (0..kinds.len())
                    .map(|ki| {
                        cells
                            .iter()
                            .find(|c| c.src == si && c.dst == di && c.fam == fam && c.kind == ki)
                            .map_or(' ', symbol)
                    })
                    .collect();
                if cell.trim().is_empty() {
                    cell = "-".to_string();
                }
                let _ = write!(line, " {cell:<width$}");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let _ = writeln!(out, "\nmismatches:");
    for c in bad {
        let (src, dst) = (&endpoints[c.src], &endpoints[c.dst]);
        let (proto, port) = kinds[c.kind];
        let _ = writeln!(
            out,
            "  {} ({}) -> {} ({}) {}/{port}: expected {}, got {}{}",
            src.label,
            src.addr(c.fam).map_or("?".into(), |a| a.to_string()),
            dst.label,
            dst.addr(c.fam).map_or("?".into(), |a| a.to_string()),
            proto_name(proto),
            if c.expected { "reachable" } else { "blocked" },
            c.outcome,
            c.first
                .as_ref()
                .map(|f| format!(" (first try: {f})"))
                .unwrap_or_default()
        );
    }
    out
}

fn symbol(c: &Cell) -> char {
    match (c.outcome.reachable(), c.expected) {
        (Some(true), true) => '+',
        (Some(false), false) => '.',
        (Some(true), false) => 'A',
        (Some(false), true) => 'B',
        (None, _) => '?',
    }
}
