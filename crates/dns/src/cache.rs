//! The forwarding cache: bounded, TTL-respecting, positive and negative.
//!
//! Keys are (lower-case name, type, class, DO bit). A positive answer is kept for the smallest TTL of its
//! answer records, a negative one (NXDOMAIN, or NOERROR with no answer) for the SOA's negative TTL
//! (min of its TTL and MINIMUM, RFC 2308); both are capped at the configured maximum. SERVFAIL and
//! truncated answers are not kept. Served copies have their TTLs decreased by the time spent in the cache.
//!
//! Prefetch (CoreDNS `cache { prefetch }`, kresd's default): a hit in the last tenth of an entry's
//! lifetime queues the key once ([`Cache::take_prefetch`]); the server refreshes it from upstream in
//! the background, so a busy name never expires into a miss that waits for the upstream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// A cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The name, lower case, in text form (compact: a `Name` is ten times larger).
    name: Box<str>,
    rtype: RecordType,
    class: DNSClass,
    dnssec_ok: bool,
}

impl CacheKey {
    /// A key from its parts: `name` lower case, in `Name::to_ascii` form (with the trailing dot).
    pub fn from_parts(name: String, rtype: RecordType, class: DNSClass, dnssec_ok: bool) -> Self {
        CacheKey {
            name: name.into_boxed_str(),
            rtype,
            class,
            dnssec_ok,
        }
    }

    /// The question this key stands for, and its DO bit.
    pub fn question(&self) -> Option<(Query, bool)> {
        let name = hickory_proto::rr::Name::from_ascii(&*self.name).ok()?;
        let mut q = Query::query(name, self.rtype);
        q.set_query_class(self.class);
        Some((q, self.dnssec_ok))
    }

    /// The key of a question.
    pub fn new(q: &Query, dnssec_ok: bool) -> Self {
        CacheKey {
            name: q.name.to_lowercase().to_ascii().into_boxed_str(),
            rtype: q.query_type,
            class: q.query_class,
            dnssec_ok,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// The response in wire format, without EDNS: a few dozen bytes where a parsed `Message` takes
    /// kilobytes.
    wire: Box<[u8]>,
    stored: Instant,
    ttl: Duration,
    /// A refresh was queued for it (a fresh `put` replaces the entry and clears this).
    prefetch_queued: bool,
}

/// Lock shards: the server's threads look entries up concurrently, and a thread descheduled while
/// holding the only lock stalls every other one for a time slice (milliseconds of tail latency).
const SHARDS: usize = 16;

/// The cache. `max_ttl` of zero or `capacity` of zero turn it off.
#[derive(Debug)]
pub struct Cache {
    /// Entries, spread over [`SHARDS`] locks by a hash of the key.
    shards: Box<[Mutex<HashMap<CacheKey, Entry>>]>,
    /// Entries over all shards (kept under the shard locks; the bound is on this total).
    count: std::sync::atomic::AtomicUsize,
    capacity: usize,
    max_ttl: u32,
    /// Keys to refresh (see the module docs); `pending` says whether any are queued without a lock.
    prefetch: Mutex<Vec<CacheKey>>,
    pending: std::sync::atomic::AtomicBool,
}

/// Entries shorter-lived than this are not prefetched (the refresh would cost more than a miss).
const PREFETCH_MIN_TTL: Duration = Duration::from_secs(10);

/// How long `msg` may be cached, in seconds (0: not at all).
pub fn cache_ttl(msg: &Message, max_ttl: u32) -> u32 {
    if msg.metadata.truncation {
        return 0;
    }
    let ttl = match msg.metadata.response_code {
        ResponseCode::NoError if !msg.answers.is_empty() => msg.answers.iter().map(|r| r.ttl).min().unwrap_or(0),
        ResponseCode::NoError | ResponseCode::NXDomain => msg
            .authorities
            .iter()
            .filter_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .min()
            .unwrap_or(0),
        _ => 0,
    };
    ttl.min(max_ttl)
}

/// Skips a (possibly compressed) name at `at`; the offset after it.
fn skip_name(w: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *w.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l < 64 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// Decreases every record TTL of a wire message by `age` seconds.
fn age_ttls(w: &mut [u8], age: u32) -> Option<()> {
    fn count(w: &[u8], i: usize) -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([*w.get(i)?, *w.get(i + 1)?])))
    }
    let (qd, records) = (count(w, 4)?, count(w, 6)? + count(w, 8)? + count(w, 10)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(w, at)? + 4;
    }
    for _ in 0..records {
        at = skip_name(w, at)?;
        let ttl_at = at + 4;
        let ttl = u32::from_be_bytes(w.get(ttl_at..ttl_at + 4)?.try_into().ok()?);
        w.get_mut(ttl_at..ttl_at + 4)?.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        at = ttl_at + 6 + count(w, ttl_at + 4)?;
    }
    (at == w.len()).then_some(())
}

