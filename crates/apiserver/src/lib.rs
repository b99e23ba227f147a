//! dari-apiserver: a Kubernetes API server that real kubectl drives unchanged.
//!
//! Start from [`start`] (or [`ServerArgs`] for the flags). A request flows:
//! [`http::Http::handle`] (TLS client certificate → user, [`auth::Authorizer`]) →
//! [`request::parse`] (URL → resource) → [`rest::Api`] (defaulting, validation, admission,
//! optimistic concurrency over the [`dari_store::Store`]) → JSON, `Table` or watch stream.
//! Discovery and OpenAPI live in [`discovery`]; the built-in objects in [`bootstrap`].

pub mod alloc;
pub mod apply;
pub mod auth;
pub mod bootstrap;
pub mod claims;
pub mod discovery;
pub mod error;
pub mod http;
pub mod join;
pub mod nodeproxy;
pub mod object;
pub mod request;
pub mod rest;
pub mod watch;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Flags of `dari server`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Where certificates, kubeconfigs and the datastore live.
    #[arg(long, default_value = "/var/lib/dari")]
    pub data_dir: PathBuf,
    /// Address to listen on. The default keeps the API on loopback; give a node address to serve a LAN.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// HTTPS port (0 picks a free one).
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// Address published in the `kubernetes` endpoints (default: the bind address, or 127.0.0.1).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// Service ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: ipnet::Ipv4Net,
    /// NodePort range.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Pod network of the cluster (node podCIDRs are carved from it).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Extra subject alternative names for the serving certificate (IP or DNS), repeatable.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 60)]
    pub bookmark_interval_seconds: u64,
    /// Where the objects live.
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

impl ServerArgs {
    /// The flags' defaults for a server on 127.0.0.1 with a free port in `data_dir` (embedders and
    /// tests; bookmarks every second).
    pub fn loopback(data_dir: &std::path::Path) -> Self {
        ServerArgs {
            data_dir: data_dir.to_path_buf(),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            secure_port: 0,
            advertise_address: None,
            service_cluster_ip_range: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
            service_node_port_range: "30000-32767".into(),
            cluster_cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            tls_san: vec![],
            bookmark_interval_seconds: 1,
            datastore: DatastoreArgs::default(),
        }
    }
}

/// The datastore flags of `dari server` (kube-apiserver's `--etcd-*` names).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DatastoreArgs {
    /// `sqlite` (embedded, DATA_DIR/state.db) or `etcd` (`--etcd-servers`; several `dari server`s may share it).
    #[arg(long, value_enum, default_value_t = Datastore::Sqlite)]
    pub datastore: Datastore,
    /// etcd client URLs, comma separated (e.g. https://10.0.0.1:2379,https://10.0.0.2:2379).
    #[arg(long = "etcd-servers", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates.
    #[arg(long = "etcd-cafile")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate presented to etcd (`--client-cert-auth`).
    #[arg(long = "etcd-certfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Key of `--etcd-certfile`.
    #[arg(long = "etcd-keyfile")]
    pub etcd_keyfile: Option<PathBuf>,
}

