//! `dari`: the thin binary. Parses flags (each component owns its clap `Args`), sets up
//! tracing, and runs one component.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dari", version, about = "dari (다리, bridge): a lightweight Kubernetes you can see through")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `dari server`: the API server plus, unless disabled, the controllers and the scheduler.
#[derive(clap::Args)]
struct ServerCmd {
    #[command(flatten)]
    server: dari_apiserver::ServerArgs,
    /// Serve the API only: no controllers, no scheduler (e.g. a second server, or measuring the API alone).
    #[arg(long)]
    no_controllers: bool,
}

/// `dari agent`: the node agent plus the node's service proxy, in one process.
#[derive(clap::Args)]
struct AgentCmd {
    #[command(flatten)]
    agent: dari_agent::AgentArgs,
    /// Service ClusterIP range (the proxy's service CIDR).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::IpNet,
    /// Pod network of the cluster (traffic from outside it to Services is masqueraded).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::IpNet,
    /// Do not run the service proxy on this node.
    #[arg(long)]
    no_proxy: bool,
    /// Extra IngressClass names this node's ingress proxy serves (its own `dari` class is always served).
    #[arg(long = "ingress-class", value_delimiter = ',')]
    ingress_class: Vec<String>,
    /// Do not run the ingress proxy (ports 80/443 on the node address).
    #[arg(long)]
    no_ingress: bool,
    #[command(flatten)]
    net: dari_net::NetArgs,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// `dari image import FILE.tar…` into the containerd of the agent whose data dir is given.
    Import {
        /// The agent's data dir (its containerd socket lives there).
        #[arg(long, default_value = "/var/lib/dari/agent")]
        data_dir: std::path::PathBuf,
        /// Image tarballs.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Write etcd member certificates and the API server's etcd client certificate, signed by the
    /// cluster CA, for an etcd run with `--client-cert-auth` (the hard-way write-up's etcd TLS).
    Etcd {
        /// The server's data dir (its CA lives in DIR/pki).
        #[arg(long, default_value = "/var/lib/dari")]
        data_dir: std::path::PathBuf,
        /// Where to write ca.crt, NAME.crt/.key per member, apiserver-etcd-client.crt/.key.
        #[arg(long)]
        out: std::path::PathBuf,
        /// An etcd member and the addresses it is reached at: NAME=IP[,IP|DNS...] (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server with the controllers and the scheduler (datastore, PKI, bootstrap objects).
    Server(ServerCmd),
    /// Run a node: register it, run its pods through containerd (CRI), and program its Services (nftables).
    Agent(AgentCmd),
    /// Run the cluster DNS (Kubernetes DNS spec, forward and cache) against an API server.
    Dns(dari_dns::config::DnsArgs),
    /// Run the nftables service proxy (ClusterIP, NodePort, session affinity) for one node.
    Proxy(dari_proxy::ProxyArgs),
    /// Load OCI or docker-archive image tarballs into a node's containerd (clusters without a registry).
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Certificates from the cluster CA for components dari does not run itself (etcd).
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// A multi-node cluster in network namespaces on this machine: up, down, status, exec.
    Lab(dari_lab::LabArgs),
    /// The small servers inside the lab's stand-in images (whoami, echo-server, pause).
    #[command(hide = true)]
    Applet {
        /// Applet name and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Applet { args } = &cli.cmd {
        std::process::exit(dari_lab::applet_main(args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DARI_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(ServerCmd { server: args, no_controllers }) => {
                let cluster_cidr = args.cluster_cidr;
                let server = dari_apiserver::start(args).await?;
                if no_controllers {
                    eprintln!("dari server listening on https://{} (API only)", server.addr);
                    server.wait().await;
                    return Ok(());
                }
                // the controller-manager's and scheduler's jobs, in-process, through the API like any client
                let client = dari_agent::client(&server.admin_kubeconfig, None).await?;
                let ccfg = dari_controllers::ControllersConfig { cluster_cidr, ..Default::default() };
                let scfg = dari_scheduler::SchedulerConfig::default();
                let leases = [("kube-controller-manager", ccfg.identity.clone()), ("kube-scheduler", scfg.identity.clone())];
                let c2 = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = dari_controllers::run(c2, ccfg).await {
                        tracing::error!(error = %e, "controllers stopped");
                    }
                });
                let c3 = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = dari_scheduler::run(c3, scfg).await {
                        tracing::error!(error = %e, "scheduler stopped");
                    }
                });
                eprintln!("dari server listening on https://{}", server.addr);
                eprintln!("export KUBECONFIG={}", server.admin_kubeconfig.display());
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                // the server keeps serving until the Leases are released below
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                // graceful stop: give the Leases up so another server takes over at once
                for (name, identity) in leases {
                    match dari_controllers::leader::release(client.clone(), "kube-system", name, &identity).await {
                        Ok(true) => eprintln!("released the {name} lease"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(lease = name, error = %e, "could not release the lease"),
                    }
                }
                std::process::exit(0)
            }
            Cmd::Image { cmd: ImageCmd::Import { data_dir, files } } => {
                let socket = dari_agent::containerd_socket(&data_dir);
                for f in files {
                    eprintln!("importing {} into {}", f.display(), socket.display());
                    for name in dari_agent::import_image(&socket, &f).await? {
                        println!("{name}");
                    }
                }
                Ok(())
            }
            Cmd::Certs { cmd: CertsCmd::Etcd { data_dir, out, members } } => {
                let opts = dari_pki::PkiOptions { sans: vec![], service_ip: std::net::IpAddr::from([10, 96, 0, 1]), hostname: String::new() };
                let pki = dari_pki::Pki::load_or_create(&data_dir, &opts)?;
                let mut parsed = Vec::new();
                for m in &members {
                    let (name, addrs) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--member {m:?}: expected NAME=IP[,IP...]"))?;
                    parsed.push((name, addrs.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>()));
                }
                let paths = pki.write_etcd_certs(&out, &parsed)?;
                println!("etcd --trusted-ca-file {0} --peer-trusted-ca-file {0} --client-cert-auth --peer-client-cert-auth", paths.ca.display());
                for (name, (crt, key)) in parsed.iter().map(|(n, _)| n).zip(&paths.members) {
                    println!("  {name}: --cert-file {0} --key-file {1} --peer-cert-file {0} --peer-key-file {1}", crt.display(), key.display());
                }
                println!("dari server --datastore etcd --etcd-cafile {} --etcd-certfile {} --etcd-keyfile {}", paths.ca.display(), paths.client_cert.display(), paths.client_key.display());
                Ok(())
            }
            Cmd::Lab(args) => {
                let code = dari_lab::run(args).await?;
                std::process::exit(code);
            }
            Cmd::Applet { .. } => Ok(()),
            Cmd::Agent(a) => {
                let cfg = dari_agent::AgentConfig::from_args(a.agent).await?;
                let proxy = (!a.no_proxy).then(|| dari_proxy::ProxyRunConfig {
                    kubeconfig: Some(cfg.kubeconfig.clone()),
                    node_name: cfg.node_name.clone(),
                    proxy: dari_proxy::ProxyConfig { cluster_cidrs: vec![a.cluster_cidr], service_cidrs: vec![a.service_cidr], ..Default::default() },
                    min_sync_period: std::time::Duration::from_millis(200),
                    full_sync_period: std::time::Duration::from_secs(3600),
                    netns: None,
                });
                if let Some(p) = proxy {
                    tokio::spawn(async move {
                        if let Err(e) = dari_proxy::run(p).await {
                            tracing::error!(error = %e, "service proxy stopped");
                        }
                    });
                }
                if !a.no_ingress {
                    let ip = cfg.node_ip;
                    let icfg = dari_ingress::IngressRunConfig::from(dari_ingress::IngressArgs {
                        kubeconfig: Some(cfg.kubeconfig.clone()),
                        ingress_http: vec![std::net::SocketAddr::new(ip, 80)],
                        ingress_https: vec![std::net::SocketAddr::new(ip, 443)],
                        ingress_class: a.ingress_class.clone(),
                        no_default_class: false,
                        // every agent publishes the same list (all nodes' InternalIPs), so status never flaps
                        publish_address: vec![],
                        trust_forwarded_headers: false,
                        min_sync_period_ms: 100,
                    });
                    tokio::spawn(async move {
                        if let Err(e) = dari_ingress::run(icfg).await {
                            tracing::error!(error = %e, "ingress proxy stopped");
                        }
                    });
                }
                // pod traffic leaving the cluster CIDR is masqueraded; pod to pod never is
                if let ipnet::IpNet::V4(v4) = a.cluster_cidr {
                    dari_net::apply_egress_masquerade(v4)?;
                }
                // routes to the other nodes' podCIDRs (host-gw or vxlan backend, --backend)
                {
                    let client = dari_agent::client(&cfg.kubeconfig, cfg.server.as_deref()).await?;
                    let node = dari_net::NodeIdentity { name: cfg.node_name.clone(), ip: cfg.node_ip, pod_mtu: cfg.mtu };
                    dari_net::start(client, a.net, node).await?;
                }
                dari_agent::run(cfg).await?;
                Ok(())
            }
            Cmd::Proxy(args) => {
                match args.show_request().map_err(anyhow::Error::msg)? {
                    Some(name) => {
                        let ns = args.namespace.clone();
                        let cfg = dari_proxy::ProxyRunConfig::from(args);
                        print!("{}", dari_proxy::show_from_api(&cfg, &ns, name.as_deref()).await?);
                    }
                    None => dari_proxy::run(dari_proxy::ProxyRunConfig::from(args)).await?,
                }
                Ok(())
            }
            Cmd::Dns(args) => {
                let cfg = dari_dns::config::DnsRunConfig::from_args(&args)?;
                dari_dns::run(cfg).await?;
                Ok(())
            }
        }
    })
}
