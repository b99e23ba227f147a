//! Joining with a token against a real `dari server` on 127.0.0.1:0, and the HTTPS streaming
//! endpoint's authentication (fake CRI: no containerd, no root needed).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dari_agent::cri::fake::FakeCri;
use dari_agent::cri::{v1, Cri};
use dari_agent::join::{self, CredPaths};
use dari_agent::stream::{StreamServer, StreamTls};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

async fn apiserver(dir: &Path) -> dari_apiserver::RunningServer {
    let args = dari_apiserver::ServerArgs::loopback(dir);
    dari_apiserver::start(args).await.expect("server starts")
}

fn token(server_dir: &Path) -> String {
    std::fs::read_to_string(server_dir.join("node-token")).expect("node-token").trim().to_string()
}

fn url(s: &dari_apiserver::RunningServer) -> String {
    format!("https://{}", s.addr)
}

#[tokio::test]
async fn join_with_token_then_restart_reuses_credentials() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = apiserver(&tmp.path().join("server")).await;
    let data = tmp.path().join("agent");
    let ip: IpAddr = "10.200.0.5".parse()?;
    let j = join::join(&url(&server), &token(&tmp.path().join("server")), "node-a", ip, &data).await?;
    assert!(!j.reused);
    assert_eq!(j.kubeconfig, data.join("kubeconfig"));
    let paths = CredPaths::new(&data);
    // the client certificate names the node, in system:nodes, signed by the cluster CA
    let der = CertificateDer::from_pem_slice(std::fs::read_to_string(&paths.client_crt)?.as_bytes())?;
    let user = dari_pki::identity_from_cert(&der)?;
    assert_eq!(user.name, "system:node:node-a");
    assert!(user.groups.contains(&"system:nodes".to_string()), "{user:?}");
    assert_eq!(std::fs::read_to_string(&paths.ca)?, server.pki.ca_pem());
    use std::os::unix::fs::PermissionsExt as _;
    for key in [&paths.client_key, &paths.serving_key, &paths.kubeconfig] {
        assert_eq!(std::fs::metadata(key)?.permissions().mode() & 0o777, 0o600, "{}", key.display());
    }
    // the kubeconfig works: the API server knows the node by its certificate
    let client = dari_agent::client(&j.kubeconfig, None).await?;
    let nodes: Api<Node> = Api::all(client);
    nodes.list(&ListParams::default()).await?;
    // the serving certificate passes the same checks the agent applies at start
    let h = dari_pki::ca_hash_der(server.pki.ca_der());
    join::check_files(&paths, &h, "node-a", ip, true).map_err(anyhow::Error::msg)?;
    assert!(join::check_files(&paths, &h, "node-a", "10.200.0.6".parse()?, true).is_err(), "serving cert must be bound to the node IP");
    assert!(join::check_files(&paths, &h, "node-b", ip, true).is_err(), "client cert must be bound to the node name");

    // a restart reuses the files: with the server gone, no request could succeed
    let before: Vec<String> = [&paths.client_crt, &paths.serving_crt].iter().map(|p| std::fs::read_to_string(p).expect("read")).collect();
    let tok = token(&tmp.path().join("server"));
    let server_url = url(&server);
    drop(server);
    let again = join::join(&server_url, &tok, "node-a", ip, &data).await?;
    assert!(again.reused);
    let after: Vec<String> = [&paths.client_crt, &paths.serving_crt].iter().map(|p| std::fs::read_to_string(p).expect("read")).collect();
    assert_eq!(before, after);
    // ... but a new node IP needs a new serving certificate, which needs the server
    let e = join::join(&server_url, &tok, "node-a", "10.200.0.6".parse()?, &data).await.expect_err("server is gone").to_string();
    assert!(e.contains("connecting"), "{e}");
    Ok(())
}

#[tokio::test]
async fn wrong_secret_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = apiserver(&tmp.path().join("server")).await;
    let good = token(&tmp.path().join("server"));
    let (hash, _) = good.split_once("::").expect("token");
    let data = tmp.path().join("agent");
    let e = join::join(&url(&server), &format!("{hash}::not-the-secret"), "node-a", "10.200.0.5".parse()?, &data).await.expect_err("refused");
    let msg = e.to_string();
    assert!(matches!(e, dari_agent::AgentError::Join { .. }), "{e:?}");
    assert!(msg.contains("refused the token's secret") && msg.contains("401"), "{msg}");
    assert!(!data.join("kubeconfig").exists() && !CredPaths::new(&data).client_crt.exists());
    Ok(())
}

