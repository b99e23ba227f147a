//! The allocation-free fast path for the queries a cluster sends most: A and AAAA for
//! `<svc>.<ns>.svc.<zone>` and `<endpoint>.<svc>.<ns>.svc.<zone>`.
//!
//! [`try_answer`] reads the header and question straight from the packet (no [`hickory_proto`] message, no
//! heap allocation), looks the name up in the [`ClusterIndex`] with borrowed, lower-cased labels, and writes
//! the response into a caller-owned buffer. It answers only when the result is a plain positive answer it
//! can write byte for byte as the general path ([`crate::wire::handle_packet`]) would; everything else
//! (NXDOMAIN, NODATA, SRV, PTR, CNAME, odd headers or EDNS, answers over the size limit) returns `false`
//! and goes the general way. The tests in this module check both paths give identical bytes.

use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::rr::{DNSClass, RecordType};

use crate::cache::{Cache, CacheKey};
use crate::config::AnswerConfig;
use crate::index::{ClusterIndex, ServiceKind};
use crate::wire::{Transport, CLASSIC_UDP, HEADER_LEN, MAX_MESSAGE};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Labels the fast path looks at (`<ep>.<svc>.<ns>.svc` plus a zone of up to 4 labels).
const MAX_LABELS: usize = 8;

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// The lower-cased labels of the question name, kept on the stack.
struct Labels {
    text: [u8; 255],
    /// (start, len) in `text`, left to right.
    spans: [(u8, u8); MAX_LABELS],
    count: usize,
}

impl Labels {
    fn get(&self, i: usize) -> Option<&[u8]> {
        let (s, l) = *self.spans[..self.count].get(i)?;
        self.text.get(usize::from(s)..usize::from(s) + usize::from(l))
    }
}

/// What the fast path needs from a query: where the question ends, its type, and the EDNS payload size.
struct Parsed {
    labels: Labels,
    question_end: usize,
    qtype: u16,
    edns_payload: Option<u16>,
    /// The EDNS DO bit.
    dnssec_ok: bool,
}

