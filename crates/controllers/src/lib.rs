//! dari-controllers: the controller-manager's jobs, written against the Kubernetes API with the kube
//! client only, so they run against any conformant API server.
//!
//! Start from [`run`]: it competes for the `kube-system/kube-controller-manager` Lease
//! ([`leader::run_leader`]) and, while it holds it, runs every controller over one shared set of
//! watches ([`runtime::Informer`]):
//! [`replicaset`], [`deployment`], [`daemonset`], [`endpoints`] (EndpointSlices and Endpoints),
//! [`ipam`] (node podCIDRs), [`nodelifecycle`] (Lease-based node health, taints, eviction),
//! [`gc`] (ownerReferences: background, foreground, orphan) and [`serviceaccount`].
//! The decisions are pure functions (slices for a Service, the CIDR for a Node, the next rollout step)
//! tested without a server; the loopback tests in `tests/` drive a real dari API server and kubectl.

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod ipam;
pub mod leader;
pub mod nodelifecycle;
pub mod replicaset;
pub mod runtime;
pub mod serviceaccount;
pub mod util;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;

use runtime::{Informer, Recorder};

/// Settings of the controller-manager.
#[derive(Clone, Debug)]
pub struct ControllersConfig {
    /// The pod network; every Node gets a slice of it (`--cluster-cidr`, default 10.244.0.0/16).
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's podCIDR (`--node-cidr-mask-size`, default 24).
    pub node_cidr_mask: u8,
    /// This instance's identity in the Lease (default: hostname + random suffix).
    pub identity: String,
    /// Lease duration (default 15 s).
    pub lease_duration: Duration,
    /// Renew deadline (default 10 s).
    pub renew_deadline: Duration,
    /// Retry period (default 2 s).
    pub retry_period: Duration,
    /// How long a node may go without renewing its Lease before it is Ready=Unknown (default 40 s).
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked (default 5 s).
    pub node_monitor_period: Duration,
    /// Eviction delay for pods that carry no toleration for the unreachable/not-ready taints
    /// (upstream's DefaultTolerationSeconds admission gives 300 s; default 300 s).
    pub pod_eviction_timeout: Duration,
    /// Workers per controller (default 4).
    pub workers: usize,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "dari".into());
        ControllersConfig {
            cluster_cidr: ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            node_cidr_mask: 24,
            identity: format!("{host}_{:08x}", rand::random::<u32>()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            pod_eviction_timeout: Duration::from_secs(300),
            workers: 4,
        }
    }
}

/// Why a controller step failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllersError {
    /// A call to the API server failed.
    #[error("{op} {object}")]
    Kube {
        /// What was being done.
        op: &'static str,
        /// namespace/name of the object.
        object: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A conflict the controller will retry (e.g. a ReplicaSet name collision).
    #[error("{object}: {message}")]
    Retry {
        /// The object.
        object: String,
        /// What happened.
        message: String,
    },
}

impl ControllersError {
    pub(crate) fn kube(op: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        ControllersError::Kube { op, object: object.into(), source }
    }
}

/// Every watch the controllers share.
pub struct Informers {
    /// Pods.
    pub pods: Arc<Informer<Pod>>,
    /// Nodes.
    pub nodes: Arc<Informer<Node>>,
    /// ReplicaSets.
    pub replicasets: Arc<Informer<ReplicaSet>>,
    /// Deployments.
    pub deployments: Arc<Informer<Deployment>>,
    /// DaemonSets.
    pub daemonsets: Arc<Informer<DaemonSet>>,
    /// Services.
    pub services: Arc<Informer<Service>>,
    /// EndpointSlices managed by this controller.
    pub slices: Arc<Informer<EndpointSlice>>,
    /// Endpoints.
    pub endpoints: Arc<Informer<Endpoints>>,
    /// Namespaces.
    pub namespaces: Arc<Informer<Namespace>>,
    /// ServiceAccounts named "default".
    pub serviceaccounts: Arc<Informer<ServiceAccount>>,
    /// Node Leases (kube-node-lease).
    pub node_leases: Arc<Informer<Lease>>,
}

