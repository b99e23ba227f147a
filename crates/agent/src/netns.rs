//! TCP connections into the node's network namespace from an agent that runs outside it
//! (tests, or `--containerd-netns`): the socket is created by a short-lived thread that
//! `setns`es into the namespace, and keeps working after being handed back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connects to `addr`, from inside `netns` when given.
pub async fn connect(addr: SocketAddr, netns: Option<&Path>, timeout: Duration) -> std::io::Result<tokio::net::TcpStream> {
    let Some(ns) = netns else {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}"))),
        };
    };
    let ns: PathBuf = ns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A dedicated thread: it ends in the other namespace, so it must not be a pool thread.
    std::thread::spawn(move || {
        let r = (|| {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })();
        let _ = tx.send(r);
    });
    let s = rx.await.map_err(|_| std::io::Error::other("netns connect thread died"))??;
    tokio::net::TcpStream::from_std(s)
}
