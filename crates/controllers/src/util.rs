//! Pure helpers shared by controllers and the scheduler: label selectors, pod readiness, tolerations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;

/// Does a metav1.LabelSelector match these labels? (An empty selector matches everything.)
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let has = labels.get(&e.key);
        let vals = e.values.clone().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => has.is_some_and(|v| vals.contains(v)),
            "NotIn" => !has.is_some_and(|v| vals.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A selector that selects nothing when absent or empty (what workload controllers use).
pub fn selector_selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match sel {
        None => false,
        Some(s) if s.match_labels.as_ref().is_none_or(|m| m.is_empty()) && s.match_expressions.as_ref().is_none_or(|m| m.is_empty()) => false,
        Some(s) => selector_matches(s, labels),
    }
}

/// Does a Service-style map selector match?
pub fn map_selector_matches(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Ready condition True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// When the Ready condition became True (or `now` if it carries no time).
pub fn pod_ready_since(pod: &Pod) -> Option<Timestamp> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    if c.status != "True" {
        return None;
    }
    Some(c.last_transition_time.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now))
}

/// Ready for at least `min_ready_seconds` (at `now`).
pub fn pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(t) => now.as_second() - t.as_second() >= i64::from(min_ready_seconds),
    }
}

/// Phase Succeeded or Failed.
pub fn pod_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed"))
}

/// Counts for a ReplicaSet/DaemonSet: not terminal and not being deleted.
pub fn pod_active(pod: &Pod) -> bool {
    !pod_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Does `tol` tolerate `taint`? (upstream `Toleration.ToleratesTaint`)
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = tol.effect.as_deref() {
        if !e.is_empty() && e != taint.effect {
            return false;
        }
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("") && !key.is_empty(),
    }
}

/// The first taint with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(taints: &'a [Taint], tols: &[Toleration], effects: &[&str]) -> Option<&'a Taint> {
    taints.iter().filter(|t| effects.contains(&t.effect.as_str())).find(|t| !tols.iter().any(|tol| tolerates(tol, t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement { key: "tier".into(), operator: "NotIn".into(), values: Some(vec!["db".into()]) }]),
        };
        assert!(selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(selector_matches(&sel, &labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "web"), ("tier", "db")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "db")])));
        assert!(!selector_selects(Some(&LabelSelector::default()), &labels(&[("a", "b")])));
    }

    #[test]
    fn toleration_rules() {
        let taint = Taint { key: "node.kubernetes.io/unreachable".into(), effect: "NoExecute".into(), ..Default::default() };
        let exists = Toleration { key: Some("node.kubernetes.io/unreachable".into()), operator: Some("Exists".into()), ..Default::default() };
        let all = Toleration { operator: Some("Exists".into()), ..Default::default() };
        let wrong_effect = Toleration { operator: Some("Exists".into()), effect: Some("NoSchedule".into()), ..Default::default() };
        assert!(tolerates(&exists, &taint));
        assert!(tolerates(&all, &taint));
        assert!(!tolerates(&wrong_effect, &taint));
        assert_eq!(untolerated(std::slice::from_ref(&taint), &[wrong_effect], &["NoExecute"]).map(|t| t.key.as_str()), Some("node.kubernetes.io/unreachable"));
    }
}
