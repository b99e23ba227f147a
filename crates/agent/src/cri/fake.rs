//! An in-memory [`Cri`] for tests: sandboxes and containers in maps, every call recorded.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{v1, Cri};
use crate::error::{AgentError, Result};

/// The fake runtime's state.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Sandboxes by id.
    pub sandboxes: BTreeMap<String, v1::PodSandbox>,
    /// Containers by id.
    pub containers: BTreeMap<String, v1::Container>,
    /// Calls made, e.g. `RunPodSandbox default/web`.
    pub calls: Vec<String>,
    /// `ContainerStatus.log_path` by container id (tests of the log endpoint write these files).
    pub log_paths: BTreeMap<String, String>,
    next: u64,
}

/// A fake CRI runtime.
#[derive(Debug, Default)]
pub struct FakeCri {
    /// Its state (inspect in tests).
    pub state: Mutex<FakeState>,
}

fn not_found(call: &'static str, id: &str) -> AgentError {
    AgentError::Cri { call, object: id.into(), source: tonic::Status::not_found(format!("{id} not found")) }
}

impl FakeCri {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        match self.state.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Runs with `f` on the state (set up containers and log paths in tests).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        self.with(f)
    }

    /// The recorded calls.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }
}

#[async_trait::async_trait]
impl Cri for FakeCri {
    async fn version(&self) -> Result<v1::VersionResponse> {
        Ok(v1::VersionResponse { version: "0.1.0".into(), runtime_name: "fake".into(), runtime_version: "1".into(), runtime_api_version: "v1".into() })
    }
    async fn run_pod_sandbox(&self, config: v1::PodSandboxConfig) -> Result<String> {
        Ok(self.with(|s| {
            s.next += 1;
            let id = format!("sb{}", s.next);
            let m = config.metadata.clone().unwrap_or_default();
            s.calls.push(format!("RunPodSandbox {}/{}", m.namespace, m.name));
            s.sandboxes.insert(id.clone(), v1::PodSandbox { id: id.clone(), metadata: Some(m), state: v1::PodSandboxState::SandboxReady as i32, labels: config.labels, annotations: config.annotations, ..Default::default() });
            id
        }))
    }
    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("StopPodSandbox {id}"));
            if let Some(sb) = s.sandboxes.get_mut(id) {
                sb.state = v1::PodSandboxState::SandboxNotready as i32;
            }
            for c in s.containers.values_mut().filter(|c| c.pod_sandbox_id == id) {
                c.state = v1::ContainerState::ContainerExited as i32;
            }
        });
        Ok(())
    }
    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("RemovePodSandbox {id}"));
            s.sandboxes.remove(id);
            s.containers.retain(|_, c| c.pod_sandbox_id != id);
        });
        Ok(())
    }
    async fn pod_sandbox_status(&self, id: &str) -> Result<v1::PodSandboxStatus> {
        self.with(|s| {
            let sb = s.sandboxes.get(id).ok_or_else(|| not_found("PodSandboxStatus", id))?;
            Ok(v1::PodSandboxStatus {
                id: id.into(),
                metadata: sb.metadata.clone(),
                state: sb.state,
                network: Some(v1::PodSandboxNetworkStatus { ip: "10.244.1.2".into(), additional_ips: vec![] }),
                labels: sb.labels.clone(),
                ..Default::default()
            })
        })
    }
    async fn list_pod_sandboxes(&self) -> Result<Vec<v1::PodSandbox>> {
        Ok(self.with(|s| s.sandboxes.values().cloned().collect()))
    }
    async fn create_container(&self, sandbox_id: &str, config: v1::ContainerConfig, _sandbox: v1::PodSandboxConfig) -> Result<String> {
        self.with(|s| {
            if !s.sandboxes.contains_key(sandbox_id) {
                return Err(not_found("CreateContainer", sandbox_id));
            }
            s.next += 1;
            let id = format!("c{}", s.next);
            let m = config.metadata.clone().unwrap_or_default();
            s.calls.push(format!("CreateContainer {sandbox_id}/{}", m.name));
            s.containers.insert(id.clone(), v1::Container { id: id.clone(), pod_sandbox_id: sandbox_id.into(), metadata: Some(m), image: config.image, state: v1::ContainerState::ContainerCreated as i32, labels: config.labels, ..Default::default() });
            Ok(id)
        })
    }
    async fn start_container(&self, id: &str) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("StartContainer {id}"));
            let c = s.containers.get_mut(id).ok_or_else(|| not_found("StartContainer", id))?;
            c.state = v1::ContainerState::ContainerRunning as i32;
            Ok(())
        })
    }
    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("StopContainer {id} {timeout_secs}"));
            let c = s.containers.get_mut(id).ok_or_else(|| not_found("StopContainer", id))?;
            c.state = v1::ContainerState::ContainerExited as i32;
            Ok(())
        })
    }
    async fn remove_container(&self, id: &str) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("RemoveContainer {id}"));
            s.containers.remove(id);
        });
        Ok(())
    }
    async fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<v1::Container>> {
        Ok(self.with(|s| s.containers.values().filter(|c| sandbox_id.is_none_or(|id| c.pod_sandbox_id == id)).cloned().collect()))
    }
    async fn container_status(&self, id: &str) -> Result<v1::ContainerStatus> {
        self.with(|s| {
            let c = s.containers.get(id).ok_or_else(|| not_found("ContainerStatus", id))?;
            let log_path = s.log_paths.get(id).cloned().unwrap_or_default();
            Ok(v1::ContainerStatus { id: id.into(), metadata: c.metadata.clone(), state: c.state, image: c.image.clone(), log_path, ..Default::default() })
        })
    }
    async fn image_status(&self, image: &str) -> Result<Option<v1::Image>> {
        Ok(Some(v1::Image { id: format!("sha256:{image}"), ..Default::default() }))
    }
    async fn pull_image(&self, image: &str, _sandbox: v1::PodSandboxConfig) -> Result<String> {
        Err(AgentError::Cri { call: "PullImage", object: image.into(), source: tonic::Status::unavailable("no registry in the fake") })
    }
    async fn exec_sync(&self, _id: &str, cmd: Vec<String>, _timeout_secs: i64) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        Ok((if cmd.first().map(String::as_str) == Some("false") { 1 } else { 0 }, vec![], vec![]))
    }
    async fn exec(&self, req: v1::ExecRequest) -> Result<String> {
        Ok(format!("http://fake/exec/{}", req.container_id))
    }
    async fn attach(&self, req: v1::AttachRequest) -> Result<String> {
        Ok(format!("http://fake/attach/{}", req.container_id))
    }
    async fn port_forward(&self, req: v1::PortForwardRequest) -> Result<String> {
        Ok(format!("http://fake/portforward/{}", req.pod_sandbox_id))
    }
}
