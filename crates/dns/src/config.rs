//! Configuration: the serde [`DnsConfig`] (file or ConfigMap, defaults need no editing), the
//! pure [`AnswerConfig`] derived from it, the clap [`DnsArgs`] and the [`DnsRunConfig`] for [`crate::run`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use crate::error::DnsError;

/// How `a-b-c-d.<ns>.pod.<zone>` names are answered (the spec's pod records, CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PodsMode {
    /// Pod names get NXDOMAIN.
    Disabled,
    /// Any well-formed `a-b-c-d.<ns>.pod.<zone>` answers with that address (CoreDNS `pods insecure`).
    #[default]
    Insecure,
    /// Only addresses of pods that exist in that namespace are answered (needs a watch on Pods).
    Verified,
}

/// The DNS configuration, as read from a YAML file or from the ConfigMap `kube-system/dari-dns`
/// (key `config.yaml`). Every field has a default; an empty document is the working default
/// (the equivalent of the Corefile `kubernetes cluster.local in-addr.arpa ip6.arpa { pods insecure
/// fallthrough in-addr.arpa ip6.arpa }`, `forward . /etc/resolv.conf`, `cache 30`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DnsConfig {
    /// The cluster domain. Default `cluster.local`.
    pub zone: String,
    /// TTL of every record answered from the cluster (and of the SOA's minimum). Default 5 s, as CoreDNS.
    pub ttl: u32,
    /// Pod records mode. Default `insecure`.
    pub pods: PodsMode,
    /// Upstream resolvers, `IP` or `IP:port`, tried in order with failover. Empty (default): the
    /// `nameserver` lines of [`DnsConfig::resolv_conf`].
    pub forward: Vec<String>,
    /// The resolv.conf read when `forward` is empty. Default `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Cache: the longest time in seconds a forwarded answer (positive or negative) is kept. 0 turns the
    /// cache off. Default 30, as CoreDNS `cache 30`.
    pub cache: u32,
    /// Cache: the largest number of entries. Default 10,000.
    pub cache_size: usize,
    /// How long one upstream gets to answer before the next one is tried, in ms. Default 2,000.
    pub upstream_timeout_ms: u64,
    /// Reverse lookups for addresses not in the index are forwarded (CoreDNS `fallthrough in-addr.arpa
    /// ip6.arpa`). Default true; false answers NXDOMAIN.
    pub reverse_fallthrough: bool,
    /// EDNS0 UDP payload size advertised in answers, and the largest answer sent over UDP to an EDNS
    /// client. Default 1232 (the DNS flag day 2020 value).
    pub edns_payload: u16,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: "cluster.local".into(),
            ttl: 5,
            pods: PodsMode::Insecure,
            forward: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            cache: 30,
            cache_size: 10_000,
            upstream_timeout_ms: 2_000,
            reverse_fallthrough: true,
            edns_payload: 1232,
        }
    }
}

impl DnsConfig {
    /// Parses the YAML text of a config; `origin` names where it came from in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, DnsError> {
        let cfg: DnsConfig = if text.trim().is_empty() {
            DnsConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| DnsError::Config {
                origin: origin.to_string(),
                source,
            })?
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and parses a YAML config file.
    pub fn from_file(path: &Path) -> Result<Self, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    fn validate(&self, origin: &str) -> Result<(), DnsError> {
        let bad = |reason: String| DnsError::ConfigValue {
            origin: origin.to_string(),
            reason,
        };
        AnswerConfig::new(self).map_err(|e| bad(e.to_string()))?;
        for f in &self.forward {
            parse_upstream(f).ok_or_else(|| bad(format!("forward entry {f:?} is not IP or IP:port")))?;
        }
        if self.edns_payload < 512 {
            return Err(bad(format!("ednsPayload {} is below 512", self.edns_payload)));
        }
        Ok(())
    }

    /// The upstream resolvers: `forward`, or else the nameservers of `resolv_conf`.
    pub fn upstreams(&self) -> Result<Vec<SocketAddr>, DnsError> {
        if !self.forward.is_empty() {
            return Ok(self.forward.iter().filter_map(|f| parse_upstream(f)).collect());
        }
        let text = std::fs::read_to_string(&self.resolv_conf).map_err(|source| DnsError::ReadFile {
            path: self.resolv_conf.clone(),
            source,
        })?;
        Ok(parse_resolv_conf(&text))
    }
}

