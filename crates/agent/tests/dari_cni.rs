//! The agent's conflist with dari-cni (dari-bridge, dari-host-local, dari-portmap) under a real
//! containerd: a sandbox gets an address from the podCIDR on cni0 with lo up, and teardown
//! leaves no veth and no reservation. Needs the dari-cni binary: `cargo build -p dari-cni`
//! (or DARI_CNI_BIN=/path/to/dari-cni), root, and the apt packages of the runtime test.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use dari_agent::cni::{render_conflist, Flavor, CONFLIST_FILE};
use dari_agent::containerd::{Containerd, ContainerdConfig};
use dari_agent::cri::{v1, Cri, RemoteCri};
use dari_agent::image;

fn dari_cni_bin() -> PathBuf {
    let p = std::env::var_os("DARI_CNI_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/dari-cni"));
    assert!(p.exists(), "{} missing: run `cargo build -p dari-cni` first (or set DARI_CNI_BIN)", p.display());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_network_with_dari_cni() -> anyhow::Result<()> {
    common::require_tools();
    let bin = dari_cni_bin();
    let dir = tempfile::Builder::new().prefix("dari-agent-cni").tempdir_in("/var/tmp")?;
    let netns = common::NetNs::new("dcni");
    let _cg = common::CgroupGuard(format!("/dari/dcni-{}", std::process::id()));
    let bin_dir = dir.path().join("cni/bin");
    std::fs::create_dir_all(&bin_dir)?;
    for name in ["dari-bridge", "dari-host-local", "dari-portmap"] {
        std::os::unix::fs::symlink(std::fs::canonicalize(&bin)?, bin_dir.join(name))?;
    }
    // containerd's CRI always runs a `loopback` plugin for the pod's lo (go-cni WithLoNetwork):
    // the bin dir needs one next to dari-cni's.
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", bin_dir.join("loopback"))?;
    assert_eq!(Flavor::detect(&bin_dir), Flavor::Dari);
    let conf_dir = dir.path().join("cni/net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let ipam = dir.path().join("cni/networks");
    let cidr: ipnet::IpNet = "10.250.9.0/24".parse()?;
    std::fs::write(conf_dir.join(CONFLIST_FILE), render_conflist(Flavor::Dari, cidr, 1450, &ipam))?;
    let cfg = ContainerdConfig::under(dir.path(), &bin_dir, &conf_dir, image::PAUSE_IMAGE, Some(netns.path.clone()));
    let c = Containerd::start(cfg, Duration::from_secs(30)).await?;
    image::ensure_builtin_images(&c.config.socket, &dir.path().join("images")).await?;
    let cri = RemoteCri::connect(&c.config.socket).await?;
    let sandbox = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata { name: "net".into(), uid: "uid-dcni".into(), namespace: "default".into(), attempt: 0 }),
        hostname: "net".into(),
        log_directory: dir.path().join("logs/net").to_string_lossy().into_owned(),
        linux: Some(v1::LinuxPodSandboxConfig { cgroup_parent: format!("/dari/dcni-{}/poduid-dcni", std::process::id()), ..Default::default() }),
        ..Default::default()
    };
    let sid = cri.run_pod_sandbox(sandbox.clone()).await?;
    let ip: std::net::IpAddr = cri.pod_sandbox_status(&sid).await?.network.map(|n| n.ip).unwrap_or_default().parse()?;
    assert!(cidr.contains(&ip), "{ip} not in {cidr}");
    let cfg = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: "sh".into(), attempt: 0 }),
        image: Some(v1::ImageSpec { image: image::BUSYBOX_IMAGE.into(), ..Default::default() }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "sh/0.log".into(),
        ..Default::default()
    };
    let cid = cri.create_container(&sid, cfg, sandbox).await?;
    cri.start_container(&cid).await?;
    let (code, out, _) = cri.exec_sync(&cid, vec!["sh".into(), "-c".into(), "ip -o addr show; ip route".into()], 10).await?;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0);
    assert!(out.contains(&format!("inet {ip}/24")), "{out}");
    assert!(out.contains("lo    inet 127.0.0.1") || out.contains("lo inet 127.0.0.1"), "lo not up: {out}");
    assert!(out.contains("default via 10.250.9.1"), "{out}");
    let links = netns.run(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert!(links.contains("veth"), "{links}");
    cri.stop_pod_sandbox(&sid).await?;
    cri.remove_pod_sandbox(&sid).await?;
    let links = netns.run(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert!(!links.contains("veth"), "veth left: {links}");
    assert!(!ipam.join("dari").join(ip.to_string()).exists(), "{ip} still reserved");
    c.stop().await;
    Ok(())
}
