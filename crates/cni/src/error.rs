//! The crate's error type and its mapping onto CNI spec error codes.

use std::path::PathBuf;

/// CNI spec error codes (SPEC.md "Error codes").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: generic failure (>= 100 is reserved for plugins).
    pub const INTERNAL: u32 = 100;
    /// Plugin-specific: the address pool is exhausted.
    pub const EXHAUSTED: u32 = 101;
}

/// Everything that can go wrong in a plugin invocation. Each variant knows its CNI code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required CNI_* environment variable is missing or malformed.
    #[error("environment variable {var}: {msg}")]
    Env {
        /// Variable name.
        var: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The requested cniVersion is not supported.
    #[error("unsupported cniVersion {version:?} (supported: {supported})")]
    Version {
        /// Requested version.
        version: String,
        /// Comma-separated supported versions.
        supported: String,
    },
    /// stdin (or a delegate's stdout / prevResult) could not be decoded.
    #[error("decoding {what} at `{path}`: {msg}")]
    Decode {
        /// What was decoded ("network config", "prevResult", ...).
        what: &'static str,
        /// JSON path of the offending field ("." for the root).
        path: String,
        /// serde's message.
        msg: String,
    },
    /// The config decoded but is semantically invalid.
    #[error("invalid network config: field `{field}`: {msg}")]
    Config {
        /// The offending field (JSON path).
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// No free address left in a range set.
    #[error("no IP addresses available in range set {ranges}")]
    Exhausted {
        /// The range set, rendered.
        ranges: String,
    },
    /// The container already holds an address from this range set.
    #[error("{ip} has been allocated to {container_id}, duplicate allocation is not allowed")]
    Duplicate {
        /// The already allocated address.
        ip: std::net::IpAddr,
        /// The container.
        container_id: String,
    },
    /// The IPAM store could not be read or written.
    #[error("IPAM store {path}: {op}")]
    Store {
        /// File or directory.
        path: PathBuf,
        /// Operation that failed.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink {op} on {target} (netns {netns})")]
    Netlink {
        /// Operation.
        op: &'static str,
        /// Interface or object.
        target: String,
        /// Namespace ("host" or the path).
        netns: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The network namespace could not be opened or entered.
    #[error("network namespace {netns}: {op}")]
    Netns {
        /// Path.
        netns: String,
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The interface named by CNI_IFNAME already exists in the pod.
    #[error("interface {ifname} already exists in netns {netns}")]
    IfExists {
        /// Interface name.
        ifname: String,
        /// Namespace path.
        netns: String,
    },
    /// Something the runtime relies on is not as it should be (CHECK, bridge address).
    #[error("{what}")]
    State {
        /// Description naming the interface/field at fault.
        what: String,
    },
    /// A delegated plugin (IPAM) failed or could not be run.
    #[error("delegate plugin {plugin}: {msg}")]
    Delegate {
        /// Plugin type.
        plugin: String,
        /// Message (the delegate's own error message when it gave one).
        msg: String,
        /// The delegate's own error code, passed through.
        code: u32,
    },
    /// An external tool (the `nft` stopgap) failed.
    #[error("{tool} {op}: {msg}")]
    Tool {
        /// Tool name.
        tool: &'static str,
        /// What we asked it to do.
        op: String,
        /// Its stderr or the spawn error.
        msg: String,
    },
}

impl Error {
    /// The CNI spec error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::Env { .. } => code::INVALID_ENV,
            Error::Version { .. } => code::INCOMPATIBLE_VERSION,
            Error::Decode { .. } => code::DECODE,
            Error::Config { .. } => code::INVALID_CONFIG,
            Error::Exhausted { .. } => code::EXHAUSTED,
            Error::Duplicate { .. } => code::INTERNAL,
            Error::Store { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock => {
                code::TRY_AGAIN
            }
            Error::Store { .. } => code::IO_FAILURE,
            Error::Netlink { .. } | Error::Netns { .. } => code::IO_FAILURE,
            Error::IfExists { .. } | Error::State { .. } => code::INTERNAL,
            Error::Delegate { code, .. } => *code,
            Error::Tool { .. } => code::IO_FAILURE,
        }
    }

    /// Shorthand for a config error.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { field: field.into(), msg: msg.into() }
    }

    /// Full message including the source chain (for the `details` field).
    pub fn details(&self) -> String {
        let mut out = String::new();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }

    /// The spec's error body: `{"cniVersion","code","msg","details"}`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
        });
        let d = self.details();
        if !d.is_empty() {
            v["details"] = serde_json::Value::String(d);
        }
        v
    }
}

/// Crate result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
