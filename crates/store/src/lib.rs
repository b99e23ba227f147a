//! dari-store: the datastore behind dari's API server.
//!
//! Start from the [`Store`] trait: a flat, ordered key space with etcd v3 semantics, which is what
//! kube-apiserver needs from etcd:
//!
//! - **One global revision counter.** A freshly initialised store is at revision **1** with no keys
//!   (as etcd after cluster bootstrap), so the first write gets revision 2 and no list ever reports
//!   revision 0 (which Kubernetes clients read as "any resourceVersion").
//! - **Every write bumps it by exactly one.** [`Store::create`], [`Store::update`] and
//!   [`Store::delete`] each take the next revision. A key's `mod_revision` is the revision of its last
//!   write (the API server serves it as `resourceVersion`); `create_revision` is the revision that
//!   created it (a key deleted and created again gets a new one).
//! - **Reads at a past revision** ([`ListOptions::revision`]) work until that revision is compacted;
//!   then they fail with [`StoreError::Compacted`]. Reads at a revision above the current one fail with
//!   [`StoreError::FutureRevision`].
//! - **Watch** ([`Store::watch`]) yields every event with a revision above `from` for keys under a
//!   prefix, in revision order, without gaps or duplicates, then follows live writes.
//! - **Compaction** ([`Store::compact`]) drops history at or below a revision, keeping for each key the
//!   value that was current at that revision; see [`spawn_auto_compactor`] for keeping the last N.
//!
//! The embedded backend is [`SqliteStore`] (kine-like: one log table, a `current` index table, WAL with
//! fsync on commit, a single writer thread doing group commit). The etcd v3 backend is [`EtcdStore`]
//! (its module documentation says how each operation maps onto etcd); with the `testing` feature,
//! `testing::EtcdCluster` starts real etcd processes on loopback for tests.

mod etcd;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

pub use etcd::{EtcdConfig, EtcdStore};
pub use sqlite::{SqliteConfig, SqliteStore};

/// A store revision (etcd's `mod_revision`/`create_revision`, Kubernetes' `resourceVersion`).
pub type Revision = i64;

/// A boxed error from a backend (SQLite, etcd client, a failed blocking task ...).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A key with its value and revisions, as read at some revision.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The stored bytes (dari stores JSON).
    pub value: Vec<u8>,
    /// The revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of the last write to this key.
    pub mod_revision: Revision,
}

/// One committed change, as delivered by [`Store::watch`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A create (`prev` is `None`) or an update (`prev` is the value it replaced).
    Put {
        /// The new value; `kv.mod_revision` is the event's revision.
        kv: KeyValue,
        /// The value before this write, if the key existed.
        prev: Option<KeyValue>,
    },
    /// A deletion.
    Delete {
        /// The value that was deleted.
        prev: KeyValue,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl Event {
    /// The revision at which this event was committed.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key this event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// The result of [`Store::list`].
#[derive(Clone, Debug)]
pub struct ListResult {
    /// The keys, in ascending byte order, at most `limit` of them.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at (the current revision if none was asked for). Pass it as
    /// [`ListOptions::revision`] for the next page to read a stable snapshot.
    pub revision: Revision,
    /// More keys follow the last item (at that revision).
    pub more: bool,
    /// How many keys match the prefix at that revision, ignoring `start_after` and `limit`.
    pub count: i64,
}

/// What [`Store::list`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListOptions<'a> {
    /// Only keys starting with this (`""` = all keys).
    pub prefix: &'a str,
    /// Only keys strictly greater than this (the last key of the previous page).
    pub start_after: Option<&'a str>,
    /// At most this many items; `0` = no limit.
    pub limit: usize,
    /// Read at this revision; `None` = the current revision.
    pub revision: Option<Revision>,
}

/// The events of a watch. Dropping it cancels the watch and frees everything it holds.
pub type WatchStream = futures::stream::BoxStream<'static, Result<Event, StoreError>>;

/// An item of [`Store::watch_with_progress`].
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    /// A committed change, as in [`Store::watch`].
    Event(Event),
    /// Every event for the watched prefix with a revision at or below this one has been delivered
    /// (what a BOOKMARK's resourceVersion must mean).
    Progress(Revision),
}

/// The items of [`Store::watch_with_progress`]. Dropping it cancels the watch.
pub type ProgressWatchStream = futures::stream::BoxStream<'static, Result<WatchItem, StoreError>>;

