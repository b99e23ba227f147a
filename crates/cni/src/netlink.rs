//! Network configuration behind a small trait: [`Netlink`] is one network namespace.
//! [`RtNetlink`] talks rtnetlink (the pod side opens its socket on a dedicated thread that
//! `setns`'d into the pod netns); [`FakeNet`] records calls and models links for unit tests.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{Error, Result};

/// A link as the plugin needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC.
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Bridge (master) ifindex.
    pub master: Option<u32>,
    /// rtnetlink kind ("bridge", "veth", ...).
    pub kind: Option<String>,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Gateway.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
}

/// Where the peer of a new veth goes.
pub struct PeerNs<'a> {
    /// The open netns file.
    pub file: &'a File,
    /// Its path, for messages and the fake.
    pub label: &'a str,
}

/// Operations in one network namespace.
pub trait Netlink {
    /// Namespace label for errors ("host" or the netns path).
    fn label(&self) -> String;
    /// Looks a link up by name.
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    /// Creates a bridge (EEXIST is not an error: a parallel ADD may have made it).
    fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()>;
    /// Creates a veth pair here; the peer is created directly in `peer_ns`.
    fn add_veth(&mut self, name: &str, peer: &str, mtu: Option<u32>, peer_ns: &PeerNs<'_>) -> Result<()>;
    /// Sets a link up.
    fn set_up(&mut self, index: u32) -> Result<()>;
    /// Enables promiscuous mode.
    fn set_promisc(&mut self, index: u32) -> Result<()>;
    /// Enslaves `index` to bridge `master`.
    fn set_master(&mut self, index: u32, master: u32) -> Result<()>;
    /// Sets bridge port hairpin mode.
    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()>;
    /// Deletes a link.
    fn del_link(&mut self, index: u32) -> Result<()>;
    /// Addresses of a link (global scope and others).
    fn addrs(&mut self, index: u32) -> Result<Vec<IpNet>>;
    /// Adds an address.
    fn add_addr(&mut self, index: u32, addr: IpNet) -> Result<()>;
    /// Removes an address.
    fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<()>;
    /// Routes of one family in the main table.
    fn routes(&mut self, v4: bool) -> Result<Vec<RouteEntry>>;
    /// Adds a route.
    fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<()>;
}

fn io_of(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

/// The rtnetlink implementation, one socket per namespace, driven by a shared current-thread runtime.
pub struct RtNetlink {
    rt: Rc<tokio::runtime::Runtime>,
    handle: Handle,
    label: String,
}

impl RtNetlink {
    /// A socket in the calling thread's (the host) namespace.
    pub fn host(rt: Rc<tokio::runtime::Runtime>) -> Result<Self> {
        let _g = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Netlink {
            op: "open socket",
            target: "rtnetlink".into(),
            netns: "host".into(),
            source: e,
        })?;
        rt.spawn(conn);
        Ok(RtNetlink { rt: rt.clone(), handle, label: "host".into() })
    }

    /// A socket inside `netns`: opened on a dedicated thread that setns'd into it, so the
    /// calling thread never changes namespace.
    pub fn in_netns(rt: Rc<tokio::runtime::Runtime>, netns: &File, label: &str) -> Result<Self> {
        let nserr = |op, source| Error::Netns { netns: label.to_string(), op, source };
        let f = netns.try_clone().map_err(|e| nserr("dup fd", e))?;
        let h = rt.handle().clone();
        let joined = std::thread::spawn(move || -> std::io::Result<_> {
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let _g = h.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok((conn, handle))
        })
        .join();
        let (conn, handle) = match joined {
            Ok(r) => r.map_err(|e| nserr("setns + open netlink socket", e))?,
            Err(_) => return Err(nserr("setns thread", std::io::Error::other("thread panicked"))),
        };
        rt.spawn(conn);
        Ok(RtNetlink { rt, handle, label: label.to_string() })
    }

    fn err(&self, op: &'static str, target: impl Into<String>, e: rtnetlink::Error) -> Error {
        Error::Netlink { op, target: target.into(), netns: self.label.clone(), source: io_of(e) }
    }

    fn set(&self, op: &'static str, index: u32, msg: netlink_packet_route::link::LinkMessage) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| self.err(op, format!("ifindex {index}"), e))
    }
}

fn parse_link(m: &netlink_packet_route::link::LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(a) => l.mac = a.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.master = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn parse_route(m: &RouteMessage) -> Option<RouteEntry> {
    let v4 = m.header.address_family == netlink_packet_route::AddressFamily::Inet;
    let mut dst: IpAddr = if v4 { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let mut gw = None;
    let mut oif = None;
    let mut table = m.header.table as u32;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = (*a).into(),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = (*a).into(),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some((*a).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gw = Some((*a).into()),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != 254 {
        return None;
    }
    let dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    Some(RouteEntry { dst, gw, oif })
}

impl Netlink for RtNetlink {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let fut = async {
            let mut s = self.handle.link().get().match_name(name.to_string()).execute();
            s.try_next().await
        };
        match self.rt.block_on(fut) {
            Ok(Some(m)) => Ok(Some(parse_link(&m))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(None),
            Err(e) => Err(self.err("get link", name, e)),
        }
    }

    fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        let mut b = LinkBridge::new(name);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        match self.rt.block_on(self.handle.link().add(b.build()).execute()) {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => Ok(()),
            Err(e) => Err(self.err("add bridge", name, e)),
        }
    }

    fn add_veth(&mut self, name: &str, peer: &str, mtu: Option<u32>, peer_ns: &PeerNs<'_>) -> Result<()> {
        let mut p = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        if let Some(m) = mtu {
            p = p.mtu(m);
        }
        p = p.setns_by_fd(peer_ns.file.as_raw_fd());
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())));
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.rt
            .block_on(self.handle.link().add(b.build()).execute())
            .map_err(|e| self.err("add veth", format!("{name} (peer {peer} in {})", peer_ns.label), e))
    }

