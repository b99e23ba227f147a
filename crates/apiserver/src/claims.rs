//! Cluster-wide ownership of Service ClusterIPs and NodePorts in the datastore.
//!
//! Several `dari server`s may share one datastore (etcd). Each keeps an in-memory allocator
//! ([`crate::alloc`]) only as a hint for picking a free value; the authority is one datastore key
//! per allocated value, created with create-if-absent before the Service is written (the same
//! idea as upstream's one `IPAddress` object per allocated ClusterIP, KEP-1880):
//!
//! ```text
//! /registry/dari.dev/serviceips/10.96.0.10       {"namespace":"default","name":"web"}
//! /registry/dari.dev/servicenodeports/30080      {"namespace":"default","name":"web"}
//! ```
//!
//! Two servers that pick the same value race on that one key; the loser picks again (or, for a
//! value the user asked for, answers 422 "provided IP is already allocated"). A server that dies
//! between claiming and writing the Service leaves a claim without an owner: [`plan_repair`]
//! (run periodically, like kube-apiserver's allocator repair loop) deletes a claim only after it
//! was seen orphaned, unchanged, in two consecutive passes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use dari_store::{KeyValue, Revision, Store, StoreError};

/// Key prefix of ClusterIP claims.
pub const IP_PREFIX: &str = "/registry/dari.dev/serviceips/";
/// Key prefix of NodePort claims.
pub const PORT_PREFIX: &str = "/registry/dari.dev/servicenodeports/";

/// One allocated value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Claim {
    /// A ClusterIP.
    Ip(IpAddr),
    /// A NodePort.
    Port(u16),
}

impl Claim {
    /// The datastore key of this claim.
    pub fn key(&self) -> String {
        match self {
            Claim::Ip(ip) => format!("{IP_PREFIX}{ip}"),
            Claim::Port(p) => format!("{PORT_PREFIX}{p}"),
        }
    }

    /// The claim a key stands for.
    pub fn from_key(key: &str) -> Option<Claim> {
        if let Some(ip) = key.strip_prefix(IP_PREFIX) {
            return ip.parse().ok().map(Claim::Ip);
        }
        key.strip_prefix(PORT_PREFIX).and_then(|p| p.parse().ok()).map(Claim::Port)
    }
}

/// The Service holding a claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

impl Owner {
    /// The Service `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_string(), name: name.to_string() }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(kv: &KeyValue) -> Option<Owner> {
        serde_json::from_slice(&kv.value).ok()
    }
}

/// Why [`claim_all`] failed.
#[derive(Debug)]
pub enum ClaimError {
    /// Another Service holds this value.
    Taken(Claim),
    /// The datastore failed.
    Store(StoreError),
}

