//! The crate's error type.

use std::path::PathBuf;

/// Everything that can fail in the proxy: applying rules, listing them, talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The `nft` program could not be started or fed.
    #[error("could not run {program} (netns {netns:?})")]
    Spawn {
        /// Program that failed to start.
        program: String,
        /// Network namespace it was run in, if any.
        netns: Option<PathBuf>,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink socket operation (open, send, receive) failed.
    #[error("netlink {op} (netns {netns:?})")]
    Netlink {
        /// `socket`, `send`, `recv`, ...
        op: String,
        /// Network namespace, if any.
        netns: Option<PathBuf>,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and rejected the transaction; nothing was changed (transactions are atomic).
    #[error("nft failed (netns {netns:?}, {lines} line transaction): {stderr}")]
    NftRejected {
        /// Network namespace, if any.
        netns: Option<PathBuf>,
        /// Size of the transaction.
        lines: usize,
        /// nft's own message (first lines).
        stderr: String,
    },
    /// Building the Kubernetes client failed.
    #[error("kubernetes client from kubeconfig {kubeconfig:?}")]
    Client {
        /// Kubeconfig path (None: in-cluster / default).
        kubeconfig: Option<PathBuf>,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A watch stream (or a one-off list) of the named resource failed.
    #[error("watching {resource}")]
    Watch {
        /// `services`, `endpointslices` or `nodes`.
        resource: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A blocking apply task panicked or was cancelled.
    #[error("sync task of table {table} did not finish")]
    SyncTask {
        /// Table name.
        table: String,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}
