//! `dari lab up|down|status|exec|images|kill-agent|start-agent`: the whole lab, from [`crate::plan`] to processes.
//!
//! Layout of the lab directory (default `/var/lib/dari-lab`):
//!
//! ```text
//! state.json          the plan and options (written before anything is created, so `down`
//!                     works after a crash at any point)
//! kubeconfig          admin kubeconfig for the host: https://127.0.0.1:6443 (the forwarder)
//! server/             dari server --data-dir (admin.kubeconfig, node-token, datastore)
//! server2/ ...        further servers (`--servers N`, etcd only): a copy of server/pki and node-token
//! etcd/pki/           `dari certs etcd` output (ca.crt, etcdN.crt/.key, apiserver-etcd-client.crt/.key)
//! etcd/etcdN/         etcd member data (`--datastore etcd`)
//! nodes/NAME/         dari agent --data-dir (its containerd root/state/socket)
//! images/*.tar        stand-in images
//! logs/*.log pids/*.pid
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::forward::{Dialer, ForwardArgs};
use crate::ha::{self, EtcdMember, EtcdPki, ServerInfo};
use crate::net::{self, netns_path, RealNet};
use crate::plan::{self, LabOpts, LabPlan, NodePlan};
use crate::procs::{self, ProcSpec};

/// Default lab directory.
pub const DEFAULT_DIR: &str = "/var/lib/dari-lab";
/// The API server port inside the lab.
pub const API_PORT: u16 = 6443;

/// `dari lab ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: LabCmd,
}

/// The lab subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LabCmd {
    /// Build a multi-node cluster on this machine (network namespaces, a hub bridge, dari per node).
    Up(LabUpArgs),
    /// Remove every namespace, link, mount, process and cgroup the lab made (safe to repeat).
    Down(LabDirArgs),
    /// Show the lab's nodes, processes and how to reach it.
    Status(LabDirArgs),
    /// Run a command inside a node's network namespace: `dari lab exec NODE -- CMD...`.
    Exec(LabExecArgs),
    /// Build the stand-in images only.
    Images(LabImagesArgs),
    /// The API forwarder process (started by `up`).
    #[command(hide = true)]
    Forward(ForwardArgs),
    /// Kill a node's agent and its containerd with SIGKILL (pods and their shims keep running):
    /// the node goes NotReady once its Lease expires. `dari lab start-agent` brings it back.
    KillAgent(LabNodeArgs),
    /// Start a node's agent again, with the command line `up` used (after `kill-agent` or a crash).
    StartAgent(LabNodeArgs),
}

/// `--dir` and a node name.
#[derive(Debug, Clone, clap::Args)]
pub struct LabNodeArgs {
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Node name.
    pub node: String,
}

/// Options of `dari lab up`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabUpArgs {
    /// Number of workers (nodes: lab-control-plane, lab-worker, lab-worker2, ...).
    #[arg(long, default_value_t = 3, conflicts_with = "nodes")]
    pub workers: usize,
    /// Node names, the first is the control plane (e.g. myk8s-control-plane,myk8s-worker,...).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Datastore of the API server(s): sqlite (embedded in the one server) or etcd (a
    /// `--etcd-members` etcd cluster inside the lab, TLS with client-certificate auth).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "etcd"])]
    pub datastore: String,
    /// Number of `dari server`s, on the first nodes (more than one needs `--datastore etcd`);
    /// agents and the 127.0.0.1 forwarder fail over between them.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// Number of etcd members with `--datastore etcd` (odd), member i on node i mod nodes.
    #[arg(long, default_value_t = 3)]
    pub etcd_members: usize,
    /// Pod network backend between nodes: vxlan (the default: an overlay over UDP 8472 on the
    /// lab LAN, pod MTU = LAN MTU - 50, what nodes on different links need) or host-gw (plain
    /// routes via the node IPs, possible because all lab nodes share one LAN).
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw"])]
    pub backend: String,
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Namespace name prefix.
    #[arg(long, default_value = "dari")]
    pub prefix: String,
    /// The nodes' LAN.
    #[arg(long, default_value = "172.31.0.0/24")]
    pub subnet: Ipv4Net,
    /// LAN MTU.
    #[arg(long, default_value_t = 1400)]
    pub mtu: u32,
    /// Host address of the API forwarder.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub api_listen: SocketAddr,
    /// Service ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: Ipv4Net,
    /// Pod network of the cluster.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// The dari binary to run in the nodes (default: this one).
    #[arg(long)]
    pub dari: Option<PathBuf>,
    /// Do not build and import the stand-in images.
    #[arg(long)]
    pub no_images: bool,
    /// Network only: no server, agents or forwarder (for debugging the topology).
    #[arg(long)]
    pub network_only: bool,
    /// Do not wait for the nodes to be Ready (kubectl) at the end.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for each component.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

impl Default for LabUpArgs {
    fn default() -> Self {
        LabUpArgs {
            workers: 3,
            nodes: vec![],
            datastore: "sqlite".into(),
            servers: 1,
            etcd_members: 3,
            backend: "vxlan".into(),
            dir: DEFAULT_DIR.into(),
            prefix: "dari".into(),
            subnet: LabOpts::default().subnet,
            mtu: 1400,
            api_listen: SocketAddr::from(([127, 0, 0, 1], API_PORT)),
            service_cidr: Ipv4Net::new([10, 96, 0, 0].into(), 12).unwrap_or_default(),
            cluster_cidr: Ipv4Net::new([10, 244, 0, 0].into(), 16).unwrap_or_default(),
            dari: None,
            no_images: false,
            network_only: false,
            no_wait: false,
            timeout: 60,
        }
    }
}

/// `--dir` for down and status.
#[derive(Debug, Clone, clap::Args)]
pub struct LabDirArgs {
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// `dari lab exec NODE -- CMD...`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabExecArgs {
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Node name.
    pub node: String,
    /// Command and arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// `dari lab images`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabImagesArgs {
    /// Output directory.
    #[arg(long, default_value = "/var/lib/dari-lab/images")]
    pub out: PathBuf,
}

/// What `up` saves and `down`/`status`/`exec` read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// The topology.
    pub plan: LabPlan,
    /// The dari binary the nodes run.
    pub dari: PathBuf,
    /// Host address of the API forwarder.
    pub api_listen: SocketAddr,
    /// Pod network backend.
    pub backend: String,
    /// Each node's `dari agent` command line (for `start-agent`).
    #[serde(default)]
    pub agents: std::collections::BTreeMap<String, Vec<String>>,
    /// The `dari server`s (empty in a state written by an older dari: one, `server`, on the
    /// first node).
    #[serde(default)]
    pub servers: Vec<ServerInfo>,
    /// The etcd members (empty with sqlite).
    #[serde(default)]
    pub etcd: Vec<EtcdMember>,
}

