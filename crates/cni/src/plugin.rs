//! Command dispatch: CNI environment, the bridge, IPAM and portmap plugins.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{code, Error, Result};
use crate::ipam::{self, FileStore, IpamConf};
use crate::netlink::{Netlink, PeerNs};
use crate::nft::{self, Nft};
use crate::types::{self, decode, decode_value, Attachment, CniResult, Dns, Interface, Route, RuntimeConfig};

/// Name of the built-in IPAM (anything else in `ipam.type` is exec'd from CNI_PATH).
pub const BUILTIN_IPAM: &str = "dari-host-local";
/// Bridge plugin type.
pub const BRIDGE: &str = "dari-bridge";
/// Portmap plugin type.
pub const PORTMAP: &str = "dari-portmap";

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// VERSION.
    Version,
    /// STATUS.
    Status,
    /// GC.
    Gc,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The CNI_* environment.
#[derive(Debug, Clone)]
pub struct CniEnv {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS (may be empty on DEL).
    pub netns: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS.
    pub args: String,
    /// CNI_PATH.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads and validates the environment through `get`.
    pub fn from_fn(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let cmd = get("CNI_COMMAND").unwrap_or_default();
        let command = match cmd.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "" => return Err(Error::Env { var: "CNI_COMMAND", msg: "not set".into() }),
            o => return Err(Error::Env { var: "CNI_COMMAND", msg: format!("unknown command {o:?}") }),
        };
        let mut env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: get("CNI_ARGS").unwrap_or_default(),
            path: get("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            let id = &env.container_id;
            if id.is_empty() {
                return Err(Error::Env { var: "CNI_CONTAINERID", msg: "not set".into() });
            }
            if !id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(Error::Env { var: "CNI_CONTAINERID", msg: format!("{id:?} has invalid characters") });
            }
            let i = &env.ifname;
            if i.is_empty() || i.len() > 15 || i == "." || i == ".." || i.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
                return Err(Error::Env { var: "CNI_IFNAME", msg: format!("{i:?} is not a valid interface name") });
            }
            if command != Command::Del && env.netns.is_empty() {
                return Err(Error::Env { var: "CNI_NETNS", msg: "not set".into() });
            }
        }
        env.netns = env.netns.trim().to_string();
        Ok(env)
    }

    fn to_vars(&self, cmd: Command) -> Vec<(&'static str, String)> {
        let path = std::env::join_paths(&self.path).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        vec![
            ("CNI_COMMAND", cmd.as_str().to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.args.clone()),
            ("CNI_PATH", path),
        ]
    }
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({ "cniVersion": types::LATEST, "supportedVersions": types::SUPPORTED_VERSIONS })
}

/// Bridge plugin configuration (the reference bridge plugin's options that matter).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    /// cniVersion.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Bridge name (default `cni0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Put the gateway address on the bridge.
    #[serde(default)]
    pub is_gateway: bool,
    /// Default route in the pod via the gateway (implies isGateway).
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Replace a different address on the bridge instead of failing.
    #[serde(default)]
    pub force_address: bool,
    /// Masquerade pod traffic leaving the subnet (nftables).
    #[serde(default)]
    pub ip_masq: bool,
    /// MTU of bridge and veth.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Hairpin mode on the bridge port.
    #[serde(default)]
    pub hairpin_mode: bool,
    /// Bridge in promiscuous mode.
    #[serde(default)]
    pub promisc_mode: bool,
    /// IPAM section (absent: L2 only).
    #[serde(default)]
    pub ipam: Option<Value>,
    /// DNS for the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// runtimeConfig.
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// prevResult (chained / CHECK).
    #[serde(default)]
    pub prev_result: Option<Value>,
}

fn default_bridge() -> String {
    "cni0".into()
}

/// The nft rule owner of this invocation's attachment.
fn owner(net: &str, env: &CniEnv) -> nft::Owner {
    nft::Owner::new(net, &env.container_id, &env.ifname)
}

