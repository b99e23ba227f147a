//! host-local compatible IPAM: config, a pure allocator core and the on-disk store.
//!
//! On-disk format (same as containernetworking/plugins host-local, so either plugin can take over):
//! `<dataDir>/<network>/<ip>` holds `"<containerID>\r\n<ifname>"`, `last_reserved_ip.<rangeset index>`
//! holds the last handed-out address, and `lock` is flock'd exclusively for every operation.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::types::{Attachment, CniResult, Dns, IpConfig, Route};

/// Default `dataDir`, as host-local.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One entry of `ranges` as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RangeConf {
    /// Subnet (host bits must be zero).
    pub subnet: IpNet,
    /// First allocatable address (default: network + 1).
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address (default: broadcast - 1 for IPv4, last address for IPv6).
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// Gateway, never handed out (default: network + 1).
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// The `ipam` section for the built-in host-local compatible IPAM.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// Plugin type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Range sets: one address is allocated from each inner list.
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Legacy single-range form.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Legacy single-range form.
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// Legacy single-range form.
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// Legacy single-range form.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Routes returned in the result.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Where reservations live (default [`DEFAULT_DATA_DIR`]).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// A validated, canonical range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Subnet.
    pub subnet: IpNet,
    /// First allocatable address.
    pub start: IpAddr,
    /// Last allocatable address (inclusive).
    pub end: IpAddr,
    /// Gateway (skipped by the allocator).
    pub gateway: IpAddr,
}

impl Range {
    /// True if `ip` is within start..=end.
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.start) && num(ip) >= num(self.start) && num(ip) <= num(self.end)
    }
    fn size(&self) -> u128 {
        (num(self.end) - num(self.start)).saturating_add(1)
    }
}

/// A validated range set.
pub type RangeSet = Vec<Range>;

/// The validated ipam config.
#[derive(Debug, Clone)]
pub struct Ipam {
    /// Range sets.
    pub sets: Vec<RangeSet>,
    /// Routes.
    pub routes: Vec<Route>,
    /// `<dataDir>/<network>`.
    pub dir: PathBuf,
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// An address as a number.
pub fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A number as an address of the given family.
pub fn from_num(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

fn canon(r: &RangeConf, field: &str) -> Result<Range> {
    let s = r.subnet;
    if s.addr() != s.network() {
        return Err(Error::config(
            format!("{field}.subnet"),
            format!("{s} has host bits set (network is {})", s.network()),
        ));
    }
    let v4 = s.addr().is_ipv4();
    if s.prefix_len() + 2 > s.max_prefix_len() {
        return Err(Error::config(format!("{field}.subnet"), format!("network {s} too small to allocate from")));
    }
    let net = num(s.network());
    let last = num(s.broadcast()) - if v4 { 1 } else { 0 };
    let first = net + 1;
    let chk = |ip: Option<IpAddr>, name: &str, dflt: u128| -> Result<IpAddr> {
        match ip {
            None => Ok(from_num(dflt, v4)),
            Some(ip) if !s.contains(&ip) => {
                Err(Error::config(format!("{field}.{name}"), format!("{ip} is not in subnet {s}")))
            }
            Some(ip) => Ok(ip),
        }
    };
    let start = chk(r.range_start, "rangeStart", first)?;
    let end = chk(r.range_end, "rangeEnd", last)?;
    let gateway = chk(r.gateway, "gateway", first)?;
    if num(start) > num(end) {
        return Err(Error::config(format!("{field}.rangeStart"), format!("{start} is after rangeEnd {end}")));
    }
    Ok(Range { subnet: s, start, end, gateway })
}

fn overlaps(a: &Range, b: &Range) -> bool {
    same_family(a.start, b.start) && num(a.start) <= num(b.end) && num(b.start) <= num(a.end)
}

impl IpamConf {
    /// Validates the config; `name` is the network name (the store directory).
    pub fn validate(&self, name: &str) -> Result<Ipam> {
        let mut raw = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            raw.insert(
                0,
                vec![RangeConf {
                    subnet,
                    range_start: self.range_start,
                    range_end: self.range_end,
                    gateway: self.gateway,
                }],
            );
        }
        if raw.is_empty() {
            return Err(Error::config("ipam.ranges", "no IP ranges specified"));
        }
        let mut sets: Vec<RangeSet> = Vec::new();
        for (i, set) in raw.iter().enumerate() {
            if set.is_empty() {
                return Err(Error::config(format!("ipam.ranges[{i}]"), "empty range set"));
            }
            let mut rs = Vec::new();
            for (j, r) in set.iter().enumerate() {
                let field = format!("ipam.ranges[{i}][{j}]");
                let r = canon(r, &field)?;
                if let Some(first) = rs.first() {
                    let first: &Range = first;
                    if !same_family(first.start, r.start) {
                        return Err(Error::config(field, "mixes IPv4 and IPv6 in one range set"));
                    }
                }
                for (k, o) in rs.iter().enumerate() {
                    if overlaps(o, &r) {
                        return Err(Error::config(field, format!("overlaps with ipam.ranges[{i}][{k}]")));
                    }
                }
                rs.push(r);
            }
            for (k, other) in sets.iter().enumerate() {
                if other.iter().any(|a| rs.iter().any(|b| overlaps(a, b))) {
                    return Err(Error::config(format!("ipam.ranges[{i}]"), format!("overlaps with range set {k}")));
                }
            }
            sets.push(rs);
        }
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::config("name", format!("{name:?} is not usable as a directory name")));
        }
        let dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)).join(name);
        Ok(Ipam { sets, routes: self.routes.clone(), dir })
    }
}

