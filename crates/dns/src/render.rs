//! A stable, dig-like text form of a DNS message, used by the golden tests and in logs.

use std::fmt::Write;

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, Record};

fn record_line(r: &Record) -> String {
    let data = match &r.data {
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!("{} {} {} {} {}", r.name, r.ttl, r.dns_class, r.record_type(), data)
}

/// The rcode as dig prints it (`NOERROR`, `NXDOMAIN`, ...).
pub fn rcode_name(rc: hickory_proto::op::ResponseCode) -> String {
    use hickory_proto::op::ResponseCode as R;
    match rc {
        R::NoError => "NOERROR".into(),
        R::FormErr => "FORMERR".into(),
        R::ServFail => "SERVFAIL".into(),
        R::NXDomain => "NXDOMAIN".into(),
        R::NotImp => "NOTIMP".into(),
        R::Refused => "REFUSED".into(),
        other if u16::from(other) == 16 => "BADVERS".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// Renders `msg` as dig would print it (header, flags, EDNS, sections), without timing lines.
pub fn render(msg: &Message) -> String {
    let m = &msg.metadata;
    let mut flags = Vec::new();
    if m.message_type == hickory_proto::op::MessageType::Response {
        flags.push("qr");
    }
    for (on, name) in [
        (m.authoritative, "aa"),
        (m.truncation, "tc"),
        (m.recursion_desired, "rd"),
        (m.recursion_available, "ra"),
        (m.authentic_data, "ad"),
        (m.checking_disabled, "cd"),
    ] {
        if on {
            flags.push(name);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        ";; opcode: {:?}, status: {}, flags: {}",
        m.op_code,
        rcode_name(m.response_code),
        flags.join(" ")
    );
    if let Some(e) = &msg.edns {
        let _ = writeln!(out, ";; EDNS: version: {}, udp: {}", e.version(), e.max_payload());
    }
    let _ = writeln!(out, ";; QUESTION SECTION:");
    for q in &msg.queries {
        let _ = writeln!(out, ";{} {} {}", q.name, q.query_class, q.query_type);
    }
    for (title, records) in [
        ("ANSWER", &msg.answers),
        ("AUTHORITY", &msg.authorities),
        ("ADDITIONAL", &msg.additionals),
    ] {
        if records.is_empty() {
            continue;
        }
        let _ = writeln!(out, ";; {title} SECTION:");
        for r in records {
            let _ = writeln!(out, "{}", record_line(r));
        }
    }
    out
}
