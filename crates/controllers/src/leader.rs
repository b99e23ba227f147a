//! Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does: the holder
//! renews `renewTime` every `retry_period`; another candidate takes the Lease over once
//! `renewTime + leaseDurationSeconds` has passed by its own clock. Every write carries the read
//! resourceVersion, so two candidates can never both win the same term.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

/// Lease timings.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease (kube-system).
    pub namespace: String,
    /// Lease name (kube-controller-manager, kube-scheduler).
    pub name: String,
    /// This candidate's identity.
    pub identity: String,
    /// How long a Lease holds without renewal (15 s upstream).
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before giving up (10 s upstream).
    pub renew_deadline: Duration,
    /// Time between attempts (2 s upstream).
    pub retry_period: Duration,
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Held,
    Other,
}

async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaderConfig, observed: &mut Option<(String, Instant)>) -> Result<Attempt, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(cfg.name.clone()), namespace: Some(cfg.namespace.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let rv = lease.metadata.resource_version.clone().unwrap_or_default();
            // Expiry is judged on our own clock: when did we last see this record change?
            let record = format!("{holder}/{rv}");
            let changed = observed.as_ref().map(|(r, _)| r != &record).unwrap_or(true);
            if changed {
                *observed = Some((record, Instant::now()));
            }
            let seen_at = observed.as_ref().map(|(_, t)| *t).unwrap_or_else(Instant::now);
            let dur = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(secs)).unwrap_or(15));
            let expired = holder.is_empty() || seen_at.elapsed() > dur;
            if holder != cfg.identity && !expired {
                return Ok(Attempt::Other);
            }
            let mut new_spec = spec.clone();
            if holder != cfg.identity {
                new_spec.holder_identity = Some(cfg.identity.clone());
                new_spec.acquire_time = Some(now.clone());
                new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            new_spec.renew_time = Some(now);
            new_spec.lease_duration_seconds = Some(secs);
            lease.spec = Some(new_spec);
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(l) => {
                    *observed = Some((format!("{}/{}", cfg.identity, l.metadata.resource_version.unwrap_or_default()), Instant::now()));
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the Lease up if `identity` holds it (client-go's ReleaseOnCancel): the holder becomes empty
/// and the duration 1 s, so another candidate takes over at its next attempt instead of waiting
/// for the Lease to expire. Call it on a graceful stop, after this candidate's work has stopped.
pub async fn release(client: Client, namespace: &str, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let Some(mut lease) = api.get_opt(name).await? else { return Ok(false) };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease.spec = Some(spec);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => {
            tracing::info!(lease = name, identity, "released the lease");
            Ok(true)
        }
        // renewed or taken meanwhile: nothing of ours to release
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `work()` while this candidate holds the Lease: waits to acquire it, starts `work`, renews,
/// and aborts `work` as soon as a renewal could not be made within `renew_deadline` (then competes
/// again). Returns only if `work` returns by itself.
pub async fn run_leader<F, Fut>(client: Client, cfg: LeaderConfig, work: F) -> Fut::Output
where
    F: Fn() -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed = None;
    loop {
        // acquire
        loop {
            match try_acquire_or_renew(&api, &cfg, &mut observed).await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::Other) => {}
                Err(e) => tracing::debug!(lease = %cfg.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(cfg.retry_period).await;
        }
        tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
        let mut task = tokio::spawn(work());
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                r = &mut task => {
                    match r {
                        Ok(out) => return out,
                        Err(e) => {
                            tracing::error!(lease = %cfg.name, error = %e, "leader work panicked; stepping down");
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep(cfg.retry_period) => {
                    match try_acquire_or_renew(&api, &cfg, &mut observed).await {
                        Ok(Attempt::Held) => last_renew = Instant::now(),
                        Ok(Attempt::Other) => { last_renew = Instant::now() - cfg.renew_deadline - Duration::from_secs(1); }
                        Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "renewing the lease failed"),
                    }
                    if last_renew.elapsed() > cfg.renew_deadline {
                        tracing::warn!(lease = %cfg.name, identity = %cfg.identity, "lost leadership; stopping");
                        task.abort();
                        let _ = (&mut task).await;
                        break;
                    }
                }
            }
        }
    }
}
