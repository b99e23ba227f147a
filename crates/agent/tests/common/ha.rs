//! Two real `dari server`s on one real 3-member etcd, and a TCP relay the test can kill or
//! freeze in front of one of them (the API server load balancer tests).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Forward,
    /// Listener closed, established connections kept open but silent.
    Freeze,
    /// Listener and every connection closed.
    Kill,
}

/// A TCP relay in front of a server, controlled by the test.
pub struct Relay {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let (mode, rx) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            let mut ctl = rx.clone();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((mut c, _)) = r else { continue };
                        let mut m = rx.clone();
                        tokio::spawn(async move {
                            let Ok(mut s) = TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut c, &mut s) => return,
                                _ = m.wait_for(|m| *m != Mode::Forward) => {}
                            }
                            // frozen: hold both sockets open and silent until killed
                            let _ = m.wait_for(|m| *m == Mode::Kill).await;
                            drop((c, s));
                        });
                    }
                    _ = ctl.wait_for(|m| *m != Mode::Forward) => return, // the listener closes
                }
            }
        });
        Relay { addr, mode }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Kill);
    }
}

pub async fn server(dir: &Path, etcd: &dari_store::testing::EtcdCluster) -> dari_apiserver::RunningServer {
    let args = dari_apiserver::ServerArgs { datastore: dari_apiserver::DatastoreArgs { datastore: dari_apiserver::Datastore::Etcd, etcd_servers: etcd.endpoints(), ..Default::default() }, ..dari_apiserver::ServerArgs::loopback(dir) };
    dari_apiserver::start(args).await.expect("server starts")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// A 3-member etcd and servers A and B sharing its CA and join token.
pub struct Ha {
    pub tmp: tempfile::TempDir,
    pub a: Option<dari_apiserver::RunningServer>,
    pub b: dari_apiserver::RunningServer,
    pub etcd: dari_store::testing::EtcdCluster,
}

pub async fn ha() -> Ha {
    let etcd = dari_store::testing::EtcdCluster::start(3).await.expect("3-member etcd starts (apt-get install etcd-server)");
    let tmp = tempfile::tempdir().expect("tmp");
    let a = server(&tmp.path().join("a"), &etcd).await;
    copy_dir(&tmp.path().join("a/pki"), &tmp.path().join("b/pki"));
    std::fs::copy(tmp.path().join("a/node-token"), tmp.path().join("b/node-token")).expect("copy node-token");
    let b = server(&tmp.path().join("b"), &etcd).await;
    Ha { tmp, a: Some(a), b, etcd }
}