#[tokio::test]
async fn mismatching_ca_hash_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = apiserver(&tmp.path().join("server")).await;
    let good = token(&tmp.path().join("server"));
    let (_, secret) = good.split_once("::").expect("token");
    let other = format!("sha256:{}", "0".repeat(64));
    let data = tmp.path().join("agent");
    let e = join::join(&url(&server), &format!("{other}::{secret}"), "node-a", "10.200.0.5".parse()?, &data).await.expect_err("refused").to_string();
    assert!(e.contains(&format!("the token pins {other}")) && e.contains("refusing to trust it"), "{e}");
    assert!(!data.join("kubeconfig").exists() && !CredPaths::new(&data).ca.exists());
    // and through the CLI flags: the same refusal from AgentConfig::from_args
    let args = <Flags as clap::Parser>::try_parse_from(["agent", "--server", &url(&server), "--token", &format!("{other}::{secret}"), "--node-name", "node-a", "--node-ip", "10.200.0.5", "--data-dir", &data.display().to_string()])?;
    let e = dari_agent::AgentConfig::from_args(args.a).await.expect_err("refused").to_string();
    assert!(e.contains("refusing to trust it"), "{e}");
    Ok(())
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    a: dari_agent::AgentArgs,
}

#[test]
fn token_and_kubeconfig_are_exclusive_flags() {
    use clap::Parser as _;
    assert!(Flags::try_parse_from(["agent", "--node-name", "n"]).is_err(), "one of --token/--kubeconfig is required");
    assert!(Flags::try_parse_from(["agent", "--token", "t", "--kubeconfig", "k"]).is_err());
    assert!(Flags::try_parse_from(["agent", "--kubeconfig", "k"]).is_ok());
}

/// One HTTPS GET to the streaming endpoint trusting `ca`, presenting `client` if given.
/// Returns the raw response, or the error text when the TLS handshake/exchange fails.
async fn get(addr: SocketAddr, ca: &CertificateDer<'static>, client: Option<(&str, &str)>, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("ca");
    let b = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("tls").with_root_certificates(roots);
    let cfg = match client {
        Some((c, k)) => {
            let chain = CertificateDer::pem_slice_iter(c.as_bytes()).collect::<Result<Vec<_>, _>>().expect("cert");
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(k.as_bytes()).expect("key")).expect("client auth")
        }
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::IpAddress(addr.ip().into()), tcp).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.map_err(|_| "timeout".to_string())?.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_endpoint_admits_only_the_api_server_and_kubectl_logs_go_through_it() -> anyhow::Result<()> {
    assert!(Path::new("/usr/bin/kubectl").exists(), "kubectl missing: scripts/install-deps.sh installs it");
    assert_eq!(dari_agent::stream::API_SERVER_CLIENT, dari_apiserver::nodeproxy::KUBELET_CLIENT_USER, "agent and API server must agree on the kubelet client identity");
    let tmp = tempfile::tempdir()?;
    let server = apiserver(&tmp.path().join("server")).await;
    let data = tmp.path().join("agent");
    let ip: IpAddr = "127.0.0.1".parse()?;
    let j = join::join(&url(&server), &token(&tmp.path().join("server")), "tls-node", ip, &data).await?;
    // token mode: the start-up path finds the join's serving certificate and reuses it
    let node_client = dari_agent::client(&j.kubeconfig, None).await?;
    let paths = CredPaths::new(&data);
    let serving_before = std::fs::read_to_string(&paths.serving_crt)?;
    let tls: StreamTls = join::serving_credentials(&node_client, &[server.pki.ca_der().to_vec()], "tls-node", ip, &data).await?;
    assert_eq!(tls.cert_pem, serving_before, "no new certificate for a valid one");

    // a fake runtime with one container whose CRI log file says hello
    let cri = Arc::new(FakeCri::default());
    let mut labels = std::collections::HashMap::new();
    labels.insert("io.kubernetes.pod.namespace".to_string(), "default".to_string());
    labels.insert("io.kubernetes.pod.name".to_string(), "p".to_string());
    labels.insert("io.kubernetes.container.name".to_string(), "c".to_string());
    let sb = cri.run_pod_sandbox(v1::PodSandboxConfig { labels: labels.clone(), ..Default::default() }).await?;
    let id = cri.create_container(&sb, v1::ContainerConfig { labels, metadata: Some(v1::ContainerMetadata { name: "c".into(), attempt: 0 }), ..Default::default() }, Default::default()).await?;
    let log = tmp.path().join("c.log");
    std::fs::write(&log, "2026-12-06T17:14:02.123456789Z stdout F hello over tls\n")?;
    cri.with_state(|s| s.log_paths.insert(id.clone(), log.display().to_string()));
    let (addr, task) = StreamServer::start(cri.clone(), "127.0.0.1:0".parse()?, None, &tls).await?;

    let ca = server.pki.ca_der().clone();
    let path = "/containerLogs/default/p/c";
    // anonymous: 401
    let r = get(addr, &ca, None, path).await.map_err(anyhow::Error::msg)?;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // the node's own certificate, and the admin's: 403 (only the API server's kubelet client)
    let node_crt = std::fs::read_to_string(&paths.client_crt)?;
    let node_key = std::fs::read_to_string(&paths.client_key)?;
    let r = get(addr, &ca, Some((&node_crt, &node_key)), path).await.map_err(anyhow::Error::msg)?;
    assert!(r.starts_with("HTTP/1.1 403") && r.contains("system:node:tls-node"), "{r}");
    let admin = server.pki.admin_cert();
    let r = get(addr, &ca, Some((&admin.cert_pem, &admin.key_pem)), path).await.map_err(anyhow::Error::msg)?;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // the right name from another CA: the handshake fails
    let other = dari_pki::Pki::load_or_create(&tmp.path().join("other"), &dari_pki::PkiOptions { sans: vec![], service_ip: "10.96.0.1".parse()?, hostname: String::new() })?;
    let (fc, fk) = other.issue_client_cert(dari_agent::stream::API_SERVER_CLIENT, &["system:masters"], 1)?;
    let r = get(addr, &ca, Some((&fc, &fk)), path).await;
    assert!(r.is_err() || r.as_deref().is_ok_and(str::is_empty), "a foreign client certificate must not be served: {r:?}");
    // the kubelet client identity: served
    let (kc, kk) = server.pki.issue_client_cert(dari_agent::stream::API_SERVER_CLIENT, &["system:masters"], 1)?;
    let r = get(addr, &ca, Some((&kc, &kk)), path).await.map_err(anyhow::Error::msg)?;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nhello over tls\n"), "{r}");
    // health needs no certificate
    let r = get(addr, &ca, None, "/healthz").await.map_err(anyhow::Error::msg)?;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // through the API server: the Node publishes the endpoint's port, kubectl logs is proxied over TLS
    let admin_client = dari_agent::client(&server.admin_kubeconfig, None).await?;
    let mut facts = dari_agent::node::NodeFacts::gather("tls-node", ip, "fake://1");
    facts.kubelet_port = addr.port();
    dari_agent::node::register(&node_client, &facts, true).await?;
    let pods: Api<Pod> = Api::namespaced(admin_client, "default");
    let pod: Pod = serde_yaml::from_str("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: tls-node\n  containers:\n  - {name: c, image: busybox}\n")?;
    pods.create(&PostParams::default(), &pod).await?;
    let kubeconfig = server.admin_kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(["logs", "p"]).output()).await??;
    assert!(out.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over tls\n");
    task.abort();
    Ok(())
}

