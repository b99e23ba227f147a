//! `dari image import` through containerd's gRPC API, against a real containerd (in a node netns,
//! as the agent runs it): a docker-archive and the builtin OCI images are imported, CRI lists
//! them, a container from the imported image runs, a garbage collection keeps every blob, and a
//! second import changes nothing.
//! Needs root and apt packages containerd, runc, busybox-static, containernetworking-plugins.
//!
//! `import_speed_vs_ctr` (ignored: a benchmark) times the import against
//! `ctr -n k8s.io images import` on the same archives, same containerd:
//! `cargo test -p dari-agent --test image_import -- --ignored --nocapture import_speed_vs_ctr`
//! (`DARI_IMPORT_BENCH_MB`, default 64, sets the big layer's size).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{self as ctd};
use dari_agent::cni::{render_conflist, Flavor, CONFLIST_FILE};
use dari_agent::cri::v1;
use dari_agent::cri::v1::image_service_client::ImageServiceClient;
use dari_agent::cri::{Cri, RemoteCri};
use dari_agent::image::{self, Entry};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

fn ns<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static("k8s.io"));
    r
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A docker-archive (`docker save` layout) of a busybox root file system plus `extra` (a file
/// at /payload) tagged `tag`.
fn docker_archive(tag: &str, extra: &[u8]) -> anyhow::Result<Vec<u8>> {
    let bin = std::fs::read(image::BUSYBOX_BIN)?;
    let applets: Vec<String> = String::from_utf8(std::process::Command::new(image::BUSYBOX_BIN).arg("--list").output()?.stdout)?.lines().map(str::to_string).collect();
    let mut entries = image::busybox_layer(&bin, &applets);
    entries.push(Entry::File { path: "payload".into(), mode: 0o644, data: extra.to_vec() });
    let layer = image::tar(&entries);
    let layer_digest = sha(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": { "Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    }))?;
    let config_name = format!("{}.json", sha(&config));
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": [format!("{layer_digest}/layer.tar")] }]);
    Ok(image::tar(&[
        Entry::Dir { path: layer_digest.clone(), mode: 0o755 },
        Entry::File { path: format!("{layer_digest}/layer.tar"), mode: 0o644, data: layer },
        Entry::File { path: config_name, mode: 0o644, data: config },
        Entry::File { path: "manifest.json".into(), mode: 0o644, data: serde_json::to_vec(&manifest)? },
    ]))
}

async fn content_digests(ch: &Channel) -> anyhow::Result<BTreeSet<String>> {
    let r = ContentClient::new(ch.clone()).list(ns(ctd::ListContentRequest { filters: vec![] })).await?;
    let mut out = BTreeSet::new();
    let mut s = r.into_inner();
    while let Some(m) = s.message().await? {
        out.extend(m.info.into_iter().map(|i| i.digest));
    }
    Ok(out)
}

async fn image_targets(ch: &Channel) -> anyhow::Result<HashMap<String, String>> {
    let r = ImagesClient::new(ch.clone()).list(ns(ctd::ListImagesRequest { filters: vec![] })).await?;
    Ok(r.into_inner().images.into_iter().map(|i| (i.name, i.target.map(|t| t.digest).unwrap_or_default())).collect())
}

