//! The lab topology as data: [`plan`] turns node names and [`LabOpts`] into a [`LabPlan`]
//! (pure, no I/O), and [`LabPlan::steps`] into the ordered [`Step`]s an applier executes.
//!
//! The picture, for `--nodes cp,w1` with the defaults:
//!
//! ```text
//!  netns dari-hub                          netns dari-cp            netns dari-w1
//!  lan0 (bridge) 172.31.0.1/24, mtu 1400
//!   ├── vcp  ──── veth ──────────────────── eth0 172.31.0.10/24
//!   └── vw1  ──── veth ───────────────────────────────────────────── eth0 172.31.0.11/24
//! ```
//!
//! Every node has `lo` up, `ip_forward=1` and a default route via the hub's address (the hub has
//! no uplink, so nothing routes out of the host). The root namespace gets nothing: no link, no
//! route; the API reaches the host through [`crate::forward`].

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};

/// Linux `IFNAMSIZ` minus the terminating NUL.
pub const MAX_IFNAME: usize = 15;

/// Knobs of the topology. `Default` is what `dari lab up` uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabOpts {
    /// Prefix of every namespace name: `PREFIX-hub`, `PREFIX-NODE` (default `dari`).
    pub prefix: String,
    /// The "LAN" of the nodes (default 172.31.0.0/24). The hub takes the first host address.
    pub subnet: Ipv4Net,
    /// Host number of the first node (default 10: nodes get .10, .11, ...).
    pub first_host: u32,
    /// MTU of the LAN (default 1400, like the machine's eth0 underlay).
    pub mtu: u32,
    /// Name of the bridge in the hub (default `lan0`).
    pub bridge: String,
}

impl Default for LabOpts {
    fn default() -> Self {
        LabOpts {
            prefix: "dari".into(),
            subnet: Ipv4Net::new(Ipv4Addr::new(172, 31, 0, 0), 24).unwrap_or_default(),
            first_host: 10,
            mtu: 1400,
            bridge: "lan0".into(),
        }
    }
}

/// The role a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs `dari server` and `dari agent`.
    ControlPlane,
    /// Runs `dari agent`.
    Worker,
}

/// The hub: one namespace holding the bridge every node is plugged into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubPlan {
    /// Namespace name (`PREFIX-hub`).
    pub netns: String,
    /// Bridge name.
    pub bridge: String,
    /// The bridge's address (the nodes' default gateway; the lab's in-lab resolver can live here).
    pub addr: Ipv4Net,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// The Kubernetes node name.
    pub name: String,
    /// Control plane or worker.
    pub role: Role,
    /// Namespace name (`PREFIX-NAME`).
    pub netns: String,
    /// The veth end in the hub, enslaved to the bridge (fits IFNAMSIZ; hashed when the name is long).
    pub hub_if: String,
    /// The veth end in the node.
    pub node_if: String,
    /// The node IP with the LAN prefix.
    pub addr: Ipv4Net,
}

impl NodePlan {
    /// The node IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }
}

/// A complete topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    /// The options it was made from.
    pub opts: LabOpts,
    /// The hub.
    pub hub: HubPlan,
    /// The nodes; the first one is the control plane.
    pub nodes: Vec<NodePlan>,
}

/// One kernel change. `Display` prints the equivalent iproute2 command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `ip netns add NAME`.
    CreateNetns {
        /// Namespace.
        name: String,
    },
    /// `ip -n NS link add NAME type bridge`.
    AddBridge {
        /// Namespace.
        netns: String,
        /// Bridge name.
        name: String,
        /// MTU.
        mtu: u32,
    },
    /// `ip -n NS link add NAME type veth peer name PEER netns PEER_NS`.
    AddVeth {
        /// Namespace of `name`.
        netns: String,
        /// This end.
        name: String,
        /// Namespace of the peer.
        peer_netns: String,
        /// The peer end.
        peer: String,
        /// MTU of both ends.
        mtu: u32,
    },
    /// `ip -n NS link set IF master BRIDGE`.
    SetMaster {
        /// Namespace.
        netns: String,
        /// The port.
        ifname: String,
        /// The bridge.
        master: String,
    },
    /// `ip -n NS addr add ADDR dev IF`.
    AddAddr {
        /// Namespace.
        netns: String,
        /// Interface.
        ifname: String,
        /// Address with prefix.
        addr: Ipv4Net,
    },
    /// `ip -n NS link set IF up`.
    LinkUp {
        /// Namespace.
        netns: String,
        /// Interface.
        ifname: String,
    },
    /// `ip -n NS route add default via GW`.
    DefaultRoute {
        /// Namespace.
        netns: String,
        /// Gateway.
        via: Ipv4Addr,
    },
    /// `ip netns exec NS sysctl -w KEY=VALUE` (done with setns on a thread, not `ip netns exec`).
    Sysctl {
        /// Namespace.
        netns: String,
        /// Dotted key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Value.
        value: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateNetns { name } => write!(f, "ip netns add {name}"),
            Step::AddBridge { netns, name, mtu } => write!(f, "ip -n {netns} link add {name} mtu {mtu} type bridge"),
            Step::AddVeth { netns, name, peer_netns, peer, mtu } => {
                write!(f, "ip -n {netns} link add {name} mtu {mtu} type veth peer name {peer} mtu {mtu} netns {peer_netns}")
            }
            Step::SetMaster { netns, ifname, master } => write!(f, "ip -n {netns} link set {ifname} master {master}"),
            Step::AddAddr { netns, ifname, addr } => write!(f, "ip -n {netns} addr add {addr} dev {ifname}"),
            Step::LinkUp { netns, ifname } => write!(f, "ip -n {netns} link set {ifname} up"),
            Step::DefaultRoute { netns, via } => write!(f, "ip -n {netns} route add default via {via}"),
            Step::Sysctl { netns, key, value } => write!(f, "ip netns exec {netns} sysctl -w {key}={value}"),
        }
    }
}

