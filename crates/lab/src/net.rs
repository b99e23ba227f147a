//! The thin edge of the topology: [`LabNet`] is the handful of kernel operations a [`Step`]
//! needs; [`RealNet`] does them with rtnetlink and `setns` on dedicated threads (never in the
//! caller's thread, never through `ip netns exec`), [`FakeNet`] records them and models which
//! namespaces and links exist. [`apply`] runs a plan's steps, [`teardown`] removes its namespaces
//! (idempotent: missing namespaces are fine, so it works after a crash and twice in a row).
//!
//! Named namespaces are made the way iproute2 does, minus its one-time host change: a thread
//! `unshare(CLONE_NEWNET)`s and bind-mounts `/proc/thread-self/ns/net` on `/run/netns/NAME`.
//! (iproute2 also turns `/run/netns` into a shared mount point the first time; the lab does not,
//! so a host without it stays without it.) Deleting is `umount2(MNT_DETACH)` + `unlink`; the
//! kernel destroys the namespace, and every veth end in it, when the last process and socket
//! inside are gone, which is why [`crate::procs`] stops processes first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoKind, LinkAttribute};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{LabError, Result};
use crate::plan::{LabPlan, Step};

/// Where named network namespaces live (`/var/run` is a symlink to `/run` on Debian).
pub const NETNS_DIR: &str = "/run/netns";

/// `/run/netns/NAME`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a new thread that has `setns`'d into the namespace at `path`. The calling thread
/// never changes namespace. Sockets created by `f` stay in that namespace wherever they are used.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| LabError::Netns { netns: label.clone(), op: "open", source: e })?;
    let joined = std::thread::spawn(move || -> std::io::Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        Ok(f())
    })
    .join();
    match joined {
        Ok(r) => r.map_err(|e| LabError::Netns { netns: label, op: "setns", source: e }),
        Err(_) => Err(LabError::Netns { netns: label, op: "thread", source: std::io::Error::other("thread panicked") }),
    }
}

/// Names of the namespaces in [`NETNS_DIR`] (what `ip netns list` shows), sorted.
pub fn list_netns() -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The kernel operations the lab topology needs, one namespace name per call.
pub trait LabNet {
    /// Creates the named namespace; fails if it exists.
    fn create_netns(&mut self, name: &str) -> Result<()>;
    /// Deletes the named namespace; `Ok(false)` if it did not exist.
    fn delete_netns(&mut self, name: &str) -> Result<bool>;
    /// Whether the named namespace exists.
    fn netns_exists(&mut self, name: &str) -> bool;
    /// Creates a bridge.
    fn add_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()>;
    /// Creates a veth pair whose peer is created directly in `peer_netns`.
    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()>;
    /// Enslaves `ifname` to the bridge `master`.
    fn set_master(&mut self, netns: &str, ifname: &str, master: &str) -> Result<()>;
    /// Adds an IPv4 address.
    fn add_addr(&mut self, netns: &str, ifname: &str, addr: Ipv4Net) -> Result<()>;
    /// Sets a link up.
    fn link_up(&mut self, netns: &str, ifname: &str) -> Result<()>;
    /// Adds the default route.
    fn default_route(&mut self, netns: &str, via: Ipv4Addr) -> Result<()>;
    /// Writes a sysctl inside the namespace.
    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()>;
}

/// Executes one step.
pub fn apply_step(net: &mut dyn LabNet, step: &Step) -> Result<()> {
    match step {
        Step::CreateNetns { name } => net.create_netns(name),
        Step::AddBridge { netns, name, mtu } => net.add_bridge(netns, name, *mtu),
        Step::AddVeth { netns, name, peer_netns, peer, mtu } => net.add_veth(netns, name, peer_netns, peer, *mtu),
        Step::SetMaster { netns, ifname, master } => net.set_master(netns, ifname, master),
        Step::AddAddr { netns, ifname, addr } => net.add_addr(netns, ifname, *addr),
        Step::LinkUp { netns, ifname } => net.link_up(netns, ifname),
        Step::DefaultRoute { netns, via } => net.default_route(netns, *via),
        Step::Sysctl { netns, key, value } => net.sysctl(netns, key, value),
    }
}

/// Builds the topology. On error the caller should [`teardown`] (what exists is removed).
pub fn apply(plan: &LabPlan, net: &mut dyn LabNet) -> Result<()> {
    for step in plan.steps() {
        tracing::debug!(%step, "lab step");
        apply_step(net, &step)?;
    }
    Ok(())
}

