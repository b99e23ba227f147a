//! One task per pod: drive CRI toward the pod spec, compute the status, tear down on deletion.
//!
//! The worker owns the pod's runtime record (sandbox id, per-container attempts, restart
//! back-off, probe results). It wakes on pod updates and on a short tick (container exits and
//! probes are polled, not evented), does one [`PodWorker::sync`] step, and writes the status
//! through the status subresource when it changed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::status::{self, CState, Observed, ObservedContainer, Timestamp};
use super::translate::{self, Lookups, NodeContext, VolumePaths};
use super::volumes;
use crate::cri::{v1, Cri};
use crate::error::{AgentError, Result};

/// Restart back-off: `initial`, doubling, capped at `max` (kubelet: 10 s → 300 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(300) }
    }
}

/// What every pod worker shares.
#[derive(Clone)]
pub struct Shared {
    /// The runtime.
    pub cri: Arc<dyn Cri>,
    /// The API client.
    pub client: Client,
    /// Node facts for translation.
    pub node: NodeContext,
    /// `<data-dir>/pods`: per-pod volume directories.
    pub pods_dir: PathBuf,
    /// Restart back-off.
    pub backoff: Backoff,
    /// Status poll interval.
    pub tick: Duration,
    /// The pods' network namespace when the agent runs outside it (probes connect through it).
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
struct ProbeState {
    ready: bool,
    started: bool,
    ready_successes: i32,
    ready_failures: i32,
    live_failures: i32,
    start_failures: i32,
    next: BTreeMap<&'static str, Instant>,
}

#[derive(Debug, Clone, Default)]
struct Ctr {
    id: String,
    attempt: u32,
    restart_count: i32,
    state: Option<CState>,
    last_term: Option<CState>,
    waiting: Option<(String, String)>,
    not_before: Option<Instant>,
    delay: Duration,
    image_ref: String,
    started_at: Option<Instant>,
    probes: ProbeState,
}

/// The runtime record of one pod.
pub struct PodWorker {
    sh: Shared,
    pod: Pod,
    key: String,
    sandbox_id: Option<String>,
    sandbox_config: Option<v1::PodSandboxConfig>,
    sandbox_attempt: u32,
    pod_ips: Vec<String>,
    volumes: Option<VolumePaths>,
    ctrs: BTreeMap<String, Ctr>,
    sandbox_stopped: bool,
    sandbox_error: Option<String>,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""))
}

fn ts_from_nanos(n: i64) -> Option<Timestamp> {
    (n > 0).then(|| Timestamp::from_nanosecond(i128::from(n)).ok()).flatten()
}

impl PodWorker {
    /// A worker for `pod` (nothing runs until [`PodWorker::run`]).
    pub fn new(sh: Shared, pod: Pod) -> PodWorker {
        PodWorker { key: key(&pod), sh, pod, sandbox_id: None, sandbox_config: None, sandbox_attempt: 0, pod_ips: vec![], volumes: None, ctrs: BTreeMap::new(), sandbox_stopped: false, sandbox_error: None }
    }