fn short_hash(s: &str, n: usize) -> String {
    let d = Sha256::digest(s.as_bytes());
    let mut out = String::new();
    for b in d.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out.truncate(n);
    out
}

/// The hub-side interface name for a node: `v` + the name when it fits IFNAMSIZ, else
/// `v` + the first 6 characters + 8 hex digits of the name's SHA-256 (15 characters).
pub fn hub_ifname(node: &str) -> String {
    if node.len() < MAX_IFNAME {
        format!("v{node}")
    } else {
        let head: String = node.chars().take(6).collect();
        format!("v{head}{}", short_hash(node, 8))
    }
}

fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
}

fn valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn nth_host(net: Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let base = u32::from(net.network());
    let a = base.checked_add(n)?;
    let last = u32::from(net.broadcast());
    (n >= 1 && a < last).then(|| Ipv4Addr::from(a))
}

/// Plans a lab for `nodes` (the first is the control plane).
///
/// Fails on: no nodes, a name that is not a DNS label-ish node name, duplicates, a node named
/// `hub`, a prefix with odd characters, a bridge name over IFNAMSIZ, more nodes than the subnet holds.
pub fn plan(nodes: &[String], opts: &LabOpts) -> Result<LabPlan> {
    if nodes.is_empty() {
        return Err(LabError::plan("at least one node is needed"));
    }
    if !valid_prefix(&opts.prefix) {
        return Err(LabError::plan(format!("prefix {:?}: use 1-32 of [A-Za-z0-9_-]", opts.prefix)));
    }
    if opts.bridge.is_empty() || opts.bridge.len() > MAX_IFNAME || opts.bridge.contains(['/', ' ', ':']) {
        return Err(LabError::plan(format!("bridge name {:?} is not a valid interface name", opts.bridge)));
    }
    if !(576..=65535).contains(&opts.mtu) {
        return Err(LabError::plan(format!("mtu {} out of range 576-65535", opts.mtu)));
    }
    let hub_ip = nth_host(opts.subnet, 1).ok_or_else(|| LabError::plan(format!("subnet {} has no host addresses", opts.subnet)))?;
    let hub = HubPlan {
        netns: format!("{}-hub", opts.prefix),
        bridge: opts.bridge.clone(),
        addr: Ipv4Net::new(hub_ip, opts.subnet.prefix_len()).map_err(|e| LabError::plan(e.to_string()))?,
    };
    if opts.first_host < 2 {
        return Err(LabError::plan("first_host must be at least 2 (.1 is the hub)"));
    }
    let mut out: Vec<NodePlan> = Vec::with_capacity(nodes.len());
    for (i, name) in nodes.iter().enumerate() {
        if !valid_node_name(name) {
            return Err(LabError::plan(format!("node name {name:?}: use 1-63 of [a-z0-9.-], starting and ending alphanumeric")));
        }
        if name == "hub" {
            return Err(LabError::plan("node name \"hub\" collides with the hub namespace"));
        }
        if out.iter().any(|n| &n.name == name) {
            return Err(LabError::plan(format!("node name {name:?} given twice")));
        }
        let hub_if = hub_ifname(name);
        if hub_if == hub.bridge || out.iter().any(|n| n.hub_if == hub_if) {
            return Err(LabError::plan(format!("interface name {hub_if} for node {name:?} collides; rename the node")));
        }
        let ip = u32::try_from(i)
            .ok()
            .and_then(|i| opts.first_host.checked_add(i))
            .and_then(|n| nth_host(opts.subnet, n))
            .ok_or_else(|| LabError::plan(format!("subnet {} has no address for node #{} ({name})", opts.subnet, i + 1)))?;
        out.push(NodePlan {
            name: name.clone(),
            role: if i == 0 { Role::ControlPlane } else { Role::Worker },
            netns: format!("{}-{}", opts.prefix, name),
            hub_if,
            node_if: "eth0".into(),
            addr: Ipv4Net::new(ip, opts.subnet.prefix_len()).map_err(|e| LabError::plan(e.to_string()))?,
        });
    }
    Ok(LabPlan { opts: opts.clone(), hub, nodes: out })
}

