//! CNI wire types: network configuration, results (rendered per cniVersion) and decoding helpers.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Versions this plugin accepts and renders.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used for VERSION output and errors before the config is read.
pub const LATEST: &str = "1.1.0";

/// Checks that `v` is a supported cniVersion.
pub fn check_version(v: &str) -> Result<()> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(Error::Version { version: v.to_string(), supported: SUPPORTED_VERSIONS.join(", ") })
    }
}

/// True for versions whose result carries `"version"` in each `ips` entry (pre-1.0).
fn legacy(v: &str) -> bool {
    v.starts_with("0.")
}

/// Decodes JSON into `T`, naming the JSON path of the offending field on error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| classify(what, e))
}

/// Malformed JSON is a decoding failure (code 6); well-formed JSON with a missing field or a
/// field of the wrong type is an invalid config (code 7). Both name the JSON path.
fn classify(what: &'static str, e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_data() {
        Error::Config { field: path, msg: format!("{what}: {inner}") }
    } else {
        Error::Decode { what, path, msg: inner.to_string() }
    }
}

/// Like [`decode`], from an already parsed value.
pub fn decode_value<T: DeserializeOwned>(what: &'static str, v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| classify(what, e))
}

/// DNS settings (`dns` in config and result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A route (`routes` in ipam config and result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means "the IP's gateway" for IPAM routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// One `portMappings` entry from runtimeConfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// "tcp" (default), "udp" or "sctp".
    #[serde(default = "default_proto")]
    pub protocol: String,
    /// Only this node address (empty: all local addresses).
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn default_proto() -> String {
    "tcp".into()
}

/// One `cni.dev/valid-attachments` entry (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address as `aa:bb:..`.
    pub mac: Option<String>,
    /// MTU (rendered from 1.1.0 on).
    pub mtu: Option<u32>,
    /// Netns path for pod-side interfaces.
    pub sandbox: Option<String>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix.
    pub address: IpNet,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// A version-neutral CNI result; [`CniResult::render`] turns it into a given cniVersion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
}

impl CniResult {
    /// Renders the result as the spec's JSON for `version`.
    pub fn render(&self, version: &str) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = json!({ "name": i.name });
                if let Some(m) = &i.mac {
                    o["mac"] = json!(m);
                }
                if version == "1.1.0" {
                    if let Some(m) = i.mtu {
                        o["mtu"] = json!(m);
                    }
                }
                if let Some(s) = &i.sandbox {
                    o["sandbox"] = json!(s);
                }
                o
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if legacy(version) {
                    let fam = if ip.address.addr().is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(fam));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), json!(g.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), json!(version));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            out.insert("routes".into(), json!(self.routes));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }

    /// Parses a result of any supported version (prevResult, a delegate's stdout).
    pub fn parse(what: &'static str, v: &Value) -> Result<Self> {
        let w: WireResult = decode_value(what, v)?;
        Ok(CniResult {
            interfaces: w
                .interfaces
                .into_iter()
                .map(|i| Interface { name: i.name, mac: i.mac, mtu: i.mtu, sandbox: i.sandbox })
                .collect(),
            ips: w
                .ips
                .into_iter()
                .map(|i| IpConfig { address: i.address, gateway: i.gateway, interface: i.interface })
                .collect(),
            routes: w.routes,
            dns: w.dns.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
struct WireInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct WireIp {
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<WireInterface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

/// Runtime-provided configuration (`runtimeConfig`, filled from capabilities by libcni).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// hostPort mappings (capability `portMappings`).
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Requested static IPs (capability `ips`).
    #[serde(default)]
    pub ips: Vec<String>,
}

/// The keys every plugin config has. Everything else is plugin specific.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Requested result version.
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type.
    #[serde(rename = "type")]
    pub type_: String,
}

/// Parses and validates the header of a config.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let h: Header = decode("network config", bytes)?;
    check_version(&h.cni_version)?;
    Ok(h)
}

/// Formats a MAC address like Go's net.HardwareAddr.
pub fn fmt_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
