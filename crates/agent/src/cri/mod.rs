//! CRI v1 over gRPC: the generated types ([`v1`]), and the small [`Cri`] trait the pod sync
//! uses, with [`RemoteCri`] (tonic over the containerd unix socket) as the real implementation.
//!
//! `runtime.v1.rs` is generated from `proto/api.proto` (kubernetes/cri-api
//! `pkg/apis/runtime/v1/api.proto`, as shipped by the k8s-cri 0.11 crate) with protox +
//! tonic-prost-build 0.14, client only, so building the agent needs no protoc. To regenerate:
//! a scratch crate depending on `protox = "0.10"` and `tonic-prost-build = "0.14"` running
//! `tonic_prost_build::configure().build_server(false).out_dir(OUT).compile_fds(protox::compile(["api.proto"], ["proto"])?)`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{AgentError, Result};

/// Generated CRI v1 messages and clients.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    include!("runtime.v1.rs");
}

pub mod fake;

use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// A container's status as the pod sync needs it.
pub use v1::ContainerStatus;

/// The CRI calls the agent makes. Small on purpose: the fake in tests implements the same.
#[async_trait::async_trait]
pub trait Cri: Send + Sync {
    /// Runtime name and version.
    async fn version(&self) -> Result<v1::VersionResponse>;
    /// Creates and starts a sandbox; returns its id.
    async fn run_pod_sandbox(&self, config: v1::PodSandboxConfig) -> Result<String>;
    /// Stops a sandbox (kills containers, CNI DEL). Idempotent.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<()>;
    /// Removes a stopped sandbox.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<()>;
    /// Sandbox status (network IPs).
    async fn pod_sandbox_status(&self, id: &str) -> Result<v1::PodSandboxStatus>;
    /// All sandboxes.
    async fn list_pod_sandboxes(&self) -> Result<Vec<v1::PodSandbox>>;
    /// Creates a container in a sandbox; returns its id.
    async fn create_container(&self, sandbox_id: &str, config: v1::ContainerConfig, sandbox: v1::PodSandboxConfig) -> Result<String>;
    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<()>;
    /// Stops a container: SIGTERM, then SIGKILL after `timeout_secs`.
    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()>;
    /// Removes a container.
    async fn remove_container(&self, id: &str) -> Result<()>;
    /// Containers, optionally of one sandbox.
    async fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<v1::Container>>;
    /// One container's status (exit code, timestamps, log path).
    async fn container_status(&self, id: &str) -> Result<v1::ContainerStatus>;
    /// The image if present locally.
    async fn image_status(&self, image: &str) -> Result<Option<v1::Image>>;
    /// Pulls an image; returns its reference (image id).
    async fn pull_image(&self, image: &str, sandbox: v1::PodSandboxConfig) -> Result<String>;
    /// Runs a command in a container and waits: (exit code, stdout, stderr).
    async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout_secs: i64) -> Result<(i32, Vec<u8>, Vec<u8>)>;
    /// Prepares a streaming exec; returns the URL of containerd's stream server.
    async fn exec(&self, req: v1::ExecRequest) -> Result<String>;
    /// Prepares a streaming attach; returns the URL.
    async fn attach(&self, req: v1::AttachRequest) -> Result<String>;
    /// Prepares a port-forward; returns the URL.
    async fn port_forward(&self, req: v1::PortForwardRequest) -> Result<String>;
}

/// The real CRI client, over a unix socket.
#[derive(Clone, Debug)]
pub struct RemoteCri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    /// The socket path.
    pub socket: PathBuf,
}

impl RemoteCri {
    /// Connects (eagerly) to `socket` (a path, or `unix://PATH`).
    pub async fn connect(socket: &Path) -> Result<RemoteCri> {
        let path = PathBuf::from(socket.to_string_lossy().trim_start_matches("unix://"));
        let p = path.clone();
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
            }))
            .await
            .map_err(|source| AgentError::Connect { endpoint: path.display().to_string(), source })?;
        // Container logs and exec output can be large.
        let rt = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let img = ImageServiceClient::new(channel).max_decoding_message_size(64 << 20);
        Ok(RemoteCri { rt, img, socket: path })
    }
}

#[async_trait::async_trait]
impl Cri for RemoteCri {
    async fn version(&self) -> Result<v1::VersionResponse> {
        let r = self.rt.clone().version(v1::VersionRequest { version: "v1".into() }).await.map_err(AgentError::cri("Version", "runtime"))?;
        Ok(r.into_inner())
    }

