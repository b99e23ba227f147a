//! Root integration tests: each test makes its own "node" and pod network namespaces (unique
//! names, deleted on drop) and drives the built binary with the CNI env vars, and through libcni
//! (`cnitool`, built by ../shared/tools/cnitool/build.sh into target/cnitool).
//! Needs root and: iproute2, util-linux (nsenter), iputils-ping, nftables,
//! containernetworking-plugins (/usr/lib/cni), golang-go + golang-github-appc-cni-dev (cnitool).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::Value;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require_root_and_tools() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (CI runs them as root)");
    for t in ["ip", "nsenter", "unshare", "ping", "nft"] {
        let ok = Command::new("sh").arg("-c").arg(format!("command -v {t}")).stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "`{t}` missing: apt-get install iproute2 util-linux iputils-ping nftables");
    }
}

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let n = format!("dcni{}-{}-{tag}", std::process::id() % 100000, SEQ.fetch_add(1, Ordering::SeqCst));
        let st = Command::new("ip").args(["netns", "add", &n]).status().expect("ip netns add");
        assert!(st.success(), "ip netns add {n}");
        let lo = Command::new("ip").args(["-n", &n, "link", "set", "lo", "up"]).status().expect("lo up");
        assert!(lo.success());
        Netns(n)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    fn sh(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter").arg(format!("--net={}", self.path())).args(args).output().expect("nsenter")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A CNI_PATH dir with the multicall binary under its plugin names.
fn plugin_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    for n in ["dari-bridge", "dari-host-local", "dari-portmap"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dari-cni"), d.path().join(n)).expect("symlink");
    }
    d
}

struct Call<'a> {
    node: &'a Netns,
    plugin: PathBuf,
    cni_path: String,
}

impl Call<'_> {
    fn run(&self, cmd: &str, cid: &str, netns: &str, conf: &str) -> (i32, String, String) {
        let mut c = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path()))
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        c.stdin.take().expect("stdin").write_all(conf.as_bytes()).expect("write");
        let o = c.wait_with_output().expect("wait");
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
    }
    fn ok(&self, cmd: &str, cid: &str, netns: &str, conf: &str) -> Value {
        let (rc, out, err) = self.run(cmd, cid, netns, conf);
        assert_eq!(rc, 0, "{cmd} {cid} failed: stdout {out} stderr {err}");
        if out.trim().is_empty() { Value::Null } else { serde_json::from_str(&out).expect("stdout JSON") }
    }
}

fn bridge_conf(name: &str, data: &Path, ipam_type: &str, subnet: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","type":"dari-bridge","bridge":"dbr0","isGateway":true,"isDefaultGateway":true,
        "ipMasq":true,"hairpinMode":true,"mtu":1400{extra},
        "ipam":{{"type":"{ipam_type}","dataDir":"{}","ranges":[[{{"subnet":"{subnet}"}}]]}}}}"#,
        data.display()
    )
}

fn pod_ip(res: &Value) -> String {
    res["ips"][0]["address"].as_str().expect("address").split('/').next().expect("ip").to_string()
}

fn ping(from: &Netns, to: &str) -> bool {
    from.sh(&["ping", "-c", "1", "-W", "2", to]).status.success()
}

fn reservations(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.parse::<std::net::IpAddr>().is_ok()).collect())
        .unwrap_or_default()
}

