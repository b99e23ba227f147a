//! WATCH: initial state (when asked), then store events turned into ADDED/MODIFIED/DELETED for
//! the objects that match the selectors, BOOKMARKs when asked, ERROR 410 for compacted revisions.

use std::sync::Arc;
use std::time::Duration;

use dari_api::registry::Resource;
use dari_store::{Event, Revision};
use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::rest::{decode_at, Api, Filter, ListQuery};

/// Watch parameters beyond the list ones.
#[derive(Clone, Debug, Default)]
pub struct WatchQuery {
    /// Selectors, resourceVersion.
    pub list: ListQuery,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Bookmark interval (a minute upstream; shorter in tests).
    pub bookmark_interval: Duration,
}

/// A watch event, before encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    /// ADDED, MODIFIED, DELETED, BOOKMARK, ERROR.
    pub kind: &'static str,
    /// The object (or Status for ERROR).
    pub object: Value,
}

/// Starts a watch.
pub async fn watch(api: Arc<Api>, r: &'static Resource, ns: Option<String>, q: WatchQuery) -> ApiResult<BoxStream<'static, WatchEvent>> {
    let filter = Arc::new(Filter::new(r, &q.list)?);
    let rv = q.list.resource_version.clone().unwrap_or_default();
    let initial = q.send_initial_events.unwrap_or(rv.is_empty() || rv == "0");
    let mut first: Vec<WatchEvent> = Vec::new();
    let from: Revision;
    if initial {
        let lq = ListQuery { label_selector: q.list.label_selector.clone(), field_selector: q.list.field_selector.clone(), ..Default::default() };
        let (items, meta) = api.list(r, ns.as_deref(), &lq).await?;
        from = meta["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        first.extend(items.into_iter().map(|o| WatchEvent { kind: "ADDED", object: o }));
        if q.send_initial_events == Some(true) {
            first.push(bookmark(r, from, true));
        }
    } else {
        from = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    }
    let prefix = r.prefix(ns.as_deref());
    // Bookmarks come from the store's progress marks ("every event up to R was delivered"), in
    // order with the events, never from the current revision, which may run ahead of events still
    // on their way (a client resuming from such a bookmark would miss them).
    let watched = if q.bookmarks {
        let every = if q.bookmark_interval.is_zero() { Duration::from_secs(60) } else { q.bookmark_interval };
        api.store().watch_with_progress(&prefix, from, every).await
    } else {
        api.store().watch(&prefix, from).await.map(|s| s.map(|r| r.map(dari_store::WatchItem::Event)).boxed())
    };
    let events = match watched {
        Ok(s) => s,
        Err(dari_store::StoreError::Compacted { requested, compacted }) => {
            let status = ApiError::gone(format!("too old resource version: {requested} ({compacted})")).to_status();
            return Ok(futures::stream::iter(vec![WatchEvent { kind: "ERROR", object: status }]).boxed());
        }
        Err(e) => return Err(e.into()),
    };
    let f = filter.clone();
    let mut last_bookmark = from;
    let mapped = events.filter_map(move |ev| {
        let f = f.clone();
        let out = match ev {
            Ok(dari_store::WatchItem::Event(ev)) => translate(&f, ev),
            Ok(dari_store::WatchItem::Progress(rev)) if rev >= last_bookmark => {
                last_bookmark = rev;
                Some(bookmark(r, rev, false))
            }
            Ok(dari_store::WatchItem::Progress(_)) => None,
            Err(e) => Some(WatchEvent { kind: "ERROR", object: ApiError::from(e).to_status() }),
        };
        async move { out }
    });
    let mut stream: BoxStream<'static, WatchEvent> = futures::stream::iter(first).chain(mapped).boxed();
    if let Some(t) = q.timeout {
        let deadline = tokio::time::sleep(t);
        stream = stream.take_until(deadline).boxed();
    }
    Ok(stream)
}

fn bookmark(r: &Resource, rev: Revision, initial_end: bool) -> WatchEvent {
    let mut md = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    WatchEvent { kind: "BOOKMARK", object: json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": md}) }
}

/// Turns one store event into a watch event for this filter (or nothing).
fn translate(filter: &Filter, ev: Event) -> Option<WatchEvent> {
    match ev {
        Event::Put { kv, prev } => {
            let new = decode_at(&kv.value, kv.mod_revision, &kv.key).ok()?;
            let old = prev.as_ref().and_then(|p| decode_at(&p.value, p.mod_revision, &p.key).ok());
            let now = filter.matches(&new);
            let before = old.as_ref().is_some_and(|o| filter.matches(o));
            match (before, now) {
                (_, true) if old.is_none() => Some(WatchEvent { kind: "ADDED", object: new }),
                (true, true) => Some(WatchEvent { kind: "MODIFIED", object: new }),
                (false, true) => Some(WatchEvent { kind: "ADDED", object: new }),
                (true, false) => {
                    // left the selection: DELETED with the new state (as upstream's cacher)
                    Some(WatchEvent { kind: "DELETED", object: new })
                }
                (false, false) => None,
            }
        }
        Event::Delete { prev, revision } => {
            let old = decode_at(&prev.value, revision, &prev.key).ok()?;
            filter.matches(&old).then_some(WatchEvent { kind: "DELETED", object: old })
        }
    }
}