/// Network names as the spec allows them (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`); they name the
/// IPAM directory and the nft rule owner.
pub fn check_name(n: &str) -> Result<()> {
    let ok = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::config("name", format!("{n:?} is not a valid network name (letters, digits, `_`, `.`, `-`)")))
    }
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty() && n.len() <= 15 && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl BridgeConf {
    /// Decodes and validates.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let c: BridgeConf = decode("network config", bytes)?;
        types::check_version(&c.cni_version)?;
        check_name(&c.name)?;
        if !valid_ifname(&c.bridge) {
            return Err(Error::config("bridge", format!("{:?} is not a valid interface name", c.bridge)));
        }
        if let Some(m) = c.mtu {
            if !(68..=65535).contains(&m) {
                return Err(Error::config("mtu", format!("{m} is outside 68..65535")));
            }
        }
        if let Some(i) = &c.ipam {
            if !i.is_object() {
                return Err(Error::config("ipam", "must be an object"));
            }
            if !i["type"].is_string() {
                return Err(Error::config("ipam.type", "missing or not a string"));
            }
        }
        Ok(c)
    }
}

/// How addresses are obtained.
enum IpamKind {
    Builtin(ipam::Ipam),
    Delegate(String),
}

fn ipam_kind(ipam_v: &Value, name: &str) -> Result<IpamKind> {
    let t = ipam_v["type"].as_str().unwrap_or_default();
    if t == BUILTIN_IPAM {
        let c: IpamConf = decode_value("ipam config", ipam_v).map_err(|e| match e {
            Error::Config { field, msg } => Error::Config { field: format!("ipam.{field}"), msg },
            o => o,
        })?;
        Ok(IpamKind::Builtin(c.validate(name)?))
    } else {
        Ok(IpamKind::Delegate(t.to_string()))
    }
}

/// For GC and STATUS: the reference `host-local` (1.1.x knows neither command) keeps the same
/// on-disk format and lock as the built-in IPAM, so dari-cni does them itself.
fn ipam_kind_for_maintenance(ipam_v: &Value, name: &str) -> Result<IpamKind> {
    if ipam_v["type"].as_str() == Some("host-local") {
        let mut v = ipam_v.clone();
        v["type"] = Value::String(BUILTIN_IPAM.into());
        return ipam_kind(&v, name);
    }
    ipam_kind(ipam_v, name)
}

fn find_plugin(env: &CniEnv, t: &str) -> Result<PathBuf> {
    if t.contains('/') {
        return Err(Error::config("ipam.type", format!("{t:?} must be a plain plugin name")));
    }
    env.path
        .iter()
        .map(|d| d.join(t))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Delegate { plugin: t.into(), msg: format!("not found in CNI_PATH {:?}", env.path), code: code::INVALID_ENV })
}

/// Execs a delegate plugin with the same stdin, returns its stdout (None when empty).
pub fn exec_delegate(env: &CniEnv, t: &str, cmd: Command, stdin: &[u8]) -> Result<Option<Value>> {
    let p = find_plugin(env, t)?;
    let derr = |msg: String, code| Error::Delegate { plugin: t.into(), msg, code };
    let mut child = Proc::new(&p)
        .env_clear()
        .envs(env.to_vars(cmd))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| derr(format!("exec {}: {e}", p.display()), code::IO_FAILURE))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(|e| derr(format!("write stdin: {e}"), code::IO_FAILURE))?;
    }
    let out = child.wait_with_output().map_err(|e| derr(format!("wait: {e}"), code::IO_FAILURE))?;
    let parsed: Option<Value> = if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        Some(serde_json::from_slice(&out.stdout).map_err(|e| derr(format!("invalid JSON on stdout: {e}"), code::DECODE))?)
    };
    if !out.status.success() {
        let (msg, c) = match &parsed {
            Some(v) => (
                format!("{} {}", v["msg"].as_str().unwrap_or("failed"), v["details"].as_str().unwrap_or("")).trim().to_string(),
                v["code"].as_u64().map(|c| c as u32).unwrap_or(code::INTERNAL),
            ),
            None => (format!("exited with {}", out.status), code::INTERNAL),
        };
        return Err(derr(msg, c));
    }
    Ok(parsed)
}