/// Which datastore backend.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datastore {
    /// Embedded SQLite in the data dir (one server).
    #[default]
    Sqlite,
    /// An etcd v3 cluster (one or more servers).
    Etcd,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad flag value.
    #[error("invalid flag {flag}: {message}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Filesystem problem.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificates.
    #[error("setting up the PKI in {dir}")]
    Pki {
        /// Data dir.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: dari_pki::PkiError,
    },
    /// Datastore.
    #[error("opening the datastore {path}")]
    Store {
        /// Database path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: dari_store::StoreError,
    },
    /// Start-up API work (bootstrap objects).
    #[error("bootstrapping the API")]
    Api(#[source] error::ApiError),
    /// Listening.
    #[error("listening on {addr}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A started server.
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// Path of the admin kubeconfig.
    pub admin_kubeconfig: PathBuf,
    /// The REST layer (in-process callers, tests).
    pub api: Arc<rest::Api>,
    /// The PKI.
    pub pki: Arc<dari_pki::Pki>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Serves until the process ends.
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.pop() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts `dari server`: PKI, datastore, bootstrap objects, HTTPS listener.
pub async fn start(args: ServerArgs) -> Result<RunningServer, ServerError> {
    let dir = args.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| ServerError::Io { op: "creating", path: dir.clone(), source })?;
    let node_ports = alloc::parse_port_range(&args.service_node_port_range)
        .ok_or_else(|| ServerError::Flag { flag: "--service-node-port-range", message: format!("{:?} is not FIRST-LAST", args.service_node_port_range) })?;
    let first_ip = alloc::IpAllocator::new(args.service_cluster_ip_range)
        .nth(1)
        .ok_or_else(|| ServerError::Flag { flag: "--service-cluster-ip-range", message: "range too small".into() })?;
    tracing::info!(dir = %dir.display(), "[1/4] certificates");
    let hostname = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    // the addresses clients dial must be in the serving certificate
    let mut sans = args.tls_san.clone();
    for ip in [Some(args.bind_address), args.advertise_address].into_iter().flatten() {
        if !ip.is_unspecified() && !sans.contains(&ip.to_string()) {
            sans.push(ip.to_string());
        }
    }
    let pki = dari_pki::Pki::load_or_create(&dir, &dari_pki::PkiOptions { sans, service_ip: IpAddr::V4(first_ip), hostname })
        .map_err(|source| ServerError::Pki { dir: dir.clone(), source })?;
    let pki = Arc::new(pki);
    tracing::info!("[2/4] datastore");
    let store = open_store(&args.datastore, &dir).await?;
    let advertise = args.advertise_address.unwrap_or(if args.bind_address.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { args.bind_address });
    let listener = TcpListener::bind(SocketAddr::new(args.bind_address, args.secure_port))
        .await
        .map_err(|source| ServerError::Listen { addr: SocketAddr::new(args.bind_address, args.secure_port), source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: SocketAddr::new(args.bind_address, args.secure_port), source })?;
    let settings = rest::ApiSettings { service_cidr: args.service_cluster_ip_range, node_ports, advertise_address: advertise, secure_port: addr.port() };
    tracing::info!("[3/4] built-in objects");
    let api = Arc::new(rest::Api::new(store.clone(), settings).await.map_err(ServerError::Api)?);
    bootstrap::bootstrap(&api).await.map_err(ServerError::Api)?;
    let connect_host = if args.bind_address.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { args.bind_address };
    let server_url = format!("https://{}", SocketAddr::new(connect_host, addr.port()));
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    pki.write_admin_kubeconfig(&admin_kubeconfig, &server_url).map_err(|source| ServerError::Pki { dir: dir.clone(), source })?;
    let join_secret = write_node_token(&dir, &pki)?;

    let tls = pki.server_config().map_err(|source| ServerError::Pki { dir: dir.clone(), source })?;
    let http = Arc::new(http::Http {
        api: api.clone(),
        authorizer: Arc::new(auth::AllowAuthenticated),
        advertise: SocketAddr::new(advertise, addr.port()).to_string(),
        bookmark_interval: Duration::from_secs(args.bookmark_interval_seconds.max(1)),
        pki: pki.clone(),
        join_secret,
        kubelet: Arc::new(nodeproxy::KubeletClient::new(&pki).map_err(|source| ServerError::Pki { dir: dir.clone(), source })?),
    });
    let mut tasks = Vec::new();
    tasks.push(dari_store::spawn_auto_compactor(store.clone(), 10_000, Duration::from_secs(300)));
    tasks.push(tokio::spawn(run_allocation_repair(api.clone(), Duration::from_secs(60))));
    tasks.push(tokio::spawn(bootstrap::run_apiserver_endpoints(api.clone())));
    tasks.push(tokio::spawn(bootstrap::run_namespace_finalizer(api.clone())));
    tasks.push(tokio::spawn(serve(listener, tls, http)));
    tracing::info!(%addr, kubeconfig = %admin_kubeconfig.display(), "[4/4] serving");
    Ok(RunningServer { addr, admin_kubeconfig, api, pki, tasks })
}

/// Opens the datastore the flags name.
async fn open_store(args: &DatastoreArgs, dir: &std::path::Path) -> Result<Arc<dyn dari_store::Store>, ServerError> {
    match args.datastore {
        Datastore::Sqlite => {
            let db = dir.join("state.db");
            let store = dari_store::SqliteStore::open(&db).map_err(|source| ServerError::Store { path: db.clone(), source })?;
            Ok(Arc::new(store))
        }
        Datastore::Etcd => {
            if args.etcd_servers.is_empty() {
                return Err(ServerError::Flag { flag: "--etcd-servers", message: "--datastore etcd needs at least one etcd URL".into() });
            }
            let cfg = dari_store::EtcdConfig {
                endpoints: args.etcd_servers.clone(),
                ca_file: args.etcd_cafile.clone(),
                cert_file: args.etcd_certfile.clone(),
                key_file: args.etcd_keyfile.clone(),
            };
            let store = dari_store::EtcdStore::connect(cfg)
                .await
                .map_err(|source| ServerError::Store { path: PathBuf::from(args.etcd_servers.join(",")), source })?;
            Ok(Arc::new(store))
        }
    }
}

/// Runs the ClusterIP/NodePort repair pass every `every` (see [`claims`]).
async fn run_allocation_repair(api: Arc<rest::Api>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first pass ran in Api::new
    loop {
        ticker.tick().await;
        if let Err(e) = api.repair_allocations().await {
            tracing::warn!(error = %e.message, "allocation repair failed; retrying at the next pass");
        }
    }
}

/// Writes `DIR/node-token` on first start; returns its secret half.
fn write_node_token(dir: &std::path::Path, pki: &dari_pki::Pki) -> Result<String, ServerError> {
    use rand::Rng;
    let path = dir.join("node-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if let Some((_, secret)) = existing.trim().split_once("::") {
            return Ok(secret.to_string());
        }
    }
    let secret: String = rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect();
    let token = format!("{}::{}\n", pki.ca_hash(), secret);
    std::fs::write(&path, token).map_err(|source| ServerError::Io { op: "writing", path: path.clone(), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret)
}

async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, http: Arc<http::Http>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = match dari_pki::peer_identity(stream.get_ref().1) {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "unusable client certificate");
                    None
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let http = http.clone();
                let user = user.clone();
                async move { Ok::<_, std::convert::Infallible>(http.handle(req, user, peer).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}
