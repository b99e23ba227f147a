//! Behaviour of the stores through the `Store` trait: the conformance tests run against both
//! backends (SQLite in memory, and a fresh single-member etcd started by the test on loopback);
//! the SQLite-only tests at the end exercise its internals (lagging watchers, reopen).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use dari_store::testing::EtcdCluster;
use dari_store::{
    compact_keep_last, EtcdStore, Event, KeyValue, ListOptions, Revision, SqliteConfig,
    SqliteStore, Store, StoreError,
};
use futures::StreamExt;

/// A fresh etcd store; the cluster must outlive the test (it is killed on drop).
async fn etcd() -> (Arc<dyn Store>, EtcdCluster) {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let store = EtcdStore::connect(cluster.config())
        .await
        .expect("connect to etcd");
    (Arc::new(store), cluster)
}

/// Each conformance test `async fn name(s: Arc<dyn Store>)` runs once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(std::sync::Arc::new(super::mem())).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _cluster) = super::etcd().await;
                    super::$name(store).await
                }
            )*
        }
    };
}

conformance!(
    fresh_store_is_at_revision_one,
    create_get_update_delete,
    list_prefix_limit_start_after_and_count,
    list_at_past_revisions_and_errors,
    paging_at_fixed_revision_is_a_stable_snapshot,
    watch_replays_then_follows_with_prev_values,
    watch_has_no_gaps_or_duplicates_under_concurrent_writers,
    compaction_keeps_current_values_and_rejects_old_revisions,
    compact_keep_last_helper,
    concurrent_creates_of_one_key,
    optimistic_concurrency_counter,
);

fn mem() -> SqliteStore {
    SqliteStore::open_in_memory().expect("open in-memory store")
}

fn file_store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("db.sqlite")).expect("open file store")
}

