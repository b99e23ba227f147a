//! IPAM allocator: pure core (proptest) and the host-local compatible file store.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use dari_cni::ipam::{self, num, FileStore, Ipam, IpamConf, MemStore, Store};
use dari_cni::Error;
use proptest::prelude::*;

fn conf(json: &str) -> Ipam {
    let c: IpamConf = serde_json::from_str(json).expect("ipam json");
    c.validate("net1").expect("valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn defaults_match_host_local() {
    let i = conf(r#"{"type":"dari-host-local","subnet":"10.0.0.0/29"}"#);
    let r = &i.sets[0][0];
    assert_eq!((r.start, r.end, r.gateway), (ip("10.0.0.1"), ip("10.0.0.6"), ip("10.0.0.1")));
    let v6 = conf(r#"{"type":"x","ranges":[[{"subnet":"fd00::/126"}]]}"#);
    assert_eq!(v6.sets[0][0].end, ip("fd00::3"));
}

#[test]
fn round_robin_from_last_reserved() {
    let i = conf(r#"{"type":"x","ranges":[[{"subnet":"10.0.0.0/29"}]]}"#);
    let mut st = MemStore::default();
    let a = ipam::allocate(&i, &mut st, "a", "eth0").expect("a").ips[0].address.addr();
    let b = ipam::allocate(&i, &mut st, "b", "eth0").expect("b").ips[0].address.addr();
    assert_eq!((a, b), (ip("10.0.0.2"), ip("10.0.0.3")));
    ipam::release(&mut st, "a", "eth0").expect("release");
    let c = ipam::allocate(&i, &mut st, "c", "eth0").expect("c").ips[0].address.addr();
    assert_eq!(c, ip("10.0.0.4"), "must continue after last reserved, not reuse the released .2");
    // wraps around to the freed address once the end is reached
    for n in 0..2 {
        ipam::allocate(&i, &mut st, &format!("f{n}"), "eth0").expect("fill");
    }
    let w = ipam::allocate(&i, &mut st, "w", "eth0").expect("wrap").ips[0].address.addr();
    assert_eq!(w, ip("10.0.0.2"));
    let e = ipam::allocate(&i, &mut st, "x", "eth0").expect_err("full");
    assert!(matches!(e, Error::Exhausted { .. }), "{e}");
    assert_eq!(e.code(), dari_cni::error::code::EXHAUSTED);
}

#[test]
fn duplicate_allocation_for_same_container_is_refused() {
    let i = conf(r#"{"type":"x","ranges":[[{"subnet":"10.0.0.0/29"}]]}"#);
    let mut st = MemStore::default();
    ipam::allocate(&i, &mut st, "a", "eth0").expect("a");
    assert!(matches!(ipam::allocate(&i, &mut st, "a", "eth0"), Err(Error::Duplicate { .. })));
    ipam::allocate(&i, &mut st, "a", "eth1").expect("other ifname is fine");
}

#[test]
fn dual_stack_gets_one_address_per_range_set_and_rolls_back() {
    let i = conf(r#"{"type":"x","ranges":[[{"subnet":"10.0.0.0/30"}],[{"subnet":"fd00::/126","rangeStart":"fd00::2","rangeEnd":"fd00::2"}]]}"#);
    let mut st = MemStore::default();
    let r = ipam::allocate(&i, &mut st, "a", "eth0").expect("a");
    let got: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
    assert_eq!(got, ["10.0.0.2/30", "fd00::2/126"]);
    // v4 has no room left either, but make v4 succeed and v6 fail: free v4 first
    ipam::release(&mut st, "a", "eth0").expect("rel");
    st.reserve("other", "eth0", ip("fd00::2"), 1).expect("block v6");
    assert!(ipam::allocate(&i, &mut st, "b", "eth0").is_err());
    assert!(!st.is_reserved(ip("10.0.0.2")), "v4 reservation must be rolled back");
}

#[test]
fn file_store_uses_reference_format() {
    let d = tempfile::tempdir().expect("tmp");
    let i = conf(&format!(r#"{{"type":"x","dataDir":"{}","ranges":[[{{"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10"}}]]}}"#, d.path().display()));
    let mut st = FileStore::open(&i.dir).expect("open");
    ipam::allocate(&i, &mut st, "cid1", "eth0").expect("alloc");
    let dir = d.path().join("net1");
    assert_eq!(std::fs::read_to_string(dir.join("10.9.0.10")).expect("file"), "cid1\r\neth0");
    assert_eq!(std::fs::read_to_string(dir.join("last_reserved_ip.0")).expect("last"), "10.9.0.10");
    assert!(dir.join("lock").exists());
    ipam::release(&mut st, "cid1", "eth0").expect("rel");
    assert!(!dir.join("10.9.0.10").exists());
    // a legacy file holding only the container ID is released too
    std::fs::write(dir.join("10.9.0.77"), "old").expect("w");
    ipam::release(&mut st, "old", "eth0").expect("rel");
    assert!(!dir.join("10.9.0.77").exists());
}

#[test]
fn parallel_file_store_allocations_never_collide() {
    let d = tempfile::tempdir().expect("tmp");
    let json = format!(r#"{{"type":"x","dataDir":"{}","ranges":[[{{"subnet":"10.9.0.0/26"}}]]}}"#, d.path().display());
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let json = json.clone();
            std::thread::spawn(move || {
                let i = conf(&json);
                let mut out = Vec::new();
                for n in 0..7 {
                    let mut st = FileStore::open(&i.dir).expect("open");
                    out.push(ipam::allocate(&i, &mut st, &format!("c{t}-{n}"), "eth0").expect("alloc").ips[0].address.addr());
                }
                out
            })
        })
        .collect();
    let all: Vec<IpAddr> = hs.into_iter().flat_map(|h| h.join().expect("join")).collect();
    let uniq: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 56);
    assert_eq!(uniq.len(), 56, "duplicate address handed out");
}

#[test]
fn gc_keeps_only_valid_attachments() {
    let i = conf(r#"{"type":"x","ranges":[[{"subnet":"10.0.0.0/28"}]]}"#);
    let mut st = MemStore::default();
    for c in ["a", "b", "c"] {
        ipam::allocate(&i, &mut st, c, "eth0").expect("alloc");
    }
    let valid: Vec<dari_cni::types::Attachment> = serde_json::from_str(r#"[{"containerID":"b","ifname":"eth0"}]"#).expect("json");
    let gone = ipam::gc(&mut st, &valid).expect("gc");
    assert_eq!(gone.len(), 2);
    assert_eq!(ipam::held(&st, "b", "eth0").expect("held").len(), 1);
}

fn arb_ipam() -> impl Strategy<Value = (Ipam, u128)> {
    // one or two non-overlapping IPv4 ranges inside 10.0.0.0/24 (second inside 10.0.1.0/24)
    (0u8..20, 0u8..20, any::<bool>(), 0u8..10).prop_map(|(s, len, two, len2)| {
        let a = format!(r#"{{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.{}","rangeEnd":"10.0.0.{}"}}"#, 1 + s, 1 + s + len);
        let b = format!(r#",{{"subnet":"10.0.1.0/24","rangeStart":"10.0.1.5","rangeEnd":"10.0.1.{}"}}"#, 5 + len2);
        let json = format!(r#"{{"type":"x","ranges":[[{a}{}]]}}"#, if two { b.as_str() } else { "" });
        let i = conf(&json);
        let cap: u128 = i.sets[0].iter().map(|r| num(r.end) - num(r.start) + 1 - u128::from(r.contains(r.gateway))).sum();
        (i, cap)
    })
}

proptest! {
    #[test]
    fn allocator_never_duplicates_respects_ranges_and_exhausts((i, cap) in arb_ipam(), ops in prop::collection::vec((any::<bool>(), 0usize..40), 1..120)) {
        let mut st = MemStore::default();
        let mut live: BTreeMap<String, IpAddr> = BTreeMap::new();
        let mut n = 0;
        for (add, k) in ops {
            if add {
                n += 1;
                let id = format!("c{n}");
                let last = st.last_reserved(0);
                match ipam::allocate(&i, &mut st, &id, "eth0") {
                    Ok(r) => {
                        let a = r.ips[0].address.addr();
                        prop_assert!(!live.values().any(|x| *x == a), "duplicate {}", a);
                        prop_assert!(i.sets[0].iter().any(|r| r.contains(a) && r.gateway != a), "{} outside ranges or gateway", a);
                        // round-robin: the pick equals the pure core's first free candidate after last
                        let expect = ipam::pick(&i.sets[0], last, |x| live.values().any(|y| *y == x));
                        prop_assert_eq!(Some(a), expect);
                        live.insert(id, a);
                    }
                    Err(Error::Exhausted { .. }) => prop_assert_eq!(live.len() as u128, cap),
                    Err(e) => prop_assert!(false, "unexpected {}", e),
                }
            } else if let Some(id) = live.keys().nth(k % live.len().max(1)).cloned() {
                let released = ipam::release(&mut st, &id, "eth0").expect("release");
                prop_assert_eq!(released, vec![live[&id]]);
                live.remove(&id);
            }
            prop_assert!(live.len() as u128 <= cap);
        }
    }
}
