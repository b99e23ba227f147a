//! The agent's client-side load balancer over several API servers (k3s's agent load balancer).
//!
//! `dari agent --server https://A:6443,https://B:6443` starts a [`LoadBalancer`] on
//! `127.0.0.1:PORT` inside the agent's process and hands every API client of the process (the
//! kube client, the Lease heartbeat, the pods watch, and the proxy/ingress/net clients the CLI
//! builds from `AgentConfig::kubeconfig`) a kubeconfig whose server is `https://127.0.0.1:PORT`
//! ([`write_kubeconfig`], `DATA_DIR/`[`KUBECONFIG_FILE`]).
//!
//! It is a plain TCP relay: TLS passes through untouched, so the client still verifies the API
//! server's certificate, which always carries `127.0.0.1` (`dari_pki::api_server_sans`), and the
//! server still sees the node's client certificate. Each accepted connection goes to the first
//! server that accepts a TCP connect, in the order [`ServerPool::dial_order`] gives: the last
//! server that worked first, then the others in list order, servers that failed recently last.
//!
//! When a server dies, its kernel closes the relayed connections, the relay closes the client
//! side, and hyper re-dials: the new connection lands on a live server, and kube-runtime watchers
//! resume from their last resourceVersion (or re-list). For a server that vanishes without
//! closing anything (host down, partition), a health check dials the current server every
//! [`LbOptions::health_interval`]; if that fails, every connection relayed to it is closed so
//! that clients re-dial instead of hanging.
//!
//! ```text
//! kube client ──TLS──▶ 127.0.0.1:PORT ──TCP relay──▶ A:6443 (connect refused/timeout → B:6443)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::error::{AgentError, Result};

/// The kubeconfig the agent uses when it load-balances: `DATA_DIR/lb.kubeconfig` (the node's
/// credentials, server = the load balancer).
pub const KUBECONFIG_FILE: &str = "lb.kubeconfig";
/// Where the load balancer's port is remembered between starts (`DATA_DIR/lb-port`).
pub const PORT_FILE: &str = "lb-port";

/// Splits `--server` (`URL[,URL...]`) into server URLs (pure). Each must be `SCHEME://HOST[:PORT]`;
/// duplicates are dropped, order is kept.
pub fn parse_servers(flag: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for s in flag.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        upstream(s)?;
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    if out.is_empty() {
        return Err(AgentError::Config(format!("--server {flag:?} names no server (expected https://HOST:PORT[,https://HOST:PORT...])")));
    }
    Ok(out)
}