fn nft_rules(node: &Netns) -> usize {
    let o = node.sh(&["nft", "-j", "list", "table", "inet", "dari-cni"]);
    if !o.status.success() {
        return 0;
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["nftables"].as_array().map(|a| a.iter().filter(|i| i.get("rule").is_some()).count()).unwrap_or(0)
}

fn veths(node: &Netns) -> usize {
    String::from_utf8_lossy(&node.sh(&["ip", "-o", "link", "show", "type", "veth"]).stdout).lines().count()
}

#[test]
fn two_pods_ping_check_del_twice() {
    require_root_and_tools();
    let node = Netns::new("node");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: bins.path().display().to_string() };
    let conf = bridge_conf("t1", data.path(), "dari-host-local", "10.91.0.0/24", "");
    let ra = call.ok("ADD", "pod-a", &a.path(), &conf);
    let rb = call.ok("ADD", "pod-b", &b.path(), &conf);
    let (ipa, ipb) = (pod_ip(&ra), pod_ip(&rb));
    assert_ne!(ipa, ipb);
    assert!(ping(&a, &ipb), "pod a cannot ping pod b {ipb}");
    assert!(ping(&b, &ipa), "pod b cannot ping pod a {ipa}");
    assert!(ping(&node, &ipa), "node cannot ping pod a");
    assert!(ping(&a, "10.91.0.1"), "pod cannot reach the node (gateway)");
    assert!(ping(&a, "127.0.0.1"), "pod lo is not up");
    let mtu = String::from_utf8_lossy(&a.sh(&["ip", "-o", "link", "show", "eth0"]).stdout).to_string();
    assert!(mtu.contains("mtu 1400"), "{mtu}");
    assert_eq!(nft_rules(&node), 2, "one ipMasq rule per pod");

    // CHECK with prevResult
    let mut v: Value = serde_json::from_str(&conf).expect("json");
    v["prevResult"] = ra.clone();
    call.ok("CHECK", "pod-a", &a.path(), &v.to_string());
    // CHECK notices a removed address
    a.sh(&["ip", "addr", "del", &format!("{ipa}/24"), "dev", "eth0"]);
    let (rc, out, _) = call.run("CHECK", "pod-a", &a.path(), &v.to_string());
    assert_eq!(rc, 1, "CHECK must fail: {out}");
    assert!(out.contains("eth0"), "{out}");

    // ADD again on an existing interface is an error
    let (rc, out, _) = call.run("ADD", "pod-a", &a.path(), &conf);
    assert_eq!(rc, 1);
    assert!(out.contains("already exists"), "{out}");

    let dir = data.path().join("t1");
    assert_eq!(reservations(&dir).len(), 2);
    call.ok("DEL", "pod-a", &a.path(), &conf);
    call.ok("DEL", "pod-a", &a.path(), &conf);
    assert_eq!(reservations(&dir), vec![ipb.clone()]);
    assert_eq!(veths(&node), 1);
    assert_eq!(nft_rules(&node), 1);
    // DEL when the netns is already gone
    drop(b);
    call.ok("DEL", "pod-b", "/var/run/netns/definitely-gone", &conf);
    call.ok("DEL", "pod-b", "", &conf);
    assert!(reservations(&dir).is_empty());
    assert_eq!(veths(&node), 0);
    assert_eq!(nft_rules(&node), 0);
}

#[test]
fn reference_host_local_as_delegate() {
    require_root_and_tools();
    assert!(Path::new("/usr/lib/cni/host-local").exists(), "apt-get install containernetworking-plugins");
    let node = Netns::new("node");
    let p = Netns::new("p");
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: format!("{}:/usr/lib/cni", bins.path().display()) };
    let conf = bridge_conf("t2", data.path(), "host-local", "10.92.0.0/24", "");
    let r = call.ok("ADD", "pod-r", &p.path(), &conf);
    assert_eq!(pod_ip(&r), "10.92.0.2");
    let f = data.path().join("t2/10.92.0.2");
    assert_eq!(std::fs::read_to_string(&f).expect("host-local wrote its file"), "pod-r\r\neth0");
    assert!(ping(&node, "10.92.0.2"));
    let mut v: Value = serde_json::from_str(&conf).expect("json");
    v["prevResult"] = r;
    call.ok("CHECK", "pod-r", &p.path(), &v.to_string());
    call.ok("DEL", "pod-r", &p.path(), &conf);
    call.ok("DEL", "pod-r", &p.path(), &conf);
    assert!(!f.exists());
}

fn cnitool() -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/cnitool");
    if !out.exists() {
        let st = Command::new("bash").arg({
            let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/cnitool/build.sh");
            if local.exists() { local } else { Path::new("/work/shared/tools/cnitool/build.sh").to_path_buf() }
        }).arg(&out).status().expect("build cnitool");
        assert!(st.success(), "cnitool build failed (needs apt golang-go golang-github-appc-cni-dev)");
    }
    out
}