fn list(prefix: &str) -> ListOptions<'_> {
    ListOptions {
        prefix,
        ..Default::default()
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

/// Waits for the next stream item, failing instead of hanging.
async fn next(stream: &mut dari_store::WatchStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch event within 10s")
        .expect("stream not ended")
        .expect("event, not error")
}

async fn fresh_store_is_at_revision_one(s: Arc<dyn Store>) {
    assert_eq!(s.current_revision().await.unwrap(), 1);
    assert_eq!(s.compacted_revision().await.unwrap(), 0);
    let l = s.list(list("")).await.unwrap();
    assert!(l.items.is_empty());
    assert_eq!((l.revision, l.count, l.more), (1, 0, false));
}

async fn create_get_update_delete(s: Arc<dyn Store>) {
    let a = s.create("/a", b"1".to_vec()).await.unwrap();
    assert_eq!(
        a,
        KeyValue {
            key: "/a".into(),
            value: b"1".to_vec(),
            create_revision: 2,
            mod_revision: 2
        }
    );
    assert_eq!(s.get("/a").await.unwrap(), Some(a.clone()));
    assert_eq!(s.get("/b").await.unwrap(), None);

    let err = s.create("/a", b"x".to_vec()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { ref key } if key == "/a"),
        "{err:?}"
    );
    // A failed write does not take a revision.
    assert_eq!(s.current_revision().await.unwrap(), 2);

    let a2 = s.update("/a", b"2".to_vec(), None).await.unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (2, 3));
    let a3 = s.update("/a", b"3".to_vec(), Some(3)).await.unwrap();
    assert_eq!(
        (a3.create_revision, a3.mod_revision, a3.value.as_slice()),
        (2, 4, &b"3"[..])
    );

    let err = s.update("/a", b"x".to_vec(), Some(3)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, expected: 3, actual: 4 } if key == "/a"),
        "{err:?}"
    );
    let err = s.update("/nope", b"x".to_vec(), None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { ref key } if key == "/nope"),
        "{err:?}"
    );

    let err = s.delete("/a", Some(2)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 2,
                actual: 4,
                ..
            }
        ),
        "{err:?}"
    );
    let err = s.delete("/nope", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(s.current_revision().await.unwrap(), 4);

    let (prev, rev) = s.delete("/a", Some(4)).await.unwrap();
    assert_eq!((prev, rev), (a3, 5));
    assert_eq!(s.get("/a").await.unwrap(), None);
    let err = s.delete("/a", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    // Re-created: a new create_revision.
    let a4 = s.create("/a", b"4".to_vec()).await.unwrap();
    assert_eq!((a4.create_revision, a4.mod_revision), (6, 6));
    assert_eq!(s.current_revision().await.unwrap(), 6);

    let err = s.create("", b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err:?}");
}

async fn list_prefix_limit_start_after_and_count(s: Arc<dyn Store>) {
    for k in [
        "/r/a/1", "/r/a/2", "/r/a/3", "/r/a0", "/r/b/1", "/r/a/é", "/s",
    ] {
        s.create(k, k.as_bytes().to_vec()).await.unwrap();
    }
    let all = s.list(list("/r/a/")).await.unwrap();
    assert_eq!(keys(&all.items), ["/r/a/1", "/r/a/2", "/r/a/3", "/r/a/é"]);
    assert_eq!((all.count, all.more, all.revision), (4, false, 8));

    let p1 = s
        .list(ListOptions {
            prefix: "/r/a/",
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&p1.items), ["/r/a/1", "/r/a/2"]);
    assert_eq!((p1.count, p1.more), (4, true));
    let p2 = s
        .list(ListOptions {
            prefix: "/r/a/",
            limit: 2,
            start_after: Some("/r/a/2"),
            revision: Some(p1.revision),
        })
        .await
        .unwrap();
    assert_eq!(keys(&p2.items), ["/r/a/3", "/r/a/é"]);
    assert_eq!((p2.count, p2.more), (4, false));

    // Exactly `limit` left: no more.
    let p = s
        .list(ListOptions {
            prefix: "/r/a/",
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!p.more);

    // start_after before the prefix is ignored; after it, nothing.
    let p = s
        .list(ListOptions {
            prefix: "/r/b/",
            start_after: Some("/r/a"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&p.items), ["/r/b/1"]);
    let p = s
        .list(ListOptions {
            prefix: "/r/a/",
            start_after: Some("/r/b"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(p.items.is_empty());

    let everything = s.list(list("")).await.unwrap();
    assert_eq!(everything.count, 7);
    assert_eq!(everything.items.len(), 7);
}

async fn list_at_past_revisions_and_errors(s: Arc<dyn Store>) {
    s.create("/k/1", b"a".to_vec()).await.unwrap(); // 2
    s.create("/k/2", b"a".to_vec()).await.unwrap(); // 3
    s.update("/k/1", b"b".to_vec(), None).await.unwrap(); // 4
    s.delete("/k/2", None).await.unwrap(); // 5
    s.create("/k/3", b"a".to_vec()).await.unwrap(); // 6

    let at = |rev| ListOptions {
        prefix: "/k/",
        revision: Some(rev),
        ..Default::default()
    };
    let r1 = s.list(at(1)).await.unwrap();
    assert!(r1.items.is_empty());
    let r3 = s.list(at(3)).await.unwrap();
    assert_eq!(keys(&r3.items), ["/k/1", "/k/2"]);
    assert_eq!(r3.items[0].value, b"a");
    assert_eq!((r3.revision, r3.count), (3, 2));
    let r4 = s.list(at(4)).await.unwrap();
    assert_eq!(r4.items[0].value, b"b");
    assert_eq!(r4.items[0].mod_revision, 4);
    assert_eq!(r4.items[0].create_revision, 2);
    let r5 = s.list(at(5)).await.unwrap();
    assert_eq!(keys(&r5.items), ["/k/1"]);
    assert_eq!(r5.count, 1);
    let r6 = s.list(at(6)).await.unwrap();
    assert_eq!(keys(&r6.items), ["/k/1", "/k/3"]);

    let err = s.list(at(7)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FutureRevision {
                requested: 7,
                current: 6
            }
        ),
        "{err:?}"
    );
}

/// Paging at the revision of the first page gives one consistent snapshot while writers change
/// and delete the keys being paged over.
async fn paging_at_fixed_revision_is_a_stable_snapshot(s: Arc<dyn Store>) {
    for i in 0..300 {
        s.create(&format!("/p/{i:04}"), format!("v0-{i}").into_bytes())
            .await
            .unwrap();
    }
    let expected = s.list(list("/p/")).await.unwrap();
    assert_eq!(expected.items.len(), 300);

    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for round in 1..=3 {
                for i in (0..300).step_by(7) {
                    s.update(
                        &format!("/p/{i:04}"),
                        format!("v{round}-{i}").into_bytes(),
                        None,
                    )
                    .await
                    .unwrap();
                }
                s.delete(&format!("/p/{:04}", round * 10), None)
                    .await
                    .unwrap();
                s.create(&format!("/p/{:04}x", round), b"new".to_vec())
                    .await
                    .unwrap();
            }
        })
    };

    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list(ListOptions {
                prefix: "/p/",
                start_after: after.as_deref(),
                limit: 17,
                revision: Some(expected.revision),
            })
            .await
            .unwrap();
        assert_eq!(page.revision, expected.revision);
        assert_eq!(page.count, 300);
        got.extend(page.items.iter().cloned());
        if !page.more {
            break;
        }
        after = page.items.last().map(|kv| kv.key.clone());
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert_eq!(got, expected.items);
    assert!(s.current_revision().await.unwrap() > expected.revision);
}

async fn watch_replays_then_follows_with_prev_values(s: Arc<dyn Store>) {
    s.create("/w/a", b"1".to_vec()).await.unwrap(); // 2
    s.create("/x/a", b"1".to_vec()).await.unwrap(); // 3
    s.update("/w/a", b"2".to_vec(), None).await.unwrap(); // 4

    let mut w = s.watch("/w/", 2).await.unwrap();
    assert_eq!(
        next(&mut w).await,
        Event::Put {
            kv: KeyValue {
                key: "/w/a".into(),
                value: b"2".to_vec(),
                create_revision: 2,
                mod_revision: 4
            },
            prev: Some(KeyValue {
                key: "/w/a".into(),
                value: b"1".to_vec(),
                create_revision: 2,
                mod_revision: 2
            }),
        }
    );
    s.create("/x/b", b"1".to_vec()).await.unwrap(); // 5, filtered out
    s.delete("/w/a", None).await.unwrap(); // 6
    s.create("/w/b", b"1".to_vec()).await.unwrap(); // 7
    let e = next(&mut w).await;
    assert_eq!(
        e,
        Event::Delete {
            prev: KeyValue {
                key: "/w/a".into(),
                value: b"2".to_vec(),
                create_revision: 2,
                mod_revision: 4
            },
            revision: 6
        }
    );
    assert_eq!((e.revision(), e.key()), (6, "/w/a"));
    let e = next(&mut w).await;
    assert_eq!((e.revision(), e.key()), (7, "/w/b"));
    assert!(matches!(e, Event::Put { prev: None, .. }));

    // From 0 (= from the beginning) a second watcher replays everything under the prefix.
    let mut w2 = s.watch("/w/", 0).await.unwrap();
    let revs: Vec<Revision> = [
        next(&mut w2).await,
        next(&mut w2).await,
        next(&mut w2).await,
        next(&mut w2).await,
    ]
    .iter()
    .map(Event::revision)
    .collect();
    assert_eq!(revs, [2, 4, 6, 7]);

    // A watch from the future sees only later events.
    let mut w3 = s.watch("/w/", 9).await.unwrap();
    s.create("/w/c", b"1".to_vec()).await.unwrap(); // 8
    s.create("/w/d", b"1".to_vec()).await.unwrap(); // 9
    s.create("/w/e", b"1".to_vec()).await.unwrap(); // 10
    assert_eq!(next(&mut w3).await.revision(), 10);
}

/// Many concurrent writers, watchers started at different points: each sees every event after
/// its start, once, in revision order.
async fn watch_has_no_gaps_or_duplicates_under_concurrent_writers(s: Arc<dyn Store>) {
    let early = s.watch("", 1).await.unwrap();
    let prefixed = s.watch("/c/1/", 1).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                let key = format!("/c/{w}/{}", i % 10);
                match s.update(&key, format!("{i}").into_bytes(), None).await {
                    Err(StoreError::NotFound { .. }) => {
                        s.create(&key, format!("{i}").into_bytes()).await.unwrap();
                    }
                    Err(e) => panic!("{e}"),
                    Ok(_) => {}
                }
            }
        }));
    }
    // A watcher that starts in the middle.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mid_from = s.current_revision().await.unwrap();
    let mid = s.watch("", mid_from).await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let last = s.current_revision().await.unwrap();
    assert_eq!(last, 1001);

    let collect = |stream: dari_store::WatchStream, n: usize| async move {
        tokio::time::timeout(Duration::from_secs(20), stream.take(n).collect::<Vec<_>>())
            .await
            .expect("events within 20s")
            .into_iter()
            .map(|r| r.expect("event"))
            .collect::<Vec<_>>()
    };
    let all = collect(early, 1000).await;
    let revs: Vec<Revision> = all.iter().map(Event::revision).collect();
    assert_eq!(revs, (2..=1001).collect::<Vec<_>>());

    let mid_events = collect(mid, (last - mid_from) as usize).await;
    let revs: Vec<Revision> = mid_events.iter().map(Event::revision).collect();
    assert_eq!(revs, ((mid_from + 1)..=last).collect::<Vec<_>>());

    let only1 = collect(prefixed, 250).await;
    assert!(only1.iter().all(|e| e.key().starts_with("/c/1/")));
    assert!(only1.windows(2).all(|w| w[0].revision() < w[1].revision()));
    let expected: Vec<&Event> = all
        .iter()
        .filter(|e| e.key().starts_with("/c/1/"))
        .collect();
    assert_eq!(only1.iter().collect::<Vec<_>>(), expected);
}