    fn set_up(&mut self, index: u32) -> Result<()> {
        self.set("set up", index, LinkUnspec::new_with_index(index).up().build())
    }

    fn set_promisc(&mut self, index: u32) -> Result<()> {
        self.set("set promisc", index, LinkUnspec::new_with_index(index).promiscuous(true).build())
    }

    fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.set("set master", index, LinkUnspec::new_with_index(index).controller(master).build())
    }

    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.rt
            .block_on(self.handle.link().set_port(msg).execute())
            .map_err(|e| self.err("set hairpin", format!("ifindex {index}"), e))
    }

    fn del_link(&mut self, index: u32) -> Result<()> {
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(()),
            Err(e) => Err(self.err("delete link", format!("ifindex {index}"), e)),
        }
    }

    fn addrs(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let fut = async {
            let s = self.handle.address().get().set_link_index_filter(index).execute();
            s.try_collect::<Vec<_>>().await
        };
        let msgs = self.rt.block_on(fut).map_err(|e| self.err("list addresses", format!("ifindex {index}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            let mut addr = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr {
                if let Ok(n) = IpNet::new(ip, m.header.prefix_len) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    fn add_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        self.rt
            .block_on(self.handle.address().add(index, addr.addr(), addr.prefix_len()).execute())
            .map_err(|e| self.err("add address", format!("{addr} on ifindex {index}"), e))
    }

    fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        let fut = async {
            let s = self.handle.address().get().set_link_index_filter(index).execute();
            let msgs: Vec<_> = s.try_collect().await?;
            for m in msgs {
                let hit = m.header.index == index
                    && m.header.prefix_len == addr.prefix_len()
                    && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == addr.addr()));
                if hit {
                    self.handle.address().del(m).execute().await?;
                }
            }
            Ok::<(), rtnetlink::Error>(())
        };
        self.rt.block_on(fut).map_err(|e| self.err("delete address", format!("{addr} on ifindex {index}"), e))
    }

    fn routes(&mut self, v4: bool) -> Result<Vec<RouteEntry>> {
        let req = if v4 {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        let fut = async { self.handle.route().get(req).execute().try_collect::<Vec<_>>().await };
        let msgs = self.rt.block_on(fut).map_err(|e| self.err("list routes", "main table", e))?;
        Ok(msgs.iter().filter_map(parse_route).collect())
    }

    fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<()> {
        let target = format!("{dst} via {gw:?} dev ifindex {oif}");
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| Error::State { what: format!("route {target}: {e}") })?
            .output_interface(oif);
        if let Some(g) = gw {
            b = b.gateway(g).map_err(|e| Error::State { what: format!("route {target}: {e}") })?;
        } else {
            b = b.scope(netlink_packet_route::route::RouteScope::Link);
        }
        self.rt.block_on(self.handle.route().add(b.build()).execute()).map_err(|e| self.err("add route", target, e))
    }
}

/// Shared state of a [`FakeNet`] world: links per namespace label, plus a call log.
#[derive(Debug, Default)]
pub struct FakeWorld {
    /// ns label -> links.
    pub links: BTreeMap<String, Vec<Link>>,
    /// (ns, ifindex) -> addresses.
    pub addrs: BTreeMap<(String, u32), Vec<IpNet>>,
    /// ns -> routes.
    pub routes: BTreeMap<String, Vec<RouteEntry>>,
    /// Every mutating call, as `ns: op args`.
    pub log: Vec<String>,
    next_index: u32,
}

/// A recording fake namespace. Clone the world `Rc` to create several namespaces.
pub struct FakeNet {
    /// Shared world.
    pub world: Rc<RefCell<FakeWorld>>,
    /// This namespace's label.
    pub ns: String,
}

