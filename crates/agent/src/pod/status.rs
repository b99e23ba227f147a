//! Observed runtime state → `PodStatus`, the way the kubelet computes it (phase, conditions,
//! containerStatuses), pure so it is unit-tested without a runtime.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A point in time (what `metav1.Time` wraps).
pub type Timestamp = k8s_openapi::jiff::Timestamp;

/// A container's state as observed through CRI (plus the agent's own decisions, e.g. a
/// back-off or an image error).
#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    /// Not running: being created, backing off, or blocked.
    Waiting {
        /// `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`, `CreateContainerConfigError`...
        reason: String,
        /// Details.
        message: String,
    },
    /// Running since.
    Running {
        /// Start time.
        started_at: Timestamp,
    },
    /// Exited.
    Terminated {
        /// Exit code.
        exit_code: i32,
        /// `Completed`, `Error`, `OOMKilled`...
        reason: String,
        /// Start time.
        started_at: Option<Timestamp>,
        /// Exit time.
        finished_at: Option<Timestamp>,
        /// `containerd://<id>`.
        container_id: String,
    },
}

/// One container as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    /// Container name.
    pub name: String,
    /// Current state.
    pub state: CState,
    /// The previous attempt's termination, if it restarted.
    pub last_state: Option<CState>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Readiness (probe result; true when running without a readiness probe).
    pub ready: bool,
    /// Startup probe passed (or none) and running.
    pub started: bool,
    /// Image as in the spec.
    pub image: String,
    /// Image reference (digest) from the runtime.
    pub image_id: String,
    /// `containerd://<id>` of the current attempt, empty if none.
    pub container_id: String,
}

/// Everything the status is computed from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// The sandbox exists and is ready.
    pub sandbox_ready: bool,
    /// Pod IPs (first is podIP).
    pub pod_ips: Vec<String>,
    /// The node's IP.
    pub host_ip: String,
    /// Init containers, in spec order (only those that have been attempted).
    pub init: Vec<ObservedContainer>,
    /// App containers, in spec order (only those that have been attempted).
    pub containers: Vec<ObservedContainer>,
}

fn to_api(s: &CState) -> ContainerState {
    match s {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: (!message.is_empty()).then(|| message.clone()) }),
            ..Default::default()
        },
        CState::Running { started_at } => ContainerState { running: Some(ContainerStateRunning { started_at: Some(Time(*started_at)) }), ..Default::default() },
        CState::Terminated { exit_code, reason, started_at, finished_at, container_id } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                started_at: started_at.map(Time),
                finished_at: finished_at.map(Time),
                container_id: (!container_id.is_empty()).then(|| container_id.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn container_status(o: &ObservedContainer) -> ContainerStatus {
    ContainerStatus {
        name: o.name.clone(),
        state: Some(to_api(&o.state)),
        last_state: Some(o.last_state.as_ref().map(to_api).unwrap_or_default()),
        ready: o.ready,
        started: Some(o.started),
        restart_count: o.restart_count,
        image: o.image.clone(),
        image_id: o.image_id.clone(),
        container_id: (!o.container_id.is_empty()).then(|| o.container_id.clone()),
        ..Default::default()
    }
}

fn init_succeeded(c: &ObservedContainer) -> bool {
    matches!(c.state, CState::Terminated { exit_code: 0, .. })
}

/// The pod phase from its containers (the kubelet's `getPhase`).
pub fn phase(pod: &Pod, obs: &Observed) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let n_init = spec.init_containers.as_ref().map(Vec::len).unwrap_or(0);
    let init_done = obs.init.iter().filter(|c| init_succeeded(c)).count();
    if init_done < n_init {
        let init_failed = obs.init.iter().any(|c| matches!(c.state, CState::Terminated { exit_code, .. } if exit_code != 0));
        return if init_failed && policy == "Never" { "Failed".into() } else { "Pending".into() };
    }
    if obs.containers.len() < spec.containers.len() {
        return "Pending".into();
    }
    let (mut running, mut waiting, mut stopped, mut failed) = (0, 0, 0, 0);
    for c in &obs.containers {
        match &c.state {
            CState::Running { .. } => running += 1,
            CState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code != 0 {
                    failed += 1
                }
            }
            CState::Waiting { .. } => {
                if matches!(c.last_state, Some(CState::Terminated { .. })) {
                    stopped += 1
                } else {
                    waiting += 1
                }
            }
        }
    }
    if waiting > 0 {
        return "Pending".into();
    }
    if running > 0 {
        return "Running".into();
    }
    if stopped > 0 {
        return match policy {
            "Always" => "Running".into(),
            "OnFailure" if failed > 0 => "Running".into(),
            "OnFailure" => "Succeeded".into(),
            _ if failed > 0 => "Failed".into(),
            _ => "Succeeded".into(),
        };
    }
    "Pending".into()
}

fn condition(prev: Option<&PodStatus>, type_: &str, ok: bool, reason: Option<&str>, message: Option<String>, now: Timestamp) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(last.unwrap_or(Time(now))),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

