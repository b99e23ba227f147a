//! The pure core: API objects in, [`RouteTable`] out ([`build`]); request in, backend out ([`route`]).
//!
//! # Matching rules (Ingress v1, with ingress-nginx behaviour where the spec leaves room)
//! - **Hosts**: case-insensitive, the port of the `Host` header is ignored. An exact host wins
//!   over a wildcard; `*.foo.com` covers exactly one label (`bar.foo.com`, not `foo.com` nor
//!   `baz.bar.foo.com`); rules without a host serve every other host. The most specific host
//!   bucket is chosen first and paths are matched only inside it (as nginx picks a `server`
//!   block, then a `location`): a request for a known host whose paths do not match goes to that
//!   host's default backend, not to host-less rules.
//! - **Paths**: `Exact` compares the whole path, case-sensitively. `Prefix` compares element by
//!   element on `/`, ignoring a trailing slash (`/aaa/bbb` matches `/aaa/bbb`, `/aaa/bbb/` and
//!   `/aaa/bbb/ccc`, not `/aaa/bbbxyz`). `ImplementationSpecific` is what ingress-nginx does with
//!   a plain `location /path`: a string prefix (`/foo` matches `/foobar`).
//!   With `use-regex: "true"` or `rewrite-target` (which implies regex, as in ingress-nginx) the
//!   path of every rule of that Ingress is a case-insensitive regex anchored at the start,
//!   whatever its pathType. Unlike ingress-nginx, regex mode does not spread to other Ingresses
//!   of the same host.
//! - **Precedence**: the longest path wins (prefix length without its trailing slash; a regex's
//!   length is its source length, as ingress-nginx sorts locations); at equal length `Exact`
//!   beats the others; then the oldest Ingress (creationTimestamp, then namespace/name).
//! - **Merging**: all claimed Ingresses contribute to the same hosts; an identical
//!   (host, pathType, path) from a younger Ingress is dropped and reported as a conflict.
//! - **Default backends**: a host with no matching path uses the `spec.defaultBackend` of the
//!   oldest Ingress that has rules for that host and one; requests for hosts nobody names (or
//!   host-less rules that do not match) use the oldest claimed Ingress's `spec.defaultBackend`.
//!   Otherwise [`route`] returns None: the proxy answers 404.
//! - **Rewrite**: `rewrite-target` replaces the whole path (nginx `rewrite ... break`), `$1`..`$9`
//!   are the capture groups of the path regex; the query string is kept.
//! - **HTTPS redirect**: hosts listed in `spec.tls` redirect plain HTTP with 308 unless
//!   `ssl-redirect: "false"`; `force-ssl-redirect: "true"` redirects without TLS too.
//!
//! Nothing here fails: every problem becomes an [`Issue`] on the Ingress concerned, and only the
//! offending rule (or TLS entry) is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use regex::Regex;

use crate::annotations::{self, Annotations, BackendProtocol};
use crate::config::{IngressConfig, DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION};
use crate::tls::{certified_key_from_secret, CertStore};

/// `namespace/name` of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (`default` when unset).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Key of an object's metadata.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_string()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What is wrong with an Ingress (the event reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssueKind {
    /// An `nginx.ingress.kubernetes.io/*` annotation dari does not implement.
    UnknownAnnotation,
    /// A known annotation with a bad value (the default is used).
    InvalidAnnotation,
    /// A rule host that is not a DNS name or one-label wildcard (rule skipped).
    InvalidHost,
    /// A path that is missing, not absolute, of an unknown pathType, or a bad regex (path skipped).
    InvalidPath,
    /// The backend names a Service that does not exist (requests get 503).
    ServiceNotFound,
    /// The backend names a port the Service does not have (requests get 503).
    PortNotFound,
    /// A backend dari cannot proxy to: `resource` backends, ExternalName Services.
    UnsupportedBackend,
    /// A TLS Secret that does not exist (the fallback certificate is served).
    SecretNotFound,
    /// A TLS Secret that cannot be used (the fallback certificate is served).
    InvalidSecret,
    /// The same host+path (or TLS host) is claimed by an older Ingress: this one is ignored there.
    Conflict,
}

