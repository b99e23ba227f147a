//! The embedded backend: SQLite in WAL mode, kine-like.
//!
//! Schema (see [`SCHEMA`]):
//! - `log`: one row per write. `id` (INTEGER PRIMARY KEY AUTOINCREMENT) *is* the revision; a row holds
//!   the key (as a BLOB, so ordering is byte order like etcd's), the value, the key's
//!   `create_revision`, `prev_revision` (the row it replaced, 0 for a create) and a `deleted` flag
//!   (tombstones). An index on `(key, id)` serves reads at past revisions and watch replays.
//! - `current`: `key -> id` of each live key's latest row, so `get` and `list` at the current revision
//!   are index lookups however long the history is.
//! - `meta`: the compacted revision. The current revision is `sqlite_sequence.seq` for `log`, which
//!   survives compaction of the last rows; a fresh database starts it at 1.
//!
//! Writes go over a channel to one writer thread that owns the write connection. It drains what is
//! queued (up to [`SqliteConfig::max_batch`] operations), applies them in one transaction with one
//! fsync (group commit), then publishes the events on a broadcast channel and answers the callers.
//! A write is acknowledged only after its commit. Reads use a small pool of read-only connections
//! on `spawn_blocking`; each read is one SQLite read transaction, so it sees one consistent revision.
//!
//! Watchers subscribe to the broadcast first, then replay the log from the database, then follow the
//! broadcast, skipping what they already delivered; a watcher that lags re-reads the log.
//!
//! One process owns a database file: the revision counter and the event broadcast live in that
//! process, so writes by another process would not be seen by its watchers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    check_key,
    BoxError, Event, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};

/// The database schema; applied idempotently on open.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_id ON log (key, id);
CREATE TABLE IF NOT EXISTS current (
    key BLOB PRIMARY KEY,
    id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1), ('compacted', 0);
";

/// How many events a watch replay reads from the database per query.
const REPLAY_BATCH: usize = 512;

/// Tuning of a [`SqliteStore`]. `Default` is what dari uses.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// `true` (default): `synchronous=FULL`, every commit is fsynced before the write is
    /// acknowledged, so it survives power loss. `false`: `synchronous=NORMAL`, which in WAL mode
    /// still survives a crash of the process but may lose the last commits on power loss (tests,
    /// benchmarks of everything but the disk).
    pub durable: bool,
    /// How long a connection waits for a lock held by another connection (default 5 s).
    pub busy_timeout: Duration,
    /// Events buffered per watcher before it is "lagged" and re-reads the log (default 4096).
    pub event_buffer: usize,
    /// Most write operations committed in one transaction (default 256).
    pub max_batch: usize,
    /// Idle read connections kept open (default 4).
    pub max_idle_readers: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            durable: true,
            busy_timeout: Duration::from_secs(5),
            event_buffer: 4096,
            max_batch: 256,
            max_idle_readers: 4,
        }
    }
}

/// The embedded SQLite [`Store`]; see the module documentation for the design.
///
/// Cheap to share behind an `Arc`. Dropping the last handle stops the writer thread (after it has
/// committed what was queued) and ends the watch streams with [`StoreError::Closed`].
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Option<mpsc::Sender<WriteCmd>>,
    writer_thread: Option<JoinHandle<()>>,
    events: broadcast::Sender<Arc<Event>>,
    read: Arc<ReadSide>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish its batch and exit; wait for it so the file
        // is closed when the store is gone (a reopen then starts from a clean handle).
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            if thread.join().is_err() {
                tracing::error!(db = %self.read.label, "store writer thread panicked");
            }
        }
    }
}

/// What readers and watchers share: connections and the published revisions.
struct ReadSide {
    label: String,
    conns: ReadConns,
    revision: AtomicI64,
    compacted: AtomicI64,
}

enum ReadConns {
    /// A database file: read-only connections, opened on demand, kept when idle.
    Pool {
        path: PathBuf,
        config: SqliteConfig,
        idle: Mutex<Vec<Connection>>,
    },
    /// `:memory:`: the writer's single connection, shared under a lock.
    Shared(Arc<Mutex<Connection>>),
}

enum WriterConn {
    Owned(Connection),
    Shared(Arc<Mutex<Connection>>),
}

enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