    /// Runs until the pod is deleted (deletionTimestamp set, or the sender dropped because the
    /// pod left this node or the API), then tears it down.
    pub async fn run(mut self, mut rx: watch::Receiver<Pod>) {
        if let Err(e) = self.adopt().await {
            tracing::warn!(pod = %self.key, error = %e, "adopting existing sandbox failed");
        }
        let mut quick = true;
        loop {
            if !quick {
                tokio::select! {
                    r = rx.changed() => {
                        if r.is_err() {
                            self.teardown(None).await;
                            return;
                        }
                    }
                    _ = tokio::time::sleep(self.sh.tick) => {}
                }
            }
            let latest = rx.borrow_and_update().clone();
            self.pod = latest;
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self.pod.metadata.deletion_grace_period_seconds.or_else(|| self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)).unwrap_or(30);
                self.teardown(Some(grace)).await;
                self.finalize_delete().await;
                return;
            }
            let span = tracing::debug_span!("pod_sync", pod = %self.key);
            let _e = span.enter();
            drop(_e);
            quick = match self.sync().await {
                Ok(progress) => progress,
                Err(e) => {
                    tracing::warn!(pod = %self.key, error = %e.with_causes(), "pod sync failed");
                    false
                }
            };
            if let Err(e) = self.write_status().await {
                tracing::warn!(pod = %self.key, error = %e, "status update failed");
            }
        }
    }

    fn uid(&self) -> String {
        self.pod.metadata.uid.clone().unwrap_or_default()
    }

    fn spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.clone().unwrap_or_default()
    }

    /// Finds a ready sandbox of this pod left by a previous agent run and its containers.
    ///
    /// Sandboxes of this pod that are no longer ready (the node restarted: their network namespace
    /// is gone) are stopped and removed, and the next sandbox takes the attempt after the last
    /// one, as the kubelet does: containerd keeps their names reserved otherwise ("name ... is
    /// reserved for ..."), and the pod would never start again.
    async fn adopt(&mut self) -> Result<()> {
        let uid = self.uid();
        let mut sandboxes = self.sh.cri.list_pod_sandboxes().await?;
        sandboxes.retain(|s| s.labels.get(translate::labels::POD_UID) == Some(&uid));
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let ready = sandboxes.iter().position(|s| s.state == v1::PodSandboxState::SandboxReady as i32);
        let Some(sb) = ready.map(|i| sandboxes.swap_remove(i)) else {
            if let Some(last) = sandboxes.iter().filter_map(|s| s.metadata.as_ref().map(|m| m.attempt)).max() {
                self.sandbox_attempt = last + 1;
            }
            for old in &sandboxes {
                let _ = self.sh.cri.stop_pod_sandbox(&old.id).await;
                match self.sh.cri.remove_pod_sandbox(&old.id).await {
                    Ok(()) => tracing::info!(pod = %self.key, sandbox = %old.id, "removed a sandbox left by a previous run"),
                    Err(e) => tracing::warn!(pod = %self.key, sandbox = %old.id, error = %e, "could not remove a stale sandbox"),
                }
            }
            return Ok(());
        };
        let st = self.sh.cri.pod_sandbox_status(&sb.id).await?;
        self.pod_ips = st.network.map(|n| std::iter::once(n.ip).chain(n.additional_ips.into_iter().map(|i| i.ip)).filter(|i| !i.is_empty()).collect()).unwrap_or_default();
        self.sandbox_attempt = sb.metadata.map(|m| m.attempt).unwrap_or(0);
        self.sandbox_config = Some(translate::sandbox_config(&self.pod, &self.sh.node, self.sandbox_attempt));
        self.sandbox_id = Some(sb.id.clone());
        let mut ctrs = self.sh.cri.list_containers(Some(&sb.id)).await?;
        ctrs.sort_by_key(|c| c.created_at);
        for c in ctrs {
            let name = c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            let attempt = c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            let e = self.ctrs.entry(name).or_default();
            e.id = c.id;
            e.attempt = attempt;
            e.restart_count = attempt as i32;
            e.image_ref = c.image_ref;
            e.started_at = Some(Instant::now());
        }
        tracing::info!(pod = %self.key, sandbox = %sb.id, containers = self.ctrs.len(), "adopted running pod");
        Ok(())
    }

    async fn lookups(&self) -> Result<Lookups> {
        let ns = self.pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let (cms, secrets) = volumes::references(&self.pod);
        let mut lk = Lookups::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.sh.client.clone(), &ns);
        for n in cms {
            if let Some(cm) = cm_api.get_opt(&n).await.map_err(AgentError::kube("get", format!("configmap/{ns}/{n}")))? {
                let mut d: BTreeMap<String, Vec<u8>> = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                d.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                lk.config_maps.insert(n, d);
            }
        }
        let s_api: Api<Secret> = Api::namespaced(self.sh.client.clone(), &ns);
        for n in secrets {
            if let Some(s) = s_api.get_opt(&n).await.map_err(AgentError::kube("get", format!("secret/{ns}/{n}")))? {
                let mut d: BTreeMap<String, Vec<u8>> = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                d.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
                lk.secrets.insert(n, d);
            }
        }
        if self.spec().enable_service_links.unwrap_or(true) {
            let svc: Api<Service> = Api::namespaced(self.sh.client.clone(), &ns);
            lk.services = svc.list(&ListParams::default()).await.map_err(AgentError::kube("list", format!("services/{ns}")))?.items;
            if ns != "default" {
                let d: Api<Service> = Api::namespaced(self.sh.client.clone(), "default");
                if let Some(k) = d.get_opt("kubernetes").await.map_err(AgentError::kube("get", "service/default/kubernetes"))? {
                    lk.services.push(k);
                }
            }
        }
        Ok(lk)
    }

    /// One step toward the spec. Returns true if it made progress (sync again right away).
    pub async fn sync(&mut self) -> Result<bool> {
        let spec = self.spec();
        let phase = self.pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            // a finished pod keeps its containers (logs) but gives its IP back
            if !self.sandbox_stopped {
                if let Some(id) = &self.sandbox_id {
                    self.sh.cri.stop_pod_sandbox(id).await?;
                }
                self.sandbox_stopped = true;
            }
            return Ok(false);
        }
        // 1. sandbox
        if let Some(id) = self.sandbox_id.clone() {
            let st = self.sh.cri.pod_sandbox_status(&id).await;
            let ready = matches!(&st, Ok(s) if s.state == v1::PodSandboxState::SandboxReady as i32);
            if !ready {
                tracing::warn!(pod = %self.key, sandbox = %id, "sandbox not ready: recreating the pod's sandbox and containers");
                let _ = self.sh.cri.stop_pod_sandbox(&id).await;
                let _ = self.sh.cri.remove_pod_sandbox(&id).await;
                self.sandbox_id = None;
                self.sandbox_attempt += 1;
                for c in self.ctrs.values_mut() {
                    c.id.clear();
                    c.state = None;
                }
            }
        }
        if self.sandbox_id.is_none() {
            let lk = self.lookups().await?;
            let pod_dir = translate::pod_volume_dir(&self.sh.pods_dir, &self.uid());
            let vols = match volumes::materialise(&self.pod, &pod_dir, &lk, &self.sh.node, None) {
                Ok(v) => v,
                Err(e) => {
                    self.sandbox_error = Some(e.to_string());
                    return Err(e);
                }
            };
            self.volumes = Some(vols);
            let cfg = translate::sandbox_config(&self.pod, &self.sh.node, self.sandbox_attempt);
            let log_dir = PathBuf::from(&cfg.log_directory);
            std::fs::create_dir_all(&log_dir).map_err(AgentError::io("creating log dir", &log_dir))?;
            let id = match self.sh.cri.run_pod_sandbox(cfg.clone()).await {
                Ok(id) => id,
                Err(e) => {
                    self.sandbox_error = Some(e.to_string());
                    return Err(e);
                }
            };
            self.sandbox_error = None;
            let st = self.sh.cri.pod_sandbox_status(&id).await?;
            self.pod_ips = st.network.map(|n| std::iter::once(n.ip).chain(n.additional_ips.into_iter().map(|i| i.ip)).filter(|i| !i.is_empty()).collect()).unwrap_or_default();
            tracing::info!(pod = %self.key, sandbox = %id, ip = ?self.pod_ips, "sandbox running");
            self.sandbox_id = Some(id);
            self.sandbox_config = Some(cfg);
            return Ok(true);
        }
        // 2. refresh container states
        let names: Vec<String> = self.ctrs.keys().cloned().collect();
        for n in names {
            self.refresh(&n).await;
        }
        let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
        // 3. init containers, in order
        for c in spec.init_containers.clone().unwrap_or_default() {
            let st = self.ctrs.get(&c.name).and_then(|r| r.state.clone());
            match st {
                Some(CState::Terminated { exit_code: 0, .. }) => continue,
                Some(CState::Running { .. }) => return Ok(false),
                Some(CState::Terminated { .. }) => {
                    if policy == "Never" {
                        return Ok(false);
                    }
                    return self.start_or_backoff(&c, true).await;
                }
                _ => return self.start_or_backoff(&c, false).await,
            }
        }
        // 4. app containers
        let mut progress = false;
        for c in &spec.containers {
            let st = self.ctrs.get(&c.name).and_then(|r| r.state.clone());
            match st {
                None | Some(CState::Waiting { .. }) => progress |= self.start_or_backoff(c, false).await?,
                Some(CState::Terminated { exit_code, .. }) => {
                    let restart = policy == "Always" || (policy == "OnFailure" && exit_code != 0);
                    if restart {
                        progress |= self.start_or_backoff(c, true).await?;
                    }
                }
                Some(CState::Running { .. }) => {
                    self.probe(c).await;
                }
            }
        }
        Ok(progress)
    }

    async fn refresh(&mut self, name: &str) {
        let Some(r) = self.ctrs.get(name) else { return };
        if r.id.is_empty() {
            return;
        }
        let id = r.id.clone();
        let st = match self.sh.cri.container_status(&id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %self.key, container = name, error = %e, "container status");
                if e.is_not_found() {
                    if let Some(r) = self.ctrs.get_mut(name) {
                        r.id.clear();
                        r.state = None;
                    }
                }
                return;
            }
        };
        let cid = format!("containerd://{id}");
        let new = match v1::ContainerState::try_from(st.state).unwrap_or(v1::ContainerState::ContainerUnknown) {
            v1::ContainerState::ContainerRunning => CState::Running { started_at: ts_from_nanos(st.started_at).unwrap_or_else(Timestamp::now) },
            v1::ContainerState::ContainerExited => CState::Terminated {
                exit_code: st.exit_code,
                reason: if st.reason.is_empty() { if st.exit_code == 0 { "Completed".into() } else { "Error".into() } } else { st.reason.clone() },
                started_at: ts_from_nanos(st.started_at),
                finished_at: ts_from_nanos(st.finished_at),
                container_id: cid,
            },
            _ => CState::Waiting { reason: "ContainerCreating".into(), message: String::new() },
        };
        if let Some(r) = self.ctrs.get_mut(name) {
            if !matches!(new, CState::Running { .. }) {
                r.probes.ready = false;
            }
            if !st.image_ref.is_empty() {
                r.image_ref = st.image_ref;
            }
            r.state = Some(new);
        }
    }

    /// Creates and starts a container (attempt n+1 if `restart`), honouring back-off.
    async fn start_or_backoff(&mut self, c: &Container, restart: bool) -> Result<bool> {
        let now = Instant::now();
        let rec = self.ctrs.entry(c.name.clone()).or_default();
        if let Some(nb) = rec.not_before {
            if now < nb {
                if restart {
                    rec.waiting = Some(("CrashLoopBackOff".into(), format!("back-off {}s restarting failed container={} pod={}", rec.delay.as_secs(), c.name, self.key)));
                }
                return Ok(false);
            }
        }
        if restart && (rec.not_before.is_none() || rec.waiting.as_ref().map(|w| w.0.as_str()) != Some("CrashLoopBackOff")) {
            // first time we see this exit: arm the back-off (kubelet restarts after the
            // delay): initial, doubling per crash, capped; a container that ran for 10
            // minutes starts over
            let ran = rec.started_at.map(|s| now.duration_since(s)).unwrap_or_default();
            rec.delay = if ran > Duration::from_secs(600) || rec.delay.is_zero() { self.sh.backoff.initial } else { (rec.delay * 2).min(self.sh.backoff.max) };
            rec.last_term = rec.state.clone();
            rec.not_before = Some(now + rec.delay);
            rec.waiting = Some(("CrashLoopBackOff".into(), format!("back-off {}s restarting failed container={} pod={}", rec.delay.as_secs(), c.name, self.key)));
            rec.state = Some(CState::Waiting { reason: "CrashLoopBackOff".into(), message: String::new() });
            return Ok(false);
        }
        let attempt = if rec.id.is_empty() && rec.restart_count == 0 && rec.last_term.is_none() { 0 } else { rec.attempt + 1 };
        let old_id = std::mem::take(&mut rec.id);
        let sandbox_id = self.sandbox_id.clone().unwrap_or_default();
        let sandbox_cfg = self.sandbox_config.clone().unwrap_or_default();
        // image
        let image = c.image.clone().unwrap_or_default();
        let pull = c.image_pull_policy.clone().unwrap_or_else(|| if image.ends_with(":latest") || !image.rsplit('/').next().unwrap_or("").contains(':') { "Always".into() } else { "IfNotPresent".into() });
        let present = self.sh.cri.image_status(&image).await?;
        let image_ref = match (present, pull.as_str()) {
            (Some(img), "IfNotPresent") | (Some(img), "Never") => img.id,
            (None, "Never") => {
                self.set_waiting(&c.name, "ErrImageNeverPull", format!("container image \"{image}\" is not present with pull policy of Never"));
                return Ok(false);
            }
            (present, _) => match self.sh.cri.pull_image(&image, sandbox_cfg.clone()).await {
                Ok(r) => r,
                // air-gapped nodes (no registry reachable, images imported with `dari image import`):
                // a failed pull of an image the node already has uses that image, and says so
                Err(e) if present.is_some() => {
                    tracing::warn!(%image, error = %e, "pull failed; using the image already present on the node");
                    present.map(|img| img.id).unwrap_or_default()
                }
                Err(e) => {
                    self.set_waiting(&c.name, "ErrImagePull", e.to_string());
                    let rec = self.ctrs.entry(c.name.clone()).or_default();
                    rec.not_before = Some(Instant::now() + self.sh.backoff.initial);
                    return Ok(false);
                }
            },
        };
        let lk = self.lookups().await?;
        let vols = self.volumes.clone().unwrap_or_default();
        let ip = self.pod_ips.first().cloned();
        let cfg = match translate::container_config(&self.pod, c, &self.sh.node, ip.as_deref(), &vols, &lk, attempt) {
            Ok(cfg) => cfg,
            Err(e) => {
                self.set_waiting(&c.name, "CreateContainerConfigError", e.0);
                return Ok(false);
            }
        };
        let dir = PathBuf::from(&sandbox_cfg.log_directory).join(&c.name);
        std::fs::create_dir_all(&dir).map_err(AgentError::io("creating log dir", &dir))?;
        // keep one previous attempt for `kubectl logs --previous`; remove older ones
        if !old_id.is_empty() {
            let prev_attempt = attempt.saturating_sub(1);
            for ctr in self.sh.cri.list_containers(Some(&sandbox_id)).await.unwrap_or_default() {
                let m = ctr.metadata.clone().unwrap_or_default();
                if m.name == c.name && m.attempt < prev_attempt {
                    let _ = self.sh.cri.remove_container(&ctr.id).await;
                }
            }
        }
        let id = match self.sh.cri.create_container(&sandbox_id, cfg, sandbox_cfg).await {
            Ok(id) => id,
            Err(e) => {
                self.set_waiting(&c.name, "CreateContainerError", e.to_string());
                return Err(e);
            }
        };
        if let Err(e) = self.sh.cri.start_container(&id).await {
            let rec = self.ctrs.entry(c.name.clone()).or_default();
            rec.id = id;
            rec.attempt = attempt;
            return Err(e);
        }
        tracing::info!(pod = %self.key, container = %c.name, id = %id, attempt, "container started");
        let rec = self.ctrs.entry(c.name.clone()).or_default();
        rec.id = id;
        rec.attempt = attempt;
        if restart {
            rec.restart_count += 1;
        }
        rec.waiting = None;
        rec.image_ref = image_ref;
        rec.started_at = Some(Instant::now());
        rec.not_before = if restart { rec.not_before } else { None };
        rec.probes = ProbeState { started: c.startup_probe.is_none(), ..Default::default() };
        rec.state = Some(CState::Running { started_at: Timestamp::now() });
        Ok(true)
    }

    fn set_waiting(&mut self, name: &str, reason: &str, message: String) {
        tracing::warn!(pod = %self.key, container = name, reason, %message, "container waiting");
        let rec = self.ctrs.entry(name.to_string()).or_default();
        rec.waiting = Some((reason.into(), message.clone()));
        if rec.id.is_empty() {
            rec.state = Some(CState::Waiting { reason: reason.into(), message });
        }
    }

    /// Runs due startup/liveness/readiness probes of a running container.
    async fn probe(&mut self, c: &Container) {
        let Some(rec) = self.ctrs.get(&c.name).cloned() else { return };
        let now = Instant::now();
        let since_start = rec.started_at.map(|s| now.duration_since(s)).unwrap_or_default();
        let mut ps = rec.probes.clone();
        let ip = self.pod_ips.first().and_then(|i| i.parse::<IpAddr>().ok());
        let mut kill = false;
        for (kind, probe) in [("startup", &c.startup_probe), ("liveness", &c.liveness_probe), ("readiness", &c.readiness_probe)] {
            let Some(p) = probe else {
                if kind == "readiness" {
                    ps.ready = ps.started;
                }
                continue;
            };
            if kind != "startup" && !ps.started {
                continue;
            }
            if kind == "startup" && ps.started {
                continue;
            }
            if since_start < Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64) {
                continue;
            }
            if ps.next.get(kind).is_some_and(|t| now < *t) {
                continue;
            }
            ps.next.insert(kind, now + Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64));
            let ok = run_probe(self.sh.cri.as_ref(), &rec.id, p, ip, c, self.sh.netns.as_deref()).await;
            let fail_th = p.failure_threshold.unwrap_or(3).max(1);
            let succ_th = p.success_threshold.unwrap_or(1).max(1);
            match (kind, ok) {
                ("startup", true) => ps.started = true,
                ("startup", false) => {
                    ps.start_failures += 1;
                    kill |= ps.start_failures >= fail_th;
                }
                ("liveness", true) => ps.live_failures = 0,
                ("liveness", false) => {
                    ps.live_failures += 1;
                    kill |= ps.live_failures >= fail_th;
                }
                (_, true) => {
                    ps.ready_failures = 0;
                    ps.ready_successes += 1;
                    if ps.ready_successes >= succ_th {
                        ps.ready = true;
                    }
                }
                (_, false) => {
                    ps.ready_successes = 0;
                    ps.ready_failures += 1;
                    if ps.ready_failures >= fail_th {
                        ps.ready = false;
                    }
                }
            }
        }
        if kill {
            tracing::info!(pod = %self.key, container = %c.name, "probe failed: killing container, it will be restarted");
            let grace = c.liveness_probe.as_ref().and_then(|p| p.termination_grace_period_seconds).or(self.spec().termination_grace_period_seconds).unwrap_or(30);
            let _ = self.sh.cri.stop_container(&rec.id, grace).await;
            ps = ProbeState::default();
        }
        if let Some(r) = self.ctrs.get_mut(&c.name) {
            r.probes = ps;
        }
    }

    /// The observation the status is computed from.
    pub fn observed(&self) -> Observed {
        let spec = self.spec();
        let obs = |c: &Container| -> Option<ObservedContainer> {
            let r = self.ctrs.get(&c.name)?;
            let state = match (&r.waiting, &r.state) {
                (Some((reason, message)), Some(CState::Terminated { .. }) | Some(CState::Waiting { .. }) | None) => CState::Waiting { reason: reason.clone(), message: message.clone() },
                (_, Some(s)) => s.clone(),
                (_, None) => return None,
            };
            let running = matches!(state, CState::Running { .. });
            Some(ObservedContainer {
                name: c.name.clone(),
                ready: running && r.probes.ready && r.probes.started,
                started: running && r.probes.started,
                state,
                last_state: r.last_term.clone(),
                restart_count: r.restart_count,
                image: c.image.clone().unwrap_or_default(),
                image_id: r.image_ref.clone(),
                container_id: if r.id.is_empty() { String::new() } else { format!("containerd://{}", r.id) },
            })
        };
        Observed {
            sandbox_ready: self.sandbox_id.is_some() && !self.sandbox_stopped,
            pod_ips: self.pod_ips.clone(),
            host_ip: self.sh.node.node_ip.to_string(),
            init: spec.init_containers.iter().flatten().filter_map(obs).collect(),
            containers: spec.containers.iter().filter_map(obs).collect(),
        }
    }

    async fn write_status(&mut self) -> Result<()> {
        let mut st = status::compute(&self.pod, &self.observed(), Timestamp::now());
        if let (Some(err), None) = (&self.sandbox_error, &self.sandbox_id) {
            if let Some(cs) = st.conditions.as_mut().and_then(|c| c.iter_mut().find(|c| c.type_ == "PodReadyToStartContainers")) {
                cs.reason = Some("FailedCreatePodSandBox".into());
                cs.message = Some(err.clone());
            }
        }
        if !status_differs(self.pod.status.as_ref(), &st) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), self.pod.metadata.namespace.as_deref().unwrap_or("default"));
        let patch = serde_json::json!({ "status": st });
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(p) => {
                self.pod.status = p.status;
                Ok(())
            }
            Err(e) => Err(AgentError::kube("patch status", format!("pod/{}", self.key))(e)),
        }
    }

    /// Stops containers within `grace` seconds (None: the pod vanished: 2 s), stops and removes
    /// the sandbox (CNI DEL frees the IP), removes the pod's volume directory.
    pub async fn teardown(&mut self, grace: Option<i64>) {
        let grace = grace.unwrap_or(2);
        let ids: Vec<String> = self.ctrs.values().map(|c| c.id.clone()).filter(|i| !i.is_empty()).collect();
        let stops = ids.iter().map(|id| self.sh.cri.stop_container(id, grace));
        for r in futures::future::join_all(stops).await {
            if let Err(e) = r {
                if !e.is_not_found() {
                    tracing::warn!(pod = %self.key, error = %e, "stopping container");
                }
            }
        }
        let mut sandboxes: Vec<String> = self.sandbox_id.iter().cloned().collect();
        let uid = self.uid();
        if let Ok(all) = self.sh.cri.list_pod_sandboxes().await {
            sandboxes.extend(all.into_iter().filter(|s| s.labels.get(translate::labels::POD_UID) == Some(&uid)).map(|s| s.id));
        }
        sandboxes.sort();
        sandboxes.dedup();
        for id in sandboxes {
            if let Err(e) = self.sh.cri.stop_pod_sandbox(&id).await {
                tracing::warn!(pod = %self.key, sandbox = %id, error = %e, "stopping sandbox");
            }
            if let Err(e) = self.sh.cri.remove_pod_sandbox(&id).await {
                tracing::warn!(pod = %self.key, sandbox = %id, error = %e, "removing sandbox");
            }
        }
        let dir = self.sh.pods_dir.join(&uid);
        let _ = std::fs::remove_dir_all(&dir);
        crate::cgroups::remove(std::path::Path::new(crate::cgroups::ROOT), &translate::pod_cgroup(&self.pod, &self.sh.node));
        self.sandbox_id = None;
        tracing::info!(pod = %self.key, "pod torn down");
    }

    /// The final delete (grace 0, UID precondition) once the runtime is clean.
    async fn finalize_delete(&self) {
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), self.pod.metadata.namespace.as_deref().unwrap_or("default"));
        let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: self.pod.metadata.uid.clone(), resource_version: None }), ..Default::default() };
        match api.delete(self.pod.metadata.name.as_deref().unwrap_or(""), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.key, error = %e, "final delete"),
        }
    }
}