impl IssueKind {
    /// Event reason (CamelCase).
    pub fn reason(self) -> &'static str {
        match self {
            IssueKind::UnknownAnnotation => "UnknownAnnotation",
            IssueKind::InvalidAnnotation => "InvalidAnnotation",
            IssueKind::InvalidHost => "InvalidHost",
            IssueKind::InvalidPath => "InvalidPath",
            IssueKind::ServiceNotFound => "ServiceNotFound",
            IssueKind::PortNotFound => "PortNotFound",
            IssueKind::UnsupportedBackend => "UnsupportedBackend",
            IssueKind::SecretNotFound => "SecretNotFound",
            IssueKind::InvalidSecret => "InvalidSecret",
            IssueKind::Conflict => "Conflict",
        }
    }
}

/// One problem found while building, attached to the Ingress it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Issue {
    /// The Ingress.
    pub ingress: ObjectKey,
    /// Kind (event reason).
    pub kind: IssueKind,
    /// Human-readable detail (event message).
    pub message: String,
}

/// How a route's path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `Exact`: whole path, case-sensitive.
    Exact(String),
    /// `Prefix`: element-wise; stored without trailing slashes (`""` = everything).
    Prefix(String),
    /// `ImplementationSpecific` without regex: plain string prefix (nginx `location /path`).
    StringPrefix(String),
    /// Regex mode: case-insensitive, anchored at the start.
    Regex {
        /// Source as written in the Ingress.
        pattern: String,
        /// Compiled `(?i)^(?:pattern)`.
        re: Regex,
    },
    /// A `spec.defaultBackend`: matches anything, used only when no path does.
    Default,
}

impl PathMatch {
    /// Length used for "longest match wins".
    fn len(&self) -> usize {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::StringPrefix(p) => p.len(),
            PathMatch::Regex { pattern, .. } => pattern.len(),
            PathMatch::Default => 0,
        }
    }
    fn rank(&self) -> u8 {
        match self {
            PathMatch::Exact(_) => 0,
            _ => 1,
        }
    }
    /// Identity for conflict detection.
    fn ident(&self) -> String {
        match self {
            PathMatch::Exact(p) => format!("Exact {p}"),
            PathMatch::Prefix(p) => format!("Prefix {}/", p),
            PathMatch::StringPrefix(p) => format!("ImplementationSpecific {p}"),
            PathMatch::Regex { pattern, .. } => format!("Regex {pattern}"),
            PathMatch::Default => "Default".to_string(),
        }
    }
    /// Whether `path` (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_match(p, path),
            PathMatch::StringPrefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex { re, .. } => re.is_match(path),
            PathMatch::Default => true,
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "Exact {p}"),
            PathMatch::Prefix(p) if p.is_empty() => write!(f, "Prefix /"),
            PathMatch::Prefix(p) => write!(f, "Prefix {p}"),
            PathMatch::StringPrefix(p) => write!(f, "ImplementationSpecific {p}"),
            PathMatch::Regex { pattern, .. } => write!(f, "Regex {pattern}"),
            PathMatch::Default => write!(f, "defaultBackend"),
        }
    }
}

/// Element-wise prefix match; `p` has no trailing slash (`""` matches everything).
pub fn prefix_match(p: &str, path: &str) -> bool {
    p.is_empty() || (path.starts_with(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/'))
}

/// A Service port resolved to ready endpoint addresses.
#[derive(Debug)]
pub struct Backend {
    /// Service `namespace/name`.
    pub service: ObjectKey,
    /// Service port as the Ingress named it (`80` or `http`).
    pub port: String,
    /// Protocol to the pods.
    pub protocol: BackendProtocol,
    /// Ready endpoints (pod IP, target port), sorted.
    pub endpoints: Vec<SocketAddr>,
    cursor: AtomicUsize,
}

impl Backend {
    /// Endpoints in the order to try for one request: round-robin start, then the others (for
    /// retries when a connection is refused).
    pub fn pick(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = if n == 0 { 0 } else { self.cursor.fetch_add(1, Ordering::Relaxed) % n };
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)?;
        if self.protocol != BackendProtocol::Http {
            write!(f, " {}", self.protocol.as_str())?;
        }
        write!(f, " [")?;
        for (i, e) in self.endpoints.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{e}")?;
        }
        write!(f, "]")
    }
}

