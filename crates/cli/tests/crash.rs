//! kill -9 of `dari server` during a stream of writes loses no acknowledged write, and a restart
//! serves everything again at the same resourceVersions.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = support::Server::start(dir.path()).await;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = server.client().await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let (code, body) = match tokio::time::timeout(std::time::Duration::from_secs(5), c.request("POST", "/api/v1/namespaces/default/configmaps", Some(&support::configmap(&name, i)))).await {
                    Ok(r) => r,
                    Err(_) => return,
                };
                if code != 201 {
                    return; // the server died mid-request: not acknowledged
                }
                let rv = body["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
                acked.lock().expect("lock").insert(name, rv);
            }
        }));
    }
    // let a few hundred writes through, then kill -9 in the middle of the stream
    loop {
        if acked.lock().expect("lock").len() >= 300 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300);
    let server = support::Server::start(dir.path()).await;
    let mut c = server.client().await;
    for (name, rv) in &acked {
        let (code, body) = c.request("GET", &format!("/api/v1/namespaces/default/configmaps/{name}"), None).await;
        assert_eq!(code, 200, "acknowledged write {name} lost after kill -9");
        assert_eq!(body["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()), "{name} changed resourceVersion");
    }
}