/// Removes every namespace of the plan (nodes first, then the hub) and returns those that
/// existed. Missing ones are skipped, so this is safe after a crash and when run twice.
pub fn teardown(plan: &LabPlan, net: &mut dyn LabNet) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in plan.namespaces() {
        if net.delete_netns(&ns)? {
            removed.push(ns);
        }
    }
    Ok(removed)
}

fn io_of(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

/// The real kernel, through rtnetlink. One netlink socket per namespace, each opened on a
/// thread that `setns`'d there, all driven by a private current-thread runtime: call it from
/// plain threads (e.g. `tokio::task::spawn_blocking`), not from async code.
pub struct RealNet {
    rt: tokio::runtime::Runtime,
    handles: HashMap<String, Handle>,
}

/// The IPv4 nameservers of a resolv.conf text (pure).
pub fn resolv_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .collect()
}

impl RealNet {
    /// Adds `unreachable DST/32` inside `netns`: sending to `dst` then fails at once (ENETUNREACH)
    /// instead of waiting for a timeout.
    pub fn unreachable_route(&mut self, netns: &str, dst: Ipv4Addr) -> Result<()> {
        let h = self.handle(netns)?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .kind(netlink_packet_route::route::RouteType::Unreachable)
            .build();
        self.rt
            .block_on(h.route().add(msg).execute())
            .map_err(|e| Self::err(netns, "add route", format!("unreachable {dst}"), e))
    }

    /// A new applier.
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::Netns { netns: "-".into(), op: "start netlink runtime", source: e })?;
        Ok(RealNet { rt, handles: HashMap::new() })
    }

    fn handle(&mut self, netns: &str) -> Result<Handle> {
        if let Some(h) = self.handles.get(netns) {
            return Ok(h.clone());
        }
        let h = self.rt.handle().clone();
        let (conn, handle, _) = in_netns(&netns_path(netns), move || {
            let _g = h.enter();
            rtnetlink::new_connection()
        })?
        .map_err(|e| LabError::Netns { netns: netns.into(), op: "open netlink socket", source: e })?;
        self.rt.spawn(conn);
        self.handles.insert(netns.to_string(), handle.clone());
        Ok(handle)
    }

    fn err(netns: &str, op: &'static str, target: impl Into<String>, e: rtnetlink::Error) -> LabError {
        LabError::Netlink { op, target: target.into(), netns: netns.into(), source: io_of(e) }
    }

    fn index(&mut self, netns: &str, ifname: &str) -> Result<u32> {
        let h = self.handle(netns)?;
        let fut = async {
            let mut s = h.link().get().match_name(ifname.to_string()).execute();
            s.try_next().await
        };
        match self.rt.block_on(fut) {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(LabError::Netlink {
                op: "find link",
                target: ifname.into(),
                netns: netns.into(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            }),
            Err(e) => Err(Self::err(netns, "find link", ifname, e)),
        }
    }

    /// Names in [`NETNS_DIR`] (other than `exclude`) that have a namespace id inside `netns`:
    /// the kernel assigns one when a veth end lives there, so these are the pod namespaces
    /// whose veth peers are in the node (containerd's `cni-*`), found even when every process
    /// is gone.
    pub fn linked_netns(&mut self, netns: &str, exclude: &[String]) -> Result<Vec<String>> {
        let h = self.handle(netns)?;
        let mut out = Vec::new();
        for name in list_netns() {
            if exclude.contains(&name) || name == netns {
                continue;
            }
            match self.rt.block_on(h.link().get_netns_id(name.clone()).execute()) {
                Ok(Some(_)) => out.push(name),
                Ok(None) => {}
                Err(e) => tracing::debug!(netns, other = %name, error = %e, "nsid lookup"),
            }
        }
        Ok(out)
    }

    /// The link names in a namespace (for tests and status).
    pub fn link_names(&mut self, netns: &str) -> Result<Vec<String>> {
        let h = self.handle(netns)?;
        let fut = async { h.link().get().execute().try_collect::<Vec<_>>().await };
        let msgs = self.rt.block_on(fut).map_err(|e| Self::err(netns, "list links", "*", e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    }
}

fn create_netns_file(name: &str) -> Result<()> {
    let nserr = |op, source| LabError::Netns { netns: name.into(), op, source };
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| nserr("create /run/netns", e))?;
    let path = netns_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| nserr("create mount point (does it exist already? run `dari lab down`)", e))?;
    let p2 = path.clone();
    let joined = std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        nix::mount::mount(Some("/proc/thread-self/ns/net"), &p2, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .map_err(std::io::Error::from)
    })
    .join();
    let r = match joined {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("thread panicked")),
    };
    if let Err(e) = r {
        let _ = std::fs::remove_file(&path);
        return Err(nserr("unshare + bind mount", e));
    }
    Ok(())
}

