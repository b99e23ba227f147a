//! Loopback harness: a real dari API server in-process, a kube client, fake Nodes with renewed Leases,
//! and a fake kubelet that marks bound pods Running/Ready through the status subresource and finishes
//! graceful deletions (there is no agent in these tests).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: dari_apiserver::RunningServer,
    pub kubeconfig: PathBuf,
    pub client: Client,
    /// Pods the fake kubelet should NOT mark ready.
    pub kubelet_ready: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn client_for(kubeconfig: &std::path::Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

pub async fn start() -> Result<Cluster> {
    assert!(std::path::Path::new("/usr/bin/kubectl").exists(), "kubectl missing: apt-get install kubectl (scripts/install-deps.sh)");
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let dir = tempfile::tempdir()?;
    let args = dari_apiserver::ServerArgs {
        data_dir: dir.path().to_path_buf(),
        bind_address: "127.0.0.1".parse()?,
        secure_port: 0,
        advertise_address: None,
        service_cluster_ip_range: "10.96.0.0/12".parse()?,
        service_node_port_range: "30000-32767".into(),
        cluster_cidr: "10.244.0.0/16".parse()?,
        tls_san: vec![],
        bookmark_interval_seconds: 1,
        datastore: Default::default(),
    };
    let server = dari_apiserver::start(args).await.context("server starts")?;
    let kubeconfig = server.admin_kubeconfig.clone();
    let client = client_for(&kubeconfig).await?;
    Ok(Cluster { dir, server, kubeconfig, client, kubelet_ready: Arc::new(AtomicBool::new(true)), tasks: Vec::new() })
}

pub fn test_config(identity: &str) -> dari_controllers::ControllersConfig {
    dari_controllers::ControllersConfig {
        identity: identity.into(),
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        ..Default::default()
    }
}

impl Cluster {
    /// Starts controllers + scheduler (with leader election) in the background.
    pub fn run_control_plane(&mut self) {
        let c = self.client.clone();
        self.tasks.push(tokio::spawn(async move {
            let _ = dari_controllers::run(c, test_config("test-cm")).await;
        }));
        let c = self.client.clone();
        self.tasks.push(tokio::spawn(async move {
            let cfg = dari_scheduler::SchedulerConfig {
                identity: "test-sched".into(),
                lease_duration: Duration::from_secs(4),
                renew_deadline: Duration::from_secs(3),
                retry_period: Duration::from_millis(500),
                ..Default::default()
            };
            let _ = dari_scheduler::run(c, cfg).await;
        }));
    }

    /// Registers `n` Ready nodes (node-0 ..) with renewed Leases.
    pub async fn add_nodes(&mut self, n: usize) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for i in 0..n {
            let name = format!("node-{i}");
            let node: Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": format!("zone-{}", i % 2)}}}))?;
            nodes.create(&PostParams::default(), &node).await?;
            self.mark_node_ready(&name).await?;
        }
        let c = self.client.clone();
        self.tasks.push(tokio::spawn(async move {
            let leases: Api<Lease> = Api::namespaced(c, "kube-node-lease");
            loop {
                for i in 0..n {
                    let name = format!("node-{i}");
                    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
                    let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
                    let _ = leases.patch(&name, &PatchParams::apply("fake-kubelet").force(), &Patch::Apply(&l)).await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
        Ok(())
    }

    pub async fn mark_node_ready(&self, name: &str) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let st = json!({"status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}});
        nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&st)).await?;
        Ok(())
    }

    /// The fake kubelet: bound pods get an IP and Running/Ready (if `kubelet_ready`); terminating pods
    /// are removed.
    pub fn run_fake_kubelet(&mut self) {
        let c = self.client.clone();
        let ready = self.kubelet_ready.clone();
        self.tasks.push(tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(c.clone());
            let mut n: u32 = 0;
            let mut s = watcher(pods, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = s.next().await {
                let p = match ev {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                    _ => continue,
                };
                let ns = p.namespace().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(c.clone(), &ns);
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = api.delete(&p.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                    continue;
                }
                let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let has_ip = p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some();
                if bound && !has_ip {
                    n += 1;
                    let ip = format!("10.244.{}.{}", n / 250, n % 250 + 2);
                    let r = if ready.load(Ordering::SeqCst) { "True" } else { "False" };
                    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
                    let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1",
                        "conditions": [{"type": "Ready", "status": r, "lastTransitionTime": now}, {"type": "ContainersReady", "status": r, "lastTransitionTime": now},
                                       {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}});
                    let _ = api.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(&st)).await;
                }
            }
        }));
    }

    pub async fn kubectl(&self, args: &[&str]) -> Output {
        let kc = self.kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new("/usr/bin/kubectl").args(&args).env("KUBECONFIG", &kc).env("HOME", "/tmp/dari-test-home").stdout(Stdio::piped()).stderr(Stdio::piped()).output().expect("kubectl runs")
        })
        .await
        .expect("join")
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args).await;
        assert!(o.status.success(), "kubectl {:?} failed:\nstdout: {}\nstderr: {}", args, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Polls `f` until it returns Some, or fails with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
