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
use crate::nft::{plan, Op, Ruleset, Transaction};

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
    /// Commands in the transaction sent.
    pub lines: usize,
    /// UDP endpoints (ip, port) that disappeared: their conntrack entries should be deleted.
    pub stale_udp_endpoints: Vec<(IpAddr, u16)>,
    /// Time to compute the transaction (diff, or listing + full script).
    pub plan_time: std::time::Duration,
    /// Time the applier took (netlink batch or `nft -f`).
    pub apply_time: std::time::Duration,
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
        let t0 = std::time::Instant::now();
        let (kind, tx) = match (&self.last, full) {
            (Some(old), false) => {
                let tx = plan(old, &desired);
                if tx.is_empty() {
                    return Ok(SyncOutcome {
                        kind: SyncKind::Unchanged,
                        lines: 0,
                        stale_udp_endpoints: Vec::new(),
                        plan_time: t0.elapsed(),
                        apply_time: std::time::Duration::ZERO,
                    });
                }
                (SyncKind::Incremental, tx)
            }
            _ => {
                let mut existing = BTreeMap::new();
                for t in &desired.tables {
                    existing.insert(t.family, self.applier.list_objects(t.family, &t.name)?);
                }
                (SyncKind::Full, desired.full_sync(&existing))
            }
        };
        // Incremental: only the endpoint chains this transaction deletes can be stale (cheap);
        // full: compare everything (rare).
        let stale_udp_endpoints = match (&self.last, &kind) {
            (Some(_), SyncKind::Incremental) => stale_udp_endpoints_of_plan(&tx, &desired),
            (Some(old), _) => stale_udp_endpoints(old, &desired),
            (None, _) => Vec::new(),
        };
        let plan_time = t0.elapsed();
        let lines = tx.ops.len();
        let t1 = std::time::Instant::now();
        match self.applier.apply_tx(&tx) {
            Ok(()) => {
                let apply_time = t1.elapsed();
                tracing::debug!(?kind, lines, ?plan_time, ?apply_time, "applied");
                self.last = Some(desired);
                Ok(SyncOutcome { kind, lines, stale_udp_endpoints, plan_time, apply_time })
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

/// UDP endpoints whose chains `tx` deletes and that no chain of `new` still uses.
pub fn stale_udp_endpoints_of_plan(tx: &Transaction, new: &Ruleset) -> Vec<(IpAddr, u16)> {
    let candidates: BTreeSet<(IpAddr, u16)> = tx
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::DeleteChain(_, c) => parse_udp_endpoint_chain(c),
            _ => None,
        })
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let still: BTreeSet<(IpAddr, u16)> = new
        .tables
        .iter()
        .flat_map(|t| t.chains.iter())
        .filter_map(|c| parse_udp_endpoint_chain(&c.name))
        .filter(|e| candidates.contains(e))
        .collect();
    candidates.difference(&still).copied().collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::apply::RecordingApplier;
    use crate::nft::{Chain, Family, Table};

    fn rs(endpoint_chains: &[&str]) -> Ruleset {
        let mut t = Table::new(Family::Ip, "dari");
        t.chains = endpoint_chains.iter().map(|c| Chain::new(*c, vec!["meta l4proto udp dnat to 10.1.1.1:53".into()])).collect();
        Ruleset { tables: vec![t] }
    }

    #[test]
    fn removed_udp_endpoints_are_reported_unless_still_used() {
        let mut s = Syncer::new(Arc::new(RecordingApplier::default()));
        let a = "ep-kube-system/dns/udp/dns__10.10.0.5/53";
        let b = "ep-kube-system/dns/udp/dns__10.10.0.6/53";
        let other = "ep-kube-system/dns2/udp/dns__10.10.0.6/53";
        let tcp = "ep-kube-system/dns/tcp/dns-tcp__10.10.0.7/53";
        assert!(s.sync(rs(&[a, b, other, tcp]), false).unwrap().stale_udp_endpoints.is_empty());
        // a goes away; b's chain goes but 10.10.0.6:53 still serves dns2; TCP is not UDP.
        let out = s.sync(rs(&[other]), false).unwrap();
        assert_eq!(out.kind, SyncKind::Incremental);
        assert_eq!(out.stale_udp_endpoints, vec![("10.10.0.5".parse().unwrap(), 53)]);
        // The same on a full sync.
        let mut s = Syncer::new(Arc::new(RecordingApplier::default()));
        s.sync(rs(&[a, b, other, tcp]), true).unwrap();
        let out = s.sync(rs(&[other]), true).unwrap();
        assert_eq!(out.stale_udp_endpoints, vec![("10.10.0.5".parse().unwrap(), 53)]);
    }
}
