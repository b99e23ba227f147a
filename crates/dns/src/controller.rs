//! The controller edge: watches Services, EndpointSlices (and Pods in `verified` mode) with
//! `kube::runtime` watchers, keeps only their summaries ([`ServiceInfo`] ...), rebuilds the [`ClusterIndex`] on change, reloads the config from the
//! ConfigMap `kube-system/<name>` (key `config.yaml`), and runs the DNS and HTTP listeners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{DnsConfig, DnsRunConfig, PodsMode};
use crate::error::DnsError;
use crate::http::HttpServer;
use crate::index::{ClusterIndex, PodInfo, ServiceInfo, SliceInfo};
use crate::server::{DnsServer, DnsState};

/// Key of the config document in the ConfigMap.
pub const CONFIGMAP_KEY: &str = "config.yaml";
/// Namespace of the config ConfigMap.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Changes arriving within this window are folded into one index rebuild.
pub const REBUILD_DEBOUNCE: Duration = Duration::from_millis(50);

/// Runs dari's cluster DNS until a listener or a watch fails: builds a client (kubeconfig path, or
/// in-cluster / `$KUBECONFIG`), binds DNS and HTTP, watches the API.
pub async fn run(cfg: DnsRunConfig) -> Result<(), DnsError> {
    let client = make_client(&cfg).await?;
    run_with_client(cfg, client).await
}

async fn make_client(cfg: &DnsRunConfig) -> Result<Client, DnsError> {
    let kcfg = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| DnsError::KubeClient {
                what: format!("reading kubeconfig {}", path.display()),
                source: Box::new(e),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| DnsError::KubeClient {
                    what: format!("kubeconfig {}", path.display()),
                    source: Box::new(e),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| DnsError::KubeClient {
            what: "in-cluster or default kubeconfig".into(),
            source: Box::new(e),
        })?,
    };
    Client::try_from(kcfg).map_err(|e| DnsError::KubeClient {
        what: "client from config".into(),
        source: Box::new(e),
    })
}

/// [`run`] with a given client (the lead's in-process API server can hand one over).
pub async fn run_with_client(cfg: DnsRunConfig, client: Client) -> Result<(), DnsError> {
    let upstreams = upstreams_or_warn(&cfg.base);
    let state = DnsState::new(&cfg.base, upstreams)?;
    let dns = DnsServer::bind(cfg.listen, state.clone()).await?;
    let http = HttpServer::bind(cfg.metrics_listen, state.clone()).await?;
    info!(dns = %dns.local_addr(), http = %http.local_addr(), zone = %cfg.base.zone, "cluster DNS listening");
    let verified = cfg.base.pods == PodsMode::Verified;
    tokio::select! {
        r = dns.run() => r,
        r = http.run() => r,
        r = watch_objects(client.clone(), state.clone(), verified) => r,
        r = watch_config(client, cfg, state) => r,
    }
}

fn upstreams_or_warn(cfg: &DnsConfig) -> Vec<std::net::SocketAddr> {
    match cfg.upstreams() {
        Ok(u) => {
            if u.is_empty() {
                warn!("no upstream resolvers: names outside the cluster get SERVFAIL");
            }
            u
        }
        Err(e) => {
            warn!(error = %e, "no upstream resolvers: names outside the cluster get SERVFAIL");
            Vec::new()
        }
    }
}

/// Object summaries by `namespace/name`, kept from a watch: the controller holds these, never whole
/// objects, so its memory grows with what DNS answers, not with object size.
struct Summaries<T> {
    current: HashMap<String, T>,
    /// A relist in progress (between `Init` and `InitDone`).
    pending: Option<HashMap<String, T>>,
    synced: bool,
}

impl<T> Default for Summaries<T> {
    fn default() -> Self {
        Summaries {
            current: HashMap::new(),
            pending: None,
            synced: false,
        }
    }
}

type Shared<T> = Arc<Mutex<Summaries<T>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(meta: &ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

/// Applies a watch stream to `store`, turning each object into its summary as it arrives.
async fn drive<K, T, S>(
    stream: S,
    kind: &'static str,
    store: Shared<T>,
    summarize: fn(&K) -> Option<T>,
    notify: Arc<Notify>,
) -> Result<(), DnsError>
where
    K: kube::Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            // the backoff retries; the error is worth a line
            Err(e) => {
                warn!(kind, error = %e, "watch error, retrying");
                continue;
            }
        };
        let mut s = lock(&store);
        match ev {
            Event::Init => s.pending = Some(HashMap::new()),
            Event::InitApply(obj) => {
                let k = key(obj.meta());
                if let (Some(p), Some(v)) = (s.pending.as_mut(), summarize(&obj)) {
                    p.insert(k, v);
                }
                continue;
            }
            Event::InitDone => {
                if let Some(p) = s.pending.take() {
                    s.current = p;
                }
                s.current.shrink_to_fit();
                s.synced = true;
            }
            Event::Apply(obj) => {
                let k = key(obj.meta());
                match summarize(&obj) {
                    Some(v) => s.current.insert(k, v),
                    None => s.current.remove(&k),
                };
            }
            Event::Delete(obj) => {
                s.current.remove(&key(obj.meta()));
            }
        }
        drop(s);
        notify.notify_one();
    }
    Err(DnsError::TaskEnded { task: kind })
}

