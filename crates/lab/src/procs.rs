//! Lab processes: start a program inside a node namespace with logs and a pid file, and find
//! and stop everything the lab started, including what those processes started (containerd
//! shims, containers), even after a crash of `dari lab up`.
//!
//! Processes enter a namespace through `nsenter --net=/var/run/netns/NAME -- PROGRAM ...`
//! (a stopgap: the documented way on this machine. **Not** `ip netns exec`, which remounts
//! /sys and breaks runc's cgroup detection). A process belongs to the lab when its network
//! namespace is one of the lab's, or it descends from such a process, or a lab pid file names
//! it and its command line still matches.

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{LabError, Result};

/// One long-running lab process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSpec {
    /// Short name: log file `logs/NAME.log`, pid file `pids/NAME.pid`.
    pub name: String,
    /// Namespace file to run in (`None`: the root namespace).
    pub netns: Option<PathBuf>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// The full command line (pure): `nsenter --net=PATH -- ARGV...` or `ARGV...`.
pub fn command_line(spec: &ProcSpec) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(ns) = &spec.netns {
        v.push("nsenter".to_string());
        v.push(format!("--net={}", ns.display()));
        v.push("--".to_string());
    }
    v.extend(spec.argv.iter().cloned());
    v
}

/// Starts `spec` detached (own process group, stdin from /dev/null, stdout+stderr appended to
/// `dir/logs/NAME.log`), writes `dir/pids/NAME.pid` ("PID\nSTARTTIME\nPROGRAM\n") and returns the pid.
pub fn spawn(spec: &ProcSpec, dir: &Path) -> Result<u32> {
    let logs = dir.join("logs");
    let pids = dir.join("pids");
    for d in [&logs, &pids] {
        std::fs::create_dir_all(d).map_err(|e| LabError::io("create", d, e))?;
    }
    let log_path = logs.join(format!("{}.log", spec.name));
    let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| LabError::io("open log", &log_path, e))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("dup log", &log_path, e))?;
    let argv = command_line(spec);
    let (prog, args) = argv.split_first().ok_or_else(|| LabError::Process {
        what: spec.name.clone(),
        detail: "empty command line".into(),
        source: None,
    })?;
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| LabError::Process {
        what: spec.name.clone(),
        detail: format!("start {}", argv.join(" ")),
        source: Some(e),
    })?;
    let pid = child.id();
    let pid_path = pids.join(format!("{}.pid", spec.name));
    let program = spec.argv.first().cloned().unwrap_or_default();
    let st = start_time(pid as i32).unwrap_or(0);
    std::fs::write(&pid_path, format!("{pid}\n{st}\n{program}\n")).map_err(|e| LabError::io("write", &pid_path, e))?;
    tracing::info!(name = %spec.name, pid, cmd = %argv.join(" "), log = %log_path.display(), "started");
    Ok(pid)
}

