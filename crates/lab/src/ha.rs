//! The HA control plane of `dari lab up --datastore etcd --servers N` (pure: who runs where,
//! with which command line; [`crate::lab`] starts the processes).
//!
//! ```text
//! node 0: etcd1 (https://IP0:2379, peers :2380)   dari server   (DIR/server)
//! node 1: etcd2 (https://IP1:2379)                dari server   (DIR/server2, a copy of server's pki/ and node-token)
//! node 2: etcd3 (https://IP2:2379)
//! agents: --server https://IP0:6443,https://IP1:6443 (their own failover)
//! host:   127.0.0.1:6443 → forwarder (dials from the hub) → the first server that accepts
//! ```
//!
//! etcd runs with TLS and client-certificate auth on clients and peers, with the member
//! certificates `dari certs etcd` issues from the first server's CA (DIR/etcd/pki), and listens
//! only on lab addresses. With fewer nodes than members, members share a node on further ports
//! (2379+10k / 2380+10k).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::plan::LabPlan;

/// etcd client port of the first member on a node.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd peer port of the first member on a node.
pub const ETCD_PEER_PORT: u16 = 2380;

/// One etcd member of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    /// Member name (`etcd1`, ...): also its certificate's file name and its process name.
    pub name: String,
    /// The node whose namespace it runs in.
    pub node: String,
    /// That node's IP.
    pub ip: Ipv4Addr,
    /// Client port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
}

impl EtcdMember {
    /// `https://IP:CLIENT`.
    pub fn client_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.client_port)
    }
    /// `https://IP:PEER`.
    pub fn peer_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.peer_port)
    }
}

/// One `dari server` of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Process name (`server`, `server2`, ...): pid file, log file and data dir under the lab dir.
    pub name: String,
    /// The node whose namespace it runs in.
    pub node: String,
    /// That node's IP (it binds and advertises it).
    pub ip: Ipv4Addr,
}

/// The etcd members: `count` of them, member `i` on node `i mod nodes` (pure).
pub fn etcd_members(plan: &LabPlan, count: usize) -> Result<Vec<EtcdMember>> {
    if plan.nodes.is_empty() {
        return Err(LabError::plan("etcd needs at least one node"));
    }
    if count == 0 || count % 2 == 0 {
        return Err(LabError::plan(format!("--etcd-members {count}: give an odd number (1, 3, 5) so a majority survives a failure")));
    }
    let n = plan.nodes.len();
    (0..count)
        .map(|i| {
            let node = &plan.nodes[i % n];
            let k = u16::try_from(i / n).map_err(|_| LabError::plan("too many etcd members"))?;
            Ok(EtcdMember {
                name: format!("etcd{}", i + 1),
                node: node.name.clone(),
                ip: node.ip(),
                client_port: ETCD_CLIENT_PORT + 10 * k,
                peer_port: ETCD_PEER_PORT + 10 * k,
            })
        })
        .collect()
}

/// The `dari server`s: `count` of them, on the first `count` nodes (pure).
pub fn servers(plan: &LabPlan, count: usize) -> Result<Vec<ServerInfo>> {
    if count == 0 || count > plan.nodes.len() {
        return Err(LabError::plan(format!("--servers {count}: give 1 to {} (one server per node at most)", plan.nodes.len())));
    }
    Ok(plan
        .nodes
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, n)| ServerInfo { name: if i == 0 { "server".into() } else { format!("server{}", i + 1) }, node: n.name.clone(), ip: n.ip() })
        .collect())
}

/// The TLS files under `DIR/etcd/pki` that `dari certs etcd` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdPki {
    /// The directory.
    pub dir: PathBuf,
}

impl EtcdPki {
    /// The cluster CA (signs members and clients).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// A member's certificate (serving and peer).
    pub fn member_crt(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    /// A member's key.
    pub fn member_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    /// The API servers' client certificate.
    pub fn client_crt(&self) -> PathBuf {
        self.dir.join("apiserver-etcd-client.crt")
    }
    /// Its key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("apiserver-etcd-client.key")
    }
}

