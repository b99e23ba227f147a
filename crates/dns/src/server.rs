//! The DNS server: UDP and TCP listeners on one address over a shared [`DnsState`].
//!
//! Answers from the index and cache hits are computed inline on the receiving task (first on the wire by
//! [`crate::fast`], else through hickory messages), from a per-task [`Snapshot`] of the index refreshed
//! only when a generation counter moves; forwarded queries go to a spawned task so one slow upstream does
//! not hold up the socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tracing::{debug, debug_span, trace_span, Instrument};

use crate::cache::{Cache, CacheKey};
use crate::config::{AnswerConfig, DnsConfig};
use crate::error::DnsError;
use crate::fast;
use crate::forward::{relay, servfail, Forwarder};
use crate::index::ClusterIndex;
use crate::metrics::Metrics;
use crate::wire::{self, encode, handle_packet, limit, Handled, Transport};

/// How long a TCP connection may sit idle between queries.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// UDP receiving tasks per socket.
pub const UDP_WORKERS: usize = 2;

/// Everything the listeners share: the index, the config, the cache, the forwarder and the metrics.
#[derive(Debug)]
pub struct DnsState {
    index: RwLock<Arc<ClusterIndex>>,
    answer_cfg: RwLock<Arc<AnswerConfig>>,
    cache: RwLock<Arc<Cache>>,
    forwarder: Forwarder,
    metrics: Metrics,
    synced: AtomicBool,
    serving: AtomicBool,
    /// Bumped on every index or config swap, so receive loops re-read their [`Snapshot`] only then.
    generation: AtomicU64,
}

/// A receive loop's copy of the index and answer config: refreshed when [`DnsState`]'s generation moves,
/// so the per-query path takes no lock and touches no shared reference count.
struct Snapshot {
    generation: u64,
    index: Arc<ClusterIndex>,
    cfg: Arc<AnswerConfig>,
    cache: Arc<Cache>,
}

impl Snapshot {
    fn of(state: &DnsState) -> Self {
        // generation first: a swap racing with this read is seen again on the next packet
        let generation = state.generation.load(Ordering::Acquire);
        Snapshot {
            generation,
            index: read(&state.index),
            cfg: read(&state.answer_cfg),
            cache: read(&state.cache),
        }
    }

    fn refresh(&mut self, state: &DnsState) {
        if state.generation.load(Ordering::Acquire) != self.generation {
            *self = Snapshot::of(state);
        }
    }
}