/// One path of one Ingress rule (or a defaultBackend), with its settings.
#[derive(Debug)]
pub struct Route {
    /// Ingress it came from.
    pub ingress: ObjectKey,
    /// Path matcher.
    pub path: PathMatch,
    /// Where requests go.
    pub backend: Arc<Backend>,
    /// `rewrite-target`.
    pub rewrite_target: Option<String>,
    /// Redirect plain HTTP to HTTPS (ssl-redirect on a TLS host, or force-ssl-redirect).
    pub redirect_https: bool,
    /// Request body limit (None: unlimited).
    pub body_size: Option<u64>,
    /// Time to wait for the backend's response (and between body reads).
    pub read_timeout: Duration,
    order: (i64, ObjectKey, usize),
}

/// The routes of one host bucket.
#[derive(Debug, Default)]
pub struct HostRoutes {
    /// Sorted by precedence: the first that matches wins.
    pub routes: Vec<Arc<Route>>,
    /// Used when no route matches.
    pub default: Option<Arc<Route>>,
    /// Host listed in some `spec.tls`.
    pub tls: bool,
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.path.matches(path))
    }
}

/// Everything the proxy needs, built by [`build`], swapped whole on each change.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    wildcard: HashMap<String, HostRoutes>,
    any: HostRoutes,
    /// TLS certificates by host.
    pub certs: CertStore,
    /// Problems found, sorted.
    pub issues: Vec<Issue>,
    /// Ingresses claimed (their status gets our addresses), sorted.
    pub claimed: Vec<ObjectKey>,
}

/// The result of [`route`]: where to send a request and how.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The winning route.
    pub route: Arc<Route>,
    /// Path to send upstream (rewritten, or the request path).
    pub upstream_path: String,
}

/// Finds the route for `host` (a Host header, port allowed) and `path` (no query string).
/// None means "nothing matched and no default backend": answer 404.
pub fn route(table: &RouteTable, host: &str, path: &str) -> Option<RouteMatch> {
    let (r, rewritten) = route_ref(table, host, path)?;
    Some(RouteMatch { route: r.clone(), upstream_path: rewritten.unwrap_or_else(|| path.to_string()) })
}

/// [`route`] without allocating on the common path (the proxy's per-request lookup): the
/// winning route, and the upstream path only when a rewrite changes it (None: send `path`).
pub fn route_ref<'t>(table: &'t RouteTable, host: &str, path: &str) -> Option<(&'t Arc<Route>, Option<String>)> {
    let bucket = table.bucket(host);
    let r = match bucket.find(path) {
        Some(r) => r,
        None => match &bucket.default {
            Some(d) => d,
            None => table.any.default.as_ref()?,
        },
    };
    let rewritten = match (&r.rewrite_target, &r.path) {
        (Some(target), PathMatch::Regex { re, .. }) => re.captures(path).map(|caps| expand(target, &caps)),
        (Some(target), _) => Some(expand_plain(target)),
        _ => None,
    };
    Some((r, rewritten))
}

/// nginx-style `$1`..`$9` expansion of a rewrite target.
fn expand(target: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(target.len() + 16);
    let mut chars = target.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            if let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                chars.next();
                out.push_str(caps.get(d as usize).map(|m| m.as_str()).unwrap_or(""));
                continue;
            }
        }
        out.push(c);
    }
    expand_plain(&out)
}

fn expand_plain(target: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    }
}

impl RouteTable {
    fn bucket(&self, host: &str) -> &HostRoutes {
        let host = strip_port(host);
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) || host.ends_with('.') {
            lower = host.trim_end_matches('.').to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(b) = self.exact.get(host) {
            return b;
        }
        if let Some((_, rest)) = host.split_once('.') {
            if let Some(b) = self.wildcard.get(rest) {
                return b;
            }
        }
        &self.any
    }

