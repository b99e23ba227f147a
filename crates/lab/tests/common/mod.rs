//! What the lab end-to-end tests share: the dari binary, running commands, a lab that is torn
//! down on drop, kubectl against it, and finding a pod's network namespace.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// target/debug/dari, or $DARI_BIN.
pub fn dari() -> PathBuf {
    if let Ok(p) = std::env::var("DARI_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/dari");
    assert!(p.exists(), "{} missing: run `cargo build --workspace --bins` first (scripts/test.sh does)", p.display());
    p
}

/// Runs a command, panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A lab directory; `dari lab down` on drop.
pub struct Lab {
    /// The lab directory.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A new lab directory (nothing started yet).
    pub fn new(prefix: &str) -> Lab {
        Lab { dir: tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir") }
    }

    /// kubectl with this lab's kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args).env("KUBECONFIG", self.dir.path().join("kubeconfig"));
        c
    }

    /// `dari lab SUB --dir DIR ARGS...`.
    pub fn lab(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = Command::new(dari());
        c.args(["lab", sub, "--dir"]).arg(self.dir.path()).args(args);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(dari()).args(["lab", "down", "--dir"]).arg(self.dir.path()).output();
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The network namespace (under /run/netns) whose interfaces hold `ip`.
pub fn netns_of(ip: &str) -> String {
    for e in std::fs::read_dir("/run/netns").expect("/run/netns").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cni-") {
            continue;
        }
        let o = run(Command::new("ip").args(["netns", "exec", &name, "ip", "-4", "-o", "addr"]));
        if String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")) {
            return name;
        }
    }
    panic!("no pod network namespace holds {ip}")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
