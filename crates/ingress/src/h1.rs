//! The HTTP/1.1 fast path for plain-HTTP client connections (nginx / pingora style).
//!
//! hyper is general: per request it builds an `http::Request` (a header map, a parsed URI,
//! extensions), drives every upstream connection from its own task and re-encodes both message
//! heads. On a 2-core box that work is the proxy's CPU budget. This module instead keeps one
//! read buffer per client connection and, per request:
//!
//! 1. parses the request head in place with `httparse` ([`decide`], pure and synchronous);
//! 2. routes it with [`crate::route_ref`] and answers the local cases exactly as the hyper path
//!    does (404 default backend, 308 ssl-redirect, 413 declared body size, 503 no endpoints);
//! 3. writes the upstream request head straight as bytes: the request line (rewritten target if
//!    `rewrite-target` applies), the client's headers minus hop-by-hop ones (and any named in
//!    `Connection`), then X-Forwarded-For/-Proto/-Host/-Port and X-Real-IP with the same
//!    `trust_forwarded_headers` semantics as [`crate::proxy`];
//! 4. sends it on an idle plain-HTTP/1.1 connection of the worker's own pool (or a new one;
//!    refused connections move on to the next endpoint, request still in hand), relays the
//!    request body by its framing (Content-Length, or chunked bytes passed through while
//!    [`Chunked`] tracks where the message ends and counts data for `proxy-body-size`);
//! 5. reads the response head under `proxy-read-timeout` (504), rewrites it (hop-by-hop headers
//!    out) and relays the body by its framing: none (HEAD, 204, 304), Content-Length, chunked
//!    (passed through), or close-delimited (the client connection is closed after it);
//! 6. returns the upstream connection to the pool when its message ended cleanly, and keeps the
//!    client connection for the next (possibly already buffered: pipelining) request.
//!
//! Anything this path does not handle exactly goes to the hyper path for the rest of the
//! connection, with the bytes already read replayed first ([`Rewind`]): an HTTP/2 prior
//! knowledge preface, HTTP/1.0, `Upgrade` (WebSocket), `Expect`, `CONNECT`, absolute-form or
//! `*` targets, a `Transfer-Encoding` other than exactly `chunked`, and backends that are not
//! plain HTTP/1.1 (`backend-protocol` HTTPS, GRPC, GRPCS). The switch happens only between
//! requests, so no response is ever half written by both paths.
//!
//! Malformed requests are answered with 400 (431 when the head is over [`MAX_HEAD`] bytes or
//! [`MAX_HEADERS`] fields) and the connection is closed. Nothing here panics on input.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::annotations::BackendProtocol;
use crate::pool::ConnectError;
use crate::proxy::State;
use crate::table::{route_ref, Route};

/// Largest request or response head accepted (hyper's default limit is larger; nginx's
/// `large_client_header_buffers` is 4 × 8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Most bytes read and dropped while closing a connection whose request body was not read
/// (so the kernel does not answer the unread bytes with a reset that loses our response).
const LINGER_BYTES: usize = 256 * 1024;
/// Longest wait for the client to finish sending while lingering.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A chunked message (RFC 9112 §7.1) seen byte by byte: where it ends, and how many data bytes
/// it carried. The bytes themselves are relayed untouched.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    data: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size,
    /// Chunk extensions, up to CR.
    Ext,
    /// LF after a chunk-size line.
    SizeLf,
    /// Data bytes left in the current chunk (`size`).
    Data,
    /// CR after chunk data.
    DataCr,
    /// LF after chunk data.
    DataLf,
    /// Start of a trailer field line or of the final empty line.
    Trailer,
    /// Inside a trailer field line, up to CR.
    TrailerLine,
    /// LF after a trailer field line.
    TrailerLf,
    /// LF of the final empty line.
    EndLf,
    /// The message ended.
    Done,
}

/// A chunked body that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    /// At the start of a chunked body.
    pub fn new() -> Self {
        Chunked { state: ChunkState::Size, size: 0, digits: 0, data: 0 }
    }

    /// Whether the final chunk and trailer section have been seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Data bytes seen so far (chunk payloads, without framing).
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Feeds the next bytes of the message. Returns how many of them belong to it: all of
    /// them, unless the message ends inside `buf` (then [`Chunked::done`] is true and the rest
    /// is the next message).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                Done => return Ok(i),
                Size => {
                    if let Some(d) = hex(b) {
                        if self.digits == 16 {
                            return Err(ChunkError);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError);
                    } else {
                        self.state = match b {
                            b'\r' => SizeLf,
                            b';' | b' ' | b'\t' => Ext,
                            _ => return Err(ChunkError),
                        };
                    }
                    i += 1;
                }
                // the rest of a chunk-size line or of a trailer field: skipped up to its CR
                Ext | TrailerLine => {
                    match b {
                        b'\r' => self.state = if self.state == Ext { SizeLf } else { TrailerLf },
                        b'\n' => return Err(ChunkError),
                        _ => {}
                    }
                    i += 1;
                }
                SizeLf => {
                    self.state = expect(b, b'\n', if self.size == 0 { Trailer } else { Data })?;
                    self.digits = 0;
                    i += 1;
                }
                Data => {
                    let avail = (buf.len() - i) as u64;
                    let n = avail.min(self.size);
                    // n <= avail, which came from a usize.
                    i += n as usize;
                    self.size -= n;
                    self.data = self.data.saturating_add(n);
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                }
                DataCr => {
                    self.state = expect(b, b'\r', DataLf)?;
                    i += 1;
                }
                DataLf => {
                    self.state = expect(b, b'\n', Size)?;
                    i += 1;
                }
                Trailer => {
                    self.state = match b {
                        b'\r' => EndLf,
                        b'\n' => return Err(ChunkError),
                        _ => TrailerLine,
                    };
                    i += 1;
                }
                TrailerLf => {
                    self.state = expect(b, b'\n', Trailer)?;
                    i += 1;
                }
                EndLf => {
                    self.state = expect(b, b'\n', Done)?;
                    return Ok(i + 1);
                }
            }
        }
        Ok(i)
    }
}

