//! Client-certificate authentication: a verified peer certificate names a user (CN) and its
//! groups (O), exactly like kube-apiserver's x509 authenticator.

use rustls::pki_types::CertificateDer;

use crate::certs::parse_der;
use crate::PkiError;

/// Group every authenticated user belongs to.
pub const GROUP_AUTHENTICATED: &str = "system:authenticated";

/// Who a request comes from, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name (certificate CommonName), e.g. `admin` or `system:node:pi1`.
    pub name: String,
    /// Groups: the certificate's Organization values in order, then `system:authenticated`.
    pub groups: Vec<String>,
}

/// Maps a client certificate (DER) to a user: CN is the name, each O is a group, and
/// `system:authenticated` is appended.
///
/// This does NOT verify the certificate: call it only on a peer certificate rustls has already
/// verified against the CA (see [`crate::Pki::server_config`] and [`peer_identity`]).
pub fn identity_from_cert(der: &[u8]) -> Result<UserInfo, PkiError> {
    let cert = parse_der(der).map_err(|source| PkiError::InvalidInput {
        what: "peer certificate DER",
        source,
    })?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or(PkiError::NoCommonName)?
        .to_owned();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    if !groups.iter().any(|g| g == GROUP_AUTHENTICATED) {
        groups.push(GROUP_AUTHENTICATED.to_owned());
    }
    Ok(UserInfo { name, groups })
}

/// The identity of the client on a finished TLS handshake: `Ok(None)` for an anonymous client
/// (no certificate), `Ok(Some(user))` for a client whose certificate rustls verified.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Result<Option<UserInfo>, PkiError> {
    peer_identity_from_chain(conn.peer_certificates())
}

/// Same as [`peer_identity`], from the peer chain (leaf first) as rustls reports it.
pub fn peer_identity_from_chain(
    chain: Option<&[CertificateDer<'_>]>,
) -> Result<Option<UserInfo>, PkiError> {
    match chain.and_then(<[_]>::first) {
        None => Ok(None),
        Some(leaf) => identity_from_cert(leaf).map(Some),
    }
}
