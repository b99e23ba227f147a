//! Images without a registry: build OCI image-layout tarballs from host binaries, and import
//! tarballs into the node's containerd (`k8s.io` namespace, the only one CRI sees).
//!
//! The pure part is [`busybox_layer`] + [`oci_archive`] (deterministic bytes: same input, same
//! digests). [`import`] is the edge; today it shells out to containerd's `ctr` (a stopgap: the
//! containerd content/images API would avoid the extra binary):
//!
//! ```text
//! ctr --address SOCK -n k8s.io images import FILE.tar
//! ```

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{AgentError, Result};

/// The sandbox ("pause") image the agent builds and configures containerd with.
pub const PAUSE_IMAGE: &str = "dari.local/pause:3.10";
/// A busybox image (shell + applets) for tests and small workloads.
pub const BUSYBOX_IMAGE: &str = "dari.local/busybox:1.35";
/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX_BIN: &str = "/bin/busybox";

/// One file system entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory (path without leading slash).
    Dir { path: String, mode: u32 },
    /// A regular file.
    File { path: String, mode: u32, data: Vec<u8> },
    /// A symbolic link.
    Symlink { path: String, target: String },
}

/// What goes into the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Full reference, e.g. `dari.local/busybox:1.35` (becomes `io.containerd.image.name`).
    pub name: String,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// Environment, `K=V`.
    pub env: Vec<String>,
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The root file system of a busybox image: `/bin/busybox` plus one symlink per applet,
/// `/etc/passwd`, `/etc/group` and the usual empty directories.
pub fn busybox_layer(busybox: &[u8], applets: &[String]) -> Vec<Entry> {
    let mut e = Vec::new();
    for (d, mode) in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755), ("home", 0o755)] {
        e.push(Entry::Dir { path: d.into(), mode });
    }
    e.push(Entry::File { path: "bin/busybox".into(), mode: 0o755, data: busybox.to_vec() });
    let mut names: Vec<&String> = applets.iter().filter(|a| !a.is_empty() && a.as_str() != "busybox" && !a.contains('/')).collect();
    names.sort();
    names.dedup();
    for a in names {
        e.push(Entry::Symlink { path: format!("bin/{a}"), target: "busybox".into() });
    }
    e.push(Entry::File { path: "etc/passwd".into(), mode: 0o644, data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n".to_vec() });
    e.push(Entry::File { path: "etc/group".into(), mode: 0o644, data: b"root:x:0:\nnogroup:x:65534:\n".to_vec() });
    e
}

/// Writes entries as an uncompressed ustar archive (mtime 0, uid/gid 0: reproducible).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (path, mode, typ, size, link, data): (&str, u32, u8, usize, &str, &[u8]) = match e {
            Entry::Dir { path, mode } => (path, *mode, b'5', 0, "", &[]),
            Entry::File { path, mode, data } => (path, *mode, b'0', data.len(), "", data),
            Entry::Symlink { path, target } => (path, 0o777, b'2', 0, target, &[]),
        };
        let mut h = [0u8; 512];
        let name = if typ == b'5' { format!("{path}/") } else { path.to_string() };
        put(&mut h[0..100], name.as_bytes());
        put(&mut h[100..108], format!("{mode:07o}").as_bytes());
        put(&mut h[108..116], b"0000000");
        put(&mut h[116..124], b"0000000");
        put(&mut h[124..136], format!("{size:011o}").as_bytes());
        put(&mut h[136..148], b"00000000000");
        h[148..156].copy_from_slice(b"        ");
        h[156] = typ;
        put(&mut h[157..257], link.as_bytes());
        put(&mut h[257..263], b"ustar\0");
        put(&mut h[263..265], b"00");
        put(&mut h[265..297], b"root");
        put(&mut h[297..329], b"root");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        put(&mut h[148..156], format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn put(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
}

fn sha(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// An OCI image-layout archive (`oci-layout`, `index.json`, `blobs/sha256/*`) holding one
/// single-layer image for this machine's architecture. The name is in the
/// `io.containerd.image.name` annotation, which is what `ctr images import` uses.
pub fn oci_archive(spec: &ImageSpec, layer_tar: &[u8]) -> Vec<u8> {
    let layer_digest = sha(layer_tar);
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": spec.env,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    });
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let config_digest = sha(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer_tar.len() }],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = sha(&manifest);
    let tag = spec.name.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/')).unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": { "io.containerd.image.name": spec.name, "org.opencontainers.image.ref.name": tag },
        }],
    });
    let index = serde_json::to_vec(&index).unwrap_or_default();
    let mut entries = vec![
        Entry::File { path: "oci-layout".into(), mode: 0o644, data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec() },
        Entry::Dir { path: "blobs".into(), mode: 0o755 },
        Entry::Dir { path: "blobs/sha256".into(), mode: 0o755 },
    ];
    for (d, data) in [(layer_digest, layer_tar.to_vec()), (config_digest, config), (manifest_digest, manifest)] {
        entries.push(Entry::File { path: format!("blobs/sha256/{d}"), mode: 0o644, data });
    }
    entries.push(Entry::File { path: "index.json".into(), mode: 0o644, data: index });
    tar(&entries)
}

