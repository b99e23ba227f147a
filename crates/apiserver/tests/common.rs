//! Shared harness: a real `dari server` on 127.0.0.1:0 in-process, and the real kubectl.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: dari_apiserver::RunningServer,
    pub kubeconfig: PathBuf,
    /// The etcd behind the server (etcd backend); dropped (killed) after the server.
    pub etcd: Option<dari_store::testing::EtcdCluster>,
}

/// Which datastore a test server runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// Embedded SQLite in the temp dir.
    Sqlite,
    /// A one-member etcd started for the test on loopback.
    Etcd,
}

pub fn scenarios() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for c in [here.join("../../../shared/scenarios"), PathBuf::from("/work/shared/scenarios")] {
        if c.exists() {
            return c;
        }
    }
    panic!("../shared/scenarios not found next to the repository")
}

pub async fn start() -> Cluster {
    start_on(Backend::Sqlite).await
}

pub async fn start_on(backend: Backend) -> Cluster {
    assert!(std::path::Path::new("/usr/bin/kubectl").exists(), "kubectl missing: scripts/install-deps.sh installs it");
    let dir = tempfile::tempdir().expect("tempdir");
    let args = dari_apiserver::ServerArgs {
        data_dir: dir.path().to_path_buf(),
        bind_address: "127.0.0.1".parse().expect("ip"),
        secure_port: 0,
        advertise_address: None,
        service_cluster_ip_range: "10.96.0.0/12".parse().expect("cidr"),
        service_node_port_range: "30000-32767".into(),
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        tls_san: vec!["dari.example".into()],
        bookmark_interval_seconds: 1,
        datastore: Default::default(),
    };
    let mut args = args;
    let etcd = match backend {
        Backend::Sqlite => None,
        Backend::Etcd => {
            let etcd = dari_store::testing::EtcdCluster::start(1).await.expect("etcd starts (apt etcd-server; scripts/install-deps.sh)");
            args.datastore = dari_apiserver::DatastoreArgs {
                datastore: dari_apiserver::Datastore::Etcd,
                etcd_servers: etcd.endpoints(),
                ..Default::default()
            };
            Some(etcd)
        }
    };
    let server = dari_apiserver::start(args).await.expect("server starts");
    // the backend really is the one asked for
    assert_eq!(dir.path().join("state.db").exists(), matches!(backend, Backend::Sqlite), "datastore {backend:?}");
    let kubeconfig = server.admin_kubeconfig.clone();
    Cluster { dir, server, kubeconfig, etcd }
}

impl Cluster {
    /// Runs kubectl on a blocking thread (the server runs on this runtime).
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None).await
    }

    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<String>) -> Output {
        let kc = self.kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new("kubectl");
            c.args(&args).env("KUBECONFIG", &kc).env("HOME", "/tmp/dari-test-home").stdout(Stdio::piped()).stderr(Stdio::piped());
            if stdin.is_some() {
                c.stdin(Stdio::piped());
            }
            let mut child = c.spawn().expect("kubectl runs");
            if let Some(s) = stdin {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write stdin");
            }
            child.wait_with_output().expect("kubectl output")
        })
        .await
        .expect("join")
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args).await;
        assert!(o.status.success(), "kubectl {:?} failed:\nstdout: {}\nstderr: {}", args, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args).await;
        assert!(!o.status.success(), "kubectl {:?} should fail but printed {}", args, String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.server.addr)
    }
}
