//! Label and label-selector formatting as apimachinery prints them:
//! `labels.FormatLabels`, `metav1.LabelSelectorAsSelector(..).String()` and
//! `metav1.FormatLabelSelector`.

use serde_json::{Map, Value};

use crate::json::{arr_at, map_at, str_at};

/// `labels.FormatLabels`: `k=v` pairs sorted by key, joined by `,`; `<none>` when empty.
pub(crate) fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<(&str, &str)> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `LabelSelectorAsSelector(sel).String()`. `Err(())` where upstream returns an error (an
/// operator it does not know, `In` without values, `Exists` with values). A missing selector
/// (`labels.Nothing()`) and an empty one (`labels.Everything()`) both print as "".
pub(crate) fn selector_string(selector: Option<&Value>) -> Result<String, ()> {
    let Some(selector) = selector.filter(|s| !s.is_null()) else {
        return Ok(String::new());
    };
    // (key, rendered requirement)
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(ml) = map_at(selector, &["matchLabels"]) {
        for (k, v) in ml {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for expr in arr_at(selector, &["matchExpressions"]) {
        let key = str_at(expr, &["key"]);
        let mut values: Vec<&str> = arr_at(expr, &["values"])
            .iter()
            .map(|v| v.as_str().unwrap_or(""))
            .collect();
        values.sort_unstable();
        let rendered = match str_at(expr, &["operator"]) {
            "In" | "NotIn" if values.is_empty() => return Err(()),
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return Err(()),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return Err(()),
        };
        reqs.push((key.to_string(), rendered));
    }
    // internalSelector sorts its requirements by key.
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: like [`selector_string`] but `<none>` when empty and `<error>`
/// when invalid.
pub(crate) fn format_label_selector(selector: Option<&Value>) -> String {
    match selector_string(selector) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(()) => "<error>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_sorted_and_none() {
        let l = json!({"b": "2", "a": "1"});
        assert_eq!(format_labels(l.as_object()), "a=1,b=2");
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(format_labels(json!({}).as_object()), "<none>");
    }

    #[test]
    fn selectors() {
        let s = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "zone", "operator": "Exists"}
            ]
        });
        assert_eq!(
            selector_string(Some(&s)),
            Ok("app=web,!canary,env notin (dev),tier in (be,fe),zone".to_string())
        );
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(format_label_selector(None), "<none>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]});
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
    }
}
