//! dari's ingress: an Ingress v1 controller and HTTP(S) reverse proxy (the ingress-nginx role,
//! built into the agent).
//!
//! Where to start:
//! - [`build`] (pure): `(ingresses, services, endpoint_slices, classes, secrets, &IngressConfig)
//!   -> RouteTable`; the matching rules are documented in [`table`]. [`RouteTable::dump`] prints
//!   it (see `tests/golden/*.txt`).
//! - [`route`] (pure): `(&RouteTable, host, path) -> Option<RouteMatch>`.
//! - [`annotations`]: the ingress-nginx annotations understood.
//! - [`proxy`]: the hyper/rustls server reading a [`SharedTable`] swapped whole on each change;
//!   plain HTTP/1.1 takes the [`h1`] fast path (httparse, bytes relayed by framing).
//! - [`controller`]: watchers, IngressClass creation, status, events; [`run`] / [`IngressArgs`].

pub mod annotations;
pub mod config;
pub mod controller;
pub mod error;
pub mod h1;
pub mod table;
pub mod tls;
pub mod pool;
pub mod proxy;

pub use annotations::BackendProtocol;
pub use config::IngressConfig;
pub use controller::{run, IngressArgs, IngressRunConfig};
pub use error::IngressError;
pub use table::{build, route, route_ref, Backend, Issue, IssueKind, ObjectKey, PathMatch, Route, RouteMatch, RouteTable};

/// The live route table: the proxy loads it per request, the controller stores a new one.
pub type SharedTable = std::sync::Arc<arc_swap::ArcSwap<RouteTable>>;
