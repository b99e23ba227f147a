//! The small controller runtime every controller here shares: [`Informer`] (one watch + cache per
//! resource, handlers called with the old and new object), [`Queue`] (a deduplicating work queue with
//! per-key backoff, like client-go's), [`Expectations`] (creations/deletions in flight, so a stale cache
//! never makes a controller create twice) and [`Recorder`] (core/v1 Events, aggregated by count).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

type Handler<K> = Box<dyn Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync>;

/// One watch on one resource, cached in a [`Store`]; handlers see `(old, new)` for every change
/// (`new == None` for a deletion), and a full replay after every relist.
pub struct Informer<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    cfg: watcher::Config,
    store: Store<K>,
    writer: Mutex<Option<Writer<K>>>,
    handlers: Arc<Mutex<Vec<Handler<K>>>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer over `api` (not started).
    pub fn new(api: Api<K>, cfg: watcher::Config) -> Arc<Self> {
        let writer = Writer::default();
        let store = writer.as_reader();
        Arc::new(Informer { api, cfg, store, writer: Mutex::new(Some(writer)), handlers: Arc::new(Mutex::new(Vec::new())) })
    }

    /// The cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Registers a change handler (call before [`Informer::start`]). Handlers must be cheap: they enqueue keys.
    pub fn on_change(&self, f: impl Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync + 'static) {
        if let Ok(mut h) = self.handlers.lock() {
            h.push(Box::new(f));
        }
    }

    /// Starts the watch loop (once) in `tasks` (dropping the set stops it).
    pub fn start(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let me = self.clone();
        tasks.spawn(async move {
            let Some(mut writer) = writer else { return };
            // managedFields are never read by controllers: not caching them saves memory on every object
            let mut stream = watcher(me.api.clone(), me.cfg.clone()).default_backoff().modify(|o| o.meta_mut().managed_fields = None).boxed();
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!(kind = %K::kind(&()), error = %e, "watch error, retrying");
                        continue;
                    }
                };
                let Ok(handlers) = me.handlers.lock() else { return };
                match &ev {
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                        let r = ObjectRef::from_obj(o);
                        let old = me.store.get(&r);
                        writer.apply_watcher_event(&ev);
                        let new = if matches!(ev, watcher::Event::Delete(_)) { None } else { me.store.get(&r) };
                        for h in handlers.iter() {
                            h(old.as_ref(), new.as_ref());
                        }
                    }
                    watcher::Event::InitDone => {
                        let before: HashMap<ObjectRef<K>, Arc<K>> = me.store.state().into_iter().map(|o| (ObjectRef::from_obj(&*o), o)).collect();
                        writer.apply_watcher_event(&ev);
                        let after = me.store.state();
                        let mut seen = HashSet::new();
                        for o in &after {
                            let r = ObjectRef::from_obj(&**o);
                            let old = before.get(&r);
                            seen.insert(r);
                            for h in handlers.iter() {
                                h(old, Some(o));
                            }
                        }
                        for (r, o) in &before {
                            if !seen.contains(r) {
                                for h in handlers.iter() {
                                    h(Some(o), None);
                                }
                            }
                        }
                    }
                    _ => writer.apply_watcher_event(&ev),
                }
            }
        });
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn key_of(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        _ => meta.name.clone().unwrap_or_default(),
    }
}

/// Splits a key into (namespace, name).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, key),
    }
}

/// Cache lookup by key.
pub fn get<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, key: &str) -> Option<Arc<K>> {
    let (ns, name) = split_key(key);
    let mut r = ObjectRef::new(name);
    if let Some(ns) = ns {
        r = r.within(ns);
    }
    store.get(&r)
}

#[derive(Default)]
struct QState {
    order: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// A deduplicating work queue: a key is never processed by two workers at once, and a key added while
/// being processed is processed again afterwards.
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<QState>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let Ok(mut s) = self.state.lock() else { return };
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.order.push_back(key);
            self.notify.notify_one();
        }
    }

    /// Adds a key after a delay.
    pub fn add_after(&self, key: impl Into<String>, after: Duration) {
        let key = key.into();
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            q.add(key);
        });
    }

    /// Number of keys waiting.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.order.len()).unwrap_or(0)
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<String> {
        let mut s = self.state.lock().ok()?;
        let k = s.order.pop_front()?;
        s.queued.remove(&k);
        s.processing.insert(k.clone());
        if !s.order.is_empty() {
            self.notify.notify_one();
        }
        Some(k)
    }

    /// Waits for the next key.
    pub async fn next(&self) -> String {
        loop {
            if let Some(k) = self.pop() {
                return k;
            }
            self.notify.notified().await;
        }
    }

    /// Marks a key processed; `failed` requeues it with exponential backoff (5 ms doubling, at most 30 s).
    pub fn done(&self, key: &str, failed: bool) {
        let (again, delay) = {
            let Ok(mut s) = self.state.lock() else { return };
            s.processing.remove(key);
            let delay = if failed {
                let n = s.failures.entry(key.to_string()).or_insert(0);
                *n += 1;
                Some(Duration::from_millis(5u64.saturating_mul(1 << (*n).min(13))).min(Duration::from_secs(30)))
            } else {
                s.failures.remove(key);
                None
            };
            (s.dirty.remove(key), delay)
        };
        if again {
            self.add(key.to_string());
        }
        if let Some(d) = delay {
            self.add_after(key.to_string(), d);
        }
    }
}

