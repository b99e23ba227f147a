//! The python kubernetes client (Debian's python3-kubernetes) lists, pages and watches.

mod common;

async fn python_client_lists_and_watches(backend: common::Backend) {
    assert!(std::path::Path::new("/usr/bin/python3").exists(), "/usr/bin/python3 missing");
    let c = common::start_on(backend).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_client.py");
    let kc = c.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("/usr/bin/python3").arg(script).arg(kc).output().expect("python runs"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for check in ["list namespaces ok", "paged list ok", "watch ok", "404 ok"] {
        assert!(stdout.contains(check), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_on_sqlite() {
    python_client_lists_and_watches(common::Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_on_etcd() {
    python_client_lists_and_watches(common::Backend::Etcd).await
}
