//! The controller edge: watch IngressClasses, Ingresses, Services, EndpointSlices, TLS Secrets
//! and Nodes; rebuild the [`RouteTable`](crate::RouteTable) on every change (debounced) and swap
//! it into the proxy; create the default IngressClass `dari`; write
//! `status.loadBalancer.ingress`; report [`Issue`](crate::Issue)s as Warning events.
//!
//! `dari ingress --kubeconfig K` (or `dari agent`) calls [`run`] with [`IngressArgs`] flattened
//! into its command line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use crate::config::{IngressConfig, CONTROLLER_NAME, DEFAULT_CLASS, DEFAULT_CLASS_ANNOTATION};
use crate::error::IngressError;
use crate::proxy::{ProxyOptions, ProxyServer};
use crate::table::{build, Issue, ObjectKey, RouteTable};
use crate::SharedTable;

/// Command-line flags of `dari ingress` (flatten into the CLI with `#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    /// Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Plain HTTP listen addresses (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:80")]
    pub ingress_http: Vec<SocketAddr>,
    /// HTTPS listen addresses (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:443")]
    pub ingress_https: Vec<SocketAddr>,
    /// Extra IngressClass names served besides `dari` (e.g. `nginx`, so ingress-nginx manifests apply unchanged).
    #[arg(long = "ingress-class", value_delimiter = ',')]
    pub ingress_class: Vec<String>,
    /// Do not create the default IngressClass `dari`.
    #[arg(long)]
    pub no_default_class: bool,
    /// Addresses written to status.loadBalancer.ingress (default: every Node's InternalIP).
    #[arg(long, value_delimiter = ',')]
    pub publish_address: Vec<IpAddr>,
    /// Trust incoming X-Forwarded-* headers (append instead of replace).
    #[arg(long)]
    pub trust_forwarded_headers: bool,
    /// Minimum time between rebuilds: changes within it are coalesced.
    #[arg(long, default_value_t = 100)]
    pub min_sync_period_ms: u64,
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct IngressRunConfig {
    /// Kubeconfig path (None: inferred).
    pub kubeconfig: Option<PathBuf>,
    /// Listeners and forwarding.
    pub proxy: ProxyOptions,
    /// Classes and annotation defaults.
    pub ingress: IngressConfig,
    /// Create the default IngressClass `dari`.
    pub create_default_class: bool,
    /// Status addresses (empty: Nodes' InternalIPs).
    pub publish_addresses: Vec<IpAddr>,
    /// Debounce.
    pub min_sync_period: Duration,
}

impl From<IngressArgs> for IngressRunConfig {
    fn from(a: IngressArgs) -> Self {
        let mut ingress = IngressConfig::default();
        for c in a.ingress_class {
            if !ingress.class_names.contains(&c) {
                ingress.class_names.push(c);
            }
        }
        IngressRunConfig {
            kubeconfig: a.kubeconfig,
            proxy: ProxyOptions {
                http: a.ingress_http,
                https: a.ingress_https,
                trust_forwarded_headers: a.trust_forwarded_headers,
                ..ProxyOptions::default()
            },
            ingress,
            create_default_class: !a.no_default_class,
            publish_addresses: a.publish_address,
            min_sync_period: Duration::from_millis(a.min_sync_period_ms),
        }
    }
}

/// The IngressClass `dari` creates: controller [`CONTROLLER_NAME`], marked default.
pub fn default_class() -> IngressClass {
    let mut c = IngressClass::default();
    c.metadata.name = Some(DEFAULT_CLASS.to_string());
    c.metadata.annotations = Some([(DEFAULT_CLASS_ANNOTATION.to_string(), "true".to_string())].into());
    c.spec = Some(k8s_openapi::api::networking::v1::IngressClassSpec {
        controller: Some(CONTROLLER_NAME.to_string()),
        parameters: None,
    });
    c
}

