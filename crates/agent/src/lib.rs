//! dari-agent: dari's node agent (the kubelet's job). Start at [`run`].
//!
//! * [`containerd`]: supervises Debian's containerd as a child with a generated config.
//! * [`cri`]: the CRI v1 gRPC client behind the small [`cri::Cri`] trait.
//! * [`image`]: OCI tarballs built from host binaries (pause, busybox) and `dari image import`.
//! * [`cni`]: the node's CNI conflist from its podCIDR.
//! * [`pod`]: pod → CRI translation, status computation, per-pod workers.

pub mod cni;
pub mod containerd;
pub mod cri;
pub mod error;
pub mod image;
pub mod pod;

pub use error::{AgentError, Result};