/// QoS class from requests and limits.
pub fn qos_class(pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let r = c.resources.clone().unwrap_or_default();
        let lim = r.limits.unwrap_or_default();
        let req = r.requests.unwrap_or_default();
        if !lim.is_empty() || !req.is_empty() {
            any = true;
        }
        for k in ["cpu", "memory"] {
            match (lim.get(k), req.get(k)) {
                (Some(l), Some(q)) if l == q => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort".into()
    } else if guaranteed {
        "Guaranteed".into()
    } else {
        "Burstable".into()
    }
}

/// The full status: phase, conditions (transition times kept while unchanged), IPs, container
/// statuses in spec order, startTime (kept once set), qosClass.
pub fn compute(pod: &Pod, obs: &Observed, now: Timestamp) -> PodStatus {
    let prev = pod.status.as_ref();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut phase = phase(pod, obs);
    if let Some(p) = prev.and_then(|p| p.phase.as_deref()) {
        if p == "Succeeded" || p == "Failed" {
            phase = p.to_string();
        }
    }
    let terminal = phase == "Succeeded" || phase == "Failed";
    let uninit: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !obs.init.iter().any(|o| o.name == c.name && init_succeeded(o)))
        .map(|c| c.name.clone())
        .collect();
    let unready: Vec<String> = spec.containers.iter().filter(|c| !obs.containers.iter().any(|o| o.name == c.name && o.ready)).map(|c| c.name.clone()).collect();
    let containers_ready = unready.is_empty() && !terminal;
    let gates_ok = spec.readiness_gates.as_ref().is_none_or(|g| {
        g.iter().all(|gate| prev.and_then(|p| p.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == gate.condition_type && c.status == "True")))
    });
    let (nr_reason, nr_msg) = if terminal {
        ("PodCompleted", None)
    } else {
        ("ContainersNotReady", Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    let ready_reason = if containers_ready { "ReadinessGatesNotReady" } else { nr_reason };
    let conditions = vec![
        condition(prev, "PodReadyToStartContainers", obs.sandbox_ready, None, None, now),
        condition(prev, "Initialized", uninit.is_empty() || terminal, Some("ContainersNotInitialized"), Some(format!("containers with incomplete status: [{}]", uninit.join(" "))), now),
        condition(prev, "Ready", containers_ready && gates_ok, Some(ready_reason), nr_msg.clone(), now),
        condition(prev, "ContainersReady", containers_ready, Some(nr_reason), nr_msg, now),
        condition(prev, "PodScheduled", true, None, None, now),
    ];
    let waiting_reason = if obs.sandbox_ready { "PodInitializing" } else { "ContainerCreating" };
    let statuses = |specs: &[k8s_openapi::api::core::v1::Container], obs: &[ObservedContainer], reason: &str| -> Vec<ContainerStatus> {
        specs
            .iter()
            .map(|c| match obs.iter().find(|o| o.name == c.name) {
                Some(o) => container_status(o),
                None => container_status(&ObservedContainer {
                    name: c.name.clone(),
                    state: CState::Waiting { reason: reason.into(), message: String::new() },
                    last_state: None,
                    restart_count: 0,
                    ready: false,
                    started: false,
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    container_id: String::new(),
                }),
            })
            .collect()
    };
    let app_reason = if uninit.is_empty() { if obs.sandbox_ready { "ContainerCreating" } else { waiting_reason } } else { "PodInitializing" };
    let container_statuses = statuses(&spec.containers, &obs.containers, app_reason);
    let init_statuses = spec.init_containers.as_ref().map(|ics| statuses(ics, &obs.init, waiting_reason));
    let start_time = prev.and_then(|p| p.start_time.clone()).unwrap_or(Time(now));
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: (!obs.host_ip.is_empty()).then(|| obs.host_ip.clone()),
        host_ips: (!obs.host_ip.is_empty()).then(|| vec![HostIP { ip: obs.host_ip.clone() }]),
        pod_ip: obs.pod_ips.first().cloned(),
        pod_ips: (!obs.pod_ips.is_empty()).then(|| obs.pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: Some(start_time),
        container_statuses: Some(container_statuses),
        init_container_statuses: init_statuses,
        qos_class: Some(qos_class(pod)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str, init: bool) -> Pod {
        let init = if init { "  initContainers: [{name: setup, image: x}]\n" } else { "" };
        serde_yaml::from_str(&format!("metadata: {{name: p, namespace: d}}\nspec:\n  restartPolicy: {policy}\n{init}  containers: [{{name: a, image: x}}, {{name: b, image: x}}]\n")).expect("pod")
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("ts")
    }

    fn running(name: &str, ready: bool) -> ObservedContainer {
        ObservedContainer {
            name: name.into(),
            state: CState::Running { started_at: t("2026-01-01T00:00:01Z") },
            last_state: None,
            restart_count: 0,
            ready,
            started: true,
            image: "x".into(),
            image_id: "sha256:1".into(),
            container_id: format!("containerd://{name}"),
        }
    }

    fn exited(name: &str, code: i32) -> ObservedContainer {
        ObservedContainer {
            state: CState::Terminated { exit_code: code, reason: if code == 0 { "Completed".into() } else { "Error".into() }, started_at: None, finished_at: None, container_id: String::new() },
            ready: false,
            ..running(name, false)
        }
    }

    fn obs(containers: Vec<ObservedContainer>) -> Observed {
        Observed { sandbox_ready: true, pod_ips: vec!["10.244.1.5".into()], host_ip: "10.0.0.5".into(), init: vec![], containers }
    }

    #[test]
    fn phase_table() {
        assert_eq!(phase(&pod("Always", false), &Observed::default()), "Pending");
        assert_eq!(phase(&pod("Always", false), &obs(vec![running("a", true)])), "Pending", "b not started yet");
        assert_eq!(phase(&pod("Always", false), &obs(vec![running("a", true), running("b", false)])), "Running");
        assert_eq!(phase(&pod("Always", false), &obs(vec![exited("a", 0), exited("b", 1)])), "Running", "Always restarts");
        assert_eq!(phase(&pod("Never", false), &obs(vec![exited("a", 0), exited("b", 0)])), "Succeeded");
        assert_eq!(phase(&pod("Never", false), &obs(vec![exited("a", 0), exited("b", 1)])), "Failed");
        assert_eq!(phase(&pod("OnFailure", false), &obs(vec![exited("a", 0), exited("b", 1)])), "Running");
        assert_eq!(phase(&pod("OnFailure", false), &obs(vec![exited("a", 0), exited("b", 0)])), "Succeeded");
        assert_eq!(phase(&pod("Never", false), &obs(vec![running("a", true), exited("b", 1)])), "Running");
        // back-off after a crash counts as stopped, not pending
        let mut backoff = running("b", false);
        backoff.state = CState::Waiting { reason: "CrashLoopBackOff".into(), message: String::new() };
        backoff.last_state = Some(exited("b", 1).state);
        assert_eq!(phase(&pod("Always", false), &obs(vec![running("a", true), backoff])), "Running");
        // init containers gate the pod
        let mut o = obs(vec![]);
        assert_eq!(phase(&pod("Always", true), &o), "Pending");
        o.init = vec![exited("setup", 1)];
        assert_eq!(phase(&pod("Never", true), &o), "Failed");
        o.init = vec![exited("setup", 0)];
        o.containers = vec![running("a", true), running("b", true)];
        assert_eq!(phase(&pod("Always", true), &o), "Running");
    }

    #[test]
    fn conditions_and_container_statuses() {
        let p = pod("Always", false);
        let now = t("2026-01-01T00:00:10Z");
        let s = compute(&p, &obs(vec![running("a", true), running("b", false)]), now);
        let c = |s: &PodStatus, ty: &str| s.conditions.as_ref().and_then(|cs| cs.iter().find(|c| c.type_ == ty).cloned()).expect("condition");
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(c(&s, "Ready").status, "False");
        assert_eq!(c(&s, "ContainersReady").message.as_deref(), Some("containers with unready status: [b]"));
        assert_eq!(c(&s, "Initialized").status, "True");
        assert_eq!(c(&s, "PodScheduled").status, "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        let cs = s.container_statuses.clone().expect("statuses");
        assert_eq!(cs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(cs[0].container_id.as_deref(), Some("containerd://a"));
        // later, b becomes ready: Ready flips with a new transition time; unchanged ones keep theirs
        let mut p2 = p.clone();
        p2.status = Some(s.clone());
        let later = t("2026-01-01T00:00:20Z");
        let s2 = compute(&p2, &obs(vec![running("a", true), running("b", true)]), later);
        assert_eq!(c(&s2, "Ready").status, "True");
        assert_eq!(c(&s2, "Ready").last_transition_time, Some(Time(later)));
        assert_eq!(c(&s2, "PodScheduled").last_transition_time, Some(Time(now)));
        assert_eq!(s2.start_time, s.start_time);
        // recomputing with nothing new is a fixed point (no status write)
        let mut p3 = p2.clone();
        p3.status = Some(s2.clone());
        assert_eq!(compute(&p3, &obs(vec![running("a", true), running("b", true)]), t("2026-01-01T00:00:30Z")), s2);
    }

    #[test]
    fn creating_pod_shows_container_creating() {
        let s = compute(&pod("Always", false), &Observed { host_ip: "10.0.0.5".into(), ..Default::default() }, t("2026-01-01T00:00:00Z"));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let w = s.container_statuses.expect("cs")[0].state.clone().and_then(|s| s.waiting).expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        assert!(s.pod_ip.is_none());
    }

    #[test]
    fn terminal_phase_sticks_and_marks_pod_completed() {
        let mut p = pod("Never", false);
        p.status = Some(PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        let s = compute(&p, &obs(vec![]), t("2026-01-01T00:00:00Z"));
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        let ready = s.conditions.expect("c").into_iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    }
}
