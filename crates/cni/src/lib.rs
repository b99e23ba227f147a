//! dari-cni: the CNI 1.1 plugins dari installs on every node, as one small multicall binary.
//!
//! * `dari-bridge` — veth pair into a Linux bridge, addresses/routes/MTU in the pod, `lo` up,
//!   isGateway / isDefaultGateway / forceAddress / hairpinMode / promiscMode / ipMasq.
//! * `dari-host-local` — IPAM with the reference host-local's config and on-disk format
//!   ([`ipam`]); any other `ipam.type` is exec'd from CNI_PATH as a delegate.
//! * `dari-portmap` — hostPort DNAT with nftables (capability `portMappings`).
//!
//! Start at [`plugin::run`] (what the binary calls). The pure pieces are [`ipam::candidates`]
//! / [`ipam::allocate`], [`types::CniResult::render`] and the [`nft`] renderers; kernel state
//! goes through the [`netlink::Netlink`] trait ([`netlink::RtNetlink`] for real,
//! [`netlink::FakeNet`] in tests).

pub mod error;
pub mod ipam;
pub mod netlink;
pub mod nft;
pub mod plugin;
pub mod types;

pub use error::{Error, Result};
