//! dari-agent: dari's node agent (the kubelet's job). Start at [`run`].
//!
//! `run` starts (or connects to) containerd, imports the builtin images, registers the Node,
//! waits for its podCIDR and writes the CNI conflist, then keeps the Lease renewed and runs one
//! [`pod::worker::PodWorker`] per pod bound to this node (a watch with
//! `fieldSelector=spec.nodeName=NODE`).
//!
//! * [`containerd`]: supervises Debian's containerd as a child with a generated config.
//! * [`cri`]: the CRI v1 gRPC client behind the small [`cri::Cri`] trait.
//! * [`image`]: OCI tarballs built from host binaries (pause, busybox) and `dari image import`.
//! * [`cni`]: the node's CNI conflist from its podCIDR.
//! * [`join`]: joining with a token (CA pinned by its hash) and the node's certificates.
//! * [`lb`]: the client-side load balancer over several API servers (`--server A,B`).
//! * [`node`]: Node registration and status, Lease renewal, podCIDR wait.
//! * [`stream`]: the HTTPS streaming endpoint (logs, exec, attach, port-forward) for the API server.
//! * [`pod`]: pod → CRI translation, status computation, volumes, per-pod workers.

pub mod cgroups;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod error;
pub mod image;
pub mod join;
pub mod lb;
pub mod netns;
pub mod node;
pub mod pod;
pub mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};
use tokio::sync::watch;

pub use error::{AgentError, Result};

use crate::cri::{Cri, RemoteCri};
use crate::pod::translate::{NodeContext, ResolvConf};
use crate::pod::worker::{Backoff, PodWorker, Shared};

/// `dari agent` flags (the lead flattens these into the CLI).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// API server URL(s), `https://HOST:6443[,https://HOST2:6443...]` (required with --token;
    /// overrides the kubeconfig's server). With several, the agent joins through the first that
    /// answers and runs a load balancer on 127.0.0.1 that fails over between them: every API
    /// client of the agent uses DATA_DIR/lb.kubeconfig, whose server is that load balancer.
    #[arg(long)]
    pub server: Option<String>,
    /// Port of the API server load balancer on 127.0.0.1 (with several --server URLs; 0: the
    /// port remembered in DATA_DIR/lb-port if free, else a free one).
    #[arg(long, default_value_t = 0)]
    pub lb_server_port: u16,
    /// Join token from the server's DATA_DIR/node-token (`sha256:<CA hash>::<secret>`): the agent
    /// fetches and pins the CA, gets its certificates and writes DATA_DIR/kubeconfig; later
    /// starts reuse them.
    #[arg(long, env = "DARI_TOKEN", hide_env_values = true, conflicts_with = "kubeconfig", required_unless_present = "kubeconfig")]
    pub token: Option<String>,
    /// Kubeconfig with this node's credentials (instead of --token).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the source address of the default route, else 127.0.0.1).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Agent state: containerd root/state/socket, pod volumes, logs, images.
    #[arg(long, default_value = "/var/lib/dari/agent")]
    pub data_dir: PathBuf,
    /// Use an existing CRI endpoint (unix socket path) instead of starting containerd.
    #[arg(long)]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// CNI plugin binaries (dari-cni symlinks, or the reference plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Where the agent writes its conflist (default DATA_DIR/cni/net.d).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// Use this podCIDR instead of waiting for node IPAM (tests; sets spec.podCIDR if empty).
    #[arg(long)]
    pub pod_cidr: Option<IpNet>,
    /// Cluster DNS server(s) for dnsPolicy ClusterFirst.
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.10")]
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Pod interface MTU written into the conflist (1450 under VXLAN on a 1500 underlay).
    #[arg(long, default_value_t = 1450)]
    pub mtu: u32,
    /// Run the child containerd inside this network namespace (`/var/run/netns/NODE`).
    #[arg(long)]
    pub containerd_netns: Option<PathBuf>,
    /// Streaming endpoint (logs/exec/attach/port-forward) the API server proxies to: HTTPS with
    /// the node's serving certificate, only the API server's kubelet client certificate admitted.
    /// The API server dials the node's InternalIP at this port.
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub stream_address: SocketAddr,
}