    /// Number of path routes (all hosts).
    pub fn route_count(&self) -> usize {
        self.exact.values().chain(self.wildcard.values()).chain(std::iter::once(&self.any)).map(|b| b.routes.len()).sum()
    }

    /// Issues of one Ingress.
    pub fn issues_of<'a>(&'a self, ingress: &'a ObjectKey) -> impl Iterator<Item = &'a Issue> + 'a {
        self.issues.iter().filter(move |i| &i.ingress == ingress)
    }

    /// A stable text rendering (golden files, `dari ingress show`).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut hosts: Vec<(String, &HostRoutes)> = self.exact.iter().map(|(h, b)| (h.clone(), b)).collect();
        hosts.extend(self.wildcard.iter().map(|(h, b)| (format!("*.{h}"), b)));
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        hosts.push(("*".to_string(), &self.any));
        for (h, b) in hosts {
            let _ = writeln!(out, "host {h}{}", if b.tls { " tls" } else { "" });
            for r in b.routes.iter().chain(b.default.iter()) {
                let _ = write!(out, "  {} -> {} ({})", r.path, r.backend, r.ingress);
                if let Some(t) = &r.rewrite_target {
                    let _ = write!(out, " rewrite={t}");
                }
                if r.redirect_https {
                    let _ = write!(out, " https-redirect");
                }
                let _ = writeln!(
                    out,
                    " body={} read={}s",
                    r.body_size.map(|n| n.to_string()).unwrap_or_else(|| "unlimited".into()),
                    r.read_timeout.as_secs()
                );
            }
        }
        for (h, s) in self.certs.hosts() {
            let _ = writeln!(out, "cert {h} <- {s}");
        }
        for i in &self.issues {
            let _ = writeln!(out, "issue {} {}: {}", i.ingress, i.kind.reason(), i.message);
        }
        out
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// Which Ingresses are ours: by class name, or classless ones when our class is the default.
#[derive(Debug, Clone)]
pub struct ClassFilter {
    served: BTreeSet<String>,
    claim_classless: bool,
}

impl ClassFilter {
    /// Our classes: the configured names plus IngressClasses naming our controller.
    pub fn new(classes: &[IngressClass], cfg: &IngressConfig) -> Self {
        let mut served: BTreeSet<String> = cfg.class_names.iter().cloned().collect();
        for c in classes {
            if c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(cfg.controller.as_str()) {
                if let Some(n) = &c.metadata.name {
                    served.insert(n.clone());
                }
            }
        }
        let is_default = |c: &IngressClass| {
            c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(|v| v == "true")
                == Some(true)
        };
        let defaults: Vec<&IngressClass> = classes.iter().filter(|c| is_default(c)).collect();
        let claim_classless = if defaults.is_empty() {
            cfg.claim_classless
        } else {
            defaults.iter().any(|c| c.metadata.name.as_ref().is_some_and(|n| served.contains(n)))
        };
        ClassFilter { served, claim_classless }
    }

    /// Whether this Ingress is ours.
    pub fn claims(&self, ing: &Ingress) -> bool {
        let class = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
            ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).map(String::as_str)
        });
        match class {
            Some(c) => self.served.contains(c),
            None => self.claim_classless,
        }
    }
}

type SvcPortKey = (ObjectKey, String, BackendProtocol);
type Resolved = (Arc<Backend>, Option<(IssueKind, String)>);
type Bucket = (Vec<Arc<Route>>, Option<Arc<Route>>);

struct Builder<'a> {
    services: HashMap<ObjectKey, &'a Service>,
    slices: HashMap<ObjectKey, Vec<&'a EndpointSlice>>,
    backends: HashMap<SvcPortKey, Resolved>,
    issues: BTreeSet<Issue>,
}

impl<'a> Builder<'a> {
    fn issue(&mut self, ingress: &ObjectKey, kind: IssueKind, message: String) {
        self.issues.insert(Issue { ingress: ingress.clone(), kind, message });
    }

