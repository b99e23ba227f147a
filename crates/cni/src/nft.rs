//! nftables rules for ipMasq and portmap: pure rendering plus a thin applier.
//!
//! STOPGAP: rules are applied by exec'ing `nft -f -` / `nft -j list` (nftables package), not
//! over netlink. Everything lives in one table, `inet dari-cni`, and every rule carries the
//! comment `dari:<network>:<containerID>:<ifname>` so DEL and GC find it (GC of one network
//! never touches another network's rules). Equivalent manual commands:
//!   nft add rule inet dari-cni masq ip saddr 10.22.0.5 ip daddr != 10.22.0.0/16 \
//!       ip daddr != 224.0.0.0/4 masquerade comment '"dari:NET:CID:eth0"'
//!   nft add rule inet dari-cni hostports-pre fib daddr type local meta l4proto tcp th dport 8080 \
//!       dnat ip to 10.22.0.5:80 comment '"dari:NET:CID:eth0"'

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::types::{Attachment, PortMapping};

/// The table every dari-cni rule lives in.
pub const TABLE: &str = "dari-cni";
const LOCK: &str = "/run/dari-cni/nft.lock";

/// Who a rule belongs to: one attachment of one network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Network name (validated: no `:`).
    pub net: String,
    /// Container ID (validated: no `:`).
    pub cid: String,
    /// Interface name (validated: no `:`).
    pub ifname: String,
}

impl Owner {
    /// Owner of (network, container, ifname).
    pub fn new(net: &str, cid: &str, ifname: &str) -> Self {
        Owner { net: net.into(), cid: cid.into(), ifname: ifname.into() }
    }
    /// The rule comment, `dari:<net>:<cid>:<ifname>`.
    pub fn tag(&self) -> String {
        format!("dari:{}:{}:{}", self.net, self.cid, self.ifname)
    }
    /// Parses a rule comment written by [`Owner::tag`].
    pub fn parse(c: &str) -> Option<Self> {
        let mut it = c.strip_prefix("dari:")?.splitn(3, ':');
        let (net, cid, ifname) = (it.next()?, it.next()?, it.next()?);
        Some(Owner::new(net, cid, ifname))
    }
}

/// Idempotent table + chain declarations.
pub fn render_base() -> String {
    format!(
        "add table inet {t}\n\
         add chain inet {t} masq {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add chain inet {t} hostports-pre {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain inet {t} hostports-out {{ type nat hook output priority -100; policy accept; }}\n",
        t = TABLE
    )
}

/// ipMasq rules: masquerade traffic from each pod address leaving its subnet (not multicast).
pub fn render_masq(ips: &[IpNet], tag: &str) -> String {
    let mut s = String::new();
    for ip in ips {
        let (fam, mcast) = if ip.addr().is_ipv4() { ("ip", "224.0.0.0/4") } else { ("ip6", "ff00::/8") };
        s.push_str(&format!(
            "add rule inet {TABLE} masq {fam} saddr {a} {fam} daddr != {net} {fam} daddr != {mcast} masquerade comment \"{tag}\"\n",
            a = ip.addr(),
            net = ip.trunc(),
        ));
    }
    s
}

/// portmap DNAT rules (prerouting and local output) plus the hairpin masquerade.
pub fn render_portmap(maps: &[PortMapping], pod_ips: &[IpAddr], tag: &str) -> Result<String> {
    let mut s = String::new();
    for (i, m) in maps.iter().enumerate() {
        let proto = m.protocol.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(Error::config(format!("runtimeConfig.portMappings[{i}].protocol"), format!("unsupported protocol {:?}", m.protocol)));
        }
        if m.host_port == 0 || m.container_port == 0 {
            return Err(Error::config(format!("runtimeConfig.portMappings[{i}]"), "hostPort and containerPort must be 1..65535"));
        }
        let host_ip: Option<IpAddr> = match m.host_ip.as_deref() {
            None | Some("") => None,
            Some(h) => Some(h.parse().map_err(|_| Error::config(format!("runtimeConfig.portMappings[{i}].hostIP"), format!("{h:?} is not an IP address")))?),
        };
        for pod in pod_ips {
            if host_ip.is_some_and(|h| h.is_ipv4() != pod.is_ipv4()) {
                continue;
            }
            let (fam, to) = match pod {
                IpAddr::V4(a) => ("ip", format!("{a}:{}", m.container_port)),
                IpAddr::V6(a) => ("ip6", format!("[{a}]:{}", m.container_port)),
            };
            let dmatch = match host_ip {
                Some(h) => format!("{fam} daddr {h}"),
                None => format!("meta nfproto {} fib daddr type local", if pod.is_ipv4() { "ipv4" } else { "ipv6" }),
            };
            for chain in ["hostports-pre", "hostports-out"] {
                s.push_str(&format!(
                    "add rule inet {TABLE} {chain} {dmatch} meta l4proto {proto} th dport {hp} dnat {fam} to {to} comment \"{tag}\"\n",
                    hp = m.host_port
                ));
            }
            s.push_str(&format!(
                "add rule inet {TABLE} masq {fam} saddr {pod} {fam} daddr {pod} meta l4proto {proto} th dport {cp} masquerade comment \"{tag}\"\n",
                cp = m.container_port
            ));
        }
    }
    Ok(s)
}

