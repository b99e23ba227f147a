//! Config and environment parsing: errors carry the right CNI code and name the field.

use dari_cni::error::code;
use dari_cni::plugin::{BridgeConf, CniEnv};

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, serde_json::Value) {
    let mut out = Vec::new();
    let mut log = Vec::new();
    let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let rc = dari_cni::plugin::run(
        "/usr/lib/cni/dari-cni",
        |k| env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone()),
        &mut stdin.as_bytes(),
        &mut out,
        &mut log,
    );
    let v = if out.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&out).expect("stdout is JSON") };
    (rc, v)
}

const ENV: &[(&str, &str)] = &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/nonexistent/ns")];

#[test]
fn bad_configs_give_spec_codes_naming_the_field() {
    let cases: &[(&str, u32, &str)] = &[
        ("{not json", code::DECODE, "decoding"),
        (r#"{"cniVersion":"0.1.0","name":"n","type":"dari-bridge"}"#, code::INCOMPATIBLE_VERSION, "0.1.0"),
        (r#"{"name":"n","type":"dari-bridge"}"#, code::INVALID_CONFIG, "cniVersion"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"dari-bridge","mtu":"x"}"#, code::INVALID_CONFIG, "`mtu`"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"dari-bridge","mtu":20}"#, code::INVALID_CONFIG, "`mtu`"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"dari-bridge","isGateway":"yes"}"#, code::INVALID_CONFIG, "isGateway"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"dari-bridge","bridge":"a-very-long-bridge-name"}"#, code::INVALID_CONFIG, "`bridge`"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"dari-bridge","ipam":{}}"#, code::INVALID_CONFIG, "ipam.type"),
        (r#"{"cniVersion":"1.0.0","name":"n","type":"nope"}"#, code::INVALID_CONFIG, "`type`"),
    ];
    for (json, want, needle) in cases {
        let (rc, v) = run(ENV, json);
        assert_eq!(rc, 1, "{json}");
        assert_eq!(v["code"], *want, "{json} -> {v}");
        assert!(v["msg"].as_str().unwrap_or("").contains(needle), "{json}: msg {v} lacks {needle}");
    }
}

fn ipam_err(ipam: &str) -> serde_json::Value {
    let d = tempfile::tempdir().expect("tmp");
    let ipam = ipam.replace("DATADIR", &d.path().display().to_string());
    // a real netns is not needed: IPAM config is validated before anything touches the kernel
    let conf = BridgeConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"dari-bridge","ipam":{ipam}}}"#).as_bytes()).expect("bridge conf");
    let c: dari_cni::ipam::IpamConf = match serde_json::from_value(conf.ipam.clone().expect("ipam")) {
        Ok(c) => c,
        Err(e) => return serde_json::json!({"code": code::INVALID_CONFIG, "msg": e.to_string()}),
    };
    match c.validate("n") {
        Ok(_) => serde_json::Value::Null,
        Err(e) => e.to_json("1.0.0"),
    }
}

#[test]
fn ipam_semantic_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.0/16"}],[{"subnet":"10.0.3.0/24"}]]}"#, "ipam.ranges[1]"),
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}]]}"#, "ipam.ranges[0][1]"),
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.5/24"}]]}"#, "ipam.ranges[0][0].subnet"),
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.0/31"}]]}"#, "too small"),
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}"#, "rangeStart"),
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.3"}]]}"#, "rangeStart"),
        (r#"{"type":"dari-host-local","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}"#, "mixes"),
        (r#"{"type":"dari-host-local"}"#, "ipam.ranges"),
    ];
    for (ipam, needle) in cases {
        let v = ipam_err(ipam);
        assert_eq!(v["code"], code::INVALID_CONFIG, "{ipam} -> {v}");
        assert!(v["msg"].as_str().unwrap_or("").contains(needle), "{ipam}: {v} lacks {needle}");
    }
}

#[test]
fn environment_errors_are_code_4() {
    let (rc, v) = run(&[("CNI_COMMAND", "ADD")], "{}");
    assert_eq!((rc, v["code"].as_u64()), (1, Some(4)));
    assert!(v["msg"].as_str().unwrap_or("").contains("CNI_CONTAINERID"));
    let (_, v) = run(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "a/b"), ("CNI_NETNS", "/x")], "{}");
    assert!(v["msg"].as_str().unwrap_or("").contains("CNI_IFNAME"), "{v}");
    let (_, v) = run(&[("CNI_COMMAND", "FROB")], "{}");
    assert_eq!(v["code"], 4);
    assert!(CniEnv::from_fn(|k| (k == "CNI_COMMAND").then(|| "DEL".to_string())).is_err());
}

#[test]
fn version_needs_no_config() {
    let (rc, v) = run(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(rc, 0);
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["supportedVersions"].as_array().expect("arr").iter().any(|x| x == "0.4.0"));
}
