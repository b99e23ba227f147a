//! dari-lab: a multi-node dari cluster on one machine (`dari lab up|down|status|exec`).
//!
//! Start at [`plan::plan`] (the topology as data, pure) and [`net::apply`] (the kernel side,
//! through the [`net::LabNet`] trait: rtnetlink for real, a recording fake for tests), then
//! [`lab::up`] for the whole thing: namespaces, `dari server` and `dari agent` per node
//! ([`procs`]), the API forwarder on 127.0.0.1:6443 ([`forward`]) and the stand-in images
//! ([`images`], [`oci`]) that the seed scenarios name. [`ha`] plans the HA control plane of
//! `--datastore etcd --servers N` (an etcd cluster in the node namespaces, several servers, a
//! forwarder that fails over between them). [`applets`] are the small servers
//! inside those images (whoami, echo-server, pause). The pod network between the nodes is
//! `dari_net`'s (`--backend vxlan`, the default, or `host-gw`), run by each node's agent.
//!
//! Network rule: the lab's addresses live only inside its namespaces; the root namespace gets
//! no link and no route into the lab, and the hub has no uplink, so nothing leaves the host.

pub mod applets;
pub mod error;
pub mod forward;
pub mod ha;
pub mod images;
pub mod lab;
pub mod net;
pub mod oci;
pub mod plan;
pub mod procs;

pub use applets::{applet_main, echo_server_main, pause_main, whoami_main};
pub use error::{LabError, Result};
pub use images::build_images;
pub use lab::{down, exec, kill_agent, run, start_agent, status, up, LabArgs, LabCmd, LabNodeArgs, LabUpArgs};
pub use plan::{plan, LabOpts, LabPlan};
