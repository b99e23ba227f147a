//! dari's service proxy: turns Services and EndpointSlices into nftables rules, the job of
//! kube-proxy, laid out like kube-proxy's nftables mode, in tables of its own (`ip dari`,
//! `ip6 dari`).
//!
//! Where to start:
//! - [`render`] (pure): `(services, endpoint_slices, &NodeFacts, &ProxyConfig) -> Ruleset`.
//!   [`Ruleset::to_nft`] prints it as `nft` text (see `tests/golden/*.nft`).
//! - [`plan`] (pure): `(prev, next) -> Transaction`, only what changed; [`Ruleset::full_sync`]:
//!   the full rewrite. A [`Transaction`] prints as `nft -f` text (golden files).
//! - [`model`]: a model of the kernel table that applies transactions (property tests).
//! - [`NftApply`]: where transactions go ([`NetlinkApplier`] sends nf_tables netlink batches,
//!   falling back to [`NftCli`], which runs `nft -f -`; [`RecordingApplier`] is a fake).
//! - [`ProxyState`]: the inputs in compact form plus each Service's rendered fragment; an update
//!   re-renders and plans only the Services that changed ([`ProxyState::take_changes`]).
//! - [`Syncer`]: decides full vs incremental sync ([`Syncer::sync_state`] for a [`ProxyState`],
//!   [`Syncer::sync`] for whole rulesets).
//! - [`run`] / [`ProxyArgs`]: the controller (`dari proxy --kubeconfig K --node-name N`).

pub mod apply;
pub mod config;
pub mod error;
pub mod inputs;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod render;
pub mod server;
pub mod show;
pub mod state;
pub mod sync;

pub use apply::{NftApply, NftCli, RecordingApplier};
pub use config::{NodeFacts, ProxyConfig};
pub use error::ProxyError;
pub use netlink::NetlinkApplier;
pub use nft::{plan, Family, Op, Ruleset, Transaction};
pub use render::render;
pub use server::{run, show_from_api, ProxyArgs, ProxyRunConfig, ProxyServer};
pub use show::show;
pub use state::ProxyState;
pub use sync::Syncer;