    /// Resolves an Ingress backend; None if it cannot be a Service backend at all.
    fn backend(&mut self, ing: &ObjectKey, b: &IngressBackend, protocol: BackendProtocol) -> Option<Arc<Backend>> {
        if let Some(r) = &b.resource {
            self.issue(ing, IssueKind::UnsupportedBackend, format!("resource backend {}/{} is not supported", r.kind, r.name));
            return None;
        }
        let Some(svc) = &b.service else {
            self.issue(ing, IssueKind::InvalidPath, "backend has neither service nor resource".into());
            return None;
        };
        let port = match &svc.port {
            Some(p) => match (&p.name, p.number) {
                (Some(n), _) if !n.is_empty() => n.clone(),
                (_, Some(n)) => n.to_string(),
                _ => String::new(),
            },
            None => String::new(),
        };
        let key = (ObjectKey { namespace: ing.namespace.clone(), name: svc.name.clone() }, port, protocol);
        if !self.backends.contains_key(&key) {
            let (endpoints, problem) = self.resolve(&key.0, &key.1);
            let backend = Arc::new(Backend {
                service: key.0.clone(),
                port: key.1.clone(),
                protocol,
                endpoints,
                cursor: AtomicUsize::new(0),
            });
            self.backends.insert(key.clone(), (backend, problem));
        }
        let (backend, problem) = self.backends.get(&key)?.clone();
        if let Some((kind, msg)) = problem {
            self.issue(ing, kind, msg);
        }
        Some(backend)
    }

    fn resolve(&self, svc_key: &ObjectKey, port: &str) -> (Vec<SocketAddr>, Option<(IssueKind, String)>) {
        let Some(svc) = self.services.get(svc_key) else {
            return (Vec::new(), Some((IssueKind::ServiceNotFound, format!("service {svc_key} not found"))));
        };
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return (Vec::new(), Some((IssueKind::UnsupportedBackend, format!("service {svc_key} is ExternalName"))));
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
        let sp = ports.iter().find(|p| match port.parse::<i32>() {
            Ok(n) => p.port == n,
            Err(_) => p.name.as_deref() == Some(port),
        });
        let Some(sp) = sp else {
            return (Vec::new(), Some((IssueKind::PortNotFound, format!("service {svc_key} has no port {port:?}"))));
        };
        if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
            return (Vec::new(), Some((IssueKind::PortNotFound, format!("service {svc_key} port {port} is not TCP"))));
        }
        let want_name = sp.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self.slices.get(svc_key).map(Vec::as_slice).unwrap_or(&[]) {
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(ep_port) = slice
                .ports
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .find(|p| p.name.clone().unwrap_or_default() == want_name && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .and_then(|p| p.port)
            else {
                continue;
            };
            let Ok(ep_port) = u16::try_from(ep_port) else { continue };
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        out.push(SocketAddr::new(ip, ep_port));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        (out, None)
    }
}

fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn creation_secs(ing: &Ingress) -> i64 {
    ing.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MAX)
}