impl WriteOp {
    fn name(&self) -> &'static str {
        match self {
            WriteOp::Create { .. } => "create",
            WriteOp::Update { .. } => "update",
            WriteOp::Delete { .. } => "delete",
            WriteOp::Compact { .. } => "compact",
        }
    }

    fn key(&self) -> String {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key.clone(),
            WriteOp::Compact { revision } => format!("@{revision}"),
        }
    }
}

enum WriteOk {
    Put(KeyValue),
    Deleted(KeyValue, Revision),
    Compacted,
}

struct WriteCmd {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOk, StoreError>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a SQLite connection half-updated in a way the
    // next transaction would not roll back, so poisoning is not an error here.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn backend<'a>(op: &'static str, key: &'a str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |e| StoreError::Backend {
        op,
        key: key.to_string(),
        source: Box::new(e),
    }
}

fn open_error(label: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Open {
        path: label.to_string(),
        source: Box::new(e),
    }
}


/// The smallest byte string greater than every string starting with `prefix`, or `None` for the
/// empty prefix. UTF-8 never contains 0xFF, so incrementing the last byte always works.
fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn configure(conn: &Connection, config: &SqliteConfig, label: &str) -> Result<(), StoreError> {
    conn.busy_timeout(config.busy_timeout)
        .map_err(open_error(label))?;
    // journal_mode answers with the resulting mode: `memory` for in-memory databases.
    let _mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_error(label))?;
    let sync = if config.durable { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -16000;"
    ))
    .map_err(open_error(label))?;
    Ok(())
}

/// Creates the schema if needed and returns (current revision, compacted revision).
fn init_schema(conn: &mut Connection, label: &str) -> Result<(Revision, Revision), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_error(label))?;
    tx.execute_batch(SCHEMA).map_err(open_error(label))?;
    let seq: Option<i64> = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'log'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(open_error(label))?;
    let revision = match seq {
        Some(seq) => seq,
        None => {
            // A fresh store is at revision 1, as etcd after bootstrap.
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('log', 1)",
                [],
            )
            .map_err(open_error(label))?;
            1
        }
    };
    let compacted = tx
        .query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
            r.get(0)
        })
        .map_err(open_error(label))?;
    tx.commit().map_err(open_error(label))?;
    Ok((revision, compacted))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default, durable configuration.
    /// Must be called within a Tokio runtime only for the async methods; opening itself is blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens the database at `path` with `config`.
    pub fn open_with(path: &Path, config: SqliteConfig) -> Result<Self, StoreError> {
        let label = path.display().to_string();
        let mut conn = Connection::open(path).map_err(open_error(&label))?;
        configure(&conn, &config, &label)?;
        let (revision, compacted) = init_schema(&mut conn, &label)?;
        tracing::info!(db = %label, revision, compacted, "opened store");
        let conns = ReadConns::Pool {
            path: path.to_path_buf(),
            config: config.clone(),
            idle: Mutex::new(Vec::new()),
        };
        Self::start(
            label,
            WriterConn::Owned(conn),
            conns,
            revision,
            compacted,
            &config,
        )
    }

    /// A store in memory, for tests: same semantics, one connection shared by reads and writes.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let label = ":memory:".to_string();
        let config = SqliteConfig::default();
        let mut conn = Connection::open_in_memory().map_err(open_error(&label))?;
        configure(&conn, &config, &label)?;
        let (revision, compacted) = init_schema(&mut conn, &label)?;
        let shared = Arc::new(Mutex::new(conn));
        Self::start(
            label,
            WriterConn::Shared(shared.clone()),
            ReadConns::Shared(shared),
            revision,
            compacted,
            &config,
        )
    }

    fn start(
        label: String,
        conn: WriterConn,
        conns: ReadConns,
        revision: Revision,
        compacted: Revision,
        config: &SqliteConfig,
    ) -> Result<Self, StoreError> {
        let read = Arc::new(ReadSide {
            label: label.clone(),
            conns,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
        });
        let (events, _) = broadcast::channel(config.event_buffer.max(16));
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            conn,
            rx,
            events: events.clone(),
            read: read.clone(),
            revision,
            max_batch: config.max_batch.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("dari-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Open {
                path: label,
                source: Box::new(e),
            })?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Some(tx),
                writer_thread: Some(thread),
                events,
                read,
            }),
        })
    }

    /// How many watch streams are open (for metrics and leak checks).
    pub fn watcher_count(&self) -> usize {
        self.inner.events.receiver_count()
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOk, StoreError> {
        let name = op.name();
        let (reply, rx) = oneshot::channel();
        let writer = self
            .inner
            .writer
            .as_ref()
            .ok_or(StoreError::Closed { op: name })?;
        writer
            .send(WriteCmd { op, reply })
            .await
            .map_err(|_| StoreError::Closed { op: name })?;
        rx.await.map_err(|_| StoreError::Closed { op: name })?
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

/// A row of `log` joined with the row it replaced.
struct LogRow {
    id: Revision,
    key: Vec<u8>,
    value: Vec<u8>,
    create_revision: Revision,
    deleted: bool,
    prev: Option<(Vec<u8>, Revision, Revision)>,
}

fn key_string(bytes: Vec<u8>, op: &'static str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|e| StoreError::Backend {
        op,
        key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        source: Box::new(e),
    })
}

