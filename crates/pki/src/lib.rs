//! dari's PKI: the certificates of "Kubernetes the hard way", made and kept for you.
//!
//! Start with [`Pki::load_or_create`]. On first start it creates, under `DIR/pki/`:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | self-signed CA, CN=`dari-ca`, 10 years |
//! | `server.crt`, `server.key` | API server serving cert (SANs: 127.0.0.1, localhost, `kubernetes[.default[.svc[.cluster.local]]]`, the first service IP, the hostname, every `--tls-san`) |
//! | `admin.crt`, `admin.key` | client cert CN=`admin`, O=`system:masters` |
//!
//! Keys are mode 0600. Restarts reuse every file; only the serving cert is re-issued (same CA)
//! when a new `--tls-san` is missing from it, and leaf certs are renewed when they are within
//! 30 days of expiry. Missing or corrupt pieces are errors naming the path: dari never
//! silently replaces a CA that clients may already trust.
//!
//! From a loaded [`Pki`]:
//! - [`Pki::server_config`]: rustls server config (ALPN h2, http/1.1) that verifies client certs
//!   against the CA but also admits anonymous clients; after the handshake,
//!   [`peer_identity`] / [`identity_from_cert`] turn the peer cert into a [`UserInfo`].
//! - [`Pki::issue_client_cert`], [`Pki::issue_serving_cert`]: more certs from the same CA
//!   (nodes, controllers, agents' 10250 endpoint, etcd).
//! - [`Pki::client_config`], [`write_kubeconfig`], [`Pki::write_admin_kubeconfig`]: the client
//!   side.
//! - [`Pki::ca_hash`]: `sha256:<hex>` of the CA certificate (DER) for join tokens.
//!
//! All TLS uses the `ring` provider explicitly, never the process-wide default.

mod certs;
mod error;
mod fsutil;
mod identity;
mod kubeconfig;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

pub use certs::{
    api_server_sans, San, CA_COMMON_NAME, CA_VALIDITY_DAYS, LEAF_VALIDITY_DAYS, MAX_ORGS,
};
pub use error::PkiError;
pub use identity::{
    identity_from_cert, peer_identity, peer_identity_from_chain, UserInfo, GROUP_AUTHENTICATED,
};
pub use kubeconfig::{render_kubeconfig, write_kubeconfig, CONTEXT_NAME};

use fsutil::{read_opt, write_atomic, FileMode};

/// Leaf certs (server, admin) expiring sooner than this are re-issued at load.
const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

/// Common name of the API server's serving certificate.
pub const SERVER_COMMON_NAME: &str = "kube-apiserver";
/// Group with full access (kube-apiserver's superuser group).
pub const GROUP_MASTERS: &str = "system:masters";
/// The user the API server authenticates as when it calls a node's streaming endpoint (CN of its
/// kubelet client certificate, like kube-apiserver's `--kubelet-client-certificate`); the agent
/// admits only this user.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// ALPN protocols offered by [`Pki::server_config`], in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What [`Pki::load_or_create`] needs to know to issue the API server certificate.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// Extra `--tls-san` values: IP addresses or DNS names.
    pub sans: Vec<String>,
    /// First IP of the service CIDR (the `kubernetes` Service), e.g. 10.96.0.1.
    pub service_ip: IpAddr,
    /// This node's hostname / node name; added as a DNS SAN (skipped if empty).
    pub hostname: String,
}

/// Files written by [`Pki::write_etcd_certs`].
#[derive(Debug, Clone)]
pub struct EtcdCertPaths {
    /// The CA (etcd's `--trusted-ca-file`, `--peer-trusted-ca-file`; dari's `--etcd-cafile`).
    pub ca: PathBuf,
    /// Per member: certificate and key (etcd's `--cert-file/--key-file` and `--peer-*`).
    pub members: Vec<(PathBuf, PathBuf)>,
    /// The API server's client certificate (`dari server --etcd-certfile`).
    pub client_cert: PathBuf,
    /// Its key (`--etcd-keyfile`).
    pub client_key: PathBuf,
}

/// Paths of the files under `DIR/pki/`.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    /// `DIR/pki`.
    pub dir: PathBuf,
    /// CA certificate.
    pub ca_crt: PathBuf,
    /// CA private key.
    pub ca_key: PathBuf,
    /// API server serving certificate.
    pub server_crt: PathBuf,
    /// API server serving key.
    pub server_key: PathBuf,
    /// Admin client certificate.
    pub admin_crt: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
}

