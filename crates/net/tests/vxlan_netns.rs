//! Root only: [`NetlinkVxlan`] against the real kernel in a throwaway network namespace (a veth
//! "eth0" underlay with the node IP): the device as flannel makes it, three nodes converged
//! (route, permanent neighbour, FDB per peer, read back with iproute2), converging again
//! changes nothing (what `observe` reads matches what `apply` wrote), a deleted node's three
//! entries go, and the host-gw switch removes the device.
//!
//! `cargo test -p dari-net --test vxlan_netns`

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::Command;

use dari_net::vxlan::{desired_overlay, device_for, vtep_mac};
use dari_net::{converge_vxlan, NetlinkVxlan, NodeNet, VxlanDataplane};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("iproute2 is needed (apt-get install iproute2)");
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn node(name: &str, cidr: &str, addr: &str) -> NodeNet {
    let a: Ipv4Addr = addr.parse().unwrap();
    NodeNet { name: name.into(), pod_cidr: Some(cidr.parse().unwrap()), internal_ip: Some(a), backend: Some("vxlan".into()), vtep_mac: Some(vtep_mac(a)), public_ip: None }
}

#[test]
fn vxlan_device_and_peers_in_a_netns() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root (CI runs as root)");
    let ns = Netns(format!("dnet-vx-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "peer0", "mtu", "1400"]);
    ip(&["-n", &ns.0, "addr", "add", "172.31.90.10/24", "dev", "eth0"]);
    ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    let path = format!("/run/netns/{}", ns.0);
    let nodes = vec![node("a", "10.250.0.0/24", "172.31.90.10"), node("b", "10.250.1.0/24", "172.31.90.11"), node("c", "10.250.2.0/24", "172.31.90.12")];
    let n2 = nodes.clone();
    // netlink sockets belong to the namespace of the thread that opens them
    let r = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let dp = NetlinkVxlan::new().unwrap();
            let me: Ipv4Addr = "172.31.90.10".parse().unwrap();
            let u = dp.underlay(me).await.unwrap();
            assert_eq!((u.name.as_str(), u.mtu), ("eth0", 1400));
            let dev = device_for("dari.1", 1, 8472, me, u.index, u.mtu, n2[0].pod_cidr);
            dp.ensure_device(&dev).await.unwrap();
            dp.ensure_device(&dev).await.unwrap();
            let first = converge_vxlan(&dp, "dari.1", &desired_overlay("a", &n2)).await.unwrap();
            assert_eq!(first.len(), 6, "{first:?}");
            let again = converge_vxlan(&dp, "dari.1", &desired_overlay("a", &n2)).await.unwrap();
            assert!(again.is_empty(), "observe must read back what apply wrote: {again:?}");
        });
    })
    .join();
    assert!(r.is_ok(), "netlink part failed");
    let link = ip(&["-n", &ns.0, "-d", "link", "show", "dari.1"]);
    for want in ["mtu 1350", "link/ether 0e:da:ac:1f:5a:0a", "vxlan id 1", "local 172.31.90.10", "dev eth0", "dstport 8472", "nolearning", "UP"] {
        assert!(link.contains(want), "{want:?} not in:\n{link}");
    }
    assert!(ip(&["-n", &ns.0, "-4", "addr", "show", "dari.1"]).contains("inet 10.250.0.0/32"));
    let routes = ip(&["-n", &ns.0, "route", "show", "proto", "218"]);
    assert!(routes.contains("10.250.1.0/24 via 10.250.1.0 dev dari.1 onlink") && routes.contains("10.250.2.0/24 via 10.250.2.0 dev dari.1 onlink"), "{routes}");
    let neigh = ip(&["-n", &ns.0, "neigh", "show", "dev", "dari.1"]);
    assert!(neigh.contains("10.250.1.0 lladdr 0e:da:ac:1f:5a:0b PERMANENT"), "{neigh}");
    let fdb = Command::new("bridge").args(["-n", &ns.0, "fdb", "show", "dev", "dari.1"]).output().unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(fdb.contains("0e:da:ac:1f:5a:0b dst 172.31.90.11 self permanent"), "{fdb}");

    // b is deleted: its route, neighbour and FDB entry go; c's stay
    let path = format!("/run/netns/{}", ns.0);
    let two = vec![nodes[0].clone(), nodes[2].clone()];
    let r = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let dp = NetlinkVxlan::new().unwrap();
            let ops = converge_vxlan(&dp, "dari.1", &desired_overlay("a", &two)).await.unwrap();
            assert_eq!(ops.len(), 3, "{ops:?}");
            assert!(converge_vxlan(&dp, "dari.1", &desired_overlay("a", &two)).await.unwrap().is_empty());
        });
    })
    .join();
    assert!(r.is_ok(), "netlink part failed");
    let routes = ip(&["-n", &ns.0, "route", "show", "proto", "218"]);
    assert!(!routes.contains("10.250.1.0/24") && routes.contains("10.250.2.0/24"), "{routes}");
    let neigh = ip(&["-n", &ns.0, "neigh", "show", "dev", "dari.1"]);
    assert!(!neigh.contains("10.250.1.0") && neigh.contains("10.250.2.0"), "{neigh}");
    let fdb = Command::new("bridge").args(["-n", &ns.0, "fdb", "show", "dev", "dari.1"]).output().unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(!fdb.contains("172.31.90.11") && fdb.contains("dst 172.31.90.12"), "{fdb}");

    // switching to host-gw removes the device (and with it every entry on it)
    let path = format!("/run/netns/{}", ns.0);
    let r = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let dp = NetlinkVxlan::new().unwrap();
            assert!(dp.remove_device("dari.1").await.unwrap());
            assert!(!dp.remove_device("dari.1").await.unwrap());
        });
    })
    .join();
    assert!(r.is_ok(), "netlink part failed");
    assert!(ip(&["-n", &ns.0, "route", "show", "proto", "218"]).is_empty());
}