impl LabPlan {
    /// The control-plane node.
    pub fn control_plane(&self) -> &NodePlan {
        // `plan` refuses an empty node list, and the first node is the control plane.
        &self.nodes[0]
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every namespace of the lab, nodes first, hub last (the order teardown uses).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.netns.clone()).collect();
        v.push(self.hub.netns.clone());
        v
    }

    /// The ordered kernel changes that build this lab from nothing.
    pub fn steps(&self) -> Vec<Step> {
        let mtu = self.opts.mtu;
        let hub = &self.hub.netns;
        let mut s = vec![
            Step::CreateNetns { name: hub.clone() },
            Step::LinkUp { netns: hub.clone(), ifname: "lo".into() },
            Step::AddBridge { netns: hub.clone(), name: self.hub.bridge.clone(), mtu },
            Step::AddAddr { netns: hub.clone(), ifname: self.hub.bridge.clone(), addr: self.hub.addr },
            Step::LinkUp { netns: hub.clone(), ifname: self.hub.bridge.clone() },
        ];
        for n in &self.nodes {
            s.push(Step::CreateNetns { name: n.netns.clone() });
            s.push(Step::LinkUp { netns: n.netns.clone(), ifname: "lo".into() });
            s.push(Step::AddVeth {
                netns: hub.clone(),
                name: n.hub_if.clone(),
                peer_netns: n.netns.clone(),
                peer: n.node_if.clone(),
                mtu,
            });
            s.push(Step::SetMaster { netns: hub.clone(), ifname: n.hub_if.clone(), master: self.hub.bridge.clone() });
            s.push(Step::LinkUp { netns: hub.clone(), ifname: n.hub_if.clone() });
            s.push(Step::AddAddr { netns: n.netns.clone(), ifname: n.node_if.clone(), addr: n.addr });
            s.push(Step::LinkUp { netns: n.netns.clone(), ifname: n.node_if.clone() });
            s.push(Step::DefaultRoute { netns: n.netns.clone(), via: self.hub.addr.addr() });
            s.push(Step::Sysctl { netns: n.netns.clone(), key: "net.ipv4.ip_forward".into(), value: "1".into() });
        }
        s
    }

    /// The plan as a shell script of iproute2 commands (what the golden test compares).
    pub fn script(&self) -> String {
        let mut o = String::new();
        for st in self.steps() {
            o.push_str(&st.to_string());
            o.push('\n');
        }
        o
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ifnames_fit() {
        assert_eq!(hub_ifname("w1"), "vw1");
        assert_eq!(hub_ifname("myk8s-worker3"), "vmyk8s-worker3");
        let long = hub_ifname("myk8s-control-plane");
        assert_eq!(long.len(), MAX_IFNAME);
        assert!(long.starts_with("vmyk8s-"));
        assert_ne!(hub_ifname("aaaaaaa-x-very-long-1"), hub_ifname("aaaaaaa-x-very-long-2"));
    }

    #[test]
    fn rejects() {
        let o = LabOpts::default();
        assert!(plan(&[], &o).is_err());
        assert!(plan(&names(&["a", "a"]), &o).is_err());
        assert!(plan(&names(&["hub"]), &o).is_err());
        assert!(plan(&names(&["Bad_Name"]), &o).is_err());
        assert!(plan(&names(&["-x"]), &o).is_err());
        let many: Vec<String> = (0..250).map(|i| format!("n{i}")).collect();
        assert!(plan(&many, &o).is_err(), "a /24 holds .10-.254 only");
        let ok: Vec<String> = (0..245).map(|i| format!("n{i}")).collect();
        let p = plan(&ok, &o).unwrap();
        assert_eq!(p.nodes[244].ip(), Ipv4Addr::new(172, 31, 0, 254));
    }
}