/// Builds the route table from the API objects. Pure and total: problems become [`Issue`]s.
pub fn build(
    ingresses: &[Ingress],
    services: &[Service],
    endpoint_slices: &[EndpointSlice],
    classes: &[IngressClass],
    secrets: &[Secret],
    cfg: &IngressConfig,
) -> RouteTable {
    let filter = ClassFilter::new(classes, cfg);
    let mut claimed: Vec<&Ingress> = ingresses.iter().filter(|i| filter.claims(i)).collect();
    claimed.sort_by_key(|i| (creation_secs(i), ObjectKey::of(&i.metadata)));

    let mut b = Builder {
        services: services.iter().map(|s| (ObjectKey::of(&s.metadata), s)).collect(),
        slices: HashMap::new(),
        backends: HashMap::new(),
        issues: BTreeSet::new(),
    };
    for s in endpoint_slices {
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) else { continue };
        let ns = s.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        b.slices.entry(ObjectKey { namespace: ns, name: svc.clone() }).or_default().push(s);
    }
    let secrets: HashMap<ObjectKey, &Secret> = secrets.iter().map(|s| (ObjectKey::of(&s.metadata), s)).collect();

    // host key: Some("a.com") / Some("*.a.com") / None
    let mut buckets: BTreeMap<Option<String>, Bucket> = BTreeMap::new();
    let mut tls_hosts: BTreeSet<Option<String>> = BTreeSet::new();
    let mut global_default: Option<Arc<Route>> = None;
    let mut certs = CertStore::default();
    let mut parsed: Vec<(ObjectKey, Annotations)> = Vec::new();

    // Pass 1: TLS hosts (ssl-redirect depends on them, across Ingresses).
    for ing in &claimed {
        let key = ObjectKey::of(&ing.metadata);
        let (ann, problems) = annotations::parse(ing.metadata.annotations.as_ref(), cfg);
        for p in problems {
            let kind = if p.unknown { IssueKind::UnknownAnnotation } else { IssueKind::InvalidAnnotation };
            b.issue(&key, kind, format!("{}: {}", p.key, p.message));
        }
        parsed.push((key.clone(), ann));
        let Some(spec) = &ing.spec else { continue };
        for t in spec.tls.as_deref().unwrap_or(&[]) {
            let hosts: Vec<String> = match t.hosts.as_deref() {
                Some(h) if !h.is_empty() => h.iter().map(|h| h.to_ascii_lowercase()).collect(),
                _ => spec.rules.as_deref().unwrap_or(&[]).iter().filter_map(|r| r.host.clone()).collect(),
            };
            let mut key_for_hosts = None;
            if let Some(name) = &t.secret_name {
                let skey = ObjectKey { namespace: key.namespace.clone(), name: name.clone() };
                match secrets.get(&skey) {
                    None => b.issue(&key, IssueKind::SecretNotFound, format!("tls secret {skey} not found")),
                    Some(s) => match certified_key_from_secret(s) {
                        Ok(k) => key_for_hosts = Some((skey.to_string(), k)),
                        Err(e) => b.issue(&key, IssueKind::InvalidSecret, format!("tls secret {skey}: {e}")),
                    },
                }
            }
            for h in hosts {
                if !valid_host(&h) {
                    b.issue(&key, IssueKind::InvalidHost, format!("tls host {h:?} is not a DNS name"));
                    continue;
                }
                tls_hosts.insert(Some(h.clone()));
                if let Some((src, k)) = &key_for_hosts {
                    if !certs.insert(&h, src.clone(), k.clone()) && certs.source(&h) != Some(src.as_str()) {
                        b.issue(&key, IssueKind::Conflict, format!("tls host {h} already uses secret {}", certs.source(&h).unwrap_or("?")));
                    }
                }
            }
        }
    }

    // Pass 2: rules and default backends.
    for (ing, (key, ann)) in claimed.iter().zip(parsed.iter()) {
        let Some(spec) = &ing.spec else { continue };
        let order_base = (creation_secs(ing), key.clone());
        let mk_route = |path: PathMatch, backend: Arc<Backend>, host_tls: bool, idx: usize| {
            Arc::new(Route {
                ingress: key.clone(),
                path,
                backend,
                rewrite_target: ann.rewrite_target.clone(),
                redirect_https: ann.force_ssl_redirect || (ann.ssl_redirect && host_tls),
                body_size: ann.body_size,
                read_timeout: ann.read_timeout,
                order: (order_base.0, order_base.1.clone(), idx),
            })
        };
        let default_route = match &spec.default_backend {
            Some(db) => b
                .backend(key, db, ann.backend_protocol)
                .map(|be| mk_route(PathMatch::Default, be, false, usize::MAX)),
            None => None,
        };
        if let Some(d) = &default_route {
            if global_default.is_none() {
                global_default = Some(d.clone());
            }
        }
        let mut idx = 0usize;
        for rule in spec.rules.as_deref().unwrap_or(&[]) {
            let host = match &rule.host {
                Some(h) if !h.is_empty() => {
                    let h = h.to_ascii_lowercase();
                    if !valid_host(&h) {
                        b.issue(key, IssueKind::InvalidHost, format!("host {h:?} is not a DNS name or *.wildcard"));
                        continue;
                    }
                    Some(h)
                }
                _ => None,
            };
            let host_tls = tls_hosts.contains(&host);
            let entry = buckets.entry(host.clone()).or_default();
            if entry.1.is_none() {
                if let Some(d) = &default_route {
                    // The host's default backend, with this host's redirect setting.
                    entry.1 = Some(Arc::new(Route {
                        redirect_https: ann.force_ssl_redirect || (ann.ssl_redirect && host_tls),
                        ingress: d.ingress.clone(),
                        path: PathMatch::Default,
                        backend: d.backend.clone(),
                        rewrite_target: None,
                        body_size: d.body_size,
                        read_timeout: d.read_timeout,
                        order: d.order.clone(),
                    }));
                }
            }
            let Some(http) = &rule.http else { continue };
            for p in &http.paths {
                idx += 1;
                let raw = p.path.clone();
                let pm = if ann.use_regex {
                    let pattern = raw.unwrap_or_else(|| "/".into());
                    match Regex::new(&format!("(?i)^(?:{pattern})")) {
                        Ok(re) => PathMatch::Regex { pattern, re },
                        Err(e) => {
                            b.issue(key, IssueKind::InvalidPath, format!("path {pattern:?} is not a valid regex: {}", e.to_string().lines().last().unwrap_or("").trim()));
                            continue;
                        }
                    }
                } else {
                    match (p.path_type.as_str(), raw) {
                        ("Exact", Some(x)) if x.starts_with('/') => PathMatch::Exact(x),
                        ("Prefix", Some(x)) if x.starts_with('/') => PathMatch::Prefix(x.trim_end_matches('/').to_string()),
                        ("ImplementationSpecific", None) => PathMatch::StringPrefix("/".into()),
                        ("ImplementationSpecific", Some(x)) if x.starts_with('/') => PathMatch::StringPrefix(x),
                        (t, x) => {
                            b.issue(key, IssueKind::InvalidPath, format!("pathType {t:?} with path {x:?} is not valid"));
                            continue;
                        }
                    }
                };
                let Some(be) = b.backend(key, &p.backend, ann.backend_protocol) else { continue };
                let route = mk_route(pm, be, host_tls, idx);
                let entry = buckets.entry(host.clone()).or_default();
                entry.0.push(route);
            }
        }
    }

    let mut table = RouteTable { certs, ..RouteTable::default() };
    for (host, (mut routes, default)) in buckets {
        // Precedence, then drop younger duplicates.
        routes.sort_by(|a, c| {
            c.path.len().cmp(&a.path.len()).then(a.path.rank().cmp(&c.path.rank())).then(a.order.cmp(&c.order))
        });
        let mut seen: HashMap<String, ObjectKey> = HashMap::new();
        routes.retain(|r| match seen.get(&r.path.ident()) {
            Some(owner) => {
                b.issues.insert(Issue {
                    ingress: r.ingress.clone(),
                    kind: IssueKind::Conflict,
                    message: format!(
                        "host {} path {} is already served by ingress {owner}",
                        host.as_deref().unwrap_or("*"),
                        r.path
                    ),
                });
                false
            }
            None => {
                seen.insert(r.path.ident(), r.ingress.clone());
                true
            }
        });
        let hr = HostRoutes { routes, default, tls: tls_hosts.contains(&host) };
        match host {
            None => table.any = hr,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => {
                    table.wildcard.insert(suffix.to_string(), hr);
                }
                None => {
                    table.exact.insert(h, hr);
                }
            },
        }
    }
    if table.any.default.is_none() {
        table.any.default = global_default;
    }
    table.issues = b.issues.into_iter().collect();
    table.claimed = claimed.iter().map(|i| ObjectKey::of(&i.metadata)).collect();
    table.claimed.sort();
    table
}
