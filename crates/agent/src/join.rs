//! Joining a cluster, k3s-style, and the node's certificates.
//!
//! `dari server` writes `DIR/node-token` = `sha256:<hex of the CA's DER>::<secret>`. With
//! `dari agent --server URL --token TOKEN`, [`join`]:
//!
//! 1. fetches `URL/cacerts` (the handshake is not verified: the CA is not known yet), hashes the
//!    CA and refuses it unless the hash is the token's ([`AgentError::Join`] says so);
//! 2. POSTs `{nodeName, nodeIP}` to [`JOIN_PATH`] over a connection verified against that pinned
//!    CA, with `Authorization: Bearer <secret>`; the server answers the client certificate
//!    (CN=`system:node:NAME`, O=`system:nodes`) and the serving certificate of the node's
//!    streaming endpoint (SANs: name and IP);
//! 3. writes them under `DATA_DIR/pki/` (keys 0600) and `DATA_DIR/kubeconfig`.
//!
//! With several servers (`--server A,B`), [`join_any`] tries them in order.
//!
//! Later starts reuse the files without asking the server as long as they are consistent
//! ([`check_files`]: CA hash still the token's, certificates signed by it, the right names and
//! IP, more than 30 days left, keys matching).
//!
//! With `--kubeconfig` instead of a token, [`serving_credentials`] asks the same endpoint for the
//! serving certificate, authenticated by the kubeconfig's client certificate (the server admits
//! `system:masters` and the node's own `system:node:NAME`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{json, Value};

use crate::error::{AgentError, Result};
use crate::stream::StreamTls;

/// The server's join endpoint (see `dari_apiserver::join`).
pub const JOIN_PATH: &str = "/v1-dari/node-certs";
/// The server's public CA endpoint.
pub const CA_PATH: &str = "/cacerts";
/// Certificates with less than this left are requested again.
const RENEW_BEFORE_SECS: i64 = 30 * 86_400;
/// Connect/request timeout of the join requests.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A join token `sha256:<64 hex>::<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// `sha256:<hex>` of the CA certificate (DER).
    pub ca_hash: String,
    /// The shared secret.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_hash", &self.ca_hash).field("secret", &"[elided]").finish()
    }
}

/// Parses a join token (pure). A token without the CA hash is refused: the hash is what makes
/// fetching the CA over an unverified connection safe.
pub fn parse_token(token: &str) -> Result<JoinToken> {
    let bad = |why: &str| AgentError::Config(format!("--token is not a dari join token ({why}); use the whole content of the server's DATA_DIR/node-token, `sha256:<hex>::<secret>`"));
    let (hash, secret) = token.trim().split_once("::").ok_or_else(|| bad("no `::` between the CA hash and the secret"))?;
    let hex = hash.strip_prefix("sha256:").ok_or_else(|| bad("the CA hash does not start with sha256:"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the CA hash is not 64 hex digits"));
    }
    if secret.is_empty() {
        return Err(bad("the secret is empty"));
    }
    Ok(JoinToken { ca_hash: format!("sha256:{}", hex.to_ascii_lowercase()), secret: secret.to_string() })
}

/// Where a node keeps its credentials.
#[derive(Debug, Clone)]
pub struct CredPaths {
    /// `DATA_DIR/pki`.
    pub dir: PathBuf,
    /// The cluster CA.
    pub ca: PathBuf,
    /// Client certificate (CN=system:node:NAME), token mode only.
    pub client_crt: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Serving certificate of the streaming endpoint.
    pub serving_crt: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// `DATA_DIR/kubeconfig` (token mode).
    pub kubeconfig: PathBuf,
}

impl CredPaths {
    /// The paths under `data_dir`.
    pub fn new(data_dir: &Path) -> CredPaths {
        let dir = data_dir.join("pki");
        CredPaths {
            ca: dir.join("ca.crt"),
            client_crt: dir.join("node.crt"),
            client_key: dir.join("node.key"),
            serving_crt: dir.join("serving.crt"),
            serving_key: dir.join("serving.key"),
            kubeconfig: data_dir.join("kubeconfig"),
            dir,
        }
    }
}

/// What [`join`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The kubeconfig to use (`DATA_DIR/kubeconfig`).
    pub kubeconfig: PathBuf,
    /// True when the files of an earlier join were still good and no request was made.
    pub reused: bool,
}

