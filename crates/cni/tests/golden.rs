//! Result rendering per cniVersion against tests/golden/*.json (UPDATE_GOLDEN=1 rewrites them).

use dari_cni::types::{CniResult, Dns, Interface, IpConfig, Route};

fn sample() -> CniResult {
    CniResult {
        interfaces: vec![
            Interface { name: "cni0".into(), mac: Some("0a:58:0a:16:00:01".into()), mtu: Some(1450), sandbox: None },
            Interface { name: "veth1234abcd".into(), mac: Some("1a:2b:3c:4d:5e:6f".into()), mtu: Some(1450), sandbox: None },
            Interface { name: "eth0".into(), mac: Some("0a:58:0a:16:00:05".into()), mtu: Some(1450), sandbox: Some("/var/run/netns/pod1".into()) },
        ],
        ips: vec![
            IpConfig { address: "10.22.0.5/24".parse().expect("net"), gateway: Some("10.22.0.1".parse().expect("ip")), interface: Some(2) },
            IpConfig { address: "fd00:22::5/64".parse().expect("net"), gateway: Some("fd00:22::1".parse().expect("ip")), interface: Some(2) },
        ],
        routes: vec![
            Route { dst: "0.0.0.0/0".parse().expect("net"), gw: Some("10.22.0.1".parse().expect("ip")) },
            Route { dst: "::/0".parse().expect("net"), gw: None },
        ],
        dns: Dns { nameservers: vec!["10.96.0.10".into()], domain: None, search: vec!["default.svc.cluster.local".into()], options: vec![] },
    }
}

#[test]
fn results_render_per_version() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let got = serde_json::to_string_pretty(&sample().render(v)).expect("json") + "\n";
        let p = dir.join(format!("result-{v}.json"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&p, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 once)", p.display()));
        assert_eq!(got, want, "cniVersion {v} differs from {}", p.display());
        // and parsing it back gives the same result (prevResult round trip)
        let back = CniResult::parse("prevResult", &serde_json::from_str(&want).expect("json")).expect("parse");
        let mut s = sample();
        if v != "1.1.0" {
            s.interfaces.iter_mut().for_each(|i| i.mtu = None);
        }
        assert_eq!(back, s, "round trip {v}");
    }
}