/// Runs cnitool in the node netns. libcni caches results under /var/lib/cni: the run gets a
/// private mount namespace where `cache` is bind-mounted over /var/lib, so nothing is written
/// to the host's /var/lib/cni, whether the test passes or not (`cache` is a TempDir).
fn cnitool_run(node: &Netns, cache: &Path, confdir: &Path, cni_path: &str, op: &str, net: &str, pod: &Netns) -> Result<String> {
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", r#"mount --bind "$0" /var/lib && exec nsenter --net="$1" "$2" "$3" "$4" "$5""#])
        .arg(cache)
        .arg(node.path())
        .arg(cnitool())
        .args([op, net, &pod.path()])
        // cnitool's default ID is a 40-char prefix of the hex netns path: the same for all our pods
        .env("CNI_CONTAINERID", format!("ct-{}", pod.0))
        .env("NETCONFPATH", confdir)
        .env("CNI_PATH", cni_path)
        .output()
        .context("spawn cnitool")?;
    if !o.status.success() {
        bail!("cnitool {op} {net}: {} {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into())
}

#[test]
fn libcni_cnitool_conflists() -> Result<()> {
    require_root_and_tools();
    let node = Netns::new("node");
    let (p1, p2, p3) = (Netns::new("p1"), Netns::new("p2"), Netns::new("p3"));
    let data = tempfile::tempdir()?;
    let confdir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let bins = plugin_dir();
    let cni_path = format!("{}:/usr/lib/cni", bins.path().display());
    let ours = format!(
        r#"{{"cniVersion":"1.0.0","name":"ours","plugins":[
          {{"type":"dari-bridge","bridge":"dbr1","isDefaultGateway":true,"ipMasq":true,
            "ipam":{{"type":"dari-host-local","dataDir":"{d}","ranges":[[{{"subnet":"10.93.0.0/24"}}]]}}}},
          {{"type":"dari-portmap","capabilities":{{"portMappings":true}}}}]}}"#,
        d = data.path().display()
    );
    let mixed = format!(
        r#"{{"cniVersion":"1.0.0","name":"mixed","plugins":[
          {{"type":"dari-bridge","bridge":"dbr1","isDefaultGateway":true,
            "ipam":{{"type":"host-local","dataDir":"{d}","ranges":[[{{"subnet":"10.93.0.0/24","rangeStart":"10.93.0.100"}}]]}}}},
          {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
        d = data.path().display()
    );
    std::fs::write(confdir.path().join("10-ours.conflist"), ours)?;
    std::fs::write(confdir.path().join("20-mixed.conflist"), mixed)?;
    let r1: Value = serde_json::from_str(&cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "add", "ours", &p1)?)?;
    let r2: Value = serde_json::from_str(&cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "add", "ours", &p2)?)?;
    let r3: Value = serde_json::from_str(&cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "add", "mixed", &p3)?)?;
    let (i1, i2, i3) = (pod_ip(&r1), pod_ip(&r2), pod_ip(&r3));
    assert_eq!(i3, "10.93.0.100");
    assert!(ping(&p1, &i2) && ping(&p2, &i1) && ping(&p1, &i3), "pods on dbr1 cannot ping each other");
    cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "check", "ours", &p1)?;
    cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "check", "mixed", &p3)?;
    for (net, p) in [("ours", &p1), ("ours", &p2), ("mixed", &p3)] {
        cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "del", net, p)?;
        cnitool_run(&node, cache.path(), confdir.path(), &cni_path, "del", net, p)?;
    }
    assert!(reservations(&data.path().join("ours")).is_empty());
    assert!(reservations(&data.path().join("mixed")).is_empty());
    assert_eq!(veths(&node), 0);
    assert_eq!(nft_rules(&node), 0);
    let cached: Vec<_> = std::fs::read_dir(cache.path().join("cni/results"))?.flatten().map(|e| e.file_name()).collect();
    assert!(cached.is_empty(), "libcni cache not emptied by DEL: {cached:?}");
    Ok(())
}

/// Binds in `ns` on a dedicated thread and serves one connection with "hello".
fn serve_once(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let f = std::fs::File::open(ns.path()).expect("open netns");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"hello").expect("write");
    });
    rx.recv().expect("listener ready");
    h
}

fn connect_from(ns: &Netns, addr: &str) -> std::io::Result<String> {
    let f = std::fs::File::open(ns.path())?;
    let addr = addr.to_string();
    std::thread::spawn(move || -> std::io::Result<String> {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(3))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .map_err(|_| std::io::Error::other("panicked"))?
}

#[test]
fn portmap_host_port_reaches_pod_from_another_netns() {
    require_root_and_tools();
    let node = Netns::new("node");
    let client = Netns::new("cl");
    let pod = Netns::new("pm");
    // node <-> client link, made by the test
    let veth = format!("dcl{}", SEQ.fetch_add(1, Ordering::SeqCst));
    assert!(Command::new("ip").args(["-n", &node.0, "link", "add", &veth, "type", "veth", "peer", "name", "up0", "netns", &client.0]).status().expect("ip").success());
    node.sh(&["ip", "addr", "add", "192.168.77.1/24", "dev", &veth]);
    node.sh(&["ip", "link", "set", &veth, "up"]);
    client.sh(&["ip", "addr", "add", "192.168.77.2/24", "dev", "up0"]);
    client.sh(&["ip", "link", "set", "up0", "up"]);
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: bins.path().display().to_string() };
    let conf = bridge_conf("t4", data.path(), "dari-host-local", "10.94.0.0/24", "");
    let r = call.ok("ADD", "pod-pm", &pod.path(), &conf);
    let pm = Call { node: &node, plugin: bins.path().join("dari-portmap"), cni_path: call.cni_path.clone() };
    let pm_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "t4", "type": "dari-portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 9090, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": r,
    })
    .to_string();
    let out = pm.ok("ADD", "pod-pm", &pod.path(), &pm_conf);
    assert_eq!(out["ips"], r["ips"], "portmap passes prevResult on");
    pm.ok("CHECK", "pod-pm", &pod.path(), &pm_conf);
    let srv = serve_once(&pod, 8080);
    let got = connect_from(&client, "192.168.77.1:9090").expect("hostPort connect from client netns");
    assert_eq!(got, "hello");
    srv.join().expect("server");
    pm.ok("DEL", "pod-pm", &pod.path(), &pm_conf);
    pm.ok("DEL", "pod-pm", &pod.path(), &pm_conf);
    call.ok("DEL", "pod-pm", &pod.path(), &conf);
    assert_eq!(nft_rules(&node), 0);
    assert!(connect_from(&client, "192.168.77.1:9090").is_err(), "hostPort still open after DEL");
}

