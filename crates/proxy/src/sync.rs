//! [`Syncer`]: remembers what was applied and sends the smallest correct transaction.
//!
//! First sync, forced resyncs and any sync after a failure are full (kube-proxy style:
//! add+flush every object, delete stale ones found by listing the kernel table). Otherwise only
//! the difference to the last applied [`Ruleset`] is sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::apply::NftApply;
use crate::error::ProxyError;
use crate::nft::Ruleset;

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncKind {
    /// The whole ruleset was (re)written.
    Full,
    /// Only the difference was written.
    Incremental,
    /// Nothing changed; nothing was sent.
    Unchanged,
}

/// Result of one [`Syncer::sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Full, incremental or nothing.
    pub kind: SyncKind,
    /// Lines in the transaction sent.
    pub lines: usize,
    /// UDP endpoints (ip, port) that disappeared: their conntrack entries should be deleted.
    pub stale_udp_endpoints: Vec<(IpAddr, u16)>,
}

/// Keeps the kernel's `dari` tables equal to the desired ruleset.
pub struct Syncer {
    applier: Arc<dyn NftApply>,
    last: Option<Ruleset>,
}

impl Syncer {
    /// A syncer that has applied nothing yet (its first sync is full).
    pub fn new(applier: Arc<dyn NftApply>) -> Self {
        Syncer { applier, last: None }
    }

    /// The ruleset last applied successfully.
    pub fn last_applied(&self) -> Option<&Ruleset> {
        self.last.as_ref()
    }

    /// Applies `desired`: fully if `full` or nothing is known about the kernel state,
    /// incrementally otherwise. On failure the next sync is full.
    pub fn sync(&mut self, desired: Ruleset, full: bool) -> Result<SyncOutcome, ProxyError> {
        let span = tracing::info_span!("proxy_sync", full, chains = desired.chain_count());
        let _guard = span.enter();
        let stale_udp_endpoints =
            self.last.as_ref().map(|old| stale_udp_endpoints(old, &desired)).unwrap_or_default();
        let (kind, script) = match (&self.last, full) {
            (Some(old), false) => {
                let script = desired.diff_script(old);
                if script.is_empty() {
                    return Ok(SyncOutcome { kind: SyncKind::Unchanged, lines: 0, stale_udp_endpoints });
                }
                (SyncKind::Incremental, script)
            }
            _ => {
                let mut existing = BTreeMap::new();
                for t in &desired.tables {
                    existing.insert(t.family, self.applier.list_objects(t.family, &t.name)?);
                }
                (SyncKind::Full, desired.full_sync_script(&existing))
            }
        };
        let lines = script.lines().count();
        match self.applier.apply(&script) {
            Ok(()) => {
                tracing::debug!(?kind, lines, "applied");
                self.last = Some(desired);
                Ok(SyncOutcome { kind, lines, stale_udp_endpoints })
            }
            Err(e) => {
                self.last = None;
                Err(e)
            }
        }
    }
}

/// UDP endpoints present in `old` and gone from `new`, read from endpoint chain names
/// (`ep-NS/NAME/udp/PORT__IP/TARGETPORT`).
pub fn stale_udp_endpoints(old: &Ruleset, new: &Ruleset) -> Vec<(IpAddr, u16)> {
    let endpoints = |r: &Ruleset| -> BTreeSet<(IpAddr, u16)> {
        r.tables
            .iter()
            .flat_map(|t| t.chains.iter())
            .filter_map(|c| parse_udp_endpoint_chain(&c.name))
            .collect()
    };
    let now = endpoints(new);
    endpoints(old).difference(&now).copied().collect()
}

fn parse_udp_endpoint_chain(name: &str) -> Option<(IpAddr, u16)> {
    let rest = name.strip_prefix("ep-")?;
    let (id, ep) = rest.rsplit_once("__")?;
    if id.split('/').nth(2)? != "udp" {
        return None;
    }
    let (ip, port) = ep.rsplit_once('/')?;
    Some((ip.replace('-', ":").parse().ok()?, port.parse().ok()?))
}

/// Deletes conntrack entries of UDP flows answered by a removed endpoint (the stale-UDP black
/// hole). Called off the sync path.
pub trait ConntrackFlush: Send + Sync {
    /// Deletes UDP entries whose reply source is `ip:port`.
    fn flush_udp_endpoint(&self, ip: IpAddr, port: u16) -> Result<(), ProxyError>;
}

/// Runs the `conntrack` tool (apt package `conntrack`), optionally in a netns.
#[derive(Debug, Clone, Default)]
pub struct ConntrackCli {
    /// Network namespace path to run in.
    pub netns: Option<std::path::PathBuf>,
}

impl ConntrackFlush for ConntrackCli {
    fn flush_udp_endpoint(&self, ip: IpAddr, port: u16) -> Result<(), ProxyError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("conntrack");
                c
            }
            None => Command::new("conntrack"),
        };
        if ip.is_ipv6() {
            cmd.args(["-f", "ipv6"]);
        }
        // Exit status 1 means "0 entries deleted": not an error.
        cmd.args(["-D", "-p", "udp", "--reply-src", &ip.to_string(), "--reply-port-src", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|_| ())
            .map_err(|source| ProxyError::Spawn {
                program: "conntrack".into(),
                netns: self.netns.clone(),
                source,
            })
    }
}