/// Watches the objects and keeps `state`'s index current.
pub async fn watch_objects(client: Client, state: Arc<DnsState>, pods: bool) -> Result<(), DnsError> {
    let notify = Arc::new(Notify::new());
    let svc_store: Shared<ServiceInfo> = Arc::default();
    let eps_store: Shared<SliceInfo> = Arc::default();
    let pod_store: Shared<PodInfo> = Arc::default();
    let wc = watcher::Config::default();
    let svc = watcher::watcher(Api::<Service>::all(client.clone()), wc.clone()).default_backoff();
    let eps = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), wc.clone()).default_backoff();
    let pod_watch = async {
        if pods {
            let s = watcher::watcher(Api::<Pod>::all(client.clone()), wc.clone()).default_backoff();
            drive(s, "pods", pod_store.clone(), PodInfo::from_pod, notify.clone()).await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        r = drive(svc, "services", svc_store.clone(), ServiceInfo::from_service, notify.clone()) => r,
        r = drive(eps, "endpointslices", eps_store.clone(), SliceInfo::from_slice, notify.clone()) => r,
        r = pod_watch => r,
        r = rebuild_loop(svc_store.clone(), eps_store.clone(), pods.then_some(pod_store.clone()), state, notify.clone()) => r,
    }
}

async fn rebuild_loop(
    svcs: Shared<ServiceInfo>,
    eps: Shared<SliceInfo>,
    pods: Option<Shared<PodInfo>>,
    state: Arc<DnsState>,
    notify: Arc<Notify>,
) -> Result<(), DnsError> {
    // the first index is built once every watch has listed
    loop {
        let synced = lock(&svcs).synced && lock(&eps).synced && pods.as_ref().is_none_or(|p| lock(p).synced);
        if synced {
            break;
        }
        notify.notified().await;
    }
    let mut serial: u32 = 0;
    loop {
        serial = serial.wrapping_add(1);
        let index = {
            let (s, e) = (lock(&svcs), lock(&eps));
            let p = pods.as_ref().map(|p| lock(p));
            ClusterIndex::from_info(s.current.values(), e.current.values(), p.iter().flat_map(|p| p.current.values()))
                .with_serial(serial)
        };
        tracing::debug!(services = index.service_count(), endpoints = index.endpoint_count(), serial, "DNS index rebuilt");
        state.set_index(index);
        state.set_synced(true);
        notify.notified().await;
        tokio::time::sleep(REBUILD_DEBOUNCE).await;
    }
}

/// The config held by a ConfigMap (key `config.yaml`; absent or empty means all defaults).
pub fn config_from_configmap(cm: &ConfigMap, origin: &str) -> Result<DnsConfig, DnsError> {
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)).map(String::as_str).unwrap_or("");
    DnsConfig::from_yaml(text, origin)
}

/// Watches the config ConfigMap and applies each valid version; a deleted ConfigMap reverts to the base
/// config, an invalid one is logged and ignored.
pub async fn watch_config(client: Client, cfg: DnsRunConfig, state: Arc<DnsState>) -> Result<(), DnsError> {
    let Some(name) = cfg.configmap.clone() else {
        return std::future::pending().await;
    };
    let api = Api::<ConfigMap>::namespaced(client, CONFIGMAP_NAMESPACE);
    let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, wc).default_backoff());
    let origin = format!("configmap {CONFIGMAP_NAMESPACE}/{name}");
    let mut current: Option<DnsConfig> = None;
    while let Some(ev) = stream.next().await {
        let next = match ev {
            Ok(Event::Apply(cm)) | Ok(Event::InitApply(cm)) => {
                match config_from_configmap(&cm, &origin) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "ignoring invalid DNS config");
                        continue;
                    }
                }
            }
            Ok(Event::Delete(_)) => cfg.base.clone(),
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "configmap watch error, retrying");
                continue;
            }
        };
        if current.as_ref() == Some(&next) {
            continue;
        }
        if next.pods == PodsMode::Verified && cfg.base.pods != PodsMode::Verified {
            warn!("pods: verified set in the ConfigMap needs a restart to start watching Pods; answering as verified without pods");
        }
        let upstreams = upstreams_or_warn(&next);
        state.apply_config(&next, upstreams)?;
        info!(%origin, zone = %next.zone, "DNS config reloaded");
        current = Some(next);
    }
    Err(DnsError::TaskEnded { task: "configmap watch" })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn configmap_config() {
        let mut cm = ConfigMap::default();
        assert_eq!(config_from_configmap(&cm, "cm").unwrap(), DnsConfig::default());
        cm.data = Some([(CONFIGMAP_KEY.to_string(), "ttl: 30\npods: verified\nforward: [\"127.0.0.1:5300\"]\n".to_string())].into());
        let c = config_from_configmap(&cm, "cm").unwrap();
        assert_eq!((c.ttl, c.pods, c.cache), (30, PodsMode::Verified, 30));
        cm.data = Some([(CONFIGMAP_KEY.to_string(), "tll: 30\n".to_string())].into());
        assert!(config_from_configmap(&cm, "cm").is_err(), "typo must be rejected");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        dns: crate::config::DnsArgs,
    }

    #[test]
    fn args_flatten_with_defaults() {
        let cli = Cli::try_parse_from(["dari"]).unwrap();
        let run = DnsRunConfig::from_args(&cli.dns).unwrap();
        assert_eq!(run.listen, "0.0.0.0:53".parse().unwrap());
        assert_eq!(run.metrics_listen, "0.0.0.0:9153".parse().unwrap());
        assert_eq!(run.configmap.as_deref(), Some("dari-dns"));
        let cli = Cli::try_parse_from(["dari", "--dns-listen", "127.0.0.1:5353", "--dns-configmap", ""]).unwrap();
        let run = DnsRunConfig::from_args(&cli.dns).unwrap();
        assert_eq!((run.listen.port(), run.configmap), (5353, None));
    }
}
