//! The VXLAN backend's thin edge: the [`VxlanDataplane`] trait (device, observe, apply one
//! [`Op`]), [`NetlinkVxlan`] implementing it with rtnetlink in the current network namespace,
//! and [`converge_vxlan`], which observes, plans ([`crate::vxlan::plan_ops`]) and applies.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use netlink_packet_route::AddressFamily;

use crate::vxlan::{plan_ops, Mac, Observed, Op, Overlay, VxlanDevice};
use crate::{NetError, DARI_PROTO};

/// The kernel side of the VXLAN backend.
#[async_trait::async_trait]
pub trait VxlanDataplane: Send + Sync {
    /// Creates the device or brings it to `dev` (recreated when VNI, port, local address or
    /// underlay differ; MTU, MAC, up and the one address fixed in place).
    async fn ensure_device(&self, dev: &VxlanDevice) -> Result<(), NetError>;
    /// dari's entries on device `dev` and dari's routes elsewhere.
    async fn observe(&self, dev: &str) -> Result<Observed, NetError>;
    /// Applies one change on device `dev`.
    async fn apply(&self, dev: &str, op: &Op) -> Result<(), NetError>;
    /// Removes device `dev` if it exists (switching back to host-gw); true if it existed.
    async fn remove_device(&self, dev: &str) -> Result<bool, NetError>;
}

/// Brings the kernel to `want` on device `dev`; returns the changes made.
pub async fn converge_vxlan(dp: &dyn VxlanDataplane, dev: &str, want: &Overlay) -> Result<Vec<Op>, NetError> {
    let have = dp.observe(dev).await?;
    let ops = plan_ops(&have, want);
    for op in &ops {
        dp.apply(dev, op).await?;
        tracing::info!(change = %op.command(dev), "vxlan overlay");
    }
    Ok(ops)
}

/// The interface holding an address: (index, name, MTU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
}

/// [`VxlanDataplane`] through rtnetlink in the current network namespace.
pub struct NetlinkVxlan {
    handle: rtnetlink::Handle,
}

fn link_err<'a>(op: &'static str, ifname: &'a str) -> impl FnOnce(rtnetlink::Error) -> NetError + 'a {
    move |source| NetError::Link { op, ifname: ifname.to_string(), source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn vxlan_info(l: &LinkMessage) -> Option<Vec<InfoVxlan>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn is_vxlan(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))))
}

/// Whether an existing link is the VXLAN device `dev` describes (kind, VNI, port, local,
/// underlay, learning off). MTU, MAC and addresses are fixed in place, not by recreating.
fn matches_device(l: &LinkMessage, dev: &VxlanDevice) -> bool {
    if !is_vxlan(l) {
        return false;
    }
    let Some(info) = vxlan_info(l) else { return false };
    let has = |x: InfoVxlan| info.contains(&x);
    has(InfoVxlan::Id(dev.vni)) && has(InfoVxlan::Port(dev.port)) && has(InfoVxlan::Local(dev.local)) && has(InfoVxlan::Link(dev.underlay_index)) && has(InfoVxlan::Learning(false))
}

