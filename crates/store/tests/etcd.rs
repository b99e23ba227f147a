//! etcd-only behaviour, on real etcd processes on loopback: a 3-member cluster losing its leader
//! during concurrent writes, a cluster without quorum, and TLS with client-certificate auth.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dari_store::testing::{ClusterOptions, EtcdCluster, ServerTls};
use dari_store::{EtcdConfig, EtcdStore, Event, KeyValue, Store, StoreError};
use futures::StreamExt;

/// Polls `cond` (every 10 ms) until it holds, failing after `within`.
async fn wait_for(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 3 members; 4 tasks create keys as fast as they can; the leader is SIGKILLed mid-stream. Every
/// acknowledged create is afterwards readable with the revision it was acknowledged at, the watch
/// (opened before the kill) delivers every acknowledged write exactly once and in order, and writes
/// resume on the two survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let store = Arc::new(EtcdStore::connect(cluster.config()).await.unwrap());
    let watch = store.watch("/kill/", 1).await.unwrap();

    let acked: Arc<Mutex<Vec<KeyValue>>> = Arc::default();
    let unavailable = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, acked, unavailable, stop) = (
                store.clone(),
                acked.clone(),
                unavailable.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("/kill/{w}/{i:06}");
                    match store.create(&key, format!("v{i}").into_bytes()).await {
                        Ok(kv) => acked.lock().unwrap().push(kv),
                        // Outcome unknown (or surely not applied): the test does not count it.
                        Err(StoreError::Unavailable { .. }) => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("create {key}: {e:?}"),
                    }
                    i += 1;
                }
            })
        })
        .collect();

    let count = || acked.lock().unwrap().len();
    wait_for(
        "200 writes before the kill",
        Duration::from_secs(30),
        || count() >= 200,
    )
    .await;
    let killed = cluster.kill_leader().await.unwrap();
    let at_kill = count();
    let t = Instant::now();
    wait_for("200 writes after the kill", Duration::from_secs(60), || {
        count() >= at_kill + 200
    })
    .await;
    let recovered = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let new_leader = cluster.leader().await.unwrap();
    assert_ne!(new_leader, killed);

    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "killed member {killed}; {} writes acknowledged ({at_kill} before the kill), {} unavailable; \
         200 more writes {recovered:?} after the kill; new leader {new_leader}",
        acked.len(),
        unavailable.load(Ordering::SeqCst)
    );
    for kv in &acked {
        assert_eq!(
            store.get(&kv.key).await.unwrap().as_ref(),
            Some(kv),
            "{}",
            kv.key
        );
    }
    // No revision was acknowledged twice.
    let by_rev: BTreeMap<_, _> = acked.iter().map(|kv| (kv.mod_revision, kv)).collect();
    assert_eq!(by_rev.len(), acked.len());

    // The watch survived the kill (re-opened if its member died): in order, no duplicates, and
    // every acknowledged write is there with its revision.
    let last = *by_rev.keys().next_back().unwrap();
    let mut watch = watch;
    let mut seen: BTreeMap<i64, Event> = BTreeMap::new();
    let mut prev_rev = 1;
    while prev_rev < last {
        let ev = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("watch event within 20s")
            .expect("watch open")
            .expect("watch event");
        assert!(
            ev.revision() > prev_rev,
            "{} after {prev_rev}",
            ev.revision()
        );
        prev_rev = ev.revision();
        seen.insert(ev.revision(), ev);
    }
    for (rev, kv) in by_rev {
        match seen.get(&rev) {
            Some(Event::Put {
                kv: got,
                prev: None,
            }) => assert_eq!(got, kv),
            other => panic!("revision {rev}: watch has {other:?}, acknowledged {kv:?}"),
        }
    }
}

