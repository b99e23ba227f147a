//! dari-net: the pod network between nodes (flannel's job, built into `dari agent`).
//!
//! Start at [`start`], which `dari agent` calls with its [`NetArgs`] (`--backend host-gw|vxlan`):
//!
//! * **host-gw**: [`desired_routes`] (pure: Nodes → one route per other node's podCIDR via its
//!   InternalIP) and [`run_host_gw`], converging through the small [`Routes`] trait
//!   ([`NetlinkRoutes`] for real, a recording fake in tests). Needs all nodes on one L2 segment.
//! * **vxlan** (flannel's vxlan backend, same kernel objects): [`vxlan`] is the pure core (own
//!   device, VTEP MAC and the Node annotations that publish it; per other node an onlink route,
//!   a permanent neighbour and an FDB entry; [`vxlan::plan_ops`] diffs), [`overlay`] the edge
//!   ([`overlay::VxlanDataplane`], [`overlay::NetlinkVxlan`]), [`run_vxlan`] the Node watch.
//!
//! Routes dari owns carry their own protocol number ([`DARI_PROTO`]) so stale ones are found and
//! removed, and nothing else is touched. [`apply_egress_masquerade`] keeps pod → outside traffic
//! masqueraded (pod → pod never is).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use tracing::Instrument;

pub mod overlay;
pub mod vxlan;

pub use overlay::{converge_vxlan, NetlinkVxlan, Underlay, VxlanDataplane};
pub use vxlan::{desired_overlay, Mac, Overlay, VxlanDevice};

/// The route protocol number marking dari's routes (`ip route show proto 218`).
pub const DARI_PROTO: u8 = 218;

/// How often the backends re-converge without a Node change (repairs drift, retries failures).
pub const RESYNC: Duration = Duration::from_secs(30);

/// Why the network could not be programmed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening the netlink socket failed.
    #[error("opening a netlink connection")]
    Connect(#[source] std::io::Error),
    /// A route operation failed.
    #[error("{op} route {dst} via {gw}")]
    Route {
        /// add, replace, delete, list.
        op: &'static str,
        /// Destination.
        dst: Ipv4Net,
        /// Gateway.
        gw: Ipv4Addr,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing routes failed.
    #[error("listing routes")]
    List(#[source] rtnetlink::Error),
    /// A link operation failed.
    #[error("{op} link {ifname}")]
    Link {
        /// get, add, set, delete.
        op: &'static str,
        /// Interface.
        ifname: String,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// An address operation failed.
    #[error("{op} address {addr:?} on {ifname}")]
    Address {
        /// list, add, delete.
        op: &'static str,
        /// Interface.
        ifname: String,
        /// The address.
        addr: Option<Ipv4Net>,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A neighbour (ARP) operation failed.
    #[error("{op} neighbour {ip:?}")]
    Neigh {
        /// list, replace, delete.
        op: &'static str,
        /// The neighbour's IP.
        ip: Option<Ipv4Addr>,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// An FDB operation failed.
    #[error("{op} fdb {mac} dst {dst}")]
    Fdb {
        /// replace, delete.
        op: &'static str,
        /// VTEP MAC.
        mac: String,
        /// Node IP.
        dst: Ipv4Addr,
        /// Cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// No interface holds the node IP.
    #[error("no interface holds the node IP {ip} (the vxlan underlay)")]
    NoUnderlay {
        /// Node IP.
        ip: Ipv4Addr,
    },
    /// The VXLAN device is missing.
    #[error("vxlan device {ifname} does not exist")]
    NoDevice {
        /// Interface.
        ifname: String,
    },
    /// The backend cannot run with this node's settings.
    #[error("{0}")]
    Config(String),
    /// Publishing the VTEP annotations on the Node failed.
    #[error("annotating node {node} with its vxlan VTEP")]
    Annotate {
        /// Node name.
        node: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// nft refused a ruleset.
    #[error("nft refused the egress masquerade ruleset: {stderr}")]
    Nft {
        /// nft's message.
        stderr: String,
    },
    /// The Node watch ended.
    #[error("watching nodes")]
    Watch(#[source] watcher::Error),
}

/// What the pure cores need of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// Node name.
    pub name: String,
    /// `spec.podCIDR`.
    pub pod_cidr: Option<Ipv4Net>,
    /// The InternalIP address.
    pub internal_ip: Option<Ipv4Addr>,
    /// [`vxlan::ANN_BACKEND`].
    pub backend: Option<String>,
    /// [`vxlan::ANN_VXLAN_MAC`].
    pub vtep_mac: Option<Mac>,
    /// [`vxlan::ANN_PUBLIC_IP`].
    pub public_ip: Option<Ipv4Addr>,
}

impl NodeNet {
    /// Reads a Node.
    pub fn from_node(n: &Node) -> NodeNet {
        let name = n.metadata.name.clone().unwrap_or_default();
        let pod_cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|c| c.parse().ok());
        let internal_ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|x| x.type_ == "InternalIP"))
            .and_then(|a| a.address.parse().ok());
        let ann = |k: &str| n.metadata.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        NodeNet {
            name,
            pod_cidr,
            internal_ip,
            backend: ann(vxlan::ANN_BACKEND),
            vtep_mac: ann(vxlan::ANN_VXLAN_MAC).and_then(|m| m.parse().ok()),
            public_ip: ann(vxlan::ANN_PUBLIC_IP).and_then(|m| m.parse().ok()),
        }
    }
}

/// The pod network backend between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Plain routes via the other nodes' IPs (all nodes on one L2 segment).
    #[value(name = "host-gw")]
    HostGw,
    /// A VXLAN overlay (VNI 1, UDP 8472), as flannel's vxlan backend.
    #[value(name = "vxlan")]
    Vxlan,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        })
    }
}

