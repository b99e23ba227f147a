//! The etcd v3 backend: [`EtcdStore`] implements [`Store`] on an etcd cluster over gRPC.
//!
//! Keys are stored verbatim: the API server already lays them out as kube-apiserver does
//! (`/registry/<resource>/<namespace>/<name>`), so `etcdctl get --prefix /registry/pods` shows what
//! users expect. Revisions are etcd's: `resourceVersion` = the key's `mod_revision`, and a fresh etcd
//! cluster is at revision 1 like a fresh [`crate::SqliteStore`].
//!
//! How each operation maps onto etcd:
//! - `create`: `Txn(create_revision(key) == 0 → put)`, else [`StoreError::AlreadyExists`].
//! - `update`/`delete`: `Txn(create_revision(key) > 0 [&& mod_revision(key) == expected] →
//!   put|delete, get keys-only)`, else a keys-only `get` of the key tells `NotFound` from
//!   `Conflict { actual }`.
//! - `list`: one read-only `Txn` holding the page range (from `max(prefix, start_after + "\0")`, with
//!   limit and revision) and, when `start_after` cuts into the prefix, a count-only range over the whole
//!   prefix at the same revision, so `count` ignores `start_after`/`limit` as documented.
//! - `watch(prefix, from)`: an etcd watch with `prev_kv` and `progress_notify`, started at `from` (not
//!   `from + 1`) so that etcd's own compaction check matches the trait's ("`from` older than the last
//!   compaction"); the events at `from` itself are skipped. A broken stream (member killed, leader
//!   lost) is re-opened from the last delivered revision, so the stream has no gaps or duplicates;
//!   a watch whose position was compacted yields [`StoreError::Compacted`] and ends.
//!   [`Store::watch_with_progress`] also sends etcd a progress request every `interval` and yields
//!   each answer as [`WatchItem::Progress`]: etcd answers only once the watch has caught up, with
//!   the current revision, so the mark never runs ahead of the delivered events (a BOOKMARK).
//! - `compacted_revision`: etcd does not expose it. kube-apiserver keeps a `compact_rev_key` that it
//!   writes before each compaction, but that write takes a revision of its own, which would break
//!   "every write bumps the revision by exactly one" and would miss compactions done by others
//!   (`etcdctl compact`, `--auto-compaction-*`). Instead it is *measured*: a range at revision `r`
//!   fails with "required revision has been compacted" exactly when `r` is below etcd's compacted
//!   revision, so the smallest readable revision is found by a binary search over
//!   `[last known, current]` (two requests when nothing changed since the last call, about
//!   `log2(current)` at worst). A never-compacted store (or one compacted at 1, the same for readers)
//!   reports 0.
//! - `compact`: etcd `Compact` with `physical = true`.
//!
//! Errors: gRPC `Unavailable` (no leader, leader changed, request timed out, connection lost),
//! `DeadlineExceeded`, `ResourceExhausted` ("too many requests") and our own attempt timeouts become
//! [`StoreError::Unavailable`] (the API server answers 503 with Retry-After).
//!
//! Retries: reads are retried with backoff for a bounded time, and the balanced channel of
//! `etcd-client` sends a retry to any healthy endpoint. Writes are retried only when etcd surely did
//! not apply them: "no leader" (the client requires a leader, so a member without one rejects the
//! request before proposing it) and "too many requests". A write that timed out or lost its
//! connection has an unknown outcome and is returned as `Unavailable`, never re-sent (a re-sent
//! create could report `AlreadyExists` for its own success).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
    WatchOptions,
};
use futures::StreamExt;
use tracing::Instrument;

use crate::{
    check_key,
    BoxError, Event, KeyValue, ListOptions, ListResult, ProgressWatchStream, Revision, Store,
    StoreError, WatchItem, WatchStream,
};

/// The key ranged over (count only) to read the current revision and probe compaction. It is
/// never written.
const PROBE_KEY: &str = "/dari/compaction-probe";
/// One attempt of a request gives up after this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of a list gives up after this long (kube-apiserver's default request timeout).
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of a request that failed with a retryable error stop after this long.
const RETRY_BUDGET: Duration = Duration::from_secs(8);
/// Largest gRPC message accepted from etcd (kube-apiserver allows `math.MaxInt32`; a list of
/// 10,000 objects of 1 KiB is 10 MiB, above tonic's 4 MiB default).
const MAX_MESSAGE: usize = i32::MAX as usize;
/// First backoff between retries (doubled each time, capped at 1 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How to reach an etcd cluster (`dari server --datastore etcd --etcd-servers ... --etcd-cafile ...`).
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.1:2379`. With TLS files, use `https://` URLs.
    pub endpoints: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates (`--etcd-cafile`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for etcd's `--client-cert-auth` (`--etcd-certfile`); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file` (`--etcd-keyfile`).
    pub key_file: Option<PathBuf>,
}

