//! ipBlock algebra: `cidr` minus every `except`, as disjoint, sorted, non-adjacent inclusive
//! ranges — exactly what an nftables interval set holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::model::IpBlock;

/// Inclusive range over the address as an integer (IPv4 addresses use the low 32 bits).
type Span = (u128, u128);

fn span(net: &IpNet) -> Span {
    match net {
        IpNet::V4(n) => (
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The addresses of `block`, as disjoint inclusive ranges in ascending order, adjacent ranges
/// merged. Empty when the excepts cover the whole cidr.
pub fn ranges(block: &IpBlock) -> Vec<(IpAddr, IpAddr)> {
    let v4 = matches!(block.cidr, IpNet::V4(_));
    let (lo, hi) = span(&block.cidr);
    let mut holes: Vec<Span> = block.except.iter().map(span).collect();
    holes.sort_unstable();

    let mut out: Vec<Span> = Vec::new();
    let mut next = Some(lo); // first address not yet decided, None once past `hi`
    for (h_lo, h_hi) in holes {
        let Some(start) = next else { break };
        let h_lo = h_lo.max(lo);
        let h_hi = h_hi.min(hi);
        if h_lo > h_hi || h_hi < start {
            continue;
        }
        if h_lo > start {
            out.push((start, h_lo - 1));
        }
        next = h_hi.checked_add(1).filter(|n| *n <= hi);
    }
    if let Some(start) = next {
        out.push((start, hi));
    }

    let addr = |n: u128| -> IpAddr {
        if v4 {
            // Spans of an IPv4 block stay within 32 bits.
            IpAddr::V4(Ipv4Addr::from(n as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(n))
        }
    };
    out.into_iter().map(|(a, b)| (addr(a), addr(b))).collect()
}

/// Whether `addr` is in `block` (the definition `ranges` must agree with).
pub fn contains(block: &IpBlock, addr: &IpAddr) -> bool {
    block.cidr.contains(addr) && !block.except.iter().any(|e| e.contains(addr))
}

/// If `[first, last]` is exactly one prefix, that prefix (for readable output).
pub fn as_prefix(first: IpAddr, last: IpAddr) -> Option<IpNet> {
    let (a, b, bits) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return None,
    };
    let size = b.checked_sub(a)?.checked_add(1);
    // A full IPv6 range has size 2^128, which overflows: that is ::/0.
    let host_bits = match size {
        None => 128,
        Some(s) if s.is_power_of_two() => s.trailing_zeros(),
        Some(_) => return None,
    };
    if host_bits > bits || (host_bits < 128 && a & ((1u128 << host_bits) - 1) != 0) {
        return None;
    }
    IpNet::new(first, (bits - host_bits) as u8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().expect("cidr"),
            except: except.iter().map(|e| e.parse().expect("except")).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn two_holes_in_the_v4_internet() {
        let r = ranges(&block("0.0.0.0/0", &["10.0.0.0/8", "192.168.0.0/16"]));
        assert_eq!(
            r,
            vec![
                (ip("0.0.0.0"), ip("9.255.255.255")),
                (ip("11.0.0.0"), ip("192.167.255.255")),
                (ip("192.169.0.0"), ip("255.255.255.255")),
            ]
        );
    }

    #[test]
    fn overlapping_nested_and_edge_excepts() {
        let r = ranges(&block(
            "10.0.0.0/24",
            &[
                "10.0.0.0/26",
                "10.0.0.0/25",
                "10.0.0.192/26",
                "10.0.0.200/29",
            ],
        ));
        assert_eq!(r, vec![(ip("10.0.0.128"), ip("10.0.0.191"))]);
        assert_eq!(
            ranges(&block("10.0.0.0/24", &["10.0.0.0/25", "10.0.0.128/25"])),
            vec![]
        );
        assert_eq!(
            ranges(&block("::/0", &[])),
            vec![(ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))]
        );
    }

    #[test]
    fn prefixes_are_recognised() {
        assert_eq!(
            as_prefix(ip("10.0.0.0"), ip("10.255.255.255")),
            Some("10.0.0.0/8".parse().expect("net"))
        );
        assert_eq!(
            as_prefix(ip("10.0.0.7"), ip("10.0.0.7")),
            Some("10.0.0.7/32".parse().expect("net"))
        );
        assert_eq!(
            as_prefix(ip("0.0.0.0"), ip("255.255.255.255")),
            Some("0.0.0.0/0".parse().expect("net"))
        );
        assert_eq!(
            as_prefix(ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some("::/0".parse().expect("net"))
        );
        assert_eq!(as_prefix(ip("0.0.0.0"), ip("9.255.255.255")), None);
        assert_eq!(as_prefix(ip("10.0.0.1"), ip("10.0.0.2")), None);
    }

    /// splitmix64: a tiny deterministic generator for the property tests below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_block(rng: &mut Rng, v6: bool) -> IpBlock {
        let bits: u8 = if v6 { 128 } else { 32 };
        let len = rng.below(bits as u64 + 1) as u8;
        let base = if v6 {
            IpAddr::V6(Ipv6Addr::from(
                ((rng.next() as u128) << 64) | rng.next() as u128,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
        };
        let cidr = IpNet::new(base, len).expect("len fits").trunc();
        let mut except = Vec::new();
        for _ in 0..rng.below(5) {
            if len == bits {
                break;
            }
            let elen = len + 1 + rng.below((bits - len) as u64) as u8;
            let inside = random_inside(rng, &cidr);
            except.push(IpNet::new(inside, elen).expect("len fits").trunc());
        }
        IpBlock { cidr, except }
    }

    fn random_inside(rng: &mut Rng, net: &IpNet) -> IpAddr {
        let (lo, hi) = span(net);
        let off = if hi - lo == u128::MAX {
            ((rng.next() as u128) << 64) | rng.next() as u128
        } else {
            (((rng.next() as u128) << 64) | rng.next() as u128) % (hi - lo + 1)
        };
        match net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((lo + off) as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(lo + off)),
        }
    }

    fn in_ranges(r: &[(IpAddr, IpAddr)], a: &IpAddr) -> bool {
        r.iter().any(|(x, y)| x <= a && a <= y)
    }

    #[test]
    fn property_ranges_are_disjoint_sorted_and_equal_cidr_minus_except() {
        let mut rng = Rng(0x5eed);
        for case in 0..20_000 {
            let b = random_block(&mut rng, case % 3 == 0);
            let r = ranges(&b);
            for w in r.windows(2) {
                let next_after_end = match w[0].1 {
                    IpAddr::V4(a) => u32::from(a) as u128 + 1,
                    IpAddr::V6(a) => u128::from(a) + 1,
                };
                let next_start = match w[1].0 {
                    IpAddr::V4(a) => u32::from(a) as u128,
                    IpAddr::V6(a) => u128::from(a),
                };
                assert!(
                    next_start > next_after_end,
                    "case {case}: {b:?} gives adjacent or overlapping {r:?}"
                );
            }
            for (x, y) in &r {
                assert!(
                    x <= y && b.cidr.contains(x) && b.cidr.contains(y),
                    "case {case}: {b:?} -> {r:?}"
                );
            }
            // Probe: random addresses in the cidr, every except's edges and the ranges' edges.
            let mut probes: Vec<IpAddr> =
                (0..16).map(|_| random_inside(&mut rng, &b.cidr)).collect();
            for e in &b.except {
                probes.extend([e.network(), e.broadcast()]);
            }
            for (x, y) in &r {
                probes.extend([*x, *y]);
            }
            probes.extend([b.cidr.network(), b.cidr.broadcast()]);
            for p in probes {
                assert_eq!(
                    in_ranges(&r, &p),
                    contains(&b, &p),
                    "case {case}: {b:?} at {p}: {r:?}"
                );
            }
        }
    }
}
