//! Applying transactions: the [`NftApply`] trait, the `nft -f -` implementation and a recording fake.
//!
//! [`NftCli`] shells out to `nft -f -` (nftables 1.0.6). One script is one netlink batch, so each
//! sync is atomic, but nft first dumps every chain of the table (about 1 s at 110,000 chains).
//! [`crate::netlink::NetlinkApplier`] sends the batch itself and falls back to [`NftCli`] for
//! what it cannot encode.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::ProxyError;
use crate::nft::{ExistingObjects, Family, Transaction};

/// Applies nft transactions and lists what a table currently holds.
pub trait NftApply: Send + Sync {
    /// Runs one transaction (`nft -f` syntax). All or nothing.
    fn apply(&self, ruleset_text: &str) -> Result<(), ProxyError>;
    /// Runs one structured transaction. All or nothing. Default: its `nft -f` text via [`NftApply::apply`].
    fn apply_tx(&self, tx: &Transaction) -> Result<(), ProxyError> {
        if tx.is_empty() {
            return Ok(());
        }
        self.apply(&tx.to_string())
    }
    /// Names of the chains and sets of `family table`; empty if the table does not exist.
    fn list_objects(&self, family: Family, table: &str) -> Result<ExistingObjects, ProxyError>;
}

/// Runs the `nft` binary, optionally inside a network namespace (through `nsenter --net=PATH`).
#[derive(Debug, Clone, Default)]
pub struct NftCli {
    /// `/var/run/netns/NAME` (or `/proc/PID/ns/net`) to run in; `None`: the current namespace.
    pub netns: Option<PathBuf>,
}

impl NftCli {
    /// nft in the current network namespace.
    pub fn new() -> Self {
        NftCli { netns: None }
    }

    /// nft inside the network namespace at `path`.
    pub fn in_netns(path: impl Into<PathBuf>) -> Self {
        NftCli { netns: Some(path.into()) }
    }

    fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("nft");
                c
            }
            None => Command::new("nft"),
        }
    }

    fn spawn_err(&self, source: std::io::Error) -> ProxyError {
        ProxyError::Spawn {
            program: if self.netns.is_some() { "nsenter nft".into() } else { "nft".into() },
            netns: self.netns.clone(),
            source,
        }
    }
}

impl NftApply for NftCli {
    fn apply(&self, ruleset_text: &str) -> Result<(), ProxyError> {
        if ruleset_text.trim().is_empty() {
            return Ok(());
        }
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset_text.as_bytes()).map_err(|e| self.spawn_err(e))?;
        }
        let out = child.wait_with_output().map_err(|e| self.spawn_err(e))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr: String =
            String::from_utf8_lossy(&out.stderr).lines().take(12).collect::<Vec<_>>().join("\n");
        Err(ProxyError::NftRejected {
            netns: self.netns.clone(),
            lines: ruleset_text.lines().count(),
            stderr,
        })
    }

    fn list_objects(&self, family: Family, table: &str) -> Result<ExistingObjects, ProxyError> {
        let out = self
            .command()
            .args(["-t", "list", "table", family.keyword(), table])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_err(e))?;
        if !out.status.success() {
            // "No such file or directory": the table does not exist yet.
            return Ok(ExistingObjects::default());
        }
        Ok(ExistingObjects::parse_listing(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// A fake that records every transaction and reports a fixed listing. For controller tests.
#[derive(Debug, Default)]
pub struct RecordingApplier {
    /// Transactions received, in order.
    pub applied: Mutex<Vec<String>>,
}

impl RecordingApplier {
    /// A copy of the transactions received so far.
    pub fn transactions(&self) -> Vec<String> {
        self.applied.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl NftApply for RecordingApplier {
    fn apply(&self, ruleset_text: &str) -> Result<(), ProxyError> {
        if let Ok(mut v) = self.applied.lock() {
            v.push(ruleset_text.to_string());
        }
        Ok(())
    }

    fn list_objects(&self, _family: Family, _table: &str) -> Result<ExistingObjects, ProxyError> {
        Ok(ExistingObjects::default())
    }
}
