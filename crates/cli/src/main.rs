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
                let c2 = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = dari_controllers::run(c2, ccfg).await {
                        tracing::error!(error = %e, "controllers stopped");
                    }
                });
                tokio::spawn(async move {
                    if let Err(e) = dari_scheduler::run(client, dari_scheduler::SchedulerConfig::default()).await {
                        tracing::error!(error = %e, "scheduler stopped");
                    }
                });
                eprintln!("dari server listening on https://{}", server.addr);
                eprintln!("export KUBECONFIG={}", server.admin_kubeconfig.display());
                server.wait().await;
                Ok(())
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
            Cmd::Lab(args) => {
                let code = dari_lab::run(args).await?;
                std::process::exit(code);
            }
            Cmd::Applet { .. } => Ok(()),
            Cmd::Agent(a) => {
                let cfg = dari_agent::AgentConfig::from_args(a.agent)?;
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
                        publish_address: vec![ip],
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
                // routes to the other nodes' podCIDRs (host-gw backend)
                {
                    let client = dari_agent::client(&cfg.kubeconfig, cfg.server.as_deref()).await?;
                    let routes: std::sync::Arc<dyn dari_net::Routes> = std::sync::Arc::new(dari_net::NetlinkRoutes::new()?);
                    let me = cfg.node_name.clone();
                    tokio::spawn(async move {
                        if let Err(e) = dari_net::run_host_gw(client, me, routes).await {
                            tracing::error!(error = %e, "node routes stopped");
                        }
                    });
                }
                dari_agent::run(cfg).await?;
                Ok(())
            }
            Cmd::Proxy(args) => {
                dari_proxy::run(dari_proxy::ProxyRunConfig::from(args)).await?;
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
