//! Real kubectl (/usr/bin/kubectl, Debian package `kubectl`) reads our kubeconfig, verifies our
//! serving cert and authenticates with our admin cert. Fails (not skips) without kubectl.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use dari_pki::{peer_identity, write_kubeconfig, Pki, PkiOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

const KUBECTL: &str = "/usr/bin/kubectl";

fn opts() -> PkiOptions {
    PkiOptions {
        sans: vec![],
        service_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        hostname: "node-a".into(),
    }
}

fn kubectl(args: &[&str]) -> Result<String> {
    if !Path::new(KUBECTL).exists() {
        bail!("{KUBECTL} is missing: apt-get install kubectl (this test must not be skipped)");
    }
    let out = Command::new(KUBECTL)
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn view(kc: &Path, jsonpath: &str) -> Result<String> {
    let kc = kc.to_str().context("utf-8 path")?;
    kubectl(&[
        "config",
        "view",
        "--raw",
        "--kubeconfig",
        kc,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

#[test]
fn kubectl_parses_written_kubeconfig() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(dir.path(), &opts())?;
    let kc = dir.path().join("sub/dir/node.kubeconfig");
    let (cert, key) = pki.issue_client_cert("system:node:node-a", &["system:nodes"], 1)?;
    write_kubeconfig(
        &kc,
        "https://127.0.0.1:6443",
        "lab",
        "system:node:node-a",
        pki.ca_pem(),
        &cert,
        &key,
    )?;
    assert_eq!(std::fs::metadata(&kc)?.permissions().mode() & 0o777, 0o600);

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(view(&kc, "{.current-context}")?, "default");
    assert_eq!(view(&kc, "{.contexts[0].name}")?, "default");
    assert_eq!(view(&kc, "{.contexts[0].context.cluster}")?, "lab");
    assert_eq!(
        view(&kc, "{.contexts[0].context.user}")?,
        "system:node:node-a"
    );
    assert_eq!(view(&kc, "{.clusters[0].name}")?, "lab");
    assert_eq!(
        view(&kc, "{.clusters[0].cluster.server}")?,
        "https://127.0.0.1:6443"
    );
    assert_eq!(
        view(&kc, "{.clusters[0].cluster.certificate-authority-data}")?,
        b64(pki.ca_pem())
    );
    assert_eq!(view(&kc, "{.users[0].name}")?, "system:node:node-a");
    assert_eq!(
        view(&kc, "{.users[0].user.client-certificate-data}")?,
        b64(&cert)
    );
    assert_eq!(view(&kc, "{.users[0].user.client-key-data}")?, b64(&key));
    Ok(())
}

/// kubectl talks to a TLS server using `server_config()` (ALPN narrowed to http/1.1 because
/// this stub speaks only HTTP/1.1): it must verify our serving cert for 127.0.0.1 and present
/// the admin client cert, which the server maps to admin/system:masters.
#[tokio::test]
async fn kubectl_talks_to_our_tls_server_with_admin_kubeconfig() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(dir.path(), &opts())?;
    let mut cfg = (*pki.server_config()?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let who = match peer_identity(tls.get_ref().1) {
                    Ok(Some(u)) => format!("{} {}", u.name, u.groups.join(",")),
                    Ok(None) => "anonymous".into(),
                    Err(e) => format!("error {e}"),
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let body = r#"{"major":"1","minor":"33","gitVersion":"v1.33.0-dari"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
                let _ = tx.send((line, who));
            });
        }
    });

    let kc = dir.path().join("admin.kubeconfig");
    pki.write_admin_kubeconfig(&kc, &format!("https://{addr}"))?;
    let kc_str = kc.to_str().context("utf-8 path")?.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        kubectl(&[
            "--kubeconfig",
            &kc_str,
            "get",
            "--raw",
            "/version",
            "--request-timeout=10s",
        ])
    })
    .await??;
    assert!(out.contains("v1.33.0-dari"), "kubectl output: {out}");
    let (line, who) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await?
        .context("server saw no request")?;
    assert!(
        line.starts_with("GET /version ") || line.starts_with("GET /version?"),
        "{line}"
    );
    assert_eq!(who, "admin system:masters,system:authenticated");
    Ok(())
}