/// `https://HOST:PORT` → (`HOST`, `PORT`) to dial (pure; the port defaults to 443, or 80 for http).
pub fn upstream(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| AgentError::Config(format!("--server {url:?} {why} (expected https://HOST:PORT)"));
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return Err(bad("has no https:// scheme")),
    };
    let host = uri.host().ok_or_else(|| bad("has no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
    if !matches!(uri.path(), "" | "/") {
        return Err(bad("has a path"));
    }
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

/// Which server a new connection should try first: the pure core of the load balancer.
///
/// `current` is the last server a connection (or health check) reached. Failures are
/// remembered for `retry_after`; a server that failed within that time is tried only after all
/// the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPool {
    n: usize,
    current: usize,
    failed_at: Vec<Option<Instant>>,
    retry_after: Duration,
}

impl ServerPool {
    /// A pool of `n` servers (indices into the `--server` list), starting with the first.
    pub fn new(n: usize, retry_after: Duration) -> ServerPool {
        ServerPool { n, current: 0, failed_at: vec![None; n], retry_after }
    }

    /// The server connections go to first.
    pub fn current(&self) -> usize {
        self.current
    }

    fn recently_failed(&self, i: usize, now: Instant) -> Option<Instant> {
        self.failed_at[i].filter(|t| now.saturating_duration_since(*t) < self.retry_after)
    }

    /// Every server once, in the order to try them at `now`: from the current one round the
    /// list (`current`, `current+1`, ..., wrapping), servers that failed within `retry_after`
    /// moved to the end (oldest failure first: the likeliest to be back).
    pub fn dial_order(&self, now: Instant) -> Vec<usize> {
        let round: Vec<usize> = (0..self.n).map(|k| (self.current + k) % self.n).collect();
        let mut order: Vec<usize> = round.iter().copied().filter(|&i| self.recently_failed(i, now).is_none()).collect();
        let mut failed: Vec<(Instant, usize)> = round.iter().filter_map(|&i| self.recently_failed(i, now).map(|t| (t, i))).collect();
        failed.sort_by_key(|(t, _)| *t);
        order.extend(failed.into_iter().map(|(_, i)| i));
        order
    }

    /// Server `i` accepted a connection: it becomes the current one. Returns true if that is a
    /// change (a fail-over, or a fail-back).
    pub fn succeeded(&mut self, i: usize) -> bool {
        self.failed_at[i] = None;
        let changed = self.current != i;
        self.current = i;
        changed
    }

    /// Server `i` refused a connection, or did not answer in time.
    pub fn failed(&mut self, i: usize, now: Instant) {
        self.failed_at[i] = Some(now);
    }
}

/// Timeouts of the load balancer.
#[derive(Debug, Clone, Copy)]
pub struct LbOptions {
    /// How long a TCP connect to one server may take before the next one is tried.
    pub connect_timeout: Duration,
    /// How often the current server is dialled; when that fails, the connections relayed to it
    /// are closed (clients re-dial and land on another server).
    pub health_interval: Duration,
    /// How long a failed server is tried last.
    pub retry_after: Duration,
}

impl Default for LbOptions {
    /// 3 s connect timeout, a health check every 5 s, failed servers tried last for 15 s.
    fn default() -> LbOptions {
        LbOptions { connect_timeout: Duration::from_secs(3), health_interval: Duration::from_secs(5), retry_after: Duration::from_secs(15) }
    }
}

struct Shared {
    servers: Vec<(String, String, u16)>,
    pool: Mutex<ServerPool>,
    /// Per server: bumped to close every connection relayed to it.
    cut: Vec<watch::Sender<u64>>,
    opts: LbOptions,
}

impl Shared {
    fn pool(&self) -> std::sync::MutexGuard<'_, ServerPool> {
        // a poisoned lock only means a panic elsewhere; the pool itself is always consistent
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn dial(&self, i: usize) -> std::io::Result<TcpStream> {
        let (_, host, port) = &self.servers[i];
        match tokio::time::timeout(self.opts.connect_timeout, TcpStream::connect((host.as_str(), *port))).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no TCP answer within {:?}", self.opts.connect_timeout))),
        }
    }

    /// Dials the servers in [`ServerPool::dial_order`]; the first that accepts wins.
    async fn connect(&self) -> Option<(usize, TcpStream)> {
        let order = self.pool().dial_order(Instant::now());
        for i in order {
            match self.dial(i).await {
                Ok(s) => {
                    if self.pool().succeeded(i) {
                        tracing::info!(server = %self.servers[i].0, "API server load balancer: now using this server");
                    }
                    return Some((i, s));
                }
                Err(e) => {
                    tracing::warn!(server = %self.servers[i].0, error = %e, "API server load balancer: server unreachable, trying the next");
                    self.pool().failed(i, Instant::now());
                }
            }
        }
        None
    }
}

/// A running load balancer; stopping it (drop) closes its listener and every relayed connection.
pub struct LoadBalancer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBalancer").field("addr", &self.addr).field("servers", &self.servers()).finish()
    }
}

