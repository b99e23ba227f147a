//! `dari`: the thin binary. Parses flags (each component owns its clap `Args`), sets up
//! tracing, and runs one component.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dari", version, about = "dari (다리, bridge): a lightweight Kubernetes you can see through")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server (datastore, PKI, controllers as they land).
    Server(dari_apiserver::ServerArgs),
    /// Run the cluster DNS (Kubernetes DNS spec, forward and cache) against an API server.
    Dns(dari_dns::config::DnsArgs),
    /// Run the nftables service proxy (ClusterIP, NodePort, session affinity) for one node.
    Proxy(dari_proxy::ProxyArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DARI_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Server(args) => {
                let cluster_cidr = args.cluster_cidr;
                let server = dari_apiserver::start(args).await?;
                // the controller-manager's and scheduler's jobs, in-process, through the API like any client
                let kubeconfig = kube::config::Kubeconfig::read_from(&server.admin_kubeconfig)?;
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
                let client = kube::Client::try_from(config)?;
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