/// GC's predicate (pure): a rule of `net` whose attachment is not in `valid`.
pub fn gc_doomed<'a>(net: &'a str, valid: &[Attachment]) -> impl Fn(&Owner) -> bool + 'a {
    let keep: HashSet<(String, String)> = valid.iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
    move |o: &Owner| o.net == net && !keep.contains(&(o.cid.clone(), o.ifname.clone()))
}

/// A rule found in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRule {
    /// Chain.
    pub chain: String,
    /// Handle.
    pub handle: u64,
    /// Owner, from the comment.
    pub owner: Owner,
}

/// Parses `nft -j list table inet dari-cni` output.
pub fn parse_rules(json: &str) -> Vec<FoundRule> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let r = &item["rule"];
        let (Some(chain), Some(handle), Some(comment)) = (r["chain"].as_str(), r["handle"].as_u64(), r["comment"].as_str()) else {
            continue;
        };
        if let Some(owner) = Owner::parse(comment) {
            out.push(FoundRule { chain: chain.to_string(), handle, owner });
        }
    }
    out
}

/// Deletion script for the rules whose owner is `doomed`.
pub fn render_delete(rules: &[FoundRule], doomed: impl Fn(&Owner) -> bool) -> String {
    rules
        .iter()
        .filter(|r| doomed(&r.owner))
        .map(|r| format!("delete rule inet {TABLE} {} handle {}\n", r.chain, r.handle))
        .collect()
}

/// Applies scripts with the `nft` binary, serialized by a lock file.
#[derive(Debug, Default)]
pub struct Nft;

fn lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let p = std::path::Path::new(LOCK);
    if let Some(d) = p.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map_err(|e| Error::Store { path: p.into(), op: "open nft lock", source: e })?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::Store { path: p.into(), op: "flock", source: e.into() })
}

impl Nft {
    fn run(&self, script: &str, op: &str) -> Result<()> {
        let tool_err = |msg: String| Error::Tool { tool: "nft", op: op.to_string(), msg };
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| tool_err(format!("cannot run nft (apt package nftables): {e}")))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(script.as_bytes()).map_err(|e| tool_err(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| tool_err(e.to_string()))?;
        if !out.status.success() {
            return Err(tool_err(format!("{}; script:\n{script}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(())
    }

    /// Adds rules (creating table and chains as needed).
    pub fn add(&self, rules: &str) -> Result<()> {
        let _l = lock()?;
        self.run(&format!("{}{}", render_base(), rules), "add rules")
    }

    /// Lists tagged rules ([] if the table does not exist).
    pub fn list(&self) -> Result<Vec<FoundRule>> {
        let out = Command::new("nft")
            .args(["-j", "list", "table", "inet", TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Tool { tool: "nft", op: "list".into(), msg: format!("cannot run nft (apt package nftables): {e}") })?;
        if !out.status.success() {
            return Ok(Vec::new());
        }
        Ok(parse_rules(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Deletes the rules of one attachment.
    pub fn delete_owner(&self, owner: &Owner) -> Result<()> {
        let _l = lock()?;
        let s = render_delete(&self.list()?, |o| o == owner);
        if s.is_empty() {
            return Ok(());
        }
        self.run(&s, "delete rules")
    }

    /// Deletes every rule of network `net` whose attachment is not in `valid`.
    pub fn gc(&self, net: &str, valid: &[Attachment]) -> Result<()> {
        let _l = lock()?;
        let s = render_delete(&self.list()?, gc_doomed(net, valid));
        if s.is_empty() {
            return Ok(());
        }
        self.run(&s, "gc rules")
    }

    /// Number of rules of one attachment.
    pub fn count(&self, owner: &Owner) -> Result<usize> {
        Ok(self.list()?.iter().filter(|r| &r.owner == owner).count())
    }
}
