//! A real TLS server on 127.0.0.1:0 using `Pki::server_config()`: admin clients are identified,
//! anonymous clients get in without identity, clients from another CA are refused.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use dari_pki::{peer_identity, Pki, PkiOptions, UserInfo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn opts() -> PkiOptions {
    PkiOptions {
        sans: vec![],
        service_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        hostname: "node-a".into(),
    }
}

/// What the server saw for one connection.
type Seen = Result<(Option<UserInfo>, Option<Vec<u8>>), String>;

/// Serves TLS on an ephemeral loopback port. For each connection: reports the identity (or
/// the handshake error) on the channel and writes back the identity name ("anonymous" if none).
async fn serve(pki: &Pki) -> Result<(SocketAddr, mpsc::UnboundedReceiver<Seen>)> {
    let acceptor = TlsAcceptor::from(pki.server_config()?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                    Ok(mut tls) => {
                        let (_, conn) = tls.get_ref();
                        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                        let who = peer_identity(conn).map_err(|e| e.to_string());
                        let reply = match &who {
                            Ok(Some(u)) => u.name.clone(),
                            Ok(None) => "anonymous".into(),
                            Err(e) => format!("error: {e}"),
                        };
                        let _ = tls.write_all(reply.as_bytes()).await;
                        let _ = tls.shutdown().await;
                        let _ = tx.send(who.map(|w| (w, alpn)));
                    }
                }
            });
        }
    });
    Ok((addr, rx))
}

/// Connects, completes the handshake, reads the server's reply to EOF.
async fn talk(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, sni: &str) -> Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_owned())?, tcp)
        .await
        .context("client handshake")?;
    let mut buf = String::new();
    tls.read_to_string(&mut buf)
        .await
        .context("reading reply")?;
    Ok(buf)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("server reported nothing within 10s")
        .expect("server task gone")
}

#[tokio::test]
async fn admin_is_identified_anonymous_is_allowed_foreign_ca_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(dir.path(), &opts())?;
    let (addr, mut rx) = serve(&pki).await?;

    // 1. admin cert -> identity admin / system:masters (ALPN h2 offered by the client wins).
    let admin = pki.admin_cert();
    let mut cfg = (*pki.client_config(&admin.cert_pem, &admin.key_pem)?).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    assert_eq!(
        talk(addr, Arc::new(cfg), "kubernetes.default.svc").await?,
        "admin"
    );
    let (who, alpn) = next(&mut rx).await.map_err(|e| anyhow!(e))?;
    assert_eq!(
        who,
        Some(UserInfo {
            name: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        })
    );
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // 2. a node cert issued later by the same CA, over an IP SAN.
    let (c, k) = pki.issue_client_cert("system:node:node-a", &["system:nodes"], 1)?;
    assert_eq!(
        talk(addr, pki.client_config(&c, &k)?, "127.0.0.1").await?,
        "system:node:node-a"
    );
    let (who, _) = next(&mut rx).await.map_err(|e| anyhow!(e))?;
    assert_eq!(
        who.map(|u| u.groups),
        Some(vec!["system:nodes".into(), "system:authenticated".into()])
    );

    // 3. no client cert -> handshake succeeds, anonymous.
    let mut cfg = (*pki.anonymous_client_config()?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert_eq!(talk(addr, Arc::new(cfg), "10.96.0.1").await?, "anonymous");
    let (who, alpn) = next(&mut rx).await.map_err(|e| anyhow!(e))?;
    assert_eq!(who, None);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    // 4. a client cert from another CA (trusting our CA, so only client auth can fail) -> refused.
    let other_dir = tempfile::tempdir()?;
    let other = Pki::load_or_create(other_dir.path(), &opts())?;
    let (fc, fk) = other.issue_client_cert("admin", &["system:masters"], 1)?;
    let result = talk(addr, pki.client_config(&fc, &fk)?, "localhost").await;
    assert!(
        result.is_err(),
        "foreign client cert was accepted: {result:?}"
    );
    let seen = next(&mut rx).await;
    let err = seen.expect_err("server must fail the handshake");
    // Both CAs are named CN=dari-ca, so webpki finds our CA by name and then fails its
    // signature check (BadSignature); a differently named CA would give UnknownIssuer.
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );

    // 5. the client side rejects a server whose name is not in the SANs.
    let res = talk(addr, pki.anonymous_client_config()?, "not-in-sans.example").await;
    assert!(
        res.is_err(),
        "server cert accepted for a name not in its SANs"
    );
    let _ = next(&mut rx).await; // server sees the client's alert
    Ok(())
}

#[tokio::test]
async fn client_of_another_ca_does_not_trust_our_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(dir.path(), &opts())?;
    let other_dir = tempfile::tempdir()?;
    let other = Pki::load_or_create(other_dir.path(), &opts())?;
    let (addr, mut rx) = serve(&pki).await?;
    let res = talk(addr, other.anonymous_client_config()?, "localhost").await;
    let err = res.expect_err("client trusted a server from another CA");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("BadSignature") || msg.contains("UnknownIssuer"),
        "{msg}"
    );
    assert!(next(&mut rx).await.is_err());
    Ok(())
}
