//! Real containerd (as the agent's child, in a node netns) + the builtin busybox/pause images +
//! the reference CNI plugins: a sandbox gets an IP from the conflist's range, a busybox
//! container runs in it, and teardown leaves no veth and no IPAM reservation.
//! Needs root and apt packages containerd, runc, busybox-static, containernetworking-plugins.

mod common;

use std::collections::HashMap;

use dari_agent::cni::{render_conflist, Flavor, CONFLIST_FILE};
use dari_agent::cri::{v1, Cri, RemoteCri};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_and_busybox_container_lifecycle() -> anyhow::Result<()> {
    let node = common::Node::start("rt").await;
    let _cg = common::CgroupGuard(format!("/dari/test-{}", std::process::id()));
    let cidr: ipnet::IpNet = "10.250.7.0/24".parse()?;
    std::fs::write(node.cni_conf_dir.join(CONFLIST_FILE), render_conflist(Flavor::Reference, cidr, 1450, &node.ipam_dir()))?;
    let cri = RemoteCri::connect(&node.socket()).await?;
    let v = cri.version().await?;
    assert_eq!(v.runtime_name, "containerd");

    let sandbox = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata { name: "bb".into(), uid: "uid-rt-1".into(), namespace: "default".into(), attempt: 0 }),
        hostname: "bb".into(),
        log_directory: node.dir.path().join("logs/bb").to_string_lossy().into_owned(),
        dns_config: Some(v1::DnsConfig { servers: vec!["10.96.0.10".into()], searches: vec!["default.svc.cluster.local".into()], options: vec!["ndots:5".into()] }),
        linux: Some(v1::LinuxPodSandboxConfig { cgroup_parent: format!("/dari/test-{}/poduid-rt-1", std::process::id()), ..Default::default() }),
        ..Default::default()
    };
    let sid = cri.run_pod_sandbox(sandbox.clone()).await?;
    let st = cri.pod_sandbox_status(&sid).await?;
    let ip: std::net::IpAddr = st.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default().parse()?;
    assert!(cidr.contains(&ip), "sandbox IP {ip} not in {cidr}");
    assert!(node.ipam_dir().join("dari").join(ip.to_string()).exists(), "host-local reservation for {ip}");

    let cfg = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: "sh".into(), attempt: 0 }),
        image: Some(v1::ImageSpec { image: dari_agent::image::BUSYBOX_IMAGE.into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), "echo hello from $HOSTNAME; exec sleep 3600".into()],
        envs: vec![v1::KeyValue { key: "GREETING".into(), value: "hi".into() }],
        log_path: "sh/0.log".into(),
        labels: HashMap::from([("io.kubernetes.container.name".to_string(), "sh".to_string())]),
        ..Default::default()
    };
    let cid = cri.create_container(&sid, cfg, sandbox.clone()).await?;
    cri.start_container(&cid).await?;
    let cs = cri.container_status(&cid).await?;
    assert_eq!(cs.state, v1::ContainerState::ContainerRunning as i32);
    let (code, out, _) = cri.exec_sync(&cid, vec!["sh".into(), "-c".into(), "echo $GREETING; cat /etc/resolv.conf; ip -4 addr show eth0".into()], 10).await?;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("hi\n"), "{out}");
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(out.contains(&ip.to_string()), "eth0 has {ip}: {out}");
    let (code, _, _) = cri.exec_sync(&cid, vec!["sh".into(), "-c".into(), "exit 3".into()], 10).await?;
    assert_eq!(code, 3);

    // the log file the kubelet would read
    let log = std::fs::read_to_string(node.dir.path().join("logs/bb/sh/0.log"))?;
    assert!(log.contains("stdout F hello from bb"), "{log}");

    // the veth is on the node's bridge
    let links = node.netns.run(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert!(links.contains("veth"), "no veth on cni0: {links}");

    cri.stop_container(&cid, 1).await?;
    cri.remove_container(&cid).await?;
    cri.stop_pod_sandbox(&sid).await?;
    cri.remove_pod_sandbox(&sid).await?;
    assert!(cri.list_pod_sandboxes().await?.is_empty());
    let links = node.netns.run(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert!(!links.contains("veth"), "veth left behind: {links}");
    assert!(!node.ipam_dir().join("dari").join(ip.to_string()).exists(), "IP {ip} still reserved");
    node.stop().await;
    Ok(())
}