impl LabState {
    /// The servers, also for a state from before `--servers` existed.
    pub fn servers(&self) -> Vec<ServerInfo> {
        if self.servers.is_empty() {
            let cp = self.plan.control_plane();
            vec![ServerInfo { name: "server".into(), node: cp.name.clone(), ip: cp.ip() }]
        } else {
            self.servers.clone()
        }
    }
}

/// The lab's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDirs {
    /// Root.
    pub root: PathBuf,
}

impl LabDirs {
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// The host kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    /// The server's data dir.
    pub fn server(&self) -> PathBuf {
        self.root.join("server")
    }
    /// The data dir of the server named `name` (`server`, `server2`, ...).
    pub fn server_named(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// etcd data dirs and certificates.
    pub fn etcd(&self) -> PathBuf {
        self.root.join("etcd")
    }
    /// The certificates `dari certs etcd` writes.
    pub fn etcd_pki(&self) -> EtcdPki {
        EtcdPki { dir: self.etcd().join("pki") }
    }
    /// A node's agent data dir.
    pub fn node(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }
    /// A node's containerd socket (the agent's layout: DATA/containerd/containerd.sock).
    pub fn containerd_socket(&self, name: &str) -> PathBuf {
        self.node(name).join("containerd").join("containerd.sock")
    }
    /// Image archives.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
}

/// Node names for `--workers N`.
pub fn default_nodes(workers: usize) -> Vec<String> {
    let mut v = vec!["lab-control-plane".to_string()];
    for i in 0..workers {
        v.push(if i == 0 { "lab-worker".into() } else { format!("lab-worker{}", i + 1) });
    }
    v
}

/// `dari server` inside the control-plane namespace (pure).
pub fn server_argv(dari: &Path, plan: &LabPlan, dirs: &LabDirs, service_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Vec<String> {
    server_argv_on(dari, plan.control_plane().ip(), &dirs.server(), service_cidr, cluster_cidr)
}

/// `dari server` on the node with address `ip`, data in `data_dir` (pure); datastore flags
/// (`ha::server_etcd_flags`) go after it.
pub fn server_argv_on(dari: &Path, ip: std::net::Ipv4Addr, data_dir: &Path, service_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Vec<String> {
    let ip = ip.to_string();
    vec![
        dari.display().to_string(),
        "server".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--bind-address".into(),
        ip.clone(),
        "--secure-port".into(),
        API_PORT.to_string(),
        "--advertise-address".into(),
        ip,
        "--service-cluster-ip-range".into(),
        service_cidr.to_string(),
        "--cluster-cidr".into(),
        cluster_cidr.to_string(),
        "--tls-san".into(),
        "127.0.0.1".into(),
    ]
}

/// `dari agent` for one node (pure), with the flags of `dari_agent::AgentArgs` and
/// `dari_net::NetArgs`: the agent runs inside the node namespace (through nsenter) and is told
/// so for its containerd too. It uses the admin kubeconfig until the token join flow exists; the
/// pod MTU is the LAN MTU minus the VXLAN overhead (50) with the vxlan backend; the cluster and
/// service ranges are the lab's (egress masquerade and the service proxy need them).
pub fn agent_argv(dari: &Path, plan: &LabPlan, node: &NodePlan, dirs: &LabDirs, backend: &str, cluster_cidr: Ipv4Net, service_cidr: Ipv4Net) -> Vec<String> {
    let mtu = if backend == "vxlan" { plan.opts.mtu.saturating_sub(50) } else { plan.opts.mtu };
    vec![
        dari.display().to_string(),
        "agent".into(),
        "--server".into(),
        format!("https://{}:{}", plan.control_plane().ip(), API_PORT),
        "--kubeconfig".into(),
        dirs.server().join("admin.kubeconfig").display().to_string(),
        "--node-name".into(),
        node.name.clone(),
        "--node-ip".into(),
        node.ip().to_string(),
        "--data-dir".into(),
        dirs.node(&node.name).display().to_string(),
        "--mtu".into(),
        mtu.to_string(),
        "--backend".into(),
        backend.to_string(),
        "--cluster-cidr".into(),
        cluster_cidr.to_string(),
        "--service-cidr".into(),
        service_cidr.to_string(),
        "--containerd-netns".into(),
        netns_path(&node.netns).display().to_string(),
        // logs/exec/port-forward, proxied by the API server from the control plane over the lab LAN
        "--stream-address".into(),
        format!("{}:10250", node.ip()),
        // the seed ingress names class `nginx`: every node's ingress proxy serves it too
        "--ingress-class".into(),
        "nginx".into(),
    ]
}

/// `argv` with the value of `--server` replaced by the servers' URLs, comma separated (pure):
/// an agent given several servers runs its own failover load balancer.
pub fn with_servers(mut argv: Vec<String>, servers: &[ServerInfo]) -> Vec<String> {
    let urls: Vec<String> = servers.iter().map(|s| format!("https://{}:{API_PORT}", s.ip)).collect();
    if let Some(i) = argv.iter().position(|a| a == "--server") {
        if let Some(v) = argv.get_mut(i + 1) {
            *v = urls.join(",");
        }
    }
    argv
}

/// The forwarder process: `dari lab forward ARGS`, or `dari-lab forward ARGS` when this is the
/// standalone `dari-lab` binary.
fn forwarder_argv(dari: &Path, args: &[String]) -> Vec<String> {
    let me = std::env::current_exe().ok();
    let mut v = match me {
        Some(exe) if exe.file_name().is_some_and(|n| n == "dari-lab") => vec![exe.display().to_string(), "forward".into()],
        _ => vec![dari.display().to_string(), "lab".into(), "forward".into()],
    };
    v.extend(args.iter().cloned());
    v
}

/// The in-lab resolver on the hub (pure): `dnsmasq` answering the node names (`NAME` and
/// `NAME.lab`), `hub.lab` and `outside.lab` (the hub address), and NXDOMAIN for everything
/// else: no upstream, so no query ever leaves the host. The cluster DNS uses it as upstream.
pub fn dns_argv(plan: &LabPlan) -> Vec<String> {
    let hub = plan.hub.addr.addr();
    let mut v: Vec<String> = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file=",
        "--log-facility=-",
        "--user=root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("--listen-address={hub}"));
    v.push(format!("--host-record=hub.lab,outside.lab,{hub}"));
    for n in &plan.nodes {
        v.push(format!("--host-record={},{}.lab,{}", n.name, n.name, n.ip()));
    }
    v.push("--address=/#/".into());
    v
}

/// The admin kubeconfig with every `server:` pointed at `url` (pure, line based: the file is
/// the one `dari_pki` renders).
pub fn rewrite_kubeconfig(text: &str, url: &str) -> String {
    let mut o = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("server:") {
            let indent = &line[..line.len() - t.len()];
            o.push_str(&format!("{indent}server: {url}\n"));
        } else {
            o.push_str(line);
            o.push('\n');
        }
    }
    o
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line, prefixed with the seconds since the command started (where `up` spends its time).
fn progress(msg: &str) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("{t:5.1}s {msg}");
}

fn read_state(dirs: &LabDirs) -> Result<Option<LabState>> {
    let p = dirs.state();
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| LabError::State { path: p, source: e }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LabError::io("read", p, e)),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| LabError::Process {
        what: "lab worker thread".into(),
        detail: e.to_string(),
        source: None,
    })?
}

