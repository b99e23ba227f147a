//! The lab's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while planning, building or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The requested topology is not possible (bad node name, too many nodes for the subnet ...).
    #[error("invalid lab plan: {reason}")]
    Plan {
        /// What is wrong.
        reason: String,
    },
    /// A network namespace operation (create, open, setns, delete) failed.
    #[error("network namespace {netns}: {op}")]
    Netns {
        /// The namespace name.
        netns: String,
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink {op} on {target} in netns {netns}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// Link, address or route concerned.
        target: String,
        /// The namespace name.
        netns: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file under the lab directory (or an image input) could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A child process could not be started, or exited badly.
    #[error("process {what}: {detail}")]
    Process {
        /// Which process (`dari server`, `containerd`, `ctr import` ...).
        what: String,
        /// What happened.
        detail: String,
        /// Cause, when there is an OS error.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A component did not become ready in time.
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
    /// The saved lab state could not be decoded.
    #[error("lab state {path}")]
    State {
        /// The state file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// An image could not be built (missing host binary, bad library path ...).
    #[error("image {image}: {reason}")]
    Image {
        /// Image reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
}

impl LabError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io { op, path: path.into(), source }
    }

    pub(crate) fn plan(reason: impl Into<String>) -> Self {
        LabError::Plan { reason: reason.into() }
    }
}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;
