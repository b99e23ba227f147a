//! Root-only: `up` with the real `dari server` (from target/debug/dari, or $DARI_BIN) in a
//! two-node lab, the forwarder on a free loopback port, status/exec, then `down` twice,
//! checking the host is left as it was. The agent is a stand-in process (`sleep`) until
//! `dari agent` lands, so this proves process management, not pods.
//!
//! `cargo build -p dari && cargo test -p dari-lab --test lab_up`

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use dari_lab::lab::{self, LabDirArgs, LabExecArgs, LabUpArgs};
use dari_lab::net;

fn dari_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DARI_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("dari");
    assert!(p.is_file(), "{} missing: build it first (cargo build -p dari) or set DARI_BIN", p.display());
    p
}

#[test]
fn up_status_exec_down() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let tmp = tempfile::tempdir().unwrap();
    // The binary the nodes run: the real server, this crate's dari-lab for `lab forward`,
    // and a placeholder agent.
    let wrapper = tmp.path().join("dari");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  server) exec {dari} \"$@\";;\n  lab) shift; exec {lab} \"$@\";;\n  agent) exec sleep 3600;;\nesac\nexit 64\n",
            dari = dari_bin().display(),
            lab = env!("CARGO_BIN_EXE_dari-lab"),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tmp.path().join("lab");
    let prefix = format!("u{}", std::process::id() % 100000);
    let links_before = Command::new("ip").args(["-o", "link"]).output().unwrap().stdout.len();
    let args = LabUpArgs {
        nodes: vec!["cp".into(), "w1".into()],
        dir: dir.clone(),
        prefix: prefix.clone(),
        api_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        dari: Some(wrapper),
        no_images: true,
        no_wait: true,
        timeout: 60,
        ..LabUpArgs::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let info = rt.block_on(lab::up(args));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let info = info.as_ref().unwrap_or_else(|e| panic!("lab up: {e:?}"));
        let kc = info.kubeconfig.clone().unwrap();
        let text = std::fs::read_to_string(&kc).unwrap();
        assert!(text.contains(&format!("server: https://127.0.0.1:{port}")), "{text}");
        // The API answers on 127.0.0.1 through the forwarder, TLS valid for 127.0.0.1.
        let o = Command::new("kubectl").arg("--kubeconfig").arg(&kc).args(["get", "namespaces", "-o", "name"]).output().expect("kubectl is needed (apt-get install kubectl)");
        let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && out.contains("namespace/default"), "kubectl through the forwarder: {out}");
        let s = rt.block_on(lab::status(LabDirArgs { dir: dir.clone() })).unwrap();
        assert!(s.contains("cp") && s.contains("w1") && !s.contains("not running"), "{s}");
        let code = rt.block_on(lab::exec(LabExecArgs { dir: dir.clone(), node: "w1".into(), cmd: vec!["ping".into(), "-c1".into(), "-W2".into(), "172.31.0.10".into()] })).unwrap();
        assert_eq!(code, 0, "w1 pings the control plane");
        // The in-lab resolver answers node names and nothing else.
        let dig = |name: &str| {
            let o = Command::new("nsenter").arg(format!("--net=/run/netns/{prefix}-w1")).args(["--", "dig", "+short", "+time=2", "+tries=1", "@172.31.0.1", name]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        assert_eq!(dig("cp"), "172.31.0.10");
        assert_eq!(dig("w1.lab"), "172.31.0.11");
        assert_eq!(dig("example.com"), "", "no upstream: nothing resolves outside the lab");
        // The "outside" whoami on the hub sees the node's address.
        let o = Command::new("nsenter").arg(format!("--net=/run/netns/{prefix}-w1")).args(["--", "curl", "-s", "--max-time", "5", "http://172.31.0.1/"]).output().unwrap();
        let body = String::from_utf8_lossy(&o.stdout);
        assert!(body.contains("RemoteAddr: 172.31.0.11:"), "{body}");
        // A pod namespace like containerd's, with its veth peer in node w1: down must remove it.
        let mut n = dari_lab::net::RealNet::new().unwrap();
        use dari_lab::net::LabNet;
        n.create_netns(&format!("cni-{prefix}-pod")).unwrap();
        n.add_veth(&format!("{prefix}-w1"), "vethpod", &format!("cni-{prefix}-pod"), "eth0", 1350).unwrap();
    }));
    let r1 = rt.block_on(lab::down(LabDirArgs { dir: dir.clone() })).unwrap();
    let r2 = rt.block_on(lab::down(LabDirArgs { dir: dir.clone() })).unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(r1.processes.len() >= 6, "server, forwarder, 2 agents, dns, outside whoami: {r1:?}");
    for p in &r1.processes {
        assert!(!dari_lab::procs::alive(*p), "pid {p} survived down");
    }
    assert_eq!(r1.netns.len(), 3, "{r1:?}");
    assert_eq!(r1.pod_netns, vec![format!("cni-{prefix}-pod")], "{r1:?}");
    assert_eq!(r2, dari_lab::lab::DownReport::default(), "second down is a no-op");
    assert!(net::list_netns().iter().all(|n| !n.starts_with(&format!("{prefix}-"))));
    assert!(dari_lab::procs::mounts_under(&dir).is_empty());
    assert_eq!(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout.len(), links_before, "root links changed");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "forwarder still listening");
}
