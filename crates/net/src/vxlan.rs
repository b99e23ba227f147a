//! The VXLAN backend's pure core (flannel's `vxlan` backend, the same kernel objects).
//!
//! Every node owns one VXLAN device ([`VxlanDevice`]: VNI 1, UDP 8472, `nolearning`,
//! `local` = the node IP, MTU = underlay MTU − 50) whose address is the `.0` of its podCIDR
//! as a /32: that address is the node's VTEP IP. For every *other* node that published a VTEP
//! MAC on its Node object ([`ANN_VXLAN_MAC`]) the node wants ([`desired_overlay`]):
//!
//! ```text
//! route   PODCIDR via VTEP_IP dev dari.1 onlink proto 218
//! neigh   VTEP_IP lladdr VTEP_MAC dev dari.1 nud permanent      (no ARP over the tunnel)
//! fdb     VTEP_MAC dev dari.1 dst NODE_IP self permanent         (which host gets the frame)
//! ```
//!
//! [`plan_ops`] diffs what the kernel has ([`Observed`]) with that, in an order that never
//! leaves a route without its neighbour and FDB entry. Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::NodeNet;

/// The Node annotation naming the node's backend (`vxlan` or `host-gw`), like flannel's
/// `flannel.alpha.coreos.com/backend-type`.
pub const ANN_BACKEND: &str = "dari.dev/backend-type";
/// The Node annotation holding the node's VTEP MAC (`0e:da:ac:1f:00:0a`), like flannel's
/// `VtepMAC` in `flannel.alpha.coreos.com/backend-data`.
pub const ANN_VXLAN_MAC: &str = "dari.dev/vxlan-mac";
/// The Node annotation holding the underlay address other nodes send VXLAN packets to, like
/// flannel's `flannel.alpha.coreos.com/public-ip` (default: the InternalIP).
pub const ANN_PUBLIC_IP: &str = "dari.dev/public-ip";

/// VXLAN header overhead on an IPv4 underlay: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (six hex bytes separated by ':')"));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(Mac(out))
    }
}

impl Mac {
    /// From a netlink link-layer address (6 bytes).
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }
}

/// The VTEP MAC of the node with underlay address `ip`: `0e:da` (locally administered,
/// unicast) then the four address bytes. Deterministic, so a recreated device or a restarted
/// agent keeps the MAC every other node has programmed; unique per node IP.
pub fn vtep_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    Mac([0x0e, 0xda, o[0], o[1], o[2], o[3]])
}

/// The VTEP IP of a node: the network address (`.0`) of its podCIDR.
pub fn vtep_ip(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}

/// The annotations a node publishes on its own Node object (pure).
pub fn own_annotations(node_ip: Ipv4Addr) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(ANN_BACKEND.to_string(), "vxlan".to_string());
    m.insert(ANN_VXLAN_MAC.to_string(), vtep_mac(node_ip).to_string());
    m.insert(ANN_PUBLIC_IP.to_string(), node_ip.to_string());
    m
}

/// The node's own VXLAN device, as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    /// Interface name (default `dari.1`).
    pub name: String,
    /// VXLAN network identifier (default 1).
    pub vni: u32,
    /// UDP destination port (default 8472, the Linux/flannel port, not IANA's 4789).
    pub port: u16,
    /// Source address of the outer packets: the node IP.
    pub local: Ipv4Addr,
    /// Index of the underlay interface holding `local`.
    pub underlay_index: u32,
    /// Underlay MTU − [`VXLAN_OVERHEAD`].
    pub mtu: u32,
    /// The VTEP MAC ([`vtep_mac`]).
    pub mac: Mac,
    /// `.0/32` of the podCIDR, once the node has one.
    pub addr: Option<Ipv4Net>,
}

/// The device for a node (pure): `local` and the MAC from the node IP, MTU from the underlay.
pub fn device_for(name: &str, vni: u32, port: u16, node_ip: Ipv4Addr, underlay_index: u32, underlay_mtu: u32, pod_cidr: Option<Ipv4Net>) -> VxlanDevice {
    VxlanDevice {
        name: name.to_string(),
        vni,
        port,
        local: node_ip,
        underlay_index,
        mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        mac: vtep_mac(node_ip),
        addr: pod_cidr.and_then(|c| Ipv4Net::new(vtep_ip(c), 32).ok()),
    }
}

/// What one node programs for all the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    /// Remote podCIDR → remote VTEP IP (onlink, on the VXLAN device).
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Remote VTEP IP → remote VTEP MAC (permanent neighbour entries).
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// Remote VTEP MAC → remote node IP (FDB entries).
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
}

impl Overlay {
    /// One line per entry, iproute2 style (what the golden tests compare).
    pub fn render(&self, dev: &str) -> String {
        let mut o = String::new();
        for (dst, gw) in &self.routes {
            o.push_str(&format!("route {dst} via {gw} dev {dev} onlink proto 218\n"));
        }
        for (ip, mac) in &self.neighbours {
            o.push_str(&format!("neigh {ip} lladdr {mac} dev {dev} nud permanent\n"));
        }
        for (mac, dst) in &self.fdb {
            o.push_str(&format!("fdb {mac} dev {dev} dst {dst} self permanent\n"));
        }
        o
    }
}

