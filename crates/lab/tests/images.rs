//! The stand-in images: built from this host's binaries, structurally valid OCI archives,
//! runnable (each rootfs is unpacked and its tools run under chroot), and accepted by a real
//! containerd (`ctr images import`), started privately for the test.
//!
//! `cargo test -p dari-lab --test images` (root; apt: busybox-static nginx curl iproute2
//! bind9-dnsutils tcpdump conntrack containerd).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dari_lab::images::{build_images_with, catalog, normalize, Inputs};
use dari_lab::oci::check_archive;

fn inputs() -> Inputs {
    Inputs { applet: PathBuf::from(env!("CARGO_BIN_EXE_dari-applet")), busybox: PathBuf::from(dari_lab::images::BUSYBOX) }
}

fn unpack(archive: &[u8], dir: &Path) {
    let info = check_archive(archive).unwrap();
    for e in &info.layer_paths {
        let p = dir.join(e.path.trim_end_matches('/'));
        match e.kind {
            b'5' => std::fs::create_dir_all(&p).unwrap(),
            b'2' => {
                let _ = std::fs::remove_file(&p);
                symlink(&e.link, &p).unwrap()
            }
            _ => {
                std::fs::write(&p, &e.data).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
            }
        }
    }
}

fn chroot(root: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new("chroot").arg(root).args(args).env_clear().env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

#[test]
fn build_check_run_and_import() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root (chroot, containerd)");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("images");
    let mut lines = Vec::new();
    let paths = build_images_with(&out, &inputs(), &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(paths.len(), catalog().len());
    assert_eq!(lines.len(), paths.len(), "one progress line per image");
    let mut names = Vec::new();
    for p in &paths {
        let bytes = std::fs::read(p).unwrap();
        let info = check_archive(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(info.config["config"]["Labels"]["io.dari.lab.stand-in"], "true");
        names.extend(info.names.clone());
        let key = p.file_stem().unwrap().to_str().unwrap().to_string();
        let root = tmp.path().join("rootfs").join(&key);
        std::fs::create_dir_all(&root).unwrap();
        unpack(&bytes, &root);
        let checks: &[&[&str]] = match key.as_str() {
            "busybox" => &[&["sh", "-c", "echo ok"], &["nslookup", "--help"]],
            "nginx" => &[&["nginx", "-t"], &["curl", "--version"], &["sh", "-c", "grep -q 'Welcome to nginx!' /usr/share/nginx/html/index.html"]],
            "netshoot" => &[&["curl", "--version"], &["ip", "-V"], &["ss", "-V"], &["dig", "-v"], &["nslookup", "-version"], &["tcpdump", "--version"], &["conntrack", "--version"], &["tail", "--help"]],
            "ubuntu" => &[&["/bin/sleep", "0"], &["curl", "--version"], &["ip", "-o", "link", "show", "lo"], &["grep", "-q", "stand-in", "/etc/os-release"]],
            "whoami" => &[&["/whoami", "--nope-not-an-applet-flag-but-harmless", "--port", "bad"]],
            _ => &[],
        };
        for c in checks {
            if key == "whoami" {
                continue; // a server: exercised over TCP in the applets unit tests
            }
            let (ok, text) = chroot(&root, c);
            // busybox applets print usage on --help with exit 0 or 1; the point is they run.
            let ran = ok || (text.contains("Usage") || text.contains("usage") || text.contains("BusyBox"));
            assert!(ran, "{key}: {c:?} failed in the image:\n{text}");
            assert!(!text.contains("error while loading shared libraries"), "{key}: {c:?}:\n{text}");
        }
    }
    // The servers answer like the originals, each started from its unpacked image under chroot
    // in a throwaway network namespace (loopback only).
    let ns = format!("ti{}", std::process::id() % 100000);
    let mut net = dari_lab::net::RealNet::new().unwrap();
    use dari_lab::net::LabNet;
    net.create_netns(&ns).unwrap();
    net.link_up(&ns, "lo").unwrap();
    let nsarg = format!("--net={}", dari_lab::net::netns_path(&ns).display());
    let serve_check = std::panic::catch_unwind(|| {
        for (key, cmd, url, want) in [
            ("nginx", vec!["nginx", "-g", "daemon off;"], "http://127.0.0.1:80/", "Welcome to nginx!"),
            ("whoami", vec!["/whoami", "--port", "8081"], "http://127.0.0.1:8081/x", "RemoteAddr: 127.0.0.1:"),
            ("echo-server", vec!["/bin/echo-server"], "http://127.0.0.1:8080/y", "Request served by "),
        ] {
            let root = tmp.path().join("rootfs").join(key);
            let mut child = Command::new("nsenter").arg(&nsarg).arg("--").arg("chroot").arg(&root).args(&cmd).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let body = loop {
                let o = Command::new("nsenter").arg(&nsarg).args(["--", "curl", "-s", "--max-time", "2", url]).output().unwrap();
                let body = String::from_utf8_lossy(&o.stdout).into_owned();
                if body.contains(want) || Instant::now() > deadline {
                    break body;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let _ = child.kill();
            let _ = child.wait();
            assert!(body.contains(want), "{key}: {url} answered {body:?}");
        }
    });
    // nginx forks workers: everything left in the namespace goes.
    let left = dari_lab::procs::lab_processes(&[dari_lab::net::netns_path(&ns)], tmp.path());
    dari_lab::procs::stop(&left, Duration::from_secs(5));
    net.delete_netns(&ns).unwrap();
    if let Err(e) = serve_check {
        std::panic::resume_unwind(e);
    }

    for n in ["busybox", "nginx", "traefik/whoami", "jmalloc/echo-server", "nicolaka/netshoot", "ubuntu:20.04"] {
        assert!(names.contains(&normalize(n)), "{n} missing from {names:?}");
    }

    // A private containerd accepts every archive.
    let has = |t: &str| Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(has("containerd") && has("ctr"), "containerd and ctr are needed: apt-get install containerd");
    let cd = tmp.path().join("containerd");
    std::fs::create_dir_all(&cd).unwrap();
    let sock = cd.join("c.sock");
    let cfg = cd.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.aufs\"]\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            r = cd.display(),
            s = sock.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(cd.join("log")).unwrap();
    let mut child = Command::new("containerd").arg("--config").arg(&cfg).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let ok = Command::new("ctr").arg("-a").arg(&sock).arg("version").output().map(|o| o.status.success()).unwrap_or(false);
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let result = std::panic::catch_unwind(|| {
        assert!(ready, "containerd did not start: {}", std::fs::read_to_string(cd.join("log")).unwrap_or_default());
        // containerd's own importer (ctr) as the reference reader of the archives; the lab itself
        // imports through dari_agent::import_image (tested in crates/agent/tests/image_import.rs)
        for p in &paths {
            let o = Command::new("ctr").arg("-n").arg("k8s.io").arg("-a").arg(&sock).args(["images", "import", "--all-platforms"]).arg(p).output().unwrap();
            assert!(o.status.success(), "ctr import {}: {}", p.display(), String::from_utf8_lossy(&o.stderr));
        }
        let o = Command::new("ctr").arg("-a").arg(&sock).args(["-n", "k8s.io", "images", "ls", "-q"]).output().unwrap();
        let listed = String::from_utf8_lossy(&o.stdout).into_owned();
        for n in &names {
            assert!(listed.lines().any(|l| l == n), "{n} not imported; ctr lists:\n{listed}");
        }
    });
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    for m in dari_lab::procs::unmount_under(&cd) {
        eprintln!("unmounted {}", m.display());
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