impl ReadSide {
    /// Runs `f` on a read connection inside a read transaction, on the blocking pool.
    async fn read<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        key: &str,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || this.read_blocking(op, &key_owned, f))
            .await
            .map_err(|e| StoreError::Backend {
                op,
                key: key.to_string(),
                source: Box::new(e),
            })?
    }

    fn read_blocking<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    {
        let _span = tracing::debug_span!("store.read", op, key).entered();
        match &self.conns {
            ReadConns::Shared(conn) => {
                let mut conn = lock(conn);
                run_read(&mut conn, op, key, f)
            }
            ReadConns::Pool { path, config, idle } => {
                let pooled = lock(idle).pop();
                let mut conn = match pooled {
                    Some(conn) => conn,
                    None => open_reader(path, config, &self.label)?,
                };
                let result = run_read(&mut conn, op, key, f);
                let mut idle = lock(idle);
                if idle.len() < config.max_idle_readers {
                    idle.push(conn);
                }
                result
            }
        }
    }
}

fn open_reader(path: &Path, config: &SqliteConfig, label: &str) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error(label))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(open_error(label))?;
    conn.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -16000;")
        .map_err(open_error(label))?;
    Ok(conn)
}

fn run_read<T, F>(conn: &mut Connection, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
where
    F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
{
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(backend(op, key))?;
    let out = f(&tx)?;
    tx.finish().map_err(backend(op, key))?;
    Ok(out)
}

/// (current revision, compacted revision) as seen by this transaction.
fn revisions(
    tx: &rusqlite::Transaction<'_>,
    op: &'static str,
    key: &str,
) -> Result<(Revision, Revision), StoreError> {
    let current: Revision = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'log'",
            [],
            |r| r.get(0),
        )
        .map_err(backend(op, key))?;
    let compacted: Revision = tx
        .query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
            r.get(0)
        })
        .map_err(backend(op, key))?;
    Ok((current, compacted))
}