/// Addresses for status: the configured ones, else every Node's InternalIP (sorted, unique).
pub fn status_addresses(nodes: &[Arc<Node>], publish: &[IpAddr]) -> Vec<IpAddr> {
    let mut set: BTreeSet<IpAddr> = publish.iter().copied().collect();
    if set.is_empty() {
        for n in nodes {
            for a in n.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or(&[]) {
                if a.type_ == "InternalIP" {
                    if let Ok(ip) = a.address.parse() {
                        set.insert(ip);
                    }
                }
            }
        }
    }
    set.into_iter().collect()
}

/// The status an Ingress should have, as a merge patch, or None if it already has it.
pub fn status_patch(ing: &Ingress, addrs: &[IpAddr]) -> Option<serde_json::Value> {
    let current: Vec<String> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let want: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    if current == want {
        return None;
    }
    let list: Vec<serde_json::Value> = want.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
    Some(serde_json::json!({"status": {"loadBalancer": {"ingress": list}}}))
}

async fn client_from(kubeconfig: Option<&std::path::Path>) -> Result<Client, IngressError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| IngressError::Client {
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

fn watch<K, S>(
    stream: S,
    resource: &'static str,
    notify: Arc<Notify>,
) -> (Store<K>, impl std::future::Future<Output = IngressError>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let fut = async move {
        let mut stream = stream.default_backoff().reflect(writer).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(resource, error = %e, "watch error, retrying"),
            }
        }
        IngressError::Watch { resource, source: "watch stream ended".into() }
    };
    (store, fut)
}

/// Runs the controller and the proxy until a watch ends for good or the future is dropped.
pub async fn run(cfg: IngressRunConfig) -> Result<(), IngressError> {
    let client = client_from(cfg.kubeconfig.as_deref()).await?;
    let shared: SharedTable = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let server = ProxyServer::bind(shared.clone(), &cfg.proxy).await?;
    tracing::info!(http = ?server.http_addrs(), https = ?server.https_addrs(), "ingress proxy listening");
    tokio::select! {
        _ = server.run() => Ok(()),
        r = run_controller(client, shared, cfg) => r,
    }
}

