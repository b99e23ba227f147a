//! Node IPAM: every Node gets a distinct `spec.podCIDR`/`podCIDRs` carved from the cluster CIDR.
//! The allocator ([`CidrSet`]) is rebuilt from the Nodes' existing podCIDRs at start, so allocations
//! survive restarts with no state of their own; a deleted Node's range is free again. A full range
//! gives a `CIDRNotAvailable` event on the Node.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::runtime::{get, Informer, Queue, Recorder};
use crate::ControllersError;

/// Pure allocator of equal-size subnets of a cluster CIDR.
#[derive(Clone, Debug)]
pub struct CidrSet {
    cluster: Ipv4Net,
    mask: u8,
    used: BTreeSet<u32>,
}

impl CidrSet {
    /// Subnets of size `/mask` in `cluster`.
    pub fn new(cluster: Ipv4Net, mask: u8) -> Self {
        CidrSet { cluster: cluster.trunc(), mask, used: BTreeSet::new() }
    }

    fn index(&self, net: &Ipv4Net) -> Option<u32> {
        if net.prefix_len() != self.mask || !self.cluster.contains(net) {
            return None;
        }
        let off = u32::from(net.network()) - u32::from(self.cluster.network());
        Some(off >> (32 - u32::from(self.mask)))
    }

    fn capacity(&self) -> u64 {
        1u64 << (self.mask - self.cluster.prefix_len())
    }

    /// Marks a subnet used (true if it belongs to this set).
    pub fn occupy(&mut self, net: &Ipv4Net) -> bool {
        match self.index(net) {
            Some(i) => {
                self.used.insert(i);
                true
            }
            None => false,
        }
    }

    /// Frees a subnet.
    pub fn release(&mut self, net: &Ipv4Net) {
        if let Some(i) = self.index(net) {
            self.used.remove(&i);
        }
    }

    /// The lowest free subnet, now used; None when full.
    pub fn allocate(&mut self) -> Option<Ipv4Net> {
        let cap = self.capacity();
        let i = (0..cap).map(|i| i as u32).find(|i| !self.used.contains(i))?;
        self.used.insert(i);
        let base = u32::from(self.cluster.network()) + (i << (32 - u32::from(self.mask)));
        Ipv4Net::new(base.into(), self.mask).ok()
    }
}

fn node_cidr(n: &Node) -> Option<Ipv4Net> {
    n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).and_then(|c| c.parse().ok())
}

/// The node IPAM controller.
pub struct IpamController {
    client: Client,
    nodes: Store<Node>,
    queue: Queue,
    set: Mutex<CidrSet>,
    owners: Mutex<HashMap<String, Ipv4Net>>,
    rec: Recorder,
}

impl IpamController {
    /// Wires the controller to the Node informer.
    pub fn new(client: Client, nodes: &Informer<Node>, cluster: Ipv4Net, mask: u8, rec: Recorder) -> Arc<Self> {
        let queue = Queue::new();
        let q = queue.clone();
        nodes.on_change(move |old, new| {
            if let Some(n) = new.or(old) {
                q.add(n.name_any());
            }
        });
        Arc::new(IpamController { client, nodes: nodes.store(), queue, set: Mutex::new(CidrSet::new(cluster, mask)), owners: Mutex::default(), rec })
    }

    /// Rebuilds the allocator from existing Nodes, then runs.
    pub async fn run(self: Arc<Self>) {
        if let (Ok(mut set), Ok(mut owners)) = (self.set.lock(), self.owners.lock()) {
            for n in self.nodes.state() {
                if let Some(c) = node_cidr(&n) {
                    if set.occupy(&c) {
                        owners.insert(n.name_any(), c);
                    }
                }
            }
        }
        let me = self.clone();
        crate::runtime::run_workers("node-ipam", self.queue.clone(), 1, move |k| me.clone().reconcile(k)).await
    }

    #[tracing::instrument(name = "reconcile_node_cidr", skip(self))]
    async fn reconcile(self: Arc<Self>, name: String) -> Result<Option<std::time::Duration>, ControllersError> {
        let node = get(&self.nodes, &name);
        let Some(node) = node else {
            // deleted: release
            if let (Ok(mut set), Ok(mut owners)) = (self.set.lock(), self.owners.lock()) {
                if let Some(c) = owners.remove(&name) {
                    set.release(&c);
                }
            }
            return Ok(None);
        };
        if let Some(c) = node_cidr(&node) {
            if let (Ok(mut set), Ok(mut owners)) = (self.set.lock(), self.owners.lock()) {
                if set.occupy(&c) {
                    owners.insert(name.clone(), c);
                }
            }
            return Ok(None);
        }
        let got = match (self.set.lock(), self.owners.lock()) {
            (Ok(mut set), Ok(mut owners)) => match owners.get(&name) {
                Some(c) => Some(*c),
                None => {
                    let c = set.allocate();
                    if let Some(c) = c {
                        owners.insert(name.clone(), c);
                    }
                    c
                }
            },
            _ => None,
        };
        let Some(cidr) = got else {
            self.rec.event(&*node, "Normal", "CIDRNotAvailable", format!("Node {name} status is now: CIDRNotAvailable"));
            return Ok(Some(std::time::Duration::from_secs(30)));
        };
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(node = %name, %cidr, "assigned podCIDR");
                Ok(None)
            }
            Err(e) => {
                if let (Ok(mut set), Ok(mut owners)) = (self.set.lock(), self.owners.lock()) {
                    owners.remove(&name);
                    set.release(&cidr);
                }
                if crate::replicaset::is_not_found(&e) {
                    return Ok(None);
                }
                Err(ControllersError::kube("assigning podCIDR to node", name, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocates_in_order_reuses_released_and_reports_full() {
        let mut s = CidrSet::new("10.244.0.0/22".parse().unwrap_or_default(), 24);
        let a: Vec<String> = (0..4).filter_map(|_| s.allocate()).map(|c| c.to_string()).collect();
        assert_eq!(a, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]);
        assert_eq!(s.allocate(), None);
        s.release(&"10.244.2.0/24".parse().unwrap_or_default());
        assert_eq!(s.allocate().map(|c| c.to_string()).as_deref(), Some("10.244.2.0/24"));
        assert!(!s.occupy(&"10.0.0.0/24".parse().unwrap_or_default()));
    }

    proptest! {
        #[test]
        fn allocations_are_distinct_and_inside(ops in proptest::collection::vec(any::<bool>(), 1..200)) {
            let cluster: Ipv4Net = "10.244.0.0/20".parse().unwrap_or_default();
            let mut s = CidrSet::new(cluster, 26);
            let mut live: Vec<Ipv4Net> = Vec::new();
            for alloc in ops {
                if alloc || live.is_empty() {
                    if let Some(c) = s.allocate() {
                        prop_assert!(cluster.contains(&c));
                        prop_assert!(!live.contains(&c));
                        live.push(c);
                    } else {
                        prop_assert_eq!(live.len(), 64);
                    }
                } else {
                    let c = live.remove(0);
                    s.release(&c);
                }
            }
        }
    }
}
