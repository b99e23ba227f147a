//! dari's cluster DNS: the job CoreDNS does in a Kubernetes cluster, built into `dari`.
//!
//! - [`ClusterIndex`] is what the zone holds, built by a pure function from Services, EndpointSlices and
//!   Pods; [`answer()`] turns a query into an authoritative [`Answer`] or "forward upstream", following the
//!   Kubernetes DNS-Based Service Discovery specification 1.1.0. Start there: both do no I/O and the
//!   golden tests in `tests/golden` exercise them. The index is compact: the controller keeps object
//!   summaries ([`index::ServiceInfo`] ...), never whole Kubernetes objects, and names are interned.
//! - [`fast`] answers the common queries (A/AAAA of Services and endpoints, forwarding-cache hits) on the
//!   wire with no allocation and no lock, falling back to the general path for everything else; its
//!   tests and the fuzz target check both paths agree byte for byte.
//! - [`wire::handle_packet`] is the packet handler (bytes in, bytes or "forward" out; malformed input
//!   gets FORMERR or is dropped, never a panic): the fuzz target drives it.
//! - [`server`] serves UDP and TCP, forwards through [`forward::Forwarder`] with a [`cache::Cache`],
//!   and [`http`] serves /health, /ready and /metrics.
//! - [`run`] is the component's entry point: it watches the Kubernetes API ([`controller`]) and serves.

pub mod answer;
pub mod cache;
pub mod config;
pub mod controller;
pub mod deploy;
pub mod error;
pub mod fast;
pub mod forward;
pub mod http;
pub mod index;
pub mod metrics;
pub mod render;
pub mod server;
pub mod wire;

pub use answer::{answer, Answer};
pub use config::{AnswerConfig, DnsArgs, DnsConfig, DnsRunConfig, PodsMode};
pub use controller::run;
pub use error::DnsError;
pub use index::ClusterIndex;
