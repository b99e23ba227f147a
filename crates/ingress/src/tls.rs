//! TLS material: certificates from `kubernetes.io/tls` Secrets (pure parsing), the SNI
//! resolver over the live route table, a self-signed fallback certificate, and the client
//! config used for HTTPS/GRPCS backends.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Certificates by TLS host: exact names and `*.suffix` wildcards (one label, as hosts).
#[derive(Default, Clone)]
pub struct CertStore {
    exact: HashMap<String, (String, Arc<CertifiedKey>)>,
    wildcard: HashMap<String, (String, Arc<CertifiedKey>)>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("hosts", &self.hosts()).finish()
    }
}

impl CertStore {
    /// Adds a certificate for `host` (`a.com` or `*.a.com`) from secret `source` (`ns/name`).
    /// Returns false (and keeps the existing one) if the host already has a certificate.
    pub fn insert(&mut self, host: &str, source: String, key: Arc<CertifiedKey>) -> bool {
        let host = host.to_ascii_lowercase();
        let (map, k) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_string()),
            None => (&mut self.exact, host),
        };
        if map.contains_key(&k) {
            return false;
        }
        map.insert(k, (source, key));
        true
    }

    /// The certificate for an SNI name: exact first, then the one-label wildcard.
    pub fn resolve(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some((_, k)) = self.exact.get(&sni) {
            return Some(k);
        }
        let (_, rest) = sni.split_once('.')?;
        self.wildcard.get(rest).map(|(_, k)| k)
    }

    /// The secret (`ns/name`) serving `host`, if any.
    pub fn source(&self, host: &str) -> Option<&str> {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(s) => self.wildcard.get(s),
            None => self.exact.get(&host),
        }
        .map(|(s, _)| s.as_str())
    }

    /// Sorted `(host, secret)` pairs (for dumps and tests).
    pub fn hosts(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .exact
            .iter()
            .map(|(h, (s, _))| (h.clone(), s.clone()))
            .chain(self.wildcard.iter().map(|(h, (s, _))| (format!("*.{h}"), s.clone())))
            .collect();
        v.sort();
        v
    }
}

/// Parses a `kubernetes.io/tls` Secret (`tls.crt` chain + `tls.key`, PEM) into a rustls key.
/// Pure; errors are human-readable messages (they become Ingress events).
pub fn certified_key_from_secret(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    if let Some(t) = secret.type_.as_deref() {
        if t != "kubernetes.io/tls" && t != "Opaque" {
            return Err(format!("secret type is {t}, want kubernetes.io/tls"));
        }
    }
    let data = secret.data.as_ref().ok_or("secret has no data")?;
    let crt = data.get("tls.crt").ok_or("secret has no tls.crt")?;
    let key = data.get("tls.key").ok_or("secret has no tls.key")?;
    certified_key_from_pem(&crt.0, &key.0)
}

/// Builds a rustls key from PEM certificate chain and private key bytes.
pub fn certified_key_from_pem(crt: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &crt[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
        .map_err(|e| format!("tls.key is not PEM: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key is not a supported key: {e}"))?;
    let ck = CertifiedKey::new(certs, signer);
    // Rejects a key that does not belong to the certificate.
    ck.keys_match().map_err(|e| format!("tls.key does not match tls.crt: {e}"))?;
    Ok(Arc::new(ck))
}

/// A self-signed certificate served when no Secret matches the SNI name (ingress-nginx's
/// "fake certificate").
pub fn fallback_certificate() -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let ck = rcgen::generate_simple_self_signed(vec!["dari-ingress.invalid".to_string()])?;
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
    Ok(Arc::new(CertifiedKey::new(vec![ck.cert.der().clone()], signer)))
}

/// Resolves server certificates from the route table current at handshake time.
pub(crate) struct SniResolver {
    pub(crate) table: crate::SharedTable,
    pub(crate) fallback: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        match hello.server_name().and_then(|n| table.certs.resolve(n)) {
            Some(k) => Some(k.clone()),
            None => Some(self.fallback.clone()),
        }
    }
}

/// Backend TLS: certificates are not verified (ingress-nginx default `proxy_ssl_verify off`).
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The ring crypto provider (the workspace avoids aws-lc's cmake build on small boxes; ring has
/// no post-quantum key exchange, hence rustls' deprecation note).
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
