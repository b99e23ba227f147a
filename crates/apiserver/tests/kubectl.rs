//! Loopback integration: the real kubectl 1.32 against a real dari server on 127.0.0.1:0.

mod common;

use common::Backend;

use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

async fn health_version_and_discovery(backend: Backend) {
    let c = common::start_on(backend).await;
    assert_eq!(c.ok(&["get", "--raw", "/readyz"]).await.trim(), "ok");
    let v = c.ok(&["version", "-o", "json"]).await;
    assert_eq!(json(&v)["serverVersion"]["minor"], "32");
    let res = c.ok(&["api-resources", "--no-headers"]).await;
    for want in ["pods", "services", "deployments", "endpointslices", "ingresses", "leases", "clusterroles"] {
        assert!(res.lines().any(|l| l.starts_with(want)), "api-resources lacks {want}:\n{res}");
    }
    let ns = c.ok(&["get", "ns", "-o", "name"]).await;
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(&format!("namespace/{n}")), "{ns}");
    }
}

async fn anonymous_is_401_but_health_is_open(backend: Backend) {
    let c = common::start_on(backend).await;
    let ca = c.dir.path().join("pki/ca.crt");
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg(format!("{}{}", c.url(), path))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("/api/v1/pods"), "401");
    assert_eq!(curl("/readyz"), "200");
    assert_eq!(curl("/version"), "200");
}