/// The agent's resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// API server URL override (one server; None when `kubeconfig` already points at the
    /// load balancer).
    pub server: Option<String>,
    /// Kubeconfig path every API client of the agent uses (after a token join:
    /// DATA_DIR/kubeconfig; with several servers: DATA_DIR/lb.kubeconfig, server = `lb`).
    pub kubeconfig: PathBuf,
    /// The API server load balancer (several `--server` URLs); it runs as long as this (or the
    /// [`RunningAgent`] started from this config) is alive.
    pub lb: Option<Arc<lb::LoadBalancer>>,
    /// Node name.
    pub node_name: String,
    /// Node IP.
    pub node_ip: IpAddr,
    /// Data dir.
    pub data_dir: PathBuf,
    /// External CRI endpoint (None: start containerd).
    pub container_runtime_endpoint: Option<PathBuf>,
    /// CNI bin dir.
    pub cni_bin_dir: PathBuf,
    /// CNI conf dir.
    pub cni_conf_dir: PathBuf,
    /// podCIDR override.
    pub pod_cidr: Option<IpNet>,
    /// Cluster DNS.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain.
    pub cluster_domain: String,
    /// Pod MTU.
    pub mtu: u32,
    /// containerd's netns.
    pub containerd_netns: Option<PathBuf>,
    /// Streaming endpoint address (None: no streaming server).
    pub stream_address: Option<SocketAddr>,
    /// Restart back-off (kubelet default 10 s → 300 s; tests shorten it).
    pub backoff: Backoff,
    /// How often workers poll container state and probes.
    pub tick: Duration,
    /// How long to wait for the podCIDR.
    pub pod_cidr_timeout: Duration,
}

impl AgentConfig {
    /// Resolves defaults (host name, node IP, conf dir) and, with `--token`, joins the cluster
    /// (or reuses the credentials of an earlier join): see [`join::join`].
    pub async fn from_args(a: AgentArgs) -> Result<AgentConfig> {
        let node_name = match a.node_name {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| AgentError::Config(format!("no --node-name and the host name is unreadable: {e}")))?.trim().to_lowercase(),
        };
        let node_ip = a.node_ip.unwrap_or_else(default_ip);
        let servers = match a.server.as_deref() {
            Some(s) => lb::parse_servers(s)?,
            None => Vec::new(),
        };
        let kubeconfig = match (a.token, a.kubeconfig) {
            (Some(token), None) => {
                if servers.is_empty() {
                    return Err(AgentError::Config("--token needs --server https://HOST:PORT".into()));
                }
                join::join_any(&servers, &token, &node_name, node_ip, &a.data_dir).await?.kubeconfig
            }
            (None, Some(k)) => k,
            (Some(_), Some(_)) => return Err(AgentError::Config("give either --token or --kubeconfig, not both".into())),
            (None, None) => return Err(AgentError::Config("give --server with --token (join), or --kubeconfig".into())),
        };
        let (server, kubeconfig, lb) = if servers.len() > 1 {
            let listener = lb::LoadBalancer::bind(&a.data_dir, a.lb_server_port).await?;
            let lb = lb::LoadBalancer::start(listener, servers, lb::LbOptions::default())?;
            let kc = lb::write_kubeconfig(&kubeconfig, &a.data_dir.join(lb::KUBECONFIG_FILE), &lb.url())?;
            (None, kc, Some(Arc::new(lb)))
        } else {
            (servers.into_iter().next(), kubeconfig, None)
        };
        Ok(AgentConfig {
            server,
            kubeconfig,
            lb,
            node_name,
            node_ip,
            cni_conf_dir: a.cni_conf_dir.unwrap_or_else(|| a.data_dir.join("cni/net.d")),
            data_dir: a.data_dir,
            container_runtime_endpoint: a.container_runtime_endpoint,
            cni_bin_dir: a.cni_bin_dir,
            pod_cidr: a.pod_cidr,
            cluster_dns: a.cluster_dns,
            cluster_domain: a.cluster_domain,
            mtu: a.mtu,
            containerd_netns: a.containerd_netns,
            stream_address: Some(a.stream_address),
            backoff: Backoff::default(),
            tick: Duration::from_secs(1),
            pod_cidr_timeout: Duration::from_secs(300),
        })
    }
}

