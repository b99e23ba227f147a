//! The controller edge: watch Services, EndpointSlices and this Node into a [`ProxyState`],
//! debounce, sync what changed.
//!
//! `dari proxy --kubeconfig K --node-name N` calls [`run`]; `dari agent` can build a
//! [`ProxyServer`] from an existing [`kube::Client`] and its own [`NftApply`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::{Mutex, Notify};

use crate::apply::NftApply;
use crate::netlink::NetlinkApplier;
use crate::config::{NodeFacts, ProxyConfig};
use crate::error::ProxyError;
use crate::render::render;
use crate::state::ProxyState;
use crate::sync::{ConntrackCli, ConntrackFlush, SyncKind, Syncer};

/// Command-line flags of `dari proxy` (flatten into the CLI with `#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Name of this node (its Node object, and `nodeName` of local endpoints).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Pod CIDRs; Service traffic from outside them is masqueraded (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Service CIDRs; traffic to unallocated IPs in them is dropped (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<IpNet>,
    /// Masquerade all Service traffic.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Serve NodePorts only on node addresses in these CIDRs (default: all node addresses).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// Also serve NodePorts on 127.0.0.1 (needs route_localnet).
    #[arg(long)]
    pub nodeport_localhost: bool,
    /// Name of the nft tables.
    #[arg(long, default_value = "dari")]
    pub table: String,
    /// Minimum time between syncs: changes within it are coalesced into one transaction.
    #[arg(long, default_value_t = 200)]
    pub min_sync_period_ms: u64,
    /// Full resync period (repairs drift).
    #[arg(long, default_value_t = 3600)]
    pub full_sync_period_secs: u64,
    /// Apply the rules inside this network namespace (e.g. /var/run/netns/node1).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// `show [svc/NAME]`: print what this node's proxy makes of Service NAME (of every Service of
    /// --namespace without a name): the map elements that lead to it with each endpoint's share,
    /// its chains and affinity sets; then exit instead of running.
    #[arg(value_name = "show [svc/NAME]", num_args = 0..=2)]
    pub show: Vec<String>,
    /// Namespace for `show`.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
}

impl ProxyArgs {
    /// What the positional words ask for: `Ok(None)` to run the proxy, `Ok(Some(name))` for
    /// `show` (`name` `None`: every Service of the namespace); `Err` says what is wrong.
    pub fn show_request(&self) -> Result<Option<Option<String>>, String> {
        match self.show.as_slice() {
            [] => Ok(None),
            [verb] if verb == "show" => Ok(Some(None)),
            [verb, target] if verb == "show" => {
                let name = target.strip_prefix("svc/").or_else(|| target.strip_prefix("service/")).unwrap_or(target);
                if name.is_empty() || name.contains('/') {
                    return Err(format!("dari proxy show {target}: expected svc/NAME or NAME"));
                }
                Ok(Some(Some(name.to_string())))
            }
            other => Err(format!("dari proxy: unexpected {:?} (the only command is `show [svc/NAME]`)", other.join(" "))),
        }
    }
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct ProxyRunConfig {
    /// Kubeconfig path (None: inferred).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name.
    pub node_name: String,
    /// Renderer settings.
    pub proxy: ProxyConfig,
    /// Debounce interval.
    pub min_sync_period: Duration,
    /// Full resync interval.
    pub full_sync_period: Duration,
    /// Network namespace to apply in.
    pub netns: Option<PathBuf>,
}

impl From<ProxyArgs> for ProxyRunConfig {
    fn from(a: ProxyArgs) -> Self {
        ProxyRunConfig {
            kubeconfig: a.kubeconfig,
            node_name: a.node_name,
            proxy: ProxyConfig {
                table: a.table,
                cluster_cidrs: a.cluster_cidr,
                service_cidrs: a.service_cidr,
                masquerade_all: a.masquerade_all,
                nodeport_addresses: a.nodeport_addresses,
                nodeport_localhost: a.nodeport_localhost,
                ..ProxyConfig::default()
            },
            min_sync_period: Duration::from_millis(a.min_sync_period_ms),
            full_sync_period: Duration::from_secs(a.full_sync_period_secs.max(1)),
            netns: a.netns,
        }
    }
}

/// Runs the proxy until a watch fails for good or the task is cancelled.
pub async fn run(cfg: ProxyRunConfig) -> Result<(), ProxyError> {
    let client = client_from(cfg.kubeconfig.as_deref()).await?;
    let applier: Arc<dyn NftApply> = Arc::new(match &cfg.netns {
        Some(ns) => NetlinkApplier::in_netns(ns.clone()),
        None => NetlinkApplier::new(),
    });
    let conntrack: Arc<dyn ConntrackFlush> = Arc::new(ConntrackCli { netns: cfg.netns.clone() });
    ProxyServer {
        client,
        node_name: cfg.node_name,
        config: cfg.proxy,
        applier,
        conntrack,
        min_sync_period: cfg.min_sync_period,
        full_sync_period: cfg.full_sync_period,
    }
    .run()
    .await
}

async fn client_from(kubeconfig: Option<&std::path::Path>) -> Result<Client, ProxyError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| ProxyError::Client {
        kubeconfig: kubeconfig.map(PathBuf::from),
        source,
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(Box::new(e)))?
        }
        None => kube::Config::infer().await.map_err(|e| err(Box::new(e)))?,
    };
    Client::try_from(config).map_err(|e| err(Box::new(e)))
}