/// Parses `IP`, `IP:port` or `[IPv6]:port` (port 53 when absent).
pub fn parse_upstream(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

/// The `nameserver` addresses of a resolv.conf text, port 53 (IPv6 zone suffixes are dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let addr = words.next()?;
            let addr = addr.split('%').next()?;
            addr.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// What the pure [`crate::answer`] needs, precomputed from a [`DnsConfig`].
#[derive(Clone, Debug)]
pub struct AnswerConfig {
    /// The zone as a name (`cluster.local.`).
    pub zone: Name,
    /// The zone's labels, lower case, left to right.
    pub zone_labels: Vec<String>,
    /// TTL of records answered.
    pub ttl: u32,
    /// Pod records mode.
    pub pods: PodsMode,
    /// Forward reverse lookups not in the index.
    pub reverse_fallthrough: bool,
    /// EDNS payload advertised.
    pub edns_payload: u16,
    pub(crate) soa_mname: Name,
    pub(crate) soa_rname: Name,
}

impl AnswerConfig {
    /// Derives the answer config. Fails when the zone is not a valid name.
    pub fn new(cfg: &DnsConfig) -> Result<Self, DnsError> {
        let zone_text = cfg.zone.trim_end_matches('.').to_ascii_lowercase();
        let name_err = |name: String, source| DnsError::Name { name, source };
        if zone_text.is_empty() {
            return Err(DnsError::ConfigValue {
                origin: "zone".into(),
                reason: "the cluster zone is empty".into(),
            });
        }
        let zone = Name::from_ascii(format!("{zone_text}."))
            .map_err(|e| name_err(zone_text.clone(), e))?;
        let soa_mname = Name::from_ascii(format!("ns.dns.{zone_text}."))
            .map_err(|e| name_err(zone_text.clone(), e))?;
        let soa_rname = Name::from_ascii(format!("hostmaster.{zone_text}."))
            .map_err(|e| name_err(zone_text.clone(), e))?;
        Ok(Self {
            zone,
            zone_labels: zone_text.split('.').map(str::to_string).collect(),
            ttl: cfg.ttl,
            pods: cfg.pods,
            reverse_fallthrough: cfg.reverse_fallthrough,
            edns_payload: cfg.edns_payload,
            soa_mname,
            soa_rname,
        })
    }
}

impl Default for AnswerConfig {
    #[allow(clippy::expect_used)]
    fn default() -> Self {
        // The default zone is a constant valid name.
        Self::new(&DnsConfig::default()).expect("default DNS config is valid")
    }
}

/// Command-line flags for the DNS component; the CLI flattens these (`#[command(flatten)]`).
#[derive(Clone, Debug, clap::Args)]
pub struct DnsArgs {
    /// Address the DNS server listens on (UDP and TCP).
    #[arg(long = "dns-listen", env = "DARI_DNS_LISTEN", default_value = "0.0.0.0:53")]
    pub dns_listen: SocketAddr,
    /// Address of the health (/health, /ready) and Prometheus (/metrics) listener.
    #[arg(long = "dns-metrics-listen", env = "DARI_DNS_METRICS_LISTEN", default_value = "0.0.0.0:9153")]
    pub dns_metrics_listen: SocketAddr,
    /// A YAML config file (see DnsConfig); the ConfigMap, when present, overrides it.
    #[arg(long = "dns-config", env = "DARI_DNS_CONFIG")]
    pub dns_config: Option<PathBuf>,
    /// Name of the ConfigMap in kube-system holding `config.yaml`; reloaded on change. Empty: none.
    #[arg(long = "dns-configmap", default_value = "dari-dns")]
    pub dns_configmap: String,
    /// Kubeconfig used to watch the API; default: in-cluster or $KUBECONFIG.
    #[arg(long = "dns-kubeconfig", env = "DARI_DNS_KUBECONFIG")]
    pub dns_kubeconfig: Option<PathBuf>,
}

/// Everything [`crate::run`] needs.
#[derive(Clone, Debug)]
pub struct DnsRunConfig {
    /// DNS listen address (UDP and TCP).
    pub listen: SocketAddr,
    /// HTTP listen address for /health, /ready and /metrics.
    pub metrics_listen: SocketAddr,
    /// The base config (file, or defaults).
    pub base: DnsConfig,
    /// ConfigMap name in kube-system to watch for config; `None` to not watch.
    pub configmap: Option<String>,
    /// Kubeconfig path; `None` for in-cluster / default.
    pub kubeconfig: Option<PathBuf>,
}

impl DnsRunConfig {
    /// Builds the run config from the flags, reading the config file when given.
    pub fn from_args(args: &DnsArgs) -> Result<Self, DnsError> {
        let base = match &args.dns_config {
            Some(path) => DnsConfig::from_file(path)?,
            None => DnsConfig::default(),
        };
        Ok(Self {
            listen: args.dns_listen,
            metrics_listen: args.dns_metrics_listen,
            base,
            configmap: (!args.dns_configmap.is_empty()).then(|| args.dns_configmap.clone()),
            kubeconfig: args.dns_kubeconfig.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_yaml_is_the_default() {
        assert_eq!(DnsConfig::from_yaml("", "t").unwrap(), DnsConfig::default());
        assert_eq!(DnsConfig::from_yaml("{}", "t").unwrap(), DnsConfig::default());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = DnsConfig::from_yaml("zone: a.b\nbogus: 1\n", "t").unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err:?}");
    }

    #[test]
    fn bad_forward_is_rejected() {
        let err = DnsConfig::from_yaml("forward: [nope]\n", "t").unwrap_err();
        assert!(matches!(err, DnsError::ConfigValue { .. }), "{err:?}");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# c\nsearch x\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec!["10.0.0.2:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]
        );
        assert_eq!(parse_upstream("127.0.0.1:5353"), Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(parse_upstream("::1"), Some("[::1]:53".parse().unwrap()));
    }
}