/// With 2 of 3 members dead there is no quorum: operations fail with `Unavailable` (the API
/// server's 503) in bounded time instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_operations_are_unavailable() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let store = EtcdStore::connect(cluster.config()).await.unwrap();
    store.create("/q/a", b"1".to_vec()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    cluster.kill(leader);
    cluster.kill((leader + 1) % 3);

    let t = Instant::now();
    let err = store.create("/q/b", b"1".to_vec()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { op: "create", .. }),
        "{err:?}"
    );
    let err = store.get("/q/a").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { op: "get", .. }),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    eprintln!("unavailable after {:?}: {}", t.elapsed(), error_chain(&err));
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
    fn generate() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, SanType,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();

        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "dari test etcd CA");
        let ca_key = KeyPair::generate().unwrap();
        write("ca.crt", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server.distinguished_name.push(DnType::CommonName, "etcd");
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_key = KeyPair::generate().unwrap();
        write(
            "server.crt",
            server.signed_by(&server_key, &issuer).unwrap().pem(),
        );
        write("server.key", server_key.serialize_pem());

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "dari-apiserver");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        write(
            "client.crt",
            client.signed_by(&client_key, &issuer).unwrap().pem(),
        );
        write("client.key", client_key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// etcd with `--client-cert-auth`: a client with a certificate from the trusted CA works; without
/// one, `connect` fails with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate_auth() {
    let pki = Pki::generate();
    let cluster = EtcdCluster::start_with(ClusterOptions {
        members: 1,
        tls: Some(ServerTls {
            cert_file: pki.path("server.crt"),
            key_file: pki.path("server.key"),
            ca_file: pki.path("ca.crt"),
            client_cert_auth: true,
        }),
    })
    .await
    .unwrap();
    let endpoints = cluster.endpoints();
    assert!(
        endpoints[0].starts_with("https://127.0.0.1:"),
        "{endpoints:?}"
    );

    let store = EtcdStore::connect(EtcdConfig {
        endpoints: endpoints.clone(),
        ca_file: Some(pki.path("ca.crt")),
        cert_file: Some(pki.path("client.crt")),
        key_file: Some(pki.path("client.key")),
    })
    .await
    .unwrap();
    let kv = store
        .create("/registry/pods/default/web-0", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(kv.mod_revision, 2);
    let mut w = store.watch("/registry/", 1).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.revision(), 2);

    // The CA but no client certificate: the server refuses the handshake.
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: endpoints.clone(),
        ca_file: Some(pki.path("ca.crt")),
        ..Default::default()
    })
    .await
    .unwrap_err();
    let msg = error_chain(&err);
    eprintln!("without a client certificate: {msg}");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(msg.contains(&endpoints[0]), "{msg}");
    assert!(msg.contains("requires a client certificate"), "{msg}");

    // A certificate but the wrong CA for the server: our side refuses.
    let other = Pki::generate();
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: endpoints.clone(),
        ca_file: Some(other.path("ca.crt")),
        cert_file: Some(other.path("client.crt")),
        key_file: Some(other.path("client.key")),
    })
    .await
    .unwrap_err();
    eprintln!("with an untrusted server: {}", error_chain(&err));
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");

    // A missing key file is a configuration error naming the file.
    let err = EtcdStore::connect(EtcdConfig {
        endpoints,
        ca_file: Some(pki.path("ca.crt")),
        cert_file: Some(pki.path("client.crt")),
        key_file: Some(pki.path("nope.key")),
    })
    .await
    .unwrap_err();
    assert!(
        error_chain(&err).contains("nope.key"),
        "{}",
        error_chain(&err)
    );
}

/// `watch_with_progress` on etcd: progress marks come while idle, never claim a revision whose
/// event has not been delivered yet, and never go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_progress_marks_follow_delivered_events() {
    use dari_store::WatchItem;
    let cluster = EtcdCluster::start(1).await.unwrap();
    let store = EtcdStore::connect(cluster.config()).await.unwrap();
    store.create("/p/a", b"1".to_vec()).await.unwrap(); // 2
    store.create("/other", b"1".to_vec()).await.unwrap(); // 3
    let mut w = store
        .watch_with_progress("/p/", 1, Duration::from_millis(100))
        .await
        .unwrap();
    async fn next(w: &mut dari_store::ProgressWatchStream) -> dari_store::WatchItem {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("item within 10s")
            .expect("open")
            .expect("item")
    }
    let mut delivered = 1;
    let mut marks = Vec::new();
    // The replayed event first, then progress marks at or above it.
    for round in 0..3 {
        loop {
            match next(&mut w).await {
                WatchItem::Event(ev) => {
                    assert!(ev.revision() > delivered);
                    assert!(
                        marks.last().is_none_or(|m| ev.revision() > *m),
                        "{ev:?} after {marks:?}"
                    );
                    delivered = ev.revision();
                }
                WatchItem::Progress(rev) => {
                    assert!(
                        rev >= delivered,
                        "progress {rev} before delivered event {delivered}"
                    );
                    assert!(
                        marks.last().is_none_or(|m| rev >= *m),
                        "{rev} after {marks:?}"
                    );
                    marks.push(rev);
                    break;
                }
            }
        }
        let current = store.current_revision().await.unwrap();
        eprintln!(
            "round {round}: delivered {delivered}, mark {:?}, current {current}",
            marks.last()
        );
        store
            .create(&format!("/p/{round}"), b"1".to_vec())
            .await
            .unwrap();
        store
            .create(&format!("/x/{round}"), b"1".to_vec())
            .await
            .unwrap();
    }
    assert_eq!(delivered, 6, "events at 2, 4 and 6 (the /p/ ones)");
    assert!(*marks.last().unwrap() >= 5, "{marks:?}");
}
