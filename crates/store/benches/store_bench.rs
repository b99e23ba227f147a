//! Store benchmark (no harness): `cargo bench -p dari-store`.
//!
//! Runs the same suite on SQLite (durable: fsync on commit, in a temp dir) and on etcd (a
//! single-member etcd 3.4 from `/usr/bin/etcd` started on loopback with its data in a temp dir,
//! or the cluster at `DARI_BENCH_ETCD_ENDPOINTS=url,...`), with ~1 KiB values, then prints both
//! side by side:
//! - 10,000 sequential creates (one writer: every commit is one fsync);
//! - 10,000 creates from 64 concurrent tasks (group commit);
//! - get of random keys; list of all 10,000 keys at the current revision; the same list at a past
//!   revision (history path), and paged by 500;
//! - watch delivery latency: 10 watchers, 1,000 sequential creates; per event, the time from the
//!   start of the write to its arrival at each watcher (p50/p99);
//! - 100 watchers x 1,000 events.
//!
//! Set `DARI_STORE_BENCH_DIR` to put the databases elsewhere (default: the system temp dir), and
//! `DARI_BENCH_BACKENDS=sqlite` or `=etcd` to run only one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dari_store::{EtcdConfig, EtcdStore, ListOptions, SqliteStore, Store};
use futures::StreamExt;

/// One measured operation: name, p50, p99, throughput (ops/s).
type Row = (String, Duration, Duration, f64);

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn report(rows: &mut Vec<Row>, name: &str, samples: &mut [Duration], total: Duration) {
    let n = samples.len();
    let p50 = pct(samples, 0.50);
    let p99 = pct(samples, 0.99);
    let max = pct(samples, 1.0);
    let rate = n as f64 / total.as_secs_f64();
    println!(
        "{name:<44} n={n:<6} total={:>9.1?}  p50={p50:>9.1?}  p99={p99:>9.1?}  max={max:>9.1?}  {rate:>9.0} ops/s",
        total,
    );
    rows.push((name.to_string(), p50, p99, rate));
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"cm-{i}\"}},\"data\":{{\"x\":\"")
        .into_bytes();
    v.resize(1000, b'x');
    v.extend_from_slice(b"\"}}");
    v
}

async fn bench(store: Arc<dyn Store>) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    // 10,000 sequential creates.
    let mut samples = Vec::with_capacity(10_000);
    let start = Instant::now();
    for i in 0..10_000 {
        let t = Instant::now();
        store
            .create(&format!("/registry/configmaps/seq/cm-{i:05}"), value(i))
            .await?;
        samples.push(t.elapsed());
    }
    report(
        &mut rows,
        "create, 1 writer (fsync each)",
        &mut samples,
        start.elapsed(),
    );

    // 10,000 creates from 64 tasks.
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                for i in (t..10_000).step_by(64) {
                    let s = Instant::now();
                    store
                        .create(&format!("/registry/configmaps/par/cm-{i:05}"), value(i))
                        .await?;
                    samples.push(s.elapsed());
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await??);
    }
    report(
        &mut rows,
        "create, 64 concurrent writers (group commit)",
        &mut samples,
        start.elapsed(),
    );

    // Gets.
    let mut samples = Vec::new();
    let start = Instant::now();
    for i in 0..10_000usize {
        let k = (i * 7919) % 10_000;
        let t = Instant::now();
        let kv = store
            .get(&format!("/registry/configmaps/seq/cm-{k:05}"))
            .await?;
        samples.push(t.elapsed());
        anyhow::ensure!(kv.is_some());
    }
    report(&mut rows, "get", &mut samples, start.elapsed());

    // Full list of 10,000 keys at the current revision.
    let mut samples = Vec::new();
    let start = Instant::now();
    for _ in 0..30 {
        let t = Instant::now();
        let l = store
            .list(ListOptions {
                prefix: "/registry/configmaps/seq/",
                ..Default::default()
            })
            .await?;
        samples.push(t.elapsed());
        anyhow::ensure!(l.items.len() == 10_000 && l.count == 10_000);
    }
    report(
        &mut rows,
        "list 10,000 (current revision)",
        &mut samples,
        start.elapsed(),
    );

    // Make the history non-trivial, then list at a past revision.
    let past = store.current_revision().await?;
    for i in (0..10_000).step_by(10) {
        store
            .update(
                &format!("/registry/configmaps/seq/cm-{i:05}"),
                value(i + 1),
                None,
            )
            .await?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    for _ in 0..30 {
        let t = Instant::now();
        let l = store
            .list(ListOptions {
                prefix: "/registry/configmaps/seq/",
                revision: Some(past),
                ..Default::default()
            })
            .await?;
        samples.push(t.elapsed());
        anyhow::ensure!(l.items.len() == 10_000);
    }
    report(
        &mut rows,
        "list 10,000 (past revision, 10% updated)",
        &mut samples,
        start.elapsed(),
    );

    // Paged by 500 at a fixed revision.
    let mut samples = Vec::new();
    let start = Instant::now();
    let rev = store.current_revision().await?;
    let mut after: Option<String> = None;
    let mut seen = 0;
    loop {
        let t = Instant::now();
        let page = store
            .list(ListOptions {
                prefix: "/registry/configmaps/seq/",
                start_after: after.as_deref(),
                limit: 500,
                revision: Some(rev - 1),
            })
            .await?;
        samples.push(t.elapsed());
        seen += page.items.len();
        if !page.more {
            break;
        }
        after = page.items.last().map(|kv| kv.key.clone());
    }
    anyhow::ensure!(seen == 10_000);
    report(
        &mut rows,
        "list page of 500 (past revision)",
        &mut samples,
        start.elapsed(),
    );

    // 100 watchers x 1,000 events.
    let from = store.current_revision().await?;
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let w = store.watch("/registry/pods/", from).await?;
        watchers.push(tokio::spawn(async move {
            w.take(1000)
                .filter(|e| futures::future::ready(e.is_ok()))
                .count()
                .await
        }));
    }
    let start = Instant::now();
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (t..1000).step_by(16) {
                    store
                        .create(&format!("/registry/pods/default/p-{i}"), value(i))
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let written = start.elapsed();
    for w in watchers {
        anyhow::ensure!(w.await? == 1000);
    }
    println!(
        "{:<44} 1,000 writes in {written:.1?}; all 100 watchers had all events after {:.1?}",
        "watch, 100 watchers x 1,000 events",
        start.elapsed()
    );
    Ok(rows)
}

