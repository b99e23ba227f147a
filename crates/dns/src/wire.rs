//! The packet handler: bytes in, bytes (or "forward") out. Malformed input gets FORMERR when its header
//! can be read and is dropped otherwise; nothing here panics (the fuzz target in `fuzz/` checks that).

use hickory_proto::op::{Message, MessageType, ResponseCode};

use crate::answer::{answer, Answer};
use crate::config::AnswerConfig;
use crate::index::ClusterIndex;

/// How the query arrived: decides the size limit of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers over the client's limit are truncated (TC set) so it retries over TCP.
    Udp,
    /// TCP: up to 65,535 bytes.
    Tcp,
}

/// The outcome of handling one packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Handled {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Forward this (parsed) query upstream.
    Forward(Message),
    /// Send nothing (not a query, or too broken to answer).
    Drop,
}

/// Smallest DNS message: the 12-byte header.
pub const HEADER_LEN: usize = 12;
/// Largest DNS message (TCP length prefix limit).
pub const MAX_MESSAGE: usize = 65_535;
/// The UDP limit without EDNS (RFC 1035).
pub const CLASSIC_UDP: usize = 512;

/// Handles one received packet.
pub fn handle_packet(buf: &[u8], transport: Transport, index: &ClusterIndex, cfg: &AnswerConfig) -> Handled {
    if buf.len() < HEADER_LEN || buf.len() > MAX_MESSAGE {
        return Handled::Drop;
    }
    if buf[2] & 0x80 != 0 {
        // a response (QR set): never answer those, it invites loops
        return Handled::Drop;
    }
    let query = match Message::from_vec(buf) {
        Ok(q) => q,
        Err(_) => return formerr(buf).map_or(Handled::Drop, Handled::Reply),
    };
    if query.metadata.message_type != MessageType::Query {
        return Handled::Drop;
    }
    match answer(&query, index, cfg) {
        Answer::Forward => Handled::Forward(query),
        Answer::Response(resp) => match encode(&resp, limit(&query, transport, cfg)) {
            Some(bytes) => Handled::Reply(bytes),
            None => formerr(buf).map_or(Handled::Drop, Handled::Reply),
        },
    }
}

/// The largest answer `query` may get over `transport`.
pub fn limit(query: &Message, transport: Transport, cfg: &AnswerConfig) -> usize {
    match transport {
        Transport::Tcp => MAX_MESSAGE,
        Transport::Udp => match &query.edns {
            Some(e) => usize::from(e.max_payload().min(cfg.edns_payload)).max(CLASSIC_UDP),
            None => CLASSIC_UDP,
        },
    }
}

/// Encodes `resp`; when it exceeds `limit` bytes, sends the header, question and OPT with TC set instead.
/// `None` only when even that cannot be encoded.
pub fn encode(resp: &Message, limit: usize) -> Option<Vec<u8>> {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Some(bytes),
        Ok(_) => truncated(resp).to_vec().ok().filter(|b| b.len() <= limit),
        Err(_) => {
            let mut fail = Message::new(resp.metadata.id, MessageType::Response, resp.metadata.op_code);
            fail.metadata.response_code = ResponseCode::ServFail;
            fail.metadata.recursion_desired = resp.metadata.recursion_desired;
            fail.to_vec().ok()
        }
    }
}

/// `resp` with every record removed and TC set (the question and OPT stay).
pub fn truncated(resp: &Message) -> Message {
    let mut t = resp.clone();
    t.metadata.truncation = true;
    t.answers.clear();
    t.authorities.clear();
    t.additionals.clear();
    t
}

/// A FORMERR reply built from the raw header only (id, opcode, RD), with no sections.
pub fn formerr(buf: &[u8]) -> Option<Vec<u8>> {
    if buf.len() < HEADER_LEN || buf[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = buf[0];
    out[1] = buf[1];
    // QR=1, opcode copied, RD copied
    out[2] = 0x80 | (buf[2] & 0x78) | (buf[2] & 0x01);
    // RA=1, rcode FORMERR
    out[3] = 0x80 | 0x01;
    Some(out)
}

/// Whether `bytes` decode as a DNS message (used by the fuzz target to check replies).
pub fn decodes(bytes: &[u8]) -> bool {
    Message::from_vec(bytes).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn short_and_response_packets_are_dropped() {
        let idx = ClusterIndex::default();
        let cfg = AnswerConfig::default();
        assert_eq!(handle_packet(&[0; 5], Transport::Udp, &idx, &cfg), Handled::Drop);
        let mut resp = [0u8; 12];
        resp[2] = 0x80;
        assert_eq!(handle_packet(&resp, Transport::Udp, &idx, &cfg), Handled::Drop);
    }

    #[test]
    fn garbage_after_header_is_formerr() {
        let idx = ClusterIndex::default();
        let cfg = AnswerConfig::default();
        // id 0xabcd, RD, qdcount 1 but no question bytes
        let pkt = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7];
        let Handled::Reply(bytes) = handle_packet(&pkt, Transport::Udp, &idx, &cfg) else {
            panic!("expected a reply")
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
}
