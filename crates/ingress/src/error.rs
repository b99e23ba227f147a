//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can fail in the ingress edge (the pure route-table builder never fails: it
/// reports [`crate::Issue`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// A listener could not be bound.
    #[error("could not listen on {addr} ({scheme})")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// `http` or `https`.
        scheme: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Building the TLS server configuration failed (default certificate, protocol versions).
    #[error("tls setup: {what}")]
    Tls {
        /// What was being set up.
        what: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Building the Kubernetes client failed.
    #[error("kubernetes client from kubeconfig {kubeconfig:?}")]
    Client {
        /// Kubeconfig path (None: inferred).
        kubeconfig: Option<PathBuf>,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A watch stream of the named resource ended.
    #[error("watching {resource}")]
    Watch {
        /// `ingresses`, `services`, ...
        resource: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An API write (IngressClass create, Ingress status) failed.
    #[error("{verb} {object}")]
    Api {
        /// `create` or `patch status`.
        verb: &'static str,
        /// `ingressclass/dari`, `ingress/ns/name`.
        object: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}