fn read<T>(l: &RwLock<Arc<T>>) -> Arc<T> {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(l: &RwLock<Arc<T>>, v: T) {
    *l.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
}

/// What the fast path decided.
enum Step {
    Done(Option<Vec<u8>>),
    Forward(Box<Message>, CacheKey),
}

impl DnsState {
    /// State for `cfg` with the given upstreams (from [`DnsConfig::upstreams`] normally) and an empty index.
    pub fn new(cfg: &DnsConfig, upstreams: Vec<SocketAddr>) -> Result<Arc<Self>, DnsError> {
        Ok(Arc::new(DnsState {
            index: RwLock::new(Arc::new(ClusterIndex::default())),
            answer_cfg: RwLock::new(Arc::new(AnswerConfig::new(cfg)?)),
            cache: RwLock::new(Arc::new(Cache::new(cfg.cache_size, cfg.cache))),
            forwarder: Forwarder::new(upstreams, Duration::from_millis(cfg.upstream_timeout_ms)),
            metrics: Metrics::default(),
            synced: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }))
    }

    /// Applies a reloaded config: answer settings, upstreams, and a new cache when its settings changed.
    pub fn apply_config(&self, cfg: &DnsConfig, upstreams: Vec<SocketAddr>) -> Result<(), DnsError> {
        write(&self.answer_cfg, AnswerConfig::new(cfg)?);
        self.forwarder.set_upstreams(upstreams);
        write(&self.cache, Cache::new(cfg.cache_size, cfg.cache));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Swaps in a new index.
    pub fn set_index(&self, index: ClusterIndex) {
        write(&self.index, index);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The current index.
    pub fn index(&self) -> Arc<ClusterIndex> {
        read(&self.index)
    }

    /// Marks the index as synced with the API (readiness).
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
    }

    /// Ready: the listeners are up and the index has been synced once.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && self.serving.load(Ordering::Relaxed)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The forwarder (for its health).
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Entries in the cache.
    pub fn cache_len(&self) -> usize {
        read(&self.cache).len()
    }

    fn finish(&self, bytes: Option<Vec<u8>>, start: Instant) -> Option<Vec<u8>> {
        match &bytes {
            Some(b) if b.len() >= wire::HEADER_LEN => {
                let rcode = hickory_proto::op::ResponseCode::from(0, b[3] & 0x0f);
                if b[2] & 0x02 != 0 {
                    self.metrics.truncated();
                }
                self.metrics.response(rcode, start.elapsed());
            }
            _ => self.metrics.dropped(),
        }
        bytes
    }

    /// The allocation-free path ([`fast::try_answer`]): `true` when `out` holds the reply.
    fn fastest(&self, buf: &[u8], transport: Transport, snap: &Snapshot, start: Instant, out: &mut Vec<u8>) -> bool {
        if fast::try_answer(buf, transport, &snap.index, &snap.cfg, out) {
            self.metrics.request(transport == Transport::Tcp);
            self.metrics.response(hickory_proto::op::ResponseCode::NoError, start.elapsed());
            return true;
        }
        if fast::try_cached(buf, transport, &snap.cache, &snap.cfg, start, out) {
            self.metrics.request(transport == Transport::Tcp);
            self.metrics.forwarded();
            self.metrics.cache(true);
            let rcode = hickory_proto::op::ResponseCode::from(0, out[3] & 0x0f);
            self.metrics.response(rcode, start.elapsed());
            return true;
        }
        false
    }

    fn fast(&self, buf: &[u8], transport: Transport, snap: &Snapshot, start: Instant) -> Step {
        self.metrics.request(transport == Transport::Tcp);
        let (index, cfg) = (&snap.index, &snap.cfg);
        match handle_packet(buf, transport, index, cfg) {
            Handled::Drop => Step::Done(self.finish(None, start)),
            Handled::Reply(b) => Step::Done(self.finish(Some(b), start)),
            Handled::Forward(query) => {
                self.metrics.forwarded();
                let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
                let Some(q) = query.queries.first() else {
                    return Step::Done(self.finish(None, start));
                };
                let key = CacheKey::new(q, dnssec_ok);
                if let Some(hit) = snap.cache.get(&key, start) {
                    self.metrics.cache(true);
                    let resp = relay(&query, &hit, cfg);
                    return Step::Done(self.finish(encode(&resp, limit(&query, transport, cfg)), start));
                }
                self.metrics.cache(false);
                Step::Forward(Box::new(query), key)
            }
        }
    }

    async fn forward(&self, query: Message, key: CacheKey, transport: Transport, start: Instant) -> Option<Vec<u8>> {
        let cfg = read(&self.answer_cfg);
        let resp = match self.forwarder.resolve(&query, &self.metrics).await {
            Ok(mut up) => {
                let cache = read(&self.cache);
                cache.cap_ttls(&mut up);
                cache.put(key, &up, Instant::now());
                relay(&query, &up, &cfg)
            }
            Err(e) => {
                debug!(error = %e, "forwarding failed");
                servfail(&query, &cfg)
            }
        };
        self.finish(encode(&resp, limit(&query, transport, &cfg)), start)
    }

    /// Starts a background refresh of every key the cache queued for prefetch (see
    /// [`crate::cache`]): each is resolved upstream and stored again, answering no client.
    pub fn spawn_prefetches(self: &Arc<Self>) {
        let cache = read(&self.cache);
        if !cache.has_prefetch() {
            return;
        }
        for key in cache.take_prefetch() {
            let (state, cache) = (self.clone(), cache.clone());
            tokio::spawn(
                async move {
                    let Some((q, dnssec_ok)) = key.question() else { return };
                    let mut query = Message::new(0, hickory_proto::op::MessageType::Query, hickory_proto::op::OpCode::Query);
                    query.queries.push(q);
                    if dnssec_ok {
                        let mut edns = hickory_proto::op::Edns::new();
                        edns.set_dnssec_ok(true);
                        query.edns = Some(edns);
                    }
                    match state.forwarder.resolve(&query, &state.metrics).await {
                        Ok(mut up) => {
                            cache.cap_ttls(&mut up);
                            cache.put(key, &up, Instant::now());
                        }
                        Err(e) => debug!(error = %e, "prefetch failed"),
                    }
                }
                .instrument(debug_span!("dns_prefetch")),
            );
        }
    }

    /// Handles one packet completely (forwarding included): the bytes to send back, if any.
    pub async fn handle(&self, buf: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let start = Instant::now();
        let snap = Snapshot::of(self);
        let mut out = Vec::new();
        if self.fastest(buf, transport, &snap, start, &mut out) {
            return Some(out);
        }
        match self.fast(buf, transport, &snap, start) {
            Step::Done(b) => b,
            Step::Forward(q, key) => self.forward(*q, key, transport, start).await,
        }
    }
}

/// Bound UDP and TCP listeners; [`DnsServer::run`] serves until a listener fails.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    addr: SocketAddr,
    state: Arc<DnsState>,
}

impl DnsServer {
    /// Binds UDP on `addr` and TCP on the same address and port (the UDP port when `addr` has port 0).
    pub async fn bind(addr: SocketAddr, state: Arc<DnsState>) -> Result<Self, DnsError> {
        let mut tries = 0;
        loop {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| DnsError::Bind { proto: "udp", addr, source })?;
            let bound = udp
                .local_addr()
                .map_err(|source| DnsError::Bind { proto: "udp", addr, source })?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => {
                    return Ok(DnsServer {
                        udp: Arc::new(udp),
                        tcp,
                        addr: bound,
                        state,
                    })
                }
                // port 0: the UDP port may be taken for TCP; pick another
                Err(_) if addr.port() == 0 && tries < 20 => tries += 1,
                Err(source) => return Err(DnsError::Bind { proto: "tcp", addr: bound, source }),
            }
        }
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until a listener fails.
    pub async fn run(self) -> Result<(), DnsError> {
        let DnsServer { udp, tcp, addr, state } = self;
        state.serving.store(true, Ordering::Relaxed);
        let mut tasks: JoinSet<Result<(), DnsError>> = JoinSet::new();
        for _ in 0..UDP_WORKERS {
            tasks.spawn(udp_worker(udp.clone(), state.clone(), addr));
        }
        tasks.spawn(tcp_accept(tcp, state.clone(), addr));
        let res = match tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Err(DnsError::TaskEnded { task: "dns listener" }),
        };
        state.serving.store(false, Ordering::Relaxed);
        tasks.abort_all();
        res
    }
}