impl Informers {
    /// Builds (does not start) the informers.
    pub fn new(client: &Client) -> Self {
        let wc = watcher::Config::default;
        Informers {
            pods: Informer::new(Api::all(client.clone()), wc()),
            nodes: Informer::new(Api::all(client.clone()), wc()),
            replicasets: Informer::new(Api::all(client.clone()), wc()),
            deployments: Informer::new(Api::all(client.clone()), wc()),
            daemonsets: Informer::new(Api::all(client.clone()), wc()),
            services: Informer::new(Api::all(client.clone()), wc()),
            slices: Informer::new(Api::all(client.clone()), wc().labels(&format!("{}={}", endpoints::MANAGED_BY, endpoints::CONTROLLER_NAME))),
            endpoints: Informer::new(Api::all(client.clone()), wc()),
            namespaces: Informer::new(Api::all(client.clone()), wc()),
            serviceaccounts: Informer::new(Api::all(client.clone()), wc().fields("metadata.name=default")),
            node_leases: Informer::new(Api::namespaced(client.clone(), "kube-node-lease"), wc()),
        }
    }

    fn start(&self, tasks: &mut tokio::task::JoinSet<()>) {
        self.pods.start(tasks);
        self.nodes.start(tasks);
        self.replicasets.start(tasks);
        self.deployments.start(tasks);
        self.daemonsets.start(tasks);
        self.services.start(tasks);
        self.slices.start(tasks);
        self.endpoints.start(tasks);
        self.namespaces.start(tasks);
        self.serviceaccounts.start(tasks);
        self.node_leases.start(tasks);
    }

    async fn ready(&self) {
        self.pods.ready().await;
        self.nodes.ready().await;
        self.replicasets.ready().await;
        self.deployments.ready().await;
        self.daemonsets.ready().await;
        self.services.ready().await;
        self.slices.ready().await;
        self.endpoints.ready().await;
        self.namespaces.ready().await;
        self.serviceaccounts.ready().await;
        self.node_leases.ready().await;
    }
}

/// Runs all controllers while holding the `kube-system/kube-controller-manager` Lease. Returns only on
/// a configuration error.
pub async fn run(client: Client, cfg: ControllersConfig) -> Result<(), ControllersError> {
    check_config(&cfg)?;
    let lcfg = leader::LeaderConfig {
        namespace: "kube-system".into(),
        name: "kube-controller-manager".into(),
        identity: cfg.identity.clone(),
        lease_duration: cfg.lease_duration,
        renew_deadline: cfg.renew_deadline,
        retry_period: cfg.retry_period,
    };
    leader::run_leader(client.clone(), lcfg, move || run_controllers(client.clone(), cfg.clone())).await
}

fn check_config(cfg: &ControllersConfig) -> Result<(), ControllersError> {
    if cfg.node_cidr_mask < cfg.cluster_cidr.prefix_len() || cfg.node_cidr_mask > 30 {
        return Err(ControllersError::Config(format!(
            "node CIDR mask /{} must be between the cluster CIDR's /{} and /30",
            cfg.node_cidr_mask,
            cfg.cluster_cidr.prefix_len()
        )));
    }
    Ok(())
}

/// Runs all controllers without leader election (what [`run`] does while leader). Cancel by dropping.
pub async fn run_controllers(client: Client, cfg: ControllersConfig) -> Result<(), ControllersError> {
    check_config(&cfg)?;
    let inf = Informers::new(&client);
    let rec = Recorder::new(client.clone(), "replicaset-controller");
    let rs = replicaset::ReplicaSetController::new(client.clone(), &inf.replicasets, &inf.pods, rec);
    let dep = deployment::DeploymentController::new(client.clone(), &inf, Recorder::new(client.clone(), "deployment-controller"));
    let ds = daemonset::DaemonSetController::new(client.clone(), &inf, Recorder::new(client.clone(), "daemonset-controller"));
    let ep = endpoints::EndpointsController::new(client.clone(), &inf);
    let ipam = ipam::IpamController::new(client.clone(), &inf.nodes, cfg.cluster_cidr, cfg.node_cidr_mask, Recorder::new(client.clone(), "node-ipam-controller"));
    let sa = serviceaccount::ServiceAccountController::new(client.clone(), &inf.namespaces, &inf.serviceaccounts);
    let nl = nodelifecycle::NodeLifecycleController::new(client.clone(), &inf, &cfg, Recorder::new(client.clone(), "node-controller"));
    let gc = gc::GarbageCollector::new(client.clone(), &inf);
    let mut tasks = tokio::task::JoinSet::new();
    inf.start(&mut tasks);
    inf.ready().await;
    tracing::info!("controller caches synced");
    let w = cfg.workers;
    tasks.spawn(rs.run(w));
    tasks.spawn(dep.run(w));
    tasks.spawn(ds.run(w.min(2)));
    tasks.spawn(ep.run(w));
    tasks.spawn(ipam.run());
    tasks.spawn(sa.run(w.min(2)));
    tasks.spawn(nl.run());
    tasks.spawn(gc.run());
    while tasks.join_next().await.is_some() {}
    Ok(())
}