/// The etcd [`Store`]; see the module documentation for how operations map onto etcd.
///
/// Cheap to clone (clones share one gRPC channel balanced over the endpoints).
#[derive(Clone)]
pub struct EtcdStore {
    client: Clients,
    /// A lower bound of etcd's compacted revision (compaction never goes back).
    compacted_hint: Arc<AtomicI64>,
    label: Arc<str>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.label)
            .finish()
    }
}

fn open_error(label: &str, source: impl Into<BoxError>) -> StoreError {
    StoreError::Open {
        path: label.to_string(),
        source: source.into(),
    }
}

fn read_file(label: &str, what: &str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        open_error(
            label,
            format!("cannot read the etcd {what} {}: {e}", path.display()),
        )
    })
}

/// Writes `e` and its causes: tonic hides the useful part (a TLS alert, "connection refused") in
/// the source chain.
fn write_chain(f: &mut std::fmt::Formatter<'_>, e: &dyn std::error::Error) -> std::fmt::Result {
    write!(f, "{e}")?;
    let mut cur = e.source();
    while let Some(c) = cur {
        write!(f, ": {c}")?;
        cur = c.source();
    }
    Ok(())
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (a linearizable read, so a cluster without a
    /// leader fails here too). Fails with [`StoreError::Open`] (path = the endpoints) if the
    /// configuration is wrong or no endpoint answers, e.g. because etcd refused our certificate.
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdStore, StoreError> {
        let label = cfg.endpoints.join(",");
        if cfg.endpoints.is_empty() {
            return Err(open_error(&label, "no etcd endpoints given"));
        }
        let mut opts = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let tls_wanted = cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some();
        if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_file(&label, "CA file", ca)?));
            }
            match (&cfg.cert_file, &cfg.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_file(&label, "client certificate", cert)?,
                        read_file(&label, "client key", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(open_error(
                        &label,
                        "an etcd client certificate needs both a certificate and a key file",
                    ))
                }
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| open_error(&label, e))?;
        let store = EtcdStore {
            client: Clients {
                kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
                watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            },
            compacted_hint: Arc::new(AtomicI64::new(0)),
            label: label.clone().into(),
        };
        // One attempt, no retries: a wrong certificate or a dead cluster should fail fast.
        let probe = tokio::time::timeout(ATTEMPT_TIMEOUT, {
            let mut c = store.client.clone();
            async move {
                c.kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only()))
                    .await
            }
        })
        .await;
        let failure = match probe {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(EtcdFailure::from_client(e)),
            Err(_) => Some(EtcdFailure::TimedOut),
        };
        if let Some(failure) = failure {
            // A server with --client-cert-auth just closes the connection of a client without a
            // certificate; say so rather than only "operation was canceled".
            let hint = match (&failure, tls_wanted && cfg.cert_file.is_none()) {
                (EtcdFailure::Unavailable(_) | EtcdFailure::TimedOut, true) => Some(
                    "etcd closed the TLS connection; it probably requires a client certificate \
                     (--client-cert-auth): configure a certificate and key for dari",
                ),
                _ => None,
            };
            return Err(open_error(&label, Hinted { hint, failure }));
        }
        tracing::info!(endpoints = %label, tls = tls_wanted, "connected to etcd");
        Ok(store)
    }

    /// The endpoints this store was connected with, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.label
    }

    /// Runs `f` with retries while `retry(failure)` holds, each attempt bounded by
    /// [`ATTEMPT_TIMEOUT`], all of them by [`RETRY_BUDGET`].
    async fn attempt<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        retry: fn(&EtcdFailure) -> bool,
        mut f: F,
    ) -> Result<T, EtcdFailure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            // a list of many large objects may legitimately take long on a busy machine:
            // give it kube-apiserver's request timeout instead of the per-attempt one
            let limit = if op == "list" { LIST_TIMEOUT } else { ATTEMPT_TIMEOUT };
            let failure = match tokio::time::timeout(limit, f(self.client.clone())).await
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => EtcdFailure::from_client(e),
                Err(_) => EtcdFailure::TimedOut,
            };
            if !retry(&failure) || start.elapsed() + backoff > RETRY_BUDGET {
                return Err(failure);
            }
            tracing::debug!(op, key, error = %failure, "retrying etcd request");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// A read: retried on any transient failure.
    async fn read<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, EtcdFailure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt(op, key, EtcdFailure::transient, f).await
    }

    /// A write: retried only when etcd surely did not apply it.
    async fn write<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, EtcdFailure>
    where
        F: FnMut(Clients) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt(op, key, EtcdFailure::not_applied, f).await
    }

    /// Whether a read at `rev` works: `Ok(false)` if `rev` is compacted; a revision above the
    /// current one counts as readable when `future_ok` (a watch may start in the future).
    async fn readable_at(
        &self,
        op: &'static str,
        rev: Revision,
        future_ok: bool,
    ) -> Result<bool, StoreError> {
        let r = self
            .read(op, PROBE_KEY, |mut c| async move {
                c.kv.get(
                    PROBE_KEY,
                    Some(GetOptions::new().with_revision(rev).with_count_only()),
                )
                .await
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(EtcdFailure::Future) if future_ok => Ok(true),
            Err(EtcdFailure::Compacted) => Ok(false),
            Err(e) => Err(e.into_store(op, PROBE_KEY)),
        }
    }

    /// etcd's compacted revision, measured (see the module documentation).
    async fn probe_compacted(&self) -> Result<Revision, StoreError> {
        const OP: &str = "compacted_revision";
        let current = self.current_revision().await?;
        let known = self.compacted_hint.load(Ordering::SeqCst);
        let hint = known.clamp(1, current.max(1));
        // The smallest readable revision lies in [hint, current]: reads at `current` always work.
        let (mut lo, mut hi) = if self.readable_at(OP, hint, false).await? {
            (hint, hint)
        } else {
            (hint + 1, current)
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.readable_at(OP, mid, false).await? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        // Reads at 1 work whether or not etcd was compacted at 1; only our own compact(1) tells.
        if lo <= 1 && known < 1 {
            return Ok(0);
        }
        self.compacted_hint.fetch_max(lo, Ordering::SeqCst);
        Ok(lo)
    }

    async fn compacted_error(&self, requested: Revision) -> StoreError {
        match self.probe_compacted().await {
            Ok(compacted) => StoreError::Compacted {
                requested,
                compacted,
            },
            Err(e) => e,
        }
    }

    async fn future_error(&self, requested: Revision) -> StoreError {
        match self.current_revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(e) => e,
        }
    }

    async fn list_inner(&self, opts: ListOptions<'_>) -> Result<ListResult, StoreError> {
        const OP: &str = "list";
        let prefix = opts.prefix;
        let (begin, end) = prefix_range(prefix);
        let start = match opts.start_after {
            Some(after) if after >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => begin.clone(),
        };
        let revision = opts.revision.unwrap_or(0);
        if let Some(r) = opts.revision.filter(|r| *r <= 0) {
            // etcd reads "revision <= 0" as "current"; here it is the empty store before revision 1.
            let compacted = self.probe_compacted().await?;
            if r < compacted || r < 0 {
                return Err(StoreError::Compacted {
                    requested: r,
                    compacted,
                });
            }
            return Ok(ListResult {
                items: Vec::new(),
                revision: r,
                more: false,
                count: 0,
            });
        }
        let limit = i64::try_from(opts.limit).unwrap_or(i64::MAX);
        // [start, end) is empty when start_after is past the prefix ("\0" = no end).
        let empty_page = end != [0] && start >= end;
        let cut = start != begin;
        let page_op = TxnOp::get(
            start,
            Some(
                GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(limit)
                    .with_revision(revision),
            ),
        );
        let count_op = TxnOp::get(
            begin,
            Some(
                GetOptions::new()
                    .with_range(end)
                    .with_revision(revision)
                    .with_count_only(),
            ),
        );
        let ops = match (empty_page, cut) {
            (true, _) => vec![count_op],
            (false, true) => vec![page_op, count_op],
            (false, false) => vec![page_op],
        };
        let resp = self
            .read(OP, prefix, |mut c| {
                let ops = ops.clone();
                async move { c.kv.txn(Txn::new().and_then(ops)).await }
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(EtcdFailure::Compacted) => return Err(self.compacted_error(revision).await),
            Err(EtcdFailure::Future) => return Err(self.future_error(revision).await),
            Err(e) => return Err(e.into_store(OP, prefix)),
        };
        let header_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut ranges = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (items, more, count) = if empty_page {
            let counted = ranges.next().ok_or_else(|| malformed(OP, prefix))?;
            (Vec::new(), false, counted.count())
        } else {
            let mut page = ranges.next().ok_or_else(|| malformed(OP, prefix))?;
            let count = if cut {
                ranges.next().ok_or_else(|| malformed(OP, prefix))?.count()
            } else {
                page.count()
            };
            let more = page.more();
            let items = page
                .take_kvs()
                .iter()
                .map(|kv| convert_kv(kv, OP))
                .collect::<Result<Vec<_>, _>>()?;
            (items, more, count)
        };
        Ok(ListResult {
            items,
            revision: if revision > 0 { revision } else { header_rev },
            more,
            count,
        })
    }

    /// A put/delete guarded by "the key exists" (and its mod_revision, when given), followed by a
    /// keys-only get; on failure the keys-only get tells NotFound from Conflict.
    async fn guarded(
        &self,
        op: &'static str,
        key: &str,
        then: TxnOp,
        expected: Option<Revision>,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        let mut when = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(e) = expected {
            when.push(Compare::mod_revision(key, CompareOp::Equal, e));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(vec![
                then,
                TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            ])
            .or_else(vec![TxnOp::get(
                key,
                Some(GetOptions::new().with_keys_only()),
            )]);
        let resp = self
            .write(op, key, |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await
            .map_err(|e| e.into_store(op, key))?;
        if resp.succeeded() {
            return Ok(resp);
        }
        let existing = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        Err(match (existing.flatten(), expected) {
            (Some(actual), Some(expected)) => StoreError::Conflict {
                key: key.to_string(),
                expected,
                actual,
            },
            _ => StoreError::NotFound {
                key: key.to_string(),
            },
        })
    }
}

/// A connection failure with an optional hint in front of it.
#[derive(Debug)]
struct Hinted {
    hint: Option<&'static str>,
    failure: EtcdFailure,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.hint {
            Some(hint) => write!(f, "{hint}: {}", self.failure),
            None => write!(f, "{}", self.failure),
        }
    }
}

impl std::error::Error for Hinted {}

/// The gRPC clients (cheap clones of one balanced channel).
#[derive(Clone)]
struct Clients {
    kv: KvClient,
    watch: WatchClient,
}

/// An etcd failure, classified.
#[derive(Debug)]
enum EtcdFailure {
    /// "required revision has been compacted".
    Compacted,
    /// "required revision is a future revision".
    Future,
    /// The member has no leader: the request was rejected before being proposed.
    NoLeader(etcd_client::Error),
    /// "too many requests", or no connection could be made: surely not applied.
    Busy(etcd_client::Error),
    /// Unavailable, leader changed, timed out, connection lost: a write's outcome is unknown.
    Unavailable(etcd_client::Error),
    /// Our own attempt timeout fired.
    TimedOut,
    /// Anything else.
    Other(etcd_client::Error),
}

impl std::fmt::Display for EtcdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdFailure::Compacted => write!(f, "required revision has been compacted"),
            EtcdFailure::Future => write!(f, "required revision is a future revision"),
            EtcdFailure::TimedOut => write!(f, "no answer from etcd within {ATTEMPT_TIMEOUT:?}"),
            EtcdFailure::NoLeader(e)
            | EtcdFailure::Busy(e)
            | EtcdFailure::Unavailable(e)
            | EtcdFailure::Other(e) => write_chain(f, e),
        }
    }
}