#[tokio::test]
async fn kubeconfig_mode_gets_its_serving_certificate_with_its_credentials() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = apiserver(&tmp.path().join("server")).await;
    let ip: IpAddr = "10.200.0.9".parse()?;
    let roots = [server.pki.ca_der().to_vec()];
    // an admin kubeconfig (as the lab uses): the agent asks for its serving certificate
    let admin = dari_agent::client(&server.admin_kubeconfig, None).await?;
    let data = tmp.path().join("agent");
    let tls = join::serving_credentials(&admin, &roots, "node-k", ip, &data).await?;
    assert_eq!(tls.ca_pem, server.pki.ca_pem());
    tls.server_config()?;
    join::check_files(&CredPaths::new(&data), "", "node-k", ip, false).map_err(anyhow::Error::msg)?;
    // reused on the next start
    let again = join::serving_credentials(&admin, &roots, "node-k", ip, &data).await?;
    assert_eq!(again.cert_pem, tls.cert_pem);
    // a CA the API client does not trust is not reused
    let renewed = join::serving_credentials(&admin, &[b"another CA".to_vec()], "node-k", ip, &data).await?;
    assert_ne!(renewed.cert_pem, tls.cert_pem);
    // a node may ask for its own certificates, not for another node's
    let j = join::join(&url(&server), &token(&tmp.path().join("server")), "node-a", ip, &tmp.path().join("a")).await?;
    let node_a = dari_agent::client(&j.kubeconfig, None).await?;
    join::serving_credentials(&node_a, &roots, "node-a", "10.200.0.10".parse()?, &tmp.path().join("a2")).await?;
    let e = join::serving_credentials(&node_a, &roots, "node-b", ip, &tmp.path().join("b")).await.expect_err("forbidden");
    assert!(format!("{e:?}").contains("403") || format!("{e:?}").contains("Forbidden"), "{e:?}");
    Ok(())
}