impl PkiPaths {
    /// Paths under `data_dir/pki`.
    pub fn new(data_dir: &Path) -> PkiPaths {
        let dir = data_dir.join("pki");
        PkiPaths {
            ca_crt: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            admin_crt: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            dir,
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKeyPem {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKeyPem")
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

/// dari's certificate authority with the API server and admin credentials, loaded from (or
/// created in) `DIR/pki/`. See the crate docs.
#[derive(Debug)]
pub struct Pki {
    paths: PkiPaths,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    server: CertKeyPem,
    admin: CertKeyPem,
}

/// Which leaf a load step deals with.
struct LeafSpec<'a> {
    crt: &'a Path,
    key: &'a Path,
    /// SANs that must be present (server only).
    required_sans: &'a [San],
}

enum LeafState {
    Ok(CertKeyPem),
    Reissue(&'static str),
}

impl Pki {
    /// Loads the PKI from `dir/pki/`, creating whatever is missing on first start.
    ///
    /// - Nothing there: creates CA, server and admin certs.
    /// - CA present: reuses it. A leaf pair (server or admin) whose two files are both absent
    ///   is re-issued; the server cert is re-issued when a SAN from `opts` is missing from it;
    ///   either leaf is re-issued within 30 days of expiry.
    /// - Errors (naming the path): one half of a pair missing, unparsable PEM, key not matching
    ///   its certificate, a leaf not signed by the CA, a CA cert that is not a CA, or leaf files
    ///   present while the CA is absent.
    pub fn load_or_create(dir: &Path, opts: &PkiOptions) -> Result<Pki, PkiError> {
        let paths = PkiPaths::new(dir);
        let _span = tracing::info_span!("pki_load", dir = %paths.dir.display()).entered();
        let sans = api_server_sans(opts.service_ip, &opts.hostname, &opts.sans)?;
        create_private_dir(&paths.dir)?;

        let (ca_pem, ca_der, issuer) = load_or_create_ca(&paths)?;

        let server_spec = LeafSpec {
            crt: &paths.server_crt,
            key: &paths.server_key,
            required_sans: &sans,
        };
        let server = match check_leaf(&server_spec, &ca_der)? {
            LeafState::Ok(pair) => pair,
            LeafState::Reissue(why) => {
                tracing::info!(path = %paths.server_crt.display(), why, "issuing API server certificate");
                let params = certs::serving_params(SERVER_COMMON_NAME, &sans, LEAF_VALIDITY_DAYS)?;
                let (cert_pem, key_pem) = certs::sign(&params, &issuer, SERVER_COMMON_NAME)?;
                store_pair(&server_spec, cert_pem, key_pem)?
            }
        };

        let admin_spec = LeafSpec {
            crt: &paths.admin_crt,
            key: &paths.admin_key,
            required_sans: &[],
        };
        let admin = match check_leaf(&admin_spec, &ca_der)? {
            LeafState::Ok(pair) => pair,
            LeafState::Reissue(why) => {
                tracing::info!(path = %paths.admin_crt.display(), why, "issuing admin client certificate");
                let params = certs::client_params("admin", &[GROUP_MASTERS], LEAF_VALIDITY_DAYS)?;
                let (cert_pem, key_pem) = certs::sign(&params, &issuer, "admin")?;
                store_pair(&admin_spec, cert_pem, key_pem)?
            }
        };

        Ok(Pki {
            paths,
            ca_pem,
            ca_der,
            issuer,
            server,
            admin,
        })
    }

    /// Issues a client certificate (EKU clientAuth) signed by the CA: CN is the user name, each
    /// org a group (e.g. `system:node:pi1` / `system:nodes`). At most [`MAX_ORGS`] distinct
    /// orgs (an rcgen limitation; more is [`PkiError::TooManyOrganizations`]). Returns
    /// `(cert_pem, key_pem)`; nothing is written to disk.
    pub fn issue_client_cert(
        &self,
        cn: &str,
        orgs: &[&str],
        validity_days: u32,
    ) -> Result<(String, String), PkiError> {
        let params = certs::client_params(cn, orgs, validity_days)?;
        certs::sign(&params, &self.issuer, cn)
    }

    /// Issues a serving certificate (EKU serverAuth) with the given SANs (IPs or DNS names),
    /// valid for [`LEAF_VALIDITY_DAYS`]. Returns `(cert_pem, key_pem)`; nothing is written.
    pub fn issue_serving_cert(
        &self,
        cn: &str,
        sans: &[&str],
    ) -> Result<(String, String), PkiError> {
        let sans = sans
            .iter()
            .map(|s| San::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let params = certs::serving_params(cn, &sans, LEAF_VALIDITY_DAYS)?;
        certs::sign(&params, &self.issuer, cn)
    }

    /// Issues an etcd member certificate (EKU serverAuth and clientAuth: it serves clients and
    /// peers, and dials its peers) with the given SANs. Returns `(cert_pem, key_pem)`.
    pub fn issue_peer_cert(&self, cn: &str, sans: &[&str]) -> Result<(String, String), PkiError> {
        let sans = sans.iter().map(|s| San::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let params = certs::peer_params(cn, &sans, LEAF_VALIDITY_DAYS)?;
        certs::sign(&params, &self.issuer, cn)
    }

    /// Writes, under `out`, what an etcd cluster with `--client-cert-auth` and
    /// `--peer-client-cert-auth` needs from this CA (the hard-way write-up's etcd certificates):
    /// `ca.crt`; per member `NAME.crt`/`NAME.key` (serving and peer, SANs = that member's
    /// addresses); and `apiserver-etcd-client.crt`/`.key` (CN kube-apiserver-etcd-client) for
    /// `dari server --etcd-certfile/--etcd-keyfile`. Existing files are replaced.
    pub fn write_etcd_certs(&self, out: &Path, members: &[(&str, Vec<&str>)]) -> Result<EtcdCertPaths, PkiError> {
        std::fs::create_dir_all(out).map_err(|source| PkiError::CreateDir { path: out.to_owned(), source })?;
        let ca = out.join("ca.crt");
        fsutil::write_atomic(&ca, self.ca_pem.as_bytes(), fsutil::FileMode::Public)?;
        let mut member_files = Vec::new();
        for (name, sans) in members {
            let (crt, key) = self.issue_peer_cert(name, sans)?;
            let (c, k) = (out.join(format!("{name}.crt")), out.join(format!("{name}.key")));
            fsutil::write_atomic(&c, crt.as_bytes(), fsutil::FileMode::Public)?;
            fsutil::write_atomic(&k, key.as_bytes(), fsutil::FileMode::Secret)?;
            member_files.push((c, k));
        }
        let (crt, key) = self.issue_client_cert("kube-apiserver-etcd-client", &[], LEAF_VALIDITY_DAYS)?;
        let (client_cert, client_key) = (out.join("apiserver-etcd-client.crt"), out.join("apiserver-etcd-client.key"));
        fsutil::write_atomic(&client_cert, crt.as_bytes(), fsutil::FileMode::Public)?;
        fsutil::write_atomic(&client_key, key.as_bytes(), fsutil::FileMode::Secret)?;
        Ok(EtcdCertPaths { ca, members: member_files, client_cert, client_key })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// `sha256:<lower-case hex>` of the CA certificate's DER bytes, for `<hash>::<secret>`
    /// join tokens. (Note: k3s hashes its PEM CA bundle instead; this one hashes the DER.)
    pub fn ca_hash(&self) -> String {
        ca_hash_der(&self.ca_der)
    }

    /// The API server's serving certificate and key.
    pub fn server_cert(&self) -> &CertKeyPem {
        &self.server
    }

    /// The admin (CN=admin, O=system:masters) client certificate and key.
    pub fn admin_cert(&self) -> &CertKeyPem {
        &self.admin
    }

    /// Where the files live.
    pub fn paths(&self) -> &PkiPaths {
        &self.paths
    }

    /// TLS server config for the API server: the serving cert, ALPN `h2` then `http/1.1`, and
    /// a client-cert verifier against the CA that also admits clients without a certificate
    /// (the API server answers those 401 except on health/version endpoints). A client
    /// presenting a certificate not signed by the CA fails the handshake.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = ring_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|source| PkiError::Verifier { source })?;
        let chain =
            vec![
                certs::pem_to_der(&self.server.cert_pem).map_err(|source| PkiError::Corrupt {
                    path: self.paths.server_crt.clone(),
                    what: "certificate",
                    source,
                })?,
            ];
        let key = PrivateKeyDer::from_pem_slice(self.server.key_pem.as_bytes()).map_err(|e| {
            PkiError::Corrupt {
                path: self.paths.server_key.clone(),
                what: "private key",
                source: Box::new(e),
            }
        })?;
        let tls = |source| PkiError::Tls {
            side: "server",
            source,
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls)?;
        cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// TLS client config trusting only this CA and presenting the given client certificate.
    /// No ALPN is set (HTTP clients set their own).
    pub fn client_config(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::InvalidInput {
                what: "client certificate PEM",
                source: Box::new(e),
            })?;
        if chain.is_empty() {
            return Err(PkiError::InvalidInput {
                what: "client certificate PEM",
                source: "no CERTIFICATE block".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            PkiError::InvalidInput {
                what: "client key PEM",
                source: Box::new(e),
            }
        })?;
        let cfg = self
            .client_builder()?
            .with_client_auth_cert(chain, key)
            .map_err(|source| PkiError::Tls {
                side: "client",
                source,
            })?;
        Ok(Arc::new(cfg))
    }

    /// TLS client config trusting only this CA, presenting no certificate (anonymous).
    pub fn anonymous_client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        Ok(Arc::new(self.client_builder()?.with_no_client_auth()))
    }

    /// Writes a kubeconfig for the admin user (cluster `dari`, user `admin`, context
    /// `default`) pointing at `server_url`, mode 0600.
    pub fn write_admin_kubeconfig(&self, path: &Path, server_url: &str) -> Result<(), PkiError> {
        write_kubeconfig(
            path,
            server_url,
            "dari",
            "admin",
            &self.ca_pem,
            &self.admin.cert_pem,
            &self.admin.key_pem,
        )
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // The CA was parsed at load; a failure here would mean webpki rejects what x509-parser
        // accepted, which then surfaces as a handshake failure rather than a panic.
        let (_added, _ignored) = roots.add_parsable_certificates([self.ca_der.clone()]);
        roots
    }

    fn client_builder(
        &self,
    ) -> Result<
        rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
        PkiError,
    > {
        Ok(rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| PkiError::Tls {
                side: "client",
                source,
            })?
            .with_root_certificates(self.roots()))
    }
}

/// The ring crypto provider. The workspace uses ring everywhere (no cmake/aws-lc build on small
/// boxes); rustls 0.23.48 deprecated it only because it lacks post-quantum key exchange.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a DER certificate.
pub fn ca_hash_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| PkiError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

fn corrupt_cert(
    path: &Path,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> PkiError + '_ {
    move |source| PkiError::Corrupt {
        path: path.to_owned(),
        what: "certificate",
        source,
    }
}

fn parse_key(path: &Path, pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| PkiError::Corrupt {
        path: path.to_owned(),
        what: "private key",
        source: Box::new(e),
    })
}

fn check_key_matches(
    crt: &Path,
    key_path: &Path,
    cert: &x509_parser::certificate::X509Certificate<'_>,
    key: &KeyPair,
) -> Result<(), PkiError> {
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::Inconsistent {
            path: key_path.to_owned(),
            problem: format!(
                "private key does not match the certificate in {}",
                crt.display()
            ),
        });
    }
    Ok(())
}

fn load_or_create_ca(
    paths: &PkiPaths,
) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let crt = read_opt(&paths.ca_crt)?;
    let key = read_opt(&paths.ca_key)?;
    match (crt, key) {
        (None, None) => {
            for leaf in [
                &paths.server_crt,
                &paths.server_key,
                &paths.admin_crt,
                &paths.admin_key,
            ] {
                if leaf.exists() {
                    return Err(PkiError::Missing {
                        path: paths.ca_crt.clone(),
                        why: format!(
                            "{} exists, so this is not a first start; refusing to create a new CA \
                             that existing certificates would not match (restore the CA or remove {})",
                            leaf.display(),
                            paths.dir.display()
                        ),
                    });
                }
            }
            tracing::info!(path = %paths.ca_crt.display(), "creating CA");
            let params = certs::ca_params()?;
            let err = |source| PkiError::Issue {
                subject: CA_COMMON_NAME.to_owned(),
                source,
            };
            let key = KeyPair::generate().map_err(err)?;
            let cert = params.self_signed(&key).map_err(err)?;
            let ca_pem = cert.pem();
            // Key first: a crash in between leaves "ca.crt missing", an error, never a CA
            // certificate whose key is lost.
            write_atomic(
                &paths.ca_key,
                key.serialize_pem().as_bytes(),
                FileMode::Secret,
            )?;
            write_atomic(&paths.ca_crt, ca_pem.as_bytes(), FileMode::Public)?;
            let der = cert.der().clone();
            let issuer = Issuer::new(params, key);
            Ok((ca_pem, der, issuer))
        }
        (Some(_), None) => Err(PkiError::Missing {
            path: paths.ca_key.clone(),
            why: format!("{} exists without its key", paths.ca_crt.display()),
        }),
        (None, Some(_)) => Err(PkiError::Missing {
            path: paths.ca_crt.clone(),
            why: format!("{} exists without its certificate", paths.ca_key.display()),
        }),
        (Some(crt_pem), Some(key_pem)) => {
            let der = certs::pem_to_der(&crt_pem).map_err(corrupt_cert(&paths.ca_crt))?;
            let key = parse_key(&paths.ca_key, &key_pem)?;
            {
                let cert = certs::parse_der(&der).map_err(corrupt_cert(&paths.ca_crt))?;
                let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
                if !is_ca {
                    return Err(PkiError::Inconsistent {
                        path: paths.ca_crt.clone(),
                        problem: "certificate is not a CA (basicConstraints CA:TRUE missing)"
                            .into(),
                    });
                }
                check_key_matches(&paths.ca_crt, &paths.ca_key, &cert, &key)?;
                if certs::secs_until_expiry(&cert) < 0 {
                    tracing::warn!(path = %paths.ca_crt.display(), "CA certificate has expired");
                }
            }
            let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::Corrupt {
                path: paths.ca_crt.clone(),
                what: "certificate",
                source: Box::new(e),
            })?;
            Ok((crt_pem, der, issuer))
        }
    }
}