/// Claims every value for `owner`: all or none. A value already held by `owner` counts as claimed
/// (and is not rolled back on failure).
pub async fn claim_all(store: &dyn Store, claims: &[Claim], owner: &Owner) -> Result<(), ClaimError> {
    let mut done: Vec<Claim> = Vec::new();
    for c in claims {
        let key = c.key();
        let outcome = match store.create(&key, owner.encode()).await {
            Ok(_) => {
                done.push(*c);
                Ok(())
            }
            Err(StoreError::AlreadyExists { .. }) => match store.get(&key).await {
                Ok(Some(kv)) if Owner::decode(&kv).as_ref() == Some(owner) => Ok(()),
                Ok(_) => Err(ClaimError::Taken(*c)),
                Err(e) => Err(ClaimError::Store(e)),
            },
            Err(e) => Err(ClaimError::Store(e)),
        };
        if let Err(e) = outcome {
            release_all(store, &done, owner).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Deletes the claims `owner` holds among `claims`. Failures are logged: the repair loop removes
/// what is left behind.
pub async fn release_all(store: &dyn Store, claims: &[Claim], owner: &Owner) {
    for c in claims {
        let key = c.key();
        match store.get(&key).await {
            Ok(Some(kv)) if Owner::decode(&kv).as_ref() == Some(owner) => {
                if let Err(e) = store.delete(&key, Some(kv.mod_revision)).await {
                    tracing::debug!(key, error = %e, "releasing a claim failed; the repair loop will retry");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e, "releasing a claim failed; the repair loop will retry"),
        }
    }
}

/// What one repair pass decided.
#[derive(Debug, Default, PartialEq)]
pub struct RepairPlan {
    /// Claims to create: values a Service holds without a claim (stores written before claims
    /// existed, or a release that raced).
    pub create: Vec<(Claim, Owner)>,
    /// Orphaned claims seen unchanged in the previous pass too: delete at this revision.
    pub delete: Vec<(Claim, Revision)>,
    /// Orphaned claims seen for the first time: remember them for the next pass.
    pub suspects: HashMap<Claim, Revision>,
    /// Values held by two Services at once (never produced by dari; reported).
    pub conflicts: Vec<(Claim, Owner, Owner)>,
    /// Every value in use (claims and Services): the local allocators are rebuilt from it.
    pub in_use: BTreeSet<Claim>,
}

/// Plans a repair pass from what the Services hold (listed first) and the claims (listed after).
/// Pure: the caller applies the plan.
pub fn plan_repair(held: &[(Owner, Vec<Claim>)], claims: &[KeyValue], previous_suspects: &HashMap<Claim, Revision>) -> RepairPlan {
    let mut plan = RepairPlan::default();
    let mut holder: HashMap<Claim, &Owner> = HashMap::new();
    for (owner, cs) in held {
        for c in cs {
            plan.in_use.insert(*c);
            if let Some(other) = holder.insert(*c, owner) {
                if other != owner {
                    plan.conflicts.push((*c, other.clone(), owner.clone()));
                }
            }
        }
    }
    let mut claimed: HashMap<Claim, Option<Owner>> = HashMap::new();
    for kv in claims {
        let Some(c) = Claim::from_key(&kv.key) else { continue };
        let owner = Owner::decode(kv);
        plan.in_use.insert(c);
        let orphan = match (holder.get(&c), &owner) {
            (Some(h), Some(o)) => *h != o,
            _ => true,
        };
        if orphan {
            if previous_suspects.get(&c) == Some(&kv.mod_revision) {
                plan.delete.push((c, kv.mod_revision));
            } else {
                plan.suspects.insert(c, kv.mod_revision);
            }
        }
        claimed.insert(c, owner);
    }
    for (c, owner) in &holder {
        if !claimed.contains_key(c) {
            plan.create.push((*c, (*owner).clone()));
        }
    }
    plan.create.sort();
    plan.delete.sort();
    plan
}

/// Applies the datastore side of a plan (creates and deletes; conflicts are logged).
pub async fn apply_repair(store: &dyn Store, plan: &RepairPlan) {
    for (c, owner) in &plan.create {
        match store.create(&c.key(), owner.encode()).await {
            Ok(_) => tracing::info!(claim = ?c, service = %format!("{}/{}", owner.namespace, owner.name), "repaired a missing allocation claim"),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => tracing::warn!(claim = ?c, error = %e, "creating an allocation claim failed"),
        }
    }
    for (c, rev) in &plan.delete {
        match store.delete(&c.key(), Some(*rev)).await {
            Ok(_) => tracing::info!(claim = ?c, "released an allocation claim no Service holds"),
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => tracing::warn!(claim = ?c, error = %e, "deleting an orphaned allocation claim failed"),
        }
    }
    for (c, a, b) in &plan.conflicts {
        tracing::error!(claim = ?c, first = %format!("{}/{}", a.namespace, a.name), second = %format!("{}/{}", b.namespace, b.name), "two Services hold the same value");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(c: Claim, owner: &Owner, rev: Revision) -> KeyValue {
        KeyValue { key: c.key(), value: owner.encode(), create_revision: rev, mod_revision: rev }
    }

    fn ip(s: &str) -> Claim {
        Claim::Ip(s.parse().expect("ip"))
    }

    #[test]
    fn keys_round_trip() {
        for c in [ip("10.96.0.10"), Claim::Port(30080)] {
            assert_eq!(Claim::from_key(&c.key()), Some(c));
        }
        assert_eq!(ip("10.96.0.10").key(), "/registry/dari.dev/serviceips/10.96.0.10");
        assert_eq!(Claim::from_key("/registry/dari.dev/serviceips/nope"), None);
    }

    #[test]
    fn orphans_are_deleted_only_on_the_second_unchanged_sighting() {
        let web = Owner::new("default", "web");
        let gone = Owner::new("default", "gone");
        let held = vec![(web.clone(), vec![ip("10.96.0.10"), Claim::Port(30080)])];
        let claims = vec![kv(ip("10.96.0.10"), &web, 5), kv(ip("10.96.0.11"), &gone, 6)];
        let first = plan_repair(&held, &claims, &HashMap::new());
        assert_eq!(first.delete, vec![]);
        assert_eq!(first.suspects, HashMap::from([(ip("10.96.0.11"), 6)]));
        assert_eq!(first.create, vec![(Claim::Port(30080), web.clone())]);
        assert!(first.in_use.contains(&ip("10.96.0.11")), "a suspect stays in use until deleted");
        let second = plan_repair(&held, &claims, &first.suspects);
        assert_eq!(second.delete, vec![(ip("10.96.0.11"), 6)]);
        // a claim rewritten in between (new revision) is a new suspect, not deleted
        let claims = vec![kv(ip("10.96.0.10"), &web, 5), kv(ip("10.96.0.11"), &gone, 9)];
        let third = plan_repair(&held, &claims, &first.suspects);
        assert_eq!(third.delete, vec![]);
    }

    #[test]
    fn a_value_held_by_two_services_is_reported() {
        let a = Owner::new("default", "a");
        let b = Owner::new("default", "b");
        let held = vec![(a, vec![ip("10.96.0.10")]), (b, vec![ip("10.96.0.10")])];
        let plan = plan_repair(&held, &[], &HashMap::new());
        assert_eq!(plan.conflicts.len(), 1);
    }
}
