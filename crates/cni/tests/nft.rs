//! nftables rendering for ipMasq / portmap (pure) against tests/golden/*.nft, rule ownership
//! parsing and the GC predicate. No root needed. UPDATE_GOLDEN=1 rewrites the golden files.

use dari_cni::nft::{self, FoundRule, Owner};
use dari_cni::types::{Attachment, PortMapping};

fn golden(name: &str, got: &str) {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, got).expect("write golden");
    }
    let want = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", p.display()));
    assert_eq!(got, want, "{} differs", p.display());
}

#[test]
fn masq_and_portmap_rules_match_golden() {
    let who = Owner::new("dari", "c0ffee", "eth0");
    let masq = nft::render_masq(&["10.22.0.5/24".parse().expect("net"), "fd00:22::5/64".parse().expect("net")], &who.tag());
    golden("masq.nft", &format!("{}{masq}", nft::render_base()));
    let maps = vec![
        PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: None },
        PortMapping { host_port: 5353, container_port: 53, protocol: "UDP".into(), host_ip: Some("192.168.77.1".into()) },
    ];
    let pm = nft::render_portmap(&maps, &["10.22.0.5".parse().expect("ip"), "fd00:22::5".parse().expect("ip")], &who.tag()).expect("render");
    golden("portmap.nft", &pm);
}

#[test]
fn bad_port_mappings_name_the_field() {
    let bad = |m: PortMapping| nft::render_portmap(&[m], &["10.0.0.2".parse().expect("ip")], "t").expect_err("bad").to_string();
    let e = bad(PortMapping { host_port: 1, container_port: 1, protocol: "icmp".into(), host_ip: None });
    assert!(e.contains("portMappings[0].protocol"), "{e}");
    let e = bad(PortMapping { host_port: 0, container_port: 1, protocol: "tcp".into(), host_ip: None });
    assert!(e.contains("portMappings[0]"), "{e}");
    let e = bad(PortMapping { host_port: 1, container_port: 1, protocol: "tcp".into(), host_ip: Some("nope".into()) });
    assert!(e.contains("hostIP"), "{e}");
}

#[test]
fn owners_round_trip_and_gc_is_scoped_to_its_network() {
    let o = Owner::new("net-1", "abc.def_1", "eth0");
    assert_eq!(Owner::parse(&o.tag()), Some(o.clone()));
    assert_eq!(Owner::parse("kube-proxy rule"), None);
    let listing = r#"{"nftables":[{"metainfo":{}},
      {"rule":{"family":"inet","table":"dari-cni","chain":"masq","handle":4,"comment":"dari:n1:a:eth0"}},
      {"rule":{"family":"inet","table":"dari-cni","chain":"masq","handle":5,"comment":"dari:n2:a:eth0"}},
      {"rule":{"family":"inet","table":"dari-cni","chain":"hostports-pre","handle":6,"comment":"dari:n1:b:eth0"}},
      {"rule":{"family":"inet","table":"dari-cni","chain":"masq","handle":7}}]}"#;
    let rules: Vec<FoundRule> = nft::parse_rules(listing);
    assert_eq!(rules.len(), 3, "untagged rules are not ours");
    let valid = vec![Attachment { container_id: "a".into(), ifname: "eth0".into() }];
    let s = nft::render_delete(&rules, nft::gc_doomed("n1", &valid));
    assert_eq!(s, "delete rule inet dari-cni hostports-pre handle 6\n");
    let s = nft::render_delete(&rules, nft::gc_doomed("n2", &[]));
    assert_eq!(s, "delete rule inet dari-cni masq handle 5\n");
}