/// The peers of `me` (pure): every other node with a podCIDR, a VXLAN backend annotation, a
/// VTEP MAC and an address (the public-ip annotation, else the InternalIP). Nodes missing any
/// of those are left out until they publish them.
pub fn desired_overlay(me: &str, nodes: &[NodeNet]) -> Overlay {
    let mut o = Overlay::default();
    for n in nodes.iter().filter(|n| n.name != me) {
        let (Some(cidr), Some(mac), Some(ip)) = (n.pod_cidr, n.vtep_mac, n.public_ip.or(n.internal_ip)) else {
            continue;
        };
        if n.backend.as_deref() != Some("vxlan") {
            continue;
        }
        let vtep = vtep_ip(cidr);
        o.routes.insert(cidr, vtep);
        o.neighbours.insert(vtep, mac);
        o.fdb.insert(mac, ip);
    }
    o
}

/// What the kernel has: dari's entries on the device, plus dari routes (proto 218) elsewhere
/// (e.g. left by the host-gw backend) that must go or be replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Entries on the VXLAN device.
    pub overlay: Overlay,
    /// Proto-218 routes not on the VXLAN device: dst → gateway.
    pub stray_routes: BTreeMap<Ipv4Net, Ipv4Addr>,
}

/// One kernel change. `Display` prints the equivalent iproute2 command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `ip route del DST via GW` (on the device, or a stray one).
    DelRoute {
        /// Destination.
        dst: Ipv4Net,
        /// Gateway.
        gw: Ipv4Addr,
        /// Whether it is on the VXLAN device.
        on_dev: bool,
    },
    /// `ip neigh del IP dev DEV`.
    DelNeigh {
        /// VTEP IP.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: Mac,
    },
    /// `bridge fdb del MAC dev DEV dst IP`.
    DelFdb {
        /// VTEP MAC.
        mac: Mac,
        /// Node IP.
        dst: Ipv4Addr,
    },
    /// `bridge fdb replace MAC dev DEV dst IP self permanent`.
    SetFdb {
        /// VTEP MAC.
        mac: Mac,
        /// Node IP.
        dst: Ipv4Addr,
    },
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    SetNeigh {
        /// VTEP IP.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: Mac,
    },
    /// `ip route replace DST via GW dev DEV onlink proto 218`.
    SetRoute {
        /// Destination.
        dst: Ipv4Net,
        /// VTEP IP.
        gw: Ipv4Addr,
    },
}

impl Op {
    /// The iproute2 equivalent for device `dev`.
    pub fn command(&self, dev: &str) -> String {
        match self {
            Op::DelRoute { dst, gw, on_dev: true } => format!("ip route del {dst} via {gw} dev {dev} proto 218"),
            Op::DelRoute { dst, gw, on_dev: false } => format!("ip route del {dst} via {gw} proto 218"),
            Op::DelNeigh { ip, mac } => format!("ip neigh del {ip} lladdr {mac} dev {dev}"),
            Op::DelFdb { mac, dst } => format!("bridge fdb del {mac} dev {dev} dst {dst} self"),
            Op::SetFdb { mac, dst } => format!("bridge fdb replace {mac} dev {dev} dst {dst} self permanent"),
            Op::SetNeigh { ip, mac } => format!("ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent"),
            Op::SetRoute { dst, gw } => format!("ip route replace {dst} via {gw} dev {dev} onlink proto 218"),
        }
    }
}