impl Cache {
    /// A cache holding at most `capacity` entries for at most `max_ttl` seconds each.
    pub fn new(capacity: usize, max_ttl: u32) -> Self {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: std::sync::atomic::AtomicUsize::new(0),
            capacity,
            max_ttl,
            prefetch: Mutex::new(Vec::new()),
            pending: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The shard holding `key` (FNV-1a over the name and type: cheap, and names are not chosen
    /// by an attacker who could also see the distribution).
    fn lock(&self, key: &CacheKey) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry>> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.name.bytes().chain(u16::from(key.rtype).to_be_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let i = usize::try_from(h % SHARDS as u64).unwrap_or(0);
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn removed(&self, n: usize) {
        self.count.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues `key` for a refresh when `entry` is in the last tenth of its lifetime (once).
    fn maybe_prefetch(&self, key: &CacheKey, entry: &mut Entry, age: Duration) {
        if entry.prefetch_queued || entry.ttl < PREFETCH_MIN_TTL || (entry.ttl - age) * 10 > entry.ttl {
            return;
        }
        entry.prefetch_queued = true;
        self.prefetch.lock().unwrap_or_else(|e| e.into_inner()).push(key.clone());
        self.pending.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether keys are queued for a refresh (cheap: no lock).
    pub fn has_prefetch(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The keys to refresh from upstream now (each hit entry once, near its expiry).
    pub fn take_prefetch(&self) -> Vec<CacheKey> {
        self.pending.store(false, std::sync::atomic::Ordering::Release);
        std::mem::take(&mut *self.prefetch.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The cached upstream response for `key` at `now`, TTLs decreased by its age.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Message> {
        let mut map = self.lock(key);
        let entry = map.get_mut(key)?;
        let age = now.saturating_duration_since(entry.stored);
        if age >= entry.ttl {
            map.remove(key);
            self.removed(1);
            return None;
        }
        self.maybe_prefetch(key, entry, age);
        let age_secs = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let Ok(mut msg) = Message::from_vec(&entry.wire) else {
            map.remove(key);
            self.removed(1);
            return None;
        };
        for r in msg.answers.iter_mut().chain(msg.authorities.iter_mut()).chain(msg.additionals.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age_secs);
        }
        Some(msg)
    }

    /// The cached upstream response for `key` at `now` in wire form, appended to `out`, its TTLs
    /// decreased by its age; `None` when absent, expired or unreadable.
    pub fn get_wire(&self, key: &CacheKey, now: Instant, out: &mut Vec<u8>) -> Option<()> {
        let start = out.len();
        {
            let mut map = self.lock(key);
            let entry = map.get_mut(key)?;
            let age = now.saturating_duration_since(entry.stored);
            if age >= entry.ttl {
                return None;
            }
            self.maybe_prefetch(key, entry, age);
            out.extend_from_slice(&entry.wire);
            let age_secs = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
            if age_secs == 0 {
                return Some(());
            }
            drop(map);
            let ok = age_ttls(&mut out[start..], age_secs);
            if ok.is_none() {
                out.truncate(start);
            }
            ok
        }
    }

    /// Stores an upstream response (when cacheable). Returns whether it was stored.
    pub fn put(&self, key: CacheKey, msg: &Message, now: Instant) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let ttl = cache_ttl(msg, self.max_ttl);
        if ttl == 0 {
            return false;
        }
        let mut stored = msg.clone();
        stored.edns = None;
        stored.signature = None;
        let Ok(wire) = stored.to_vec() else {
            return false;
        };
        use std::sync::atomic::Ordering::Relaxed;
        let mut map = self.lock(&key);
        if self.count.load(Relaxed) >= self.capacity && !map.contains_key(&key) {
            // full: sweep this shard's expired entries, then drop an eighth of it (arbitrary
            // ones) so that the sweep stays rare
            let before = map.len();
            map.retain(|_, e| now.saturating_duration_since(e.stored) < e.ttl);
            self.removed(before - map.len());
            if self.count.load(Relaxed) >= self.capacity {
                let drop_n = (map.len() / 8).max(1).min(map.len());
                let victims: Vec<CacheKey> = map.keys().take(drop_n).cloned().collect();
                for k in victims {
                    map.remove(&k);
                }
                self.removed(drop_n);
                if self.count.load(Relaxed) >= self.capacity {
                    // nothing to drop here: the other shards hold the cache
                    return false;
                }
            }
        }
        let fresh = map
            .insert(
                key,
                Entry {
                    wire: wire.into_boxed_slice(),
                    stored: now,
                    ttl: Duration::from_secs(u64::from(ttl)),
                    prefetch_queued: false,
                },
            )
            .is_none();
        if fresh {
            self.count.fetch_add(1, Relaxed);
        }
        true
    }

    /// Caps every TTL in `msg` at the cache's maximum (what clients see matches what is cached).
    pub fn cap_ttls(&self, msg: &mut Message) {
        if self.max_ttl == 0 || self.capacity == 0 {
            return;
        }
        for r in msg.answers.iter_mut().chain(msg.authorities.iter_mut()).chain(msg.additionals.iter_mut()) {
            r.ttl = r.ttl.min(self.max_ttl);
        }
    }

    /// Number of entries (live or not yet swept).
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn positive(ttl: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.answers.push(Record::from_rdata(name("a.example."), ttl, RData::A(A::new(192, 0, 2, 1))));
        m
    }

    fn negative(soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(name("ns.example."), name("h.example."), 1, 1, 1, 1, minimum);
        m.authorities.push(Record::from_rdata(name("example."), soa_ttl, RData::SOA(soa)));
        m
    }

    fn key(s: &str) -> CacheKey {
        CacheKey::new(&Query::query(name(s), RecordType::A), false)
    }

    #[test]
    fn ttls() {
        assert_eq!(cache_ttl(&positive(300), 30), 30);
        assert_eq!(cache_ttl(&positive(7), 30), 7);
        assert_eq!(cache_ttl(&negative(60, 10), 30), 10);
        let mut fail = positive(300);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&fail, 30), 0);
    }

    #[test]
    fn prefetch_queues_a_hit_near_expiry_once() {
        let c = Cache::new(10, 300);
        let t0 = Instant::now();
        assert!(c.put(key("a.example."), &positive(100), t0));
        let mut out = Vec::new();
        // early in its life: no refresh
        assert!(c.get_wire(&key("a.example."), t0 + Duration::from_secs(50), &mut out).is_some());
        assert!(!c.has_prefetch());
        // in the last tenth: queued once, however often it is hit
        assert!(c.get_wire(&key("a.example."), t0 + Duration::from_secs(91), &mut out).is_some());
        assert!(c.get(&key("a.example."), t0 + Duration::from_secs(92)).is_some());
        assert!(c.has_prefetch());
        let keys = c.take_prefetch();
        assert_eq!(keys, vec![key("a.example.")]);
        assert!(!c.has_prefetch());
        let (q, dnssec_ok) = keys[0].question().unwrap();
        assert_eq!((q.name().to_ascii().as_str(), q.query_type(), dnssec_ok), ("a.example.", RecordType::A, false));
        assert!(c.get(&key("a.example."), t0 + Duration::from_secs(95)).is_some());
        assert!(!c.has_prefetch(), "queued twice");
        // refreshed: a new lifetime, and it may be queued again near its end
        assert!(c.put(key("a.example."), &positive(100), t0 + Duration::from_secs(96)));
        assert!(c.get(&key("a.example."), t0 + Duration::from_secs(190)).is_some());
        assert_eq!(c.take_prefetch().len(), 1);
        // short-lived entries are left to expire
        assert!(c.put(key("b.example."), &positive(5), t0));
        assert!(c.get(&key("b.example."), t0 + Duration::from_millis(4800)).is_some());
        assert!(!c.has_prefetch());
    }

    #[test]
    fn expiry_and_ttl_decrement() {
        let c = Cache::new(10, 30);
        let t0 = Instant::now();
        assert!(c.put(key("a.example."), &positive(10), t0));
        let got = c.get(&key("A.Example."), t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(got.answers[0].ttl, 6);
        assert!(c.get(&key("a.example."), t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn bounded() {
        let c = Cache::new(16, 30);
        let t0 = Instant::now();
        for i in 0..100 {
            c.put(key(&format!("n{i}.example.")), &positive(30), t0);
            assert!(c.len() <= 16);
        }
    }
}