/// Watch delivery latency: 10 watchers, 1,000 sequential creates; per event and watcher, the time
/// from the start of the write to the event's arrival.
async fn watch_latency(store: Arc<dyn Store>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const EVENTS: usize = 1000;
    let from = store.current_revision().await?;
    let sent: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..EVENTS).map(|_| std::sync::OnceLock::new()).collect());
    let mut watchers = Vec::new();
    for _ in 0..10 {
        let w = store.watch("/registry/events/", from).await?;
        watchers.push(tokio::spawn(async move {
            let mut arrivals = Vec::with_capacity(EVENTS);
            let mut w = w.take(EVENTS);
            while let Some(ev) = w.next().await {
                let ev = ev?;
                let i: usize = ev.key().rsplit('-').next().unwrap_or("").parse()?;
                arrivals.push((i, Instant::now()));
            }
            anyhow::Ok(arrivals)
        }));
    }
    let start = Instant::now();
    for (i, slot) in sent.iter().enumerate() {
        let _ = slot.set(Instant::now());
        store
            .create(&format!("/registry/events/default/e-{i}"), value(i))
            .await?;
    }
    let mut samples = Vec::new();
    for w in watchers {
        let arrivals = w.await??;
        anyhow::ensure!(arrivals.len() == EVENTS);
        for (i, at) in arrivals {
            let t0 = sent[i].get().copied().unwrap_or(at);
            samples.push(at.saturating_duration_since(t0));
        }
    }
    report(
        rows,
        "watch delivery (write start -> event), 10 w.",
        &mut samples,
        start.elapsed(),
    );
    Ok(())
}

async fn run_backend(name: &str, store: Arc<dyn Store>) -> anyhow::Result<Vec<Row>> {
    println!("== {name}");
    let mut rows = bench(store.clone()).await?;
    watch_latency(store, &mut rows).await?;
    Ok(rows)
}

async fn all() -> anyhow::Result<()> {
    let dir = match std::env::var_os("DARI_STORE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let which = std::env::var("DARI_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,etcd".into());
    let mut results: Vec<(&str, Vec<Row>)> = Vec::new();
    if which.contains("sqlite") {
        let store = Arc::new(SqliteStore::open(&dir.path().join("bench.sqlite"))?);
        println!(
            "sqlite database: {} (durable: fsync on every commit)",
            dir.path().display()
        );
        results.push(("sqlite", run_backend("sqlite", store).await?));
        let size = std::fs::metadata(dir.path().join("bench.sqlite"))?.len();
        println!(
            "database file: {:.1} MiB (plus WAL)",
            size as f64 / 1048576.0
        );
    }
    if which.contains("etcd") {
        // Keep the cluster alive until the end of the run.
        let (config, _cluster) = match std::env::var("DARI_BENCH_ETCD_ENDPOINTS") {
            Ok(eps) => (
                EtcdConfig {
                    endpoints: eps.split(',').map(str::to_string).collect(),
                    ..Default::default()
                },
                None,
            ),
            Err(_) => {
                let cluster = dari_store::testing::EtcdCluster::start(1).await?;
                println!("etcd: 1 member, data in {}", cluster.dir().display());
                (cluster.config(), Some(cluster))
            }
        };
        let store = Arc::new(EtcdStore::connect(config).await?);
        results.push(("etcd", run_backend("etcd", store).await?));
    }
    if results.len() == 2 {
        println!();
        println!(
            "{:<44} {:>10} {:>10} {:>9} | {:>10} {:>10} {:>9}",
            "side by side", "sqlite p50", "p99", "ops/s", "etcd p50", "p99", "ops/s"
        );
        for (a, b) in results[0].1.iter().zip(results[1].1.iter()) {
            println!(
                "{:<44} {:>10.1?} {:>10.1?} {:>9.0} | {:>10.1?} {:>10.1?} {:>9.0}",
                a.0, a.1, a.2, a.3, b.1, b.2, b.3
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs bench targets with `--bench`-less args; do the work only under
    // `cargo bench` (which passes `--bench`).
    if !std::env::args().any(|a| a == "--bench") {
        println!("store_bench: run with `cargo bench -p dari-store`");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(all())
}