impl NetlinkVxlan {
    /// Opens a netlink connection (spawned on the current runtime).
    pub fn new() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(l) => Ok(l),
            Err(e) if is_errno(&e, libc_enodev()) => Ok(None),
            Err(e) => Err(link_err("get", name)(e)),
        }
    }

    /// The interface holding `ip` and its MTU (the VXLAN device's underlay).
    pub async fn underlay(&self, ip: Ipv4Addr) -> Result<Underlay, NetError> {
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(a) = addrs.try_next().await.map_err(|source| NetError::Address { op: "list", ifname: "*".into(), addr: None, source })? {
            if a.attributes.iter().any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) | AddressAttribute::Local(IpAddr::V4(v)) if *v == ip)) {
                index = Some(a.header.index);
                break;
            }
        }
        let index = index.ok_or(NetError::NoUnderlay { ip })?;
        let mut links = self.handle.link().get().match_index(index).execute();
        let l = links.try_next().await.map_err(link_err("get", "underlay"))?.ok_or(NetError::NoUnderlay { ip })?;
        let mut u = Underlay { index, name: String::new(), mtu: 0 };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => u.name = n.clone(),
                LinkAttribute::Mtu(m) => u.mtu = *m,
                _ => {}
            }
        }
        Ok(u)
    }

    async fn ensure_addr(&self, dev: &VxlanDevice, index: u32) -> Result<(), NetError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        let mut have = Vec::new();
        while let Some(a) = addrs.try_next().await.map_err(|source| NetError::Address { op: "list", ifname: dev.name.clone(), addr: None, source })? {
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if let Some(ip) = ip {
                have.push((Ipv4Net::new(ip, a.header.prefix_len).ok(), a));
            }
        }
        for (net, msg) in have.iter() {
            if *net != dev.addr {
                self.handle.address().del(msg.clone()).execute().await.map_err(|source| NetError::Address { op: "delete", ifname: dev.name.clone(), addr: *net, source })?;
                tracing::info!(ifname = %dev.name, addr = ?net, "stale address removed from the vxlan device");
            }
        }
        if let Some(want) = dev.addr {
            if !have.iter().any(|(n, _)| *n == Some(want)) {
                self.handle
                    .address()
                    .add(index, IpAddr::V4(want.addr()), want.prefix_len())
                    .execute()
                    .await
                    .map_err(|source| NetError::Address { op: "add", ifname: dev.name.clone(), addr: Some(want), source })?;
                tracing::info!(ifname = %dev.name, addr = %want, "vxlan device address (VTEP IP)");
            }
        }
        Ok(())
    }

    fn route_message(dst: Ipv4Net, gw: Ipv4Addr, oif: Option<u32>) -> netlink_packet_route::route::RouteMessage {
        let mut b = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst.network(), dst.prefix_len()).gateway(gw).protocol(RouteProtocol::Other(DARI_PROTO));
        if let Some(i) = oif {
            b = b.output_interface(i).onlink();
        }
        b.build()
    }

    async fn index_of(&self, dev: &str) -> Result<u32, NetError> {
        self.link_by_name(dev).await?.map(|l| l.header.index).ok_or_else(|| NetError::NoDevice { ifname: dev.to_string() })
    }
}

/// ENODEV (the kernel's answer to a link lookup by a name that does not exist).
fn libc_enodev() -> i32 {
    19
}

#[async_trait::async_trait]
impl VxlanDataplane for NetlinkVxlan {
    async fn ensure_device(&self, dev: &VxlanDevice) -> Result<(), NetError> {
        let mut existing = self.link_by_name(&dev.name).await?;
        if let Some(l) = &existing {
            if !matches_device(l, dev) {
                tracing::info!(ifname = %dev.name, "vxlan device differs (kind, VNI, port, local or underlay): recreating");
                self.handle.link().del(l.header.index).execute().await.map_err(link_err("delete", &dev.name))?;
                existing = None;
            }
        }
        let index = match existing {
            Some(l) => {
                let mtu_ok = l.attributes.contains(&LinkAttribute::Mtu(dev.mtu));
                let mac_ok = l.attributes.contains(&LinkAttribute::Address(dev.mac.0.to_vec()));
                let up = l.header.flags.contains(netlink_packet_route::link::LinkFlags::Up);
                if !(mtu_ok && mac_ok && up) {
                    let msg = rtnetlink::LinkUnspec::new_with_index(l.header.index).mtu(dev.mtu).address(dev.mac.0.to_vec()).up().build();
                    self.handle.link().set(msg).execute().await.map_err(link_err("set", &dev.name))?;
                }
                l.header.index
            }
            None => {
                let msg = rtnetlink::LinkVxlan::new(&dev.name, dev.vni)
                    .dev(dev.underlay_index)
                    .port(dev.port)
                    .local(dev.local)
                    .learning(false)
                    .mtu(dev.mtu)
                    .address(dev.mac.0.to_vec())
                    .up()
                    .build();
                self.handle.link().add(msg).execute().await.map_err(link_err("add", &dev.name))?;
                tracing::info!(ifname = %dev.name, vni = dev.vni, port = dev.port, local = %dev.local, mtu = dev.mtu, mac = %dev.mac, "vxlan device created");
                self.index_of(&dev.name).await?
            }
        };
        self.ensure_addr(dev, index).await
    }