/// Runs `workers` workers over `queue`; `f` returns an optional requeue delay.
pub async fn run_workers<F, Fut, E>(name: &'static str, queue: Queue, workers: usize, f: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Duration>, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let q = queue.clone();
        let f = f.clone();
        tasks.spawn(async move {
            loop {
                let key = q.next().await;
                let res = f(key.clone()).await;
                match res {
                    Ok(again) => {
                        q.done(&key, false);
                        if let Some(d) = again {
                            q.add_after(key, d);
                        }
                    }
                    Err(e) => {
                        let mut msg = e.to_string();
                        let mut src = e.source();
                        while let Some(s) = src {
                            msg.push_str(": ");
                            msg.push_str(&s.to_string());
                            src = s.source();
                        }
                        tracing::warn!(controller = name, %key, error = %msg, "reconcile failed, retrying");
                        q.done(&key, true);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[derive(Default)]
struct Exp {
    adds: i64,
    dels: HashSet<String>,
    at: Option<Instant>,
}

/// Creations and deletions a controller issued but has not yet seen in its cache.
#[derive(Default)]
pub struct Expectations {
    m: Mutex<HashMap<String, Exp>>,
}

const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

impl Expectations {
    /// Expects `n` more creations for `key`.
    pub fn expect_creations(&self, key: &str, n: i64) {
        if let Ok(mut m) = self.m.lock() {
            let e = m.entry(key.to_string()).or_default();
            e.adds += n;
            e.at = Some(Instant::now());
        }
    }

    /// A creation was seen (or failed).
    pub fn creation_observed(&self, key: &str) {
        if let Ok(mut m) = self.m.lock() {
            if let Some(e) = m.get_mut(key) {
                e.adds -= 1;
            }
        }
    }

    /// Expects deletion of these pods.
    pub fn expect_deletions(&self, key: &str, names: impl IntoIterator<Item = String>) {
        if let Ok(mut m) = self.m.lock() {
            let e = m.entry(key.to_string()).or_default();
            e.dels.extend(names);
            e.at = Some(Instant::now());
        }
    }

    /// A deletion was seen (or failed).
    pub fn deletion_observed(&self, key: &str, name: &str) {
        if let Ok(mut m) = self.m.lock() {
            if let Some(e) = m.get_mut(key) {
                e.dels.remove(name);
            }
        }
    }

    /// True when nothing is in flight (or the expectations are older than 5 minutes).
    pub fn satisfied(&self, key: &str) -> bool {
        let Ok(m) = self.m.lock() else { return true };
        match m.get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels.is_empty()) || e.at.is_some_and(|t| t.elapsed() > EXPECTATIONS_TTL),
        }
    }

    /// Forgets a key (its object is gone).
    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.m.lock() {
            m.remove(key);
        }
    }
}

/// (involved uid, reason, message, type) of an event, for counting repeats.
type EventKey = (String, String, String, String);

/// Writes core/v1 Events (what `kubectl describe` lists), counting repeats like client-go's recorder.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<HashMap<EventKey, (String, String, i32)>>>,
}

impl Recorder {
    /// A recorder that signs events as `component`.
    pub fn new(client: Client, component: &str) -> Self {
        Recorder { client, component: component.to_string(), host: None, seen: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Records an event about `obj` in the background (failures are logged, never fatal).
    pub fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: &str, reason: &str, message: String) {
        let r = object_ref(obj);
        self.event_ref(r, type_, reason, message)
    }

    /// Records an event about a reference.
    pub fn event_ref(&self, r: ObjectReference, type_: &str, reason: &str, message: String) {
        let ns = r.namespace.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".to_string());
        let dedup = (r.uid.clone().unwrap_or_default(), reason.to_string(), message.clone(), type_.to_string());
        let now = Time(Timestamp::now());
        let prev = self.seen.lock().ok().and_then(|mut s| {
            let p = s.get(&dedup).cloned();
            let (name, cns, count) = p.clone().unwrap_or_else(|| {
                (format!("{}.{:x}", r.name.clone().unwrap_or_default(), Timestamp::now().as_nanosecond()), ns.clone(), 0)
            });
            if s.len() > 4096 {
                s.clear();
            }
            s.insert(dedup.clone(), (name, cns, count + 1));
            p
        });
        let client = self.client.clone();
        let component = self.component.clone();
        let host = self.host.clone();
        let type_ = type_.to_string();
        let reason = reason.to_string();
        tokio::spawn(async move {
            let api: Api<CoreEvent> = Api::namespaced(client, &ns);
            if let Some((name, _, count)) = prev {
                let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
                if api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                    return;
                }
            }
            let name = format!("{}.{:x}", r.name.clone().unwrap_or_default(), Timestamp::now().as_nanosecond());
            let ev = CoreEvent {
                metadata: ObjectMeta { name: Some(name), namespace: Some(ns.clone()), ..Default::default() },
                involved_object: r,
                reason: Some(reason),
                message: Some(message),
                type_: Some(type_),
                count: Some(1),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now.clone()),
                source: Some(EventSource { component: Some(component.clone()), host }),
                reporting_component: Some(component),
                reporting_instance: Some(String::new()),
                ..Default::default()
            };
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "writing event failed");
            }
        });
    }
}

/// An ObjectReference to `obj`.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))
}

/// A controller ownerReference pointing at `owner`.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