fn render_set(set: &RangeSet) -> String {
    let v: Vec<String> = set.iter().map(|r| format!("{}-{}", r.start, r.end)).collect();
    v.join(",")
}

/// The allocation order for a range set, as host-local: start right after `last` (if it lies in
/// the set) and walk round-robin through all ranges, never yielding a range's gateway.
pub fn candidates(set: &RangeSet, last: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
    let total: u128 = set.iter().fold(0u128, |a, r| a.saturating_add(r.size()));
    let mut start_pos = 0u128;
    if let Some(last) = last {
        let mut off = 0u128;
        for r in set {
            if r.contains(last) {
                start_pos = (off + (num(last) - num(r.start)) + 1) % total.max(1);
                break;
            }
            off += r.size();
        }
    }
    (0..total).filter_map(move |k| {
        let mut pos = (start_pos + k) % total;
        for r in set {
            if pos < r.size() {
                let ip = from_num(num(r.start) + pos, r.start.is_ipv4());
                return if ip == r.gateway { None } else { Some(ip) };
            }
            pos -= r.size();
        }
        None
    })
}

/// Pure core of one allocation: the first candidate that `reserved` does not hold.
pub fn pick(set: &RangeSet, last: Option<IpAddr>, reserved: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    candidates(set, last).find(|ip| !reserved(*ip))
}

/// Reservation storage. Implementations must be exclusively locked for their whole lifetime.
pub trait Store {
    /// Reserves `ip` for (id, ifname); false if it is already taken. Records it as last reserved.
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, set_index: usize) -> Result<bool>;
    /// Whether `ip` is reserved.
    fn is_reserved(&self, ip: IpAddr) -> bool;
    /// The last reserved IP of a range set.
    fn last_reserved(&self, set_index: usize) -> Option<IpAddr>;
    /// All reservations: (ip, container id, ifname).
    fn all(&self) -> Result<Vec<(IpAddr, String, String)>>;
    /// Removes the reservation of `ip`.
    fn release(&mut self, ip: IpAddr) -> Result<()>;
}

fn owner_matches(content: &str, id: &str, ifname: &str) -> bool {
    let mut it = content.trim().split("\r\n");
    let cid = it.next().unwrap_or("").trim();
    match it.next() {
        Some(i) => cid == id && i.trim() == ifname,
        None => cid == id, // legacy files hold only the container ID
    }
}

/// The host-local file store, locked with flock on `<dir>/lock` while it lives.
pub struct FileStore {
    dir: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl FileStore {
    /// Creates the directory if needed and takes the exclusive lock (blocking).
    pub fn open(dir: &Path) -> Result<Self> {
        let serr = |op, source| Error::Store { path: dir.to_path_buf(), op, source };
        fs::create_dir_all(dir).map_err(|e| serr("create directory", e))?;
        let lp = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(|e| Error::Store { path: lp.clone(), op: "open lock", source: e })?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Store { path: lp, op: "flock", source: e.into() })?;
        Ok(FileStore { dir: dir.to_path_buf(), _lock: lock })
    }

    fn entries(&self) -> Result<Vec<(IpAddr, PathBuf)>> {
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| Error::Store { path: self.dir.clone(), op: "read directory", source: e })?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name();
            if let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) {
                out.push((ip, ent.path()));
            }
        }
        Ok(out)
    }
}