fn get_current(
    tx: &rusqlite::Connection,
    key: &str,
    op: &'static str,
) -> Result<Option<KeyValue>, StoreError> {
    tx.query_row(
        "SELECT l.value, l.create_revision, l.id FROM current c JOIN log l ON l.id = c.id
         WHERE c.key = ?1",
        params![key.as_bytes()],
        |r| {
            Ok(KeyValue {
                key: key.to_string(),
                value: r.get(0)?,
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(backend(op, key))
}

fn list_blocking(
    tx: &rusqlite::Transaction<'_>,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    revision: Option<Revision>,
) -> Result<ListResult, StoreError> {
    const OP: &str = "list";
    let (current, compacted) = revisions(tx, OP, prefix)?;
    let rev = revision.unwrap_or(current);
    if rev > current {
        return Err(StoreError::FutureRevision {
            requested: rev,
            current,
        });
    }
    if rev < compacted {
        return Err(StoreError::Compacted {
            requested: rev,
            compacted,
        });
    }

    // Parameters: ?1 lower bound, ?2 prefix end (NULL if none), ?3 revision, ?4 rows to fetch.
    // Lower bound: key >= prefix, or key > start_after when that is further.
    let (lower_op, lower) = match start_after {
        Some(after) if after >= prefix => (">", after),
        _ => (">=", prefix),
    };
    let end = prefix_end(prefix);
    let fetch: i64 = if limit == 0 {
        -1 // no limit
    } else {
        i64::try_from(limit)
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1)
    };
    let end_param = end.map_or(SqlValue::Null, SqlValue::Blob);
    let items_params = [
        SqlValue::Blob(lower.as_bytes().to_vec()),
        end_param.clone(),
        SqlValue::Integer(rev),
        SqlValue::Integer(fetch),
    ];
    let count_params = [
        SqlValue::Blob(prefix.as_bytes().to_vec()),
        end_param.clone(),
        SqlValue::Integer(rev),
    ];
    let upper = |col: &str| {
        if matches!(end_param, SqlValue::Null) {
            String::new()
        } else {
            format!("AND {col} < ?2")
        }
    };
    let (items_sql, count_query) = if rev == current {
        (
            format!(
                "SELECT c.key, l.value, l.create_revision, l.id FROM current c
                 JOIN log l ON l.id = c.id
                 WHERE c.key {lower_op} ?1 {} ORDER BY c.key LIMIT ?4",
                upper("c.key")
            ),
            format!(
                // `?3 = ?3`: binds the revision like the other queries do.
                "SELECT COUNT(*) FROM current WHERE key >= ?1 {} AND ?3 = ?3",
                upper("key")
            ),
        )
    } else {
        // The latest row of each key at or below `rev`, unless it is a tombstone. Walks the
        // (key, id) index in key order, so a page stops after `limit` keys.
        let latest = "l.id <= ?3 AND l.deleted = 0 AND NOT EXISTS (
             SELECT 1 FROM log n WHERE n.key = l.key AND n.id > l.id AND n.id <= ?3)";
        (
            format!(
                "SELECT l.key, l.value, l.create_revision, l.id FROM log l
                 WHERE l.key {lower_op} ?1 {} AND {latest} ORDER BY l.key LIMIT ?4",
                upper("l.key")
            ),
            format!(
                "SELECT COUNT(*) FROM log l WHERE l.key >= ?1 {} AND {latest}",
                upper("l.key")
            ),
        )
    };

    let mut stmt = tx.prepare_cached(&items_sql).map_err(backend(OP, prefix))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(items_params.iter()), |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Revision>(2)?,
                r.get::<_, Revision>(3)?,
            ))
        })
        .map_err(backend(OP, prefix))?;
    let mut items = Vec::new();
    for row in rows {
        let (key, value, create_revision, mod_revision) = row.map_err(backend(OP, prefix))?;
        items.push(KeyValue {
            key: key_string(key, OP)?,
            value,
            create_revision,
            mod_revision,
        });
    }
    let more = limit != 0 && items.len() > limit;
    if more {
        items.truncate(limit);
    }
    let count: i64 = tx
        .prepare_cached(&count_query)
        .and_then(|mut s| {
            s.query_row(rusqlite::params_from_iter(count_params.iter()), |r| {
                r.get(0)
            })
        })
        .map_err(backend(OP, prefix))?;
    Ok(ListResult {
        items,
        revision: rev,
        more,
        count,
    })
}