/// Unmounts and removes `/run/netns/NAME`; `Ok(false)` when there was nothing.
pub fn delete_netns_file(name: &str) -> Result<bool> {
    let path = netns_path(name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(false);
    }
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(LabError::Netns { netns: name.into(), op: "unmount", source: e.into() }),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(LabError::Netns { netns: name.into(), op: "remove mount point", source: e }),
    }
}

impl LabNet for RealNet {
    fn create_netns(&mut self, name: &str) -> Result<()> {
        create_netns_file(name)
    }

    fn delete_netns(&mut self, name: &str) -> Result<bool> {
        // Our own netlink socket in there would keep the namespace alive.
        self.handles.remove(name);
        delete_netns_file(name)
    }

    fn netns_exists(&mut self, name: &str) -> bool {
        netns_path(name).exists()
    }

    fn add_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()> {
        let h = self.handle(netns)?;
        self.rt
            .block_on(h.link().add(LinkBridge::new(name).mtu(mtu).build()).execute())
            .map_err(|e| Self::err(netns, "add bridge", name, e))
    }

    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()> {
        let h = self.handle(netns)?;
        let peer_file = File::open(netns_path(peer_netns))
            .map_err(|e| LabError::Netns { netns: peer_netns.into(), op: "open", source: e })?;
        let p = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_file.as_raw_fd());
        let b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .set_info_data(netlink_packet_route::link::InfoData::Veth(netlink_packet_route::link::InfoVeth::Peer(
                p.build(),
            )));
        self.rt
            .block_on(h.link().add(b.build()).execute())
            .map_err(|e| Self::err(netns, "add veth", format!("{name} (peer {peer} in {peer_netns})"), e))
    }

    fn set_master(&mut self, netns: &str, ifname: &str, master: &str) -> Result<()> {
        let idx = self.index(netns, ifname)?;
        let m = self.index(netns, master)?;
        let h = self.handle(netns)?;
        self.rt
            .block_on(h.link().set(LinkUnspec::new_with_index(idx).controller(m).build()).execute())
            .map_err(|e| Self::err(netns, "set master", format!("{ifname} -> {master}"), e))
    }

    fn add_addr(&mut self, netns: &str, ifname: &str, addr: Ipv4Net) -> Result<()> {
        let idx = self.index(netns, ifname)?;
        let h = self.handle(netns)?;
        self.rt
            .block_on(h.address().add(idx, addr.addr().into(), addr.prefix_len()).execute())
            .map_err(|e| Self::err(netns, "add address", format!("{addr} on {ifname}"), e))
    }

    fn link_up(&mut self, netns: &str, ifname: &str) -> Result<()> {
        let idx = self.index(netns, ifname)?;
        let h = self.handle(netns)?;
        self.rt
            .block_on(h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute())
            .map_err(|e| Self::err(netns, "set up", ifname, e))
    }

    fn default_route(&mut self, netns: &str, via: Ipv4Addr) -> Result<()> {
        let h = self.handle(netns)?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(via).build();
        self.rt
            .block_on(h.route().add(msg).execute())
            .map_err(|e| Self::err(netns, "add route", format!("default via {via}"), e))
    }

    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()> {
        // /proc/sys/net/* resolves against the namespace of the thread that opens it.
        let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let v = value.to_string();
        let f2 = file.clone();
        in_netns(&netns_path(netns), move || std::fs::write(&f2, v))?.map_err(|e| LabError::io("write sysctl", file, e))
    }
}

/// A recording fake: every call is logged (in [`Step`]'s iproute2 notation) and namespaces and
/// links are modelled, so ordering mistakes (a link in a namespace that does not exist yet,
/// a veth whose peer namespace is missing) fail like the kernel would.
#[derive(Debug, Default)]
pub struct FakeNet {
    /// Every call, in order.
    pub calls: Vec<String>,
    /// Namespace → links in it.
    pub namespaces: BTreeMap<String, BTreeSet<String>>,
}

impl FakeNet {
    fn ns(&mut self, netns: &str) -> Result<&mut BTreeSet<String>> {
        self.namespaces.get_mut(netns).ok_or_else(|| LabError::Netns {
            netns: netns.into(),
            op: "open",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        })
    }

