//! Every resource dari serves, the way discovery (`/api/v1`, `/apis/<group>/<version>`) lists it.

/// Whether objects live in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/api/v1/namespaces/{ns}/pods/{name}`
    Namespaced,
    /// `/api/v1/nodes/{name}`
    Cluster,
}

/// One served resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; "" for core.
    pub group: &'static str,
    /// API version, e.g. "v1".
    pub version: &'static str,
    /// Kind, e.g. "Pod".
    pub kind: &'static str,
    /// Plural resource name used in URLs, e.g. "pods".
    pub plural: &'static str,
    /// Singular name, e.g. "pod".
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub scope: Scope,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`kubectl get all`).
    pub categories: &'static [&'static str],
    /// Served subresources (besides the main resource).
    pub subresources: &'static [&'static str],
    /// Storage key prefix, as kube-apiserver lays keys out in etcd (`/registry/<prefix>/<ns>/<name>`).
    pub storage: &'static str,
}

impl Resource {
    /// "apps/v1", or "v1" for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the resource has a `status` subresource (then the main endpoint ignores status changes).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.scope == Scope::Namespaced => format!("/registry/{}/{}/{}", self.storage, ns, name),
            _ => format!("/registry/{}/{}", self.storage, name),
        }
    }

    /// The storage prefix for a list, in one namespace or all.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.scope == Scope::Namespaced => format!("/registry/{}/{}/", self.storage, ns),
            _ => format!("/registry/{}/", self.storage),
        }
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! res {
    ($g:expr, $v:expr, $k:expr, $p:expr, $s:expr, $scope:ident, $short:expr, $cat:expr, $sub:expr, $st:expr) => {
        Resource {
            group: $g,
            version: $v,
            kind: $k,
            plural: $p,
            singular: $s,
            scope: Scope::$scope,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            storage: $st,
        }
    };
}

/// Every served resource.
pub const RESOURCES: &[Resource] = &[
    res!("", "v1", "Namespace", "namespaces", "namespace", Cluster, &["ns"], NONE, &["status", "finalize"], "namespaces"),
    res!("", "v1", "Pod", "pods", "pod", Namespaced, &["po"], ALL, &["status", "binding", "log", "exec", "attach", "portforward", "eviction"], "pods"),
    res!("", "v1", "Service", "services", "service", Namespaced, &["svc"], ALL, &["status"], "services/specs"),
    res!("", "v1", "Endpoints", "endpoints", "endpoints", Namespaced, &["ep"], NONE, NONE, "services/endpoints"),
    res!("", "v1", "Node", "nodes", "node", Cluster, &["no"], NONE, &["status"], "minions"),
    res!("", "v1", "ConfigMap", "configmaps", "configmap", Namespaced, &["cm"], NONE, NONE, "configmaps"),
    res!("", "v1", "Secret", "secrets", "secret", Namespaced, NONE, NONE, NONE, "secrets"),
    res!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", Namespaced, &["sa"], NONE, NONE, "serviceaccounts"),
    res!("", "v1", "Event", "events", "event", Namespaced, &["ev"], NONE, NONE, "events"),
    res!("apps", "v1", "Deployment", "deployments", "deployment", Namespaced, &["deploy"], ALL, &["status", "scale"], "deployments"),
    res!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", Namespaced, &["rs"], ALL, &["status", "scale"], "replicasets"),
    res!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", Namespaced, &["ds"], ALL, &["status"], "daemonsets"),
    res!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", Namespaced, NONE, NONE, NONE, "endpointslices"),
    res!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", Namespaced, &["ing"], NONE, &["status"], "ingress"),
    res!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", Cluster, NONE, NONE, NONE, "ingressclasses"),
    res!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", Namespaced, &["netpol"], NONE, NONE, "networkpolicies"),
    res!("coordination.k8s.io", "v1", "Lease", "leases", "lease", Namespaced, NONE, NONE, NONE, "leases"),
    res!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", Namespaced, NONE, NONE, NONE, "roles"),
    res!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", Namespaced, NONE, NONE, NONE, "rolebindings"),
    res!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", Cluster, NONE, NONE, NONE, "clusterroles"),
    res!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", Cluster, NONE, NONE, NONE, "clusterrolebindings"),
];

/// Finds a resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by group and kind (any served version).
pub fn find_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.kind == kind)
}

/// The API groups served under `/apis`, in discovery order, with their versions.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let pods = find("", "v1", "pods").expect("pods served");
        assert_eq!(pods.key(Some("default"), "web"), "/registry/pods/default/web");
        let nodes = find("", "v1", "nodes").expect("nodes served");
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/minions/n1");
        assert_eq!(find_kind("apps", "Deployment").map(|r| r.plural), Some("deployments"));
        assert_eq!(groups().first().copied(), Some("apps"));
    }

    #[test]
    fn plurals_are_unique_per_group() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(!(a.group == b.group && a.plural == b.plural), "{} twice", a.plural);
            }
        }
    }
}
