//! dari's service proxy: turns Services and EndpointSlices into nftables rules, the job of
//! kube-proxy, laid out like kube-proxy's nftables mode, in tables of its own (`ip dari`,
//! `ip6 dari`).
//!
//! Where to start:
//! - [`render`] (pure): `(services, endpoint_slices, &NodeFacts, &ProxyConfig) -> Ruleset`.
//!   [`Ruleset::to_nft`] prints it as `nft` text (see `tests/golden/*.nft`).
//! - [`Ruleset::full_sync_script`] / [`Ruleset::diff_script`]: the `nft -f` transactions
//!   (full resync, or only what changed).
//! - [`NftApply`]: where transactions go ([`NftCli`] runs `nft -f -`; [`RecordingApplier`] is a fake).
//! - [`Syncer`]: keeps the last applied state and decides full vs incremental sync.
//! - [`run`] / [`ProxyArgs`]: the controller (`dari proxy --kubeconfig K --node-name N`).

pub mod apply;
pub mod config;
pub mod error;
pub mod nft;
pub mod render;
pub mod server;
pub mod show;
pub mod sync;

pub use apply::{NftApply, NftCli, RecordingApplier};
pub use config::{NodeFacts, ProxyConfig};
pub use error::ProxyError;
pub use nft::{Family, Ruleset};
pub use render::render;
pub use server::{run, show_from_api, ProxyArgs, ProxyRunConfig, ProxyServer};
pub use show::show;
pub use sync::Syncer;
