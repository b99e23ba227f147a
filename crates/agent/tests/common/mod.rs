//! Shared harness: a node network namespace, a real containerd in it, the builtin images.
#![allow(dead_code)]

pub mod ha;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dari_agent::containerd::{Containerd, ContainerdConfig};
use dari_agent::image;

pub fn require_tools() {
    for (bin, pkg) in [("/usr/bin/containerd", "containerd"), ("/usr/sbin/runc", "runc"), ("/usr/bin/ctr", "containerd"), ("/bin/busybox", "busybox-static"), ("/usr/lib/cni/bridge", "containernetworking-plugins"), ("/usr/bin/nsenter", "util-linux")] {
        assert!(Path::new(bin).exists(), "{bin} missing: apt-get install {pkg} (needed by the agent's integration tests)");
    }
    assert!(nix::unistd::geteuid().is_root(), "the agent's integration tests run containers and must run as root");
}

/// A network namespace deleted on drop.
pub struct NetNs {
    pub name: String,
    pub path: PathBuf,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("dari-agt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let st = Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]).status().expect("lo up");
        assert!(st.success());
        NetNs { path: PathBuf::from(format!("/var/run/netns/{name}")), name }
    }

    /// Runs a command in the namespace (nsenter --net) and returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let o = Command::new("nsenter").arg(format!("--net={}", self.path.display())).args(args).output().expect("nsenter");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Removes a test node's cgroup tree (`/dari/<name>`) when dropped.
pub struct CgroupGuard(pub String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        dari_agent::cgroups::remove(Path::new(dari_agent::cgroups::ROOT), &self.0);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// containerd running in a node netns, with the reference CNI plugins and the builtin images.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub netns: NetNs,
    pub containerd: Option<Containerd>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
}

impl Node {
    pub async fn start(tag: &str) -> Node {
        require_tools();
        let mut dir = tempfile::Builder::new().prefix("dari-agent-test").tempdir_in("/var/tmp").expect("tempdir");
        // DARI_AGENT_TEST_KEEP=1 keeps the node directory (containerd.log) for debugging
        dir.disable_cleanup(std::env::var_os("DARI_AGENT_TEST_KEEP").is_some());
        let netns = NetNs::new(tag);
        let cni_conf_dir = dir.path().join("cni/net.d");
        let cni_bin_dir = PathBuf::from("/usr/lib/cni");
        std::fs::create_dir_all(&cni_conf_dir).expect("cni conf dir");
        let cfg = ContainerdConfig::under(dir.path(), &cni_bin_dir, &cni_conf_dir, image::PAUSE_IMAGE, Some(netns.path.clone()));
        let mut cfg = cfg;
        cfg.runc_binary = std::env::var_os("DARI_AGENT_TEST_RUNC").map(PathBuf::from);
        let c = Containerd::start(cfg, Duration::from_secs(30)).await.expect("containerd starts");
        image::ensure_builtin_images(&c.config.socket, &dir.path().join("images")).await.expect("images import");
        Node { dir, netns, containerd: Some(c), cni_conf_dir, cni_bin_dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.containerd.as_ref().map(|c| c.config.socket.clone()).expect("containerd")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("cni/networks")
    }

    pub async fn stop(mut self) {
        if let Some(c) = self.containerd.take() {
            c.stop().await;
        }
        // leftover shims of this containerd (if a test failed midway) would keep the netns busy
    }
}