/// Events after `pos` for `prefix` from the log: (events, snapshot revision, complete). When not
/// complete, more events follow the last one returned.
fn replay_blocking(
    tx: &rusqlite::Transaction<'_>,
    prefix: &str,
    pos: Revision,
) -> Result<(Vec<Event>, Revision, bool), StoreError> {
    const OP: &str = "watch";
    let (current, compacted) = revisions(tx, OP, prefix)?;
    if pos < compacted {
        return Err(StoreError::Compacted {
            requested: pos,
            compacted,
        });
    }
    let end = prefix_end(prefix);
    let sql = format!(
        "SELECT l.id, l.key, l.value, l.create_revision, l.deleted, l.prev_revision,
                p.value, p.create_revision
         FROM log l LEFT JOIN log p ON p.id = l.prev_revision
         WHERE l.id > ?1 AND l.id <= ?2 AND l.key >= ?3 {} ORDER BY l.id LIMIT {REPLAY_BATCH}",
        if end.is_some() { "AND l.key < ?4" } else { "" }
    );
    let mut stmt = tx.prepare_cached(&sql).map_err(backend(OP, prefix))?;
    let mut params: Vec<SqlValue> = vec![
        SqlValue::Integer(pos),
        SqlValue::Integer(current),
        SqlValue::Blob(prefix.as_bytes().to_vec()),
    ];
    if let Some(end) = end {
        params.push(SqlValue::Blob(end));
    }
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), |r| {
            let prev_id: Revision = r.get(5)?;
            let prev = match r.get::<_, Option<Vec<u8>>>(6)? {
                Some(value) => Some((value, r.get::<_, Revision>(7)?, prev_id)),
                None => None,
            };
            Ok((
                LogRow {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    value: r.get(2)?,
                    create_revision: r.get(3)?,
                    deleted: r.get::<_, i64>(4)? != 0,
                    prev,
                },
                prev_id,
            ))
        })
        .map_err(backend(OP, prefix))?;
    let mut events = Vec::new();
    for row in rows {
        let (row, prev_id) = row.map_err(backend(OP, prefix))?;
        let key = key_string(row.key, OP)?;
        let prev = row
            .prev
            .map(|(value, create_revision, mod_revision)| KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision,
            });
        if row.deleted {
            let Some(prev) = prev else {
                return Err(StoreError::Backend {
                    op: OP,
                    key,
                    source: format!("tombstone {} lost its previous row {prev_id}", row.id).into(),
                });
            };
            events.push(Event::Delete {
                prev,
                revision: row.id,
            });
        } else {
            events.push(Event::Put {
                kv: KeyValue {
                    key,
                    value: row.value,
                    create_revision: row.create_revision,
                    mod_revision: row.id,
                },
                prev,
            });
        }
    }
    let complete = events.len() < REPLAY_BATCH;
    Ok((events, current, complete))
}

// ---------------------------------------------------------------------------------------------
// The writer thread

struct Writer {
    conn: WriterConn,
    rx: mpsc::Receiver<WriteCmd>,
    events: broadcast::Sender<Arc<Event>>,
    read: Arc<ReadSide>,
    /// The last committed revision.
    revision: Revision,
    max_batch: usize,
}

/// Outcome of one operation inside a batch transaction.
type Applied = Result<(WriteOk, Option<Event>), StoreError>;

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<WriteCmd> = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            // Compactions run alone; runs of other writes share a transaction.
            let mut run: Vec<WriteCmd> = Vec::new();
            for cmd in batch.drain(..) {
                if matches!(cmd.op, WriteOp::Compact { .. }) {
                    if !run.is_empty() {
                        self.commit_batch(std::mem::take(&mut run));
                    }
                    self.commit_batch(vec![cmd]);
                } else {
                    run.push(cmd);
                }
            }
            if !run.is_empty() {
                self.commit_batch(run);
            }
        }
        tracing::debug!(db = %self.read.label, "store writer stopped");
    }

    fn commit_batch(&mut self, cmds: Vec<WriteCmd>) {
        let _span = tracing::debug_span!("store.commit", ops = cmds.len()).entered();
        let start_revision = self.revision;
        let read = self.read.clone();
        let outcome = match &mut self.conn {
            WriterConn::Owned(conn) => apply_all(conn, &cmds, start_revision, &read),
            WriterConn::Shared(conn) => apply_all(&mut lock(conn), &cmds, start_revision, &read),
        };
        match outcome {
            Ok((results, revision)) => {
                self.revision = revision;
                self.read.revision.store(revision, Ordering::SeqCst);
                let mut replies = Vec::with_capacity(cmds.len());
                for (cmd, result) in cmds.into_iter().zip(results) {
                    let reply = match result {
                        Ok((ok, event)) => {
                            if let Some(event) = event {
                                // No receivers is fine: nobody is watching.
                                let _ = self.events.send(Arc::new(event));
                            }
                            Ok(ok)
                        }
                        Err(e) => Err(e),
                    };
                    replies.push((cmd.reply, reply));
                }
                for (reply, result) in replies {
                    // The caller may have given up (dropped its future); the write stands.
                    let _ = reply.send(result);
                }
            }
            Err(cause) => {
                tracing::error!(db = %self.read.label, error = %cause, "store commit failed");
                let cause = cause.to_string();
                for cmd in cmds {
                    let _ = cmd.reply.send(Err(StoreError::Backend {
                        op: cmd.op.name(),
                        key: cmd.op.key(),
                        source: cause.clone().into(),
                    }));
                }
            }
        }
    }
}

