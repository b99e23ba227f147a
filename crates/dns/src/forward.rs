//! Forwarding to upstream resolvers, with failover: upstreams are tried in order, those that failed
//! recently ([`UNHEALTHY_AFTER`] consecutive failures) last; a timeout, an I/O error, SERVFAIL or REFUSED
//! moves on to the next. Truncated UDP answers are retried over TCP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, warn};

use crate::answer::response_to;
use crate::config::AnswerConfig;
use crate::metrics::Metrics;

/// Receive buffer of an upstream UDP exchange.
const UDP_ANSWER_MAX: usize = 4096;

/// Consecutive failures after which an upstream is tried last.
pub const UNHEALTHY_AFTER: u32 = 3;

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    failures: AtomicU32,
}

/// Why forwarding failed (the client gets SERVFAIL).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Every upstream failed; the last cause is given.
    #[error("all {count} upstream resolvers failed, last {addr}: {reason}")]
    AllFailed {
        /// How many were tried.
        count: usize,
        /// The last one tried.
        addr: SocketAddr,
        /// What went wrong with it.
        reason: String,
    },
}

/// The forwarder. Cheap to share; [`Forwarder::set_upstreams`] swaps the list on config reload.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: RwLock<Vec<std::sync::Arc<Upstream>>>,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder over `upstreams`, giving each `timeout` per attempt.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        let f = Forwarder {
            upstreams: RwLock::new(Vec::new()),
            timeout,
        };
        f.set_upstreams(upstreams);
        f
    }

    /// Replaces the upstream list (health of addresses kept is preserved).
    pub fn set_upstreams(&self, addrs: Vec<SocketAddr>) {
        let mut list = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        let new = addrs
            .into_iter()
            .map(|addr| {
                list.iter().find(|u| u.addr == addr).cloned().unwrap_or_else(|| {
                    std::sync::Arc::new(Upstream {
                        addr,
                        failures: AtomicU32::new(0),
                    })
                })
            })
            .collect();
        *list = new;
    }

    /// Each upstream and whether it is healthy.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let list = self.upstreams.read().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .map(|u| (u.addr, u.failures.load(Ordering::Relaxed) < UNHEALTHY_AFTER))
            .collect()
    }

    fn ordered(&self) -> Vec<std::sync::Arc<Upstream>> {
        let list = self.upstreams.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = list.iter().cloned().collect();
        // stable: healthy ones first, in configured order
        v.sort_by_key(|u| u.failures.load(Ordering::Relaxed) >= UNHEALTHY_AFTER);
        v
    }

    /// Resolves `query` upstream; the returned message is the upstream's (its id is not the client's).
    pub async fn resolve(&self, query: &Message, metrics: &Metrics) -> Result<Message, ForwardError> {
        let order = self.ordered();
        let Some(first) = order.first() else {
            return Err(ForwardError::NoUpstream);
        };
        let mut last = (first.addr, String::new());
        for up in &order {
            let id: u16 = rand::random();
            let mut out = Message::new(id, MessageType::Query, OpCode::Query);
            out.metadata.recursion_desired = true;
            out.metadata.checking_disabled = query.metadata.checking_disabled;
            out.queries = query.queries.clone();
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            if let Some(e) = &query.edns {
                edns.set_dnssec_ok(e.flags().dnssec_ok);
            }
            out.edns = Some(edns);
            match self.attempt(up.addr, &out).await {
                Ok(resp) if matches!(resp.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                    metrics.upstream_failure();
                    up.failures.fetch_add(1, Ordering::Relaxed);
                    last = (up.addr, format!("answered {:?}", resp.metadata.response_code));
                }
                Ok(resp) => {
                    up.failures.store(0, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(reason) => {
                    metrics.upstream_failure();
                    let n = up.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == UNHEALTHY_AFTER {
                        warn!(upstream = %up.addr, %reason, "upstream marked unhealthy");
                    } else {
                        debug!(upstream = %up.addr, %reason, "upstream attempt failed");
                    }
                    last = (up.addr, reason);
                }
            }
        }
        Err(ForwardError::AllFailed {
            count: order.len(),
            addr: last.0,
            reason: last.1,
        })
    }

    async fn attempt(&self, addr: SocketAddr, out: &Message) -> Result<Message, String> {
        let bytes = out.to_vec().map_err(|e| format!("encoding: {e}"))?;
        let resp = tokio::time::timeout(self.timeout, udp_exchange(addr, &bytes, out))
            .await
            .map_err(|_| format!("timed out after {:?} (udp)", self.timeout))??;
        if !resp.metadata.truncation {
            return Ok(resp);
        }
        tokio::time::timeout(self.timeout, tcp_exchange(addr, &bytes, out))
            .await
            .map_err(|_| format!("timed out after {:?} (tcp)", self.timeout))?
    }
}

fn matches(out: &Message, resp: &Message) -> bool {
    resp.metadata.id == out.metadata.id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == out.queries.len()
        && resp.queries.iter().zip(&out.queries).all(|(a, b)| {
            a.query_type == b.query_type && a.query_class == b.query_class && a.name.eq_ignore_root(&b.name)
        })
}

async fn udp_exchange(addr: SocketAddr, bytes: &[u8], out: &Message) -> Result<Message, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| format!("udp bind: {e}"))?;
    sock.connect(addr).await.map_err(|e| format!("udp connect: {e}"))?;
    sock.send(bytes).await.map_err(|e| format!("udp send: {e}"))?;
    // We advertise 1232 bytes upstream; a per-query 64 KiB buffer would cost megabytes of heap when
    // hundreds of forwards are in flight. Anything filling this buffer broke the advertised size.
    let mut buf = vec![0u8; UDP_ANSWER_MAX];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| format!("udp recv: {e}"))?;
        if n >= buf.len() {
            return Err(format!("udp answer over {UDP_ANSWER_MAX} bytes (asked for at most 1232)"));
        }
        // ignore what does not match (spoofing attempts, late answers)
        if let Ok(resp) = Message::from_vec(&buf[..n]) {
            if matches(out, &resp) {
                return Ok(resp);
            }
        }
    }
}

async fn tcp_exchange(addr: SocketAddr, bytes: &[u8], out: &Message) -> Result<Message, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("tcp connect: {e}"))?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.map_err(|e| format!("tcp write: {e}"))?;
    let mut lenb = [0u8; 2];
    s.read_exact(&mut lenb).await.map_err(|e| format!("tcp read: {e}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
    s.read_exact(&mut buf).await.map_err(|e| format!("tcp read: {e}"))?;
    let resp = Message::from_vec(&buf).map_err(|e| format!("tcp decode: {e}"))?;
    if !matches(out, &resp) {
        return Err("tcp answer does not match the query".into());
    }
    Ok(resp)
}

/// The client's response built from an upstream (or cached) answer: the client's id, question and EDNS,
/// the upstream's rcode and records.
pub fn relay(query: &Message, upstream: &Message, cfg: &AnswerConfig) -> Message {
    let mut resp = response_to(query, cfg);
    resp.metadata.response_code = upstream.metadata.response_code;
    resp.metadata.authentic_data = upstream.metadata.authentic_data;
    resp.answers = upstream.answers.clone();
    resp.authorities = upstream.authorities.clone();
    resp.additionals = upstream.additionals.clone();
    resp
}

/// SERVFAIL for `query`.
pub fn servfail(query: &Message, cfg: &AnswerConfig) -> Message {
    let mut resp = response_to(query, cfg);
    resp.metadata.response_code = ResponseCode::ServFail;
    resp
}