fn ipam_add(env: &CniEnv, conf: &BridgeConf, stdin: &[u8]) -> Result<CniResult> {
    let Some(iv) = &conf.ipam else { return Ok(CniResult::default()) };
    match ipam_kind(iv, &conf.name)? {
        IpamKind::Builtin(ip) => {
            let mut st = FileStore::open(&ip.dir)?;
            ipam::allocate(&ip, &mut st, &env.container_id, &env.ifname)
        }
        IpamKind::Delegate(t) => {
            let v = exec_delegate(env, &t, Command::Add, stdin)?
                .ok_or_else(|| Error::Delegate { plugin: t.clone(), msg: "empty result".into(), code: code::DECODE })?;
            CniResult::parse("IPAM result", &v)
        }
    }
}

fn ipam_del(env: &CniEnv, conf: &BridgeConf, stdin: &[u8]) -> Result<()> {
    let Some(iv) = &conf.ipam else { return Ok(()) };
    match ipam_kind(iv, &conf.name)? {
        IpamKind::Builtin(ip) => {
            let mut st = FileStore::open(&ip.dir)?;
            ipam::release(&mut st, &env.container_id, &env.ifname).map(|_| ())
        }
        IpamKind::Delegate(t) => exec_delegate(env, &t, Command::Del, stdin).map(|_| ()),
    }
}

/// Deterministic host-side veth name for (container, ifname).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a 64: stable across runs and architectures.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("veth{:08x}", (h ^ (h >> 32)) as u32)
}

/// Everything ADD needs from the outside world.
pub struct Ctx<'a> {
    /// Host namespace.
    pub host: &'a mut dyn Netlink,
    /// Pod namespace (None on DEL when it is gone).
    pub pod: Option<&'a mut dyn Netlink>,
    /// The open pod netns (for veth placement).
    pub pod_file: Option<&'a File>,
    /// Writes a sysctl in the host netns.
    pub sysctl: &'a mut dyn FnMut(&str, &str) -> Result<()>,
}

/// The desired state of the pod side: addresses and routes (pure).
pub fn pod_routes(conf: &BridgeConf, ipam_res: &CniResult) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for (i, r) in ipam_res.routes.iter().enumerate() {
        let gw = r.gw.or_else(|| {
            ipam_res.ips.iter().find(|ip| ip.address.addr().is_ipv4() == r.dst.addr().is_ipv4()).and_then(|ip| ip.gateway)
        });
        if conf.is_default_gateway && r.dst.prefix_len() == 0 {
            return Err(Error::config(format!("ipam.routes[{i}]"), "a default route conflicts with isDefaultGateway"));
        }
        routes.push(Route { dst: r.dst, gw });
    }
    if conf.is_default_gateway {
        for ip in &ipam_res.ips {
            let Some(gw) = ip.gateway else { continue };
            let dst: IpNet = if gw.is_ipv4() { "0.0.0.0/0".parse() } else { "::/0".parse() }
                .map_err(|e: ipnet::AddrParseError| Error::State { what: e.to_string() })?;
            if !routes.iter().any(|r| r.dst == dst) {
                routes.push(Route { dst, gw: Some(gw) });
            }
        }
    }
    Ok(routes)
}

fn ensure_bridge(conf: &BridgeConf, host: &mut dyn Netlink) -> Result<crate::netlink::Link> {
    let br = match host.link(&conf.bridge)? {
        Some(l) => l,
        None => {
            host.add_bridge(&conf.bridge, conf.mtu)?;
            host.link(&conf.bridge)?.ok_or_else(|| Error::State { what: format!("bridge {} vanished after creation", conf.bridge) })?
        }
    };
    if br.kind.as_deref() != Some("bridge") {
        return Err(Error::State { what: format!("{} already exists but is not a bridge (kind {:?})", conf.bridge, br.kind) });
    }
    if conf.promisc_mode {
        host.set_promisc(br.index)?;
    }
    if !br.up {
        host.set_up(br.index)?;
    }
    Ok(br)
}