async fn kubernetes_service_and_clusterip_scenario(backend: Backend) {
    let c = common::start_on(backend).await;
    let k = c.ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP} {.spec.ports[0].port}"]).await;
    assert_eq!(k, "10.96.0.1 443");
    let ep = c.ok(&["get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[0].addresses[0].ip}"]).await;
    assert_eq!(ep, "127.0.0.1");

    let dir = common::scenarios().join("seed-003-clusterip");
    let out = c.ok(&["apply", "-f", dir.to_str().expect("utf8")]).await;
    assert!(out.contains("service/svc-clusterip created") && out.contains("pod/webpod1 created") && out.contains("pod/net-pod created"), "{out}");
    // applying again changes nothing
    let again = c.ok(&["apply", "-f", dir.to_str().expect("utf8")]).await;
    assert!(again.contains("service/svc-clusterip unchanged") && again.contains("pod/webpod1 unchanged"), "{again}");

    let pods = c.ok(&["get", "pod", "-o", "wide"]).await;
    let header: Vec<&str> = pods.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]);
    assert!(pods.lines().any(|l| l.starts_with("webpod1") && l.contains("0/1") && l.contains("Pending") && l.contains("myk8s-worker")), "{pods}");

    let svc = c.ok(&["get", "svc", "svc-clusterip"]).await;
    let mut lines = svc.lines();
    assert_eq!(lines.next().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]));
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(&row[..2], ["svc-clusterip", "ClusterIP"]);
    assert!(row[2].starts_with("10.") && row[2] != "10.96.0.1", "{svc}");
    assert_eq!(&row[3..5], ["<none>", "9000/TCP"]);

    // defaulting as upstream
    let s = json(&c.ok(&["get", "svc", "svc-clusterip", "-o", "json"]).await);
    assert_eq!(s["spec"]["sessionAffinity"], "None");
    assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
    let p = json(&c.ok(&["get", "pod", "webpod1", "-o", "json"]).await);
    assert_eq!(p["spec"]["restartPolicy"], "Always");
    assert_eq!(p["spec"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(p["spec"]["schedulerName"], "default-scheduler");
    assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 0);
    assert_eq!(p["spec"]["containers"][0]["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(p["status"]["phase"], "Pending");

    // session affinity patch, with the timeout defaulted
    c.ok(&["patch", "svc", "svc-clusterip", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#]).await;
    let s = json(&c.ok(&["get", "svc", "svc-clusterip", "-o", "json"]).await);
    assert_eq!(s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10800);

    let d = c.ok(&["describe", "svc", "svc-clusterip"]).await;
    assert!(d.contains("svc-clusterip") && d.lines().any(|l| l.starts_with("Session Affinity:") && l.ends_with("ClientIP")), "{d}");
    let d = c.ok(&["describe", "pod", "webpod1"]).await;
    assert!(d.contains("Node:") && d.contains("myk8s-worker"), "{d}");

    // delete: a pod on a node is deleted at once when its grace period is 0
    let out = c.ok(&["delete", "-f", dir.to_str().expect("utf8")]).await;
    assert!(out.contains("service \"svc-clusterip\" deleted"), "{out}");
    assert!(c.ok(&["get", "pods", "-o", "name"]).await.trim().is_empty());
}

async fn explain_uses_openapi(backend: Backend) {
    let c = common::start_on(backend).await;
    let out = c.ok(&["explain", "pod.spec.containers"]).await;
    assert!(out.contains("KIND:") && out.contains("Pod") && out.contains("FIELD: containers"), "{out}");
    assert!(out.contains("image"), "{out}");
    let out = c.ok(&["explain", "deployments.spec.strategy"]).await;
    assert!(out.contains("rollingUpdate"), "{out}");
}

async fn all_seed_scenarios_apply_unchanged(backend: Backend) {
    let c = common::start_on(backend).await;
    for s in ["seed-000-ingress", "seed-000-multicontainer", "seed-001-hardway", "seed-003-clusterip"] {
        let dir = common::scenarios().join(s);
        let out = c.ok(&["apply", "-f", dir.to_str().expect("utf8")]).await;
        assert!(out.contains("created"), "{s}: {out}");
    }
    let all = c.ok(&["get", "svc,endpoints,endpointslices,deploy,rs,ingress,nodes", "-A"]).await;
    assert!(all.contains("nginxnginx1-service-clusterip") && all.contains("ingress.networking.k8s.io/ingress"), "{all}");
    let ing = c.ok(&["get", "ingress"]).await;
    assert_eq!(ing.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]));
    assert!(ing.contains("nginx") && ing.contains("a.com,b.com"), "{ing}");
    let d = c.ok(&["describe", "ingress", "ingress"]).await;
    assert!(d.contains("a.com") && d.contains("nginxnginx1-service-clusterip:80"), "{d}");
    let d = c.ok(&["describe", "deploy", "nginx"]).await;
    assert!(d.contains("Replicas:") && d.contains("RollingUpdate"), "{d}");
    let deploy = json(&c.ok(&["get", "deploy", "nginx", "-o", "json"]).await);
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert_eq!(deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    // scale goes through the scale subresource and bumps generation
    c.ok(&["scale", "deploy", "nginx", "--replicas=3"]).await;
    let deploy = json(&c.ok(&["get", "deploy", "nginx", "-o", "json"]).await);
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["metadata"]["generation"], 2);
}

async fn bad_input_gets_status_errors(backend: Backend) {
    let c = common::start_on(backend).await;
    let err = String::from_utf8_lossy(
        &c.kubectl_stdin(&["create", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_Valid\n".into())).await.stderr,
    )
    .into_owned();
    assert!(err.contains("is invalid") && err.contains("RFC 1123"), "{err}");
    let err = String::from_utf8_lossy(
        &c.kubectl_stdin(&["create", "-f", "-", "--validate=strict"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\ndata:\n  a: b\nbogus: 1\n".into())).await.stderr,
    )
    .into_owned();
    assert!(err.contains("unknown field") && err.contains("bogus"), "{err}");
    let err = c.fails(&["get", "pod", "nope"]).await;
    assert!(err.contains("pods \"nope\" not found"), "{err}");
    let err = c.fails(&["get", "pods", "--field-selector", "spec.bogus=1"]).await;
    assert!(err.contains("field label not supported"), "{err}");
    // a clusterIP already taken is refused
    c.ok(&["create", "service", "clusterip", "a", "--tcp=80:80", "--clusterip=10.96.0.50"]).await;
    let err = c.fails(&["create", "service", "clusterip", "b", "--tcp=80:80", "--clusterip=10.96.0.50"]).await;
    assert!(err.contains("already allocated"), "{err}");
    // duplicate NodePort is refused
    c.ok(&["create", "service", "nodeport", "np1", "--tcp=80:80", "--node-port=30080"]).await;
    let err = c.fails(&["create", "service", "nodeport", "np2", "--tcp=80:80", "--node-port=30080"]).await;
    assert!(err.contains("already allocated"), "{err}");
    // a 3 MiB+ body is 413
    let big = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  a: \"{}\"\n", "x".repeat(3 * 1024 * 1024 + 10));
    let err = String::from_utf8_lossy(&c.kubectl_stdin(&["create", "-f", "-"], Some(big)).await.stderr).into_owned();
    assert!(err.to_lowercase().contains("too large"), "{err}");
    // optimistic concurrency
    c.ok(&["create", "configmap", "cc", "--from-literal=a=1"]).await;
    let stale = json(&c.ok(&["get", "cm", "cc", "-o", "json"]).await);
    c.ok(&["patch", "cm", "cc", "-p", r#"{"data":{"a":"2"}}"#]).await;
    let err = String::from_utf8_lossy(&c.kubectl_stdin(&["replace", "-f", "-"], Some(stale.to_string())).await.stderr).into_owned();
    assert!(err.contains("the object has been modified"), "{err}");
}

async fn patches_edit_dry_run_and_server_side_apply(backend: Backend) {
    let c = common::start_on(backend).await;
    c.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=2"]).await;
    // strategic merge keeps the other containers (merge key: name)
    c.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}"#]).await;
    let names = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].name}"]).await;
    // as upstream (and the kubectl patch docs): without $setElementOrder new elements come first
    assert_eq!(names, "sidecar nginx");
    // JSON patch and merge patch
    c.ok(&["patch", "deploy", "web", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#]).await;
    c.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"metadata":{"labels":{"tier":"front"}}}"#]).await;
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.labels.tier}"]).await, "4 front");
    // a JSON patch that does not apply is 422, and nothing is written
    let rv = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.resourceVersion}"]).await;
    let err = c.fails(&["patch", "deploy", "web", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/nope"}]"#]).await;
    assert!(err.contains("patch"), "{err}");
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.resourceVersion}"]).await, rv);
    // kubectl edit with a scripted editor
    let out = std::process::Command::new("kubectl")
        .args(["edit", "deploy", "web"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KUBE_EDITOR", "sed -i s/replicas:\\ 4/replicas:\\ 5/")
        .output()
        .expect("kubectl edit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]).await, "5");
    // dry run writes nothing
    c.ok(&["create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server"]).await;
    assert!(c.fails(&["get", "cm", "dry"]).await.contains("not found"));
    // server-side apply: create, then a conflicting manager gets 409, force takes over
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: one\n";
    let out = c.kubectl_stdin(&["apply", "--server-side", "--field-manager=alice", "-f", "-"], Some(cm.into())).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bob = cm.replace("one", "two");
    let out = c.kubectl_stdin(&["apply", "--server-side", "--field-manager=bob", "-f", "-"], Some(bob.clone())).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("conflict"), "{err}");
    let out = c.kubectl_stdin(&["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-"], Some(bob)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mf = json(&c.ok(&["get", "cm", "ssa", "-o", "json", "--show-managed-fields"]).await);
    assert_eq!(mf["data"]["a"], "two");
    assert!(mf["metadata"]["managedFields"].as_array().expect("managedFields").iter().any(|m| m["manager"] == "bob"));
}

async fn watch_streams_changes(backend: Backend) {
    let c = common::start_on(backend).await;
    let kc = c.kubeconfig.clone();
    let mut child = tokio::process::Command::new("kubectl")
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .env("KUBECONFIG", &kc)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl -w");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // wait until the watch is established: the first line is the header or the initial list
    c.ok(&["create", "configmap", "w1", "--from-literal=a=b"]).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen.contains("w1") {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            other => panic!("watch ended before showing w1: {other:?}\n{seen}"),
        }
    }
    c.ok(&["delete", "configmap", "w1"]).await;
    while !seen.contains("DELETED") {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            other => panic!("watch ended before DELETED: {other:?}\n{seen}"),
        }
    }
    assert!(seen.contains("ADDED") && seen.contains("w1"), "{seen}");
}

async fn namespace_deletion_empties_and_refuses_new_content(backend: Backend) {
    let c = common::start_on(backend).await;
    c.ok(&["create", "ns", "gone"]).await;
    c.ok(&["-n", "gone", "create", "configmap", "x", "--from-literal=a=b"]).await;
    let out = c.ok(&["delete", "ns", "gone", "--wait=true", "--timeout=20s"]).await;
    assert!(out.contains("namespace \"gone\" deleted"), "{out}");
    assert!(c.fails(&["get", "ns", "gone"]).await.contains("not found"));
    let err = c.fails(&["-n", "nope", "create", "configmap", "x", "--from-literal=a=b"]).await;
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
}

async fn list_paging_and_selectors(backend: Backend) {
    let c = common::start_on(backend).await;
    for i in 0..7 {
        c.ok(&["create", "configmap", &format!("p{i}"), &format!("--from-literal=i={i}")]).await;
        c.ok(&["label", "configmap", &format!("p{i}"), &format!("parity={}", if i % 2 == 0 { "even" } else { "odd" })]).await;
    }
    // kubectl pages with --chunk-size; the result is the same as one big list
    let paged = c.ok(&["get", "cm", "-l", "parity", "--chunk-size=2", "-o", "name"]).await;
    assert_eq!(paged.lines().count(), 7, "{paged}");
    let even = c.ok(&["get", "cm", "-l", "parity=even", "-o", "name"]).await;
    assert_eq!(even.lines().count(), 4, "{even}");
    let notin = c.ok(&["get", "cm", "-l", "parity notin (even)", "-o", "name"]).await;
    assert_eq!(notin.lines().count(), 3, "{notin}");
    let by_name = c.ok(&["get", "cm", "--field-selector", "metadata.name=p3", "-o", "name"]).await;
    assert_eq!(by_name.trim(), "configmap/p3");
    let out = c.ok(&["delete", "cm", "-l", "parity=odd"]).await;
    assert_eq!(out.lines().count(), 3, "{out}");
}

async fn nodes_wide_and_describe(backend: Backend) {
    let c = common::start_on(backend).await;
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"myk8s-worker","labels":{"kubernetes.io/hostname":"myk8s-worker"}},
      "spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"]},
      "status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"},{"type":"Hostname","address":"myk8s-worker"}],
        "capacity":{"cpu":"2","memory":"2Gi","pods":"110"},"allocatable":{"cpu":"2","memory":"2Gi","pods":"110"},
        "conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready","lastHeartbeatTime":"2026-12-06T16:00:00Z","lastTransitionTime":"2026-12-06T16:00:00Z"}],
        "nodeInfo":{"kubeletVersion":"v1.32.0+dari","osImage":"Debian GNU/Linux 12 (bookworm)","kernelVersion":"6.18.0","containerRuntimeVersion":"containerd://1.6.20","architecture":"amd64","operatingSystem":"linux","machineID":"","systemUUID":"","bootID":"","kubeProxyVersion":""}}}"#;
    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(node.into())).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wide = c.ok(&["get", "nodes", "-o", "wide"]).await;
    let header: Vec<&str> = wide.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(&header[..7], ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP"]);
    let row = wide.lines().nth(1).expect("row");
    assert!(row.starts_with("myk8s-worker") && row.contains(" Ready ") && row.contains("127.0.0.1") && row.contains("containerd://1.6.20"), "{wide}");
    let d = c.ok(&["describe", "node", "myk8s-worker"]).await;
    assert!(d.contains("PodCIDR:") && d.contains("10.244.1.0/24") && d.contains("InternalIP:  127.0.0.1"), "{d}");
    // the scheduler's write: binding a pod sets spec.nodeName once
    c.ok(&["run", "p", "--image=nginx"]).await;
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"apiVersion":"v1","kind":"Node","name":"myk8s-worker"}}"#;
    let (code, _) = curl_admin(&c, "POST", "/api/v1/namespaces/default/pods/p/binding", binding);
    assert_eq!(code, 201);
    assert_eq!(c.ok(&["get", "pod", "p", "-o", "jsonpath={.spec.nodeName}"]).await, "myk8s-worker");
    let (code, body) = curl_admin(&c, "POST", "/api/v1/namespaces/default/pods/p/binding", binding);
    assert_eq!(code, 409, "{body}");
    // nothing listens on the node's kubelet port yet: a clear error, not a hang
    let err = c.fails(&["logs", "p"]).await;
    assert!(err.contains("node agent"), "{err}");
    // a stand-in node agent on 127.0.0.1 (HTTPS with a CA-signed serving certificate for the node
    // IP, client certificates required, as dari agent's stream endpoint): logs are proxied to it
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = {
        use rustls::pki_types::pem::PemObject as _;
        let (cert, key) = c.server.pki.issue_serving_cert("myk8s-worker", &["myk8s-worker", "127.0.0.1"]).expect("serving cert");
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.server.pki.ca_der().clone()).expect("ca");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider.clone()).build().expect("verifier");
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")], rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"))
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg))
    };
    let kubelet = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("TLS handshake with the API server");
        let user = dari_pki::peer_identity(tls.get_ref().1).expect("identity").expect("the API server presents a client certificate");
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await.expect("read");
        let req = String::from_utf8_lossy(&buf[..n]).into_owned();
        let body = "hello from the container\n";
        let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        tokio::io::AsyncWriteExt::write_all(&mut tls, resp.as_bytes()).await.expect("write");
        tokio::io::AsyncWriteExt::shutdown(&mut tls).await.ok();
        (user, req)
    });
    let patch = format!(r#"{{"status":{{"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{port}}}}}}}}}"#);
    c.ok(&["patch", "node", "myk8s-worker", "--subresource=status", "--type=merge", "-p", &patch]).await;
    let logs = c.ok(&["logs", "p", "--tail=5"]).await;
    assert_eq!(logs, "hello from the container\n");
    let (user, req) = kubelet.await.expect("kubelet");
    assert_eq!(user.name, dari_apiserver::nodeproxy::KUBELET_CLIENT_USER);
    assert!(user.groups.iter().any(|g| g == "system:masters"), "{user:?}");
    assert!(req.starts_with("GET /containerLogs/default/p/p?tailLines=5 "), "{req}");
}

