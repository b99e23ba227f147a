//! The agent's API server load balancer against two real `dari server`s (in-process) on one real
//! 3-member etcd (Debian's etcd-server on loopback), the way `dari agent --server A,B` uses it.
//!
//! Server A sits behind a test relay the test can kill (every relayed connection closed at
//! once, as the kernel does when a server process dies) or freeze (new connections refused,
//! established ones silent: a host that vanished without a FIN). Lists and a kube-runtime watch
//! through the load balancer must keep working via B within a few seconds.

use std::time::{Duration, Instant};

mod common;

use common::ha::{ha, Mode, Relay};
use dari_agent::lb::{self, LbOptions, LoadBalancer};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}})).expect("configmap")
}

/// ConfigMap names a kube-runtime watcher (with the agent's back-off) delivers.
fn watch_names(client: kube::Client) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(watcher::Event::Apply(c)) | Ok(watcher::Event::InitApply(c)) => {
                    if tx.send(c.metadata.name.unwrap_or_default()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("watch error (the watcher retries): {e}"),
            }
        }
    });
    rx
}

async fn wait_seen(rx: &mut mpsc::UnboundedReceiver<String>, name: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    let found = tokio::time::timeout(within, async {
        while let Some(n) = rx.recv().await {
            if n == name {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the watch through the load balancer did not deliver {name} within {within:?}");
    t0.elapsed()
}

/// Lists nodes through `client` until it works; returns how long that took.
async fn list_until_ok(client: &kube::Client, within: Duration) -> Duration {
    let t0 = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        match tokio::time::timeout(Duration::from_secs(2), nodes.list(&ListParams::default())).await {
            Ok(Ok(_)) => return t0.elapsed(),
            Ok(Err(e)) => eprintln!("list failed (retrying): {e}"),
            Err(_) => eprintln!("list hung for 2 s (retrying)"),
        }
        assert!(t0.elapsed() < within, "listing through the load balancer did not recover within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails over from A (behind `relay`) to B while a watch runs; `mode` is how A goes away.
async fn failover(mode: Mode, opts: LbOptions) {
    let h = ha().await;
    let relay = Relay::start(h.a.as_ref().expect("A").addr).await;
    let b_url = format!("https://{}", h.b.addr);
    let listener = LoadBalancer::bind(&h.tmp.path().join("agent"), 0).await.expect("bind lb");
    let lb = LoadBalancer::start(listener, vec![relay.url(), b_url.clone()], opts).expect("lb starts");
    // the admin's credentials, server = the load balancer (what the agent does with its node kubeconfig)
    let kc = lb::write_kubeconfig(&h.tmp.path().join("a/admin.kubeconfig"), &h.tmp.path().join("agent").join(lb::KUBECONFIG_FILE), &lb.url()).expect("kubeconfig");
    let client = dari_agent::client(&kc, None).await.expect("client");
    let direct_b = dari_agent::client(&h.tmp.path().join("b/admin.kubeconfig"), None).await.expect("client of B");

    list_until_ok(&client, Duration::from_secs(5)).await;
    assert_eq!(lb.current(), relay.url(), "the first server that accepts is used");
    let mut seen = watch_names(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before")).await.expect("create through A");
    wait_seen(&mut seen, "before", Duration::from_secs(10)).await;

    relay.set(mode);
    if mode == Mode::Kill {
        // the process is gone: its listener too
        drop(h.a);
    }
    let t_list = list_until_ok(&client, Duration::from_secs(10)).await;
    assert_eq!(lb.current(), b_url, "after A is gone the load balancer uses B");
    // written on B directly: the watch (re-established through the load balancer) must see it
    let cms_b: Api<ConfigMap> = Api::namespaced(direct_b, "default");
    cms_b.create(&PostParams::default(), &cm("after")).await.expect("create on B");
    let t_watch = wait_seen(&mut seen, "after", Duration::from_secs(10)).await;
    eprintln!("{mode:?}: list recovered {:.2} s after A went away, the watch delivered a new object {:.2} s after it was written", t_list.as_secs_f64(), t_watch.as_secs_f64());
    // writes through the load balancer land on B too
    cms.create(&PostParams::default(), &cm("after-2")).await.expect("create through the load balancer");
    wait_seen(&mut seen, "after-2", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_over_on_connection_close() {
    // health checks effectively off: recovery must come from the closed connections alone
    failover(Mode::Kill, LbOptions { health_interval: Duration::from_secs(3600), ..LbOptions::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_cut_by_the_health_check() {
    failover(Mode::Freeze, LbOptions { health_interval: Duration::from_millis(500), ..LbOptions::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_joins_through_the_first_live_server_and_uses_the_load_balancer() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        a: dari_agent::AgentArgs,
    }
    let h = ha().await;
    // a port nothing listens on (bound, then closed) comes first: the join falls through to B
    // (behind a relay the test kills later), A comes last
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let token = std::fs::read_to_string(h.tmp.path().join("a/node-token")).expect("token").trim().to_string();
    let a_url = format!("https://{}", h.a.as_ref().expect("A").addr);
    let relay_b = Relay::start(h.b.addr).await;
    let b_url = relay_b.url();
    let data = h.tmp.path().join("agent");
    let servers = format!("https://{dead},{b_url},{a_url}");
    let args = Flags::try_parse_from(["agent", "--server", &servers, "--token", &token, "--node-name", "lb-node", "--node-ip", "127.0.0.1", "--data-dir", &data.display().to_string()]).expect("flags");
    let cfg = dari_agent::AgentConfig::from_args(args.a).await.expect("joins through B");
    let lb = cfg.lb.clone().expect("several servers: a load balancer");
    assert_eq!(cfg.server, None, "the kubeconfig already names the load balancer");
    assert_eq!(cfg.kubeconfig, data.join(lb::KUBECONFIG_FILE));
    assert_eq!(lb.servers(), vec![format!("https://{dead}"), b_url.clone(), a_url.clone()]);
    let kc = kube::config::Kubeconfig::read_from(&cfg.kubeconfig).expect("kubeconfig");
    assert_eq!(kc.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()), Some(lb.url()));
    // the node's own credentials work through the load balancer, and they reach B
    let client = dari_agent::client(&cfg.kubeconfig, cfg.server.as_deref()).await.expect("client");
    let mut facts = dari_agent::node::NodeFacts::gather("lb-node", "127.0.0.1".parse().expect("ip"), "fake://1");
    facts.kubelet_port = 10250;
    let n = dari_agent::node::register(&client, &facts, true).await.expect("register through the load balancer");
    dari_agent::node::renew_lease(&client, &n).await.expect("lease through the load balancer");
    assert_eq!(lb.current(), b_url, "the dead first server is skipped");
    // B dies: the Lease keeps being renewed through A
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(dari_agent::client(&h.tmp.path().join("a/admin.kubeconfig"), None).await.expect("admin"), "kube-node-lease");
    let before = leases.get("lb-node").await.expect("lease").spec.and_then(|s| s.renew_time).expect("renewTime");
    relay_b.set(Mode::Kill);
    drop(h.b);
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), dari_agent::node::renew_lease(&client, &n)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => eprintln!("lease renewal failed (retrying): {e}"),
            Err(_) => eprintln!("lease renewal hung (retrying)"),
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "the Lease could not be renewed through the load balancer after B went away");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = leases.get("lb-node").await.expect("lease").spec.and_then(|s| s.renew_time).expect("renewTime");
    assert!(after.0 > before.0, "renewTime did not move: {before:?} → {after:?}");
    assert_eq!(lb.current(), a_url);
    // a second start reuses the credentials and the load balancer's port
    drop(cfg);
    drop(lb);
    let args = Flags::try_parse_from(["agent", "--server", &servers, "--token", &token, "--node-name", "lb-node", "--node-ip", "127.0.0.1", "--data-dir", &data.display().to_string()]).expect("flags");
    let port = std::fs::read_to_string(data.join(lb::PORT_FILE)).expect("port file");
    let cfg = dari_agent::AgentConfig::from_args(args.a).await.expect("restart");
    assert_eq!(cfg.lb.as_ref().map(|l| l.addr().port().to_string()), Some(port.trim().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_mode_with_several_servers_goes_through_the_load_balancer() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        a: dari_agent::AgentArgs,
    }
    let h = ha().await;
    let relay = Relay::start(h.a.as_ref().expect("A").addr).await;
    let b_url = format!("https://{}", h.b.addr);
    let data = h.tmp.path().join("agent");
    let admin = h.tmp.path().join("a/admin.kubeconfig");
    let servers = format!("{},{b_url}", relay.url());
    let args = Flags::try_parse_from(["agent", "--server", &servers, "--kubeconfig", &admin.display().to_string(), "--node-name", "k-node", "--node-ip", "127.0.0.1", "--data-dir", &data.display().to_string()]).expect("flags");
    let cfg = dari_agent::AgentConfig::from_args(args.a).await.expect("config");
    let lb = cfg.lb.clone().expect("a load balancer");
    assert_eq!((cfg.server.clone(), cfg.kubeconfig.clone()), (None, data.join(lb::KUBECONFIG_FILE)));
    // what the CLI hands the proxy/ingress/net clients: the kubeconfig alone
    let client = dari_agent::client(&cfg.kubeconfig, None).await.expect("client");
    list_until_ok(&client, Duration::from_secs(5)).await;
    assert_eq!(lb.current(), relay.url());
    relay.set(Mode::Kill);
    list_until_ok(&client, Duration::from_secs(10)).await;
    assert_eq!(lb.current(), b_url);
    // the admin kubeconfig itself is left alone
    let kc = kube::config::Kubeconfig::read_from(&admin).expect("admin kubeconfig");
    assert_eq!(kc.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()), Some(format!("https://{}", h.a.as_ref().expect("A").addr)));
}