/// The changes that turn `have` into `want` (pure). Removals first (route, then neighbour, then
/// FDB: nothing points at a missing entry), then additions and changes in the other order (FDB,
/// neighbour, route: a route only appears once its next hop resolves). Nothing already right is
/// touched.
pub fn plan_ops(have: &Observed, want: &Overlay) -> Vec<Op> {
    let mut ops = Vec::new();
    for (dst, gw) in &have.overlay.routes {
        if !want.routes.contains_key(dst) {
            ops.push(Op::DelRoute { dst: *dst, gw: *gw, on_dev: true });
        }
    }
    for (dst, gw) in &have.stray_routes {
        if !want.routes.contains_key(dst) {
            ops.push(Op::DelRoute { dst: *dst, gw: *gw, on_dev: false });
        }
    }
    for (ip, mac) in &have.overlay.neighbours {
        if !want.neighbours.contains_key(ip) {
            ops.push(Op::DelNeigh { ip: *ip, mac: *mac });
        }
    }
    for (mac, dst) in &have.overlay.fdb {
        if !want.fdb.contains_key(mac) {
            ops.push(Op::DelFdb { mac: *mac, dst: *dst });
        }
    }
    for (mac, dst) in &want.fdb {
        if have.overlay.fdb.get(mac) != Some(dst) {
            ops.push(Op::SetFdb { mac: *mac, dst: *dst });
        }
    }
    for (ip, mac) in &want.neighbours {
        if have.overlay.neighbours.get(ip) != Some(mac) {
            ops.push(Op::SetNeigh { ip: *ip, mac: *mac });
        }
    }
    for (dst, gw) in &want.routes {
        // a stray route to the same destination is replaced in place (same dst, table, metric)
        if have.overlay.routes.get(dst) != Some(gw) || have.stray_routes.contains_key(dst) {
            ops.push(Op::SetRoute { dst: *dst, gw: *gw });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str) -> NodeNet {
        let ip: Ipv4Addr = ip.parse().expect("ip");
        NodeNet {
            name: name.into(),
            pod_cidr: Some(cidr.parse().expect("cidr")),
            internal_ip: Some(ip),
            backend: Some("vxlan".into()),
            vtep_mac: Some(vtep_mac(ip)),
            public_ip: None,
        }
    }

    #[test]
    fn mac_round_trip_and_shape() {
        let m = vtep_mac("172.31.0.10".parse().expect("ip"));
        assert_eq!(m.to_string(), "0e:da:ac:1f:00:0a");
        assert_eq!(m.to_string().parse::<Mac>().expect("parse"), m);
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast");
        assert!("0e:da:ac".parse::<Mac>().is_err());
        assert!("zz:da:ac:1f:00:0a".parse::<Mac>().is_err());
    }

    #[test]
    fn device_mtu_and_address() {
        let d = device_for("dari.1", 1, 8472, "172.31.0.11".parse().expect("ip"), 2, 1400, Some("10.244.1.0/24".parse().expect("cidr")));
        assert_eq!(d.mtu, 1350);
        assert_eq!(d.addr, Some("10.244.1.0/32".parse().expect("net")));
        assert_eq!(device_for("dari.1", 1, 8472, "172.31.0.11".parse().expect("ip"), 2, 1500, None).mtu, 1450);
    }

    #[test]
    fn peers_need_cidr_mac_backend_and_address() {
        let mut nodes = vec![node("a", "10.244.0.0/24", "172.31.0.10"), node("b", "10.244.1.0/24", "172.31.0.11")];
        let mut no_mac = node("c", "10.244.2.0/24", "172.31.0.12");
        no_mac.vtep_mac = None;
        let mut hostgw = node("d", "10.244.3.0/24", "172.31.0.13");
        hostgw.backend = Some("host-gw".into());
        let mut public = node("e", "10.244.4.0/24", "172.31.0.14");
        public.public_ip = Some("192.168.9.14".parse().expect("ip"));
        nodes.extend([no_mac, hostgw, public]);
        let o = desired_overlay("a", &nodes);
        assert_eq!(o.routes.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["10.244.1.0/24", "10.244.4.0/24"]);
        assert_eq!(o.fdb.get(&vtep_mac("172.31.0.14".parse().expect("ip"))), Some(&"192.168.9.14".parse().expect("ip")), "public-ip wins");
    }

    #[test]
    fn plan_orders_and_skips_what_is_right() {
        let nodes = [node("a", "10.244.0.0/24", "172.31.0.10"), node("b", "10.244.1.0/24", "172.31.0.11"), node("c", "10.244.2.0/24", "172.31.0.12")];
        let want = desired_overlay("a", &nodes);
        let have = Observed { overlay: want.clone(), stray_routes: BTreeMap::new() };
        assert!(plan_ops(&have, &want).is_empty(), "converged: nothing to do");
        // from nothing, with a host-gw leftover for b and a stale one for a gone node
        let mut stray = BTreeMap::new();
        stray.insert("10.244.1.0/24".parse().expect("cidr"), "172.31.0.11".parse().expect("ip"));
        stray.insert("10.244.9.0/24".parse().expect("cidr"), "172.31.0.19".parse().expect("ip"));
        let ops = plan_ops(&Observed { overlay: Overlay::default(), stray_routes: stray }, &want);
        let text: Vec<String> = ops.iter().map(|o| o.command("dari.1")).collect();
        assert_eq!(
            text,
            [
                "ip route del 10.244.9.0/24 via 172.31.0.19 proto 218",
                "bridge fdb replace 0e:da:ac:1f:00:0b dev dari.1 dst 172.31.0.11 self permanent",
                "bridge fdb replace 0e:da:ac:1f:00:0c dev dari.1 dst 172.31.0.12 self permanent",
                "ip neigh replace 10.244.1.0 lladdr 0e:da:ac:1f:00:0b dev dari.1 nud permanent",
                "ip neigh replace 10.244.2.0 lladdr 0e:da:ac:1f:00:0c dev dari.1 nud permanent",
                "ip route replace 10.244.1.0/24 via 10.244.1.0 dev dari.1 onlink proto 218",
                "ip route replace 10.244.2.0/24 via 10.244.2.0 dev dari.1 onlink proto 218",
            ]
        );
    }
}
