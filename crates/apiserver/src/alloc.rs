//! ClusterIP and NodePort allocators.
//!
//! The allocations are derived state: at start they are rebuilt from the stored Services, and
//! every create/update/delete of a Service reserves or releases through here under one lock, so
//! a restart neither leaks nor double-allocates (kube-apiserver keeps a bitmap in etcd instead;
//! with one writer the Services themselves are the record).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use rand::Rng;

/// Why an allocation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The value is outside the range.
    #[error("the provided {what} {value} is not in the valid range {range}")]
    OutOfRange {
        /// "IP" or "port".
        what: &'static str,
        /// The value asked for.
        value: String,
        /// The range.
        range: String,
    },
    /// The value is taken.
    #[error("provided {what} is already allocated")]
    Taken {
        /// "IP" or "port".
        what: &'static str,
    },
    /// Nothing is free.
    #[error("range is full")]
    Full,
}

/// Allocates service IPs from a CIDR (network and broadcast addresses excluded).
#[derive(Clone, Debug)]
pub struct IpAllocator {
    net: Ipv4Net,
    used: BTreeSet<u32>,
}

impl IpAllocator {
    /// A new allocator over `net`.
    pub fn new(net: Ipv4Net) -> Self {
        Self { net, used: BTreeSet::new() }
    }

    /// The n-th address of the range (1 = the first usable one: the `kubernetes` Service).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let base = u32::from(self.net.network());
        let ip = base.checked_add(n)?;
        if n == 0 || ip >= u32::from(self.net.broadcast()) {
            return None;
        }
        Some(Ipv4Addr::from(ip))
    }

    fn size(&self) -> u32 {
        // usable addresses: all but network and broadcast
        let hosts = 1u64 << (32 - self.net.prefix_len());
        hosts.saturating_sub(2).min(u32::MAX as u64) as u32
    }

    /// Reserves a specific address.
    pub fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let v4 = match ip {
            IpAddr::V4(v4) if self.net.contains(&v4) && v4 != self.net.network() && v4 != self.net.broadcast() => v4,
            _ => return Err(AllocError::OutOfRange { what: "IP", value: ip.to_string(), range: self.net.to_string() }),
        };
        if !self.used.insert(u32::from(v4)) {
            return Err(AllocError::Taken { what: "IP" });
        }
        Ok(())
    }

    /// Reserves any free address, chosen at random (as upstream) so that restarts do not reuse
    /// recently released addresses first.
    pub fn allocate_next(&mut self) -> Result<Ipv4Addr, AllocError> {
        let size = self.size();
        if size == 0 || self.used.len() as u64 >= size as u64 {
            return Err(AllocError::Full);
        }
        let start = rand::thread_rng().gen_range(0..size);
        let base = u32::from(self.net.network()) + 1;
        for i in 0..size {
            let ip = base + (start + i) % size;
            if self.used.insert(ip) {
                return Ok(Ipv4Addr::from(ip));
            }
        }
        Err(AllocError::Full)
    }

    /// Releases an address (no-op when not held).
    pub fn release(&mut self, ip: IpAddr) {
        if let IpAddr::V4(v4) = ip {
            self.used.remove(&u32::from(v4));
        }
    }

    /// Whether an address is held.
    pub fn is_allocated(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if self.used.contains(&u32::from(v4)))
    }

    /// How many addresses are held.
    pub fn used(&self) -> usize {
        self.used.len()
    }
}

/// Allocates NodePorts from an inclusive range.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    first: u16,
    last: u16,
    used: BTreeSet<u16>,
}

impl PortAllocator {
    /// A new allocator over `first..=last`.
    pub fn new(first: u16, last: u16) -> Self {
        Self { first, last, used: BTreeSet::new() }
    }

    /// Reserves a specific port.
    pub fn allocate(&mut self, port: u16) -> Result<(), AllocError> {
        if port < self.first || port > self.last {
            return Err(AllocError::OutOfRange { what: "port", value: port.to_string(), range: format!("{}-{}", self.first, self.last) });
        }
        if !self.used.insert(port) {
            return Err(AllocError::Taken { what: "port" });
        }
        Ok(())
    }

