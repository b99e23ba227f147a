//! The pure core: [`answer`] turns a query and a [`ClusterIndex`] into an authoritative response, or
//! says the query goes upstream. No I/O, no clock.
//!
//! Records follow the Kubernetes DNS-Based Service Discovery specification 1.1.0
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>), with CoreDNS's choices where
//! the spec leaves room (SRV weights, `a-b-c-d` labels for endpoints without a hostname, SOA fields).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::{AnswerConfig, PodsMode};
use crate::index::{ClusterIndex, EndpointRecord, NamedPort, ServiceKind};

/// The schema version answered at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// What to do with a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// Send this response (authoritative for the cluster zone, or an error).
    Response(Message),
    /// The name is outside what the index answers: forward to an upstream resolver.
    Forward,
}

/// A response skeleton for `query`: same id, opcode, RD and CD, the question echoed, EDNS when asked.
pub fn response_to(query: &Message, cfg: &AnswerConfig) -> Message {
    let mut resp = Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.checking_disabled = query.metadata.checking_disabled;
    resp.metadata.recursion_available = true;
    resp.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(cfg.edns_payload);
        edns.set_version(0);
        resp.edns = Some(edns);
    }
    resp
}

fn error_response(query: &Message, cfg: &AnswerConfig, rcode: ResponseCode) -> Answer {
    let mut resp = response_to(query, cfg);
    resp.metadata.response_code = rcode;
    Answer::Response(resp)
}

/// Answers `query` from `index`.
///
/// - not a standard query → NOTIMP; not exactly one question → FORMERR; EDNS version > 0 → BADVERS;
/// - names in the cluster zone → authoritative answer, NXDOMAIN or NODATA with the zone's SOA in the
///   authority section (class other than IN/ANY → REFUSED);
/// - PTR names of Service and endpoint addresses → authoritative PTR; other reverse names → forward
///   (or NXDOMAIN when `reverse_fallthrough` is off);
/// - anything else → [`Answer::Forward`].
pub fn answer(query: &Message, index: &ClusterIndex, cfg: &AnswerConfig) -> Answer {
    if query.metadata.op_code != OpCode::Query {
        return error_response(query, cfg, ResponseCode::NotImp);
    }
    if query.queries.len() != 1 {
        return error_response(query, cfg, ResponseCode::FormErr);
    }
    if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return error_response(query, cfg, ResponseCode::BADVERS);
    }
    let q = &query.queries[0];
    let labels: Vec<String> = q
        .name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let class_ok = matches!(q.query_class, DNSClass::IN | DNSClass::ANY);

    if labels.ends_with(&cfg.zone_labels) {
        if !class_ok {
            return error_response(query, cfg, ResponseCode::Refused);
        }
        let mut rel: Vec<&str> = labels[..labels.len() - cfg.zone_labels.len()]
            .iter()
            .map(String::as_str)
            .collect();
        rel.reverse();
        let node = zone_node(&rel, index, cfg);
        return Answer::Response(respond(query, q.query_type, &q.name, node, index, cfg, true));
    }

    if let Some(ip) = reverse_ip(&labels) {
        if class_ok {
            let targets = index.ptr(ip);
            if !targets.is_empty() {
                let mut node = Node::empty();
                for t in targets {
                    let text = match &t.endpoint {
                        Some(ep) => format!("{ep}.{}.{}.svc.{}", t.service, t.namespace, cfg.zone),
                        None => format!("{}.{}.svc.{}", t.service, t.namespace, cfg.zone),
                    };
                    if let Some(name) = fqdn(&text) {
                        node.records.push(RData::PTR(PTR(name)));
                    }
                }
                return Answer::Response(respond(query, q.query_type, &q.name, Some(node), index, cfg, false));
            }
        }
        if !cfg.reverse_fallthrough {
            return error_response(query, cfg, ResponseCode::NXDomain);
        }
    }
    Answer::Forward
}

/// The records at one existing name, plus additional records (SRV targets' addresses).
struct Node {
    records: Vec<RData>,
    additionals: Vec<Record>,
}