/// A key-value store with etcd v3 semantics; see the crate documentation.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under a prefix, in key order, at the current or a past revision.
    async fn list(&self, opts: ListOptions<'_>) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replaces the value of an existing `key` ([`StoreError::NotFound`] otherwise). With
    /// `expected_mod_revision`, fails with [`StoreError::Conflict`] unless the key's `mod_revision`
    /// is exactly that.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes an existing `key` (with the same preconditions as [`Store::update`]). Returns the
    /// deleted value and the revision of the deletion.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// The revision of the last write (1 for a fresh store).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The revision of the last compaction (0 if never compacted). Reads and watches need
    /// revisions at or above it.
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// Drops the history at or below `revision`, keeping each key's value as of `revision`.
    /// Fails with [`StoreError::Compacted`] if `revision` is not above the last compaction and
    /// with [`StoreError::FutureRevision`] if it is above the current revision.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Events with revision > `from`, in revision order, for keys starting with `prefix`; then live
    /// events as they are committed. `from` older than the last compaction fails with
    /// [`StoreError::Compacted`] (also delivered as the stream's last item if the watcher falls so
    /// far behind that its position is compacted away). `from` may be above the current revision.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// [`Store::watch`], plus [`WatchItem::Progress`] marks when the backend can vouch for them:
    /// etcd's progress notifications, asked for about every `interval` while the watch is idle.
    /// SQLite reports its position in the in-order commit broadcast when idle; the default (a
    /// backend without progress) yields only the events.
    async fn watch_with_progress(
        &self,
        prefix: &str,
        from: Revision,
        interval: Duration,
    ) -> Result<ProgressWatchStream, StoreError> {
        use futures::StreamExt;
        let _ = interval;
        let events = self.watch(prefix, from).await?;
        Ok(events.map(|r| r.map(WatchItem::Event)).boxed())
    }
}

/// Errors of [`Store`] operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist (update, delete).
    #[error("key {key:?} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The key already exists (create).
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key's mod_revision is not the expected one (optimistic concurrency).
    #[error("key {key:?} was modified: expected mod_revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key's actual mod_revision.
        actual: Revision,
    },
    /// The requested revision has been compacted.
    #[error("revision {requested} has been compacted (compacted revision is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The store's compacted revision.
        compacted: Revision,
    },
    /// The requested revision is above the current revision.
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The key is not acceptable (empty).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Opening the store failed.
    #[error("cannot open store at {path}")]
    Open {
        /// The database path (`:memory:` for in-memory stores).
        path: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The backend failed while doing `op` on `key` (`""` when not about one key).
    #[error("store backend failed during {op} of {key:?}")]
    Backend {
        /// The operation (`get`, `list`, `create`, `commit`, `watch` ...).
        op: &'static str,
        /// The key or prefix concerned.
        key: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The backend cannot serve right now (etcd has no leader, no endpoint answers); retry later.
    /// The API server answers 503 with Retry-After.
    #[error("store unavailable during {op} of {key:?}")]
    Unavailable {
        /// The operation (`get`, `list`, `create` ...).
        op: &'static str,
        /// The key or prefix concerned.
        key: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The store is shutting down or its writer has stopped.
    #[error("store is closed (during {op})")]
    Closed {
        /// The operation that found it closed.
        op: &'static str,
    },
}

/// Rejects keys no backend accepts (the empty key).
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey { key: String::new(), reason: "keys must not be empty" });
    }
    Ok(())
}

/// Starts a task that, every `interval`, compacts `store` so that only the last `keep` revisions
/// stay readable (Kubernetes' default is to compact every 5 minutes). Errors are logged and retried
/// at the next tick; abort the returned handle to stop it.
pub fn spawn_auto_compactor(
    store: Arc<dyn Store>,
    keep: Revision,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match compact_keep_last(store.as_ref(), keep).await {
                Ok(Some(rev)) => tracing::debug!(revision = rev, "auto-compacted store"),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "auto-compaction failed"),
            }
        }
    })
}

/// Compacts `store` at `current - keep` if that is above the last compaction. Returns the revision
/// compacted at, or `None` if there was nothing to do.
pub async fn compact_keep_last(
    store: &dyn Store,
    keep: Revision,
) -> Result<Option<Revision>, StoreError> {
    let current = store.current_revision().await?;
    let compacted = store.compacted_revision().await?;
    let target = current - keep.max(0);
    if target <= compacted {
        return Ok(None);
    }
    match store.compact(target).await {
        Ok(()) => Ok(Some(target)),
        // Another compactor got there first.
        Err(StoreError::Compacted { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