/// Applies `cmds` in one transaction starting after `revision`. Per-operation failures
/// (preconditions) are per-operation results; a database failure fails the whole batch.
fn apply_all(
    conn: &mut Connection,
    cmds: &[WriteCmd],
    mut revision: Revision,
    read: &ReadSide,
) -> Result<(Vec<Applied>, Revision), BoxError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        let result = apply_one(&tx, &cmd.op, revision + 1, read);
        match result {
            Ok((ok, event)) => {
                if event.is_some() {
                    revision += 1;
                }
                results.push(Ok((ok, event)));
            }
            Err(e @ StoreError::Backend { .. }) => return Err(Box::new(e)),
            Err(e) => results.push(Err(e)),
        }
    }
    tx.commit()?;
    Ok((results, revision))
}

/// One new row of `log`.
struct NewRow<'a> {
    key: &'a str,
    rev: Revision,
    value: &'a [u8],
    create_revision: Revision,
    prev_revision: Revision,
    deleted: bool,
}

fn insert_log(
    tx: &rusqlite::Transaction<'_>,
    op: &'static str,
    row: NewRow<'_>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO log (id, key, value, create_revision, prev_revision, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.rev,
            row.key.as_bytes(),
            row.value,
            row.create_revision,
            row.prev_revision,
            row.deleted
        ])
    })
    .map_err(backend(op, row.key))?;
    Ok(())
}

fn check_expected(
    key: &str,
    current: &KeyValue,
    expected: Option<Revision>,
) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current.mod_revision => Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            actual: current.mod_revision,
        }),
        _ => Ok(()),
    }
}

fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    op: &WriteOp,
    rev: Revision,
    read: &ReadSide,
) -> Applied {
    let name = op.name();
    match op {
        WriteOp::Create { key, value } => {
            if get_current(tx, key, name)?.is_some() {
                return Err(StoreError::AlreadyExists { key: key.clone() });
            }
            insert_log(
                tx,
                name,
                NewRow {
                    key,
                    rev,
                    value,
                    create_revision: rev,
                    prev_revision: 0,
                    deleted: false,
                },
            )?;
            tx.prepare_cached("INSERT INTO current (key, id) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![key.as_bytes(), rev]))
                .map_err(backend(name, key))?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: rev,
                mod_revision: rev,
            };
            Ok((
                WriteOk::Put(kv.clone()),
                Some(Event::Put { kv, prev: None }),
            ))
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let prev = get_current(tx, key, name)?
                .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            check_expected(key, &prev, *expected)?;
            let row = NewRow {
                key,
                rev,
                value,
                create_revision: prev.create_revision,
                prev_revision: prev.mod_revision,
                deleted: false,
            };
            insert_log(tx, name, row)?;
            tx.prepare_cached("UPDATE current SET id = ?2 WHERE key = ?1")
                .and_then(|mut s| s.execute(params![key.as_bytes(), rev]))
                .map_err(backend(name, key))?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: rev,
            };
            Ok((
                WriteOk::Put(kv.clone()),
                Some(Event::Put {
                    kv,
                    prev: Some(prev),
                }),
            ))
        }
        WriteOp::Delete { key, expected } => {
            let prev = get_current(tx, key, name)?
                .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            check_expected(key, &prev, *expected)?;
            let row = NewRow {
                key,
                rev,
                value: &[],
                create_revision: prev.create_revision,
                prev_revision: prev.mod_revision,
                deleted: true,
            };
            insert_log(tx, name, row)?;
            tx.prepare_cached("DELETE FROM current WHERE key = ?1")
                .and_then(|mut s| s.execute(params![key.as_bytes()]))
                .map_err(backend(name, key))?;
            Ok((
                WriteOk::Deleted(prev.clone(), rev),
                Some(Event::Delete {
                    prev,
                    revision: rev,
                }),
            ))
        }
        WriteOp::Compact { revision } => {
            let key = op.key();
            let current = rev - 1;
            let compacted: Revision = tx
                .query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
                    r.get(0)
                })
                .map_err(backend(name, &key))?;
            if *revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: *revision,
                    compacted,
                });
            }
            if *revision > current {
                return Err(StoreError::FutureRevision {
                    requested: *revision,
                    current,
                });
            }
            // Readers check the compacted revision in their snapshot, so they never see the
            // deletions below without also seeing this.
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
                params![revision],
            )
            .map_err(backend(name, &key))?;
            // Drop tombstones and rows superseded at or below `revision`; keep each key's
            // latest row at `revision` (a live value then, or the `prev` of a later event).
            let removed = tx
                .execute(
                    "DELETE FROM log WHERE id <= ?1 AND (deleted = 1 OR EXISTS (
                         SELECT 1 FROM log n WHERE n.key = log.key AND n.id > log.id AND n.id <= ?1))",
                    params![revision],
                )
                .map_err(backend(name, &key))?;
            tracing::info!(db = %read.label, revision, removed, "compacted store");
            read.compacted.store(*revision, Ordering::SeqCst);
            Ok((WriteOk::Compacted, None))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watch

