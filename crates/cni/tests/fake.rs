//! Bridge ADD/DEL/CHECK logic against the recording netlink fake (no root needed).

use std::cell::RefCell;
use std::rc::Rc;

use dari_cni::netlink::{FakeNet, FakeWorld, Netlink};
use dari_cni::plugin::{bridge_add, bridge_check, bridge_del, BridgeConf, CniEnv, Ctx};

fn env(cmd: &str) -> CniEnv {
    CniEnv::from_fn(|k| {
        Some(match k {
            "CNI_COMMAND" => cmd.to_string(),
            "CNI_CONTAINERID" => "ctr1".into(),
            "CNI_IFNAME" => "eth0".into(),
            "CNI_NETNS" => "pod".into(),
            _ => return None,
        })
    })
    .expect("env")
}

fn conf(dir: &std::path::Path, extra: &str) -> (BridgeConf, Vec<u8>) {
    let s = format!(
        r#"{{"cniVersion":"1.1.0","name":"fk","type":"dari-bridge","bridge":"br9","mtu":1450,"hairpinMode":true{extra},
        "ipam":{{"type":"dari-host-local","dataDir":"{}","ranges":[[{{"subnet":"10.5.0.0/24"}}]],"routes":[{{"dst":"10.96.0.0/12"}}]}}}}"#,
        dir.display()
    );
    (BridgeConf::parse(s.as_bytes()).expect("conf"), s.into_bytes())
}

#[test]
fn add_check_del_through_the_fake() {
    let d = tempfile::tempdir().expect("tmp");
    let (c, raw) = conf(d.path(), r#","isDefaultGateway":true"#);
    let world = Rc::new(RefCell::new(FakeWorld::default()));
    let mut host = FakeNet::new(&world, "host");
    let mut pod = FakeNet::new(&world, "pod");
    let devnull = std::fs::File::open("/dev/null").expect("devnull");
    let mut sysctls = Vec::new();
    let mut sc = |k: &str, v: &str| {
        sysctls.push(format!("{k}={v}"));
        Ok(())
    };
    let res = bridge_add(&env("ADD"), &c, &raw, Ctx { host: &mut host, pod: Some(&mut pod), pod_file: Some(&devnull), sysctl: &mut sc })
        .expect("add");
    assert_eq!(sysctls, ["net/ipv4/ip_forward=1"]);
    let out = res.render("1.1.0");
    assert_eq!(out["ips"][0]["address"], "10.5.0.2/24");
    assert_eq!(out["ips"][0]["interface"], 2);
    assert_eq!(out["interfaces"][2]["sandbox"], "pod");
    assert_eq!(out["routes"][0]["dst"], "10.96.0.0/12");
    assert_eq!(out["routes"][0]["gw"], "10.5.0.1");
    assert_eq!(out["routes"][1]["dst"], "0.0.0.0/0");
    let log = world.borrow().log.join("\n");
    for want in ["host: add bridge br9 mtu Some(1450)", "peer eth0@pod mtu Some(1450)", "set hairpin", "host: add addr 10.5.0.1/24", "pod: add addr 10.5.0.2/24", "pod: add route 0.0.0.0/0 via Some(10.5.0.1)"] {
        assert!(log.contains(want), "missing `{want}` in\n{log}");
    }
    assert!(pod.link("lo").expect("lo").expect("lo exists").up, "pod lo must be up");

    // a second ADD for the same ifname fails: the interface exists
    let mut sc2 = |_: &str, _: &str| Ok(());
    let e = bridge_add(&env("ADD"), &c, &raw, Ctx { host: &mut host, pod: Some(&mut pod), pod_file: Some(&devnull), sysctl: &mut sc2 })
        .expect_err("exists");
    assert!(e.to_string().contains("eth0 already exists"), "{e}");

    // CHECK with prevResult
    let mut v: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    v["prevResult"] = out.clone();
    let raw_check = serde_json::to_vec(&v).expect("json");
    let c_check = BridgeConf::parse(&raw_check).expect("conf");
    bridge_check(&env("CHECK"), &c_check, &raw_check, &mut host, &mut pod).expect("check passes");
    // tamper: remove the address, CHECK must fail naming the interface
    let idx = pod.link("eth0").expect("l").expect("eth0").index;
    pod.del_addr(idx, "10.5.0.2/24".parse().expect("net")).expect("del");
    let e = bridge_check(&env("CHECK"), &c_check, &raw_check, &mut host, &mut pod).expect_err("tampered");
    assert!(e.to_string().contains("eth0 lacks address 10.5.0.2/24"), "{e}");

    // DEL twice, then with the netns gone
    bridge_del(&env("DEL"), &c, &raw, Some(&mut pod)).expect("del");
    assert!(pod.link("eth0").expect("l").is_none());
    bridge_del(&env("DEL"), &c, &raw, Some(&mut pod)).expect("del again");
    bridge_del(&env("DEL"), &c, &raw, None).expect("del without netns");
    let left: Vec<_> = std::fs::read_dir(d.path().join("fk")).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with("10.")), "reservation left: {left:?}");
}

#[test]
fn different_address_on_bridge_needs_force_address() {
    let d = tempfile::tempdir().expect("tmp");
    let world = Rc::new(RefCell::new(FakeWorld::default()));
    let mut host = FakeNet::new(&world, "host");
    let mut pod = FakeNet::new(&world, "pod");
    host.add_bridge("br9", None).expect("br");
    let bi = host.link("br9").expect("l").expect("br").index;
    host.add_addr(bi, "10.5.0.254/24".parse().expect("net")).expect("addr");
    let devnull = std::fs::File::open("/dev/null").expect("devnull");
    let (c, raw) = conf(d.path(), r#","isGateway":true"#);
    let mut sc = |_: &str, _: &str| Ok(());
    let e = bridge_add(&env("ADD"), &c, &raw, Ctx { host: &mut host, pod: Some(&mut pod), pod_file: Some(&devnull), sysctl: &mut sc })
        .expect_err("conflict");
    assert!(e.to_string().contains("forceAddress"), "{e}");
    assert!(pod.link("eth0").expect("l").is_none(), "failed ADD must remove the veth");
    assert_eq!(std::fs::read_dir(d.path().join("fk")).expect("dir").flatten().filter(|e| e.file_name().to_string_lossy().starts_with("10.")).count(), 0, "failed ADD must release its IP");
    let (c, raw) = conf(d.path(), r#","isGateway":true,"forceAddress":true"#);
    bridge_add(&env("ADD"), &c, &raw, Ctx { host: &mut host, pod: Some(&mut pod), pod_file: Some(&devnull), sysctl: &mut sc }).expect("forced");
    assert_eq!(host.addrs(bi).expect("a"), vec!["10.5.0.1/24".parse::<ipnet::IpNet>().expect("net")]);
}