impl Node {
    fn empty() -> Self {
        Node {
            records: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

fn fqdn(text: &str) -> Option<Name> {
    let text = text.trim_end_matches('.');
    Name::from_ascii(format!("{text}.")).ok()
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn soa(index: &ClusterIndex, cfg: &AnswerConfig) -> Record {
    Record::from_rdata(
        cfg.zone.clone(),
        cfg.ttl,
        RData::SOA(SOA::new(
            cfg.soa_mname.clone(),
            cfg.soa_rname.clone(),
            index.serial,
            7200,
            1800,
            86400,
            cfg.ttl,
        )),
    )
}

fn srv_weight(count: usize) -> u16 {
    u16::try_from(100 / count.max(1)).unwrap_or(100).max(1)
}

/// Looks up a name in the zone, given its labels below the zone from right to left.
/// `None` is NXDOMAIN; `Some(node)` with no records is NODATA-capable (an empty non-terminal).
fn zone_node(rel: &[&str], index: &ClusterIndex, cfg: &AnswerConfig) -> Option<Node> {
    let svc_name = |ns: &str, svc: &str| fqdn(&format!("{svc}.{ns}.svc.{}", cfg.zone));
    match rel {
        [] => {
            let mut node = Node::empty();
            if let RData::SOA(s) = soa(index, cfg).data {
                node.records.push(RData::SOA(s));
            }
            node.records.push(RData::NS(NS(cfg.soa_mname.clone())));
            Some(node)
        }
        ["dns-version"] => {
            let mut node = Node::empty();
            node.records.push(RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])));
            Some(node)
        }
        ["svc"] => Some(Node::empty()),
        ["svc", ns] => index.has_service_namespace(ns).then(Node::empty),
        ["svc", ns, svc] => {
            let service = index.service(ns, svc)?;
            let target = svc_name(ns, svc)?;
            let mut node = Node::empty();
            match &service.kind {
                ServiceKind::ExternalName(ext) => node.records.push(RData::CNAME(CNAME(fqdn(ext)?))),
                ServiceKind::ClusterIp(ips) => {
                    node.records.extend(ips.iter().map(|ip| addr_rdata(*ip)));
                    let w = srv_weight(service.ports.len());
                    for p in &service.ports {
                        node.records.push(RData::SRV(SRV::new(0, w, p.port, target.clone())));
                    }
                    if !service.ports.is_empty() {
                        add_addresses(&mut node.additionals, &target, ips.iter().copied(), cfg.ttl);
                    }
                }
                ServiceKind::Headless(eps) => {
                    if eps.is_empty() {
                        return None;
                    }
                    node.records.extend(service.headless_addresses().iter().map(|ip| addr_rdata(*ip)));
                    let all: Vec<(&EndpointRecord, &NamedPort)> =
                        eps.iter().flat_map(|e| e.ports.iter().map(move |p| (e, p))).collect();
                    headless_srv(&mut node, &all, ns, svc, cfg);
                }
            }
            Some(node)
        }
        ["svc", ns, svc, label] => {
            let service = index.service(ns, svc)?;
            if let Some(proto) = label.strip_prefix('_') {
                // `_tcp.<svc>...`: an empty non-terminal when some named port uses that protocol
                let has = match &service.kind {
                    ServiceKind::ClusterIp(_) => service.ports.iter().any(|p| p.protocol == proto),
                    ServiceKind::Headless(eps) => {
                        eps.iter().flat_map(|e| e.ports.iter()).any(|p| p.protocol == proto)
                    }
                    ServiceKind::ExternalName(_) => false,
                };
                return has.then(Node::empty);
            }
            let ServiceKind::Headless(eps) = &service.kind else {
                return None;
            };
            let mut node = Node::empty();
            for ep in eps.iter().filter(|e| &*e.label == *label) {
                let r = addr_rdata(ep.ip);
                if !node.records.contains(&r) {
                    node.records.push(r);
                }
            }
            (!node.records.is_empty()).then_some(node)
        }
        ["svc", ns, svc, proto_label, port_label] => {
            let service = index.service(ns, svc)?;
            let proto = proto_label.strip_prefix('_')?;
            let port_name = port_label.strip_prefix('_')?;
            let matches = |p: &NamedPort| p.protocol == proto && &*p.name == port_name;
            let mut node = Node::empty();
            match &service.kind {
                ServiceKind::ClusterIp(ips) => {
                    let target = svc_name(ns, svc)?;
                    let port = service.ports.iter().find(|p| matches(p))?;
                    node.records.push(RData::SRV(SRV::new(0, 100, port.port, target.clone())));
                    add_addresses(&mut node.additionals, &target, ips.iter().copied(), cfg.ttl);
                }
                ServiceKind::Headless(eps) => {
                    let all: Vec<(&EndpointRecord, &NamedPort)> = eps
                        .iter()
                        .flat_map(|e| e.ports.iter().filter(|p| matches(p)).map(move |p| (e, p)))
                        .collect();
                    if all.is_empty() {
                        return None;
                    }
                    headless_srv(&mut node, &all, ns, svc, cfg);
                }
                ServiceKind::ExternalName(_) => return None,
            }
            Some(node)
        }
        ["pod", rest @ ..] => {
            if cfg.pods == PodsMode::Disabled {
                return None;
            }
            match rest {
                [] => Some(Node::empty()),
                [ns] => (cfg.pods == PodsMode::Insecure || index.has_pod_namespace(ns)).then(Node::empty),
                [ns, label] => {
                    let ip = pod_label_ip(label)?;
                    if cfg.pods == PodsMode::Verified && !index.has_pod(ns, ip) {
                        return None;
                    }
                    let mut node = Node::empty();
                    node.records.push(addr_rdata(ip));
                    Some(node)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn headless_srv(node: &mut Node, all: &[(&EndpointRecord, &NamedPort)], ns: &str, svc: &str, cfg: &AnswerConfig) {
    // one SRV per (endpoint name, port); an endpoint name with two addresses (dual stack) is one target
    let mut seen: Vec<(std::sync::Arc<str>, u16)> = Vec::new();
    for (ep, p) in all {
        if !seen.iter().any(|(l, port)| *l == ep.label && *port == p.port) {
            seen.push((ep.label.clone(), p.port));
        }
    }
    let w = srv_weight(seen.len());
    for (label, port) in &seen {
        let Some(target) = fqdn(&format!("{label}.{svc}.{ns}.svc.{}", cfg.zone)) else {
            continue;
        };
        node.records.push(RData::SRV(SRV::new(0, w, *port, target.clone())));
        let ips = all.iter().filter(|(e, _)| e.label == *label).map(|(e, _)| e.ip);
        add_addresses(&mut node.additionals, &target, ips, cfg.ttl);
    }
}

fn add_addresses(out: &mut Vec<Record>, name: &Name, ips: impl Iterator<Item = IpAddr>, ttl: u32) {
    for ip in ips {
        let rec = Record::from_rdata(name.clone(), ttl, addr_rdata(ip));
        if !out.contains(&rec) {
            out.push(rec);
        }
    }
}

/// Fills a response from a node: records of the asked type (or the CNAME), NODATA or NXDOMAIN with SOA.
fn respond(
    query: &Message,
    qtype: RecordType,
    qname: &Name,
    node: Option<Node>,
    index: &ClusterIndex,
    cfg: &AnswerConfig,
    in_zone: bool,
) -> Message {
    let mut resp = response_to(query, cfg);
    resp.metadata.authoritative = true;
    let Some(node) = node else {
        resp.metadata.response_code = ResponseCode::NXDomain;
        if in_zone {
            resp.authorities.push(soa(index, cfg));
        }
        return resp;
    };
    let cname = node.records.iter().find(|r| matches!(r, RData::CNAME(_)));
    let selected: Vec<&RData> = match (cname, qtype) {
        (Some(c), t) if t != RecordType::ANY => vec![c],
        (_, RecordType::ANY) => node.records.iter().collect(),
        (_, t) => node.records.iter().filter(|r| r.record_type() == t).collect(),
    };
    for r in &selected {
        resp.answers.push(Record::from_rdata(qname.clone(), cfg.ttl, (*r).clone()));
    }
    if selected.is_empty() {
        if in_zone {
            resp.authorities.push(soa(index, cfg));
        }
    } else if selected.iter().any(|r| matches!(r, RData::SRV(_))) {
        resp.additionals.extend(node.additionals);
    }
    resp
}

/// The address of a pod label: `10-1-2-3` or `fd00--1`.
pub fn pod_label_ip(label: &str) -> Option<IpAddr> {
    if label.bytes().filter(|b| *b == b'-').count() == 3 {
        if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
    }
    label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The address a full reverse name stands for (`4.3.2.1.in-addr.arpa`, 32-nibble `ip6.arpa`).
pub fn reverse_ip(labels: &[String]) -> Option<IpAddr> {
    match labels {
        [a, b, c, d, inaddr, arpa] if inaddr == "in-addr" && arpa == "arpa" => {
            let octet = |s: &str| -> Option<u8> {
                if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse().ok()
            };
            Some(IpAddr::V4(Ipv4Addr::new(octet(d)?, octet(c)?, octet(b)?, octet(a)?)))
        }
        _ if labels.len() == 34 && labels[32] == "ip6" && labels[33] == "arpa" => {
            let mut v: u128 = 0;
            for nibble in labels[..32].iter().rev() {
                let [b] = nibble.as_bytes() else { return None };
                let n = (*b as char).to_digit(16)?;
                v = (v << 4) | u128::from(n);
            }
            Some(IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Vec<String> {
        s.trim_end_matches('.').split('.').map(str::to_string).collect()
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_ip(&labels("10.0.96.10.in-addr.arpa.")), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(reverse_ip(&labels("0.96.10.in-addr.arpa.")), None);
        assert_eq!(reverse_ip(&labels("300.0.96.10.in-addr.arpa.")), None);
        let v6: Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        let nibbles: String = format!("{:032x}", u128::from(v6))
            .chars()
            .rev()
            .map(|c| format!("{c}."))
            .collect();
        assert_eq!(reverse_ip(&labels(&format!("{nibbles}ip6.arpa."))), Some(IpAddr::V6(v6)));
    }

    #[test]
    fn pod_labels() {
        assert_eq!(pod_label_ip("10-244-1-5"), Some("10.244.1.5".parse().unwrap()));
        assert_eq!(pod_label_ip("fd00--5"), Some("fd00::5".parse().unwrap()));
        assert_eq!(pod_label_ip("10-244-1"), None);
        assert_eq!(pod_label_ip("nginx"), None);
    }
}