/// Runs containerd's garbage collector now (deleting a lease with sync=true collects).
async fn collect_garbage(ch: &Channel) -> anyhow::Result<()> {
    let mut l = LeasesClient::new(ch.clone());
    let id = format!("gc-trigger-{}", std::process::id());
    l.create(ns(ctd::CreateRequest { id: id.clone(), labels: HashMap::new() })).await?;
    l.delete(ns(ctd::DeleteRequest { id, sync: true })).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_docker_archive_then_run_it_and_reimport_idempotently() -> anyhow::Result<()> {
    // Node::start already imported the builtin OCI images (pause, busybox) through image::import
    let node = common::Node::start("imp").await;
    let _cg = common::CgroupGuard(format!("/dari/test-imp-{}", std::process::id()));
    let sock = node.socket();
    let ch = image::containerd_channel(&sock).await?;
    let mut cri_img = ImageServiceClient::new(ch.clone());

    let archive = node.dir.path().join("bb-docker.tar");
    std::fs::write(&archive, docker_archive("dari-import-test/bb:v1", b"hello from the payload\n")?)?;
    let want = "docker.io/dari-import-test/bb:v1";
    let names = dari_agent::import_image(&sock, &archive).await?;
    assert_eq!(names, [want]);

    // containerd: the image points at the generated schema 2 manifest, no import lease is left
    let plan = image::plan_file(&archive)?;
    let manifest = plan.blobs.last().expect("blobs");
    assert_eq!(manifest.desc.media_type, "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(image_targets(&ch).await?.get(want), Some(&manifest.desc.digest));
    let leases = LeasesClient::new(ch.clone()).list(ns(ctd::ListRequest { filters: vec![] })).await?.into_inner().leases;
    assert!(leases.iter().all(|l| !l.id.starts_with("dari-import")), "import lease left behind: {leases:?}");

    // CRI: ListImages and ImageStatus see the imported image and the builtin ones
    let listed = cri_img.list_images(v1::ListImagesRequest { filter: None }).await?.into_inner().images;
    let tags: BTreeSet<&str> = listed.iter().flat_map(|i| i.repo_tags.iter().map(String::as_str)).collect();
    for n in [want, image::BUSYBOX_IMAGE, image::PAUSE_IMAGE] {
        assert!(tags.contains(n), "CRI ListImages lacks {n}: {tags:?}");
    }
    let cri = RemoteCri::connect(&sock).await?;
    let st = cri.image_status(want).await?.expect("CRI ImageStatus knows the image");
    let config = &plan.blobs[0];
    assert_eq!(st.id, config.desc.digest, "CRI image id is the config digest");
    assert!(st.size > 1_000_000, "size {} (busybox is > 1 MB)", st.size);
    // CRI normalises a short reference the same way
    assert!(cri.image_status("dari-import-test/bb:v1").await?.is_some());

    // a forced garbage collection keeps config and layer: the manifest's gc.ref labels hold them
    collect_garbage(&ch).await?;
    let have = content_digests(&ch).await?;
    for b in &plan.blobs {
        assert!(have.contains(&b.desc.digest), "{} ({}) collected", b.desc.digest, b.desc.media_type);
    }

    // a container from it runs (CRI unpacks the layers into overlayfs on create)
    let cidr: ipnet::IpNet = "10.250.9.0/24".parse()?;
    std::fs::write(node.cni_conf_dir.join(CONFLIST_FILE), render_conflist(Flavor::Reference, cidr, 1450, &node.ipam_dir()))?;
    let sandbox = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata { name: "imp".into(), uid: "uid-imp-1".into(), namespace: "default".into(), attempt: 0 }),
        hostname: "imp".into(),
        log_directory: node.dir.path().join("logs/imp").to_string_lossy().into_owned(),
        linux: Some(v1::LinuxPodSandboxConfig { cgroup_parent: format!("/dari/test-imp-{}/poduid-imp-1", std::process::id()), ..Default::default() }),
        ..Default::default()
    };
    let sid = cri.run_pod_sandbox(sandbox.clone()).await?;
    let cfg = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: "cat".into(), attempt: 0 }),
        image: Some(v1::ImageSpec { image: want.into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), "cat /payload; exec sleep 3600".into()],
        log_path: "cat/0.log".into(),
        ..Default::default()
    };
    let cid = cri.create_container(&sid, cfg, sandbox.clone()).await?;
    cri.start_container(&cid).await?;
    let (code, out, err) = cri.exec_sync(&cid, vec!["cat".into(), "/payload".into()], 10).await?;
    assert_eq!((code, String::from_utf8_lossy(&out).as_ref()), (0, "hello from the payload\n"), "stderr: {}", String::from_utf8_lossy(&err));
    let st = cri.container_status(&cid).await?;
    assert_eq!(st.image_ref, config.desc.digest);

    // re-import: same names, no new blob, same targets, CRI still sees it
    let before = (content_digests(&ch).await?, image_targets(&ch).await?);
    assert_eq!(dari_agent::import_image(&sock, &archive).await?, [want]);
    assert_eq!((content_digests(&ch).await?, image_targets(&ch).await?), before);
    assert!(cri.image_status(want).await?.is_some());
    // and the builtin OCI images again (ensure_builtin_images reuses the tarballs)
    image::ensure_builtin_images(&sock, &node.dir.path().join("images")).await?;
    assert_eq!((content_digests(&ch).await?, image_targets(&ch).await?), before);

    // an archive written by containerd itself (`ctr images export`, OCI layout) under a new name
    let exported = node.dir.path().join("exported.tar");
    let out = std::process::Command::new("ctr").arg("--address").arg(&sock).args(["-n", "k8s.io", "images", "export"]).arg(&exported).arg(want).output()?;
    assert!(out.status.success(), "ctr export: {}", String::from_utf8_lossy(&out.stderr));
    let mut images = ImagesClient::new(ch.clone());
    images.delete(ns(ctd::DeleteImageRequest { name: want.into(), sync: true, target: None })).await?;
    assert!(cri.image_status(want).await?.is_none() || wait_gone(&cri, want).await, "CRI still lists the deleted image");
    assert_eq!(dari_agent::import_image(&sock, &exported).await?, [want]);
    assert_eq!(image_targets(&ch).await?.get(want), Some(&manifest.desc.digest));
    assert!(cri.image_status(want).await?.is_some());

    cri.stop_container(&cid, 1).await?;
    cri.remove_container(&cid).await?;
    cri.stop_pod_sandbox(&sid).await?;
    cri.remove_pod_sandbox(&sid).await?;
    node.stop().await;
    Ok(())
}

