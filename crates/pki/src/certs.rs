//! Pure certificate-building helpers: parameters for the CA, serving and client certificates,
//! SAN parsing, and reading back what a certificate says (SANs, subject, expiry).
//!
//! No file I/O here; [`crate::Pki`] does the loading and writing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// Common name of dari's CA.
pub const CA_COMMON_NAME: &str = "dari-ca";
/// Lifetime of the CA certificate.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Lifetime of the API server's serving cert and the admin client cert.
pub const LEAF_VALIDITY_DAYS: u32 = 365;
/// `not_before` is back-dated this much so that nodes with slightly skewed clocks accept
/// freshly issued certificates.
const BACKDATE: Duration = Duration::from_secs(3600);
const DAY: u64 = 86_400;

/// A subject alternative name, normalized for comparison (DNS names lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    /// An IP address SAN.
    Ip(IpAddr),
    /// A DNS name SAN (lower-case).
    Dns(String),
}

impl San {
    /// Parses a `--tls-san`-style string: an IP address if it parses as one, else a DNS name
    /// (a leading `*.` wildcard label is allowed).
    pub fn parse(s: &str) -> Result<San, PkiError> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let check = s.strip_prefix("*.").unwrap_or(s);
        rustls::pki_types::DnsName::try_from(check).map_err(|e| PkiError::InvalidSan {
            san: s.to_owned(),
            source: Box::new(e),
        })?;
        Ok(San::Dns(s.to_ascii_lowercase()))
    }

    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        match self {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(d) => {
                let name =
                    d.clone()
                        .try_into()
                        .map_err(|e: rcgen::Error| PkiError::InvalidSan {
                            san: d.clone(),
                            source: Box::new(e),
                        })?;
                Ok(SanType::DnsName(name))
            }
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Ip(ip) => write!(f, "{ip}"),
            San::Dns(d) => f.write_str(d),
        }
    }
}

/// The SANs the API server certificate must carry, in a stable order:
/// 127.0.0.1, localhost, the `kubernetes.default...` names, the first service IP, the hostname,
/// then every extra `--tls-san`. Duplicates are removed.
pub fn api_server_sans(
    service_ip: IpAddr,
    hostname: &str,
    extra: &[String],
) -> Result<Vec<San>, PkiError> {
    let mut fixed: Vec<String> = vec![
        "127.0.0.1".into(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        service_ip.to_string(),
    ];
    if !hostname.trim().is_empty() {
        fixed.push(hostname.to_owned());
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for s in fixed.iter().chain(extra.iter()) {
        let san = San::parse(s)?;
        if seen.insert(san.clone()) {
            out.push(san);
        }
    }
    Ok(out)
}

/// Most Organization (group) attributes a subject can carry, see [`dn`].
pub const MAX_ORGS: usize = 2;

/// Subject `O=orgs..., CN=cn`.
///
/// rcgen's `DistinguishedName` is a map keyed by attribute type, so a second `O` would replace
/// the first. The second one is therefore pushed under `CustomDnType(2.5.4.10)`: the same OID,
/// a different map key, encoded identically. A third cannot be expressed, so it is an error
/// rather than a silently dropped group.
fn dn(cn: &str, orgs: &[&str]) -> Result<DistinguishedName, PkiError> {
    let mut unique: Vec<&str> = Vec::new();
    for o in orgs {
        if !unique.contains(o) {
            unique.push(o);
        }
    }
    if unique.len() > MAX_ORGS {
        return Err(PkiError::TooManyOrganizations {
            subject: cn.to_owned(),
            count: unique.len(),
        });
    }
    let mut dn = DistinguishedName::new();
    let keys = [
        DnType::OrganizationName,
        DnType::CustomDnType(vec![2, 5, 4, 10]),
    ];
    for (key, o) in keys.into_iter().zip(unique) {
        dn.push(key, o);
    }
    dn.push(DnType::CommonName, cn);
    Ok(dn)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * DAY)).into();
}

/// Parameters for dari's self-signed CA.
pub fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(CA_COMMON_NAME, &[])?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, CA_VALIDITY_DAYS);
    Ok(p)
}

/// Parameters for a client certificate (EKU clientAuth).
pub fn client_params(cn: &str, orgs: &[&str], days: u32) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, orgs)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    Ok(p)
}

/// Parameters for a serving certificate (EKU serverAuth only) with the given SANs.
pub fn serving_params(cn: &str, sans: &[San], days: u32) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, &[])?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
    validity(&mut p, days);
    Ok(p)
}

/// Parameters of a certificate that both serves and authenticates as a client (an etcd member:
/// clients and peers connect to it, and it connects to its peers).
pub fn peer_params(cn: &str, sans: &[San], days: u32) -> Result<CertificateParams, PkiError> {
    let mut p = serving_params(cn, sans, days)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    Ok(p)
}

/// Generates a fresh key (ECDSA P-256) and signs `params` with `issuer`.
pub fn sign(
    params: &CertificateParams,
    issuer: &rcgen::Issuer<'_, KeyPair>,
    subject: &str,
) -> Result<(String, String), PkiError> {
    let err = |source| PkiError::Issue {
        subject: subject.to_owned(),
        source,
    };
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Parses one DER certificate; errors are boxed for the caller to attach a path or a role.
pub fn parse_der(
    der: &[u8],
) -> Result<X509Certificate<'_>, Box<dyn std::error::Error + Send + Sync>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Box::new(e.to_owned()))?;
    Ok(cert)
}

/// First certificate of a PEM string, as DER.
pub fn pem_to_der(
    pem: &str,
) -> Result<CertificateDer<'static>, Box<dyn std::error::Error + Send + Sync>> {
    use rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

/// The SANs a certificate carries (normalized).
pub fn cert_sans(cert: &X509Certificate<'_>) -> BTreeSet<San> {
    let mut out = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(San::Dns(d.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        out.insert(San::Ip(IpAddr::from(a)));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        out.insert(San::Ip(IpAddr::from(a)));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Seconds from now until the certificate's `notAfter` (negative if expired).
pub fn secs_until_expiry(cert: &X509Certificate<'_>) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    cert.validity().not_after.timestamp() - now
}