/// The flags of the pod network (flattened into `dari agent`).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct NetArgs {
    /// Pod network backend between nodes: vxlan (default, as flannel: overlay over UDP 8472; pod MTU must be at
    /// most the underlay MTU - 50, see --mtu) or host-gw (routes via node IPs; nodes must share a link).
    #[arg(long, value_enum, default_value_t = Backend::Vxlan)]
    pub backend: Backend,
    /// Name of the VXLAN device (vxlan backend).
    #[arg(long, default_value = "dari.1")]
    pub vxlan_device: String,
    /// VXLAN network identifier (vxlan backend).
    #[arg(long, default_value_t = 1)]
    pub vxlan_vni: u32,
    /// VXLAN UDP port (vxlan backend; 8472 like Linux and flannel).
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
}

impl Default for NetArgs {
    fn default() -> Self {
        NetArgs { backend: Backend::Vxlan, vxlan_device: "dari.1".into(), vxlan_vni: 1, vxlan_port: 8472 }
    }
}

/// The node the network runs for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// The node IP (the VXLAN `local` address and underlay).
    pub ip: IpAddr,
    /// The pod interface MTU the agent writes into the CNI config.
    pub pod_mtu: u32,
}

/// Starts the pod network for `node` in the current network namespace: checks what can be
/// checked up front (netlink, the underlay and the pod MTU, the VXLAN device), then spawns the
/// Node watch that keeps routes (and with vxlan, neighbour and FDB entries) converged. Switching
/// to host-gw removes a VXLAN device left by an earlier run.
pub async fn start(client: kube::Client, args: NetArgs, node: NodeIdentity) -> Result<tokio::task::JoinHandle<()>, NetError> {
    match args.backend {
        Backend::HostGw => {
            let dp = NetlinkVxlan::new()?;
            if dp.remove_device(&args.vxlan_device).await? {
                tracing::info!(ifname = %args.vxlan_device, "host-gw backend: removed the vxlan device of an earlier run");
            }
            let routes: Arc<dyn Routes> = Arc::new(NetlinkRoutes::new()?);
            Ok(tokio::spawn(async move {
                if let Err(e) = run_host_gw(client, node.name, routes).await {
                    tracing::error!(error = %e, "node routes (host-gw) stopped");
                }
            }))
        }
        Backend::Vxlan => {
            let IpAddr::V4(ip) = node.ip else {
                return Err(NetError::Config(format!("the vxlan backend needs an IPv4 node IP, not {}", node.ip)));
            };
            let dp = NetlinkVxlan::new()?;
            let under = dp.underlay(ip).await?;
            let dev = vxlan::device_for(&args.vxlan_device, args.vxlan_vni, args.vxlan_port, ip, under.index, under.mtu, None);
            if node.pod_mtu > dev.mtu {
                return Err(NetError::Config(format!(
                    "pod MTU {} does not fit the vxlan device {} (MTU {} = {} MTU {} - {}): start the agent with --mtu {}",
                    node.pod_mtu,
                    dev.name,
                    dev.mtu,
                    under.name,
                    under.mtu,
                    vxlan::VXLAN_OVERHEAD,
                    dev.mtu
                )));
            }
            dp.ensure_device(&dev).await?;
            tracing::info!(ifname = %dev.name, underlay = %under.name, mtu = dev.mtu, mac = %dev.mac, "vxlan backend");
            let dp: Arc<dyn VxlanDataplane> = Arc::new(dp);
            Ok(tokio::spawn(async move {
                if let Err(e) = run_vxlan(client, node.name, dev, dp).await {
                    tracing::error!(error = %e, "node overlay (vxlan) stopped");
                }
            }))
        }
    }
}