/// The nsfs inode of a namespace file (`/run/netns/X` or `/proc/PID/ns/net`).
pub fn netns_inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn proc_ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` runs (exists and is not a zombie; reaps it first if it is our child).
pub fn alive(pid: i32) -> bool {
    reap(pid);
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(true)
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect())
        .unwrap_or_default()
}

/// The start time of a process (clock ticks since boot, field 22 of /proc/PID/stat): with the
/// pid it identifies a process across pid reuse, and it survives exec.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    // After the comm: state(3) ppid(4) ... starttime(22) is the 20th field here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Pids from `dir/pids/*.pid` ("PID\nSTARTTIME\nPROGRAM") whose process still runs (same pid
/// and start time, so a reused pid is never taken for a lab process).
pub fn pidfile_pids(dir: &Path) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir.join("pids")) else { return out };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().trim_end_matches(".pid").to_string();
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let mut lines = text.lines();
        let Some(pid) = lines.next().and_then(|l| l.trim().parse::<i32>().ok()) else { continue };
        let Some(st) = lines.next().and_then(|l| l.trim().parse::<u64>().ok()) else { continue };
        if start_time(pid) == Some(st) && !is_zombie(pid) {
            out.push((name, pid));
        }
    }
    out.sort();
    out
}

/// Every process of the lab: inside one of `netns` (namespace files), named by a pid file in
/// `dir`, and all their descendants. Never includes the calling process.
pub fn lab_processes(netns: &[PathBuf], dir: &Path) -> Vec<i32> {
    let inodes: BTreeSet<u64> = netns.iter().filter_map(|p| netns_inode(p)).collect();
    let me = std::process::id() as i32;
    let pids = all_pids();
    let mut parent: HashMap<i32, i32> = HashMap::new();
    let mut set: BTreeSet<i32> = BTreeSet::new();
    for &p in &pids {
        if let Some(pp) = proc_ppid(p) {
            parent.insert(p, pp);
        }
        if p != me && netns_inode(Path::new(&format!("/proc/{p}/ns/net"))).is_some_and(|i| inodes.contains(&i)) {
            set.insert(p);
        }
    }
    for (_, p) in pidfile_pids(dir) {
        if p != me {
            set.insert(p);
        }
    }
    // Descendants (containers run in their own pod namespaces under a shim in the node's).
    loop {
        let before = set.len();
        for (&p, pp) in &parent {
            if p != me && set.contains(pp) {
                set.insert(p);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.into_iter().filter(|p| !is_zombie(*p)).collect()
}

/// Every descendant of `pid` (children, their children, ...).
pub fn descendants(pid: i32) -> Vec<i32> {
    let parent: HashMap<i32, i32> = all_pids().into_iter().filter_map(|p| proc_ppid(p).map(|pp| (p, pp))).collect();
    let mut set: BTreeSet<i32> = BTreeSet::new();
    set.insert(pid);
    loop {
        let before = set.len();
        for (&p, pp) in &parent {
            if set.contains(pp) {
                set.insert(p);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.remove(&pid);
    set.into_iter().collect()
}

/// A process's command name (`/proc/PID/comm`).
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

fn reap(pid: i32) {
    // Our own children (tests run up and down in one process) would stay zombies otherwise.
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// SIGTERM to `pids`, then SIGKILL to whatever is left after `grace`. Returns the pids that
/// needed SIGKILL.
pub fn stop(pids: &[i32], grace: Duration) -> Vec<i32> {
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    for &p in pids {
        if alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            killed.push(p);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && killed.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy().trim_end_matches('/').to_string();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|m| *m == d || m.starts_with(&format!("{d}/")))
        .map(PathBuf::from)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Lazily unmounts every mount under `dir` (containerd's overlay and shm mounts). Returns them.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let ms = mounts_under(dir);
    for m in &ms {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    ms
}

/// Removes the cgroup directories `dari/<node>` (and below) in every hierarchy, deepest first,
/// then `dari` itself if it became empty. Returns the directories removed.
pub fn remove_cgroups(nodes: &[String]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else { return removed };
    let roots: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    for root in roots {
        for n in nodes {
            let top = root.join("dari").join(n);
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for d in dirs {
                if std::fs::remove_dir(&d).is_ok() {
                    removed.push(d);
                }
            }
        }
        let parent = root.join("dari");
        if parent.is_dir() && std::fs::remove_dir(&parent).is_ok() {
            removed.push(parent);
        }
    }
    removed
}

fn collect_dirs(p: &Path, out: &mut Vec<PathBuf>) {
    if !p.is_dir() {
        return;
    }
    out.push(p.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Waits until `cond` holds, checking every 50 ms, or fails with [`LabError::Timeout`].
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout { what: what.into(), secs: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nsenter_line() {
        let s = ProcSpec {
            name: "agent-w1".into(),
            netns: Some("/var/run/netns/dari-w1".into()),
            argv: vec!["/usr/bin/dari".into(), "agent".into()],
            env: vec![],
        };
        assert_eq!(command_line(&s), vec!["nsenter", "--net=/var/run/netns/dari-w1", "--", "/usr/bin/dari", "agent"]);
    }

    #[test]
    fn spawn_pidfile_stop() {
        let d = tempfile::tempdir().unwrap();
        let s = ProcSpec { name: "sleeper".into(), netns: None, argv: vec!["sleep".into(), "300".into()], env: vec![] };
        let pid = spawn(&s, d.path()).unwrap() as i32;
        assert_eq!(pidfile_pids(d.path()), vec![("sleeper".to_string(), pid)]);
        let found = lab_processes(&[], d.path());
        assert_eq!(found, vec![pid]);
        assert!(stop(&found, Duration::from_secs(5)).is_empty(), "sleep dies on SIGTERM");
        assert!(pidfile_pids(d.path()).is_empty());
    }
}