fn gateway_on_bridge(conf: &BridgeConf, host: &mut dyn Netlink, br: u32, res: &CniResult) -> Result<()> {
    let have = host.addrs(br)?;
    for ip in &res.ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNet::new(gw, ip.address.prefix_len()).map_err(|e| Error::State { what: e.to_string() })?;
        if have.contains(&want) {
            continue;
        }
        for other in have.iter().filter(|a| a.addr().is_ipv4() == gw.is_ipv4() && a.trunc() == want.trunc()) {
            if conf.force_address {
                host.del_addr(br, *other)?;
            } else {
                return Err(Error::State {
                    what: format!("bridge {} already has an IP address {other} different from {want} (set forceAddress)", conf.bridge),
                });
            }
        }
        match host.add_addr(br, want) {
            Ok(()) => {}
            // a parallel ADD added it first
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bridge ADD against the given namespaces. `stdin` is passed on to a delegate IPAM.
pub fn bridge_add(env: &CniEnv, conf: &BridgeConf, stdin: &[u8], ctx: Ctx<'_>) -> Result<CniResult> {
    let Ctx { host, pod, pod_file, sysctl } = ctx;
    let pod = pod.ok_or_else(|| Error::Env { var: "CNI_NETNS", msg: "pod netns not open".into() })?;
    let pod_file = pod_file.ok_or_else(|| Error::Env { var: "CNI_NETNS", msg: "pod netns not open".into() })?;
    if pod.link(&env.ifname)?.is_some() {
        return Err(Error::IfExists { ifname: env.ifname.clone(), netns: env.netns.clone() });
    }
    let br = ensure_bridge(conf, host)?;
    let hname = host_veth_name(&env.container_id, &env.ifname);
    if let Some(stale) = host.link(&hname)? {
        // leftover of a crashed ADD whose pod side is gone: its name is ours
        host.del_link(stale.index)?;
    }
    host.add_veth(&hname, &env.ifname, conf.mtu, &PeerNs { file: pod_file, label: &env.netns })?;
    let undo_veth = |pod: &mut dyn Netlink| {
        if let Ok(Some(l)) = pod.link(&env.ifname) {
            let _ = pod.del_link(l.index);
        }
    };
    let inner = |host: &mut dyn Netlink, pod: &mut dyn Netlink| -> Result<CniResult> {
        let hv = host.link(&hname)?.ok_or_else(|| Error::State { what: format!("host veth {hname} missing after creation") })?;
        host.set_master(hv.index, br.index)?;
        if conf.hairpin_mode {
            host.set_hairpin(hv.index, true)?;
        }
        host.set_up(hv.index)?;
        // the bridge takes a port's MAC when the first port joins: report the current one
        let br = host.link(&conf.bridge)?.unwrap_or_else(|| br.clone());
        let pl = pod.link(&env.ifname)?.ok_or_else(|| Error::State { what: format!("pod interface {} missing in {}", env.ifname, env.netns) })?;
        Ok(CniResult {
            interfaces: vec![
                Interface { name: conf.bridge.clone(), mac: Some(types::fmt_mac(&br.mac)), mtu: Some(br.mtu).filter(|m| *m > 0), sandbox: None },
                Interface { name: hname.clone(), mac: Some(types::fmt_mac(&hv.mac)), mtu: Some(hv.mtu).filter(|m| *m > 0), sandbox: None },
                Interface { name: env.ifname.clone(), mac: Some(types::fmt_mac(&pl.mac)), mtu: Some(pl.mtu).filter(|m| *m > 0), sandbox: Some(env.netns.clone()) },
            ],
            ..Default::default()
        })
    };
    let res = match inner(host, pod) {
        Ok(r) => r,
        Err(e) => {
            undo_veth(pod);
            return Err(e);
        }
    };
    let ipam_res = match ipam_add(env, conf, stdin) {
        Ok(r) => r,
        Err(e) => {
            undo_veth(pod);
            return Err(e);
        }
    };
    let configure = |mut res: CniResult, host: &mut dyn Netlink, pod: &mut dyn Netlink, sysctl: &mut dyn FnMut(&str, &str) -> Result<()>| -> Result<CniResult> {
        res.ips = ipam_res.ips.iter().cloned().map(|mut i| { i.interface = Some(2); i }).collect();
        res.routes = pod_routes(conf, &ipam_res)?;
        res.dns = conf.dns.clone().filter(|d| *d != Dns::default()).unwrap_or_else(|| ipam_res.dns.clone());
        if conf.is_gateway || conf.is_default_gateway {
            gateway_on_bridge(conf, host, br.index, &res)?;
            if res.ips.iter().any(|i| i.address.addr().is_ipv4()) {
                sysctl("net/ipv4/ip_forward", "1")?;
            }
            if res.ips.iter().any(|i| i.address.addr().is_ipv6()) {
                sysctl("net/ipv6/conf/all/forwarding", "1")?;
            }
        }
        let pl = pod.link(&env.ifname)?.ok_or_else(|| Error::State { what: format!("pod interface {} missing", env.ifname) })?;
        for ip in &res.ips {
            pod.add_addr(pl.index, ip.address)?;
        }
        pod.set_up(pl.index)?;
        if let Some(lo) = pod.link("lo")? {
            if !lo.up {
                pod.set_up(lo.index)?;
            }
        }
        for r in &res.routes {
            pod.add_route(r.dst, r.gw, pl.index)?;
        }
        if conf.ip_masq {
            let ips: Vec<IpNet> = res.ips.iter().map(|i| i.address).collect();
            Nft.add(&nft::render_masq(&ips, &owner(&conf.name, env).tag()))?;
        }
        Ok(res)
    };
    match configure(res, host, pod, sysctl) {
        Ok(r) => Ok(r),
        Err(e) => {
            undo_veth(pod);
            let _ = ipam_del(env, conf, stdin);
            if conf.ip_masq {
                let _ = Nft.delete_owner(&owner(&conf.name, env));
            }
            Err(e)
        }
    }
}

/// Bridge DEL: release addresses, remove the pod interface (if the netns still exists), drop rules.
pub fn bridge_del(env: &CniEnv, conf: &BridgeConf, stdin: &[u8], pod: Option<&mut dyn Netlink>) -> Result<()> {
    ipam_del(env, conf, stdin)?;
    if let Some(pod) = pod {
        if let Some(l) = pod.link(&env.ifname)? {
            pod.del_link(l.index)?;
        }
    }
    if conf.ip_masq {
        Nft.delete_owner(&owner(&conf.name, env))?;
    }
    Ok(())
}

/// Bridge CHECK against prevResult.
pub fn bridge_check(env: &CniEnv, conf: &BridgeConf, stdin: &[u8], host: &mut dyn Netlink, pod: &mut dyn Netlink) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| Error::config("prevResult", "required for CHECK"))?;
    let prev = CniResult::parse("prevResult", prev)?;
    if let Some(iv) = &conf.ipam {
        match ipam_kind(iv, &conf.name)? {
            IpamKind::Builtin(ip) => {
                let st = FileStore::open(&ip.dir)?;
                let held = ipam::held(&st, &env.container_id, &env.ifname)?;
                for i in &prev.ips {
                    if !held.contains(&i.address.addr()) {
                        return Err(Error::State { what: format!("IPAM holds no reservation of {} for {}/{}", i.address.addr(), env.container_id, env.ifname) });
                    }
                }
            }
            IpamKind::Delegate(t) => {
                exec_delegate(env, &t, Command::Check, stdin)?;
            }
        }
    }
    let br = host.link(&conf.bridge)?.ok_or_else(|| Error::State { what: format!("bridge {} not found", conf.bridge) })?;
    let hname = host_veth_name(&env.container_id, &env.ifname);
    let hv = host.link(&hname)?.ok_or_else(|| Error::State { what: format!("host veth {hname} not found") })?;
    if hv.master != Some(br.index) {
        return Err(Error::State { what: format!("host veth {hname} is not attached to bridge {}", conf.bridge) });
    }
    let pl = pod.link(&env.ifname)?.ok_or_else(|| Error::State { what: format!("interface {} not found in {}", env.ifname, env.netns) })?;
    let idx = prev.interfaces.iter().position(|i| i.name == env.ifname && i.sandbox.is_some());
    if let Some(i) = idx {
        if let Some(mac) = &prev.interfaces[i].mac {
            if !mac.eq_ignore_ascii_case(&types::fmt_mac(&pl.mac)) {
                return Err(Error::State { what: format!("interface {} has MAC {} but prevResult says {mac}", env.ifname, types::fmt_mac(&pl.mac)) });
            }
        }
    }
    let have = pod.addrs(pl.index)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none() || ip.interface == idx) {
        if !have.contains(&ip.address) {
            return Err(Error::State { what: format!("interface {} lacks address {}", env.ifname, ip.address) });
        }
    }
    for fam in [true, false] {
        if !prev.routes.iter().any(|r| r.dst.addr().is_ipv4() == fam) {
            continue;
        }
        let rs = pod.routes(fam)?;
        for r in prev.routes.iter().filter(|r| r.dst.addr().is_ipv4() == fam) {
            if !rs.iter().any(|x| x.dst == r.dst && (r.gw.is_none() || x.gw == r.gw)) {
                return Err(Error::State { what: format!("route {} via {:?} missing in {}", r.dst, r.gw, env.netns) });
            }
        }
    }
    if conf.ip_masq && Nft.count(&owner(&conf.name, env))? == 0 {
        return Err(Error::State { what: format!("ipMasq rules for {}/{} missing", env.container_id, env.ifname) });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GcConf {
    name: String,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid: Vec<Attachment>,
    #[serde(default)]
    ip_masq: bool,
    #[serde(rename = "type")]
    type_: String,
}

/// GC: releases every reservation / rule not in `cni.dev/valid-attachments`.
pub fn gc(env: &CniEnv, stdin: &[u8]) -> Result<()> {
    let c: GcConf = decode("network config", stdin)?;
    check_name(&c.name)?;
    if let Some(iv) = &c.ipam {
        match ipam_kind_for_maintenance(iv, &c.name)? {
            IpamKind::Builtin(ip) => {
                if ip.dir.exists() {
                    let mut st = FileStore::open(&ip.dir)?;
                    ipam::gc(&mut st, &c.valid)?;
                }
            }
            IpamKind::Delegate(t) => {
                exec_delegate(env, &t, Command::Gc, stdin)?;
            }
        }
    }
    if c.ip_masq || c.type_ == PORTMAP {
        Nft.gc(&c.name, &c.valid)?;
    }
    Ok(())
}

/// STATUS: ready when the IPAM store is usable (or the delegate says so).
pub fn status(env: &CniEnv, stdin: &[u8]) -> Result<()> {
    let c: GcConf = decode("network config", stdin)?;
    if let Some(iv) = &c.ipam {
        match ipam_kind_for_maintenance(iv, &c.name)? {
            IpamKind::Builtin(ip) => {
                FileStore::open(&ip.dir).map_err(|e| Error::Delegate { plugin: BUILTIN_IPAM.into(), msg: e.to_string(), code: code::NOT_AVAILABLE })?;
            }
            IpamKind::Delegate(t) => {
                exec_delegate(env, &t, Command::Status, stdin)?;
            }
        }
    }
    Ok(())
}

/// The IPAM plugin on its own (`type: dari-host-local`), usable by any main plugin.
pub fn ipam_plugin(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct C {
        cni_version: String,
        name: String,
        ipam: Value,
        #[serde(default)]
        prev_result: Option<Value>,
        #[serde(default, rename = "cni.dev/valid-attachments")]
        valid: Vec<Attachment>,
    }
    let c: C = decode("network config", stdin)?;
    types::check_version(&c.cni_version)?;
    let ip = match ipam_kind(&c.ipam, &c.name)? {
        IpamKind::Builtin(ip) => ip,
        IpamKind::Delegate(t) => return Err(Error::config("ipam.type", format!("{t:?} is not {BUILTIN_IPAM}"))),
    };
    let mut st = FileStore::open(&ip.dir)?;
    match env.command {
        Command::Add => Ok(Some(ipam::allocate(&ip, &mut st, &env.container_id, &env.ifname)?.render(&c.cni_version))),
        Command::Del => ipam::release(&mut st, &env.container_id, &env.ifname).map(|_| None),
        Command::Check => {
            let held = ipam::held(&st, &env.container_id, &env.ifname)?;
            if held.is_empty() {
                return Err(Error::State { what: format!("no reservation for {}/{}", env.container_id, env.ifname) });
            }
            if let Some(p) = &c.prev_result {
                for i in CniResult::parse("prevResult", p)?.ips {
                    if ip.sets.iter().flatten().any(|r| r.contains(i.address.addr())) && !held.contains(&i.address.addr()) {
                        return Err(Error::State { what: format!("{} is not reserved for {}", i.address, env.container_id) });
                    }
                }
            }
            Ok(None)
        }
        Command::Gc => ipam::gc(&mut st, &c.valid).map(|_| None),
        Command::Status | Command::Version => Ok(None),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortmapConf {
    cni_version: String,
    name: String,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    prev_result: Option<Value>,
}

/// The portmap chained plugin (capability `portMappings`).
pub fn portmap_plugin(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>> {
    let c: PortmapConf = decode("network config", stdin)?;
    types::check_version(&c.cni_version)?;
    check_name(&c.name)?;
    let who = owner(&c.name, env);
    let tag = who.tag();
    match env.command {
        Command::Add | Command::Check => {
            let prev_v = c.prev_result.as_ref().ok_or_else(|| Error::config("prevResult", "portmap must be chained after a plugin that returns IPs"))?;
            let prev = CniResult::parse("prevResult", prev_v)?;
            let sandbox_ifs: Vec<usize> = prev.interfaces.iter().enumerate().filter(|(_, i)| i.sandbox.is_some()).map(|(n, _)| n).collect();
            let ips: Vec<IpAddr> = prev
                .ips
                .iter()
                .filter(|i| i.interface.is_none_or(|n| sandbox_ifs.is_empty() || sandbox_ifs.contains(&n)))
                .map(|i| i.address.addr())
                .collect();
            let rules = nft::render_portmap(&c.runtime_config.port_mappings, &ips, &tag)?;
            if env.command == Command::Add {
                if !rules.is_empty() {
                    Nft.add(&rules)?;
                }
                Ok(Some(prev.render(&c.cni_version)))
            } else {
                let want = rules.lines().count();
                let got = Nft.count(&who)?;
                if got < want {
                    return Err(Error::State { what: format!("portmap: {got} of {want} nft rules for {tag} present") });
                }
                Ok(None)
            }
        }
        Command::Del => Nft.delete_owner(&who).map(|_| None),
        Command::Gc => gc(env, stdin).map(|_| None),
        Command::Status | Command::Version => Ok(None),
    }
}

fn write_sysctl(key: &str, val: &str) -> Result<()> {
    let p = Path::new("/proc/sys").join(key);
    std::fs::write(&p, val).map_err(|e| Error::Store { path: p, op: "write sysctl", source: e })
}

fn open_netns(path: &str) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Netns { netns: path.into(), op: "open", source: e }),
    }
}

/// Runs the bridge plugin for real (rtnetlink, current-thread runtime).
pub fn bridge_plugin(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>> {
    match env.command {
        Command::Gc => return gc(env, stdin).map(|_| None),
        Command::Status => return status(env, stdin).map(|_| None),
        Command::Version => return Ok(Some(version_info())),
        _ => {}
    }
    let conf = BridgeConf::parse(stdin)?;
    let rt = std::rc::Rc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::Netlink { op: "start runtime", target: "tokio".into(), netns: "host".into(), source: e })?,
    );
    match env.command {
        Command::Add => {
            let f = open_netns(&env.netns)?.ok_or_else(|| Error::Netns {
                netns: env.netns.clone(),
                op: "open",
                source: std::io::Error::from(ErrorKind::NotFound),
            })?;
            let mut host = crate::netlink::RtNetlink::host(rt.clone())?;
            let mut pod = crate::netlink::RtNetlink::in_netns(rt.clone(), &f, &env.netns)?;
            let mut sc = |k: &str, v: &str| write_sysctl(k, v);
            let res = bridge_add(env, &conf, stdin, Ctx { host: &mut host, pod: Some(&mut pod), pod_file: Some(&f), sysctl: &mut sc })?;
            Ok(Some(res.render(&conf.cni_version)))
        }
        Command::Del => {
            let f = if env.netns.is_empty() { None } else { open_netns(&env.netns)? };
            let mut pod = match &f {
                Some(f) => Some(crate::netlink::RtNetlink::in_netns(rt.clone(), f, &env.netns)?),
                None => None,
            };
            bridge_del(env, &conf, stdin, pod.as_mut().map(|p| p as &mut dyn Netlink)).map(|_| None)
        }
        Command::Check => {
            let f = open_netns(&env.netns)?.ok_or_else(|| Error::Netns {
                netns: env.netns.clone(),
                op: "open",
                source: std::io::Error::from(ErrorKind::NotFound),
            })?;
            let mut host = crate::netlink::RtNetlink::host(rt.clone())?;
            let mut pod = crate::netlink::RtNetlink::in_netns(rt.clone(), &f, &env.netns)?;
            bridge_check(env, &conf, stdin, &mut host, &mut pod).map(|_| None)
        }
        _ => Ok(None),
    }
}

