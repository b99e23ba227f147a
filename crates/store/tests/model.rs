//! Property test: the stores (SQLite; etcd with fewer cases) behave like a simple in-memory model
//! of etcd over random sequences of writes, reads at past revisions, compactions and watch
//! replays.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use dari_store::{
    Event, KeyValue, ListOptions, Revision, SqliteConfig, SqliteStore, Store, StoreError,
};
use futures::StreamExt;
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "/a",
    "/a/1",
    "/a/2",
    "/a/10",
    "/ab",
    "/b/1",
    "/b/2",
    "/é",
    "/a/\u{10348}",
];
const PREFIXES: &[&str] = &["", "/a", "/a/", "/b/", "/c", "/é"];

#[derive(Clone, Copy, Debug)]
enum Expect {
    Any,
    Right,
    Wrong,
}

#[derive(Clone, Debug)]
enum Op {
    Create(usize, u8),
    Update(usize, u8, Expect),
    Delete(usize, Expect),
    Get(usize),
    List {
        prefix: usize,
        limit: usize,
        start_after: Option<usize>,
        back: i64,
    },
    Compact {
        back: i64,
    },
    Watch {
        prefix: usize,
        back: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let expect = prop_oneof![Just(Expect::Any), Just(Expect::Right), Just(Expect::Wrong)];
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        4 => (key.clone(), any::<u8>(), expect.clone()).prop_map(|(k, v, e)| Op::Update(k, v, e)),
        2 => (key.clone(), expect).prop_map(|(k, e)| Op::Delete(k, e)),
        1 => key.clone().prop_map(Op::Get),
        3 => (0..PREFIXES.len(), 0usize..4, proptest::option::of(key), -1i64..8)
            .prop_map(|(prefix, limit, start_after, back)| Op::List { prefix, limit, start_after, back }),
        1 => (-1i64..6).prop_map(|back| Op::Compact { back }),
        2 => (0..PREFIXES.len(), -1i64..10).prop_map(|(prefix, back)| Op::Watch { prefix, back }),
    ]
}

/// etcd, as simply as possible: a full copy of the key space at every revision.
struct Model {
    compacted: Revision,
    /// `states[rev]` is the key space at `rev` (0 and 1 are empty).
    states: Vec<BTreeMap<String, KeyValue>>,
    events: Vec<Event>,
}

impl Model {
    fn new() -> Self {
        Model {
            compacted: 0,
            states: vec![BTreeMap::new(), BTreeMap::new()],
            events: Vec::new(),
        }
    }
    fn rev(&self) -> Revision {
        self.states.len() as Revision - 1
    }
    fn now(&self) -> &BTreeMap<String, KeyValue> {
        &self.states[self.states.len() - 1]
    }
    fn commit(&mut self, state: BTreeMap<String, KeyValue>, event: Event) {
        self.states.push(state);
        self.events.push(event);
    }
    fn expected(&self, key: &str, e: Expect) -> Option<Revision> {
        let actual = self.now().get(key).map_or(0, |kv| kv.mod_revision);
        match e {
            Expect::Any => None,
            Expect::Right => Some(actual),
            Expect::Wrong => Some(actual + 1),
        }
    }
    fn check(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let cur = self
            .now()
            .get(key)
            .cloned()
            .ok_or(StoreError::NotFound { key: key.into() })?;
        match expected {
            Some(e) if e != cur.mod_revision => Err(StoreError::Conflict {
                key: key.into(),
                expected: e,
                actual: cur.mod_revision,
            }),
            _ => Ok(cur),
        }
    }
    fn readable(&self, rev: Revision) -> Result<(), StoreError> {
        if rev > self.rev() {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: self.rev(),
            });
        }
        if rev < self.compacted {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted: self.compacted,
            });
        }
        Ok(())
    }
}