// The cause chain is already in Display (tonic's own Display omits it).
impl std::error::Error for EtcdFailure {}

impl EtcdFailure {
    fn from_client(e: etcd_client::Error) -> Self {
        use tonic::Code;
        match &e {
            etcd_client::Error::GRpcStatus(s) => {
                let msg = s.message();
                if msg.contains("required revision has been compacted") {
                    EtcdFailure::Compacted
                } else if msg.contains("required revision is a future revision") {
                    EtcdFailure::Future
                } else if msg.contains("no leader") {
                    EtcdFailure::NoLeader(e)
                } else if msg.contains("too many requests") || msg.contains("tcp connect error") {
                    EtcdFailure::Busy(e)
                } else {
                    match s.code() {
                        Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Unknown => EtcdFailure::Unavailable(e),
                        _ => EtcdFailure::Other(e),
                    }
                }
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                EtcdFailure::Unavailable(e)
            }
            _ => EtcdFailure::Other(e),
        }
    }

    fn transient(&self) -> bool {
        matches!(
            self,
            EtcdFailure::NoLeader(_)
                | EtcdFailure::Busy(_)
                | EtcdFailure::Unavailable(_)
                | EtcdFailure::TimedOut
        )
    }

    fn not_applied(&self) -> bool {
        matches!(self, EtcdFailure::NoLeader(_) | EtcdFailure::Busy(_))
    }