/// `next` if `b` is the one byte the grammar allows here.
fn expect(b: u8, want: u8, next: ChunkState) -> Result<ChunkState, ChunkError> {
    if b == want {
        Ok(next)
    } else {
        Err(ChunkError)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request to forward, as [`decide`] found it.
#[derive(Debug)]
pub struct Forward {
    /// The winning route.
    pub route: Arc<Route>,
    /// Request body framing.
    pub body: BodyKind,
    /// A HEAD request: the response has no body whatever its headers say.
    pub head_req: bool,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// May be sent again on a fresh connection if a pooled one turns out dead (no body, and
    /// not POST/PATCH/LOCK, as nginx).
    pub replayable: bool,
}

/// A response the proxy makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body text (a newline is added).
    pub text: &'static str,
    /// `Location` header (308).
    pub location: Option<String>,
    /// Close the connection after it (the request body, if any, was not read).
    pub close: bool,
    /// Answer to HEAD: no body.
    pub head_req: bool,
}

/// What to do with the bytes buffered at a request boundary.
#[derive(Debug)]
pub enum Step {
    /// The head is not complete: read more.
    More,
    /// Hand the connection (buffered bytes first) to the hyper path.
    Fallback,
    /// Answer locally; `consumed` bytes of head are used up.
    Reply {
        /// Head length.
        consumed: usize,
        /// The answer.
        reply: Reply,
    },
    /// Forward: the upstream head is in the output buffer; `consumed` bytes of head are used up.
    Forward {
        /// Head length.
        consumed: usize,
        /// What was found.
        fwd: Forward,
        /// The request's tracing span.
        span: tracing::Span,
    },
}

/// Connection facts [`decide`] needs, made once per connection.
#[derive(Debug, Clone)]
pub struct ConnFacts {
    /// Client address, for the span.
    pub peer: SocketAddr,
    /// Client IP as text (X-Real-IP, X-Forwarded-For).
    pub peer_ip: String,
    /// Local port as text (X-Forwarded-Port).
    pub port: String,
    /// Keep and append to incoming X-Forwarded-* headers.
    pub trust_forwarded: bool,
}

fn reply(status: u16, text: &'static str, close: bool) -> Reply {
    Reply { status, text, location: None, close, head_req: false }
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `name` is one of the comma-separated tokens of the `Connection` values.
fn named_in(name: &str, connection: &[&[u8]]) -> bool {
    connection.iter().any(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes())))
}

/// Hop-by-hop fields never forwarded in either direction (RFC 9110 §7.6.1, plus the usual
/// non-standard ones).
fn hop_by_hop(name: &str) -> bool {
    match name.len() {
        2 => eq(name, "te"),
        7 => eq(name, "upgrade") || eq(name, "trailer"),
        10 => eq(name, "connection") || eq(name, "keep-alive"),
        16 => eq(name, "proxy-connection"),
        17 => eq(name, "transfer-encoding"),
        _ => false,
    }
}

