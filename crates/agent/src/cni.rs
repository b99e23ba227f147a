//! The node's CNI conflist, rendered from its podCIDR (pure: [`render_conflist`]).
//!
//! With dari-cni installed (`dari-bridge`, `dari-host-local`, `dari-portmap` in the CNI bin dir)
//! the list is dari's; with only the reference plugins (`bridge`, `host-local`, `loopback`,
//! `portmap` from Debian's containernetworking-plugins) it is the equivalent reference list.
//! [`Flavor::detect`] picks by looking at the bin dir.

use std::path::Path;

use ipnet::IpNet;

/// The conflist's network name (also host-local's data subdirectory).
pub const NETWORK_NAME: &str = "dari";
/// The file name the agent writes in the CNI conf dir.
pub const CONFLIST_FILE: &str = "10-dari.conflist";
/// The bridge the pods attach to.
pub const BRIDGE: &str = "cni0";

/// Which plugin set the conflist uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// dari-cni's multicall plugins.
    Dari,
    /// The reference containernetworking plugins.
    Reference,
}

impl Flavor {
    /// dari-cni if `dari-bridge` is in `bin_dir`, else the reference plugins.
    pub fn detect(bin_dir: &Path) -> Flavor {
        if bin_dir.join("dari-bridge").exists() {
            Flavor::Dari
        } else {
            Flavor::Reference
        }
    }
}

/// The conflist for a node whose pods get addresses from `pod_cidr`, with interface `mtu`,
/// IPAM state under `ipam_dir`.
///
/// ```text
/// cni0 bridge (gateway = first address of the podCIDR, masquerade off-CIDR traffic),
/// host-local range = podCIDR, default route via cni0 (isDefaultGateway), then portmap (hostPort).
/// ```
pub fn render_conflist(flavor: Flavor, pod_cidr: IpNet, mtu: u32, ipam_dir: &Path) -> String {
    let (bridge, ipam, portmap) = match flavor {
        Flavor::Dari => ("dari-bridge", "dari-host-local", "dari-portmap"),
        Flavor::Reference => ("bridge", "host-local", "portmap"),
    };
    let mut plugins = vec![serde_json::json!({
        "type": bridge,
        "bridge": BRIDGE,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": false, // pod-to-pod across nodes keeps the source IP (Kubernetes network model); Services are masqueraded by the proxy where needed
        "hairpinMode": true,
        "mtu": mtu,
        "ipam": {
            "type": ipam,
            "ranges": [[{ "subnet": pod_cidr.trunc().to_string() }]],
            "dataDir": ipam_dir.to_string_lossy(),
        },
    })];
    // dari-bridge brings the pod's lo up itself; the reference bridge does not.
    if flavor == Flavor::Reference {
        plugins.push(serde_json::json!({ "type": "loopback" }));
    }
    plugins.push(serde_json::json!({ "type": portmap, "capabilities": { "portMappings": true }, "snat": true }));
    let list = serde_json::json!({ "cniVersion": "1.0.0", "name": NETWORK_NAME, "plugins": plugins });
    let mut s = serde_json::to_string_pretty(&list).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, got: &str) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&p, got).expect("write golden");
        }
        assert_eq!(got, std::fs::read_to_string(&p).expect("golden file (UPDATE_GOLDEN=1 to create)"));
    }

    #[test]
    fn dari_conflist_golden() {
        golden("conflist-dari.json", &render_conflist(Flavor::Dari, "10.244.1.0/24".parse().expect("cidr"), 1450, Path::new("/var/lib/dari/agent/cni/networks")));
    }

    #[test]
    fn reference_conflist_golden() {
        golden("conflist-reference.json", &render_conflist(Flavor::Reference, "10.244.1.7/24".parse().expect("cidr"), 1500, Path::new("/tmp/ipam")));
    }
}