#[test]
fn fifty_parallel_adds_then_dels_leave_nothing() {
    require_root_and_tools();
    let node = Netns::new("node");
    let pods: Vec<Netns> = (0..50).map(|i| Netns::new(&format!("x{i}"))).collect();
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: bins.path().display().to_string() };
    let conf = bridge_conf("t5", data.path(), "dari-host-local", "10.95.0.0/24", "");
    let ips: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = pods.iter().enumerate().map(|(i, p)| {
            let (call, conf) = (&call, &conf);
            s.spawn(move || pod_ip(&call.ok("ADD", &format!("par-{i}"), &p.path(), conf)))
        }).collect();
        hs.into_iter().map(|h| h.join().expect("join")).collect()
    });
    let uniq: std::collections::HashSet<_> = ips.iter().collect();
    assert_eq!(uniq.len(), 50, "an IP was handed out twice: {ips:?}");
    assert_eq!(veths(&node), 50);
    assert_eq!(nft_rules(&node), 50);
    assert!(ping(&pods[0], &ips[49]));
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (call, conf) = (&call, &conf);
            s.spawn(move || call.ok("DEL", &format!("par-{i}"), &p.path(), conf));
        }
    });
    assert_eq!(veths(&node), 0, "veth left behind");
    assert!(reservations(&data.path().join("t5")).is_empty(), "reservation left behind");
    assert_eq!(nft_rules(&node), 0, "nft rule left behind");
}

#[test]
fn gc_releases_everything_not_valid() {
    require_root_and_tools();
    let node = Netns::new("node");
    let (a, b) = (Netns::new("ga"), Netns::new("gb"));
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: bins.path().display().to_string() };
    let conf = bridge_conf("t6", data.path(), "dari-host-local", "10.96.10.0/24", "");
    call.ok("ADD", "gc-a", &a.path(), &conf);
    let rb = call.ok("ADD", "gc-b", &b.path(), &conf);
    let mut v: Value = serde_json::from_str(&conf).expect("json");
    v["cniVersion"] = "1.1.0".into();
    v["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "gc-b", "ifname": "eth0"}]);
    let (rc, out, err) = call.run("GC", "", "", &v.to_string());
    assert_eq!(rc, 0, "{out} {err}");
    assert_eq!(reservations(&data.path().join("t6")), vec![pod_ip(&rb)]);
    assert_eq!(nft_rules(&node), 1);
    let (rc, out, _) = call.run("STATUS", "", "", &v.to_string());
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn results_in_each_cni_version_and_check_needs_0_4_0() {
    require_root_and_tools();
    let node = Netns::new("node");
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: bins.path().display().to_string() };
    let base: Value = serde_json::from_str(&bridge_conf("t7", data.path(), "dari-host-local", "10.97.0.0/24", "")).expect("json");
    for (i, ver) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new(&format!("v{i}"));
        let mut conf = base.clone();
        conf["cniVersion"] = ver.into();
        let conf = conf.to_string();
        let cid = format!("ver-{i}");
        let r = call.ok("ADD", &cid, &pod.path(), &conf);
        assert_eq!(r["cniVersion"], ver, "{r}");
        assert_eq!(r["interfaces"][2]["name"], "eth0", "{r}");
        assert_eq!(r["interfaces"][2]["sandbox"], pod.path(), "{r}");
        assert_eq!(r["ips"][0]["interface"], 2, "{r}");
        assert_eq!(r["ips"][0]["gateway"], "10.97.0.1", "{r}");
        assert_eq!(r["ips"][0].get("version").is_some(), ver == "0.4.0", "ips[].version only before 1.0.0: {r}");
        assert_eq!(r["interfaces"][2].get("mtu").and_then(Value::as_u64), (ver == "1.1.0").then_some(1400), "interfaces[].mtu only from 1.1.0: {r}");
        assert!(r["routes"].as_array().expect("routes").iter().any(|x| x["dst"] == "0.0.0.0/0"), "{r}");
        let mut chk: Value = serde_json::from_str(&conf).expect("json");
        chk["prevResult"] = r;
        call.ok("CHECK", &cid, &pod.path(), &chk.to_string());
        call.ok("DEL", &cid, &pod.path(), &conf);
    }
    // CHECK does not exist before 0.4.0: incompatible version (code 1)
    let pod = Netns::new("v3");
    let mut old = base.clone();
    old["cniVersion"] = "0.3.1".into();
    let r = call.ok("ADD", "ver-old", &pod.path(), &old.to_string());
    assert_eq!(r["cniVersion"], "0.3.1");
    old["prevResult"] = r;
    let (rc, out, _) = call.run("CHECK", "ver-old", &pod.path(), &old.to_string());
    assert_eq!(rc, 1);
    let e: Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(e["code"], 1, "{e}");
    call.ok("DEL", "ver-old", &pod.path(), &base.to_string());
    assert!(reservations(&data.path().join("t7")).is_empty());
    assert_eq!(nft_rules(&node), 0);
}

