//! Crash test: a child process (this test binary re-executed, running `crash_child`) writes in a
//! loop with several concurrent writers and prints each acknowledged write; the parent kills it
//! with SIGKILL mid-stream, reopens the database and checks that every acknowledged write is there
//! with the revision it was acknowledged with. Three rounds on the same file.
//!
//! Note: SIGKILL loses the process, not the page cache, so this proves WAL recovery and that an
//! acknowledgement follows the commit; it does not simulate power loss (fsync is on, though).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use dari_store::{ListOptions, Revision, SqliteStore, Store, StoreError};

const DB_ENV: &str = "DARI_STORE_CRASH_DB";
const ROUND_ENV: &str = "DARI_STORE_CRASH_ROUND";
const WRITERS: usize = 4;

/// The child: runs only when re-executed by `acknowledged_writes_survive_sigkill`.
#[test]
#[ignore = "child process of acknowledged_writes_survive_sigkill"]
fn crash_child() {
    let (Ok(db), Ok(round)) = (std::env::var(DB_ENV), std::env::var(ROUND_ENV)) else {
        eprintln!("crash_child is run by acknowledged_writes_survive_sigkill; nothing to do");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let store = Arc::new(SqliteStore::open(Path::new(&db)).expect("open"));
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, out, round) = (store.clone(), out.clone(), round.clone());
                tokio::spawn(async move {
                    let counter = format!("/crash/counter/{w}");
                    for i in 0u64.. {
                        // A new key per write, and an update of this writer's counter.
                        let key = format!("/crash/r{round}/w{w}/{i}");
                        let kv = store
                            .create(&key, i.to_string().into_bytes())
                            .await
                            .expect("create");
                        let line = format!("ack create {key} {} {i}\n", kv.mod_revision);
                        out.lock()
                            .expect("stdout")
                            .write_all(line.as_bytes())
                            .expect("write");
                        let value = format!("{round}-{i}").into_bytes();
                        let kv = match store.update(&counter, value.clone(), None).await {
                            Err(StoreError::NotFound { .. }) => store.create(&counter, value).await,
                            other => other,
                        }
                        .expect("update");
                        let line =
                            format!("ack update {counter} {} {round}-{i}\n", kv.mod_revision);
                        out.lock()
                            .expect("stdout")
                            .write_all(line.as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
    });
}

struct Ack {
    key: String,
    revision: Revision,
    value: String,
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.sqlite");
    let exe = std::env::current_exe().expect("current exe");
    let mut acks: Vec<Ack> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, &db)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut this_round = 0;
        let mut line = String::new();
        // Read until enough writes were acknowledged, then kill -9 while it keeps writing.
        while this_round < 400 {
            line.clear();
            let n = lines.read_line(&mut line).expect("read child");
            assert!(n > 0, "child exited early after {this_round} acks");
            if let Some(ack) = parse(&line) {
                acks.push(ack);
                this_round += 1;
            }
        }
        child.kill().expect("SIGKILL child");
        let status = child.wait().expect("wait child");
        assert!(!status.success(), "child was killed: {status}");
        // Lines written before the kill are acknowledged too; a torn last line is not.
        loop {
            line.clear();
            if lines.read_line(&mut line).expect("read child") == 0 {
                break;
            }
            if line.ends_with('\n') {
                if let Some(ack) = parse(&line) {
                    acks.push(ack);
                }
            }
        }
        verify(&db, &acks);
    }
}

fn parse(line: &str) -> Option<Ack> {
    let mut parts = line.trim_end().split(' ');
    if parts.next()? != "ack" {
        return None;
    }
    let _kind = parts.next()?;
    let key = parts.next()?.to_string();
    let revision = parts.next()?.parse().ok()?;
    let value = parts.next()?.to_string();
    Some(Ack {
        key,
        revision,
        value,
    })
}

fn verify(db: &Path, acks: &[Ack]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let store = SqliteStore::open(db).expect("reopen after kill");
        let current = store.current_revision().await.expect("revision");
        let max_ack = acks.iter().map(|a| a.revision).max().expect("some acks");
        assert!(
            current >= max_ack,
            "current {current} < acknowledged {max_ack}"
        );
        // Revisions are unique across all acknowledged writes.
        let mut by_rev = BTreeMap::new();
        for a in acks {
            assert!(
                by_rev.insert(a.revision, &a.key).is_none(),
                "revision {} acknowledged twice",
                a.revision
            );
        }
        // Every acknowledged write is readable at its revision, with its value (no compaction
        // runs here, so all history is kept).
        for a in acks {
            let page = store
                .list(ListOptions {
                    prefix: &a.key,
                    revision: Some(a.revision),
                    ..Default::default()
                })
                .await
                .expect("list at acknowledged revision");
            let kv = page.items.iter().find(|kv| kv.key == a.key);
            let kv = kv.unwrap_or_else(|| panic!("{} missing at revision {}", a.key, a.revision));
            assert_eq!(kv.mod_revision, a.revision, "{}", a.key);
            assert_eq!(kv.value, a.value.as_bytes(), "{}", a.key);
        }
        // And the created keys are still there now.
        for a in acks
            .iter()
            .filter(|a| !a.key.starts_with("/crash/counter/"))
        {
            let kv = store
                .get(&a.key)
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("{} lost", a.key));
            assert_eq!(kv.mod_revision, a.revision);
        }
        eprintln!(
            "verified {} acknowledged writes; store at revision {current}",
            acks.len()
        );
    });
}
