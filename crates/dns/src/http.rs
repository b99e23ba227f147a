//! The small HTTP listener: `/health` (alive), `/ready` (index synced and listeners up) and `/metrics`
//! (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::error::DnsError;
use crate::server::DnsState;

/// The router.
pub fn router(state: Arc<DnsState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK\n" }))
        .route(
            "/ready",
            get(|State(s): State<Arc<DnsState>>| async move {
                if s.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<DnsState>>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics_text(&s),
                )
            }),
        )
        .with_state(state)
}

/// All metrics: the server's counters plus index, cache and upstream gauges.
pub fn metrics_text(s: &DnsState) -> String {
    use std::fmt::Write;
    let mut o = s.metrics().render();
    let idx = s.index();
    let _ = writeln!(o, "# HELP dari_dns_index_services Services in the DNS index.");
    let _ = writeln!(o, "# TYPE dari_dns_index_services gauge");
    let _ = writeln!(o, "dari_dns_index_services {}", idx.service_count());
    let _ = writeln!(o, "# HELP dari_dns_index_endpoints Headless endpoint addresses in the DNS index.");
    let _ = writeln!(o, "# TYPE dari_dns_index_endpoints gauge");
    let _ = writeln!(o, "dari_dns_index_endpoints {}", idx.endpoint_count());
    let _ = writeln!(o, "# HELP dari_dns_cache_entries Entries in the forwarding cache.");
    let _ = writeln!(o, "# TYPE dari_dns_cache_entries gauge");
    let _ = writeln!(o, "dari_dns_cache_entries {}", s.cache_len());
    let _ = writeln!(o, "# HELP dari_dns_upstream_healthy 1 when the upstream is healthy.");
    let _ = writeln!(o, "# TYPE dari_dns_upstream_healthy gauge");
    for (addr, ok) in s.forwarder().health() {
        let _ = writeln!(o, "dari_dns_upstream_healthy{{upstream=\"{addr}\"}} {}", u8::from(ok));
    }
    o
}

/// A bound HTTP listener.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<DnsState>,
}

impl HttpServer {
    /// Binds the listener.
    pub async fn bind(addr: SocketAddr, state: Arc<DnsState>) -> Result<Self, DnsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::Bind { proto: "http", addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DnsError::Bind { proto: "http", addr, source })?;
        Ok(HttpServer { listener, addr, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the listener fails.
    pub async fn run(self) -> Result<(), DnsError> {
        let addr = self.addr;
        axum::serve(self.listener, router(self.state))
            .await
            .map_err(|source| DnsError::Serve { proto: "http", addr, source })
    }
}