#[test]
fn gc_of_one_network_spares_the_other_and_handles_reference_host_local() {
    require_root_and_tools();
    let node = Netns::new("node");
    let (a, b) = (Netns::new("na"), Netns::new("nb"));
    let data = tempfile::tempdir().expect("tmp");
    let bins = plugin_dir();
    let call = Call { node: &node, plugin: bins.path().join("dari-bridge"), cni_path: format!("{}:/usr/lib/cni", bins.path().display()) };
    let n1 = bridge_conf("n1", data.path(), "dari-host-local", "10.97.10.0/24", "");
    let mut n2: Value = serde_json::from_str(&bridge_conf("n2", data.path(), "host-local", "10.97.20.0/24", "")).expect("json");
    n2["bridge"] = "dbr2".into();
    let n2 = n2.to_string();
    let ra = call.ok("ADD", "same-id", &a.path(), &n1);
    call.ok("ADD", "same-id", &b.path(), &n2);
    assert_eq!(nft_rules(&node), 2);
    let gc = |conf: &str, valid: Value, ver: &str| {
        let mut v: Value = serde_json::from_str(conf).expect("json");
        v["cniVersion"] = ver.into();
        v["cni.dev/valid-attachments"] = valid;
        call.run("GC", "", "", &v.to_string())
    };
    // GC and STATUS need cniVersion 1.1.0
    let (rc, out, _) = gc(&n2, serde_json::json!([]), "1.0.0");
    assert_eq!(rc, 1);
    assert!(out.contains("\"code\":1"), "{out}");
    // n2 has no valid attachment: its reservation (written by the reference host-local) and its
    // masquerade rule go; n1's rule for the same container ID and ifname stays
    let (rc, out, err) = gc(&n2, serde_json::json!([]), "1.1.0");
    assert_eq!(rc, 0, "{out} {err}");
    assert!(reservations(&data.path().join("n2")).is_empty(), "reference host-local reservation not collected");
    assert_eq!(reservations(&data.path().join("n1")), vec![pod_ip(&ra)]);
    assert_eq!(nft_rules(&node), 1, "GC of n2 must not touch n1's rules");
    let (rc, out, err) = gc(&n1, serde_json::json!([{"containerID": "same-id", "ifname": "eth0"}]), "1.1.0");
    assert_eq!(rc, 0, "{out} {err}");
    assert_eq!(reservations(&data.path().join("n1")), vec![pod_ip(&ra)]);
    assert_eq!(nft_rules(&node), 1);
    let mut st: Value = serde_json::from_str(&n2).expect("json");
    st["cniVersion"] = "1.1.0".into();
    let (rc, out, _) = call.run("STATUS", "", "", &st.to_string());
    assert_eq!(rc, 0, "{out}");
    call.ok("DEL", "same-id", &a.path(), &n1);
    call.ok("DEL", "same-id", &b.path(), &n2);
    assert_eq!(nft_rules(&node), 0);
    assert!(reservations(&data.path().join("n1")).is_empty());
}