/// The source address of the default route (no packet is sent), else loopback.
fn default_ip() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Builds the API client from the kubeconfig (and `--server`).
pub async fn client(kubeconfig: &Path, server: Option<&str>) -> Result<Client> {
    Ok(client_and_roots(kubeconfig, server).await?.0)
}

/// The client and the CA certificates (DER) it trusts.
async fn client_and_roots(kubeconfig: &Path, server: Option<&str>) -> Result<(Client, Vec<Vec<u8>>)> {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|source| AgentError::Kubeconfig { path: kubeconfig.into(), source })?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|source| AgentError::Kubeconfig { path: kubeconfig.into(), source })?;
    if let Some(s) = server {
        cfg.cluster_url = s.parse().map_err(|_| AgentError::Config(format!("--server {s:?} is not a URL")))?;
    }
    let roots = cfg.root_cert.clone().unwrap_or_default();
    Ok((Client::try_from(cfg).map_err(|source| AgentError::Client { path: kubeconfig.into(), source })?, roots))
}

/// A running agent (for tests and embedding): stop it with [`RunningAgent::shutdown`].
pub struct RunningAgent {
    task: tokio::task::JoinHandle<Result<()>>,
    stop: watch::Sender<bool>,
    /// The CRI socket in use.
    pub cri_socket: PathBuf,
    /// The podCIDR the node got.
    pub pod_cidr: IpNet,
    /// Where the streaming server listens.
    pub stream_addr: Option<SocketAddr>,
    /// The API server load balancer, kept running with the agent.
    pub lb: Option<Arc<lb::LoadBalancer>>,
}

impl RunningAgent {
    /// Stops the agent: pods keep running (like a kubelet restart); containerd is stopped if
    /// the agent started it.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(AgentError::Config(format!("agent task panicked: {e}"))),
        }
    }
}

/// Runs the agent until an error (the `dari agent` entry point).
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let agent = start(cfg).await?;
    match agent.task.await {
        Ok(r) => r,
        Err(e) => Err(AgentError::Config(format!("agent task panicked: {e}"))),
    }
}

