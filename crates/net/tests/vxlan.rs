//! The VXLAN backend without root: the pure core against golden files (three nodes, then one
//! leaves and one changes address) and [`converge_vxlan`] against a recording fake dataplane.
//! Regenerate the goldens with `UPDATE_GOLDEN=1 cargo test -p dari-net --test vxlan` and review the diff.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use dari_net::vxlan::{desired_overlay, own_annotations, plan_ops, vtep_mac, Observed, Op, Overlay, VxlanDevice};
use dari_net::{converge_vxlan, NetError, NodeNet, VxlanDataplane};

fn check(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, want, "{} differs", path.display());
}

fn node(name: &str, cidr: &str, ip: &str) -> NodeNet {
    let ip: Ipv4Addr = ip.parse().unwrap();
    NodeNet { name: name.into(), pod_cidr: Some(cidr.parse().unwrap()), internal_ip: Some(ip), backend: Some("vxlan".into()), vtep_mac: Some(vtep_mac(ip)), public_ip: None }
}

fn three() -> Vec<NodeNet> {
    vec![node("a", "10.244.0.0/24", "172.31.0.10"), node("b", "10.244.1.0/24", "172.31.0.11"), node("c", "10.244.2.0/24", "172.31.0.12")]
}

#[test]
fn golden_three_nodes_then_changes() {
    let nodes = three();
    let mut out = String::new();
    for me in ["a", "b", "c"] {
        out.push_str(&format!("# node {me}: annotations {:?}\n", own_annotations(nodes.iter().find(|n| n.name == me).unwrap().internal_ip.unwrap())));
        out.push_str(&desired_overlay(me, &nodes).render("dari.1"));
    }
    // on a: c leaves, b moves to a new address (new MAC too, it is derived from the IP)
    let before = desired_overlay("a", &nodes);
    let after_nodes = vec![nodes[0].clone(), node("b", "10.244.1.0/24", "172.31.0.21")];
    let after = desired_overlay("a", &after_nodes);
    out.push_str("# node a: c deleted, b readdressed to 172.31.0.21\n");
    for op in plan_ops(&Observed { overlay: before, stray_routes: BTreeMap::new() }, &after) {
        out.push_str(&op.command("dari.1"));
        out.push('\n');
    }
    check("vxlan-three-nodes.txt", &out);
}

/// A kernel in a struct: applies ops to an [`Overlay`] and records them.
#[derive(Default)]
struct Fake {
    state: Mutex<Observed>,
    devices: Mutex<Vec<VxlanDevice>>,
    log: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl VxlanDataplane for Fake {
    async fn ensure_device(&self, dev: &VxlanDevice) -> Result<(), NetError> {
        self.devices.lock().unwrap().push(dev.clone());
        Ok(())
    }
    async fn observe(&self, _dev: &str) -> Result<Observed, NetError> {
        Ok(self.state.lock().unwrap().clone())
    }
    async fn apply(&self, dev: &str, op: &Op) -> Result<(), NetError> {
        self.log.lock().unwrap().push(op.command(dev));
        let mut s = self.state.lock().unwrap();
        match op {
            Op::DelRoute { dst, on_dev: true, .. } => drop(s.overlay.routes.remove(dst)),
            Op::DelRoute { dst, on_dev: false, .. } => drop(s.stray_routes.remove(dst)),
            Op::DelNeigh { ip, .. } => drop(s.overlay.neighbours.remove(ip)),
            Op::DelFdb { mac, .. } => drop(s.overlay.fdb.remove(mac)),
            Op::SetFdb { mac, dst } => drop(s.overlay.fdb.insert(*mac, *dst)),
            Op::SetNeigh { ip, mac } => drop(s.overlay.neighbours.insert(*ip, *mac)),
            Op::SetRoute { dst, gw } => {
                s.stray_routes.remove(dst);
                s.overlay.routes.insert(*dst, *gw);
            }
        }
        Ok(())
    }
    async fn remove_device(&self, _dev: &str) -> Result<bool, NetError> {
        Ok(false)
    }
}

#[tokio::test]
async fn converge_adds_once_and_removes_a_deleted_node() {
    let f = Fake::default();
    let nodes = three();
    let want = desired_overlay("a", &nodes);
    let ops = converge_vxlan(&f, "dari.1", &want).await.unwrap();
    assert_eq!(ops.len(), 6, "2 peers x (fdb, neigh, route): {ops:?}");
    assert_eq!(f.state.lock().unwrap().overlay, want);
    assert!(converge_vxlan(&f, "dari.1", &want).await.unwrap().is_empty(), "converged: nothing twice");
    // b is deleted: its three entries go, route first
    let want2 = desired_overlay("a", &[nodes[0].clone(), nodes[2].clone()]);
    let ops = converge_vxlan(&f, "dari.1", &want2).await.unwrap();
    let text: Vec<String> = ops.iter().map(|o| o.command("dari.1")).collect();
    assert_eq!(
        text,
        [
            "ip route del 10.244.1.0/24 via 10.244.1.0 dev dari.1 proto 218",
            "ip neigh del 10.244.1.0 lladdr 0e:da:ac:1f:00:0b dev dari.1",
            "bridge fdb del 0e:da:ac:1f:00:0b dev dari.1 dst 172.31.0.11 self",
        ]
    );
    assert_eq!(f.state.lock().unwrap().overlay, want2);
    assert_eq!(want2, Overlay { ..desired_overlay("a", &[nodes[2].clone()]) });
}