    async fn run_pod_sandbox(&self, config: v1::PodSandboxConfig) -> Result<String> {
        let object = config.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
        let r = self
            .rt
            .clone()
            .run_pod_sandbox(v1::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
            .await
            .map_err(AgentError::cri("RunPodSandbox", object))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.rt.clone().stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.map_err(AgentError::cri("StopPodSandbox", id))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.rt.clone().remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.map_err(AgentError::cri("RemovePodSandbox", id))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<v1::PodSandboxStatus> {
        let r = self
            .rt
            .clone()
            .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false })
            .await
            .map_err(AgentError::cri("PodSandboxStatus", id))?;
        r.into_inner().status.ok_or_else(|| AgentError::Cri { call: "PodSandboxStatus", object: id.into(), source: tonic::Status::not_found("no status") })
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<v1::PodSandbox>> {
        let r = self.rt.clone().list_pod_sandbox(v1::ListPodSandboxRequest { filter: None }).await.map_err(AgentError::cri("ListPodSandbox", "all"))?;
        Ok(r.into_inner().items)
    }

    async fn create_container(&self, sandbox_id: &str, config: v1::ContainerConfig, sandbox: v1::PodSandboxConfig) -> Result<String> {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let r = self
            .rt
            .clone()
            .create_container(v1::CreateContainerRequest { pod_sandbox_id: sandbox_id.into(), config: Some(config), sandbox_config: Some(sandbox) })
            .await
            .map_err(AgentError::cri("CreateContainer", format!("{sandbox_id}/{name}")))?;
        Ok(r.into_inner().container_id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.rt.clone().start_container(v1::StartContainerRequest { container_id: id.into() }).await.map_err(AgentError::cri("StartContainer", id))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let mut req = tonic::Request::new(v1::StopContainerRequest { container_id: id.into(), timeout: timeout_secs });
        req.set_timeout(Duration::from_secs(timeout_secs.max(0) as u64 + 30));
        self.rt.clone().stop_container(req).await.map_err(AgentError::cri("StopContainer", id))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.rt.clone().remove_container(v1::RemoveContainerRequest { container_id: id.into() }).await.map_err(AgentError::cri("RemoveContainer", id))?;
        Ok(())
    }

    async fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<v1::Container>> {
        let filter = sandbox_id.map(|s| v1::ContainerFilter { pod_sandbox_id: s.into(), ..Default::default() });
        let r = self.rt.clone().list_containers(v1::ListContainersRequest { filter }).await.map_err(AgentError::cri("ListContainers", sandbox_id.unwrap_or("all")))?;
        Ok(r.into_inner().containers)
    }

    async fn container_status(&self, id: &str) -> Result<v1::ContainerStatus> {
        let r = self
            .rt
            .clone()
            .container_status(v1::ContainerStatusRequest { container_id: id.into(), verbose: false })
            .await
            .map_err(AgentError::cri("ContainerStatus", id))?;
        r.into_inner().status.ok_or_else(|| AgentError::Cri { call: "ContainerStatus", object: id.into(), source: tonic::Status::not_found("no status") })
    }

    async fn image_status(&self, image: &str) -> Result<Option<v1::Image>> {
        let r = self
            .img
            .clone()
            .image_status(v1::ImageStatusRequest { image: Some(v1::ImageSpec { image: image.into(), ..Default::default() }), verbose: false })
            .await
            .map_err(AgentError::cri("ImageStatus", image))?;
        Ok(r.into_inner().image)
    }

    async fn pull_image(&self, image: &str, sandbox: v1::PodSandboxConfig) -> Result<String> {
        let r = self
            .img
            .clone()
            .pull_image(v1::PullImageRequest { image: Some(v1::ImageSpec { image: image.into(), ..Default::default() }), auth: None, sandbox_config: Some(sandbox) })
            .await
            .map_err(AgentError::cri("PullImage", image))?;
        Ok(r.into_inner().image_ref)
    }

    async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout_secs: i64) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let r = self
            .rt
            .clone()
            .exec_sync(v1::ExecSyncRequest { container_id: id.into(), cmd, timeout: timeout_secs })
            .await
            .map_err(AgentError::cri("ExecSync", id))?
            .into_inner();
        Ok((r.exit_code, r.stdout, r.stderr))
    }

    async fn exec(&self, req: v1::ExecRequest) -> Result<String> {
        let id = req.container_id.clone();
        Ok(self.rt.clone().exec(req).await.map_err(AgentError::cri("Exec", id))?.into_inner().url)
    }

    async fn attach(&self, req: v1::AttachRequest) -> Result<String> {
        let id = req.container_id.clone();
        Ok(self.rt.clone().attach(req).await.map_err(AgentError::cri("Attach", id))?.into_inner().url)
    }

    async fn port_forward(&self, req: v1::PortForwardRequest) -> Result<String> {
        let id = req.pod_sandbox_id.clone();
        Ok(self.rt.clone().port_forward(req).await.map_err(AgentError::cri("PortForward", id))?.into_inner().url)
    }
}
