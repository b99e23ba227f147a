//! dari-net: the pod network between nodes (flannel's job, built into `dari agent`).
//!
//! Start from [`desired_routes`] (pure: Nodes → one route per other node's podCIDR via its
//! InternalIP, the `host-gw` backend) and [`run_host_gw`], which watches Nodes and converges the
//! kernel's routes through the small [`Routes`] trait ([`NetlinkRoutes`] for real, a recording
//! fake in tests). Routes dari owns carry their own protocol number ([`DARI_PROTO`]) so stale
//! ones are found and removed, and nothing else is touched.
//!
//! Missing: the VXLAN backend (nodes on different links); `host-gw` needs all nodes on one L2
//! segment, which the lab provides.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{reflector, watcher, WatchStreamExt};

/// The route protocol number marking dari's routes (`ip route show proto 218`).
pub const DARI_PROTO: u8 = 218;

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

/// What the pure core needs of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// Node name.
    pub name: String,
    /// `spec.podCIDR`.
    pub pod_cidr: Option<Ipv4Net>,
    /// The InternalIP address.
    pub internal_ip: Option<Ipv4Addr>,
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
        NodeNet { name, pod_cidr, internal_ip }
    }
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
    let (reader, writer) = reflector::store::<Node>();
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let stream = reflector(writer, watcher(nodes, watcher::Config::default())).default_backoff().touched_objects();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        if let Err(e) = ev {
            tracing::warn!(error = %e, "node watch error (retrying)");
            continue;
        }
        let all: Vec<NodeNet> = reader.state().iter().map(|n| NodeNet::from_node(n)).collect();
        let desired = desired_routes(&me, &all);
        let span = tracing::info_span!("reconcile", controller = "host-gw", node = %me);
        if let Err(e) = span.in_scope(|| converge(routes.as_ref(), &desired)).await {
            tracing::warn!(error = %e, "programming node routes failed (retried on the next change)");
        }
    }
    Ok(())
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
        NodeNet { name: name.into(), pod_cidr: cidr.map(|c| c.parse().expect("cidr")), internal_ip: ip.map(|i| i.parse().expect("ip")) }
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