/// Starts the agent: returns once containerd is up, the Node is registered and the conflist is
/// written; pods are then synced in the background.
pub async fn start(cfg: AgentConfig) -> Result<RunningAgent> {
    for d in [&cfg.data_dir, &cfg.cni_conf_dir] {
        std::fs::create_dir_all(d).map_err(AgentError::io("creating dir", d))?;
    }
    let (client, roots) = client_and_roots(&cfg.kubeconfig, cfg.server.as_deref()).await?;
    // the streaming endpoint's certificate (from the join, or requested with the kubeconfig's credentials)
    let stream_tls = match cfg.stream_address {
        Some(_) => Some(join::serving_credentials(&client, &roots, &cfg.node_name, cfg.node_ip, &cfg.data_dir).await?),
        None => None,
    };
    // 1. runtime
    let (containerd, socket) = match &cfg.container_runtime_endpoint {
        Some(ep) => (None, ep.clone()),
        None => {
            let ccfg = containerd::ContainerdConfig::under(&cfg.data_dir, &cfg.cni_bin_dir, &cfg.cni_conf_dir, image::PAUSE_IMAGE, cfg.containerd_netns.clone());
            let c = containerd::Containerd::start(ccfg, Duration::from_secs(60)).await?;
            let s = c.config.socket.clone();
            (Some(c), s)
        }
    };
    image::ensure_builtin_images(&socket, &cfg.data_dir.join("images")).await?;
    let cri = RemoteCri::connect(&socket).await?;
    let version = cri.version().await?;
    let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    let cri: Arc<dyn Cri> = Arc::new(cri);
    // the streaming endpoint first: its port goes into the Node's daemonEndpoints
    let (stream_addr, stream_task) = match (cfg.stream_address, &stream_tls) {
        (Some(a), Some(tls)) => {
            let (addr, h) = stream::StreamServer::start(cri.clone(), a, cfg.containerd_netns.clone(), tls).await?;
            tracing::info!(%addr, "streaming server (HTTPS: logs, exec, attach, port-forward) listening");
            (Some(addr), Some(h))
        }
        _ => (None, None),
    };
    // 2. node, podCIDR, conflist
    let mut facts = node::NodeFacts::gather(&cfg.node_name, cfg.node_ip, &runtime_version);
    if let Some(a) = stream_addr {
        facts.kubelet_port = a.port();
    }
    let n = node::register(&client, &facts, false).await?;
    node::renew_lease(&client, &n).await?;
    let pod_cidr = node::wait_pod_cidr(&client, &cfg.node_name, cfg.pod_cidr, cfg.pod_cidr_timeout).await?;
    let conflist = cni::render_conflist(cni::Flavor::detect(&cfg.cni_bin_dir), pod_cidr, cfg.mtu, &cfg.data_dir.join("cni/networks"));
    let cpath = cfg.cni_conf_dir.join(cni::CONFLIST_FILE);
    std::fs::write(&cpath, conflist).map_err(AgentError::io("writing", &cpath))?;
    let n = node::update_status(&client, &facts, true, n.status.as_ref()).await?;
    tracing::info!(node = %cfg.node_name, %pod_cidr, runtime = %runtime_version, "node registered and ready");

    let host_resolv = ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let shared = Shared {
        cri,
        client: client.clone(),
        node: NodeContext {
            node_name: cfg.node_name.clone(),
            node_ip: cfg.node_ip,
            hostname: cfg.node_name.clone(),
            cluster_dns: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            host_resolv,
            pod_log_root: cfg.data_dir.join("pod-logs"),
            cgroup_root: format!("/dari/{}", cfg.node_name),
        },
        pods_dir: cfg.data_dir.join("pods"),
        netns: cfg.containerd_netns.clone(),
        backoff: cfg.backoff,
        tick: cfg.tick,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let r = main_loop(shared, facts, n, containerd, stop_rx).await;
        if let Some(h) = stream_task {
            h.abort();
        }
        r
    });
    Ok(RunningAgent { task, stop: stop_tx, cri_socket: socket, pod_cidr, stream_addr, lb: cfg.lb })
}