    fn need_link(&mut self, netns: &str, ifname: &str) -> Result<()> {
        if self.ns(netns)?.contains(ifname) {
            Ok(())
        } else {
            Err(LabError::Netlink {
                op: "find link",
                target: ifname.into(),
                netns: netns.into(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })
        }
    }

    fn add_link(&mut self, netns: &str, ifname: &str) -> Result<()> {
        if !self.ns(netns)?.insert(ifname.to_string()) {
            return Err(LabError::Netlink {
                op: "add link",
                target: ifname.into(),
                netns: netns.into(),
                source: std::io::Error::from_raw_os_error(libc::EEXIST),
            });
        }
        Ok(())
    }
}

impl LabNet for FakeNet {
    fn create_netns(&mut self, name: &str) -> Result<()> {
        self.calls.push(Step::CreateNetns { name: name.into() }.to_string());
        if self.namespaces.contains_key(name) {
            return Err(LabError::Netns { netns: name.into(), op: "create", source: std::io::Error::from_raw_os_error(libc::EEXIST) });
        }
        self.namespaces.insert(name.into(), BTreeSet::from(["lo".to_string()]));
        Ok(())
    }

    fn delete_netns(&mut self, name: &str) -> Result<bool> {
        self.calls.push(format!("ip netns delete {name}"));
        Ok(self.namespaces.remove(name).is_some())
    }

    fn netns_exists(&mut self, name: &str) -> bool {
        self.namespaces.contains_key(name)
    }

    fn add_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()> {
        self.calls.push(Step::AddBridge { netns: netns.into(), name: name.into(), mtu }.to_string());
        self.add_link(netns, name)
    }

    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()> {
        self.calls.push(
            Step::AddVeth { netns: netns.into(), name: name.into(), peer_netns: peer_netns.into(), peer: peer.into(), mtu }
                .to_string(),
        );
        self.ns(peer_netns)?;
        self.add_link(netns, name)?;
        self.add_link(peer_netns, peer)
    }

    fn set_master(&mut self, netns: &str, ifname: &str, master: &str) -> Result<()> {
        self.calls.push(Step::SetMaster { netns: netns.into(), ifname: ifname.into(), master: master.into() }.to_string());
        self.need_link(netns, ifname)?;
        self.need_link(netns, master)
    }

    fn add_addr(&mut self, netns: &str, ifname: &str, addr: Ipv4Net) -> Result<()> {
        self.calls.push(Step::AddAddr { netns: netns.into(), ifname: ifname.into(), addr }.to_string());
        self.need_link(netns, ifname)
    }

    fn link_up(&mut self, netns: &str, ifname: &str) -> Result<()> {
        self.calls.push(Step::LinkUp { netns: netns.into(), ifname: ifname.into() }.to_string());
        self.need_link(netns, ifname)
    }

    fn default_route(&mut self, netns: &str, via: Ipv4Addr) -> Result<()> {
        self.calls.push(Step::DefaultRoute { netns: netns.into(), via }.to_string());
        self.ns(netns).map(|_| ())
    }

    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()> {
        self.calls.push(Step::Sysctl { netns: netns.into(), key: key.into(), value: value.into() }.to_string());
        self.ns(netns).map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::{plan, LabOpts};

    #[test]
    fn fake_apply_then_teardown_twice() {
        let p = plan(&["cp".to_string(), "w1".to_string()], &LabOpts::default()).unwrap();
        let mut f = FakeNet::default();
        apply(&p, &mut f).unwrap();
        assert_eq!(f.calls, p.script().lines().map(String::from).collect::<Vec<_>>());
        assert_eq!(f.namespaces["dari-hub"], BTreeSet::from(["lan0".into(), "lo".into(), "vcp".into(), "vw1".into()]));
        assert_eq!(f.namespaces["dari-w1"], BTreeSet::from(["eth0".into(), "lo".into()]));
        assert_eq!(teardown(&p, &mut f).unwrap(), vec!["dari-cp", "dari-w1", "dari-hub"]);
        assert!(f.namespaces.is_empty());
        assert!(teardown(&p, &mut f).unwrap().is_empty(), "second teardown is a no-op");
        // Applying on top of an existing lab fails at the first namespace.
        apply(&p, &mut f).unwrap();
        assert!(apply(&p, &mut f).is_err());
    }
}

#[cfg(test)]
mod resolv_tests {
    use super::*;

    #[test]
    fn nameservers_of_a_resolv_conf() {
        let text = "# generated\nsearch example.org\nnameserver 10.255.255.53\nnameserver ::1\n  nameserver 192.0.2.1 \noptions ndots:2\n";
        assert_eq!(resolv_nameservers(text), vec![Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(192, 0, 2, 1)]);
    }
}
