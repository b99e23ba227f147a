//! Prometheus metrics: counters and a latency histogram in atomics, rendered in the text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;

use crate::render::rcode_name;

/// Latency histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

const RCODES: [ResponseCode; 7] = [
    ResponseCode::NoError,
    ResponseCode::FormErr,
    ResponseCode::ServFail,
    ResponseCode::NXDomain,
    ResponseCode::NotImp,
    ResponseCode::Refused,
    ResponseCode::BADVERS,
];

/// The DNS server's metrics. Cheap to update from many tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    requests_udp: AtomicU64,
    requests_tcp: AtomicU64,
    rcodes: [AtomicU64; 8],
    dropped: AtomicU64,
    truncated: AtomicU64,
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    upstream_failures: AtomicU64,
    buckets: [AtomicU64; 14],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A request arrived (`tcp` false for UDP).
    pub fn request(&self, tcp: bool) {
        inc(if tcp { &self.requests_tcp } else { &self.requests_udp });
    }
    /// A response with `rcode` was sent, `elapsed` after the request arrived.
    pub fn response(&self, rcode: ResponseCode, elapsed: Duration) {
        let i = RCODES.iter().position(|r| *r == rcode).unwrap_or(RCODES.len());
        if let Some(c) = self.rcodes.get(i) {
            inc(c);
        }
        let secs = elapsed.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *b {
                inc(c);
            }
        }
        inc(&self.latency_count);
        self.latency_sum_micros
            .fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    /// A packet got no answer.
    pub fn dropped(&self) {
        inc(&self.dropped);
    }
    /// A UDP answer was truncated.
    pub fn truncated(&self) {
        inc(&self.truncated);
    }
    /// A query went to the forwarder.
    pub fn forwarded(&self) {
        inc(&self.forwarded);
    }
    /// Cache hit or miss.
    pub fn cache(&self, hit: bool) {
        inc(if hit { &self.cache_hits } else { &self.cache_misses });
    }
    /// An upstream attempt failed.
    pub fn upstream_failure(&self) {
        inc(&self.upstream_failures);
    }
    /// Number of cache hits so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut o = String::new();
        let _ = writeln!(o, "# HELP dari_dns_requests_total DNS requests received.");
        let _ = writeln!(o, "# TYPE dari_dns_requests_total counter");
        let _ = writeln!(o, "dari_dns_requests_total{{proto=\"udp\"}} {}", g(&self.requests_udp));
        let _ = writeln!(o, "dari_dns_requests_total{{proto=\"tcp\"}} {}", g(&self.requests_tcp));
        let _ = writeln!(o, "# HELP dari_dns_responses_total DNS responses sent, by rcode.");
        let _ = writeln!(o, "# TYPE dari_dns_responses_total counter");
        for (i, c) in self.rcodes.iter().enumerate() {
            let name = RCODES.get(i).map_or_else(|| "OTHER".to_string(), |r| rcode_name(*r));
            let _ = writeln!(o, "dari_dns_responses_total{{rcode=\"{name}\"}} {}", g(c));
        }
        for (name, help, c) in [
            ("dari_dns_dropped_total", "Packets dropped without an answer.", &self.dropped),
            ("dari_dns_truncated_total", "UDP answers truncated (TC set).", &self.truncated),
            ("dari_dns_forward_requests_total", "Queries forwarded upstream (cache misses and hits).", &self.forwarded),
            ("dari_dns_cache_hits_total", "Forwarded queries answered from the cache.", &self.cache_hits),
            ("dari_dns_cache_misses_total", "Forwarded queries not in the cache.", &self.cache_misses),
            ("dari_dns_upstream_failures_total", "Upstream attempts that failed (timeout, error, SERVFAIL).", &self.upstream_failures),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            let _ = writeln!(o, "{name} {}", g(c));
        }
        let _ = writeln!(o, "# HELP dari_dns_request_duration_seconds Time from request to response.");
        let _ = writeln!(o, "# TYPE dari_dns_request_duration_seconds histogram");
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(o, "dari_dns_request_duration_seconds_bucket{{le=\"{b}\"}} {}", g(c));
        }
        let count = g(&self.latency_count);
        let _ = writeln!(o, "dari_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "dari_dns_request_duration_seconds_sum {}",
            g(&self.latency_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(o, "dari_dns_request_duration_seconds_count {count}");
        o
    }
}