/// curl authenticated as admin (the server's CA, the admin client certificate).
fn curl_as_admin(c: &common::Cluster) -> std::process::Command {
    let pki = c.dir.path().join("pki");
    let mut cmd = std::process::Command::new("curl");
    cmd.arg("-s").arg("--cacert").arg(pki.join("ca.crt")).arg("--cert").arg(pki.join("admin.crt")).arg("--key").arg(pki.join("admin.key"));
    cmd
}

fn curl_admin(c: &common::Cluster, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = curl_as_admin(c)
        .args(["-w", "\n%{http_code}", "-X", method, "-H", "Content-Type: application/json", "--data", body])
        .arg(format!("{}{}", c.url(), path))
        .output()
        .expect("curl runs");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (b, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

fn curl_get(c: &common::Cluster, path: &str, max_time: &str) -> String {
    let out = curl_as_admin(c).args(["-N", "--max-time", max_time]).arg(format!("{}{}", c.url(), path)).output().expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn watch_bookmarks_initial_events_and_410(backend: Backend) {
    let c = common::start_on(backend).await;
    c.ok(&["create", "configmap", "a", "--from-literal=x=1"]).await;
    // sendInitialEvents: the state, then a bookmark marking its end; periodic bookmarks follow (1 s here)
    let path = "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3";
    let out = tokio::task::block_in_place(|| curl_get(&c, path, "6"));
    let events: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "a");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert!(events.iter().skip(2).any(|e| e["type"] == "BOOKMARK"), "{out}");
    // a compacted resourceVersion: 410 Expired as an ERROR event (as kube-apiserver's watch does)
    let store = c.server.api.store().clone();
    let rev = store.current_revision().await.expect("rev");
    c.ok(&["create", "configmap", "b", "--from-literal=x=1"]).await;
    store.compact(rev + 1).await.expect("compact");
    let out = tokio::task::block_in_place(|| curl_get(&c, "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2", "5"));
    let ev = json(out.lines().next().expect("one event"));
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    // a list continue token from before the compaction is 410 too
    let out = tokio::task::block_in_place(|| curl_get(&c, "/api/v1/namespaces/default/configmaps?limit=1&resourceVersion=2&resourceVersionMatch=Exact", "5"));
    assert_eq!(json(&out)["code"], 410, "{out}");
}

// Every test above runs against both datastores: the embedded SQLite and a real etcd (Debian's
// etcd-server, started on loopback by the test).
macro_rules! on_both_datastores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod etcd {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Etcd).await })*
        }
    };
}

on_both_datastores!(
    health_version_and_discovery,
    anonymous_is_401_but_health_is_open,
    kubernetes_service_and_clusterip_scenario,
    explain_uses_openapi,
    all_seed_scenarios_apply_unchanged,
    bad_input_gets_status_errors,
    patches_edit_dry_run_and_server_side_apply,
    watch_streams_changes,
    namespace_deletion_empties_and_refuses_new_content,
    list_paging_and_selectors,
    nodes_wide_and_describe,
    watch_bookmarks_initial_events_and_410,
);