/// `dari certs etcd --data-dir SERVER --out PKI --member NAME=IP ...` (pure). Creates the CA in
/// the first server's data dir when there is none yet; the server then uses it.
pub fn certs_argv(dari: &Path, server_dir: &Path, pki: &EtcdPki, members: &[EtcdMember]) -> Vec<String> {
    let mut v = vec![
        dari.display().to_string(),
        "certs".into(),
        "etcd".into(),
        "--data-dir".into(),
        server_dir.display().to_string(),
        "--out".into(),
        pki.dir.display().to_string(),
    ];
    for m in members {
        v.push("--member".into());
        v.push(format!("{}={}", m.name, m.ip));
    }
    v
}

/// `etcd` for one member (pure): TLS with client-certificate auth for clients and peers,
/// listening on the member's lab address only.
pub fn etcd_argv(m: &EtcdMember, all: &[EtcdMember], data_dir: &Path, pki: &EtcdPki, token: &str) -> Vec<String> {
    let cluster: Vec<String> = all.iter().map(|o| format!("{}={}", o.name, o.peer_url())).collect();
    let s = |p: PathBuf| p.display().to_string();
    vec![
        "etcd".into(),
        "--name".into(),
        m.name.clone(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        m.client_url(),
        "--advertise-client-urls".into(),
        m.client_url(),
        "--listen-peer-urls".into(),
        m.peer_url(),
        "--initial-advertise-peer-urls".into(),
        m.peer_url(),
        "--initial-cluster".into(),
        cluster.join(","),
        "--initial-cluster-state".into(),
        "new".into(),
        "--initial-cluster-token".into(),
        token.into(),
        "--cert-file".into(),
        s(pki.member_crt(&m.name)),
        "--key-file".into(),
        s(pki.member_key(&m.name)),
        "--trusted-ca-file".into(),
        s(pki.ca()),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        s(pki.member_crt(&m.name)),
        "--peer-key-file".into(),
        s(pki.member_key(&m.name)),
        "--peer-trusted-ca-file".into(),
        s(pki.ca()),
        "--peer-client-cert-auth".into(),
        "--logger".into(),
        "zap".into(),
    ]
}

/// `dari server` flags for the etcd datastore (pure).
pub fn server_etcd_flags(members: &[EtcdMember], pki: &EtcdPki) -> Vec<String> {
    let urls: Vec<String> = members.iter().map(EtcdMember::client_url).collect();
    vec![
        "--datastore".into(),
        "etcd".into(),
        "--etcd-servers".into(),
        urls.join(","),
        "--etcd-cafile".into(),
        pki.ca().display().to_string(),
        "--etcd-certfile".into(),
        pki.client_crt().display().to_string(),
        "--etcd-keyfile".into(),
        pki.client_key().display().to_string(),
    ]
}

/// `etcdctl` arguments reaching the lab's etcd with the API servers' client certificate (pure),
/// e.g. followed by `endpoint health` or `get --prefix /registry/pods`.
pub fn etcdctl_argv(members: &[EtcdMember], pki: &EtcdPki) -> Vec<String> {
    let urls: Vec<String> = members.iter().map(EtcdMember::client_url).collect();
    vec![
        "etcdctl".into(),
        "--endpoints".into(),
        urls.join(","),
        "--cacert".into(),
        pki.ca().display().to_string(),
        "--cert".into(),
        pki.client_crt().display().to_string(),
        "--key".into(),
        pki.client_key().display().to_string(),
        "--dial-timeout".into(),
        "2s".into(),
        "--command-timeout".into(),
        "3s".into(),
    ]
}

/// `URL is healthy` / `URL is unhealthy` lines of `etcdctl endpoint health` → (url, healthy) (pure).
pub fn parse_health(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|l| {
            let (url, rest) = l.split_once(' ')?;
            if !url.starts_with("http") {
                return None;
            }
            let rest = rest.trim_start();
            if rest.starts_with("is healthy") {
                Some((url.to_string(), true))
            } else if rest.starts_with("is unhealthy") {
                Some((url.to_string(), false))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::{plan, LabOpts};

    fn p(n: usize) -> LabPlan {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        plan(&names, &LabOpts::default()).unwrap()
    }

    #[test]
    fn members_spread_over_nodes() {
        let m = etcd_members(&p(3), 3).unwrap();
        let urls: Vec<String> = m.iter().map(|m| format!("{}@{} {}", m.name, m.node, m.client_url())).collect();
        assert_eq!(urls, ["etcd1@n0 https://172.31.0.10:2379", "etcd2@n1 https://172.31.0.11:2379", "etcd3@n2 https://172.31.0.12:2379"]);
        let m = etcd_members(&p(2), 3).unwrap();
        assert_eq!((m[2].node.as_str(), m[2].client_port, m[2].peer_port), ("n0", 2389, 2390), "third member shares node 0 on other ports");
        assert!(etcd_members(&p(3), 2).is_err(), "even member counts are refused");
    }

    #[test]
    fn servers_on_the_first_nodes() {
        let s = servers(&p(3), 2).unwrap();
        assert_eq!(s.iter().map(|s| (s.name.as_str(), s.node.as_str())).collect::<Vec<_>>(), [("server", "n0"), ("server2", "n1")]);
        assert!(servers(&p(1), 2).is_err());
    }

    #[test]
    fn etcd_command_line() {
        let m = etcd_members(&p(3), 3).unwrap();
        let pki = EtcdPki { dir: "/lab/etcd/pki".into() };
        let a = etcd_argv(&m[1], &m, Path::new("/lab/etcd/etcd2"), &pki, "t").join(" ");
        assert_eq!(
            a,
            "etcd --name etcd2 --data-dir /lab/etcd/etcd2 --listen-client-urls https://172.31.0.11:2379 \
--advertise-client-urls https://172.31.0.11:2379 --listen-peer-urls https://172.31.0.11:2380 \
--initial-advertise-peer-urls https://172.31.0.11:2380 \
--initial-cluster etcd1=https://172.31.0.10:2380,etcd2=https://172.31.0.11:2380,etcd3=https://172.31.0.12:2380 \
--initial-cluster-state new --initial-cluster-token t --cert-file /lab/etcd/pki/etcd2.crt --key-file /lab/etcd/pki/etcd2.key \
--trusted-ca-file /lab/etcd/pki/ca.crt --client-cert-auth --peer-cert-file /lab/etcd/pki/etcd2.crt \
--peer-key-file /lab/etcd/pki/etcd2.key --peer-trusted-ca-file /lab/etcd/pki/ca.crt --peer-client-cert-auth --logger zap"
        );
        let f = server_etcd_flags(&m, &pki).join(" ");
        assert!(f.starts_with("--datastore etcd --etcd-servers https://172.31.0.10:2379,https://172.31.0.11:2379,https://172.31.0.12:2379 --etcd-cafile /lab/etcd/pki/ca.crt"), "{f}");
        let c = certs_argv(Path::new("/d"), Path::new("/lab/server"), &pki, &m).join(" ");
        assert_eq!(c, "/d certs etcd --data-dir /lab/server --out /lab/etcd/pki --member etcd1=172.31.0.10 --member etcd2=172.31.0.11 --member etcd3=172.31.0.12");
    }

    #[test]
    fn health_lines() {
        let t = "https://172.31.0.10:2379 is healthy: successfully committed proposal: took = 2.1ms\n\
https://172.31.0.11:2379 is unhealthy: failed to commit proposal: context deadline exceeded\nError: unhealthy cluster\n";
        assert_eq!(parse_health(t), vec![("https://172.31.0.10:2379".to_string(), true), ("https://172.31.0.11:2379".to_string(), false)]);
    }
}
