//! Test and bench support: the real `dari` binary as a child process, and a small HTTPS client
//! that authenticates with the admin certificate the server wrote.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub addr: String,
}

impl Server {
    /// Starts `dari server` on a free port and waits until its kubeconfig names the port and /readyz answers.
    pub async fn start(dir: &Path) -> Server {
        Self::start_with(dir, &[]).await
    }

    /// Starts `dari server` with extra flags.
    pub async fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let kc = dir.join("admin.kubeconfig");
        let _ = std::fs::remove_file(&kc);
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dari"))
            .args(["server", "--secure-port", "0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dari server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(&kc) {
                if let Some(line) = s.lines().find(|l| l.trim_start().starts_with("server:")) {
                    break line.trim().trim_start_matches("server:").trim().trim_start_matches("https://").to_string();
                }
            }
            assert!(Instant::now() < deadline, "dari server did not write its kubeconfig: {}", std::fs::read_to_string(dir.join("server.log")).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let s = Server { child, dir: dir.to_path_buf(), addr };
        let mut c = s.client().await;
        let (code, _) = c.request("GET", "/readyz", None).await;
        assert_eq!(code, 200);
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.dir, &self.addr).await
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

#[allow(deprecated)] // ring provider: rustls marks it deprecated for lacking post-quantum kx
fn tls_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    let read = |f: &str| std::fs::read(dir.join("pki").join(f)).unwrap_or_else(|e| panic!("reading pki/{f}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("ca.crt")[..]) {
        roots.add(c.expect("ca pem")).expect("ca cert");
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read("admin.crt")[..]).map(|c| c.expect("admin cert")).collect();
    let key = rustls_pemfile::private_key(&mut &read("admin.key")[..]).expect("admin key").expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client auth");
    Arc::new(cfg)
}

impl Client {
    pub async fn connect(dir: &Path, addr: &str) -> Client {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let connector = tokio_rustls::TlsConnector::from(tls_config(dir));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name").to_owned();
        let tls = connector.connect(name, tcp).await.expect("tls");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http1");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { send, host: addr.to_string() }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, bytes) = self.raw(method, path, body.map(|b| serde_json::to_vec(b).expect("json")), "application/json").await;
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())))
    }

    pub async fn raw(&mut self, method: &str, path: &str, body: Option<Vec<u8>>, ct: &str) -> (u16, Bytes) {
        self.send.ready().await.expect("connection ready");
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let resp = self.send.send_request(req).await.expect("response");
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (code, bytes)
    }

    /// A streaming GET (watch): returns the response body to read incrementally.
    pub async fn stream(&mut self, path: &str) -> hyper::body::Incoming {
        self.send.ready().await.expect("connection ready");
        let req = hyper::Request::builder().method("GET").uri(path).header("host", &self.host).body(Full::new(Bytes::new())).expect("request");
        let resp = self.send.send_request(req).await.expect("response");
        assert_eq!(resp.status().as_u16(), 200);
        resp.into_body()
    }
}

pub fn configmap(name: &str, i: usize) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}})
}

pub fn pod(name: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
}