    /// Into a [`StoreError`]; revision failures need a probe for their numbers, which callers
    /// that can get them do first.
    fn into_store(self, op: &'static str, key: &str) -> StoreError {
        let key = key.to_string();
        if self.transient() {
            StoreError::Unavailable {
                op,
                key,
                source: Box::new(self),
            }
        } else {
            StoreError::Backend {
                op,
                key,
                source: Box::new(self),
            }
        }
    }
}

fn malformed(op: &'static str, key: &str) -> StoreError {
    StoreError::Backend {
        op,
        key: key.to_string(),
        source: "etcd answered with fewer responses than requested".into(),
    }
}

/// `[begin, end)` of a prefix in etcd's terms (`"\0"` as end = no end).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return (prefix.as_bytes().to_vec(), end);
        }
    }
    (prefix.as_bytes().to_vec(), vec![0])
}

fn convert_kv(kv: &etcd_client::KeyValue, op: &'static str) -> Result<KeyValue, StoreError> {
    let key = std::str::from_utf8(kv.key()).map_err(|e| StoreError::Backend {
        op,
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        source: Box::new(e),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}


fn span(op: &'static str, key: &str) -> tracing::Span {
    tracing::debug_span!("etcd", op, key)
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        async {
            let mut resp = self
                .read("get", key, |mut c| async move { c.kv.get(key, None).await })
                .await
                .map_err(|e| e.into_store("get", key))?;
            resp.take_kvs()
                .first()
                .map(|kv| convert_kv(kv, "get"))
                .transpose()
        }
        .instrument(span("get", key))
        .await
    }

    async fn list(&self, opts: ListOptions<'_>) -> Result<ListResult, StoreError> {
        let s = span("list", opts.prefix);
        self.list_inner(opts).instrument(s).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        check_key(key)?;
        async {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(key, value.clone(), None)]);
            let resp = self
                .write("create", key, |mut c| {
                    let txn = txn.clone();
                    async move { c.kv.txn(txn).await }
                })
                .await
                .map_err(|e| e.into_store("create", key))?;
            if !resp.succeeded() {
                return Err(StoreError::AlreadyExists {
                    key: key.to_string(),
                });
            }
            let rev = resp
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| malformed("create", key))?;
            Ok(KeyValue {
                key: key.to_string(),
                value,
                create_revision: rev,
                mod_revision: rev,
            })
        }
        .instrument(span("create", key))
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        check_key(key)?;
        async {
            let put = TxnOp::put(key, value.clone(), None);
            let resp = self
                .guarded("update", key, put, expected_mod_revision)
                .await?;
            let kv = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                    _ => None,
                })
                .ok_or_else(|| malformed("update", key))?;
            Ok(KeyValue {
                key: key.to_string(),
                value,
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
            })
        }
        .instrument(span("update", key))
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        check_key(key)?;
        async {
            let del = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
            let resp = self
                .guarded("delete", key, del, expected_mod_revision)
                .await?;
            let rev = resp
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| malformed("delete", key))?;
            let prev = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
                    _ => None,
                })
                .ok_or_else(|| malformed("delete", key))?;
            Ok((convert_kv(&prev, "delete")?, rev))
        }
        .instrument(span("delete", key))
        .await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .read("current_revision", "", |mut c| async move {
                c.kv.get(PROBE_KEY, Some(GetOptions::new().with_count_only()))
                    .await
            })
            .instrument(span("current_revision", ""))
            .await
            .map_err(|e| e.into_store("current_revision", ""))?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| malformed("current_revision", ""))
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.probe_compacted()
            .instrument(span("compacted_revision", ""))
            .await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        async {
            if revision < 1 {
                return Err(self.compacted_error(revision).await);
            }
            let r = self
                .write("compact", "", |mut c| async move {
                    c.kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                        .await
                })
                .await;
            match r {
                Ok(_) => {
                    self.compacted_hint.fetch_max(revision, Ordering::SeqCst);
                    Ok(())
                }
                Err(EtcdFailure::Compacted) => Err(self.compacted_error(revision).await),
                Err(EtcdFailure::Future) => Err(self.future_error(revision).await),
                Err(e) => Err(e.into_store("compact", "")),
            }
        }
        .instrument(span("compact", ""))
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let items = self.watch_items(prefix, from, None).await?;
        Ok(items
            .filter_map(|item| async move {
                match item {
                    Ok(WatchItem::Event(ev)) => Some(Ok(ev)),
                    Ok(WatchItem::Progress(_)) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed())
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        from: Revision,
        interval: Duration,
    ) -> Result<ProgressWatchStream, StoreError> {
        self.watch_items(prefix, from, Some(interval)).await
    }
}

impl EtcdStore {
    async fn watch_items(
        &self,
        prefix: &str,
        from: Revision,
        progress_every: Option<Duration>,
    ) -> Result<ProgressWatchStream, StoreError> {
        let span = span("watch", prefix);
        async {
            if from < 0 {
                return Err(self.compacted_error(from).await);
            }
            let mut state = WatchState {
                store: self.clone(),
                prefix: prefix.to_string(),
                pos: from,
                stream: None,
                buf: VecDeque::new(),
                done: false,
                progress: from,
                ticker: progress_every.map(|every| {
                    let every = every.max(Duration::from_millis(10));
                    let mut t =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                }),
            };
            // Opening here makes a compacted `from` fail the call itself.
            state.open().await?;
            Ok(futures::stream::unfold(state, WatchState::next).boxed())
        }
        .instrument(span)
        .await
    }
}

/// One watch: the etcd stream and what was delivered.
struct WatchState {
    store: EtcdStore,
    prefix: String,
    /// The revision of the last event delivered (or `from`): events at or below it are skipped.
    pos: Revision,
    stream: Option<etcd_client::WatchStream>,
    buf: VecDeque<WatchItem>,
    done: bool,
    /// The latest revision etcd confirmed this watch has seen everything up to (progress
    /// notifications).
    progress: Revision,
    /// When to ask etcd for a progress notification (only for `watch_with_progress`).
    ticker: Option<tokio::time::Interval>,
}

impl WatchState {
    /// (Re)opens the etcd watch at `pos` and waits for etcd to confirm it.
    async fn open(&mut self) -> Result<(), StoreError> {
        const OP: &str = "watch";
        self.stream = None;
        let start = self.pos.max(1);
        if self.pos < self.store.compacted_hint.load(Ordering::SeqCst) {
            return Err(self.store.compacted_error(self.pos).await);
        }
        // The same check as etcd's watch, but as an immediate error rather than a later cancel.
        if !self.store.readable_at(OP, start, true).await? {
            return Err(self.store.compacted_error(self.pos).await);
        }
        let (begin, end) = prefix_range(&self.prefix);
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let (stream, first) = self
            .store
            .read(OP, &self.prefix, |mut c| {
                let (begin, opts) = (begin.clone(), opts.clone());
                async move {
                    let mut s = c.watch.watch(begin, Some(opts)).await?;
                    // The first message confirms the watch (or cancels it).
                    let first = s.message().await?;
                    Ok((s, first))
                }
            })
            .await
            .map_err(|e| e.into_store(OP, &self.prefix))?;
        match first {
            Some(resp) if resp.compact_revision() != 0 => Err(StoreError::Compacted {
                requested: self.pos,
                compacted: resp.compact_revision(),
            }),
            Some(resp) if resp.created() && !resp.canceled() => {
                self.stream = Some(stream);
                self.absorb(&resp)
            }
            Some(resp) => Err(StoreError::Backend {
                op: OP,
                key: self.prefix.clone(),
                source: format!("etcd refused the watch: {:?}", resp.cancel_reason()).into(),
            }),
            None => Err(StoreError::Unavailable {
                op: OP,
                key: self.prefix.clone(),
                source: "etcd closed the watch stream before confirming it".into(),
            }),
        }
    }

    /// Takes the events of one response into `buf`, skipping what was delivered already. etcd
    /// never splits one revision's events over two responses, so the skip is by whole revisions.
    fn absorb(&mut self, resp: &etcd_client::WatchResponse) -> Result<(), StoreError> {
        if resp.events().is_empty() {
            if let Some(h) = resp.header() {
                if !resp.created() && h.revision() >= self.progress {
                    // Everything up to it was delivered: a re-open can start there.
                    self.progress = h.revision();
                    self.pos = self.pos.max(h.revision());
                    self.buf.push_back(WatchItem::Progress(h.revision()));
                    tracing::trace!(prefix = %self.prefix, revision = h.revision(), "etcd watch progress");
                }
            }
            return Ok(());
        }
        let floor = self.pos;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            if rev <= floor {
                continue;
            }
            let converted = match ev.event_type() {
                EventType::Put => Event::Put {
                    kv: convert_kv(kv, "watch")?,
                    prev: ev.prev_kv().map(|p| convert_kv(p, "watch")).transpose()?,
                },
                EventType::Delete => {
                    let prev = match ev.prev_kv() {
                        Some(p) => convert_kv(p, "watch")?,
                        // etcd leaves prev_kv out if it was compacted meanwhile: the delete cannot
                        // be described, so this watch position is as good as compacted.
                        None => {
                            return Err(StoreError::Compacted {
                                requested: floor,
                                compacted: rev,
                            })
                        }
                    };
                    Event::Delete {
                        prev,
                        revision: rev,
                    }
                }
            };
            self.pos = self.pos.max(rev);
            self.buf.push_back(WatchItem::Event(converted));
        }
        Ok(())
    }

    async fn next(mut self) -> Option<(Result<WatchItem, StoreError>, Self)> {
        let mut backoff = FIRST_BACKOFF;
        let mut broken_since: Option<tokio::time::Instant> = None;
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Some((Ok(ev), self));
            }
            if self.done {
                return None;
            }
            let msg = match (self.stream.as_mut(), self.ticker.as_mut()) {
                (Some(s), Some(ticker)) => {
                    tokio::select! {
                        m = s.message() => m,
                        _ = ticker.tick() => {
                            // Answered on the stream once this watch has caught up; a failure
                            // shows up as a broken stream below.
                            if let Err(e) = s.request_progress().await {
                                tracing::debug!(prefix = %self.prefix, error = %e, "etcd progress request failed");
                            }
                            continue;
                        }
                    }
                }
                (Some(s), None) => s.message().await,
                (None, _) => Ok(None),
            };
            match msg {
                Ok(Some(resp)) if resp.compact_revision() != 0 => {
                    self.done = true;
                    let err = StoreError::Compacted {
                        requested: self.pos,
                        compacted: resp.compact_revision(),
                    };
                    return Some((Err(err), self));
                }
                Ok(Some(resp)) if resp.canceled() => {
                    // Canceled for another reason (e.g. the member lost its leader): re-open.
                    tracing::debug!(prefix = %self.prefix, reason = resp.cancel_reason(), "etcd canceled the watch");
                    self.stream = None;
                }
                Ok(Some(resp)) => {
                    if let Err(e) = self.absorb(&resp) {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                    continue;
                }
                Ok(None) => self.stream = None,
                Err(e) => {
                    tracing::debug!(prefix = %self.prefix, error = %e, "etcd watch stream broke");
                    self.stream = None;
                }
            }
            // The stream is gone: re-open it from `pos` (on another endpoint if this one died).
            let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
            match self.open().await {
                Ok(()) => {
                    tracing::debug!(prefix = %self.prefix, pos = self.pos, "etcd watch resumed");
                    broken_since = None;
                    backoff = FIRST_BACKOFF;
                }
                Err(e @ StoreError::Unavailable { .. }) if since.elapsed() < RETRY_BUDGET * 4 => {
                    tracing::debug!(prefix = %self.prefix, error = %e, "cannot resume the etcd watch yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    self.done = true;
                    tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch ended");
                    return Some((Err(e), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
        assert_eq!(prefix_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
    }
}