/// The value of a header as the hyper path reads it (`HeaderValue::to_str`): visible ASCII.
fn visible_ascii(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parses the request head at the start of `buf`, routes it against the live table and either
/// answers locally, asks for a fallback, or writes the upstream request head into `out`.
/// Pure apart from loading the table and the round-robin cursor (at forward time).
pub fn decide(buf: &[u8], state_table: &crate::SharedTable, facts: &ConnFacts, out: &mut Vec<u8>) -> Step {
    if buf.starts_with(b"PRI * HTTP/2.0") {
        return Step::Fallback;
    }
    let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let consumed = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Step::Reply { consumed: 0, reply: reply(431, "431 request header fields too large", true) }
        }
        Ok(httparse::Status::Partial) => return Step::More,
        Err(httparse::Error::TooManyHeaders) => {
            return Step::Reply { consumed: 0, reply: reply(431, "431 request header fields too large", true) }
        }
        Err(_) if buf.starts_with(b"PRI ") => return Step::Fallback,
        Err(_) => return Step::Reply { consumed: 0, reply: reply(400, "400 bad request", true) },
    };
    if consumed > MAX_HEAD {
        return Step::Reply { consumed: 0, reply: reply(431, "431 request header fields too large", true) };
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Step::Reply { consumed: 0, reply: reply(400, "400 bad request", true) };
    };
    if version != 1 || method == "CONNECT" || !target.starts_with('/') {
        return Step::Fallback;
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        // hyper's URI parser refuses these: same answer.
        return Step::Reply { consumed: 0, reply: reply(400, "400 bad request", true) };
    }
    let bad = Step::Reply { consumed: 0, reply: reply(400, "400 bad request", true) };

    // One pass over the fields for what decides the request's fate.
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut close = false;
    let mut connection: [&[u8]; 4] = [b""; 4];
    let mut n_connection = 0;
    let mut xff: Option<&[u8]> = None;
    let (mut has_xfp, mut has_xfh) = (false, false);
    for h in req.headers.iter() {
        let n = h.name;
        match n.len() {
            4 if eq(n, "host") => {
                hosts += 1;
                host = host.or(Some(h.value));
            }
            14 if eq(n, "content-length") => match (parse_length(h.value), length) {
                (Some(v), None) => length = Some(v),
                (Some(v), Some(prev)) if v == prev => {}
                _ => return bad,
            },
            17 if eq(n, "transfer-encoding") => {
                if te_seen || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Step::Fallback;
                }
                te_seen = true;
                chunked = true;
            }
            7 if eq(n, "upgrade") => return Step::Fallback,
            6 if eq(n, "expect") => return Step::Fallback,
            10 if eq(n, "connection") => {
                if n_connection == connection.len() {
                    return Step::Fallback;
                }
                connection[n_connection] = h.value;
                n_connection += 1;
                close |= h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            15 if eq(n, "x-forwarded-for") => xff = xff.or(Some(h.value)),
            17 if eq(n, "x-forwarded-proto") => has_xfp = true,
            16 if eq(n, "x-forwarded-host") => has_xfh = true,
            _ => {}
        }
    }
    let connection = &connection[..n_connection];
    if hosts > 1 || (chunked && length.is_some()) {
        return bad;
    }
    let body = match (chunked, length) {
        (true, _) => BodyKind::Chunked,
        (false, Some(n)) if n > 0 => BodyKind::Length(n),
        _ => BodyKind::Empty,
    };
    let has_body = body != BodyKind::Empty;
    let head_req = method == "HEAD";
    let host_str = host.and_then(visible_ascii).unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let local = |status, text, location: Option<String>| Step::Reply {
        consumed,
        reply: Reply { status, text, location, close: close || has_body, head_req },
    };
    let table = state_table.load();
    let Some((r, rewritten)) = route_ref(&table, host_str, path) else {
        return local(404, "404 page not found (dari ingress default backend)", None);
    };
    if r.redirect_https {
        let host_only = host_str
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(host_str);
        return local(308, "308 permanent redirect", Some(format!("https://{host_only}{target}")));
    }
    if let (Some(limit), Some(n)) = (r.body_size, length) {
        if n > limit {
            return local(413, "413 request entity too large", None);
        }
    }
    if r.backend.endpoints.is_empty() {
        return local(503, "503 service unavailable (no ready endpoints)", None);
    }
    if r.backend.protocol != BackendProtocol::Http {
        return Step::Fallback;
    }

    // The upstream request head.
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    match &rewritten {
        Some(p) => {
            out.extend_from_slice(p.as_bytes());
            if let Some(q) = query {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let trust = facts.trust_forwarded;
    for h in req.headers.iter() {
        let n = h.name;
        let skip = hop_by_hop(n)
            || match n.len() {
                9 => eq(n, "x-real-ip"),
                15 => eq(n, "x-forwarded-for"),
                16 => eq(n, "x-forwarded-port") || (!trust && eq(n, "x-forwarded-host")),
                17 => !trust && eq(n, "x-forwarded-proto"),
                _ => false,
            }
            || (!connection.is_empty() && named_in(n, connection));
        if !skip {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let (true, Some(prev)) = (trust, xff) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(facts.peer_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-real-ip: ");
    out.extend_from_slice(facts.peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !(trust && has_xfp) {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if !(trust && has_xfh) {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host_str.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-port: ");
    out.extend_from_slice(facts.port.as_bytes());
    out.extend_from_slice(b"\r\n");
    if host.is_none() {
        out.extend_from_slice(b"host: \r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let span = tracing::debug_span!("ingress_request", peer = %facts.peer, host = %host_str, path = %path, method = %method);
    let replayable = !has_body && !matches!(method, "POST" | "PATCH" | "LOCK");
    Step::Forward { consumed, fwd: Forward { route: r.clone(), body, head_req, close, replayable }, span }
}

/// Writes a local response.
pub fn write_reply(out: &mut Vec<u8>, r: &Reply) {
    use std::io::Write;
    out.clear();
    let reason = http::StatusCode::from_u16(r.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        r.status,
        r.text.len() + 1
    );
    if let Some(l) = &r.location {
        let _ = write!(out, "location: {l}\r\n");
    }
    if r.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !r.head_req {
        out.extend_from_slice(r.text.as_bytes());
        out.push(b'\n');
    }
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespFraming {
    /// No body (HEAD, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked (relayed as is).
    Chunked,
    /// Until the upstream closes (the client connection is closed after it).
    Close,
}

/// A parsed upstream response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespHead {
    /// Not complete yet.
    Partial,
    /// A 1xx interim response of this length: skip it.
    Interim(usize),
    /// The final response head, of `len` bytes; the client head is in the output buffer.
    Final {
        /// Head length.
        len: usize,
        /// Body framing.
        framing: RespFraming,
        /// The upstream connection may be reused after the body.
        keep: bool,
    },
}

/// The upstream response is not valid HTTP/1.1 (or not one the proxy asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(&'static str);

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadResponse {}

/// Parses the upstream response head at the start of `buf` and writes the head for the client
/// into `out` (hop-by-hop fields out; `transfer-encoding: chunked` or `connection: close` as
/// the relay needs).
pub fn response_head(buf: &[u8], head_req: bool, client_close: bool, out: &mut Vec<u8>) -> Result<RespHead, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(BadResponse("response head too large")),
        Ok(httparse::Status::Partial) => return Ok(RespHead::Partial),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse("malformed response head"));
    };
    if code == 101 {
        return Err(BadResponse("101 without an upgrade request"));
    }
    if (100..200).contains(&code) {
        return Ok(RespHead::Interim(len));
    }
    let mut connection: [&[u8]; 4] = [b""; 4];
    let mut n_connection = 0;
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut up_close = version != 1;
    for h in resp.headers.iter() {
        let n = h.name;
        match n.len() {
            14 if eq(n, "content-length") => match (parse_length(h.value), length) {
                (Some(v), None) => length = Some(v),
                (Some(v), Some(prev)) if v == prev => {}
                _ => return Err(BadResponse("bad content-length")),
            },
            // The last coding is what frames the message.
            17 if eq(n, "transfer-encoding") => te = Some(h.value),
            10 if eq(n, "connection") => {
                if n_connection == connection.len() {
                    return Err(BadResponse("too many connection fields"));
                }
                connection[n_connection] = h.value;
                n_connection += 1;
                up_close |= h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            _ => {}
        }
    }
    let connection = &connection[..n_connection];
    let framing = if head_req || code == 204 || code == 304 {
        RespFraming::None
    } else if let Some(te) = te {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") {
            RespFraming::Chunked
        } else {
            RespFraming::Close
        }
    } else if let Some(n) = length {
        RespFraming::Length(n)
    } else {
        RespFraming::Close
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // code is 3 digits (httparse checks).
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let n = h.name;
        let skip = hop_by_hop(n)
            || (framing == RespFraming::Chunked && n.len() == 14 && eq(n, "content-length"))
            || (!connection.is_empty() && named_in(n, connection));
        if !skip {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if framing == RespFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if client_close || framing == RespFraming::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(RespHead::Final { len, framing, keep: !up_close && framing != RespFraming::Close })
}

fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8]
}

/// Replays already-read bytes before reading from the inner stream: how a connection that
/// started on the fast path is handed to hyper.
#[derive(Debug)]
pub struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `pre` is read first, then `inner`.
    pub fn new(pre: Bytes, inner: T) -> Self {
        Rewind { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads more into `buf` (always with room, so 0 means end of stream).
async fn fill(s: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    s.read_buf(buf).await
}

async fn fill_timeout(s: &mut TcpStream, buf: &mut BytesMut, t: Duration) -> io::Result<usize> {
    match tokio::time::timeout(t, fill(s, buf)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "proxy-read-timeout")),
    }
}

/// Serves one plain-HTTP client connection (see the module docs).
pub(crate) async fn serve(mut stream: TcpStream, peer: SocketAddr, local: SocketAddr, state: Arc<State>) {
    let facts = ConnFacts {
        peer,
        peer_ip: peer.ip().to_string(),
        port: local.port().to_string(),
        trust_forwarded: state.trust_forwarded,
    };
    let mut c = Client { buf: BytesMut::with_capacity(READ_CHUNK), out: Vec::with_capacity(1024), rbuf: BytesMut::new() };
    // Bytes of `buf` known to hold no end of head (a slow client is not re-parsed per read).
    let mut scanned = 0;
    loop {
        let step = if c.buf.is_empty() {
            Step::More
        } else if head_may_be_complete(&c.buf, &mut scanned) {
            decide(&c.buf, &state.table, &facts, &mut c.out)
        } else if c.buf.len() >= MAX_HEAD {
            Step::Reply { consumed: 0, reply: reply(431, "431 request header fields too large", true) }
        } else {
            Step::More
        };
        if !matches!(step, Step::More) {
            scanned = 0;
        }
        match step {
            Step::More => match fill(&mut stream, &mut c.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Step::Fallback => {
                let pre = std::mem::take(&mut c.buf).freeze();
                drop(c);
                crate::proxy::serve(TokioIo::new(Rewind::new(pre, stream)), peer, local, false, state).await;
                return;
            }
            Step::Reply { consumed, reply } => {
                c.buf.advance(consumed);
                write_reply(&mut c.out, &reply);
                if stream.write_all(&c.out).await.is_err() {
                    return;
                }
                if reply.close {
                    linger(&mut stream).await;
                    return;
                }
            }
            Step::Forward { consumed, fwd, span } => {
                c.buf.advance(consumed);
                let keep = c.exchange(&mut stream, &state, fwd).instrument(span).await;
                if !keep {
                    linger(&mut stream).await;
                    return;
                }
            }
        }
    }
}

/// Whether `buf` may hold a whole head: always while it is small (so garbage is answered on the
/// first read), then only once an empty line (`\n\n` or `\n\r\n`) shows up after what was
/// already scanned. Keeps parsing linear in the head size however it is split.
fn head_may_be_complete(buf: &[u8], scanned: &mut usize) -> bool {
    if buf.len() <= 1024 {
        return true;
    }
    let from = scanned.saturating_sub(2).min(buf.len());
    *scanned = buf.len();
    let tail = &buf[from..];
    tail.iter().enumerate().any(|(i, &b)| {
        b == b'\n' && (tail.get(i + 1) == Some(&b'\n') || (tail.get(i + 1) == Some(&b'\r') && tail.get(i + 2) == Some(&b'\n')))
    })
}

/// Closes gracefully: FIN first, then read and drop what the client still sends (bounded), so
/// our last response is not lost to a reset.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Buffers of one client connection, reused by its requests.
struct Client {
    /// Bytes read from the client and not used yet.
    buf: BytesMut,
    /// Head being written (upstream request, then client response).
    out: Vec<u8>,
    /// Bytes read from the upstream.
    rbuf: BytesMut,
}

/// Why an exchange stopped before a response head could be relayed.
enum Fail {
    /// No endpoint could be connected (the last error, if any).
    Unreachable(Option<ConnectError>),
    /// The upstream failed after the request (or part of it) went out.
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// The request body is over `proxy-body-size`.
    TooLarge,
    /// The request body is malformed (chunked framing).
    BadBody,
    /// The client went away.
    Client,
}

impl Client {
    /// Sends the request whose head is in `out`, relays the response. Returns whether the
    /// client connection stays open.
    async fn exchange(&mut self, client: &mut TcpStream, state: &State, fwd: Forward) -> bool {
        let route = fwd.route.clone();
        let got = tokio::time::timeout(route.read_timeout, self.send(client, state, &fwd)).await;
        let (ep, mut up, head, cut) = match got {
            Ok(Ok(x)) => x,
            Ok(Err(fail)) => {
                let (status, text): (u16, &'static str) = match fail {
                    Fail::Client => return false,
                    Fail::TooLarge => (413, "413 request entity too large"),
                    Fail::BadBody => (400, "400 bad request"),
                    Fail::Unreachable(e) => {
                        tracing::warn!(backend = %route.backend.service, error = ?e, "no endpoint reachable");
                        (502, "502 bad gateway (no endpoint reachable)")
                    }
                    Fail::Upstream(e) => {
                        tracing::warn!(backend = %route.backend.service, error = %e, "upstream error");
                        (502, "502 bad gateway")
                    }
                };
                return self.local(client, status, text, &fwd).await;
            }
            Err(_) => return self.local(client, 504, "504 gateway timeout", &fwd).await,
        };
        let RespHead::Final { len, framing, mut keep } = head else {
            return false;
        };
        if cut {
            // The rest of the request body is still on its way: close after this response.
            keep = false;
            if !fwd.close && framing != RespFraming::Close && self.out.ends_with(b"\r\n\r\n") {
                self.out.truncate(self.out.len() - 2);
                self.out.extend_from_slice(b"connection: close\r\n\r\n");
            }
        }
        tracing::debug!(%ep, "proxied");
        // Head, and the body bytes already read, in one write.
        let rest = &self.rbuf[len..];
        let ok = match framing {
            RespFraming::None => {
                keep &= rest.is_empty();
                client.write_all(&self.out).await.is_ok()
            }
            RespFraming::Length(n) => {
                let have = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                keep &= rest.len() == have;
                self.out.extend_from_slice(&rest[..have]);
                let mut left = n - have as u64;
                let mut ok = client.write_all(&self.out).await.is_ok();
                while ok && left > 0 {
                    self.rbuf.clear();
                    match fill_timeout(&mut up, &mut self.rbuf, route.read_timeout).await {
                        Ok(0) | Err(_) => {
                            ok = false;
                            keep = false;
                            break;
                        }
                        Ok(_) => {}
                    }
                    let take = self.rbuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    keep &= take == self.rbuf.len();
                    left -= take as u64;
                    ok = client.write_all(&self.rbuf[..take]).await.is_ok();
                }
                ok
            }
            RespFraming::Chunked => {
                let mut dec = Chunked::new();
                match dec.feed(rest) {
                    Ok(k) => {
                        keep &= k == rest.len();
                        self.out.extend_from_slice(&rest[..k]);
                        let mut ok = client.write_all(&self.out).await.is_ok();
                        while ok && !dec.done() {
                            self.rbuf.clear();
                            match fill_timeout(&mut up, &mut self.rbuf, route.read_timeout).await {
                                Ok(0) | Err(_) => {
                                    ok = false;
                                    break;
                                }
                                Ok(_) => {}
                            }
                            match dec.feed(&self.rbuf) {
                                Ok(k) => {
                                    keep &= k == self.rbuf.len();
                                    ok = client.write_all(&self.rbuf[..k]).await.is_ok();
                                }
                                Err(_) => ok = false,
                            }
                        }
                        ok && dec.done()
                    }
                    Err(_) => false,
                }
            }
            RespFraming::Close => {
                self.out.extend_from_slice(rest);
                let mut ok = client.write_all(&self.out).await.is_ok();
                while ok {
                    self.rbuf.clear();
                    ok = match fill_timeout(&mut up, &mut self.rbuf, route.read_timeout).await {
                        Ok(0) | Err(_) => false,
                        Ok(_) => client.write_all(&self.rbuf).await.is_ok(),
                    };
                }
                // Done either way: the client learns the end from the close.
                return false;
            }
        };
        if ok && keep {
            state.pool.put_raw(ep, up);
        }
        ok && !fwd.close && !cut
    }

    /// A local answer after the request went (partly) upstream. The client connection stays
    /// only if the request had no body (nothing of it is left unread).
    async fn local(&mut self, client: &mut TcpStream, status: u16, text: &'static str, fwd: &Forward) -> bool {
        let close = fwd.close || fwd.body != BodyKind::Empty;
        write_reply(&mut self.out, &Reply { status, text, location: None, close, head_req: fwd.head_req });
        client.write_all(&self.out).await.is_ok() && !close
    }

    /// Connects (retrying refused connections on the next endpoint), sends head and body, and
    /// reads the response head. A pooled connection found dead before any response byte is
    /// replaced by a fresh one when the request is replayable. The flag: the upstream answered
    /// before the request body was all sent (the client connection must close after).
    async fn send(&mut self, client: &mut TcpStream, state: &State, fwd: &Forward) -> Result<(SocketAddr, TcpStream, RespHead, bool), Fail> {
        let pool = &state.pool;
        let mut eps = fwd.route.backend.pick();
        let mut again: Option<SocketAddr> = None;
        let mut last: Option<ConnectError> = None;
        loop {
            let (ep, fresh_only) = match again.take() {
                Some(ep) => (ep, true),
                None => match eps.next() {
                    Some(ep) => (ep, false),
                    None => return Err(Fail::Unreachable(last)),
                },
            };
            self.rbuf.clear();
            let pooled = if fresh_only { None } else { pool.take_raw(ep) };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(s) => s,
                None => match pool.tcp(ep).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%ep, error = ?e, "endpoint connect failed, trying next");
                        let retry = matches!(e, ConnectError::Retryable(_));
                        last = Some(e);
                        if retry {
                            continue;
                        }
                        return Err(Fail::Unreachable(last));
                    }
                },
            };
            let sent = self.send_body(client, &mut up, fwd).await;
            let err = match sent {
                Ok(()) => match self.read_head(&mut up, fwd).await {
                    Ok(h) => return Ok((ep, up, h, false)),
                    Err(e) => e,
                },
                Err(Sent::Client) => return Err(Fail::Client),
                Err(Sent::TooLarge) => return Err(Fail::TooLarge),
                Err(Sent::BadBody) => return Err(Fail::BadBody),
                Err(Sent::Upstream(e)) => {
                    // The upstream may have answered before taking the whole body (413, 401 ...)
                    // and closed: relay that answer if it came.
                    if fwd.body != BodyKind::Empty {
                        if let Ok(h) = self.read_head(&mut up, fwd).await {
                            return Ok((ep, up, h, true));
                        }
                    }
                    Box::new(e) as Box<dyn std::error::Error + Send + Sync>
                }
            };
            if reused && fwd.replayable && self.rbuf.is_empty() {
                tracing::debug!(%ep, error = %err, "pooled upstream connection was dead, retrying on a new one");
                again = Some(ep);
                continue;
            }
            return Err(Fail::Upstream(err));
        }
    }

    /// Writes the upstream head (in `out`) and the request body.
    async fn send_body(&mut self, client: &mut TcpStream, up: &mut TcpStream, fwd: &Forward) -> Result<(), Sent> {
        match fwd.body {
            BodyKind::Empty => up.write_all(&self.out).await.map_err(Sent::Upstream),
            BodyKind::Length(n) => {
                let have = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                if have <= READ_CHUNK {
                    // Small bodies go with the head; `out` is rebuilt per request.
                    self.out.extend_from_slice(&self.buf[..have]);
                    up.write_all(&self.out).await.map_err(Sent::Upstream)?;
                } else {
                    up.write_all(&self.out).await.map_err(Sent::Upstream)?;
                    up.write_all(&self.buf[..have]).await.map_err(Sent::Upstream)?;
                }
                self.buf.advance(have);
                let mut left = n - have as u64;
                while left > 0 {
                    match fill(client, &mut self.buf).await {
                        Ok(0) | Err(_) => return Err(Sent::Client),
                        Ok(_) => {}
                    }
                    let take = self.buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    up.write_all(&self.buf[..take]).await.map_err(Sent::Upstream)?;
                    self.buf.advance(take);
                    left -= take as u64;
                }
                Ok(())
            }
            BodyKind::Chunked => {
                let limit = fwd.route.body_size;
                let mut dec = Chunked::new();
                let mut first = true;
                loop {
                    let k = dec.feed(&self.buf).map_err(|_| Sent::BadBody)?;
                    if limit.is_some_and(|l| dec.data_len() > l) {
                        return Err(Sent::TooLarge);
                    }
                    if first {
                        self.out.extend_from_slice(&self.buf[..k]);
                        up.write_all(&self.out).await.map_err(Sent::Upstream)?;
                        first = false;
                    } else if k > 0 {
                        up.write_all(&self.buf[..k]).await.map_err(Sent::Upstream)?;
                    }
                    self.buf.advance(k);
                    if dec.done() {
                        return Ok(());
                    }
                    match fill(client, &mut self.buf).await {
                        Ok(0) | Err(_) => return Err(Sent::Client),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    /// Reads the upstream response head into `rbuf` (skipping 1xx interim responses) and
    /// writes the client's head into `out`.
    async fn read_head(&mut self, up: &mut TcpStream, fwd: &Forward) -> Result<RespHead, Box<dyn std::error::Error + Send + Sync>> {
        self.rbuf.clear();
        loop {
            let n = fill(up, &mut self.rbuf).await?;
            if n == 0 {
                return Err(Box::new(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed before a response")));
            }
            loop {
                match response_head(&self.rbuf, fwd.head_req, fwd.close, &mut self.out)? {
                    RespHead::Partial => break,
                    RespHead::Interim(len) => self.rbuf.advance(len),
                    h @ RespHead::Final { .. } => return Ok(h),
                }
            }
        }
    }
}

/// Why sending the request failed.
enum Sent {
    Client,
    TooLarge,
    BadBody,
    Upstream(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-trailer: yes\r\n\r\n";

    #[test]
    fn chunked_whole_and_split_at_every_byte() {
        let mut d = Chunked::new();
        let mut with_next = BODY.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(d.feed(&with_next), Ok(BODY.len()));
        assert!(d.done());
        assert_eq!(d.data_len(), 23);
        for cut in 0..BODY.len() {
            let mut d = Chunked::new();
            let a = d.feed(&BODY[..cut]).expect("first part");
            assert_eq!(a, cut);
            assert!(!d.done(), "cut {cut}");
            assert_eq!(d.feed(&BODY[cut..]), Ok(BODY.len() - cut), "cut {cut}");
            assert!(d.done());
            assert_eq!(d.data_len(), 23);
        }
        // Byte by byte.
        let mut d = Chunked::new();
        for (i, b) in BODY.iter().enumerate() {
            assert_eq!(d.feed(std::slice::from_ref(b)), Ok(1), "byte {i}");
        }
        assert!(d.done());
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        for bad in [&b"x\r\n"[..], b"\r\n", b"4\r\nWikiX\r\n", b"4\nWiki", b"11111111111111111\r\n", b"0\r\nbad\n", b"4\r\nWiki\r\n0\r\n\n"] {
            let mut d = Chunked::new();
            assert_eq!(d.feed(bad), Err(ChunkError), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn table_for(host: &str) -> crate::SharedTable {
        use serde_json::json;
        let svc = serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "d"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .expect("svc");
        let slice = serde_json::from_value(json!({"metadata": {"name": "s-1", "namespace": "d",
            "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}))
        .expect("slice");
        let ing = serde_json::from_value(json!({"metadata": {"name": "i", "namespace": "d"},
            "spec": {"ingressClassName": "dari", "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s", "port": {"number": 80}}}}]}}]}}))
        .expect("ingress");
        let t = crate::build(&[ing], &[svc], &[slice], &[], &[], &crate::IngressConfig::default());
        Arc::new(arc_swap::ArcSwap::from_pointee(t))
    }

    fn facts(trust: bool) -> ConnFacts {
        ConnFacts { peer: SocketAddr::from(([192, 0, 2, 7], 5555)), peer_ip: "192.0.2.7".into(), port: "80".into(), trust_forwarded: trust }
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_sets_forwarded() {
        let t = table_for("a.com");
        let mut out = Vec::new();
        let req = b"GET /x?y=1 HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 9.9.9.9\r\nAccept: */*\r\n\r\nNEXT";
        let Step::Forward { consumed, fwd, .. } = decide(req, &t, &facts(false), &mut out) else { panic!("not forwarded") };
        assert_eq!(consumed, req.len() - 4);
        assert_eq!(fwd.body, BodyKind::Empty);
        assert!(fwd.replayable && !fwd.close && !fwd.head_req);
        let head = String::from_utf8(out.clone()).expect("utf8");
        assert_eq!(
            head,
            "GET /x?y=1 HTTP/1.1\r\nHost: a.com\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a.com\r\nx-forwarded-port: 80\r\n\r\n"
        );
        // Trusted: X-Forwarded-For appended to, -Proto kept.
        let Step::Forward { .. } = decide(req, &t, &facts(true), &mut out) else { panic!("not forwarded") };
        let head = String::from_utf8(out).expect("utf8");
        assert!(head.contains("x-forwarded-for: 1.2.3.4, 192.0.2.7\r\n"), "{head}");
        assert!(head.contains("X-Forwarded-Proto: https\r\n") && !head.contains("x-forwarded-proto"), "{head}");
    }

    #[test]
    fn decide_local_answers_and_fallbacks() {
        let t = table_for("a.com");
        let mut out = Vec::new();
        let f = facts(false);
        let status = |s: Step| match s {
            Step::Reply { reply, .. } => format!("{} close={}", reply.status, reply.close),
            Step::Fallback => "fallback".into(),
            Step::More => "more".into(),
            Step::Forward { fwd, .. } => format!("forward {:?}", fwd.body),
        };
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\r\nHost: b.com\r\n\r\n", "404 close=false"),
            (b"POST / HTTP/1.1\r\nHost: b.com\r\nContent-Length: 3\r\n\r\nabc", "404 close=true"),
            (b"GET / HTTP/1.1\r\nHost: a.com\r\n", "more"),
            (b"GET / HTTP/1.1\r\nHost a.com\r\n\r\n", "400 close=true"),
            (b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n", "400 close=true"),
            (b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "400 close=true"),
            (b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400 close=true"),
            (b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "fallback"),
            (b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n", "forward Chunked"),
            (b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 7\r\n\r\n", "forward Length(7)"),
            (b"GET / HTTP/1.0\r\nHost: a.com\r\n\r\n", "fallback"),
            (b"GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", "fallback"),
            (b"GET / HTTP/1.1\r\nHost: a.com\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "fallback"),
            (b"PUT / HTTP/1.1\r\nHost: a.com\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", "fallback"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "fallback"),
            (b"\x16\x03\x01\x02\x00\x01", "400 close=true"),
        ];
        for (req, want) in cases {
            assert_eq!(status(decide(req, &t, &f, &mut out)), *want, "{}", String::from_utf8_lossy(req));
        }
        let big = format!("GET / HTTP/1.1\r\nHost: a.com\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(decide(big.as_bytes(), &t, &f, &mut out)), "431 close=true");
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a.com\r\n{many}\r\n");
        assert_eq!(status(decide(many.as_bytes(), &t, &f, &mut out)), "431 close=true");
    }

    /// Mutated and truncated messages (deterministic xorshift): the parsers answer, never panic.
    #[test]
    fn parsers_never_panic_on_garbage() {
        let t = table_for("a.com");
        let f = facts(true);
        let seeds: [&[u8]; 4] = [
            b"POST /a?b HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\nConnection: close, x\r\nX-Forwarded-For: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.com:80\r\nContent-Length: 12\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: x-a\r\nContent-Length: 3\r\n\r\n",
            BODY,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let seed = seeds[(next() % 4) as usize];
            let mut m = seed.to_vec();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            m.truncate((next() as usize) % (m.len() + 1));
            let _ = decide(&m, &t, &f, &mut out);
            let _ = response_head(&m, next() % 2 == 0, false, &mut out);
            let _ = Chunked::new().feed(&m);
            let _ = head_may_be_complete(&m, &mut ((next() as usize) % (m.len() + 8)));
        }
    }

    #[test]
    fn head_scan_is_incremental() {
        let mut scanned = 0;
        assert!(head_may_be_complete(b"GET / HTTP/1.1\r\n", &mut scanned), "small buffers are always parsed");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        big.extend_from_slice(b"\r\n\r");
        assert!(!head_may_be_complete(&big, &mut scanned));
        assert_eq!(scanned, big.len());
        // The empty line completes across the previous scan's end.
        big.push(b'\n');
        assert!(head_may_be_complete(&big, &mut scanned));
        let mut lf = big[..big.len() - 4].to_vec();
        lf.extend_from_slice(b"\n\n");
        assert!(head_may_be_complete(&lf, &mut 0));
    }

    #[test]
    fn response_framing() {
        let mut out = Vec::new();
        let r = |s: &[u8], head: bool| response_head(s, head, false, &mut Vec::new());
        assert!(matches!(r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false), Ok(RespHead::Final { len: 38, framing: RespFraming::Length(5), keep: true })));
        assert!(matches!(r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true), Ok(RespHead::Final { framing: RespFraming::None, keep: true, .. })));
        assert!(matches!(r(b"HTTP/1.1 204 No Content\r\n\r\n", false), Ok(RespHead::Final { framing: RespFraming::None, .. })));
        assert!(matches!(r(b"HTTP/1.1 200 OK\r\n\r\n", false), Ok(RespHead::Final { framing: RespFraming::Close, keep: false, .. })));
        assert!(matches!(r(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false), Ok(RespHead::Final { keep: false, .. })));
        assert!(matches!(r(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false), Ok(RespHead::Final { keep: false, .. })));
        assert!(matches!(r(b"HTTP/1.1 100 Continue\r\n\r\n", false), Ok(RespHead::Interim(25))));
        assert!(matches!(r(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false), Ok(RespHead::Partial)));
        assert!(r(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(r(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
        assert!(r(b"garbage\r\n\r\n", false).is_err());
        let h = response_head(
            b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: x-hop\r\nX-Hop: 1\r\nServer: up\r\n\r\n",
            false,
            true,
            &mut out,
        );
        assert!(matches!(h, Ok(RespHead::Final { framing: RespFraming::Chunked, .. })));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 Fine\r\nServer: up\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