impl Store for FileStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, set_index: usize) -> Result<bool> {
        let p = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::Store { path: p, op: "create reservation", source: e }),
        };
        if let Err(e) = f.write_all(format!("{id}\r\n{ifname}").as_bytes()) {
            let _ = fs::remove_file(&p);
            return Err(Error::Store { path: p, op: "write reservation", source: e });
        }
        let lp = self.dir.join(format!("last_reserved_ip.{set_index}"));
        fs::write(&lp, ip.to_string()).map_err(|e| Error::Store { path: lp, op: "write", source: e })?;
        Ok(true)
    }

    fn is_reserved(&self, ip: IpAddr) -> bool {
        self.dir.join(ip.to_string()).exists()
    }

    fn last_reserved(&self, set_index: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("last_reserved_ip.{set_index}"))).ok()?.trim().parse().ok()
    }

    fn all(&self) -> Result<Vec<(IpAddr, String, String)>> {
        let mut out = Vec::new();
        for (ip, p) in self.entries()? {
            let Ok(c) = fs::read_to_string(&p) else { continue };
            let mut it = c.trim().split("\r\n");
            let id = it.next().unwrap_or("").trim().to_string();
            let ifname = it.next().unwrap_or("").trim().to_string();
            out.push((ip, id, ifname));
        }
        Ok(out)
    }

    fn release(&mut self, ip: IpAddr) -> Result<()> {
        let p = self.dir.join(ip.to_string());
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Store { path: p, op: "remove reservation", source: e }),
        }
    }
}

/// In-memory store for tests and dry runs.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    /// ip -> (id, ifname).
    pub map: std::collections::BTreeMap<IpAddr, (String, String)>,
    /// last reserved per set.
    pub last: std::collections::BTreeMap<usize, IpAddr>,
}

impl Store for MemStore {
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, set_index: usize) -> Result<bool> {
        if self.map.contains_key(&ip) {
            return Ok(false);
        }
        self.map.insert(ip, (id.into(), ifname.into()));
        self.last.insert(set_index, ip);
        Ok(true)
    }
    fn is_reserved(&self, ip: IpAddr) -> bool {
        self.map.contains_key(&ip)
    }
    fn last_reserved(&self, set_index: usize) -> Option<IpAddr> {
        self.last.get(&set_index).copied()
    }
    fn all(&self) -> Result<Vec<(IpAddr, String, String)>> {
        Ok(self.map.iter().map(|(ip, (a, b))| (*ip, a.clone(), b.clone())).collect())
    }
    fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.map.remove(&ip);
        Ok(())
    }
}

/// Allocates one address per range set for (id, ifname). On failure nothing stays reserved.
pub fn allocate(ipam: &Ipam, store: &mut dyn Store, id: &str, ifname: &str) -> Result<CniResult> {
    let existing = store.all()?;
    let mut got: Vec<IpAddr> = Vec::new();
    let mut res = CniResult { routes: ipam.routes.clone(), dns: Dns::default(), ..Default::default() };
    let outcome = (|| -> Result<()> {
        for (i, set) in ipam.sets.iter().enumerate() {
            for (ip, cid, ifn) in &existing {
                if owner_matches(&format!("{cid}\r\n{ifn}"), id, ifname) && set.iter().any(|r| r.contains(*ip)) {
                    return Err(Error::Duplicate { ip: *ip, container_id: id.to_string() });
                }
            }
            let last = store.last_reserved(i);
            let mut chosen = None;
            for ip in candidates(set, last) {
                if store.is_reserved(ip) {
                    continue;
                }
                if store.reserve(id, ifname, ip, i)? {
                    chosen = Some(ip);
                    break;
                }
            }
            let ip = chosen.ok_or_else(|| Error::Exhausted { ranges: render_set(set) })?;
            got.push(ip);
            let r = set.iter().find(|r| r.contains(ip)).ok_or_else(|| Error::State {
                what: format!("allocated {ip} outside its range set"),
            })?;
            let address = IpNet::new(ip, r.subnet.prefix_len()).map_err(|e| Error::State { what: e.to_string() })?;
            res.ips.push(IpConfig { address, gateway: Some(r.gateway), interface: None });
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        for ip in got {
            let _ = store.release(ip);
        }
        return Err(e);
    }
    Ok(res)
}

/// Releases every reservation of (id, ifname). Idempotent.
pub fn release(store: &mut dyn Store, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for (ip, cid, ifn) in store.all()? {
        if owner_matches(&format!("{cid}\r\n{ifn}"), id, ifname) {
            store.release(ip)?;
            out.push(ip);
        }
    }
    Ok(out)
}

/// The reservations held by (id, ifname).
pub fn held(store: &dyn Store, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    Ok(store
        .all()?
        .into_iter()
        .filter(|(_, cid, ifn)| owner_matches(&format!("{cid}\r\n{ifn}"), id, ifname))
        .map(|(ip, _, _)| ip)
        .collect())
}

/// Releases every reservation not owned by one of `valid` (GC).
pub fn gc(store: &mut dyn Store, valid: &[Attachment]) -> Result<Vec<IpAddr>> {
    let keep: HashSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let mut out = Vec::new();
    for (ip, cid, ifn) in store.all()? {
        if !keep.contains(&(cid.as_str(), ifn.as_str())) {
            store.release(ip)?;
            out.push(ip);
        }
    }
    Ok(out)
}