async fn main_loop(sh: Shared, facts: node::NodeFacts, node_obj: k8s_openapi::api::core::v1::Node, containerd: Option<containerd::Containerd>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut containerd = containerd;
    let client = sh.client.clone();
    // lease + status heartbeat
    let hb_client = client.clone();
    let hb_facts = facts.clone();
    let heartbeat = tokio::spawn(async move {
        let mut status_every = 0u32;
        let mut prev = node_obj.status.clone();
        loop {
            tokio::time::sleep(Duration::from_secs((node::LEASE_SECONDS / 4) as u64)).await;
            if let Err(e) = node::renew_lease(&hb_client, &node_obj).await {
                tracing::warn!(error = %e, "lease renewal failed");
            }
            status_every += 1;
            if status_every % 6 == 0 {
                match node::update_status(&hb_client, &hb_facts, true, prev.as_ref()).await {
                    Ok(n) => prev = n.status,
                    Err(e) => tracing::warn!(error = %e, "node status update failed"),
                }
            }
        }
    });
    let pods: Api<Pod> = Api::all(client.clone());
    let wcfg = watcher::Config::default().fields(&format!("spec.nodeName={}", sh.node.node_name));
    // after a broken connection (an API server died) the watcher resumes from its last
    // resourceVersion or re-lists; the back-off keeps it from spinning while no server answers
    let mut stream = watcher(pods, wcfg).default_backoff().boxed();
    let mut workers: HashMap<String, (watch::Sender<Pod>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut init_seen: Option<Vec<String>> = None;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            _ = check.tick() => {
                if let Some(c) = containerd.as_mut() {
                    if let Err(e) = c.check() {
                        break Err(e);
                    }
                }
                workers.retain(|_, (_, h)| !h.is_finished());
            }
            ev = stream.next() => {
                let Some(ev) = ev else { break Err(AgentError::Config("pod watch ended".into())) };
                match ev {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if let Some(seen) = init_seen.as_mut() {
                            seen.push(uid.clone());
                        }
                        match workers.get(&uid) {
                            Some((tx, h)) if !h.is_finished() => { let _ = tx.send(p); }
                            _ => {
                                let (tx, rx) = watch::channel(p.clone());
                                let w = PodWorker::new(sh.clone(), p);
                                let h = tokio::spawn(w.run(rx));
                                workers.insert(uid, (tx, h));
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        // dropping the sender makes the worker tear the pod down
                        workers.remove(&p.metadata.uid.clone().unwrap_or_default());
                    }
                    Ok(watcher::Event::Init) => init_seen = Some(Vec::new()),
                    Ok(watcher::Event::InitDone) => {
                        let seen = init_seen.take().unwrap_or_default();
                        workers.retain(|uid, _| seen.contains(uid));
                        if let Err(e) = clean_orphans(sh.cri.as_ref(), &sh.node.node_name, &seen).await {
                            tracing::warn!(error = %e, "cleaning orphaned sandboxes");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pod watch error (retrying)"),
                }
            }
        }
    };
    heartbeat.abort();
    // abort before dropping the senders: a closed channel means "pod gone, tear it down",
    // and an agent shutdown must leave pods running (a restart adopts them)
    for (_, (_, h)) in workers.drain() {
        h.abort();
    }
    if let Some(c) = containerd {
        c.stop().await;
    }
    result
}

/// Stops and removes sandboxes this node's agent created for pods that no longer exist.
pub async fn clean_orphans(cri: &dyn Cri, node: &str, live_uids: &[String]) -> Result<()> {
    for sb in cri.list_pod_sandboxes().await? {
        let ours = sb.labels.get(pod::translate::labels::MANAGED_BY).map(String::as_str) == Some(node);
        let uid = sb.labels.get(pod::translate::labels::POD_UID).cloned().unwrap_or_default();
        if ours && !live_uids.contains(&uid) {
            tracing::info!(sandbox = %sb.id, pod_uid = %uid, "removing orphaned sandbox");
            cri.stop_pod_sandbox(&sb.id).await?;
            cri.remove_pod_sandbox(&sb.id).await?;
        }
    }
    Ok(())
}

/// The socket of the containerd the agent starts for `data_dir` (what `dari image import` talks to).
pub fn containerd_socket(data_dir: &Path) -> PathBuf {
    containerd::ContainerdConfig::under(data_dir, Path::new(""), Path::new(""), image::PAUSE_IMAGE, None).socket
}

/// `dari image import FILE.tar`: loads an OCI-layout or docker-archive tarball into the node's
/// containerd (`k8s.io` namespace). `socket` is the containerd socket
/// (`DATA_DIR/containerd/containerd.sock` for an agent-started containerd).
pub async fn import_image(socket: &Path, archive: &Path) -> Result<Vec<String>> {
    image::import(socket, archive).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::fake::FakeCri;
    use crate::cri::v1;

    fn sandbox(uid: &str, node: &str) -> v1::PodSandboxConfig {
        let mut labels = std::collections::HashMap::new();
        labels.insert(pod::translate::labels::POD_UID.to_string(), uid.to_string());
        labels.insert(pod::translate::labels::MANAGED_BY.to_string(), node.to_string());
        v1::PodSandboxConfig { metadata: Some(v1::PodSandboxMetadata { name: uid.into(), uid: uid.into(), namespace: "d".into(), attempt: 0 }), labels, ..Default::default() }
    }

    #[tokio::test]
    async fn orphans_of_this_node_are_removed_others_kept() {
        let cri = FakeCri::default();
        let live = cri.run_pod_sandbox(sandbox("live", "n1")).await.expect("run");
        let orphan = cri.run_pod_sandbox(sandbox("gone", "n1")).await.expect("run");
        let other = cri.run_pod_sandbox(sandbox("gone", "n2")).await.expect("run");
        clean_orphans(&cri, "n1", &["live".to_string()]).await.expect("clean");
        let left: Vec<String> = cri.list_pod_sandboxes().await.expect("list").into_iter().map(|s| s.id).collect();
        assert_eq!(left, vec![live, other]);
        assert!(cri.calls().contains(&format!("StopPodSandbox {orphan}")));
        assert!(cri.calls().contains(&format!("RemovePodSandbox {orphan}")));
    }
}