impl FakeNet {
    /// A namespace in `world`, with `lo` (down).
    pub fn new(world: &Rc<RefCell<FakeWorld>>, ns: &str) -> Self {
        let mut w = world.borrow_mut();
        w.next_index += 1;
        let idx = w.next_index;
        w.links.entry(ns.to_string()).or_default().push(Link {
            index: idx,
            name: "lo".into(),
            mtu: 65536,
            ..Default::default()
        });
        drop(w);
        FakeNet { world: world.clone(), ns: ns.to_string() }
    }

    fn add(&self, ns: &str, name: &str, kind: &str, mtu: Option<u32>) -> u32 {
        let mut w = self.world.borrow_mut();
        w.next_index += 1;
        let idx = w.next_index;
        let mac = vec![0x02, 0, 0, 0, (idx >> 8) as u8, idx as u8];
        w.links.entry(ns.to_string()).or_default().push(Link {
            index: idx,
            name: name.into(),
            mac,
            mtu: mtu.unwrap_or(1500),
            up: false,
            master: None,
            kind: Some(kind.into()),
        });
        idx
    }

    fn log(&self, s: String) {
        self.world.borrow_mut().log.push(format!("{}: {s}", self.ns));
    }

    fn with_link(&self, index: u32, f: impl FnOnce(&mut Link)) -> Result<()> {
        let mut w = self.world.borrow_mut();
        let l = w
            .links
            .get_mut(&self.ns)
            .and_then(|v| v.iter_mut().find(|l| l.index == index))
            .ok_or_else(|| Error::Netlink {
                op: "fake",
                target: format!("ifindex {index}"),
                netns: self.ns.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        f(l);
        Ok(())
    }
}

impl Netlink for FakeNet {
    fn label(&self) -> String {
        self.ns.clone()
    }
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.world.borrow().links.get(&self.ns).and_then(|v| v.iter().find(|l| l.name == name).cloned()))
    }
    fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        self.log(format!("add bridge {name} mtu {mtu:?}"));
        if self.link(name)?.is_none() {
            let i = self.add(&self.ns, name, "bridge", mtu);
            self.with_link(i, |l| l.up = true)?;
        }
        Ok(())
    }
    fn add_veth(&mut self, name: &str, peer: &str, mtu: Option<u32>, peer_ns: &PeerNs<'_>) -> Result<()> {
        self.log(format!("add veth {name} peer {peer}@{} mtu {mtu:?}", peer_ns.label));
        let exists = self.world.borrow().links.get(peer_ns.label).is_some_and(|v| v.iter().any(|l| l.name == peer));
        if exists {
            return Err(Error::Netlink {
                op: "add veth",
                target: peer.into(),
                netns: peer_ns.label.into(),
                source: std::io::Error::from_raw_os_error(libc::EEXIST),
            });
        }
        self.add(&self.ns, name, "veth", mtu);
        self.add(peer_ns.label, peer, "veth", mtu);
        Ok(())
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        self.log(format!("set up {index}"));
        self.with_link(index, |l| l.up = true)
    }
    fn set_promisc(&mut self, index: u32) -> Result<()> {
        self.log(format!("set promisc {index}"));
        self.with_link(index, |_| {})
    }
    fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.log(format!("set master {index} {master}"));
        self.with_link(index, |l| l.master = Some(master))
    }
    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        self.log(format!("set hairpin {index} {on}"));
        self.with_link(index, |_| {})
    }
    fn del_link(&mut self, index: u32) -> Result<()> {
        self.log(format!("del link {index}"));
        let mut w = self.world.borrow_mut();
        if let Some(v) = w.links.get_mut(&self.ns) {
            v.retain(|l| l.index != index);
        }
        Ok(())
    }
    fn addrs(&mut self, index: u32) -> Result<Vec<IpNet>> {
        Ok(self.world.borrow().addrs.get(&(self.ns.clone(), index)).cloned().unwrap_or_default())
    }
    fn add_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        self.log(format!("add addr {addr} {index}"));
        self.world.borrow_mut().addrs.entry((self.ns.clone(), index)).or_default().push(addr);
        Ok(())
    }
    fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        self.log(format!("del addr {addr} {index}"));
        if let Some(v) = self.world.borrow_mut().addrs.get_mut(&(self.ns.clone(), index)) {
            v.retain(|a| *a != addr);
        }
        Ok(())
    }
    fn routes(&mut self, v4: bool) -> Result<Vec<RouteEntry>> {
        let w = self.world.borrow();
        Ok(w.routes.get(&self.ns).map(|v| v.iter().filter(|r| r.dst.addr().is_ipv4() == v4).cloned().collect()).unwrap_or_default())
    }
    fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<()> {
        self.log(format!("add route {dst} via {gw:?} dev {oif}"));
        self.world.borrow_mut().routes.entry(self.ns.clone()).or_default().push(RouteEntry { dst, gw, oif: Some(oif) });
        Ok(())
    }
}