/// Joins the cluster at `server` (`https://HOST:PORT`) with `token`, or reuses the credentials of
/// an earlier join. See the module docs.
pub async fn join(server: &str, token: &str, node_name: &str, node_ip: IpAddr, data_dir: &Path) -> Result<Joined> {
    let token = parse_token(token)?;
    let paths = CredPaths::new(data_dir);
    let span = tracing::info_span!("join", %server, node = %node_name);
    let _e = span.enter();
    drop(_e);
    match check_files(&paths, &token.ca_hash, node_name, node_ip, true) {
        Ok(ca_pem) => {
            let (cert, key) = (read(&paths.client_crt)?, read(&paths.client_key)?);
            write_node_kubeconfig(&paths, server, node_name, &ca_pem, &cert, &key)?;
            tracing::info!(dir = %paths.dir.display(), "reusing the node credentials of an earlier join");
            return Ok(Joined { kubeconfig: paths.kubeconfig, reused: true });
        }
        Err(why) if paths.ca.exists() => tracing::info!(%why, "requesting new node credentials"),
        Err(_) => {}
    }
    let endpoint = Endpoint::parse(server)?;
    let jerr = |detail: String| AgentError::Join { server: server.to_string(), detail, source: None };
    // 1. the CA, pinned by the token
    let (status, body) = endpoint.request(insecure_config()?, "GET", CA_PATH, None, None).await?;
    if status != 200 {
        return Err(jerr(format!("GET {CA_PATH} answered {status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    let ca_pem = String::from_utf8_lossy(&body).into_owned();
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| jerr(format!("{CA_PATH} did not return a PEM certificate: {e}")))?;
    let got = dari_pki::ca_hash_der(&ca_der);
    if got != token.ca_hash {
        return Err(jerr(format!(
            "the server's CA has hash {got} but the token pins {}: refusing to trust it (wrong server, a token from another cluster, or someone in between); take the token from this server's DATA_DIR/node-token",
            token.ca_hash
        )));
    }
    // 2. certificates, over a connection verified against the pinned CA
    let trusted = ca_client_config(&ca_der, None)?;
    let req = json!({"nodeName": node_name, "nodeIP": node_ip.to_string()});
    let (status, body) = endpoint.request(trusted, "POST", JOIN_PATH, Some(&token.secret), Some(req.to_string().into_bytes())).await?;
    match status {
        200 => {}
        401 => return Err(jerr("the server refused the token's secret (401 Unauthorized): the CA matches but the secret is wrong; take the token from this server's DATA_DIR/node-token".into())),
        s => return Err(jerr(format!("POST {JOIN_PATH} answered {s}: {}", status_message(&body)))),
    }
    let issued: Value = serde_json::from_slice(&body).map_err(|e| jerr(format!("unreadable join answer: {e}")))?;
    let field = |k: &str| issued.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| jerr(format!("join answer without {k}")));
    let (cert, key, scert, skey) = (field("clientCert")?, field("clientKey")?, field("servingCert")?, field("servingKey")?);
    create_private_dir(&paths.dir)?;
    write_file(&paths.client_key, key.as_bytes(), 0o600)?;
    write_file(&paths.client_crt, cert.as_bytes(), 0o644)?;
    write_file(&paths.serving_key, skey.as_bytes(), 0o600)?;
    write_file(&paths.serving_crt, scert.as_bytes(), 0o644)?;
    write_file(&paths.ca, ca_pem.as_bytes(), 0o644)?;
    // what was just written must pass the reuse check, or the next start would join again
    check_files(&paths, &token.ca_hash, node_name, node_ip, true).map_err(|why| jerr(format!("the issued certificates are unusable: {why}")))?;
    write_node_kubeconfig(&paths, server, node_name, &ca_pem, &cert, &key)?;
    tracing::info!(dir = %paths.dir.display(), "joined: node certificates written");
    Ok(Joined { kubeconfig: paths.kubeconfig, reused: false })
}

/// [`join`] through the first of `servers` that works, in order (`--server A,B,...`). With one
/// server its error is returned as is; with several, one [`AgentError::Join`] lists why each
/// failed. Reusing the files of an earlier join needs no server.
pub async fn join_any(servers: &[String], token: &str, node_name: &str, node_ip: IpAddr, data_dir: &Path) -> Result<Joined> {
    parse_token(token)?;
    let mut why = Vec::new();
    for (k, server) in servers.iter().enumerate() {
        match join(server, token, node_name, node_ip, data_dir).await {
            Ok(j) => return Ok(j),
            Err(e) if servers.len() == 1 => return Err(e),
            Err(e) => {
                if k + 1 < servers.len() {
                    tracing::warn!(%server, error = %e, "joining through this server failed; trying the next");
                }
                why.push(e.to_string());
            }
        }
    }
    Err(AgentError::Join { server: servers.join(","), detail: format!("no server could be joined: {}", why.join("; ")), source: None })
}

fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

fn write_node_kubeconfig(paths: &CredPaths, server: &str, node_name: &str, ca: &str, cert: &str, key: &str) -> Result<()> {
    dari_pki::write_kubeconfig(&paths.kubeconfig, server, "dari", &format!("system:node:{node_name}"), ca, cert, key)
        .map_err(|e| AgentError::Credentials { path: paths.kubeconfig.clone(), detail: format!("writing the node kubeconfig: {e}") })
}

/// The serving certificate of the streaming endpoint and the CA its clients must be signed by.
///
/// Reuses `DATA_DIR/pki/{ca,serving}.crt` when they are consistent and the CA is one the API
/// client trusts (`kube_roots`, DER; empty = not checked); otherwise asks the server's
/// [`JOIN_PATH`] with the client's credentials (kubeconfig mode: an admin or the node itself).
pub async fn serving_credentials(client: &kube::Client, kube_roots: &[Vec<u8>], node_name: &str, node_ip: IpAddr, data_dir: &Path) -> Result<StreamTls> {
    let paths = CredPaths::new(data_dir);
    let current = check_files(&paths, "", node_name, node_ip, false).and_then(|ca_pem| {
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
        if kube_roots.is_empty() || kube_roots.iter().any(|r| r.as_slice() == der.as_ref()) {
            Ok(ca_pem)
        } else {
            Err("the CA in the data dir is not the API server's".to_string())
        }
    });
    let cerr = |detail: String| AgentError::Credentials { path: paths.serving_crt.clone(), detail };
    let ca_pem = match current {
        Ok(ca) => ca,
        Err(why) => {
            tracing::info!(%why, node = %node_name, "requesting the serving certificate of the streaming endpoint");
            let body = json!({"nodeName": node_name, "nodeIP": node_ip.to_string()}).to_string().into_bytes();
            let req = http::Request::post(JOIN_PATH)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| cerr(e.to_string()))?;
            let issued: Value = client.request(req).await.map_err(AgentError::kube("request certificates", format!("node/{node_name}")))?;
            let field = |k: &str| issued.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| cerr(format!("join answer without {k}")));
            let (ca, scert, skey) = (field("ca")?, field("servingCert")?, field("servingKey")?);
            create_private_dir(&paths.dir)?;
            write_file(&paths.serving_key, skey.as_bytes(), 0o600)?;
            write_file(&paths.serving_crt, scert.as_bytes(), 0o644)?;
            write_file(&paths.ca, ca.as_bytes(), 0o644)?;
            check_files(&paths, "", node_name, node_ip, false).map_err(|why| cerr(format!("the issued certificate is unusable: {why}")))?
        }
    };
    Ok(StreamTls { ca_pem, cert_pem: read(&paths.serving_crt)?, key_pem: read(&paths.serving_key)? })
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(AgentError::io("reading", p))
}