struct WatchState {
    read: Arc<ReadSide>,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    /// Every event up to here was delivered (or did not match the prefix).
    pos: Revision,
    /// Following the broadcast (else: replaying the log).
    live: bool,
    buf: VecDeque<Event>,
    done: bool,
    /// With [`Store::watch_with_progress`]: how often an idle watch reports its position.
    progress: Option<Duration>,
    next_progress: Option<tokio::time::Instant>,
}

impl WatchState {
    /// Reads the next batch of the log into `buf`.
    async fn replay(&mut self) -> Result<(), StoreError> {
        let prefix = self.prefix.clone();
        let pos = self.pos;
        let (events, snapshot, complete) = self
            .read
            .read("watch", &self.prefix, move |tx| {
                replay_blocking(tx, &prefix, pos)
            })
            .await?;
        if let Some(last) = events.last() {
            self.pos = last.revision();
        }
        if complete {
            // Everything up to the snapshot is read; `pos` never moves back (a watch may start
            // above the current revision).
            self.pos = self.pos.max(snapshot);
            self.live = true;
        }
        self.buf.extend(events);
        Ok(())
    }

    async fn next(self) -> Option<(Result<Event, StoreError>, Self)> {
        let mut state = self;
        loop {
            let (item, next) = state.next_item().await?;
            state = next;
            match item {
                Ok(crate::WatchItem::Event(e)) => return Some((Ok(e), state)),
                Ok(crate::WatchItem::Progress(_)) => continue,
                Err(e) => return Some((Err(e), state)),
            }
        }
    }