/// Watches Nodes and calls `reconcile` with all of them after the initial list, on every
/// change (including deletions) and every [`RESYNC`].
async fn watch_nodes<F, Fut>(client: kube::Client, mut reconcile: F) -> Result<(), NetError>
where
    F: FnMut(Vec<NodeNet>, Vec<Arc<Node>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (reader, writer) = reflector::store::<Node>();
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let stream = reflector(writer, watcher(nodes, watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listed = false;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                None => return Ok(()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch error (retrying)");
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => listed = true,
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {}
        }
        if !listed {
            continue;
        }
        let objs = reader.state();
        let all: Vec<NodeNet> = objs.iter().map(|n| NodeNet::from_node(n)).collect();
        reconcile(all, objs).await;
    }
}

/// Watches Nodes and keeps the VXLAN overlay to every other node converged: the own device
/// (address once the podCIDR is known), the own Node's VTEP annotations, and per other node a
/// route, a neighbour and an FDB entry ([`desired_overlay`]). `dev` is the device without its
/// address (it is set from the Node's podCIDR).
pub async fn run_vxlan(client: kube::Client, me: String, dev: VxlanDevice, dp: Arc<dyn VxlanDataplane>) -> Result<(), NetError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let want_ann = vxlan::own_annotations(dev.local);
    watch_nodes(client, |all, objs| {
        let (api, me, dp, want_ann) = (api.clone(), me.clone(), dp.clone(), want_ann.clone());
        let mut dev = dev.clone();
        async move {
            let span = tracing::info_span!("reconcile", controller = "vxlan", node = %me);
            let r: Result<(), NetError> = async {
                let mine = all.iter().find(|n| n.name == me);
                dev.addr = mine.and_then(|n| n.pod_cidr).and_then(|c| Ipv4Net::new(vxlan::vtep_ip(c), 32).ok());
                dp.ensure_device(&dev).await?;
                if let Some(obj) = objs.iter().find(|n| n.metadata.name.as_deref() == Some(me.as_str())) {
                    let have = obj.metadata.annotations.clone().unwrap_or_default();
                    if want_ann.iter().any(|(k, v)| have.get(k) != Some(v)) {
                        let patch = serde_json::json!({"metadata": {"annotations": want_ann}});
                        api.patch(&me, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                            .await
                            .map_err(|source| NetError::Annotate { node: me.clone(), source })?;
                        tracing::info!(mac = %dev.mac, "published the VTEP on the Node");
                    }
                }
                let want = desired_overlay(&me, &all);
                converge_vxlan(dp.as_ref(), &dev.name, &want).await?;
                Ok(())
            }
            .instrument(span)
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "programming the vxlan overlay failed (retried on the next change or resync)");
            }
        }
    })
    .await
}