/// 100 watchers x 1,000 events, with a tiny broadcast buffer so that watchers lag and must
/// re-read the log: all of them still get every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_watchers_thousand_events_with_lagging() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        SqliteStore::open_with(
            &dir.path().join("db"),
            SqliteConfig {
                durable: false,
                event_buffer: 16,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let w = s.watch("/h/", 1).await.unwrap();
        watchers.push(tokio::spawn(async move {
            w.take(1000)
                .map(|r| r.expect("event").revision())
                .collect::<Vec<_>>()
                .await
        }));
    }
    assert_eq!(s.watcher_count(), 100);
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..1000 {
                s.create(&format!("/h/{i}"), vec![b'x'; 100]).await.unwrap();
            }
        })
    };
    writer.await.unwrap();
    for w in watchers {
        let revs = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("in time")
            .unwrap();
        assert_eq!(revs, (2..=1001).collect::<Vec<_>>());
    }
    assert_eq!(s.watcher_count(), 0, "dropped streams unsubscribe");
}

#[tokio::test]
async fn dropping_a_watch_unsubscribes_and_closing_the_store_ends_watches() {
    let s = mem();
    let w = s.watch("", 1).await.unwrap();
    let w2 = s.watch("/a", 1).await.unwrap();
    assert_eq!(s.watcher_count(), 2);
    drop(w);
    assert_eq!(s.watcher_count(), 1);
    drop(s);
    let items: Vec<_> = tokio::time::timeout(Duration::from_secs(5), w2.collect::<Vec<_>>())
        .await
        .expect("stream ends when the store is dropped");
    assert_eq!(items.len(), 1);
    assert!(
        matches!(items[0], Err(StoreError::Closed { .. })),
        "{:?}",
        items[0]
    );
}

