//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading, creating or using dari's PKI.
///
/// Each variant names the file, subject or SAN involved; the underlying cause is in
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The PKI directory (or a kubeconfig's parent directory) could not be created.
    #[error("creating directory {path}")]
    CreateDir {
        /// Directory we tried to create.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file could not be read.
    #[error("reading {path}")]
    Read {
        /// File we tried to read.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or kubeconfig could not be written.
    #[error("writing {path}")]
    Write {
        /// File we tried to write.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that must exist alongside others is missing (for example `ca.key` without
    /// `ca.crt`). dari refuses to silently regenerate a CA that clients may already trust.
    #[error("{path} is missing: {why}")]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// Why it is required.
        why: String,
    },
    /// A file exists but is not a valid PEM certificate or private key.
    #[error("{path} is corrupt (not a valid PEM {what})")]
    Corrupt {
        /// The corrupt file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// Parser error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Files parse but do not belong together (key does not match certificate, leaf not
    /// signed by the CA, CA certificate is not a CA).
    #[error("{path}: {problem}")]
    Inconsistent {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A `--tls-san` (or a SAN passed to [`crate::Pki::issue_serving_cert`]) is neither an IP
    /// address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}")]
    InvalidSan {
        /// The SAN as given.
        san: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rcgen failed to generate a key or sign a certificate.
    #[error("issuing certificate for {subject:?}")]
    Issue {
        /// Common name of the certificate being issued.
        subject: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate or key handed to this crate by a caller (not read from disk) is invalid.
    #[error("invalid {what}")]
    InvalidInput {
        /// What was passed in, e.g. "client certificate PEM" or "peer certificate DER".
        what: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// More distinct organizations (groups) were requested than a certificate can carry here.
    #[error("certificate for {subject:?} requests {count} organizations, at most 2 are supported")]
    TooManyOrganizations {
        /// Common name of the certificate being issued.
        subject: String,
        /// Distinct organizations requested.
        count: usize,
    },
    /// A client certificate has no subject CommonName, so it names no user.
    #[error("client certificate has no subject CommonName")]
    NoCommonName,
    /// rustls rejected the certificate/key while building a TLS configuration.
    #[error("building TLS {side} configuration")]
    Tls {
        /// "server" or "client".
        side: &'static str,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA.
    #[error("building client certificate verifier from the CA")]
    Verifier {
        /// Cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The kubeconfig could not be serialized.
    #[error("encoding kubeconfig {path}")]
    Kubeconfig {
        /// Destination.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_yaml::Error,
    },
}