/// CHECK exists from cniVersion 0.4.0 on, STATUS and GC from 1.1.0 on: older configs get
/// "incompatible CNI version" (code 1), as the spec asks.
pub fn check_command_version(cmd: Command, version: &str) -> Result<()> {
    let min = match cmd {
        Command::Check => "0.4.0",
        Command::Status | Command::Gc => "1.1.0",
        _ => return Ok(()),
    };
    let pos = |v: &str| types::SUPPORTED_VERSIONS.iter().position(|x| *x == v);
    if pos(version) < pos(min) {
        let ok: Vec<&str> = types::SUPPORTED_VERSIONS.iter().copied().filter(|v| pos(v) >= pos(min)).collect();
        return Err(Error::Version { version: version.into(), supported: format!("{} for {}", ok.join(", "), cmd.as_str()) });
    }
    Ok(())
}

/// Which plugin a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Bridge.
    Bridge,
    /// IPAM.
    Ipam,
    /// Portmap.
    Portmap,
}

/// Picks the plugin from argv[0], else from the config's `type`.
pub fn which(argv0: &str, stdin: &[u8]) -> Result<Which> {
    let base = Path::new(argv0).file_name().and_then(|s| s.to_str()).unwrap_or("");
    let by_name = |n: &str| match n {
        BRIDGE => Some(Which::Bridge),
        BUILTIN_IPAM => Some(Which::Ipam),
        PORTMAP => Some(Which::Portmap),
        _ => None,
    };
    if let Some(w) = by_name(base) {
        return Ok(w);
    }
    #[derive(Deserialize)]
    struct T {
        #[serde(rename = "type")]
        type_: String,
    }
    let t: T = decode("network config", stdin)?;
    by_name(&t.type_).ok_or_else(|| Error::config("type", format!("unknown plugin type {:?} (this binary serves {BRIDGE}, {BUILTIN_IPAM}, {PORTMAP})", t.type_)))
}