/// Checks the credential files (pure but for reading them): the CA (hash = `want_hash` unless
/// empty), the serving certificate (signed by it, SANs include the node IP and name, > 30 days
/// left, key matching) and, with `client`, the client certificate (CN=system:node:NAME).
/// Returns the CA PEM, or why the files cannot be reused.
pub fn check_files(paths: &CredPaths, want_hash: &str, node_name: &str, node_ip: IpAddr, client: bool) -> std::result::Result<String, String> {
    let rd = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca_pem = rd(&paths.ca)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("{}: {e}", paths.ca.display()))?;
    if !want_hash.is_empty() && dari_pki::ca_hash_der(&ca_der) != want_hash {
        return Err(format!("{} is not the CA the token pins", paths.ca.display()));
    }
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| format!("{}: {e}", paths.ca.display()))?;
    let check_leaf = |crt: &Path, key: &Path| -> std::result::Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
        let pem = rd(crt)?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("{}: {e}", crt.display()))?;
        let key_der = PrivateKeyDer::from_pem_slice(rd(key)?.as_bytes()).map_err(|e| format!("{}: {e}", key.display()))?;
        {
            let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("{}: {e}", crt.display()))?;
            cert.verify_signature(Some(ca.public_key())).map_err(|_| format!("{} is not signed by {}", crt.display(), paths.ca.display()))?;
            let left = cert.validity().not_after.timestamp() - chrono::Utc::now().timestamp();
            if left < RENEW_BEFORE_SECS {
                return Err(format!("{} expires within 30 days", crt.display()));
            }
        }
        Ok((der, key_der))
    };
    let (sder, skey) = check_leaf(&paths.serving_crt, &paths.serving_key)?;
    {
        let (_, cert) = x509_parser::parse_x509_certificate(&sder).map_err(|e| e.to_string())?;
        let (mut has_ip, mut has_name) = (false, false);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        has_ip |= ip == Some(node_ip);
                    }
                    x509_parser::extensions::GeneralName::DNSName(d) => has_name |= d.eq_ignore_ascii_case(node_name),
                    _ => {}
                }
            }
        }
        if !has_ip || !has_name {
            return Err(format!("{} is not for {node_name} / {node_ip}", paths.serving_crt.display()));
        }
    }
    // rustls checks that the key belongs to the certificate
    StreamTls::server_config_from(&ca_der, vec![sder], skey).map_err(|e| format!("{}: {e}", paths.serving_key.display()))?;
    if client {
        let (cder, ckey) = check_leaf(&paths.client_crt, &paths.client_key)?;
        let user = dari_pki::identity_from_cert(&cder).map_err(|e| format!("{}: {e}", paths.client_crt.display()))?;
        if user.name != format!("system:node:{node_name}") || !user.groups.iter().any(|g| g == "system:nodes") {
            return Err(format!("{} is for {} {:?}, not system:node:{node_name}", paths.client_crt.display(), user.name, user.groups));
        }
        ca_client_config(&ca_der, Some((vec![cder], ckey))).map_err(|e| format!("{}: {e}", paths.client_key.display()))?;
    }
    Ok(ca_pem)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(AgentError::io("creating dir", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(AgentError::io("chmod", dir))
}

/// Writes atomically (temporary file + rename) with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(AgentError::io("writing", &tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(AgentError::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(AgentError::io("renaming into", path))
}

