//! Store benchmark (no harness): `cargo bench -p dari-store`.
//!
//! On a durable (fsync on commit) database in a temp dir, with ~1 KiB values:
//! - 10,000 sequential creates (one writer: every commit is one fsync);
//! - 10,000 creates from 64 concurrent tasks (group commit);
//! - get of random keys; list of all 10,000 keys at the current revision; the same list at a past
//!   revision (history path), and paged by 500;
//! - 100 watchers x 1,000 events.
//!
//! Set `DARI_STORE_BENCH_DIR` to put the database elsewhere (default: the system temp dir).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dari_store::{ListOptions, SqliteStore, Store};
use futures::StreamExt;

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn report(name: &str, samples: &mut [Duration], total: Duration) {
    let n = samples.len();
    let p50 = pct(samples, 0.50);
    let p99 = pct(samples, 0.99);
    let max = pct(samples, 1.0);
    println!(
        "{name:<44} n={n:<6} total={:>9.1?}  p50={p50:>9.1?}  p99={p99:>9.1?}  max={max:>9.1?}  {:>9.0} ops/s",
        total,
        n as f64 / total.as_secs_f64()
    );
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"cm-{i}\"}},\"data\":{{\"x\":\"")
        .into_bytes();
    v.resize(1000, b'x');
    v.extend_from_slice(b"\"}}");
    v
}

async fn bench() -> anyhow::Result<()> {
    let dir = match std::env::var_os("DARI_STORE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.sqlite"))?);
    println!(
        "database: {} (durable: fsync on every commit)",
        dir.path().display()
    );

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
    report("get", &mut samples, start.elapsed());

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
    let size = std::fs::metadata(dir.path().join("bench.sqlite"))?.len();
    println!(
        "database file: {:.1} MiB (plus WAL)",
        size as f64 / 1048576.0
    );
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
        .block_on(bench())
}