    /// Reserves any free port.
    pub fn allocate_next(&mut self) -> Result<u16, AllocError> {
        let size = u32::from(self.last - self.first) + 1;
        if self.used.len() as u32 >= size {
            return Err(AllocError::Full);
        }
        let start = rand::thread_rng().gen_range(0..size);
        for i in 0..size {
            let port = self.first + ((start + i) % size) as u16;
            if self.used.insert(port) {
                return Ok(port);
            }
        }
        Err(AllocError::Full)
    }

    /// Releases a port.
    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    /// Whether a port is held.
    pub fn is_allocated(&self, port: u16) -> bool {
        self.used.contains(&port)
    }

    /// How many ports are held.
    pub fn used(&self) -> usize {
        self.used.len()
    }
}

/// Parses `30000-32767`.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b && a > 0).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test cidr")
    }

    #[test]
    fn first_ip_and_bounds() {
        let mut a = IpAllocator::new(net("10.96.0.0/12"));
        assert_eq!(a.nth(1), Some(Ipv4Addr::new(10, 96, 0, 1)));
        assert_eq!(a.nth(10), Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(a.allocate("10.96.0.0".parse().expect("ip")).is_err());
        assert!(a.allocate("10.111.255.255".parse().expect("ip")).is_err());
        assert!(a.allocate("10.112.0.1".parse().expect("ip")).is_err());
        assert_eq!(a.allocate("10.96.0.1".parse().expect("ip")), Ok(()));
        assert_eq!(a.allocate("10.96.0.1".parse().expect("ip")), Err(AllocError::Taken { what: "IP" }));
    }

    #[test]
    fn small_range_fills_then_frees() {
        let mut a = IpAllocator::new(net("10.0.0.0/29")); // 6 usable
        let got: HashSet<_> = (0..6).map(|_| a.allocate_next().expect("free ip")).collect();
        assert_eq!(got.len(), 6);
        assert_eq!(a.allocate_next(), Err(AllocError::Full));
        a.release(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(a.allocate_next(), Ok(Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[test]
    fn ports() {
        let mut p = PortAllocator::new(30000, 30002);
        assert!(p.allocate(29999).is_err());
        assert_eq!(p.allocate(30001), Ok(()));
        assert_eq!(p.allocate(30001), Err(AllocError::Taken { what: "port" }));
        let a = p.allocate_next().expect("port");
        let b = p.allocate_next().expect("port");
        assert_ne!(a, b);
        assert_eq!(p.allocate_next(), Err(AllocError::Full));
        assert_eq!(parse_port_range("30000-32767"), Some((30000, 32767)));
        assert_eq!(parse_port_range("5-1"), None);
    }

    proptest! {
        #[test]
        fn ip_allocator_never_hands_out_twice(ops in proptest::collection::vec((any::<bool>(), 0u32..14), 1..200)) {
            let mut a = IpAllocator::new(net("10.1.0.0/28"));
            let mut model: HashSet<Ipv4Addr> = HashSet::new();
            for (alloc, k) in ops {
                if alloc {
                    match a.allocate_next() {
                        Ok(ip) => { prop_assert!(model.insert(ip)); prop_assert!(net("10.1.0.0/28").contains(&ip)); }
                        Err(AllocError::Full) => prop_assert_eq!(model.len(), 14),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                } else {
                    let ip = Ipv4Addr::new(10, 1, 0, 1 + k as u8);
                    a.release(IpAddr::V4(ip));
                    model.remove(&ip);
                }
                prop_assert_eq!(a.used(), model.len());
            }
        }

        #[test]
        fn port_allocator_matches_model(ops in proptest::collection::vec((0u8..3, 30000u16..30010), 1..200)) {
            let mut p = PortAllocator::new(30000, 30009);
            let mut model: HashSet<u16> = HashSet::new();
            for (op, port) in ops {
                match op {
                    0 => { let r = p.allocate(port); prop_assert_eq!(r.is_ok(), model.insert(port)); }
                    1 => { if let Ok(x) = p.allocate_next() { prop_assert!(model.insert(x)); } else { prop_assert_eq!(model.len(), 10); } }
                    _ => { p.release(port); model.remove(&port); }
                }
                prop_assert_eq!(p.used(), model.len());
            }
        }
    }
}