fn parse(buf: &[u8]) -> Option<Parsed> {
    if buf.len() < HEADER_LEN || buf.len() > MAX_MESSAGE {
        return None;
    }
    // QR=0, opcode QUERY; exactly one question, nothing else but at most one (OPT) additional
    if buf[2] & 0xf8 != 0 {
        return None;
    }
    if u16_at(buf, 4)? != 1 || u16_at(buf, 6)? != 0 || u16_at(buf, 8)? != 0 || u16_at(buf, 10)? > 1 {
        return None;
    }
    let mut labels = Labels {
        text: [0; 255],
        spans: [(0, 0); MAX_LABELS],
        count: 0,
    };
    let mut at = HEADER_LEN;
    let mut text_len = 0usize;
    loop {
        let len = usize::from(*buf.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // no compression pointers or extended label types in a question we answer fast
        if len > 63 || labels.count == MAX_LABELS || text_len + len > 250 {
            return None;
        }
        let label = buf.get(at..at + len)?;
        let start = text_len;
        for (dst, src) in labels.text[start..start + len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        labels.spans[labels.count] = (u8::try_from(start).ok()?, u8::try_from(len).ok()?);
        labels.count += 1;
        text_len += len;
        at += len;
    }
    let qtype = u16_at(buf, at)?;
    if u16_at(buf, at + 2)? != CLASS_IN {
        return None;
    }
    let question_end = at + 4;
    let mut dnssec_ok = false;
    let edns_payload = if u16_at(buf, 10)? == 1 {
        // OPT: root name, type 41, class = payload, TTL = ext-rcode, version, flags; options must be sane
        let opt = buf.get(question_end..)?;
        // (extended rcode at 5 and version at 6 must be 0)
        if opt.len() < 11 || opt[0] != 0 || u16_at(opt, 1)? != TYPE_OPT || opt[5] != 0 || opt[6] != 0 {
            return None;
        }
        let rdlen = usize::from(u16_at(opt, 9)?);
        if opt.len() != 11 + rdlen {
            return None;
        }
        let mut o = 11;
        while o < opt.len() {
            let olen = usize::from(u16_at(opt, o + 2)?);
            o += 4 + olen;
        }
        if o != opt.len() {
            return None;
        }
        dnssec_ok = opt[7] & 0x80 != 0;
        Some(u16_at(opt, 1 + 2)?)
    } else {
        if buf.len() != question_end {
            return None;
        }
        None
    };
    Some(Parsed {
        labels,
        question_end,
        qtype,
        edns_payload,
        dnssec_ok,
    })
}

fn udp_limit(transport: Transport, edns_payload: Option<u16>, cfg: &AnswerConfig) -> usize {
    match transport {
        Transport::Tcp => MAX_MESSAGE,
        Transport::Udp => match edns_payload {
            Some(size) => usize::from(size.min(cfg.edns_payload)).max(CLASSIC_UDP),
            None => CLASSIC_UDP,
        },
    }
}

fn push_opt(out: &mut Vec<u8>, cfg: &AnswerConfig) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&cfg.edns_payload.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// Answers a query for a name outside the cluster from the forwarding cache, on the wire: the cached
/// upstream answer with the client's id, flags and question spelling, TTLs aged, and OPT when asked
/// (what [`crate::forward::relay`] does, without parsing). `false`: not cached, not a plain query, a
/// name the index may answer (the zone, reverse names), or over the size limit.
pub fn try_cached(buf: &[u8], transport: Transport, cache: &Cache, cfg: &AnswerConfig, now: Instant, out: &mut Vec<u8>) -> bool {
    out.clear();
    let done = write_cached(buf, transport, cache, cfg, now, out).is_some();
    if !done {
        out.clear();
    }
    done
}

fn write_cached(buf: &[u8], transport: Transport, cache: &Cache, cfg: &AnswerConfig, now: Instant, out: &mut Vec<u8>) -> Option<()> {
    let p = parse(buf)?;
    let n = p.labels.count;
    if n == 0 || p.labels.get(n - 1)? == b"arpa" {
        return None;
    }
    let zone = &cfg.zone_labels;
    if n >= zone.len() && zone.iter().enumerate().all(|(i, z)| p.labels.get(n - zone.len() + i) == Some(z.as_bytes())) {
        return None;
    }
    // the key's text form, as `Name::to_ascii` writes it for plain host names
    let mut key = String::with_capacity(64);
    for i in 0..n {
        let l = p.labels.get(i)?;
        if !l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
            return None;
        }
        key.push_str(std::str::from_utf8(l).ok()?);
        key.push('.');
    }
    let key = CacheKey::from_parts(key, RecordType::from(p.qtype), DNSClass::IN, p.dnssec_ok);
    let got = cache.get_wire(&key, now, out);
    got?;
    let question = buf.get(HEADER_LEN..p.question_end)?;
    // the cached answer echoes the same name (case aside) and type: same length, same offsets
    if out.get(4..6)? != [0, 1] || out.get(HEADER_LEN..p.question_end)?.len() != question.len() {
        return None;
    }
    out[HEADER_LEN..p.question_end].copy_from_slice(question);
    out[0..2].copy_from_slice(&buf[0..2]);
    out[2] = 0x80 | (buf[2] & 0x01);
    out[3] = 0x80 | (out[3] & 0x2f) | (buf[3] & 0x10);
    if p.edns_payload.is_some() {
        let ar = u16_at(out, 10)?.checked_add(1)?;
        out[10..12].copy_from_slice(&ar.to_be_bytes());
        push_opt(out, cfg);
    }
    (out.len() <= udp_limit(transport, p.edns_payload, cfg)).then_some(())
}

fn wanted(ip: &IpAddr, qtype: u16) -> bool {
    matches!((ip, qtype), (IpAddr::V4(_), TYPE_A) | (IpAddr::V6(_), TYPE_AAAA))
}

/// Answers `buf` into `out` when the fast path can; `false` leaves `out` empty and the query to
/// [`crate::wire::handle_packet`].
pub fn try_answer(buf: &[u8], transport: Transport, index: &ClusterIndex, cfg: &AnswerConfig, out: &mut Vec<u8>) -> bool {
    out.clear();
    let written = write_answer(buf, transport, index, cfg, out).is_some();
    if !written {
        out.clear();
    }
    written
}

fn write_answer(buf: &[u8], transport: Transport, index: &ClusterIndex, cfg: &AnswerConfig, out: &mut Vec<u8>) -> Option<()> {
    let p = parse(buf)?;
    if p.qtype != TYPE_A && p.qtype != TYPE_AAAA {
        return None;
    }
    let zone = &cfg.zone_labels;
    let n = p.labels.count;
    if n < zone.len() + 3 {
        return None;
    }
    let rel = n - zone.len();
    for (i, z) in zone.iter().enumerate() {
        if p.labels.get(rel + i)? != z.as_bytes() {
            return None;
        }
    }
    let label = |i: usize| p.labels.get(i).and_then(|l| std::str::from_utf8(l).ok());
    // right to left below the zone: svc, namespace, service[, endpoint]
    if label(rel - 1)? != "svc" {
        return None;
    }
    let service = index.service(label(rel - 2)?, label(rel - 3)?)?;

    let limit = udp_limit(transport, p.edns_payload, cfg);
    out.extend_from_slice(&buf[..2]);
    // QR, opcode 0, AA, RD copied; RA, CD copied, NOERROR
    out.push(0x80 | 0x04 | (buf[2] & 0x01));
    out.push(0x80 | (buf[3] & 0x10));
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(p.edns_payload.is_some())]);
    out.extend_from_slice(buf.get(HEADER_LEN..p.question_end)?);
    let ttl = cfg.ttl.to_be_bytes();
    let mut count: u16 = 0;
    let mut push = |out: &mut Vec<u8>, ip: &IpAddr| {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&p.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl);
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
        count += 1;
    };
    match (rel, &service.kind) {
        (3, ServiceKind::ClusterIp(ips)) => ips.iter().filter(|ip| wanted(ip, p.qtype)).for_each(|ip| push(out, ip)),
        (3, ServiceKind::Headless(_)) => service
            .headless_addresses()
            .iter()
            .filter(|ip| wanted(ip, p.qtype))
            .for_each(|ip| push(out, ip)),
        (4, ServiceKind::Headless(eps)) => {
            let ep = label(0)?;
            eps.iter()
                .filter(|e| &*e.label == ep && wanted(&e.ip, p.qtype))
                .for_each(|e| push(out, &e.ip));
        }
        _ => return None,
    }
    if count == 0 {
        return None;
    }
    if p.edns_payload.is_some() {
        push_opt(out, cfg);
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    (out.len() <= limit).then_some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::{handle_packet, Handled};
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn index() -> ClusterIndex {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nginx", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00::50"],
                     "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        let v6only: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "six", "namespace": "default"},
            "spec": {"clusterIP": "fd00::6"}
        }))
        .unwrap();
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        let mut eps: Vec<_> = (0..40)
            .map(|i| serde_json::json!({"addresses": [format!("10.244.0.{}", 100 - i)], "hostname": format!("web-{}", i % 30)}))
            .collect();
        eps.push(serde_json::json!({"addresses": ["10.244.1.1"]}));
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": eps
        }))
        .unwrap();
        ClusterIndex::build(&[svc, v6only, headless], &[slice], &[])
    }

    fn query(name: &str, rtype: RecordType, edns: Option<u16>, rd: bool) -> Vec<u8> {
        let mut q = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = rd;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            q.edns = Some(e);
        }
        q.to_vec().unwrap()
    }

    #[test]
    fn fast_path_bytes_equal_the_general_path() {
        let idx = index();
        let cfg = AnswerConfig::default();
        let mut out = Vec::new();
        let mut answered = 0;
        for name in [
            "nginx.default.svc.cluster.local.",
            "NGINX.Default.SVC.cluster.LOCAL.",
            "six.default.svc.cluster.local.",
            "web.prod.svc.cluster.local.",
            "web-3.web.prod.svc.cluster.local.",
            "10-244-1-1.web.prod.svc.cluster.local.",
            "missing.default.svc.cluster.local.",
            "web-99.web.prod.svc.cluster.local.",
            "_http._tcp.nginx.default.svc.cluster.local.",
            "default.svc.cluster.local.",
            "nginx.default.svc.other.local.",
            "example.com.",
        ] {
            for rtype in [RecordType::A, RecordType::AAAA, RecordType::SRV, RecordType::TXT] {
                for edns in [None, Some(512), Some(1232), Some(4096)] {
                    for transport in [Transport::Udp, Transport::Tcp] {
                        for rd in [true, false] {
                            let pkt = query(name, rtype, edns, rd);
                            let general = handle_packet(&pkt, transport, &idx, &cfg);
                            if try_answer(&pkt, transport, &idx, &cfg, &mut out) {
                                answered += 1;
                                assert_eq!(general, Handled::Reply(out.clone()), "{name} {rtype} {edns:?} {transport:?}");
                            } else {
                                assert!(out.is_empty());
                            }
                        }
                    }
                }
            }
        }
        // nginx A/AAAA in two spellings, six AAAA, web A, web-3 A, 10-244-1-1 A (x edns x transport x rd);
        // web A is 41 addresses, over 512 bytes: over UDP without EDNS or with 512 it goes the general way
        assert_eq!(answered, (4 + 1 + 1 + 1 + 1) * 4 * 2 * 2 - 4);
    }

    #[test]
    fn odd_packets_go_the_general_way() {
        let idx = index();
        let cfg = AnswerConfig::default();
        let mut out = Vec::new();
        let good = query("nginx.default.svc.cluster.local.", RecordType::A, None, true);
        assert!(try_answer(&good, Transport::Udp, &idx, &cfg, &mut out));
        let mut trailing = good.clone();
        trailing.push(0);
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut chaos = good.clone();
        let n = chaos.len();
        chaos[n - 1] = 3;
        let mut status = good.clone();
        status[2] |= 2 << 3;
        let mut two = good.clone();
        two[5] = 2;
        let mut badvers = query("nginx.default.svc.cluster.local.", RecordType::A, Some(1232), true);
        let n = badvers.len();
        badvers[n - 5] = 1;
        for pkt in [&trailing, &response, &chaos, &status, &two, &badvers, &good[..20].to_vec(), &Vec::new()] {
            assert!(!try_answer(pkt, Transport::Udp, &idx, &cfg, &mut out), "{pkt:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn cached_wire_answers_equal_the_general_relay() {
        use crate::cache::Cache;
        use crate::forward::relay;
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::rdata::{A, SOA};
        use hickory_proto::rr::{RData, Record};
        use std::time::Duration;
        let cfg = AnswerConfig::default();
        let cache = Cache::new(100, 30);
        let t0 = Instant::now();
        let name = Name::from_ascii("ext-1.example.").unwrap();
        let mut up = Message::new(7, MessageType::Response, OpCode::Query);
        up.metadata.authentic_data = true;
        up.add_query(Query::query(name.clone(), RecordType::A));
        up.answers.push(Record::from_rdata(name.clone(), 20, RData::A(A::new(192, 0, 2, 1))));
        up.answers.push(Record::from_rdata(name.clone(), 25, RData::A(A::new(192, 0, 2, 2))));
        let mut neg = Message::new(8, MessageType::Response, OpCode::Query);
        neg.metadata.response_code = ResponseCode::NXDomain;
        let nx = Name::from_ascii("nx.example.").unwrap();
        neg.add_query(Query::query(nx.clone(), RecordType::AAAA));
        let soa = SOA::new(Name::from_ascii("ns.example.").unwrap(), Name::from_ascii("h.example.").unwrap(), 1, 1, 1, 1, 15);
        neg.authorities.push(Record::from_rdata(Name::from_ascii("example.").unwrap(), 60, RData::SOA(soa)));
        for (msg, qname, rtype) in [(&up, "EXT-1.example.", RecordType::A), (&neg, "nx.Example.", RecordType::AAAA)] {
            let q = Message::from_vec(&query(qname, rtype, None, true)).unwrap();
            let key = crate::cache::CacheKey::new(&q.queries[0], false);
            assert!(cache.put(key.clone(), msg, t0));
            for edns in [None, Some(1232)] {
                for rd in [true, false] {
                    let pkt = query(qname, rtype, edns, rd);
                    let q = Message::from_vec(&pkt).unwrap();
                    let now = t0 + Duration::from_secs(3);
                    let mut out = Vec::new();
                    assert!(try_cached(&pkt, Transport::Udp, &cache, &cfg, now, &mut out), "{qname}");
                    let general = relay(&q, &cache.get(&key, now).unwrap(), &cfg);
                    let fast = Message::from_vec(&out).unwrap();
                    assert_eq!(fast, Message::from_vec(&general.to_vec().unwrap()).unwrap(), "{qname} {edns:?} {rd}");
                    assert_eq!(fast.queries[0].name.to_ascii(), qname, "the client's spelling is echoed");
                }
            }
        }
        // aged TTLs: 20 - 3
        let pkt = query("ext-1.example.", RecordType::A, None, true);
        let mut out = Vec::new();
        assert!(try_cached(&pkt, Transport::Udp, &cache, &cfg, t0 + Duration::from_secs(3), &mut out));
        assert_eq!(Message::from_vec(&out).unwrap().answers[0].ttl, 17);
        // not cached, cluster zone, reverse names: the general way
        for name in ["other.example.", "nginx.default.svc.cluster.local.", "1.0.0.10.in-addr.arpa."] {
            assert!(!try_cached(&query(name, RecordType::A, None, true), Transport::Udp, &cache, &cfg, t0, &mut out));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_disagrees_on_random_bytes(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64), cut in 0usize..80) {
            let idx = index();
            let cfg = AnswerConfig::default();
            let mut out = Vec::new();
            let mut pkt = query("web-1.web.prod.svc.cluster.local.", RecordType::A, Some(1232), true);
            pkt.truncate(cut.max(12));
            pkt.extend_from_slice(&tail);
            if try_answer(&pkt, Transport::Udp, &idx, &cfg, &mut out) {
                proptest::prop_assert_eq!(handle_packet(&pkt, Transport::Udp, &idx, &cfg), Handled::Reply(out));
            }
        }
    }
}