/// Compares statuses ignoring nothing: transition times are preserved by [`status::compute`],
/// so an unchanged pod produces an equal status and no write.
fn status_differs(old: Option<&k8s_openapi::api::core::v1::PodStatus>, new: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    let norm = |s: &k8s_openapi::api::core::v1::PodStatus| serde_json::to_value(s).unwrap_or_default();
    old.map(norm) != Some(norm(new))
}

/// Runs one probe: exec through CRI, httpGet / tcpSocket from the agent to the pod IP.
async fn run_probe(cri: &dyn Cri, id: &str, p: &Probe, pod_ip: Option<IpAddr>, c: &Container, netns: Option<&std::path::Path>) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| -> Option<u16> {
        match port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => u16::try_from(*i).ok(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                c.ports.iter().flatten().find(|cp| cp.name.as_deref() == Some(name.as_str())).and_then(|cp| u16::try_from(cp.container_port).ok())
            }
        }
    };
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return matches!(cri.exec_sync(id, cmd, timeout.as_secs() as i64).await, Ok((0, _, _)));
    }
    if let Some(t) = &p.tcp_socket {
        let (Some(ip), Some(port)) = (t.host.as_deref().and_then(|h| h.parse().ok()).or(pod_ip), port_of(&t.port)) else { return false };
        return crate::netns::connect(SocketAddr::new(ip, port), netns, timeout).await.is_ok();
    }
    if let Some(h) = &p.http_get {
        let (Some(ip), Some(port)) = (h.host.as_deref().and_then(|h| h.parse().ok()).or(pod_ip), port_of(&h.port)) else { return false };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let fut = async move {
            let mut s = crate::netns::connect(SocketAddr::new(ip, port), netns, timeout).await.ok()?;
            let req = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = vec![0u8; 64];
            let n = s.read(&mut buf).await.ok()?;
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(code)
        };
        return matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(code)) if (200..400).contains(&code));
    }
    if p.grpc.is_some() {
        tracing::warn!(container = %c.name, "grpc probes are not supported; treating as failed");
    }
    false
}
