//! Lenient accessors over stored objects: a missing or mistyped field reads as Go's zero value,
//! which is what the upstream printers see after decoding into typed structs.

use chrono::{DateTime, Datelike, Utc};
use serde_json::{Map, Value};

pub(crate) fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |acc, key| acc.get(*key))
        .filter(|x| !x.is_null())
}

pub(crate) fn present(v: &Value, path: &[&str]) -> bool {
    get(v, path).is_some()
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn opt_str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

pub(crate) fn int_at(v: &Value, path: &[&str]) -> i64 {
    opt_int_at(v, path).unwrap_or(0)
}

pub(crate) fn opt_int_at(v: &Value, path: &[&str]) -> Option<i64> {
    get(v, path).and_then(Value::as_i64)
}

pub(crate) fn bool_at(v: &Value, path: &[&str]) -> bool {
    opt_bool_at(v, path).unwrap_or(false)
}

pub(crate) fn opt_bool_at(v: &Value, path: &[&str]) -> Option<bool> {
    get(v, path).and_then(Value::as_bool)
}

pub(crate) fn arr_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub(crate) fn map_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    get(v, path).and_then(Value::as_object)
}

/// Number of keys of a map field (0 when absent).
pub(crate) fn map_len(v: &Value, path: &[&str]) -> usize {
    map_at(v, path).map_or(0, Map::len)
}

/// A metav1.Time / metav1.MicroTime field. Unparseable or Go's zero time (0001-01-01) reads as
/// `None`, matching `IsZero()` upstream.
pub(crate) fn time_at(v: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    let s = opt_str_at(v, path)?;
    let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    if t.year() == 1 && t.ordinal() == 1 && t.timestamp() % 86_400 == 0 {
        return None;
    }
    Some(t)
}