/// host-gw: every other node's podCIDR via that node's InternalIP.
pub fn desired_routes(me: &str, nodes: &[NodeNet]) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    nodes
        .iter()
        .filter(|n| n.name != me)
        .filter_map(|n| Some((n.pod_cidr?, n.internal_ip?)))
        .collect()
}

/// The kernel's routing table, as far as dari needs it.
#[async_trait::async_trait]
pub trait Routes: Send + Sync {
    /// dari's routes currently installed.
    async fn list(&self) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, NetError>;
    /// Adds or replaces a route.
    async fn replace(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError>;
    /// Deletes a route.
    async fn delete(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError>;
}

/// Routes through rtnetlink in the current network namespace.
pub struct NetlinkRoutes {
    handle: rtnetlink::Handle,
}

impl NetlinkRoutes {
    /// Opens a netlink connection (spawned on the current runtime).
    pub fn new() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    fn message(dst: Ipv4Net, gw: Ipv4Addr) -> netlink_packet_route::route::RouteMessage {
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .gateway(gw)
            .protocol(netlink_packet_route::route::RouteProtocol::Other(DARI_PROTO))
            .build()
    }
}

#[async_trait::async_trait]
impl Routes for NetlinkRoutes {
    async fn list(&self) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, NetError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
        let filter = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        let mut out = BTreeMap::new();
        while let Some(r) = routes.try_next().await.map_err(NetError::List)? {
            if r.header.protocol != RouteProtocol::Other(DARI_PROTO) {
                continue;
            }
            let mut dst = None;
            let mut gw = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                    _ => {}
                }
            }
            if let (Some(d), Some(g)) = (dst, gw) {
                if let Ok(net) = Ipv4Net::new(d, r.header.destination_prefix_length) {
                    out.insert(net, g);
                }
            }
        }
        Ok(out)
    }

    async fn replace(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError> {
        self.handle.route().add(Self::message(dst, gw)).replace().execute().await.map_err(|source| NetError::Route { op: "replace", dst, gw, source })
    }

    async fn delete(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError> {
        self.handle.route().del(Self::message(dst, gw)).execute().await.map_err(|source| NetError::Route { op: "delete", dst, gw, source })
    }
}

/// Converges installed routes to the desired ones: replaces missing or changed, deletes stale.
pub async fn converge(routes: &dyn Routes, desired: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<(), NetError> {
    let have = routes.list().await?;
    for (dst, gw) in &have {
        if desired.get(dst) != Some(gw) {
            routes.delete(*dst, *gw).await?;
            tracing::info!(%dst, %gw, "route to a node's podCIDR removed");
        }
    }
    for (dst, gw) in desired {
        if have.get(dst) != Some(gw) {
            routes.replace(*dst, *gw).await?;
            tracing::info!(%dst, %gw, "route to a node's podCIDR added");
        }
    }
    Ok(())
}

/// Watches Nodes and keeps one route per other node's podCIDR (host-gw backend).
pub async fn run_host_gw(client: kube::Client, me: String, routes: Arc<dyn Routes>) -> Result<(), NetError> {
    watch_nodes(client, |all, _| {
        let (me, routes) = (me.clone(), routes.clone());
        async move {
            let desired = desired_routes(&me, &all);
            let span = tracing::info_span!("reconcile", controller = "host-gw", node = %me);
            if let Err(e) = converge(routes.as_ref(), &desired).instrument(span).await {
                tracing::warn!(error = %e, "programming node routes failed (retried on the next change or resync)");
            }
        }
    })
    .await
}

/// Whether an address is IPv4 (the only family the host-gw backend handles today).
pub fn is_v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn n(name: &str, cidr: Option<&str>, ip: Option<&str>) -> NodeNet {
        NodeNet { name: name.into(), pod_cidr: cidr.map(|c| c.parse().expect("cidr")), internal_ip: ip.map(|i| i.parse().expect("ip")), backend: None, vtep_mac: None, public_ip: None }
    }

    #[test]
    fn one_route_per_other_node_with_cidr_and_ip() {
        let nodes = [n("a", Some("10.244.0.0/24"), Some("172.31.0.10")), n("b", Some("10.244.1.0/24"), Some("172.31.0.11")), n("c", None, Some("172.31.0.12")), n("d", Some("10.244.3.0/24"), None)];
        let r = desired_routes("a", &nodes);
        assert_eq!(r.len(), 1);
        assert_eq!(r.get(&"10.244.1.0/24".parse().expect("cidr")), Some(&"172.31.0.11".parse().expect("ip")));
    }

    #[derive(Default)]
    struct Fake {
        table: Mutex<BTreeMap<Ipv4Net, Ipv4Addr>>,
        log: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Routes for Fake {
        async fn list(&self) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, NetError> {
            Ok(self.table.lock().expect("lock").clone())
        }
        async fn replace(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError> {
            self.log.lock().expect("lock").push(format!("replace {dst} via {gw}"));
            self.table.lock().expect("lock").insert(dst, gw);
            Ok(())
        }
        async fn delete(&self, dst: Ipv4Net, gw: Ipv4Addr) -> Result<(), NetError> {
            self.log.lock().expect("lock").push(format!("delete {dst} via {gw}"));
            self.table.lock().expect("lock").remove(&dst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn converge_adds_changes_and_removes_nothing_twice() {
        let f = Fake::default();
        let mut want = BTreeMap::new();
        want.insert("10.244.1.0/24".parse().expect("cidr"), "172.31.0.11".parse().expect("ip"));
        want.insert("10.244.2.0/24".parse().expect("cidr"), "172.31.0.12".parse().expect("ip"));
        converge(&f, &want).await.expect("converge");
        converge(&f, &want).await.expect("idempotent");
        assert_eq!(f.log.lock().expect("lock").len(), 2);
        // a node changes address, another leaves
        want.insert("10.244.1.0/24".parse().expect("cidr"), "172.31.0.21".parse().expect("ip"));
        want.remove(&"10.244.2.0/24".parse().expect("cidr"));
        converge(&f, &want).await.expect("converge");
        let log = f.log.lock().expect("lock").clone();
        assert_eq!(&log[2..], ["delete 10.244.1.0/24 via 172.31.0.11", "delete 10.244.2.0/24 via 172.31.0.12", "replace 10.244.1.0/24 via 172.31.0.21"]);
    }
}

/// The nftables ruleset that masquerades pod traffic leaving the cluster CIDR (pod → node, pod →
/// outside), never pod → pod. Pure; applied by [`apply_egress_masquerade`].
///
/// Equivalent: `nft -f` of the returned text (table `ip dari-egress`, replaced atomically).
pub fn egress_masquerade_ruleset(cluster_cidr: Ipv4Net) -> String {
    format!(
        "table ip dari-egress {{}}\ndelete table ip dari-egress\ntable ip dari-egress {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr {cluster_cidr} ip daddr != {cluster_cidr} masquerade\n\t}}\n}}\n"
    )
}

/// Applies [`egress_masquerade_ruleset`] in the current network namespace.
///
/// Stopgap, said plainly: this runs `nft -f -` (the CNI plugin and the proxy do the same today);
/// a netlink applier is the next step.
pub fn apply_egress_masquerade(cluster_cidr: Ipv4Net) -> Result<(), NetError> {
    use std::io::Write;
    let text = egress_masquerade_ruleset(cluster_cidr);
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(NetError::Connect)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(NetError::Connect)?;
    }
    let out = child.wait_with_output().map_err(NetError::Connect)?;
    if !out.status.success() {
        return Err(NetError::Nft { stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod egress_tests {
    use super::*;

    #[test]
    fn masquerades_only_traffic_leaving_the_cluster() {
        let t = egress_masquerade_ruleset("10.244.0.0/16".parse().expect("cidr"));
        assert!(t.contains("ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade"), "{t}");
        assert!(t.starts_with("table ip dari-egress {}\ndelete table ip dari-egress\n"), "replaced atomically: {t}");
    }
}