async fn udp_worker(sock: Arc<UdpSocket>, state: Arc<DnsState>, addr: SocketAddr) -> Result<(), DnsError> {
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(1232);
    let mut snap = Snapshot::of(&state);
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here on some systems: not fatal
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused || e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(source) => return Err(DnsError::Serve { proto: "udp", addr, source }),
        };
        let start = Instant::now();
        snap.refresh(&state);
        // one span per query; at the default level it is disabled and costs a load
        let step = trace_span!("dns_query", proto = "udp", %peer).in_scope(|| {
            if state.fastest(&buf[..n], Transport::Udp, &snap, start, &mut out) {
                None
            } else {
                Some(state.fast(&buf[..n], Transport::Udp, &snap, start))
            }
        });
        let Some(step) = step else {
            let _ = sock.send_to(&out, peer).await;
            if snap.cache.has_prefetch() {
                state.spawn_prefetches();
            }
            continue;
        };
        match step {
            Step::Done(Some(reply)) => {
                let _ = sock.send_to(&reply, peer).await;
            }
            Step::Done(None) => {}
            Step::Forward(query, key) => {
                let (sock, state) = (sock.clone(), state.clone());
                let span = debug_span!("dns_forward", %peer, proto = "udp");
                tokio::spawn(
                    async move {
                        if let Some(reply) = state.forward(*query, key, Transport::Udp, start).await {
                            let _ = sock.send_to(&reply, peer).await;
                        }
                    }
                    .instrument(span),
                );
            }
        }
        if snap.cache.has_prefetch() {
            state.spawn_prefetches();
        }
    }
}

async fn tcp_accept(listener: TcpListener, state: Arc<DnsState>, addr: SocketAddr) -> Result<(), DnsError> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            Err(source) => return Err(DnsError::Serve { proto: "tcp", addr, source }),
        };
        let state = state.clone();
        tokio::spawn(tcp_conn(stream, state).instrument(debug_span!("dns_tcp_conn", %peer)));
    }
}

async fn tcp_conn(mut stream: TcpStream, state: Arc<DnsState>) {
    let _ = stream.set_nodelay(true);
    loop {
        let mut lenb = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut lenb)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = usize::from(u16::from_be_bytes(lenb));
        let mut buf = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = state.handle(&buf, Transport::Tcp).await;
        state.spawn_prefetches();
        let Some(reply) = reply else {
            // a packet too broken to answer: close, as servers do
            return;
        };
        let Ok(rlen) = u16::try_from(reply.len()) else { return };
        let mut out = rlen.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