/// The watch → build → swap → status/events loop, for a caller that already has a client and
/// runs its own [`ProxyServer`] on `shared`.
pub async fn run_controller(client: Client, shared: SharedTable, cfg: IngressRunConfig) -> Result<(), IngressError> {
    if cfg.create_default_class {
        let api = Api::<IngressClass>::all(client.clone());
        match api.create(&PostParams::default(), &default_class()).await {
            Ok(_) => tracing::info!("created IngressClass {DEFAULT_CLASS}"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(IngressError::Api { verb: "create", object: format!("ingressclass/{DEFAULT_CLASS}"), source })
            }
        }
    }
    let notify = Arc::new(Notify::new());
    let wc = watcher::Config::default;
    let (class_store, class_watch) =
        watch(watcher(Api::<IngressClass>::all(client.clone()), wc()), "ingressclasses", notify.clone());
    let (ing_store, ing_watch) = watch(watcher(Api::<Ingress>::all(client.clone()), wc()), "ingresses", notify.clone());
    let (svc_store, svc_watch) = watch(watcher(Api::<Service>::all(client.clone()), wc()), "services", notify.clone());
    let (eps_store, eps_watch) =
        watch(watcher(Api::<EndpointSlice>::all(client.clone()), wc()), "endpointslices", notify.clone());
    // Only TLS Secrets keep their data in memory.
    let secrets = watcher(Api::<Secret>::all(client.clone()), wc()).modify(|s: &mut Secret| {
        if s.type_.as_deref() != Some("kubernetes.io/tls") {
            s.data = None;
            s.string_data = None;
        }
        s.metadata.managed_fields = None;
    });
    let (secret_store, secret_watch) = watch(secrets, "secrets", notify.clone());
    let (node_store, node_watch) = watch(watcher(Api::<Node>::all(client.clone()), wc()), "nodes", notify.clone());
    let recorder = Recorder::new(client.clone(), Reporter { controller: "dari-ingress".into(), instance: None });

    let sync_loop = async {
        let _ = tokio::join!(
            class_store.wait_until_ready(),
            ing_store.wait_until_ready(),
            svc_store.wait_until_ready(),
            eps_store.wait_until_ready(),
            secret_store.wait_until_ready(),
            node_store.wait_until_ready()
        );
        let mut reported: BTreeMap<ObjectKey, BTreeSet<Issue>> = BTreeMap::new();
        loop {
            let ingresses: Vec<Ingress> = owned(ing_store.state());
            let table = {
                let span = tracing::info_span!("ingress_reconcile", ingresses = ingresses.len());
                let _g = span.enter();
                build(
                    &ingresses,
                    &owned(svc_store.state()),
                    &owned(eps_store.state()),
                    &owned(class_store.state()),
                    &owned(secret_store.state()),
                    &cfg.ingress,
                )
            };
            tracing::debug!(routes = table.route_count(), issues = table.issues.len(), "route table rebuilt");
            let claimed: BTreeSet<ObjectKey> = table.claimed.iter().cloned().collect();
            let issues = table.issues.clone();
            shared.store(Arc::new(table));

            // Status.
            let addrs = status_addresses(&node_store.state(), &cfg.publish_addresses);
            for ing in ingresses.iter().filter(|i| claimed.contains(&ObjectKey::of(&i.metadata))) {
                let key = ObjectKey::of(&ing.metadata);
                if let Some(patch) = status_patch(ing, &addrs) {
                    let api = Api::<Ingress>::namespaced(client.clone(), &key.namespace);
                    if let Err(e) = api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        tracing::warn!(ingress = %key, error = %e, "status update failed");
                    }
                }
            }
            // Events for issues not reported yet.
            let mut now: BTreeMap<ObjectKey, BTreeSet<Issue>> = BTreeMap::new();
            for i in issues {
                now.entry(i.ingress.clone()).or_default().insert(i);
            }
            for (key, set) in &now {
                let Some(ing) = ingresses.iter().find(|i| &ObjectKey::of(&i.metadata) == key) else { continue };
                let old = reported.get(key);
                for issue in set.iter().filter(|i| old.is_none_or(|o| !o.contains(*i))) {
                    tracing::warn!(ingress = %key, reason = issue.kind.reason(), "{}", issue.message);
                    let ev = Event {
                        type_: EventType::Warning,
                        reason: issue.kind.reason().into(),
                        note: Some(issue.message.chars().take(1000).collect()),
                        action: "Sync".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&ev, &ing.object_ref(&())).await {
                        tracing::debug!(ingress = %key, error = %e, "event not recorded");
                    }
                }
            }
            reported = now;

            notify.notified().await;
            tokio::time::sleep(cfg.min_sync_period).await;
        }
    };
    tokio::select! {
        e = class_watch => Err(e),
        e = ing_watch => Err(e),
        e = svc_watch => Err(e),
        e = eps_watch => Err(e),
        e = secret_watch => Err(e),
        e = node_watch => Err(e),
        never = sync_loop => never,
    }
}

fn owned<T: Clone>(v: Vec<Arc<T>>) -> Vec<T> {
    v.into_iter().map(|a| (*a).clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_nodes_or_flags() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}]}
        }))
        .expect("node");
        let node2: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
        }))
        .expect("node");
        let nodes = vec![Arc::new(node), Arc::new(node2)];
        let ips: Vec<String> = status_addresses(&nodes, &[]).iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
        let fixed: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(status_addresses(&nodes, &[fixed]), vec![fixed]);

        let mut ing = Ingress::default();
        let addrs = status_addresses(&nodes, &[]);
        let patch = status_patch(&ing, &addrs).expect("needs status");
        assert_eq!(patch["status"]["loadBalancer"]["ingress"][1]["ip"], "10.0.0.2");
        ing.status = serde_json::from_value(patch["status"].clone()).expect("status");
        assert!(status_patch(&ing, &addrs).is_none(), "already up to date: no write");
    }

    #[test]
    fn default_class_is_default_and_ours() {
        let c = default_class();
        let f = crate::table::ClassFilter::new(&[c], &IngressConfig { class_names: vec![], ..IngressConfig::default() });
        let classless: Ingress = serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "spec": {}})).expect("ing");
        assert!(f.claims(&classless));
    }
}