#[allow(deprecated)] // ring: see dari_pki (no cmake/aws-lc on small boxes)
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl FnOnce(rustls::Error) -> AgentError + '_ {
    move |source| AgentError::Tls { what: what.to_string(), source }
}

/// Client config trusting only `ca`, optionally presenting a client certificate.
fn ca_client_config(ca: &CertificateDer<'_>, auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone().into_owned()).map_err(tls_err("cluster CA"))?;
    let b = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(tls_err("client config"))?.with_root_certificates(roots);
    let mut cfg = match auth {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).map_err(tls_err("client certificate"))?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate: used only to fetch the CA, which is then checked against the
/// token's hash before anything secret is sent.
#[derive(Debug)]
struct UnverifiedServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn insecure_config() -> Result<Arc<rustls::ClientConfig>> {
    let p = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("client config"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer(p)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// `https://HOST[:PORT]`.
struct Endpoint {
    url: String,
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(server: &str) -> Result<Endpoint> {
        let bad = |why: &str| AgentError::Config(format!("--server {server:?} {why} (expected https://HOST:PORT)"));
        let uri: http::Uri = server.parse().map_err(|_| bad("is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("is not an https URL"));
        }
        let host = uri.host().ok_or_else(|| bad("has no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Endpoint { url: server.to_string(), host, port: uri.port_u16().unwrap_or(443) })
    }

    /// One HTTP/1.1 request; returns the status and body.
    async fn request(&self, tls: Arc<rustls::ClientConfig>, method: &str, path: &str, bearer: Option<&str>, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
        let fail = |detail: String| AgentError::Join { server: self.url.clone(), detail, source: None };
        let work = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| fail(format!("connecting: {e}")))?;
            let name = ServerName::try_from(self.host.clone()).map_err(|e| fail(format!("server name {}: {e}", self.host)))?;
            let tls = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| fail(format!("TLS handshake for {method} {path}: {e}")))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| fail(format!("HTTP: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = http::Request::builder().method(method).uri(path).header(http::header::HOST, format!("{}:{}", self.host, self.port));
            if let Some(b) = bearer {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {b}"));
            }
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| fail(e.to_string()))?;
            let resp = send.send_request(req).await.map_err(|e| fail(format!("{method} {path}: {e}")))?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| fail(format!("{method} {path}: {e}")))?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(JOIN_TIMEOUT, work).await.map_err(|_| fail(format!("{method} {path}: no answer within {}s", JOIN_TIMEOUT.as_secs())))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let h = "ab".repeat(32);
        let t = parse_token(&format!("sha256:{}::s3cret\n", h.to_uppercase())).expect("token");
        assert_eq!(t, JoinToken { ca_hash: format!("sha256:{h}"), secret: "s3cret".into() });
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in ["s3cret", "sha256:abcd::s", &format!("md5:{h}::s"), &format!("sha256:{h}::"), &format!("sha256:{}::s", "zz".repeat(32))] {
            let e = parse_token(bad).expect_err(bad).to_string();
            assert!(e.contains("node-token"), "{e}");
        }
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://10.0.0.1:6443").expect("url");
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.1", 6443));
        let e = Endpoint::parse("https://[::1]:6443").expect("url");
        assert_eq!(e.host, "::1");
        assert!(Endpoint::parse("http://10.0.0.1:6443").is_err());
    }
}