/// The watch → debounce → render → apply loop.
pub struct ProxyServer {
    /// API client.
    pub client: Client,
    /// This node's name.
    pub node_name: String,
    /// Renderer settings.
    pub config: ProxyConfig,
    /// Where transactions go.
    pub applier: Arc<dyn NftApply>,
    /// Stale UDP conntrack cleanup.
    pub conntrack: Arc<dyn ConntrackFlush>,
    /// Debounce interval.
    pub min_sync_period: Duration,
    /// Full resync interval.
    pub full_sync_period: Duration,
}

/// What the watch loops feed: the compact state, and per resource whether its first list is in.
struct Ingest {
    state: ProxyState,
    /// Services, EndpointSlices, Node: first list complete.
    ready: [bool; 3],
    /// Keys seen since the last `Init` (a relist): what is not seen again is deleted at `InitDone`.
    seen_services: BTreeSet<(String, String)>,
    seen_slices: BTreeSet<(String, String)>,
}

fn object_key(meta: &kube::api::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// Feeds one resource's watch events into the shared state; API objects are dropped as soon as
/// their compact form is taken. Returns when the stream ends.
#[allow(clippy::too_many_arguments)]
async fn watch_into<K>(
    api: Api<K>,
    wc: watcher::Config,
    resource: &'static str,
    index: usize,
    ingest: Arc<Mutex<Ingest>>,
    notify: Arc<Notify>,
    apply: fn(&mut Ingest, &K, bool),
    delete: fn(&mut Ingest, &K),
    relist_done: fn(&mut Ingest),
) -> ProxyError
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let mut stream = watcher(api, wc).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            // The backoff retries; keep going, but say so.
            Err(e) => {
                tracing::warn!(resource, error = %e, "watch error, retrying");
                continue;
            }
        };
        let mut g = ingest.lock().await;
        match ev {
            watcher::Event::Init => {
                g.seen_services.clear();
                g.seen_slices.clear();
                continue;
            }
            watcher::Event::InitApply(o) => apply(&mut g, &o, true),
            watcher::Event::InitDone => {
                relist_done(&mut g);
                g.ready[index] = true;
            }
            watcher::Event::Apply(o) => apply(&mut g, &o, false),
            watcher::Event::Delete(o) => delete(&mut g, &o),
        }
        drop(g);
        notify.notify_one();
    }
    ProxyError::Watch { resource, source: "watch stream ended".into() }
}