/// Builds the busybox-based image `spec` from `busybox` (a static binary) and returns the
/// archive bytes. Applets are read with `busybox --list`.
pub fn build_busybox_image(spec: &ImageSpec, busybox: &Path) -> Result<Vec<u8>> {
    let bin = std::fs::read(busybox).map_err(AgentError::io("reading", busybox))?;
    let out = std::process::Command::new(busybox).arg("--list").output().map_err(|e| AgentError::Program {
        program: busybox.display().to_string(),
        detail: "--list".into(),
        source: Some(e),
    })?;
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect();
    if applets.is_empty() {
        return Err(AgentError::Image { image: spec.name.clone(), detail: format!("{} --list printed no applets (is it busybox-static?)", busybox.display()) });
    }
    Ok(oci_archive(spec, &tar(&busybox_layer(&bin, &applets))))
}

/// The pause image spec: `sleep infinity` as PID 1 of the sandbox.
pub fn pause_spec() -> ImageSpec {
    ImageSpec { name: PAUSE_IMAGE.into(), entrypoint: vec!["/bin/sleep".into(), "infinity".into()], cmd: vec![], env: vec![default_path()] }
}

/// The busybox image spec: `sh` by default.
pub fn busybox_spec() -> ImageSpec {
    ImageSpec { name: BUSYBOX_IMAGE.into(), entrypoint: vec![], cmd: vec!["sh".into()], env: vec![default_path()] }
}

fn default_path() -> String {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
}

/// Imports an OCI-layout or docker-archive tarball into containerd's `k8s.io` namespace
/// (what `dari image import FILE.tar` does). Returns ctr's output lines (the imported names).
pub async fn import(containerd_socket: &Path, archive: &Path) -> Result<Vec<String>> {
    let out = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(containerd_socket)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .await
        .map_err(|e| AgentError::Program { program: "ctr".into(), detail: "images import (apt package containerd ships ctr)".into(), source: Some(e) })?;
    if !out.status.success() {
        return Err(AgentError::Image {
            image: archive.display().to_string(),
            detail: format!("ctr images import: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// Builds the pause and busybox images under `dir` (skipped if already there) and imports them.
pub async fn ensure_builtin_images(containerd_socket: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(AgentError::io("creating dir", dir))?;
    for (file, spec) in [("pause.tar", pause_spec()), ("busybox.tar", busybox_spec())] {
        let path: PathBuf = dir.join(file);
        if !path.exists() {
            let bytes = build_busybox_image(&spec, Path::new(BUSYBOX_BIN))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).map_err(AgentError::io("writing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(AgentError::io("renaming", &path))?;
        }
        import(containerd_socket, &path).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_header_checksum_and_padding() {
        let t = tar(&[Entry::File { path: "a".into(), mode: 0o644, data: b"hi".to_vec() }]);
        assert_eq!(t.len(), 512 + 512 + 1024);
        let sum: u32 = t[..512].iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
        let stored = u32::from_str_radix(std::str::from_utf8(&t[148..154]).expect("ascii"), 8).expect("octal");
        assert_eq!(sum, stored);
        assert_eq!(&t[512..514], b"hi");
    }

    #[test]
    fn archive_is_deterministic_and_names_the_image() {
        let layer = tar(&busybox_layer(b"ELF", &["sh".into(), "ls".into(), "busybox".into()]));
        let a = oci_archive(&busybox_spec(), &layer);
        let b = oci_archive(&busybox_spec(), &layer);
        assert_eq!(a, b);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("\"io.containerd.image.name\":\"dari.local/busybox:1.35\""));
        assert!(text.contains("oci-layout"));
        // the symlinks, not a link to itself
        let l = String::from_utf8_lossy(&layer);
        assert!(l.contains("bin/sh"));
        assert!(!l.contains("bin/busybox/"));
    }
}
