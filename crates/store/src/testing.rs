//! Real etcd processes on loopback, for tests of this and other crates (feature `testing`).
//!
//! [`EtcdCluster::start`] runs Debian's `/usr/bin/etcd` (package `etcd-server`; override with
//! `DARI_ETCD_BIN`) as 1..n members on 127.0.0.1 with free ports, data in a temp dir, and waits
//! until every member's `/health` says true (polling, on a plain-HTTP metrics listener so it works
//! with client-certificate auth too). Members are killed (SIGKILL) on [`EtcdCluster::stop`] and on
//! drop. Equivalent by hand:
//!
//! ```text
//! etcd --name m0 --data-dir D --listen-client-urls http://127.0.0.1:P --advertise-client-urls http://127.0.0.1:P \
//!      --listen-peer-urls http://127.0.0.1:Q --initial-advertise-peer-urls http://127.0.0.1:Q \
//!      --initial-cluster m0=http://127.0.0.1:Q --listen-metrics-urls http://127.0.0.1:M
//! ```

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::EtcdConfig;

/// How long a cluster may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of readiness and leader checks.
const POLL: Duration = Duration::from_millis(50);

/// Errors of [`EtcdCluster`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The etcd binary is not installed.
    #[error("etcd binary {path} not found: install the Debian package etcd-server (or set DARI_ETCD_BIN)")]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Creating the temp dir, a port or a log file failed.
    #[error("cannot prepare the etcd test cluster ({what})")]
    Io {
        /// What was being prepared.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Spawning a member failed.
    #[error("cannot start etcd member {member}")]
    Spawn {
        /// The member name.
        member: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A member exited while the cluster was starting.
    #[error("etcd member {member} exited during startup ({status}); its log ends with:\n{log}")]
    Exited {
        /// The member name.
        member: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// The cluster did not become healthy in time.
    #[error("etcd cluster not healthy within {timeout:?}; member logs end with:\n{logs}")]
    NotReady {
        /// The timeout.
        timeout: Duration,
        /// The end of each member's log.
        logs: String,
    },
    /// No live member reported being the leader in time.
    #[error("no live etcd member became leader within {timeout:?}")]
    NoLeader {
        /// The timeout.
        timeout: Duration,
    },
}

/// TLS of the etcd client listeners (peers stay plain HTTP on loopback).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate (must name 127.0.0.1 as an IP SAN).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The CA that client certificates must chain to (`--trusted-ca-file`).
    pub ca_file: PathBuf,
    /// `--client-cert-auth`: refuse clients without a certificate signed by `ca_file`.
    pub client_cert_auth: bool,
}

/// What [`EtcdCluster::start_with`] starts.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of members (1 or 3 in practice).
    pub members: usize,
    /// TLS on the client listeners (`https://` endpoints).
    pub tls: Option<ServerTls>,
}

struct Member {
    name: String,
    client_url: String,
    metrics: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster on loopback; killed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    // Dropped after the members are killed (field order does not matter: Drop kills first).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("DARI_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

fn tail(path: &PathBuf, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP/1.0 GET to 127.0.0.1:`port`, returning the whole response ("" on any failure).
async fn http_get(port: u16, path: &str) -> String {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(2), fetch).await {
        Ok(Ok(out)) => out,
        _ => String::new(),
    }
}

impl EtcdCluster {
    /// Starts `members` plain-HTTP members and waits until all are healthy.
    pub async fn start(members: usize) -> Result<EtcdCluster, ClusterError> {
        Self::start_with(ClusterOptions { members, tls: None }).await
    }

    /// Starts a cluster as described by `opts` and waits until all members are healthy. A member
    /// that loses a race for its port makes the whole start retry (up to 3 times).
    pub async fn start_with(opts: ClusterOptions) -> Result<EtcdCluster, ClusterError> {
        let bin = etcd_binary();
        if !bin.exists() {
            return Err(ClusterError::MissingBinary { path: bin });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = Self::spawn(&bin, &opts)?;
            match cluster.wait_healthy().await {
                Ok(()) => return Ok(cluster),
                Err(ClusterError::Exited { log, .. })
                    if attempt < 3 && log.contains("address already in use") =>
                {
                    tracing::debug!("etcd port race, restarting the test cluster");
                    cluster.stop();
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(bin: &PathBuf, opts: &ClusterOptions) -> Result<EtcdCluster, ClusterError> {
        let io = |what| move |source| ClusterError::Io { what, source };
        let dir = tempfile::Builder::new()
            .prefix("dari-etcd-")
            .tempdir()
            .map_err(io("temp dir"))?;
        let n = opts.members.max(1);
        // Hold every listener until all ports are chosen, so no two are the same.
        let listeners = (0..3 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("free port"))?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("free port"))?;
        drop(listeners);
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[3 * i + 1]);
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "dari-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir,
        };
        for i in 0..n {
            let name = format!("m{i}");
            let client_url = format!("{scheme}://127.0.0.1:{}", ports[3 * i]);
            let log = cluster.dir.path().join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log).map_err(io("log file"))?;
            let log_err = log_file.try_clone().map_err(io("log file"))?;
            let mut cmd = Command::new(bin);
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(cluster.dir.path().join(&name))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(&token)
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", ports[3 * i + 2]))
                .arg("--heartbeat-interval")
                .arg("50")
                .arg("--election-timeout")
                .arg("500")
                .arg("--logger")
                .arg("zap")
                .arg("--log-level")
                .arg("warn")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file))
                .stderr(Stdio::from(log_err));
            if let Some(tls) = &opts.tls {
                cmd.arg("--cert-file")
                    .arg(&tls.cert_file)
                    .arg("--key-file")
                    .arg(&tls.key_file)
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca_file);
                if tls.client_cert_auth {
                    cmd.arg("--client-cert-auth");
                }
            }
            let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
                member: name.clone(),
                source,
            })?;
            cluster.members.push(Member {
                name,
                client_url,
                metrics: ports[3 * i + 2],
                log,
                child: Some(child),
            });
        }
        Ok(cluster)
    }

    fn check_alive(&mut self) -> Result<(), ClusterError> {
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    return Err(ClusterError::Exited {
                        member: m.name.clone(),
                        status: status.to_string(),
                        log: tail(&m.log, 20),
                    });
                }
            }
        }
        Ok(())
    }

    async fn wait_healthy(&mut self) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let mut healthy = true;
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                if !http_get(m.metrics, "/health")
                    .await
                    .contains("\"health\":\"true\"")
                {
                    healthy = false;
                    break;
                }
            }
            if healthy {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let logs = self
                    .members
                    .iter()
                    .map(|m| format!("--- {}:\n{}", m.name, tail(&m.log, 10)))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(ClusterError::NotReady {
                    timeout: READY_TIMEOUT,
                    logs,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Client URLs of all members (dead ones included: a client should cope).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Client URLs of the members still running.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// An [`EtcdConfig`] for all members, without TLS files.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            ..Default::default()
        }
    }

    /// The index of the live member that is leader, waiting (up to 10 s) for an election.
    pub async fn leader(&self) -> Result<usize, ClusterError> {
        let timeout = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let metrics = http_get(m.metrics, "/metrics").await;
                if metrics
                    .lines()
                    .any(|l| l.trim() == "etcd_server_is_leader 1")
                {
                    return Ok(i);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::NoLeader { timeout });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs the current leader and returns its index.
    pub async fn kill_leader(&mut self) -> Result<usize, ClusterError> {
        let i = self.leader().await?;
        self.kill(i);
        Ok(i)
    }

    /// SIGKILLs member `i` (if running) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// The directory holding the members' data and logs (`m0.log` ...).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
