//! The API forwarder: listens in the root namespace (127.0.0.1:6443) and opens each upstream
//! connection from *inside* a lab namespace, so the host reaches the API server without any
//! route into the lab.
//!
//! A socket belongs to the namespace of the thread that called `socket()`, whatever thread uses
//! it later. So [`Dialer`] keeps one thread parked in the namespace that only creates sockets;
//! connecting and copying happen on the ordinary tokio runtime.
//!
//! ```text
//! curl -k https://127.0.0.1:6443/healthz   # root netns
//!   → forwarder (root netns, 127.0.0.1:6443)
//!   → socket made in netns dari-CP → 172.31.0.10:6443 (dari server)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use crate::error::{LabError, Result};

type Reply = tokio::sync::oneshot::Sender<std::io::Result<TcpSocket>>;

/// Creates TCP sockets inside one network namespace.
#[derive(Debug, Clone)]
pub struct Dialer {
    tx: mpsc::Sender<(bool, Reply)>,
    netns: PathBuf,
}

impl Dialer {
    /// Starts the socket-making thread inside the namespace at `netns` (e.g. `/run/netns/dari-cp`).
    /// Fails if the namespace cannot be entered.
    pub fn new(netns: &Path) -> Result<Dialer> {
        let label = netns.display().to_string();
        let file = std::fs::File::open(netns).map_err(|e| LabError::Netns { netns: label.clone(), op: "open", source: e })?;
        let (tx, rx) = mpsc::channel::<(bool, Reply)>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name("lab-dialer".into())
            .spawn(move || {
                let r = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from);
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if !ok {
                    return;
                }
                while let Ok((v4, reply)) = rx.recv() {
                    let s = if v4 { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
                    let _ = reply.send(s);
                }
            })
            .map_err(|e| LabError::Netns { netns: label.clone(), op: "spawn dialer thread", source: e })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Dialer { tx, netns: netns.to_path_buf() }),
            Ok(Err(e)) => Err(LabError::Netns { netns: label, op: "setns", source: e }),
            Err(_) => Err(LabError::Netns { netns: label, op: "setns", source: std::io::Error::other("dialer thread died") }),
        }
    }

    /// The namespace this dialer connects from.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Connects to `addr` from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        self.tx.send((addr.is_ipv4(), rtx)).map_err(|_| std::io::Error::other("dialer thread is gone"))?;
        let sock = rrx.await.map_err(|_| std::io::Error::other("dialer thread is gone"))??;
        sock.connect(addr).await
    }
}

/// Accepts on `listener` forever, piping every connection to `upstream` through `dialer`.
pub async fn serve(listener: TcpListener, dialer: Arc<Dialer>, upstream: SocketAddr) -> std::io::Result<()> {
    serve_failover(listener, dialer, vec![upstream]).await
}

/// How long one upstream may take to accept a connection before the next one is tried (a
/// killed server in a live namespace refuses at once; a vanished address would hang).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The order in which to try `n` upstreams: the one that answered last (`preferred`) first,
/// then the others in their order (pure).
pub fn try_order(preferred: usize, n: usize) -> Vec<usize> {
    let p = if n == 0 { 0 } else { preferred % n };
    (0..n).map(|k| (p + k) % n).collect()
}

/// Connects to the first of `upstreams` that accepts, starting with `preferred`; returns the
/// stream and the index that answered, or the last error.
pub async fn connect_any(dialer: &Dialer, upstreams: &[SocketAddr], preferred: usize) -> std::io::Result<(tokio::net::TcpStream, usize)> {
    let mut last = std::io::Error::other("no upstream configured");
    for i in try_order(preferred, upstreams.len()) {
        let addr = upstreams[i];
        match tokio::time::timeout(CONNECT_TIMEOUT, dialer.connect(addr)).await {
            Ok(Ok(s)) => return Ok((s, i)),
            Ok(Err(e)) => {
                tracing::info!(%addr, error = %e, "upstream refused, trying the next");
                last = e;
            }
            Err(_) => {
                tracing::info!(%addr, "upstream connect timed out, trying the next");
                last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {addr} timed out"));
            }
        }
    }
    Err(last)
}

/// Accepts on `listener` forever, piping every connection to the first of `upstreams` that
/// accepts it (the one that answered last is tried first: failover between API servers).
pub async fn serve_failover(listener: TcpListener, dialer: Arc<Dialer>, upstreams: Vec<SocketAddr>) -> std::io::Result<()> {
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let preferred = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (mut down, peer) = listener.accept().await?;
        let (d, ups, pref) = (dialer.clone(), upstreams.clone(), preferred.clone());
        tokio::spawn(async move {
            let p = pref.load(std::sync::atomic::Ordering::Relaxed);
            match connect_any(&d, &ups, p).await {
                Ok((mut up, i)) => {
                    if i != p {
                        tracing::warn!(from = %ups[p % ups.len()], to = %ups[i], "failed over");
                        pref.store(i, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = up.set_nodelay(true);
                    let _ = down.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(%peer, upstream = %ups[i], error = %e, "connection ended");
                    }
                }
                Err(e) => tracing::warn!(%peer, upstreams = ?ups, error = %e, "no upstream accepted the connection"),
            }
        });
    }
}

/// `dari lab forward`: what the forwarder process runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ForwardArgs {
    /// Namespace to connect from (a path, e.g. /var/run/netns/dari-cp).
    #[arg(long)]
    pub netns: PathBuf,
    /// Where to listen in the current namespace.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Address(es) to connect to, as seen inside the namespace (repeat or comma separate: each
    /// connection goes to the first that accepts, the last one that did first).
    #[arg(long, required = true, value_delimiter = ',')]
    pub upstream: Vec<SocketAddr>,
}

/// Runs a forwarder until the process is killed.
pub async fn run(args: ForwardArgs) -> Result<()> {
    let dialer = Arc::new(Dialer::new(&args.netns)?);
    let l = TcpListener::bind(args.listen).await.map_err(|e| LabError::Process {
        what: "forwarder".into(),
        detail: format!("listen on {}", args.listen),
        source: Some(e),
    })?;
    tracing::info!(listen = %args.listen, upstream = ?args.upstream, netns = %args.netns.display(), "forwarding");
    serve_failover(l, dialer, args.upstream)
        .await
        .map_err(|e| LabError::Process { what: "forwarder".into(), detail: "accept".into(), source: Some(e) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn order() {
        assert_eq!(try_order(0, 2), vec![0, 1]);
        assert_eq!(try_order(1, 3), vec![1, 2, 0]);
        assert_eq!(try_order(5, 2), vec![1, 0]);
        assert!(try_order(0, 0).is_empty());
    }

    /// The first upstream refuses (nothing listens): the connection lands on the second, and
    /// the next one goes there directly.
    #[tokio::test]
    async fn fails_over_to_the_next_upstream() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = live.accept().await.unwrap();
                tokio::spawn(async move {
                    let _ = s.write_all(b"live").await;
                });
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let dialer = Arc::new(Dialer::new(Path::new("/proc/self/ns/net")).unwrap());
        tokio::spawn(serve_failover(front, dialer.clone(), vec![dead_addr, live_addr]));
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(front_addr).await.unwrap();
            let mut buf = String::new();
            c.read_to_string(&mut buf).await.unwrap();
            assert_eq!(buf, "live");
        }
        let (_, i) = connect_any(&dialer, &[dead_addr, live_addr], 0).await.unwrap();
        assert_eq!(i, 1);
        assert!(connect_any(&dialer, &[dead_addr], 0).await.is_err());
    }
}
