//! Inputs of the renderer besides the API objects: facts about this node and proxy settings.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

/// What the renderer needs to know about the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `metadata.name` of the Node; endpoints with this `nodeName` are local.
    pub name: String,
    /// The node's addresses (InternalIP / ExternalIP); NodePorts listen on these.
    pub addresses: Vec<IpAddr>,
}

impl NodeFacts {
    /// Facts from a Node object: its name and its InternalIP/ExternalIP addresses.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|addrs| {
                addrs
                    .iter()
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .filter_map(|a| a.address.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        NodeFacts { name, addresses }
    }
}

/// Proxy settings (the subset of KubeProxyConfiguration that shapes the ruleset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Name of the nft tables (`ip NAME`, `ip6 NAME`). Default `dari`.
    pub table: String,
    /// Pod CIDRs of the cluster. Traffic to a ClusterIP from outside them is masqueraded;
    /// traffic from inside keeps the client pod IP. Empty: no such masquerade (like kube-proxy
    /// without `--cluster-cidr`).
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs: traffic to an unallocated IP in them is dropped. Empty: no such rule.
    pub service_cidrs: Vec<IpNet>,
    /// Masquerade all Service traffic (kube-proxy `--masquerade-all`). Default false.
    pub masquerade_all: bool,
    /// Only node addresses inside these CIDRs serve NodePorts. Empty: all node addresses.
    pub nodeport_addresses: Vec<IpNet>,
    /// Also serve NodePorts on 127.0.0.1 (needs `net.ipv4.conf.all.route_localnet=1`).
    /// Default false.
    pub nodeport_localhost: bool,
    /// Packet mark bit used for "masquerade this" (default `0x4000`, as kube-proxy).
    pub masquerade_mark: u32,
    /// Pick endpoints with one `dnat ip to numgen random mod N map { .. }` per Service port
    /// (O(1) per packet, like kube-proxy's vmap) instead of a cascade of `numgen random mod
    /// N-k == 0 ... dnat` rules. Default false: every anonymous map is a set the kernel finds by
    /// walking the table's list of sets, so big transactions go quadratic, and the netlink
    /// applier does not encode it (such transactions go through `nft -f`). Ignored with
    /// session affinity.
    pub numgen_vmap: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            table: "dari".to_string(),
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            masquerade_all: false,
            nodeport_addresses: Vec::new(),
            nodeport_localhost: false,
            masquerade_mark: 0x4000,
            numgen_vmap: false,
        }
    }
}