/// CRI drops a deleted image on containerd's delete event, asynchronously.
async fn wait_gone(cri: &RemoteCri, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(cri.image_status(name).await, Ok(None)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_archive_is_a_clear_error_and_imports_nothing() -> anyhow::Result<()> {
    let node = common::Node::start("impbad").await;
    let sock = node.socket();
    let ch = image::containerd_channel(&sock).await?;
    let before = image_targets(&ch).await?;
    // a layer whose bytes do not match the digest its descriptor claims
    let layer = image::tar(&[Entry::File { path: "a".into(), mode: 0o644, data: b"a".to_vec() }]);
    let good = image::oci_archive(&image::ImageSpec { name: "dari.local/bad:1".into(), entrypoint: vec![], cmd: vec![], env: vec![] }, &layer);
    let mut bad = good.clone();
    let pos = bad.windows(layer.len()).position(|w| w == layer.as_slice()).expect("layer in archive");
    bad[pos + 600] ^= 0xff; // inside the layer's file data ("a" is at header+512..)
    let path = node.dir.path().join("bad.tar");
    std::fs::write(&path, &bad)?;
    let e = dari_agent::import_image(&sock, &path).await.expect_err("corrupt layer accepted");
    let text = format!("{e:#} {:?}", std::error::Error::source(&e));
    assert!(text.contains("content.Write") || text.contains("digest"), "{text}");
    assert_eq!(image_targets(&ch).await?, before, "no image record for a failed import");
    node.stop().await;
    Ok(())
}

fn time_ctr(sock: &Path, archive: &Path, extra: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = std::process::Command::new("ctr").arg("--address").arg(sock).args(["-n", "k8s.io", "images", "import"]).args(extra).arg(archive).output()?;
    let d = t.elapsed();
    anyhow::ensure!(out.status.success(), "ctr import: {}", String::from_utf8_lossy(&out.stderr));
    Ok(d)
}

async fn time_ours(sock: &Path, archive: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    dari_agent::import_image(sock, archive).await?;
    Ok(t.elapsed())
}

/// Incompressible bytes, different per seed.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// Creates (then removes) a container from `image` in sandbox `sid`: the time CreateContainer takes
/// includes unpacking the layers when the import did not.
async fn time_create(cri: &RemoteCri, sid: &str, sandbox: &v1::PodSandboxConfig, image: &str, n: usize) -> anyhow::Result<Duration> {
    let cfg = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: format!("c{n}"), attempt: 0 }),
        image: Some(v1::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["true".into()],
        log_path: format!("c{n}.log"),
        ..Default::default()
    };
    let t = Instant::now();
    let cid = cri.create_container(sid, cfg, sandbox.clone()).await?;
    let d = t.elapsed();
    cri.remove_container(&cid).await?;
    Ok(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn import_speed_vs_ctr() -> anyhow::Result<()> {
    let node = common::Node::start("impbench").await;
    let _cg = common::CgroupGuard(format!("/dari/test-impbench-{}", std::process::id()));
    let sock = node.socket();
    let cri = RemoteCri::connect(&sock).await?;
    let cidr: ipnet::IpNet = "10.250.10.0/24".parse()?;
    std::fs::write(node.cni_conf_dir.join(CONFLIST_FILE), render_conflist(Flavor::Reference, cidr, 1450, &node.ipam_dir()))?;
    let sandbox = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata { name: "bench".into(), uid: "uid-bench-1".into(), namespace: "default".into(), attempt: 0 }),
        hostname: "bench".into(),
        log_directory: node.dir.path().join("logs/bench").to_string_lossy().into_owned(),
        linux: Some(v1::LinuxPodSandboxConfig { cgroup_parent: format!("/dari/test-impbench-{}/poduid-bench-1", std::process::id()), ..Default::default() }),
        ..Default::default()
    };
    let sid = cri.run_pod_sandbox(sandbox.clone()).await?;
    let mb: usize = std::env::var("DARI_IMPORT_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let dir = node.dir.path().to_path_buf();
    let mk = |tag: &str, size: usize| -> anyhow::Result<PathBuf> {
        let p = dir.join(format!("{}.tar", tag.replace(['/', ':'], "_")));
        std::fs::write(&p, docker_archive(tag, &noise(tag, size))?)?;
        Ok(p)
    };
    println!("milliseconds; import = the import alone, +create = import then the first CreateContainer (which unpacks if the import did not)");
    println!("{:<26} {:>8} {:>8} {:>8} {:>8} {:>14}", "archive", "ours", "+create", "ctr", "+create", "ctr --no-unpack");
    let mut n = 0;
    for (label, size) in [("busybox", 0usize), ("busybox+noise", mb << 20)] {
        for round in 0..3 {
            // distinct content per tool and round: nothing is deduplicated
            let tags = [format!("bench/ours-{round}:{size}"), format!("bench/ctr-{round}:{size}"), format!("bench/ctrnu-{round}:{size}")];
            let a = mk(&tags[0], size + round)?;
            let b = mk(&tags[1], size + round + 7)?;
            let c = mk(&tags[2], size + round + 13)?;
            let ours = time_ours(&sock, &a).await?;
            n += 1;
            let ours_create = time_create(&cri, &sid, &sandbox, &tags[0], n).await?;
            let ctr = time_ctr(&sock, &b, &[])?;
            n += 1;
            let ctr_create = time_create(&cri, &sid, &sandbox, &tags[1], n).await?;
            let ctr_nu = time_ctr(&sock, &c, &["--no-unpack"])?;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let bytes = std::fs::metadata(&a)?.len();
            println!(
                "{:<26} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>14.1}",
                format!("{label} {:.1}MB #{round}", bytes as f64 / 1e6),
                ms(ours),
                ms(ours + ours_create),
                ms(ctr),
                ms(ctr + ctr_create),
                ms(ctr_nu)
            );
            if round == 2 {
                let re_ours = time_ours(&sock, &a).await?;
                let re_ctr = time_ctr(&sock, &b, &[])?;
                println!("{:<26} {:>8.1} {:>8} {:>8.1}   (re-import, content present)", format!("{label} again"), ms(re_ours), "", ms(re_ctr));
            }
        }
    }
    cri.stop_pod_sandbox(&sid).await?;
    cri.remove_pod_sandbox(&sid).await?;
    node.stop().await;
    Ok(())
}
