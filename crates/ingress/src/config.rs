//! Inputs of the route-table builder besides the API objects.

use std::time::Duration;

/// Controller name written in `IngressClass.spec.controller` for classes dari serves.
pub const CONTROLLER_NAME: &str = "dari.dev/ingress";
/// Name of the IngressClass dari creates (marked default).
pub const DEFAULT_CLASS: &str = "dari";
/// Annotation marking an IngressClass as the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// Deprecated class annotation, still honoured (ingress-nginx does).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Builder settings: which classes are ours and the defaults annotations override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    /// `spec.controller` value we own (default [`CONTROLLER_NAME`]); IngressClasses with it are ours.
    pub controller: String,
    /// Class names served even without an IngressClass object naming our controller
    /// (default `["dari"]`; the lab adds `nginx`).
    pub class_names: Vec<String>,
    /// Claim Ingresses with no class at all when no IngressClass is marked default
    /// (default false: such Ingresses belong to whoever is the default).
    pub claim_classless: bool,
    /// ingress-nginx `ssl-redirect` default: redirect HTTP to HTTPS on hosts with TLS (default true).
    pub ssl_redirect: bool,
    /// Default request body limit in bytes (`proxy-body-size`, default 1 MiB as ingress-nginx);
    /// None: unlimited.
    pub body_size: Option<u64>,
    /// Default `proxy-read-timeout` (60 s as ingress-nginx).
    pub read_timeout: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            controller: CONTROLLER_NAME.to_string(),
            class_names: vec![DEFAULT_CLASS.to_string()],
            claim_classless: false,
            ssl_redirect: true,
            body_size: Some(1024 * 1024),
            read_timeout: Duration::from_secs(60),
        }
    }
}