impl ProxyServer {
    /// Runs until a watch stream ends (returned as an error) or the future is dropped.
    ///
    /// Watch events go straight into a [`ProxyState`] (compact inputs, per-Service render
    /// cache); each sync re-renders and plans only the Services that changed since the last one.
    pub async fn run(self) -> Result<(), ProxyError> {
        let notify = Arc::new(Notify::new());
        let ingest = Arc::new(Mutex::new(Ingest {
            state: ProxyState::new(
                NodeFacts { name: self.node_name.clone(), addresses: Vec::new() },
                self.config.clone(),
            ),
            ready: [false; 3],
            seen_services: BTreeSet::new(),
            seen_slices: BTreeSet::new(),
        }));
        let svc_watch = watch_into(
            Api::<Service>::all(self.client.clone()),
            watcher::Config::default(),
            "services",
            0,
            ingest.clone(),
            notify.clone(),
            |g, o: &Service, init| {
                if init {
                    g.seen_services.insert(object_key(&o.metadata));
                }
                g.state.upsert_service(o);
            },
            |g, o: &Service| {
                let (ns, name) = object_key(&o.metadata);
                g.state.delete_service(&ns, &name);
            },
            |g| {
                let (services, _) = g.state.keys();
                for k in services {
                    if !g.seen_services.contains(&(k.namespace().to_string(), k.name().to_string())) {
                        g.state.delete_service(k.namespace(), k.name());
                    }
                }
            },
        );
        let eps_watch = watch_into(
            Api::<EndpointSlice>::all(self.client.clone()),
            watcher::Config::default(),
            "endpointslices",
            1,
            ingest.clone(),
            notify.clone(),
            |g, o: &EndpointSlice, init| {
                if init {
                    g.seen_slices.insert(object_key(&o.metadata));
                }
                g.state.upsert_slice(o);
            },
            |g, o: &EndpointSlice| {
                let (ns, name) = object_key(&o.metadata);
                g.state.delete_slice(&ns, &name);
            },
            |g| {
                let (_, slices) = g.state.keys();
                for k in slices {
                    if !g.seen_slices.contains(&k) {
                        g.state.delete_slice(&k.0, &k.1);
                    }
                }
            },
        );
        let node_watch = watch_into(
            Api::<Node>::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name)),
            "nodes",
            2,
            ingest.clone(),
            notify.clone(),
            |g, o: &Node, _| g.state.set_node(NodeFacts::from_node(o)),
            |_, _| {},
            |_| {},
        );
        let syncer = Arc::new(std::sync::Mutex::new(Syncer::new(self.applier.clone())));
        let sync_loop = async {
            // Render nothing before the first list of every resource is in.
            loop {
                if ingest.lock().await.ready.iter().all(|r| *r) {
                    break;
                }
                notify.notified().await;
            }
            // The first sync is full anyway (nothing applied yet); resyncs start one period later.
            let mut resync = tokio::time::interval_at(
                tokio::time::Instant::now() + self.full_sync_period,
                self.full_sync_period,
            );
            resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = true;
            loop {
                let full = if first {
                    first = false;
                    true
                } else {
                    tokio::select! {
                        _ = notify.notified() => false,
                        _ = resync.tick() => true,
                    }
                };
                tokio::time::sleep(self.min_sync_period).await;
                let syncer = syncer.clone();
                let ingest = ingest.clone();
                let table = self.config.table.clone();
                let span = tracing::info_span!("proxy_reconcile", full);
                let result = tokio::task::spawn_blocking(move || {
                    let _e = span.enter();
                    let mut g = ingest.blocking_lock();
                    let mut s = syncer.lock().map_err(|_| ProxyError::Netlink {
                        op: "syncer lock".into(),
                        netns: None,
                        source: std::io::Error::other("poisoned"),
                    })?;
                    s.sync_state(&mut g.state, full)
                })
                .await
                .map_err(|source| ProxyError::SyncTask { table, source });
                match result {
                    Ok(Ok(outcome)) => {
                        if outcome.kind != SyncKind::Unchanged {
                            tracing::info!(kind = ?outcome.kind, lines = outcome.lines, "synced");
                        }
                        if !outcome.stale_udp_endpoints.is_empty() {
                            let ct = self.conntrack.clone();
                            // Off the sync path: conntrack deletion never delays the next sync.
                            tokio::task::spawn_blocking(move || {
                                for (ip, port) in outcome.stale_udp_endpoints {
                                    if let Err(e) = ct.flush_udp_endpoint(ip, port) {
                                        tracing::warn!(%ip, port, error = %e, "conntrack cleanup");
                                    }
                                }
                            });
                        }
                    }
                    // The state falls back to a full sync next time; retry soon.
                    Ok(Err(e)) | Err(e) => {
                        tracing::error!(error = %e, "sync failed");
                        notify.notify_one();
                    }
                }
            }
        };
        tokio::select! {
            e = svc_watch => Err(e),
            e = eps_watch => Err(e),
            e = node_watch => Err(e),
            never = sync_loop => never,
        }
    }
}

/// `dari proxy show [NAMESPACE/NAME]`: lists Services, EndpointSlices and this Node once, renders
/// what this node's proxy would apply, and describes the Service (all of `namespace` when
/// `name` is None) with [`crate::show::show`].
pub async fn show_from_api(cfg: &ProxyRunConfig, namespace: &str, name: Option<&str>) -> Result<String, ProxyError> {
    use kube::api::ListParams;
    let client = client_from(cfg.kubeconfig.as_deref()).await?;
    let lp = ListParams::default();
    let list_err = |resource: &'static str| move |e: kube::Error| ProxyError::Watch { resource, source: Box::new(e) };
    let services = Api::<Service>::all(client.clone()).list(&lp).await.map_err(list_err("services"))?.items;
    let slices = Api::<EndpointSlice>::all(client.clone()).list(&lp).await.map_err(list_err("endpointslices"))?.items;
    let node = Api::<Node>::all(client)
        .get_opt(&cfg.node_name)
        .await
        .map_err(list_err("nodes"))?
        .map(|n| NodeFacts::from_node(&n))
        .unwrap_or_else(|| NodeFacts { name: cfg.node_name.clone(), addresses: Vec::new() });
    let rs = render(&services, &slices, &node, &cfg.proxy);
    Ok(crate::show::show(&rs, &services, namespace, name))
}