fn norm<T>(r: Result<T, StoreError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

async fn run(store: &dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Create(k, v) => {
                let key = KEYS[*k];
                let want = if m.now().contains_key(key) {
                    Err(StoreError::AlreadyExists { key: key.into() })
                } else {
                    let r = m.rev() + 1;
                    let kv = KeyValue {
                        key: key.into(),
                        value: vec![*v],
                        create_revision: r,
                        mod_revision: r,
                    };
                    let mut s = m.now().clone();
                    s.insert(key.into(), kv.clone());
                    m.commit(
                        s,
                        Event::Put {
                            kv: kv.clone(),
                            prev: None,
                        },
                    );
                    Ok(kv)
                };
                prop_assert_eq!(
                    norm(store.create(key, vec![*v]).await),
                    norm(want),
                    "{:?}",
                    op
                );
            }
            Op::Update(k, v, e) => {
                let key = KEYS[*k];
                let exp = m.expected(key, *e);
                let want = m.check(key, exp).map(|prev| {
                    let kv = KeyValue {
                        key: key.into(),
                        value: vec![*v],
                        create_revision: prev.create_revision,
                        mod_revision: m.rev() + 1,
                    };
                    let mut s = m.now().clone();
                    s.insert(key.into(), kv.clone());
                    m.commit(
                        s,
                        Event::Put {
                            kv: kv.clone(),
                            prev: Some(prev),
                        },
                    );
                    kv
                });
                prop_assert_eq!(
                    norm(store.update(key, vec![*v], exp).await),
                    norm(want),
                    "{:?}",
                    op
                );
            }
            Op::Delete(k, e) => {
                let key = KEYS[*k];
                let exp = m.expected(key, *e);
                let want = m.check(key, exp).map(|prev| {
                    let r = m.rev() + 1;
                    let mut s = m.now().clone();
                    s.remove(key);
                    m.commit(
                        s,
                        Event::Delete {
                            prev: prev.clone(),
                            revision: r,
                        },
                    );
                    (prev, r)
                });
                prop_assert_eq!(norm(store.delete(key, exp).await), norm(want), "{:?}", op);
            }
            Op::Get(k) => {
                let key = KEYS[*k];
                prop_assert_eq!(store.get(key).await.ok(), Some(m.now().get(key).cloned()));
            }
            Op::List {
                prefix,
                limit,
                start_after,
                back,
            } => {
                let prefix = PREFIXES[*prefix];
                let start_after = start_after.map(|k| KEYS[k]);
                let rev = m.rev() - back;
                let want = m.readable(rev).map(|()| {
                    let matching: Vec<&KeyValue> = m.states[rev as usize]
                        .values()
                        .filter(|kv| kv.key.starts_with(prefix))
                        .collect();
                    let after: Vec<KeyValue> = matching
                        .iter()
                        .filter(|kv| start_after.is_none_or(|a| kv.key.as_str() > a))
                        .map(|kv| (*kv).clone())
                        .collect();
                    let more = *limit > 0 && after.len() > *limit;
                    let items = if *limit > 0 {
                        after.into_iter().take(*limit).collect()
                    } else {
                        after
                    };
                    (items, rev, more, matching.len() as i64)
                });
                let opts = ListOptions {
                    prefix,
                    start_after,
                    limit: *limit,
                    revision: Some(rev),
                };
                let got = store
                    .list(opts)
                    .await
                    .map(|l| (l.items, l.revision, l.more, l.count));
                prop_assert_eq!(norm(got), norm(want), "{:?}", op);
                // Without a revision: the current one.
                if *back == 0 {
                    let got = store
                        .list(ListOptions {
                            revision: None,
                            ..opts
                        })
                        .await
                        .map(|l| l.revision);
                    prop_assert_eq!(got.ok(), Some(m.rev()));
                }
            }
            Op::Compact { back } => {
                let rev = m.rev() - back;
                let want = if rev <= m.compacted {
                    Err(StoreError::Compacted {
                        requested: rev,
                        compacted: m.compacted,
                    })
                } else if rev > m.rev() {
                    Err(StoreError::FutureRevision {
                        requested: rev,
                        current: m.rev(),
                    })
                } else {
                    m.compacted = rev;
                    Ok(())
                };
                prop_assert_eq!(norm(store.compact(rev).await), norm(want), "{:?}", op);
                prop_assert_eq!(store.compacted_revision().await.ok(), Some(m.compacted));
            }
            Op::Watch { prefix, back } => {
                let prefix = PREFIXES[*prefix];
                let from = m.rev() - back;
                if from < m.compacted {
                    let err = store.watch(prefix, from).await.err().map(|e| e.to_string());
                    let want = StoreError::Compacted {
                        requested: from,
                        compacted: m.compacted,
                    };
                    prop_assert_eq!(err, Some(want.to_string()));
                    continue;
                }
                let want: Vec<Event> = m
                    .events
                    .iter()
                    .filter(|e| e.revision() > from && e.key().starts_with(prefix))
                    .cloned()
                    .collect();
                let stream = store
                    .watch(prefix, from)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got: Vec<Event> = tokio::time::timeout(
                    Duration::from_secs(10),
                    stream
                        .take(want.len())
                        .map(|e| e.expect("event"))
                        .collect::<Vec<_>>(),
                )
                .await
                .map_err(|_| TestCaseError::fail("watch replay timed out"))?;
                prop_assert_eq!(got, want, "{:?}", op);
            }
        }
        prop_assert_eq!(store.current_revision().await.ok(), Some(m.rev()));
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn in_memory_store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let store = SqliteStore::open_in_memory().expect("open");
        runtime().block_on(run(&store, &ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn file_store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SqliteConfig { durable: false, ..SqliteConfig::default() };
        let store = SqliteStore::open_with(&dir.path().join("db"), config).expect("open");
        runtime().block_on(run(&store, &ops))?;
    }
}

proptest! {
    // Each case starts a fresh single-member etcd (about a second), hence few cases and shrinks.
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 64, ..ProptestConfig::default() })]
    #[test]
    fn etcd_store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        runtime().block_on(async {
            let cluster = dari_store::testing::EtcdCluster::start(1).await.expect("start etcd");
            let store = dari_store::EtcdStore::connect(cluster.config()).await.expect("connect");
            run(&store, &ops).await
        })?;
    }
}