fn check_leaf(spec: &LeafSpec<'_>, ca_der: &CertificateDer<'_>) -> Result<LeafState, PkiError> {
    let crt = read_opt(spec.crt)?;
    let key = read_opt(spec.key)?;
    let (cert_pem, key_pem) = match (crt, key) {
        (None, None) => return Ok(LeafState::Reissue("absent")),
        (Some(_), None) => {
            return Err(PkiError::Missing {
                path: spec.key.to_owned(),
                why: format!(
                    "{} exists without its key (delete both files to re-issue)",
                    spec.crt.display()
                ),
            })
        }
        (None, Some(_)) => {
            return Err(PkiError::Missing {
                path: spec.crt.to_owned(),
                why: format!(
                    "{} exists without its certificate (delete both files to re-issue)",
                    spec.key.display()
                ),
            })
        }
        (Some(c), Some(k)) => (c, k),
    };
    let der = certs::pem_to_der(&cert_pem).map_err(corrupt_cert(spec.crt))?;
    let cert = certs::parse_der(&der).map_err(corrupt_cert(spec.crt))?;
    let key = parse_key(spec.key, &key_pem)?;
    check_key_matches(spec.crt, spec.key, &cert, &key)?;
    let ca =
        certs::parse_der(ca_der).map_err(|source| PkiError::InvalidInput { what: "CA", source })?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(PkiError::Inconsistent {
            path: spec.crt.to_owned(),
            problem: "not signed by the CA in ca.crt (delete it and its key to re-issue)".into(),
        });
    }
    if certs::secs_until_expiry(&cert) < RENEW_BEFORE_SECS {
        return Ok(LeafState::Reissue("expires within 30 days"));
    }
    let have: BTreeSet<San> = certs::cert_sans(&cert);
    if let Some(missing) = spec.required_sans.iter().find(|s| !have.contains(s)) {
        tracing::info!(san = %missing, "SAN missing from existing certificate");
        return Ok(LeafState::Reissue("new SAN"));
    }
    Ok(LeafState::Ok(CertKeyPem { cert_pem, key_pem }))
}

fn store_pair(
    spec: &LeafSpec<'_>,
    cert_pem: String,
    key_pem: String,
) -> Result<CertKeyPem, PkiError> {
    write_atomic(spec.key, key_pem.as_bytes(), FileMode::Secret)?;
    write_atomic(spec.crt, cert_pem.as_bytes(), FileMode::Public)?;
    Ok(CertKeyPem { cert_pem, key_pem })
}

#[cfg(test)]
mod tests;
