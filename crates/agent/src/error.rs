//! The agent's one error type.

use std::path::PathBuf;

/// Everything the agent can fail at. Each variant names the object it was working on; the cause
/// is in `source`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing ("writing", "creating dir", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A child program could not be started or failed.
    #[error("running {program}: {detail}")]
    Program {
        /// Program name.
        program: String,
        /// Exit status or stderr tail.
        detail: String,
        /// The cause, when it is an I/O error.
        #[source]
        source: Option<std::io::Error>,
    },
    /// containerd did not answer on its socket in time, or died.
    #[error("containerd at {socket} is not ready: {detail}")]
    RuntimeNotReady {
        /// CRI socket path.
        socket: PathBuf,
        /// What we observed.
        detail: String,
    },
    /// Connecting to the CRI endpoint failed.
    #[error("connecting to CRI endpoint {endpoint}")]
    Connect {
        /// The endpoint (unix socket path).
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A CRI call failed.
    #[error("CRI {call} for {object}")]
    Cri {
        /// The RPC name.
        call: &'static str,
        /// The pod, container or image concerned.
        object: String,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// A Kubernetes API call failed.
    #[error("API {verb} {object}")]
    Kube {
        /// What we did (get, create, patch status, ...).
        verb: &'static str,
        /// The object (kind/namespace/name).
        object: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The kubeconfig could not be loaded.
    #[error("loading kubeconfig {path}")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Building a client from the kubeconfig failed.
    #[error("building API client from {path}")]
    Client {
        /// The kubeconfig path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A pod spec the agent cannot run (unsupported field, bad reference).
    #[error("pod {pod}: {detail}")]
    Pod {
        /// namespace/name.
        pod: String,
        /// What is wrong.
        detail: String,
    },
    /// An image archive could not be built or imported.
    #[error("image {image}: {detail}")]
    Image {
        /// Image reference or archive path.
        image: String,
        /// What is wrong.
        detail: String,
    },
    /// Waiting for something timed out.
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        secs: u64,
    },
    /// Joining the cluster with a token failed (CA hash mismatch, secret refused, server
    /// unreachable, unusable answer).
    #[error("joining the cluster at {server}: {detail}")]
    Join {
        /// The `--server` URL.
        server: String,
        /// What went wrong, in words an operator can act on.
        detail: String,
        /// The cause, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The node's certificates or keys are unusable.
    #[error("node credentials {path}: {detail}")]
    Credentials {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Building a TLS configuration failed.
    #[error("TLS: {what}")]
    Tls {
        /// Which configuration or credential.
        what: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// A listening socket could not be opened.
    #[error("listening on {}", addr.map(|a| a.to_string()).unwrap_or_else(|| "a local port".into()))]
    Listen {
        /// The address, when known.
        addr: Option<std::net::SocketAddr>,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Invalid agent configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl AgentError {
    /// The message followed by its causes (`CRI RunPodSandbox for default/web: ... is reserved
    /// for ...`): logs and other crates' errors need the whole chain, not the outer line.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { op, path, source }
    }

    pub(crate) fn cri(call: &'static str, object: impl Into<String>) -> impl FnOnce(tonic::Status) -> AgentError {
        let object = object.into();
        move |source| AgentError::Cri { call, object, source }
    }

    pub(crate) fn kube(verb: &'static str, object: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
        let object = object.into();
        move |source| AgentError::Kube { verb, object, source }
    }

    /// True if this is a CRI NotFound (the object is already gone).
    pub fn is_not_found(&self) -> bool {
        match self {
            AgentError::Cri { source, .. } => source.code() == tonic::Code::NotFound,
            AgentError::Kube { source: kube::Error::Api(s), .. } => s.code == 404,
            _ => false,
        }
    }
}

/// Result alias.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
