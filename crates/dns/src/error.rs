//! The crate's one error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in dari's cluster DNS.
///
/// Each variant names the object it was working on; the cause sits in `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A DNS listener (UDP or TCP) could not be bound.
    #[error("binding the DNS {proto} listener on {addr}")]
    Bind {
        /// "udp", "tcp" or "http".
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A listener failed after it was bound.
    #[error("serving DNS over {proto} on {addr}")]
    Serve {
        /// "udp", "tcp" or "http".
        proto: &'static str,
        /// The bound address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file (the config file or resolv.conf) could not be read.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The DNS config (file or ConfigMap) is not valid YAML for [`crate::DnsConfig`].
    #[error("parsing the DNS config from {origin}")]
    Config {
        /// Where it came from: a path or `configmap kube-system/NAME`.
        origin: String,
        /// The cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// The DNS config parsed but a value is wrong.
    #[error("invalid DNS config from {origin}: {reason}")]
    ConfigValue {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A name (zone, service or target) is not a valid DNS name.
    #[error("invalid DNS name {name:?}")]
    Name {
        /// The text.
        name: String,
        /// The cause.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// Building the Kubernetes client failed.
    #[error("building the Kubernetes client ({what})")]
    KubeClient {
        /// Which step: "kubeconfig path", "in-cluster or default".
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A watch on the Kubernetes API stopped for good.
    #[error("watching {kind} on the Kubernetes API")]
    Watch {
        /// "services", "endpointslices", "pods" or "configmap".
        kind: &'static str,
        /// The cause.
        #[source]
        source: kube::runtime::watcher::Error,
    },
    /// A background task ended unexpectedly.
    #[error("DNS task {task} ended")]
    TaskEnded {
        /// Which task.
        task: &'static str,
    },
}