async fn wait_tcp(what: &str, dialer: Option<&Dialer>, addr: SocketAddr, timeout: Duration, pid: Option<u32>, log: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ok = match dialer {
            Some(d) => d.connect(addr).await.is_ok(),
            None => tokio::net::TcpStream::connect(addr).await.is_ok(),
        };
        if ok {
            return Ok(());
        }
        if let Some(p) = pid {
            if !procs::alive(p as i32) {
                return Err(LabError::Process {
                    what: what.into(),
                    detail: format!("exited before listening on {addr}; log: {}\n{}", log.display(), tail(log, 15)),
                    source: None,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Process {
                what: what.into(),
                detail: format!("not listening on {addr} after {}s; log: {}\n{}", timeout.as_secs(), log.display(), tail(log, 15)),
                source: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `up` built.
#[derive(Debug, Clone)]
pub struct LabInfo {
    /// The saved state.
    pub state: LabState,
    /// The host kubeconfig (absent with `--network-only`).
    pub kubeconfig: Option<PathBuf>,
}

/// `dari lab up`. On failure everything made so far is torn down again.
pub async fn up(args: LabUpArgs) -> Result<LabInfo> {
    let t0 = *STARTED.get_or_init(Instant::now);
    let dirs = LabDirs { root: args.dir.clone() };
    let nodes = if args.nodes.is_empty() { default_nodes(args.workers) } else { args.nodes.clone() };
    let opts = LabOpts { prefix: args.prefix.clone(), subnet: args.subnet, mtu: args.mtu, ..LabOpts::default() };
    let plan = plan::plan(&nodes, &opts)?;
    if args.servers > 1 && args.datastore != "etcd" {
        return Err(LabError::plan(format!("--servers {} needs --datastore etcd (SQLite is one server's own file)", args.servers)));
    }
    let servers = ha::servers(&plan, args.servers)?;
    let etcd = if args.datastore == "etcd" { ha::etcd_members(&plan, args.etcd_members)? } else { Vec::new() };
    if let Some(old) = read_state(&dirs)? {
        if old.plan.namespaces().iter().any(|n| netns_path(n).exists()) {
            return Err(LabError::plan(format!("a lab is already up in {} (run `dari lab down --dir {}` first)", dirs.root.display(), dirs.root.display())));
        }
        progress("cleaning up what a previous lab left behind");
        down_dirs(&dirs).await?;
    }
    for ns in plan.namespaces() {
        if netns_path(&ns).exists() {
            return Err(LabError::plan(format!("network namespace {ns} exists already (another lab with prefix {}?)", opts.prefix)));
        }
    }
    let dari = match &args.dari {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| LabError::io("find own binary", "/proc/self/exe", e))?,
    };
    let agents = plan
        .nodes
        .iter()
        .map(|n| (n.name.clone(), with_servers(agent_argv(&dari, &plan, n, &dirs, &args.backend, args.cluster_cidr, args.service_cidr), &servers)))
        .collect();
    let state = LabState { plan: plan.clone(), dari: dari.clone(), api_listen: args.api_listen, backend: args.backend.clone(), agents, servers, etcd };
    std::fs::create_dir_all(&dirs.root).map_err(|e| LabError::io("create", &dirs.root, e))?;
    let json = serde_json::to_vec_pretty(&state).map_err(|e| LabError::State { path: dirs.state(), source: e })?;
    std::fs::write(dirs.state(), json).map_err(|e| LabError::io("write", dirs.state(), e))?;

    match up_inner(&args, &dirs, &state, t0).await {
        Ok(kubeconfig) => Ok(LabInfo { state, kubeconfig }),
        Err(e) => {
            progress(&format!("lab up failed: {e}; tearing down"));
            if let Err(e2) = down_dirs(&dirs).await {
                progress(&format!("teardown after failure also failed: {e2}"));
            }
            Err(e)
        }
    }
}

async fn up_inner(args: &LabUpArgs, dirs: &LabDirs, state: &LabState, t0: Instant) -> Result<Option<PathBuf>> {
    let plan = state.plan.clone();
    let timeout = Duration::from_secs(args.timeout);
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    progress(&format!("[1/6] network: hub {} ({} {}), nodes {}", plan.hub.netns, plan.hub.bridge, plan.hub.addr, names.join(", ")));
    let p2 = plan.clone();
    blocking(move || {
        let mut n = RealNet::new()?;
        net::apply(&p2, &mut n)?;
        // The nodes share the host's mount namespace, so containerd reads the host's resolv.conf,
        // whose resolvers the lab cannot reach (nothing leaves the lab): make them unreachable in
        // each node so a lookup (an image pull from a registry that is not there) fails at once
        // instead of after a 10 s timeout. Pods use the cluster DNS and are not affected.
        let lan = p2.hub.addr.trunc();
        let servers: Vec<std::net::Ipv4Addr> = net::resolv_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !lan.contains(ip))
            .collect();
        for node in &p2.nodes {
            for ip in &servers {
                n.unreachable_route(&node.netns, *ip)?;
            }
        }
        Ok(())
    })
    .await?;
    for n in &plan.nodes {
        progress(&format!("      {:<24} netns {:<28} eth0 {}", n.name, n.netns, n.addr));
    }
    if args.network_only {
        progress(&format!("network ready in {:.1}s (--network-only: no processes)", t0.elapsed().as_secs_f64()));
        return Ok(None);
    }
    let hub_ip = plan.hub.addr.addr();
    progress(&format!("[2/6] in-lab services on the hub {hub_ip}: DNS :53 (dnsmasq, lab names only, NXDOMAIN otherwise)"));
    let dns = ProcSpec { name: "dns".into(), netns: Some(netns_path(&plan.hub.netns)), argv: dns_argv(&plan), env: vec![] };
    procs::spawn(&dns, &dirs.root)?;
    let hub_dialer = Dialer::new(&netns_path(&plan.hub.netns))?;
    if let Some(applet) = crate::images::find_applet() {
        let w = ProcSpec {
            name: "outside-whoami".into(),
            netns: Some(netns_path(&plan.hub.netns)),
            argv: vec![applet.display().to_string(), "whoami".into(), "--port".into(), "80".into()],
            env: vec![],
        };
        let pid = procs::spawn(&w, &dirs.root)?;
        wait_tcp("outside whoami", Some(&hub_dialer), SocketAddr::from((hub_ip, 80)), timeout, Some(pid), &dirs.root.join("logs/outside-whoami.log")).await?;
        progress(&format!("      whoami on http://{hub_ip}:80 (outside the cluster, inside the lab: RemoteAddr shows masquerading)"));
    } else {
        progress("      no outside whoami: dari-applet not found (build it: cargo build -p dari-lab --bin dari-applet)");
    }
    let cp = plan.control_plane().clone();
    let images = if args.no_images {
        None
    } else {
        progress("[3/6] stand-in images (lab only: a real cluster pulls the real images)");
        let out = dirs.images();
        Some(blocking(move || crate::images::build_images_with(&out, &crate::images::default_inputs()?, &mut |l| progress(l))).await?)
    };

    let servers = state.servers();
    let mut datastore_flags = Vec::new();
    if !state.etcd.is_empty() {
        start_etcd(state, dirs, timeout).await?;
        datastore_flags = ha::server_etcd_flags(&state.etcd, &dirs.etcd_pki());
    }
    let store = if state.etcd.is_empty() { "sqlite".to_string() } else { format!("etcd ({} members)", state.etcd.len()) };
    for (i, srv) in servers.iter().enumerate() {
        let node = plan.node(&srv.node).cloned().ok_or_else(|| LabError::plan(format!("server {} on unknown node {}", srv.name, srv.node)))?;
        let data = dirs.server_named(&srv.name);
        progress(&format!("[4/6] control plane: dari server {}/{} ({}) on {}:{API_PORT} in {}, datastore {store}", i + 1, servers.len(), srv.name, srv.ip, node.netns));
        if i > 0 {
            // a further server shares the first one's CA, certificates and join token
            let (from, to) = (dirs.server(), data.clone());
            blocking(move || copy_server_identity(&from, &to)).await?;
            progress(&format!("      {} shares {}/pki and node-token", srv.name, dirs.server().display()));
        }
        let mut argv = server_argv_on(&state.dari, srv.ip, &data, args.service_cidr, args.cluster_cidr);
        argv.extend(datastore_flags.iter().cloned());
        let spec = ProcSpec { name: srv.name.clone(), netns: Some(netns_path(&node.netns)), argv, env: vec![] };
        let pid = procs::spawn(&spec, &dirs.root)?;
        let dialer = Dialer::new(&netns_path(&node.netns))?;
        let log = dirs.root.join(format!("logs/{}.log", srv.name));
        wait_tcp(&format!("dari server {}", srv.name), Some(&dialer), SocketAddr::from((srv.ip, API_PORT)), timeout, Some(pid), &log).await?;
        if i == 0 {
            let (a2, t2) = (dirs.server().join("admin.kubeconfig"), dirs.server().join("node-token"));
            blocking(move || procs::wait_for("admin.kubeconfig and node-token", timeout, || a2.exists() && t2.exists())).await?;
        }
    }
    let admin = dirs.server().join("admin.kubeconfig");
    // one server: dial from its node; several: from the hub, which reaches them all
    let (fwd_ns, fwd_ns_name) = if servers.len() > 1 { (netns_path(&plan.hub.netns), plan.hub.netns.clone()) } else { (netns_path(&cp.netns), cp.netns.clone()) };
    let upstreams: Vec<String> = servers.iter().map(|s| SocketAddr::from((s.ip, API_PORT)).to_string()).collect();
    let fwd = ProcSpec {
        name: "forward".into(),
        netns: None,
        argv: forwarder_argv(&state.dari, &[
            "--netns".into(),
            fwd_ns.display().to_string(),
            "--listen".into(),
            state.api_listen.to_string(),
            "--upstream".into(),
            upstreams.join(","),
        ]),
        env: vec![],
    };
    let fpid = procs::spawn(&fwd, &dirs.root)?;
    wait_tcp("API forwarder", None, state.api_listen, timeout, Some(fpid), &dirs.root.join("logs/forward.log")).await?;
    let text = std::fs::read_to_string(&admin).map_err(|e| LabError::io("read", &admin, e))?;
    let kc = dirs.kubeconfig();
    std::fs::write(&kc, rewrite_kubeconfig(&text, &format!("https://{}", state.api_listen))).map_err(|e| LabError::io("write", &kc, e))?;
    if servers.len() > 1 {
        progress(&format!("      API on https://{} (forwarded from {fwd_ns_name} to the first of {} that accepts)", state.api_listen, upstreams.join(", ")));
    } else {
        progress(&format!("      API on https://{} (forwarded into {fwd_ns_name})", state.api_listen));
    }

    if servers.len() == 1 {
        start_cluster_dns(args, dirs, state, &admin, &kc).await?;
    }

    progress(&format!("[5/6] agents ({} backend)", state.backend));
    let mut agents = Vec::new();
    for n in &plan.nodes {
        let spec = ProcSpec {
            name: format!("agent-{}", n.name),
            netns: Some(netns_path(&n.netns)),
            argv: state.agents.get(&n.name).cloned().unwrap_or_default(),
            env: vec![],
        };
        std::fs::create_dir_all(dirs.node(&n.name)).map_err(|e| LabError::io("create", dirs.node(&n.name), e))?;
        agents.push((n.clone(), procs::spawn(&spec, &dirs.root)?));
    }
    if let Some(archives) = images {
        // one import per node, all at once (sequential imports were most of `up`'s time)
        let imports = agents.iter().map(|(n, pid)| {
            let sock = dirs.containerd_socket(&n.name);
            let log = dirs.root.join(format!("logs/agent-{}.log", n.name));
            let (pid, archives, name) = (*pid, archives.clone(), n.name.clone());
            async move {
                let s2 = sock.clone();
                // accepting, not only there: containerd binds the socket a moment before it
                // listens, and an import that connects in between is refused
                let accepting = move || std::os::unix::net::UnixStream::connect(&s2).is_ok();
                let r = blocking(move || procs::wait_for("containerd socket", timeout, || accepting() || !procs::alive(pid as i32))).await;
                if r.is_err() || !sock.exists() {
                    return Err(LabError::Process {
                        what: format!("agent {name}"),
                        detail: format!("no containerd socket at {}; log {}:\n{}", sock.display(), log.display(), tail(&log, 15)),
                        source: None,
                    });
                }
                let n_images = archives.len();
                // containerd's content and images API (dari_agent::import_image); CRI unpacks an
                // image's layers when a container first uses it, so unused stand-ins cost no unpack
                for a in &archives {
                    dari_agent::import_image(&sock, a).await.map_err(|e| LabError::Process {
                        what: "image import".into(),
                        detail: format!("{} into {}: {}", a.display(), sock.display(), e.with_causes()),
                        source: None,
                    })?;
                }
                progress(&format!("      {name:<24} agent pid {pid}, {n_images} images imported"));
                Ok(())
            }
        });
        for r in futures::future::join_all(imports).await {
            r?;
        }
    }
    if servers.len() > 1 {
        // with several servers the DNS server watches the API through the control-plane
        // agent's failover load balancer (same namespace, 127.0.0.1), not through one server
        let lb = dirs.node(&cp.name).join("lb.kubeconfig");
        let l2 = lb.clone();
        blocking(move || procs::wait_for("the control-plane agent's lb.kubeconfig", timeout, || l2.exists())).await?;
        start_cluster_dns(args, dirs, state, &lb, &kc).await?;
    }
    if args.no_wait {
        progress("      not waiting for nodes to be Ready (--no-wait)");
    } else {
        let t = Instant::now();
        wait_nodes_ready(&kc, &plan, &agents, dirs, timeout).await?;
        progress(&format!("      all {} nodes Ready after {:.1}s", plan.nodes.len(), t.elapsed().as_secs_f64()));
    }
    progress(&format!("[6/6] lab up in {:.1}s", t0.elapsed().as_secs_f64()));
    print_usage(dirs, state);
    Ok(Some(kc))
}

/// Cluster DNS: `dari dns` on the control plane, forwarding to the lab's own resolver on the hub
/// (never a public one), published as the kube-dns Service at the 10th service IP. `api` is the
/// kubeconfig it watches the API with.
async fn start_cluster_dns(args: &LabUpArgs, dirs: &LabDirs, state: &LabState, api: &Path, kc: &Path) -> Result<()> {
    let plan = &state.plan;
    let cp = plan.control_plane();
    let dns_ip = cluster_dns_ip(args.service_cidr).ok_or_else(|| LabError::Process { what: "cluster DNS".into(), detail: format!("service range {} has no 10th address", args.service_cidr), source: None })?;
    let dns_cfg = dirs.root.join("cluster-dns.yaml");
    std::fs::write(&dns_cfg, format!("forward: [\"{}\"]\n", plan.hub.addr.addr())).map_err(|e| LabError::io("write", &dns_cfg, e))?;
    let cdns = ProcSpec {
        name: "cluster-dns".into(),
        netns: Some(netns_path(&cp.netns)),
        argv: vec![
            state.dari.display().to_string(),
            "dns".into(),
            "--dns-listen".into(),
            format!("{}:53", cp.ip()),
            "--dns-metrics-listen".into(),
            format!("{}:9153", cp.ip()),
            "--dns-config".into(),
            dns_cfg.display().to_string(),
            "--dns-kubeconfig".into(),
            api.display().to_string(),
        ],
        env: vec![],
    };
    procs::spawn(&cdns, &dirs.root)?;
    let manifest = kube_dns_manifest(dns_ip, cp.ip());
    let kc2 = kc.to_path_buf();
    blocking(move || kubectl_apply(&kc2, &manifest)).await?;
    progress(&format!("      cluster DNS: kube-dns {dns_ip} -> dari dns on {}:53 (upstream {}), API via {}", cp.ip(), plan.hub.addr.addr(), api.display()));
    Ok(())
}

/// Copies what every server of one cluster shares: `pki/` (CA, admin and serving certificates;
/// a server re-issues its serving certificate when its own address is missing) and `node-token`.
fn copy_server_identity(from: &Path, to: &Path) -> Result<()> {
    let (pki_from, pki_to) = (from.join("pki"), to.join("pki"));
    std::fs::create_dir_all(&pki_to).map_err(|e| LabError::io("create", &pki_to, e))?;
    let rd = std::fs::read_dir(&pki_from).map_err(|e| LabError::io("read", &pki_from, e))?;
    for e in rd {
        let e = e.map_err(|e| LabError::io("read", &pki_from, e))?;
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let dst = pki_to.join(e.file_name());
            std::fs::copy(e.path(), &dst).map_err(|err| LabError::io("copy", &dst, err))?;
        }
    }
    let dst = to.join("node-token");
    std::fs::copy(from.join("node-token"), &dst).map_err(|e| LabError::io("copy", &dst, e))?;
    Ok(())
}

/// `etcdctl endpoint health` against every member, run in the hub namespace (which reaches them
/// all): (client URL, healthy) per member, or the error text when etcdctl could not run.
pub async fn etcd_health(plan: &LabPlan, members: &[EtcdMember], pki: &EtcdPki) -> std::result::Result<Vec<(String, bool)>, String> {
    let mut argv = ha::etcdctl_argv(members, pki);
    argv.extend(["endpoint".to_string(), "health".to_string()]);
    let spec = ProcSpec { name: "etcdctl".into(), netns: Some(netns_path(&plan.hub.netns)), argv, env: vec![] };
    let line = procs::command_line(&spec);
    let out = tokio::process::Command::new(&line[0])
        .args(&line[1..])
        .env("ETCDCTL_API", "3")
        .output()
        .await
        .map_err(|e| format!("etcdctl: {e} (apt-get install etcd-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let h = ha::parse_health(&text);
    if h.is_empty() {
        return Err(text.trim().to_string());
    }
    Ok(h)
}

/// Certificates from the first server's CA (`dari certs etcd`, which creates the CA if there
/// is none yet), one etcd per member in its node's namespace, then waits until all are healthy.
async fn start_etcd(state: &LabState, dirs: &LabDirs, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    let pki = dirs.etcd_pki();
    let members = state.etcd.clone();
    // a new cluster every time: an old member's data would not join `--initial-cluster-state new`
    let etcd_dir = dirs.etcd();
    if etcd_dir.exists() {
        std::fs::remove_dir_all(&etcd_dir).map_err(|e| LabError::io("remove", &etcd_dir, e))?;
    }
    std::fs::create_dir_all(dirs.server()).map_err(|e| LabError::io("create", dirs.server(), e))?;
    let certs = ha::certs_argv(&state.dari, &dirs.server(), &pki, &members);
    let out = tokio::process::Command::new(&certs[0])
        .args(&certs[1..])
        .output()
        .await
        .map_err(|e| LabError::Process { what: "dari certs etcd".into(), detail: certs.join(" "), source: Some(e) })?;
    if !out.status.success() {
        return Err(LabError::Process { what: "dari certs etcd".into(), detail: String::from_utf8_lossy(&out.stderr).into_owned(), source: None });
    }
    progress(&format!("[4/6] etcd: {} members, TLS with client-certificate auth (certificates from {}/pki by `dari certs etcd`, in {})", members.len(), dirs.server().display(), pki.dir.display()));
    if !Path::new("/usr/bin/etcd").exists() && which("etcd").is_none() {
        return Err(LabError::Process { what: "etcd".into(), detail: "etcd not found (apt-get install etcd-server etcd-client)".into(), source: None });
    }
    let token = format!("{}-etcd", state.plan.opts.prefix);
    for m in &members {
        let node = state.plan.node(&m.node).ok_or_else(|| LabError::plan(format!("etcd member {} on unknown node {}", m.name, m.node)))?;
        let data = etcd_dir.join(&m.name);
        let spec = ProcSpec { name: m.name.clone(), netns: Some(netns_path(&node.netns)), argv: ha::etcd_argv(m, &members, &data, &pki, &token), env: vec![] };
        let pid = procs::spawn(&spec, &dirs.root)?;
        progress(&format!("      {:<8} {:<24} {} (peers {}), pid {pid}", m.name, m.node, m.client_url(), m.peer_url()));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let h = etcd_health(&state.plan, &members, &pki).await;
        if let Ok(h) = &h {
            if h.len() == members.len() && h.iter().all(|(_, ok)| *ok) {
                break;
            }
        }
        let alive = procs::pidfile_pids(&dirs.root);
        if let Some(m) = members.iter().find(|m| !alive.iter().any(|(n, _)| *n == m.name)) {
            let log = dirs.root.join(format!("logs/{}.log", m.name));
            return Err(LabError::Process { what: format!("etcd member {}", m.name), detail: format!("exited; log {}:\n{}", log.display(), tail(&log, 15)), source: None });
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout { what: format!("etcd healthy (last: {h:?})"), secs: timeout.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress(&format!("      etcd healthy after {:.1}s", t.elapsed().as_secs_f64()));
    Ok(())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|p| p.is_file()))
}

/// `NAME=True|False|Unknown` per node from `kubectl get nodes` (pure parser of the jsonpath output).
pub fn parse_ready(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.trim().split_once('=')).map(|(n, r)| (n.to_string(), r.to_string())).collect()
}

async fn wait_nodes_ready(kc: &Path, plan: &LabPlan, agents: &[(NodePlan, u32)], dirs: &LabDirs, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for (n, pid) in agents {
            if !procs::alive(*pid as i32) {
                let log = dirs.root.join(format!("logs/agent-{}.log", n.name));
                return Err(LabError::Process {
                    what: format!("agent {}", n.name),
                    detail: format!("exited; log {}:\n{}", log.display(), tail(&log, 15)),
                    source: None,
                });
            }
        }
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kc)
            .args(["get", "nodes", "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#])
            .output()
            .await
            .map_err(|e| LabError::Process { what: "kubectl get nodes".into(), detail: "is kubectl installed? (apt-get install kubectl)".into(), source: Some(e) })?;
        let last = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let ready = parse_ready(&String::from_utf8_lossy(&out.stdout));
        if plan.nodes.iter().all(|n| ready.iter().any(|(m, r)| *m == n.name && r == "True")) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout { what: format!("all nodes Ready (last: {})", last.trim().replace('\n', ", ")), secs: timeout.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_usage(dirs: &LabDirs, state: &LabState) {
    let d = dirs.root.display();
    let first = state.plan.nodes.last().map(|n| n.name.clone()).unwrap_or_default();
    eprintln!();
    eprintln!("  export KUBECONFIG={}", dirs.kubeconfig().display());
    eprintln!("  kubectl get nodes -o wide");
    eprintln!("  dari lab exec --dir {d} {first} -- ip addr      # a shell command inside a node");
    eprintln!("  dari lab status --dir {d}");
    eprintln!("  dari lab down --dir {d}");
    eprintln!("  logs: {d}/logs/   (images are lab stand-ins; a real cluster pulls the real images)");
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Processes stopped.
    pub processes: Vec<i32>,
    /// Of those, the ones that needed SIGKILL.
    pub killed: Vec<i32>,
    /// Pod namespaces (containerd's `cni-*`) that were linked to lab nodes.
    pub pod_netns: Vec<String>,
    /// Mounts under the lab dir.
    pub mounts: Vec<PathBuf>,
    /// Lab namespaces.
    pub netns: Vec<String>,
    /// Cgroup directories.
    pub cgroups: Vec<PathBuf>,
}

/// `dari lab down` for a lab directory.
pub async fn down(args: LabDirArgs) -> Result<DownReport> {
    let dirs = LabDirs { root: args.dir };
    let r = down_dirs(&dirs).await?;
    progress(&format!(
        "lab down: {} processes stopped ({} killed), {} pod netns, {} mounts, {} namespaces, {} cgroups removed",
        r.processes.len(),
        r.killed.len(),
        r.pod_netns.len(),
        r.mounts.len(),
        r.netns.len(),
        r.cgroups.len()
    ));
    Ok(r)
}

async fn down_dirs(dirs: &LabDirs) -> Result<DownReport> {
    let Some(state) = read_state(dirs)? else {
        progress(&format!("no lab state in {}: nothing to do", dirs.root.display()));
        return Ok(DownReport::default());
    };
    let root = dirs.root.clone();
    let plan = state.plan.clone();
    let etcd_names: Vec<String> = state.etcd.iter().map(|m| m.name.clone()).collect();
    let report = blocking(move || {
        let mut rep = DownReport::default();
        let ns_paths: Vec<PathBuf> = plan.namespaces().iter().map(|n| netns_path(n)).filter(|p| p.exists()).collect();
        rep.processes = procs::lab_processes(&ns_paths, &root);
        // etcd after the servers have exited (they release their Leases in it on SIGTERM), while
        // the rest (containers that ignore SIGTERM ...) still use their grace period
        let named = procs::pidfile_pids(&root);
        let etcd_pids: Vec<i32> = named.iter().filter(|(n, _)| etcd_names.contains(n)).map(|(_, p)| *p).collect();
        if !etcd_pids.is_empty() {
            let server_pids: Vec<i32> = named.iter().filter(|(n, _)| n.starts_with("server")).map(|(_, p)| *p).collect();
            for p in rep.processes.iter().filter(|p| !etcd_pids.contains(p)) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGTERM);
            }
            let _ = procs::wait_for("servers to exit", Duration::from_secs(5), || server_pids.iter().all(|p| !procs::alive(*p)));
        }
        rep.killed = procs::stop(&rep.processes, Duration::from_secs(10));
        let mut n = RealNet::new()?;
        let own = plan.namespaces();
        for node in &plan.nodes {
            if !netns_path(&node.netns).exists() {
                continue;
            }
            for other in n.linked_netns(&node.netns, &own)? {
                if net::delete_netns_file(&other)? {
                    rep.pod_netns.push(other);
                }
            }
        }
        rep.mounts = procs::unmount_under(&root);
        rep.netns = net::teardown(&plan, &mut n)?;
        drop(n);
        let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
        rep.cgroups = procs::remove_cgroups(&names);
        let _ = std::fs::remove_dir_all(root.join("pids"));
        let _ = std::fs::remove_file(root.join("state.json"));
        Ok(rep)
    })
    .await?;
    Ok(report)
}

/// `dari lab status`: prints and returns the text.
pub async fn status(args: LabDirArgs) -> Result<String> {
    let dirs = LabDirs { root: args.dir };
    let Some(state) = read_state(&dirs)? else {
        let s = format!("no lab in {}\n", dirs.root.display());
        print!("{s}");
        return Ok(s);
    };
    let alive: Vec<(String, i32)> = procs::pidfile_pids(&dirs.root);
    let pid_of = |name: &str| alive.iter().find(|(n, _)| n == name).map(|(_, p)| format!("pid {p}")).unwrap_or_else(|| "not running".into());
    let mut s = format!("lab in {} (hub {} {} {})\n", dirs.root.display(), state.plan.hub.netns, state.plan.hub.bridge, state.plan.hub.addr);
    s.push_str(&format!("{:<24} {:<14} {:<16} {:<8} {}\n", "NODE", "ROLE", "IP", "NETNS", "AGENT"));
    for n in &state.plan.nodes {
        let role = match n.role {
            plan::Role::ControlPlane => "control-plane",
            plan::Role::Worker if state.servers.iter().any(|sv| sv.node == n.name) => "control-plane",
            plan::Role::Worker => "worker",
        };
        let ns = if netns_path(&n.netns).exists() { "ok" } else { "missing" };
        s.push_str(&format!("{:<24} {:<14} {:<16} {:<8} {}\n", n.name, role, n.ip(), ns, pid_of(&format!("agent-{}", n.name))));
    }
    let servers = state.servers();
    if state.servers.len() <= 1 && state.etcd.is_empty() {
        s.push_str(&format!("server: {}   forwarder https://{}: {}\n", pid_of("server"), state.api_listen, pid_of("forward")));
    } else {
        s.push_str(&format!("{:<10} {:<24} {:<28} {}\n", "SERVER", "NODE", "URL", "PROCESS"));
        for sv in &servers {
            s.push_str(&format!("{:<10} {:<24} {:<28} {}\n", sv.name, sv.node, format!("https://{}:{API_PORT}", sv.ip), pid_of(&sv.name)));
        }
        let ups: Vec<String> = servers.iter().map(|sv| format!("{}:{API_PORT}", sv.ip)).collect();
        s.push_str(&format!("forwarder https://{} -> first of {} that accepts: {}\n", state.api_listen, ups.join(", "), pid_of("forward")));
    }
    if !state.etcd.is_empty() {
        let health = etcd_health(&state.plan, &state.etcd, &dirs.etcd_pki()).await;
        s.push_str(&format!("{:<10} {:<24} {:<28} {:<16} {}\n", "ETCD", "NODE", "CLIENT URL", "PROCESS", "HEALTH"));
        for m in &state.etcd {
            let url = m.client_url();
            let h = match &health {
                Ok(h) => h.iter().find(|(u, _)| *u == url).map(|(_, ok)| if *ok { "healthy" } else { "unhealthy" }).unwrap_or("unknown"),
                Err(_) => "unknown",
            };
            s.push_str(&format!("{:<10} {:<24} {:<28} {:<16} {}\n", m.name, m.node, url, pid_of(&m.name), h));
        }
        if let Err(e) = &health {
            s.push_str(&format!("etcd health: {}\n", e.lines().next().unwrap_or("")));
        }
        let pki = dirs.etcd_pki();
        s.push_str(&format!("etcdctl: dari lab exec --dir {} {} -- {}\n", dirs.root.display(), state.etcd[0].node, ha::etcdctl_argv(&state.etcd, &pki).join(" ")));
    }
    s.push_str(&format!("KUBECONFIG={}\n", dirs.kubeconfig().display()));
    print!("{s}");
    Ok(s)
}

/// `dari lab exec NODE -- CMD`: runs the command in the node's namespace with this terminal,
/// returns its exit code.
pub async fn exec(args: LabExecArgs) -> Result<i32> {
    let dirs = LabDirs { root: args.dir.clone() };
    let state = read_state(&dirs)?.ok_or_else(|| LabError::plan(format!("no lab in {}", dirs.root.display())))?;
    let node = state.plan.node(&args.node).ok_or_else(|| {
        let names: Vec<&str> = state.plan.nodes.iter().map(|n| n.name.as_str()).collect();
        LabError::plan(format!("no node {:?} in the lab (nodes: {})", args.node, names.join(", ")))
    })?;
    let spec = ProcSpec { name: "exec".into(), netns: Some(netns_path(&node.netns)), argv: args.cmd.clone(), env: vec![] };
    let argv = procs::command_line(&spec);
    let status = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("KUBECONFIG", dirs.kubeconfig())
        .status()
        .await
        .map_err(|e| LabError::Process { what: "exec".into(), detail: argv.join(" "), source: Some(e) })?;
    Ok(status.code().unwrap_or(128))
}

fn node_state(dirs: &LabDirs, node: &str) -> Result<(LabState, NodePlan)> {
    let state = read_state(dirs)?.ok_or_else(|| LabError::plan(format!("no lab in {}", dirs.root.display())))?;
    let n = state.plan.node(node).cloned().ok_or_else(|| LabError::plan(format!("no node {node:?} in the lab")))?;
    Ok((state, n))
}

/// `dari lab kill-agent NODE`: SIGKILL to the node's agent and the containerd it started (its
/// descendants named `containerd`); container shims and containers are left running, as when a
/// kubelet and its runtime crash. Returns the pids killed.
pub async fn kill_agent(args: LabNodeArgs) -> Result<Vec<i32>> {
    let dirs = LabDirs { root: args.dir };
    let (_, n) = node_state(&dirs, &args.node)?;
    let name = format!("agent-{}", n.name);
    let Some((_, pid)) = procs::pidfile_pids(&dirs.root).into_iter().find(|(p, _)| *p == name) else {
        return Err(LabError::plan(format!("agent of {} is not running", n.name)));
    };
    let mut victims = vec![pid];
    victims.extend(procs::descendants(pid).into_iter().filter(|p| procs::comm(*p).as_deref() == Some("containerd")));
    for p in &victims {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGKILL);
    }
    let v2 = victims.clone();
    blocking(move || procs::wait_for("killed agent to exit", Duration::from_secs(10), || v2.iter().all(|p| !procs::alive(*p)))).await?;
    Ok(victims)
}

/// `dari lab start-agent NODE`: starts the node's agent with the command line `up` recorded
/// (refused while it runs). Returns its pid.
pub async fn start_agent(args: LabNodeArgs) -> Result<u32> {
    let dirs = LabDirs { root: args.dir };
    let (state, n) = node_state(&dirs, &args.node)?;
    let name = format!("agent-{}", n.name);
    if procs::pidfile_pids(&dirs.root).iter().any(|(p, _)| *p == name) {
        return Err(LabError::plan(format!("agent of {} is running already", n.name)));
    }
    let argv = state.agents.get(&n.name).cloned().ok_or_else(|| LabError::plan(format!("no agent command line for {} in state.json (lab made by an older dari)", n.name)))?;
    procs::spawn(&ProcSpec { name, netns: Some(netns_path(&n.netns)), argv, env: vec![] }, &dirs.root)
}

/// Runs a `dari lab` subcommand; returns the process exit code.
pub async fn run(args: LabArgs) -> Result<i32> {
    match args.cmd {
        LabCmd::Up(a) => up(a).await.map(|_| 0),
        LabCmd::Down(a) => down(a).await.map(|_| 0),
        LabCmd::Status(a) => status(a).await.map(|_| 0),
        LabCmd::Exec(a) => exec(a).await,
        LabCmd::Images(a) => {
            let out = a.out.clone();
            let paths = blocking(move || crate::images::build_images(&out)).await?;
            for p in paths {
                println!("{}", p.display());
            }
            Ok(0)
        }
        LabCmd::Forward(a) => crate::forward::run(a).await.map(|_| 0),
        LabCmd::KillAgent(a) => kill_agent(a).await.map(|p| {
            progress(&format!("killed {}", p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")));
            0
        }),
        LabCmd::StartAgent(a) => start_agent(a).await.map(|p| {
            progress(&format!("agent started, pid {p}"));
            0
        }),
    }
}

/// The 10th address of the service range (kube-dns, as upstream clusters place it).
pub fn cluster_dns_ip(service_cidr: Ipv4Net) -> Option<std::net::Ipv4Addr> {
    let ip = u32::from(service_cidr.network()).checked_add(10)?;
    let ip = std::net::Ipv4Addr::from(ip);
    service_cidr.contains(&ip).then_some(ip)
}

/// The kube-dns Service (selectorless) and its EndpointSlice pointing at the DNS server.
pub fn kube_dns_manifest(dns_ip: std::net::Ipv4Addr, server: std::net::Ipv4Addr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  clusterIP: {dns_ip}
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}}
  - {{name: metrics, port: 9153, protocol: TCP, targetPort: 9153}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-dari
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: dari-lab}}
addressType: IPv4
endpoints:
- addresses: ["{server}"]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
- {{name: metrics, port: 9153, protocol: TCP}}
"#
    )
}

fn kubectl_apply(kubeconfig: &Path, manifest: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Process { what: "kubectl apply".into(), detail: e.to_string(), source: None })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(manifest.as_bytes()).map_err(|e| LabError::Process { what: "kubectl apply".into(), detail: e.to_string(), source: None })?;
    }
    let out = child.wait_with_output().map_err(|e| LabError::Process { what: "kubectl apply".into(), detail: e.to_string(), source: None })?;
    if !out.status.success() {
        return Err(LabError::Process { what: "kubectl apply (kube-dns)".into(), detail: String::from_utf8_lossy(&out.stderr).into_owned(), source: None });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_rewrite() {
        let k = "apiVersion: v1\nclusters:\n- name: dari\n  cluster:\n    certificate-authority-data: X\n    server: https://172.31.0.10:6443\n";
        assert_eq!(
            rewrite_kubeconfig(k, "https://127.0.0.1:6443"),
            "apiVersion: v1\nclusters:\n- name: dari\n  cluster:\n    certificate-authority-data: X\n    server: https://127.0.0.1:6443\n"
        );
    }

    #[test]
    fn agent_flags() {
        let p = plan::plan(&["cp".to_string(), "w1".to_string()], &LabOpts::default()).unwrap();
        let dirs = LabDirs { root: "/var/lib/dari-lab".into() };
        let (cc, sc) = ("10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap());
        let a = agent_argv(Path::new("/usr/bin/dari"), &p, &p.nodes[1], &dirs, "host-gw", cc, sc).join(" ");
        assert_eq!(
            a,
            "/usr/bin/dari agent --server https://172.31.0.10:6443 --kubeconfig /var/lib/dari-lab/server/admin.kubeconfig \
--node-name w1 --node-ip 172.31.0.11 --data-dir /var/lib/dari-lab/nodes/w1 --mtu 1400 --backend host-gw \
--cluster-cidr 10.244.0.0/16 --service-cidr 10.96.0.0/12 --containerd-netns /run/netns/dari-w1 \
--stream-address 172.31.0.11:10250 --ingress-class nginx"
        );
        let v = agent_argv(Path::new("/usr/bin/dari"), &p, &p.nodes[1], &dirs, "vxlan", cc, sc).join(" ");
        assert!(v.contains("--mtu 1350 --backend vxlan"), "vxlan: pod MTU = LAN MTU - 50: {v}");
    }

    #[test]
    fn agents_get_every_server() {
        let p = plan::plan(&["cp".to_string(), "cp2".to_string(), "w1".to_string()], &LabOpts::default()).unwrap();
        let dirs = LabDirs { root: "/l".into() };
        let (cc, sc) = ("10.244.0.0/16".parse().unwrap(), "10.96.0.0/12".parse().unwrap());
        let servers = ha::servers(&p, 2).unwrap();
        let a = with_servers(agent_argv(Path::new("/d"), &p, &p.nodes[2], &dirs, "vxlan", cc, sc), &servers).join(" ");
        assert!(a.starts_with("/d agent --server https://172.31.0.10:6443,https://172.31.0.11:6443 --kubeconfig /l/server/admin.kubeconfig"), "{a}");
    }

    #[test]
    fn old_state_has_one_server() {
        let p = plan::plan(&["cp".to_string(), "w1".to_string()], &LabOpts::default()).unwrap();
        let st = LabState { plan: p, dari: "/d".into(), api_listen: "127.0.0.1:6443".parse().unwrap(), backend: "vxlan".into(), agents: Default::default(), servers: vec![], etcd: vec![] };
        let mut v = serde_json::to_value(&st).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("servers");
        o.remove("etcd");
        let back: LabState = serde_json::from_value(v).unwrap();
        assert_eq!(back.servers(), vec![ServerInfo { name: "server".into(), node: "cp".into(), ip: [172, 31, 0, 10].into() }]);
    }

    #[test]
    fn default_node_names() {
        assert_eq!(default_nodes(2), vec!["lab-control-plane", "lab-worker", "lab-worker2"]);
    }

    #[test]
    fn clap_parses() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(subcommand)]
            cmd: LabCmd,
        }
        let t = T::try_parse_from(["lab", "up", "--nodes", "myk8s-control-plane,myk8s-worker", "--backend", "host-gw"]).unwrap();
        match t.cmd {
            LabCmd::Up(u) => {
                assert_eq!(u.nodes, vec!["myk8s-control-plane", "myk8s-worker"]);
                assert_eq!(u.backend, "host-gw");
            }
            _ => panic!("not up"),
        }
        let t = T::try_parse_from(["lab", "up", "--datastore", "etcd", "--servers", "2"]).unwrap();
        match t.cmd {
            LabCmd::Up(u) => assert_eq!((u.datastore.as_str(), u.servers, u.etcd_members), ("etcd", 2, 3)),
            _ => panic!("not up"),
        }
        let t = T::try_parse_from(["lab", "exec", "w1", "--", "ip", "-br", "addr"]).unwrap();
        match t.cmd {
            LabCmd::Exec(e) => assert_eq!(e.cmd, vec!["ip", "-br", "addr"]),
            _ => panic!("not exec"),
        }
    }
}
