//! ingress-nginx annotations (`nginx.ingress.kubernetes.io/*`) dari understands.
//!
//! Supported: `rewrite-target`, `use-regex`, `ssl-redirect`, `force-ssl-redirect`,
//! `backend-protocol` (HTTP, HTTPS, GRPC, GRPCS), `proxy-body-size` (nginx sizes: `0` =
//! unlimited, `8m`, `512k`, `1g`), `proxy-read-timeout` (seconds). Any other annotation with the
//! ingress-nginx prefix is reported as [`crate::IssueKind::UnknownAnnotation`]; a bad value as
//! [`crate::IssueKind::InvalidAnnotation`] and the default is used. Neither is fatal.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::IngressConfig;

/// Annotation prefix of ingress-nginx.
pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Protocol spoken to the backend pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendProtocol {
    /// HTTP/1.1 in clear (default).
    Http,
    /// HTTP/1.1 over TLS (certificate not verified, as ingress-nginx's default `proxy_ssl_verify off`).
    Https,
    /// HTTP/2 in clear (prior knowledge): gRPC.
    Grpc,
    /// HTTP/2 over TLS: gRPC over TLS.
    Grpcs,
}

impl BackendProtocol {
    /// Name as written in the annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::Http => "HTTP",
            BackendProtocol::Https => "HTTPS",
            BackendProtocol::Grpc => "GRPC",
            BackendProtocol::Grpcs => "GRPCS",
        }
    }
    /// Whether the backend connection is TLS.
    pub fn tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::Grpcs)
    }
    /// Whether the backend connection is HTTP/2.
    pub fn h2(self) -> bool {
        matches!(self, BackendProtocol::Grpc | BackendProtocol::Grpcs)
    }
}

/// The parsed annotations of one Ingress (defaults filled in from [`IngressConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `rewrite-target`: replacement for the whole path, `$1`..`$9` are capture groups of the path regex.
    pub rewrite_target: Option<String>,
    /// Paths are regexes (`use-regex: "true"`, or implied by `rewrite-target`, as ingress-nginx).
    pub use_regex: bool,
    /// `ssl-redirect` (default from config): redirect to HTTPS when the host has TLS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect to HTTPS even without TLS for the host.
    pub force_ssl_redirect: bool,
    /// `backend-protocol`.
    pub backend_protocol: BackendProtocol,
    /// `proxy-body-size` in bytes, None = unlimited.
    pub body_size: Option<u64>,
    /// `proxy-read-timeout`.
    pub read_timeout: Duration,
}

/// One annotation problem: (annotation key, message, unknown?).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    /// Full annotation key.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// true: not a known annotation; false: known but bad value.
    pub unknown: bool,
}

/// Parses the ingress-nginx annotations of an Ingress. Never fails: problems are returned.
pub fn parse(
    annotations: Option<&BTreeMap<String, String>>,
    cfg: &IngressConfig,
) -> (Annotations, Vec<AnnotationProblem>) {
    let mut a = Annotations {
        rewrite_target: None,
        use_regex: false,
        ssl_redirect: cfg.ssl_redirect,
        force_ssl_redirect: false,
        backend_protocol: BackendProtocol::Http,
        body_size: cfg.body_size,
        read_timeout: cfg.read_timeout,
    };
    let mut problems = Vec::new();
    let Some(map) = annotations else { return (a, problems) };
    for (key, value) in map {
        let Some(name) = key.strip_prefix(NGINX_PREFIX) else { continue };
        let value = value.trim();
        let mut bad = |message: String| {
            problems.push(AnnotationProblem { key: key.clone(), message, unknown: false });
        };
        match name {
            "rewrite-target" => a.rewrite_target = Some(value.to_string()),
            "use-regex" => match parse_bool(value) {
                Some(b) => a.use_regex = b,
                None => bad(format!("{value:?} is not a boolean")),
            },
            "ssl-redirect" => match parse_bool(value) {
                Some(b) => a.ssl_redirect = b,
                None => bad(format!("{value:?} is not a boolean")),
            },
            "force-ssl-redirect" => match parse_bool(value) {
                Some(b) => a.force_ssl_redirect = b,
                None => bad(format!("{value:?} is not a boolean")),
            },
            "backend-protocol" => match value.to_ascii_uppercase().as_str() {
                "HTTP" => a.backend_protocol = BackendProtocol::Http,
                "HTTPS" => a.backend_protocol = BackendProtocol::Https,
                "GRPC" => a.backend_protocol = BackendProtocol::Grpc,
                "GRPCS" => a.backend_protocol = BackendProtocol::Grpcs,
                _ => bad(format!("{value:?} is not supported (HTTP, HTTPS, GRPC, GRPCS); using HTTP")),
            },
            "proxy-body-size" => match parse_size(value) {
                Some(n) => a.body_size = if n == 0 { None } else { Some(n) },
                None => bad(format!("{value:?} is not an nginx size (e.g. 8m, 512k, 0)")),
            },
            "proxy-read-timeout" => match parse_seconds(value) {
                Some(d) => a.read_timeout = d,
                None => bad(format!("{value:?} is not a number of seconds")),
            },
            _ => problems.push(AnnotationProblem {
                key: key.clone(),
                message: "not supported by dari ingress; ignored".to_string(),
                unknown: true,
            }),
        }
    }
    if a.rewrite_target.is_some() {
        a.use_regex = true;
    }
    (a, problems)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// nginx size syntax: a number with an optional `k`, `m` or `g` suffix (either case).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1024u64),
        'm' | 'M' => (&v[..v.len() - 1], 1024 * 1024),
        'g' | 'G' => (&v[..v.len() - 1], 1024 * 1024 * 1024),
        _ => (v, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Seconds as ingress-nginx takes them: `60`, also accepting `60s`.
fn parse_seconds(v: &str) -> Option<Duration> {
    let digits = v.strip_suffix('s').unwrap_or(v);
    let n: u64 = digits.parse().ok()?;
    (n > 0).then(|| Duration::from_secs(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (format!("{NGINX_PREFIX}{k}"), v.to_string())).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("8m"), Some(8 << 20));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn known_unknown_and_bad() {
        let cfg = IngressConfig::default();
        let m = ann(&[
            ("rewrite-target", "/$2"),
            ("ssl-redirect", "false"),
            ("backend-protocol", "grpc"),
            ("proxy-body-size", "0"),
            ("proxy-read-timeout", "5"),
            ("enable-cors", "true"),
            ("force-ssl-redirect", "yes"),
        ]);
        let (a, problems) = parse(Some(&m), &cfg);
        assert_eq!(a.rewrite_target.as_deref(), Some("/$2"));
        assert!(a.use_regex, "rewrite-target implies regex paths");
        assert!(!a.ssl_redirect);
        assert!(!a.force_ssl_redirect);
        assert_eq!(a.backend_protocol, BackendProtocol::Grpc);
        assert_eq!(a.body_size, None);
        assert_eq!(a.read_timeout, Duration::from_secs(5));
        assert_eq!(problems.len(), 2);
        assert!(problems.iter().any(|p| p.unknown && p.key.ends_with("enable-cors")));
        assert!(problems.iter().any(|p| !p.unknown && p.key.ends_with("force-ssl-redirect")));
    }
}