async fn compaction_keeps_current_values_and_rejects_old_revisions(s: Arc<dyn Store>) {
    s.create("/c/a", b"1".to_vec()).await.unwrap(); // 2
    s.create("/c/b", b"1".to_vec()).await.unwrap(); // 3
    s.update("/c/a", b"2".to_vec(), None).await.unwrap(); // 4
    s.delete("/c/b", None).await.unwrap(); // 5
    s.create("/c/c", b"1".to_vec()).await.unwrap(); // 6
    s.update("/c/a", b"3".to_vec(), None).await.unwrap(); // 7
    s.delete("/c/c", None).await.unwrap(); // 8

    let at = |rev| ListOptions {
        prefix: "/c/",
        revision: Some(rev),
        ..Default::default()
    };
    let before: Vec<_> = futures::future::join_all((4..=8).map(|r| s.list(at(r))))
        .await
        .into_iter()
        .map(|r| r.unwrap().items)
        .collect();
    let events_before: Vec<Event> = s
        .watch("/c/", 4)
        .await
        .unwrap()
        .take(4)
        .map(|e| e.unwrap())
        .collect()
        .await;

    s.compact(6).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 6);

    let err = s.list(at(5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 5,
                compacted: 6
            }
        ),
        "{err:?}"
    );
    // At and after the compacted revision, reads are unchanged.
    for (i, rev) in (6..=8).enumerate() {
        assert_eq!(
            s.list(at(rev)).await.unwrap().items,
            before[i + 2],
            "at {rev}"
        );
    }
    assert_eq!(s.get("/c/a").await.unwrap().unwrap().value, b"3");

    let err = s.watch("/c/", 5).await.err().expect("compacted");
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 5,
                compacted: 6
            }
        ),
        "{err:?}"
    );
    // Watching from the compacted revision replays what follows it, with prev values.
    let after: Vec<Event> = s
        .watch("/c/", 6)
        .await
        .unwrap()
        .take(2)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(after, events_before[2..]);

    let err = s.compact(6).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 6,
                compacted: 6
            }
        ),
        "{err:?}"
    );
    let err = s.compact(9).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FutureRevision {
                requested: 9,
                current: 8
            }
        ),
        "{err:?}"
    );

    // Compacting everything, including the trailing tombstone, keeps the revision counter.
    s.compact(8).await.unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 8);
    assert_eq!(s.list(list("/c/")).await.unwrap().items, before[4]);
    assert_eq!(
        s.create("/c/d", b"1".to_vec()).await.unwrap().mod_revision,
        9
    );
}