    async fn observe(&self, dev: &str) -> Result<Observed, NetError> {
        let index = self.index_of(dev).await?;
        let mut o = Observed::default();
        let filter = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        while let Some(r) = routes.try_next().await.map_err(NetError::List)? {
            if r.header.protocol != RouteProtocol::Other(DARI_PROTO) {
                continue;
            }
            let (mut dst, mut gw, mut oif) = (None, None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let (Some(d), Some(g)) = (dst, gw) else { continue };
            let Ok(net) = Ipv4Net::new(d, r.header.destination_prefix_length) else { continue };
            if oif == Some(index) {
                o.overlay.routes.insert(net, g);
            } else {
                o.stray_routes.insert(net, g);
            }
        }
        let mut neigh = self.handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
        while let Some(n) = neigh.try_next().await.map_err(|source| NetError::Neigh { op: "list", ip: None, source })? {
            if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => Mac::from_slice(b),
                _ => None,
            });
            if let (Some(ip), Some(mac)) = (ip, mac) {
                o.overlay.neighbours.insert(ip, mac);
            }
        }
        let mut fdb = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        while let Some(n) = fdb.try_next().await.map_err(|source| NetError::Neigh { op: "list fdb", ip: None, source })? {
            if n.header.ifindex != index {
                continue;
            }
            // in AF_BRIDGE messages NDA_DST is not parsed by family: 4 raw bytes for IPv4
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from),
                _ => None,
            });
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => Mac::from_slice(b),
                _ => None,
            });
            if let (Some(dst), Some(mac)) = (dst, mac) {
                if mac != Mac([0; 6]) {
                    o.overlay.fdb.insert(mac, dst);
                }
            }
        }
        Ok(o)
    }

    async fn apply(&self, dev: &str, op: &Op) -> Result<(), NetError> {
        let index = self.index_of(dev).await?;
        let h = &self.handle;
        match op {
            Op::DelRoute { dst, gw, on_dev } => {
                let msg = Self::route_message(*dst, *gw, on_dev.then_some(index));
                match h.route().del(msg).execute().await {
                    Err(e) if is_errno(&e, 3) => Ok(()), // ESRCH: already gone
                    r => r.map_err(|source| NetError::Route { op: "delete", dst: *dst, gw: *gw, source }),
                }
            }
            Op::SetRoute { dst, gw } => h
                .route()
                .add(Self::route_message(*dst, *gw, Some(index)))
                .replace()
                .execute()
                .await
                .map_err(|source| NetError::Route { op: "replace", dst: *dst, gw: *gw, source }),
            Op::SetNeigh { ip, mac } => h
                .neighbours()
                .add(index, IpAddr::V4(*ip))
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|source| NetError::Neigh { op: "replace", ip: Some(*ip), source }),
            Op::DelNeigh { ip, mac } => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.ifindex = index;
                m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
                m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                match h.neighbours().del(m).execute().await {
                    Err(e) if is_errno(&e, 2) => Ok(()), // ENOENT
                    r => r.map_err(|source| NetError::Neigh { op: "delete", ip: Some(*ip), source }),
                }
            }
            Op::SetFdb { mac, dst } => h
                .neighbours()
                .add_bridge(index, &mac.0)
                .destination(IpAddr::V4(*dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|source| NetError::Fdb { op: "replace", mac: mac.to_string(), dst: *dst, source }),
            Op::DelFdb { mac, dst } => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = index;
                m.header.flags = NeighbourFlags::Own;
                m.header.state = NeighbourState::Permanent;
                m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*dst)));
                match h.neighbours().del(m).execute().await {
                    Err(e) if is_errno(&e, 2) => Ok(()),
                    r => r.map_err(|source| NetError::Fdb { op: "delete", mac: mac.to_string(), dst: *dst, source }),
                }
            }
        }
    }

    async fn remove_device(&self, dev: &str) -> Result<bool, NetError> {
        match self.link_by_name(dev).await? {
            Some(l) if is_vxlan(&l) => {
                self.handle.link().del(l.header.index).execute().await.map_err(link_err("delete", dev))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
