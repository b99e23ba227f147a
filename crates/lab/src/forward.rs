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
    loop {
        let (mut down, peer) = listener.accept().await?;
        let d = dialer.clone();
        tokio::spawn(async move {
            match d.connect(upstream).await {
                Ok(mut up) => {
                    let _ = up.set_nodelay(true);
                    let _ = down.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(%peer, %upstream, error = %e, "connection ended");
                    }
                }
                Err(e) => tracing::warn!(%peer, %upstream, error = %e, "upstream connect failed"),
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
    /// Address to connect to, as seen inside the namespace.
    #[arg(long)]
    pub upstream: SocketAddr,
}

/// Runs a forwarder until the process is killed.
pub async fn run(args: ForwardArgs) -> Result<()> {
    let dialer = Arc::new(Dialer::new(&args.netns)?);
    let l = TcpListener::bind(args.listen).await.map_err(|e| LabError::Process {
        what: "forwarder".into(),
        detail: format!("listen on {}", args.listen),
        source: Some(e),
    })?;
    tracing::info!(listen = %args.listen, upstream = %args.upstream, netns = %args.netns.display(), "forwarding");
    serve(l, dialer, args.upstream)
        .await
        .map_err(|e| LabError::Process { what: "forwarder".into(), detail: "accept".into(), source: Some(e) })
}