/// The whole process: reads stdin, dispatches, prints result or error JSON on stdout.
/// Returns the exit code.
pub fn run(argv0: &str, get: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read, stdout: &mut dyn Write, log: &mut dyn Write) -> i32 {
    let mut input = Vec::new();
    let version_hint = |input: &[u8]| {
        serde_json::from_slice::<Value>(input)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .filter(|v| types::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| types::LATEST.to_string())
    };
    let result = (|| -> Result<Option<Value>> {
        let env = CniEnv::from_fn(&get)?;
        if env.command == Command::Version {
            return Ok(Some(version_info()));
        }
        stdin.read_to_end(&mut input).map_err(|e| Error::Decode { what: "stdin", path: ".".into(), msg: e.to_string() })?;
        let h = types::parse_header(&input)?;
        check_command_version(env.command, &h.cni_version)?;
        if get("DARI_CNI_DEBUG").is_some() || get("DARI_CNI_LOG_FILE").is_some() {
            let _ = writeln!(log, "dari-cni {} container={} ifname={} netns={}", env.command.as_str(), env.container_id, env.ifname, env.netns);
        }
        match which(argv0, &input)? {
            Which::Bridge => bridge_plugin(&env, &input),
            Which::Ipam => ipam_plugin(&env, &input),
            Which::Portmap => portmap_plugin(&env, &input),
        }
    })();
    match result {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(log, "dari-cni error (code {}): {e}: {}", e.code(), e.details());
            let _ = writeln!(stdout, "{}", e.to_json(&version_hint(&input)));
            1
        }
    }
}