    /// The next event, or (when asked for and idle) a progress mark: every event up to `pos` has
    /// been delivered, because the broadcast is read in revision order.
    async fn next_item(mut self) -> Option<(Result<crate::WatchItem, StoreError>, Self)> {
        loop {
            if let Some(event) = self.buf.pop_front() {
                return Some((Ok(crate::WatchItem::Event(event)), self));
            }
            if self.done {
                return None;
            }
            if !self.live {
                if let Err(e) = self.replay().await {
                    self.done = true;
                    return Some((Err(e), self));
                }
                continue;
            }
            let received = match (self.progress, self.next_progress) {
                (Some(every), Some(at)) => {
                    tokio::select! {
                        r = self.rx.recv() => r,
                        _ = tokio::time::sleep_until(at) => {
                            self.next_progress = Some(tokio::time::Instant::now() + every);
                            return Some((Ok(crate::WatchItem::Progress(self.pos)), self));
                        }
                    }
                }
                _ => self.rx.recv().await,
            };
            match received {
                Ok(event) => {
                    let rev = event.revision();
                    if rev <= self.pos {
                        continue; // already read from the log
                    }
                    if rev != self.pos + 1 {
                        // Cannot happen (every revision is broadcast in order), but if it did,
                        // the log is the truth.
                        tracing::warn!(pos = self.pos, rev, "watch saw a gap; re-reading the log");
                        self.live = false;
                        continue;
                    }
                    self.pos = rev;
                    if event.key().starts_with(self.prefix.as_str()) {
                        return Some((Ok(crate::WatchItem::Event(Event::clone(&event))), self));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(prefix = %self.prefix, missed, "watcher lagged; re-reading the log");
                    self.live = false;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some((Err(StoreError::Closed { op: "watch" }), self));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The trait

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let k = key.to_string();
        self.inner
            .read
            .read("get", key, move |tx| get_current(tx, &k, "get"))
            .await
    }

    async fn list(&self, opts: ListOptions<'_>) -> Result<ListResult, StoreError> {
        let prefix = opts.prefix.to_string();
        let start_after = opts.start_after.map(str::to_string);
        let (limit, revision) = (opts.limit, opts.revision);
        self.inner
            .read
            .read("list", opts.prefix, move |tx| {
                list_blocking(tx, &prefix, start_after.as_deref(), limit, revision)
            })
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        check_key(key)?;
        match self
            .write(WriteOp::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            WriteOk::Put(kv) => Ok(kv),
            _ => Err(unexpected("create", key)),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        check_key(key)?;
        match self
            .write(WriteOp::Update {
                key: key.to_string(),
                value,
                expected: expected_mod_revision,
            })
            .await?
        {
            WriteOk::Put(kv) => Ok(kv),
            _ => Err(unexpected("update", key)),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        check_key(key)?;
        match self
            .write(WriteOp::Delete {
                key: key.to_string(),
                expected: expected_mod_revision,
            })
            .await?
        {
            WriteOk::Deleted(prev, rev) => Ok((prev, rev)),
            _ => Err(unexpected("delete", key)),
        }
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.read.revision.load(Ordering::SeqCst))
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.read.compacted.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.write(WriteOp::Compact { revision }).await? {
            WriteOk::Compacted => Ok(()),
            _ => Err(unexpected("compact", "")),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the log: every event committed after the log snapshot is
        // then in the receiver, and what is in both is skipped by revision.
        let rx = self.inner.events.subscribe();
        let mut state = WatchState {
            read: self.inner.read.clone(),
            rx,
            prefix: prefix.to_string(),
            pos: from,
            live: false,
            buf: VecDeque::new(),
            done: false,
            progress: None,
            next_progress: None,
        };
        // The first batch here, so that a compacted `from` fails the call itself.
        state.replay().await?;
        Ok(futures::stream::unfold(state, WatchState::next).boxed())
    }

    async fn watch_with_progress(&self, prefix: &str, from: Revision, interval: Duration) -> Result<crate::ProgressWatchStream, StoreError> {
        let rx = self.inner.events.subscribe();
        let every = interval.max(Duration::from_millis(10));
        let mut state = WatchState {
            read: self.inner.read.clone(),
            rx,
            prefix: prefix.to_string(),
            pos: from,
            live: false,
            buf: VecDeque::new(),
            done: false,
            progress: Some(every),
            next_progress: Some(tokio::time::Instant::now() + every),
        };
        state.replay().await?;
        Ok(futures::stream::unfold(state, WatchState::next_item).boxed())
    }
}

fn unexpected(op: &'static str, key: &str) -> StoreError {
    StoreError::Backend {
        op,
        key: key.to_string(),
        source: "writer answered with the wrong kind of result".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rows(store: &SqliteStore) -> Vec<(Revision, String, bool)> {
        let ReadConns::Shared(conn) = &store.inner.read.conns else {
            panic!("in-memory store expected");
        };
        let conn = lock(conn);
        let mut stmt = conn
            .prepare("SELECT id, key, deleted FROM log ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                String::from_utf8(r.get::<_, Vec<u8>>(1)?).unwrap(),
                r.get::<_, i64>(2)? != 0,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end("é"), Some(vec![0xC3, 0xAA]));
    }

    #[tokio::test]
    async fn compaction_removes_superseded_rows_and_tombstones_only() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.create("/a", b"1".to_vec()).await.unwrap(); // 2
        s.update("/a", b"2".to_vec(), None).await.unwrap(); // 3
        s.create("/b", b"1".to_vec()).await.unwrap(); // 4
        s.delete("/b", None).await.unwrap(); // 5
        s.create("/c", b"1".to_vec()).await.unwrap(); // 6
        s.update("/a", b"3".to_vec(), None).await.unwrap(); // 7
        s.delete("/c", None).await.unwrap(); // 8
        s.compact(6).await.unwrap();
        // 2 (superseded by 3), 4 (by 5) and the tombstone 5 are gone; 3 stays as the value of /a
        // at 6 and the prev of 7; 6 stays as the prev of 8.
        let kept: Vec<Revision> = rows(&s).into_iter().map(|r| r.0).collect();
        assert_eq!(kept, [3, 6, 7, 8]);
        s.compact(8).await.unwrap();
        assert_eq!(rows(&s), [(7, "/a".to_string(), false)]);
        assert_eq!(s.current_revision().await.unwrap(), 8);
    }
}