impl LoadBalancer {
    /// Starts relaying connections accepted on `listener` to `servers` (URLs, see
    /// [`parse_servers`]). Needs a tokio runtime.
    pub fn start(listener: TcpListener, servers: Vec<String>, opts: LbOptions) -> Result<LoadBalancer> {
        if servers.is_empty() {
            return Err(AgentError::Config("the API server load balancer needs at least one server".into()));
        }
        let addr = listener.local_addr().map_err(|source| AgentError::Listen { addr: None, source })?;
        let mut parsed = Vec::new();
        for s in servers {
            let (host, port) = upstream(&s)?;
            parsed.push((s, host, port));
        }
        let n = parsed.len();
        let shared = Arc::new(Shared {
            servers: parsed,
            pool: Mutex::new(ServerPool::new(n, opts.retry_after)),
            cut: (0..n).map(|_| watch::channel(0u64).0).collect(),
            opts,
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx.clone()));
        let health = tokio::spawn(health_loop(shared.clone()));
        tracing::info!(%addr, servers = ?shared.servers.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), "API server load balancer listening");
        Ok(LoadBalancer { addr, shared, stop, tasks: vec![accept, health] })
    }

    /// Binds `127.0.0.1:PORT` for [`LoadBalancer::start`]: `port` if not 0 (an error if it is
    /// taken); otherwise the port remembered in `DATA_DIR/`[`PORT_FILE`] if it is free, else a
    /// free one, which is then remembered (so the kubeconfig stays the same across restarts).
    pub async fn bind(data_dir: &Path, port: u16) -> Result<TcpListener> {
        let bind = |p: u16| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, p)));
        if port != 0 {
            return bind(port).await.map_err(|source| AgentError::Listen { addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))), source });
        }
        let file = data_dir.join(PORT_FILE);
        let remembered = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<u16>().ok()).filter(|p| *p != 0);
        if let Some(p) = remembered {
            match bind(p).await {
                Ok(l) => return Ok(l),
                Err(e) => tracing::info!(port = p, error = %e, "the load balancer's previous port is taken; picking another"),
            }
        }
        let l = bind(0).await.map_err(|source| AgentError::Listen { addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))), source })?;
        let p = l.local_addr().map_err(|source| AgentError::Listen { addr: None, source })?.port();
        std::fs::create_dir_all(data_dir).map_err(AgentError::io("creating dir", data_dir))?;
        std::fs::write(&file, format!("{p}\n")).map_err(AgentError::io("writing", &file))?;
        Ok(l)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`, the server URL clients use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The servers, in `--server` order.
    pub fn servers(&self) -> Vec<String> {
        self.shared.servers.iter().map(|s| s.0.clone()).collect()
    }

    /// The server new connections go to first (the last one that worked).
    pub fn current(&self) -> String {
        let i = self.shared.pool().current();
        self.shared.servers[i].0.clone()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "API server load balancer: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let span = tracing::debug_span!("lb_conn", %peer, server = tracing::field::Empty);
        tokio::spawn(relay(client, peer, shared.clone(), stop.clone()).instrument(span));
    }
}

/// One client connection: dial a server, then copy bytes both ways until either side closes,
/// the server is declared dead by the health check, or the load balancer stops.
async fn relay(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some((i, mut server)) = shared.connect().await else {
        tracing::warn!(%peer, "API server load balancer: no server reachable; closing the client connection");
        return;
    };
    let _ = server.set_nodelay(true);
    tracing::Span::current().record("server", shared.servers[i].0.as_str());
    let mut cut = shared.cut[i].subscribe();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            if let Err(e) = r {
                tracing::debug!(%peer, server = %shared.servers[i].0, error = %e, "relayed connection ended");
            }
        }
        _ = cut.changed() => tracing::info!(%peer, server = %shared.servers[i].0, "closing a connection to an unhealthy API server"),
        _ = stop.changed() => {}
    }
}

/// Dials the current server every `health_interval`; on failure closes the connections relayed
/// to it (a silent death would otherwise leave watches hanging) and marks it failed.
async fn health_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.opts.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let i = shared.pool().current();
        if let Err(e) = shared.dial(i).await {
            tracing::warn!(server = %shared.servers[i].0, error = %e, "API server load balancer: health check failed; closing its connections");
            shared.pool().failed(i, Instant::now());
            shared.cut[i].send_modify(|g| *g += 1);
        }
    }
}

/// Writes `out` (mode 0600): the kubeconfig `from` (the node's credentials) with every cluster's
/// server replaced by `server` (the load balancer's URL). Written as JSON, which is YAML.
pub fn write_kubeconfig(from: &Path, out: &Path, server: &str) -> Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut kc = kube::config::Kubeconfig::read_from(from).map_err(|source| AgentError::Kubeconfig { path: from.into(), source })?;
    for c in kc.clusters.iter_mut() {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(server.to_string());
        }
    }
    let data = serde_json::to_vec_pretty(&kc).map_err(|e| AgentError::Credentials { path: out.into(), detail: format!("serializing the kubeconfig: {e}") })?;
    let tmp = out.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(AgentError::io("writing", &tmp))?;
    f.write_all(&data).and_then(|_| f.sync_all()).map_err(AgentError::io("writing", &tmp))?;
    std::fs::rename(&tmp, out).map_err(AgentError::io("renaming into", out))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists() {
        assert_eq!(parse_servers("https://10.0.0.1:6443").expect("one"), vec!["https://10.0.0.1:6443"]);
        assert_eq!(
            parse_servers(" https://a:6443, https://b:6443,,https://a:6443 ").expect("two"),
            vec!["https://a:6443", "https://b:6443"],
            "trimmed, empty items and duplicates dropped, order kept"
        );
        for bad in ["", ",", "10.0.0.1:6443", "https://a:6443,ftp://b", "https://a:6443/api"] {
            assert!(parse_servers(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(upstream("https://[::1]:6443").expect("v6"), ("::1".to_string(), 6443));
        assert_eq!(upstream("https://api.example").expect("default port"), ("api.example".to_string(), 443));
    }

    #[test]
    fn dial_order_starts_at_the_last_good_server_and_tries_failed_ones_last() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut p = ServerPool::new(3, Duration::from_secs(15));
        assert_eq!(p.dial_order(t0), vec![0, 1, 2]);
        // A refuses: B and C before A
        p.failed(0, s(1));
        assert_eq!(p.dial_order(s(1)), vec![1, 2, 0]);
        // B accepts: it is current; fail-over reported once
        assert!(p.succeeded(1));
        assert!(!p.succeeded(1));
        assert_eq!(p.current(), 1);
        assert_eq!(p.dial_order(s(2)), vec![1, 2, 0], "A failed recently: last");
        // after retry_after A is back in its round-robin place (after the current one, wrapping)
        assert_eq!(p.dial_order(s(20)), vec![1, 2, 0]);
        p.failed(2, s(21));
        assert_eq!(p.dial_order(s(22)), vec![1, 0, 2]);
        // all failed: oldest failure first
        p.failed(1, s(23));
        p.failed(0, s(24));
        assert_eq!(p.dial_order(s(25)), vec![2, 1, 0]);
        // a success clears the failure; there is no eager fail-back to the first server
        assert!(p.succeeded(2));
        assert_eq!(p.dial_order(s(26)), vec![2, 1, 0]);
        assert_eq!(p.dial_order(s(60)), vec![2, 0, 1]);
    }

    #[test]
    fn one_server_is_always_tried() {
        let t0 = Instant::now();
        let mut p = ServerPool::new(1, Duration::from_secs(15));
        p.failed(0, t0);
        assert_eq!(p.dial_order(t0), vec![0]);
    }

    #[test]
    fn kubeconfig_server_is_replaced_and_credentials_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("kubeconfig");
        std::fs::write(
            &src,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dari\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: n\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\ncontexts:\n- name: dari\n  context:\n    cluster: dari\n    user: n\ncurrent-context: dari\n",
        )
        .expect("write");
        let out = write_kubeconfig(&src, &tmp.path().join(KUBECONFIG_FILE), "https://127.0.0.1:40000").expect("rewrite");
        let kc = kube::config::Kubeconfig::read_from(&out).expect("readable");
        let cluster = kc.clusters[0].cluster.clone().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:40000"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        let text = std::fs::read_to_string(&out).expect("read");
        assert!(text.contains("S0VZ"), "the key must be written, not redacted: {text}");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn remembered_port_is_reused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = LoadBalancer::bind(tmp.path(), 0).await.expect("bind");
        let p = l.local_addr().expect("addr").port();
        assert_eq!(std::fs::read_to_string(tmp.path().join(PORT_FILE)).expect("port file").trim(), p.to_string());
        drop(l);
        let again = LoadBalancer::bind(tmp.path(), 0).await.expect("bind again");
        assert_eq!(again.local_addr().expect("addr").port(), p);
        // taken (by `again`): another free port, remembered instead
        let other = LoadBalancer::bind(tmp.path(), 0).await.expect("bind other");
        let q = other.local_addr().expect("addr").port();
        assert_ne!(q, p);
        assert_eq!(std::fs::read_to_string(tmp.path().join(PORT_FILE)).expect("port file").trim(), q.to_string());
    }
}