/// A watcher that falls so far behind that its position is compacted gets Compacted, then ends.
#[tokio::test]
async fn lagging_watcher_past_compaction_gets_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open_with(
        &dir.path().join("db"),
        SqliteConfig {
            durable: false,
            event_buffer: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let mut w = s.watch("/l/", 1).await.unwrap();
    for i in 0..100 {
        s.create(&format!("/l/{i}"), b"x".to_vec()).await.unwrap();
    }
    for i in 0..100 {
        s.delete(&format!("/l/{i}"), None).await.unwrap();
    }
    s.compact(150).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            item,
            Err(StoreError::Compacted {
                requested: 1,
                compacted: 150
            })
        ),
        "{item:?}"
    );
    assert!(w.next().await.is_none());
}

async fn compact_keep_last_helper(s: Arc<dyn Store>) {
    for i in 0..10 {
        s.create(&format!("/k/{i}"), b"x".to_vec()).await.unwrap();
    }
    assert_eq!(compact_keep_last(s.as_ref(), 4).await.unwrap(), Some(7));
    assert_eq!(s.compacted_revision().await.unwrap(), 7);
    assert_eq!(compact_keep_last(s.as_ref(), 4).await.unwrap(), None);
    assert_eq!(compact_keep_last(s.as_ref(), 100).await.unwrap(), None);
}

#[tokio::test]
async fn reopen_keeps_revisions_values_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot;
    {
        let s = file_store(&dir);
        s.create("/o/a", b"1".to_vec()).await.unwrap(); // 2
        s.create("/o/b", b"1".to_vec()).await.unwrap(); // 3
        s.update("/o/a", b"2".to_vec(), Some(2)).await.unwrap(); // 4
        s.compact(3).await.unwrap();
        s.create("/o/c", b"1".to_vec()).await.unwrap(); // 5
        s.delete("/o/c", None).await.unwrap(); // 6
        snapshot = s.list(list("")).await.unwrap();
    }
    let s = file_store(&dir);
    assert_eq!(s.current_revision().await.unwrap(), 6);
    assert_eq!(s.compacted_revision().await.unwrap(), 3);
    let now = s.list(list("")).await.unwrap();
    assert_eq!(
        (now.items, now.revision),
        (snapshot.items, snapshot.revision)
    );
    let old = s
        .list(ListOptions {
            prefix: "/o/",
            revision: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(&old.items), ["/o/a", "/o/b"]);
    assert!(matches!(
        s.list(ListOptions {
            revision: Some(2),
            ..Default::default()
        })
        .await,
        Err(StoreError::Compacted { .. })
    ));
    let mut w = s.watch("/o/", 4).await.unwrap();
    assert_eq!(next(&mut w).await.revision(), 5);
    assert_eq!(next(&mut w).await.revision(), 6);
    assert_eq!(
        s.create("/o/d", b"1".to_vec()).await.unwrap().mod_revision,
        7
    );
    assert_eq!(next(&mut w).await.revision(), 7);
}

/// Concurrent creates of the same key: exactly one wins, all others see AlreadyExists.
async fn concurrent_creates_of_one_key(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create("/race", vec![i]).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.current_revision().await.unwrap(), 2);
}

/// Compare-and-swap loops from many tasks: no lost update.
async fn optimistic_concurrency_counter(s: Arc<dyn Store>) {
    s.create("/counter", b"0".to_vec()).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let cur = s.get("/counter").await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                        match s
                            .update(
                                "/counter",
                                (n + 1).to_string().into_bytes(),
                                Some(cur.mod_revision),
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.get("/counter").await.unwrap().unwrap().value, b"200");
    assert_eq!(s.current_revision().await.unwrap(), 202);
}
