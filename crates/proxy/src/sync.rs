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
use crate::state::ProxyState;

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
        // Incremental: only the Service chains this transaction rewrites or deletes can hold stale
        // UDP endpoints (cheap);
        // full: compare everything (rare).
        let stale_udp_endpoints = match (&self.last, &kind) {
            (Some(old), SyncKind::Incremental) => stale_udp_endpoints_of_plan(&tx, old, &desired),
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

impl Syncer {
    /// Syncs a [`ProxyState`]: incrementally (only the Services that changed since the last
    /// sync, see [`ProxyState::take_changes`]) unless `full`, nothing applied yet, or the last
    /// sync failed; full syncs assemble the whole ruleset. Keeps no copy of the ruleset.
    pub fn sync_state(&mut self, st: &mut ProxyState, full: bool) -> Result<SyncOutcome, ProxyError> {
        let span = tracing::info_span!("proxy_sync", full, services = st.service_count());
        let _guard = span.enter();
        let t0 = std::time::Instant::now();
        self.last = None;
        let full = full || st.needs_full();
        let changes = if full { st.take_changes_for_full_sync() } else { st.take_changes() };
        let (kind, tx) = if full {
            let desired = st.assembled();
            let mut existing = BTreeMap::new();
            for t in &desired.tables {
                existing.insert(t.family, self.applier.list_objects(t.family, &t.name)?);
            }
            (SyncKind::Full, desired.into_full_sync(&existing))
        } else if changes.tx.is_empty() {
            return Ok(SyncOutcome {
                kind: SyncKind::Unchanged,
                lines: 0,
                stale_udp_endpoints: changes.stale_udp_endpoints,
                plan_time: t0.elapsed(),
                apply_time: std::time::Duration::ZERO,
            });
        } else {
            (SyncKind::Incremental, changes.tx)
        };
        let plan_time = t0.elapsed();
        let lines = tx.ops.len();
        let t1 = std::time::Instant::now();
        let applied = self.applier.apply_tx(&tx);
        drop(tx);
        match applied {
            Ok(()) => {
                if kind == SyncKind::Full {
                    st.full_sync_done();
                    release_freed_memory();
                }
                let apply_time = t1.elapsed();
                tracing::debug!(?kind, lines, rerendered = changes.rerendered, ?plan_time, ?apply_time, "applied");
                Ok(SyncOutcome { kind, lines, stale_udp_endpoints: changes.stale_udp_endpoints, plan_time, apply_time })
            }
            Err(e) => {
                st.mark_full();
                Err(e)
            }
        }
    }
}

/// Hands the memory a full sync used for its transient whole-ruleset copy and transaction back
/// to the OS: glibc keeps freed memory in its arenas, which with 10,000 Services is ~50 MB of
/// RSS that the steady state never uses again.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers; it only returns free pages of glibc's own arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// UDP endpoints present in `old` and gone from `new`, read from the DNAT targets of the
/// Service chains of UDP ports (`svc-NS/NAME/udp/PORT`, `svl-...`) and from the UDP elements of
/// the shared DNAT maps.
pub fn stale_udp_endpoints(old: &Ruleset, new: &Ruleset) -> Vec<(IpAddr, u16)> {
    let endpoints = |r: &Ruleset| -> BTreeSet<(IpAddr, u16)> { r.tables.iter().flat_map(udp_endpoints_of_table).collect() };
    let now = endpoints(new);
    endpoints(old).difference(&now).copied().collect()
}

/// UDP endpoints of the chains and DNAT-map elements `tx` flushes or deletes (as they were in
/// `old`) that nothing in `new` still uses.
pub fn stale_udp_endpoints_of_plan(tx: &Transaction, old: &Ruleset, new: &Ruleset) -> Vec<(IpAddr, u16)> {
    let mut touched: BTreeSet<(crate::nft::Family, &str)> = BTreeSet::new();
    let mut candidates: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    let old_set = |f: crate::nft::Family, name: &str| old.table(f).and_then(|t| t.sets.get(name));
    for op in &tx.ops {
        match op {
            Op::FlushChain(t, c) | Op::DeleteChain(t, c) if is_udp_service_chain(c) => {
                touched.insert((t.family, c.as_str()));
            }
            Op::DeleteElements(t, s, keys) => {
                if let Some(os) = old_set(t.family, &s.name) {
                    for k in keys {
                        let v = os.elements.get(k).and_then(|v| v.as_deref());
                        candidates.extend(udp_endpoint_of_element(&s.name, v));
                    }
                }
            }
            Op::DeleteSet(t, name) | Op::FlushSet(t, name, _) => {
                if let Some(os) = old_set(t.family, name) {
                    candidates.extend(os.elements.values().filter_map(|v| udp_endpoint_of_element(name, v.as_deref())));
                }
            }
            _ => {}
        }
    }
    let touched = &touched;
    candidates.extend(
        old.tables
            .iter()
            .flat_map(|t| t.chains.iter().filter(move |c| touched.contains(&(t.family, c.name.as_str()))))
            .flat_map(udp_endpoints_of_chain),
    );
    if candidates.is_empty() {
        return Vec::new();
    }
    let still: BTreeSet<(IpAddr, u16)> =
        new.tables.iter().flat_map(udp_endpoints_of_table).filter(|e| candidates.contains(e)).collect();
    candidates.difference(&still).copied().collect()
}

/// UDP endpoints a table DNATs to: its UDP Service chains and shared DNAT-map elements.
fn udp_endpoints_of_table(t: &crate::nft::Table) -> Vec<(IpAddr, u16)> {
    let mut out: Vec<(IpAddr, u16)> = t.chains.iter().flat_map(udp_endpoints_of_chain).collect();
    for (name, s) in &t.sets {
        out.extend(s.elements.values().filter_map(|v| udp_endpoint_of_element(name, v.as_deref())));
    }
    out
}

/// The endpoint of an element of a shared UDP DNAT map (`... : EP . PORT`); `None` for
/// anything else.
fn udp_endpoint_of_element(set: &str, value: Option<&str>) -> Option<(IpAddr, u16)> {
    if !crate::render::DnatMap::is_udp_map(set) {
        return None;
    }
    let (ip, port) = value?.split_once(" . ")?;
    Some((ip.parse().ok()?, port.parse().ok()?))
}

fn is_udp_service_chain(name: &str) -> bool {
    let Some(id) = name.strip_prefix("svc-").or_else(|| name.strip_prefix("svl-")) else { return false };
    id.split('/').nth(2) == Some("udp")
}

/// DNAT targets of a UDP Service chain: `dnat to IP:PORT` / `dnat to [IP6]:PORT`, and the
/// `IP . PORT` arms of a `dnat ip to numgen ... map { .. }`.
pub(crate) fn udp_endpoints_of_chain(c: &crate::nft::Chain) -> Vec<(IpAddr, u16)> {
    if !is_udp_service_chain(&c.name) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for r in &c.rules {
        if let Some((_, target)) = r.split_once("dnat to ") {
            if let Ok(sa) = target.split_whitespace().next().unwrap_or("").parse::<std::net::SocketAddr>() {
                out.push((sa.ip(), sa.port()));
            }
        } else if let Some((_, arms)) = r.split_once(" map { ") {
            for arm in arms.trim_end_matches(" }").split(", ") {
                let Some((_, v)) = arm.split_once(" : ") else { continue };
                if let Some((ip, port)) = v.split_once(" . ") {
                    if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
                        out.push((ip, port));
                    }
                }
            }
        }
    }
    out
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

    fn rs(chains: &[(&str, &[&str])]) -> Ruleset {
        let mut t = Table::new(Family::Ip, "dari");
        t.chains = chains
            .iter()
            .map(|(c, eps)| Chain::new(*c, eps.iter().map(|e| format!("meta l4proto udp dnat to {e}")).collect()))
            .collect();
        Ruleset { tables: vec![t] }
    }

    #[test]
    fn removed_udp_endpoints_are_reported_unless_still_used() {
        let mut s = Syncer::new(Arc::new(RecordingApplier::default()));
        let a: (&str, &[&str]) = ("svc-kube-system/dns/udp/dns", &["10.10.0.5:53", "10.10.0.6:53"]);
        let a2: (&str, &[&str]) = ("svc-kube-system/dns/udp/dns", &[]);
        let other: (&str, &[&str]) = ("svc-kube-system/dns2/udp/dns", &["10.10.0.6:53"]);
        let tcp: (&str, &[&str]) = ("svc-kube-system/dns/tcp/dns-tcp", &["10.10.0.7:53"]);
        let b2 = other;
        assert!(s.sync(rs(&[a, other, tcp]), false).unwrap().stale_udp_endpoints.is_empty());
        // dns loses both endpoints; 10.10.0.6:53 still serves dns2; TCP is not UDP.
        let out = s.sync(rs(&[a2, b2]), false).unwrap();
        assert_eq!(out.kind, SyncKind::Incremental);
        assert_eq!(out.stale_udp_endpoints, vec![("10.10.0.5".parse().unwrap(), 53)]);
        // The same on a full sync.
        let mut s = Syncer::new(Arc::new(RecordingApplier::default()));
        s.sync(rs(&[a, other, tcp]), true).unwrap();
        let out = s.sync(rs(&[a2, b2]), true).unwrap();
        assert_eq!(out.stale_udp_endpoints, vec![("10.10.0.5".parse().unwrap(), 53)]);
    }
}
