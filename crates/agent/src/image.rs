//! Images without a registry: build OCI image-layout tarballs from host binaries, and import
//! tarballs into the node's containerd (`k8s.io` namespace, the only one CRI sees).
//!
//! The pure parts are [`busybox_layer`] + [`oci_archive`] (deterministic bytes: same input, same
//! digests) and, for import, [`TarIndex`] + [`plan_import`]: an OCI image layout (`index.json`,
//! `blobs/sha256/*`) or a docker-archive (`manifest.json`, layer tars, config; converted to a
//! Docker schema 2 manifest over the layer tars as they are, like `ctr images import`) becomes
//! an [`ImportPlan`]: blobs, children first, with the `containerd.io/gc.ref.content.*` labels
//! that keep config and layers alive under the manifest, and the image records (names
//! normalised by [`normalize_reference`], `busybox` → `docker.io/library/busybox:latest`).
//!
//! [`import`] is the edge, containerd's gRPC API (crate `containerd-client`), no `ctr`:
//! under a lease, content.Info skips blobs already present, content.Write streams the others
//! from the archive with their expected digest and size, images.Update/Create points each name
//! at its manifest or index, then we wait until CRI's ImageStatus knows the name (CRI learns
//! images from containerd's image events, asynchronously). Layers are not unpacked at import:
//! containerd 1.6's CRI unpacks into its snapshotter when it creates the first sandbox or
//! container from the image (`tests/image_import.rs` runs a container from an imported image).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{self as content, self as images, self as leases};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cri::v1 as cri_v1;
use crate::cri::v1::image_service_client::ImageServiceClient;
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

// ---------------------------------------------------------------------------------------------
// Import: archive → plan (pure, [`TarIndex`] + [`plan_import`]) → containerd's content, leases and
// images services (the edge, [`import`]).

/// The containerd namespace CRI uses (the only one it sees).
pub const K8S_NAMESPACE: &str = "k8s.io";

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Annotation holding the full image name (what `ctr images export` writes).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation holding a reference (often only a tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Files bigger than this are never read whole (index.json, manifests, docker configs are small).
const MAX_METADATA: u64 = 64 << 20;
/// Bytes per content.Write message (containerd accepts up to 16 MiB).
const WRITE_CHUNK: usize = 1 << 20;

/// An OCI content descriptor, the fields import uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Descriptor {
    /// Media type (may be empty in hand-made index.json files).
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (image name, ref name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
}

impl Descriptor {
    fn plain(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.into(), digest, size, annotations: BTreeMap::new(), platform: None }
    }
}

#[derive(serde::Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct ManifestJson {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(serde::Serialize)]
struct DockerManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

/// Where each regular file of a tar archive is: normalised name → (data offset, size).
/// Symbolic and hard links to files (docker-archive deduplicates layers with them) resolve to
/// their target's data.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TarIndex {
    files: BTreeMap<String, (u64, u64)>,
}

fn normalize_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl TarIndex {
    /// Scans the archive's headers (seeking over file data).
    pub fn read<R: Read + Seek>(r: R) -> std::io::Result<TarIndex> {
        let mut files = BTreeMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let mut ar = tar::Archive::new(r);
        for entry in ar.entries_with_seek()? {
            let entry = entry?;
            let name = normalize_name(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            if kind.is_file() || kind.is_contiguous() {
                files.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name_bytes() {
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let resolved = if kind.is_symlink() && !target.starts_with('/') {
                        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        normalize_name(&format!("{dir}/{target}"))
                    } else {
                        normalize_name(&target)
                    };
                    links.push((name, resolved));
                }
            }
        }
        // links to links: a few rounds are plenty
        for _ in 0..4 {
            for (name, target) in &links {
                if let Some(v) = files.get(target).copied() {
                    files.entry(name.clone()).or_insert(v);
                }
            }
        }
        Ok(TarIndex { files })
    }

    /// Offset and size of `name` (normalised: no leading `./`).
    pub fn get(&self, name: &str) -> Option<(u64, u64)> {
        self.files.get(&normalize_name(name)).copied()
    }
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobSource {
    /// A file of the archive, at this data offset.
    Archive {
        /// Byte offset of the data in the archive.
        offset: u64,
    },
    /// Generated by the import (the manifest of a docker-archive image).
    Inline(Vec<u8>),
}

/// One blob to put into the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Digest, size and media type.
    pub desc: Descriptor,
    /// Its bytes.
    pub source: BlobSource,
    /// Content labels: the `containerd.io/gc.ref.content.*` references to its children, which
    /// keep config and layers alive as long as the image points at the manifest.
    pub labels: BTreeMap<String, String>,
}

/// One image record to create or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Normalised reference (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The manifest or index the image points at.
    pub target: Descriptor,
}

/// What importing an archive does: blobs (children before parents) and image records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportPlan {
    /// `oci` or `docker-archive`.
    pub format: &'static str,
    /// Blobs to store, children first, each once.
    pub blobs: Vec<Blob>,
    /// Images to create or update.
    pub images: Vec<ImageRecord>,
}

/// Normalises a reference like containerd's `reference/docker.ParseDockerRef` (what `ctr` and
/// CRI use): `busybox` → `docker.io/library/busybox:latest`, `foo/bar:1` →
/// `docker.io/foo/bar:1`, `dari.local/x:1` unchanged; a digest wins over a tag.
pub fn normalize_reference(reference: &str) -> std::result::Result<String, String> {
    let r = reference.trim();
    if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid reference {reference:?}"));
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => {
            let ok = d.split_once(':').is_some_and(|(alg, hex)| !alg.is_empty() && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(format!("invalid digest in reference {reference:?}"));
            }
            (n, Some(d))
        }
        None => (r, None),
    };
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        if t.is_empty() || t.len() > 128 || !t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(format!("invalid tag in reference {reference:?}"));
        }
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) => (first.to_string(), rest.to_string()),
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" { "docker.io".to_string() } else { domain };
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
    let path_ok = !path.is_empty()
        && path.split('/').all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')));
    if !path_ok {
        return Err(format!("invalid repository name in {reference:?} (lowercase letters, digits, '.', '_', '-')"));
    }
    Ok(match (digest, tag) {
        (Some(d), _) => format!("{domain}/{path}@{d}"),
        (None, Some(t)) => format!("{domain}/{path}:{t}"),
        (None, None) => format!("{domain}/{path}:latest"),
    })
}

/// The image name an OCI index entry asks for: `io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name` when it is a full reference (a bare tag names nothing,
/// as with `ctr images import` without `--base-name`).
fn oci_image_name(annotations: &BTreeMap<String, String>) -> Option<&str> {
    if let Some(n) = annotations.get(ANNOTATION_IMAGE_NAME).filter(|n| !n.is_empty()) {
        return Some(n);
    }
    annotations.get(ANNOTATION_REF_NAME).map(String::as_str).filter(|n| n.contains('/') || n.contains(':') || n.contains('@'))
}

/// A tar archive with its index, read by name.
pub struct Archive<R> {
    r: R,
    index: TarIndex,
    what: String,
}

impl<R: Read + Seek> Archive<R> {
    /// Indexes `r`; `what` names it in errors (the file path).
    pub fn open(mut r: R, what: &str) -> Result<Archive<R>> {
        let mut magic = [0u8; 4];
        let n = r.read(&mut magic).map_err(AgentError::io("reading", what))?;
        if n >= 2 && magic[..2] == [0x1f, 0x8b] || n >= 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(AgentError::Image { image: what.into(), detail: "the archive itself is compressed: decompress it first (gunzip/zstd -d), layers inside may stay compressed".into() });
        }
        r.seek(SeekFrom::Start(0)).map_err(AgentError::io("reading", what))?;
        let index = TarIndex::read(&mut r).map_err(|e| AgentError::Image { image: what.into(), detail: format!("not a tar archive: {e}") })?;
        Ok(Archive { r, index, what: what.into() })
    }

    fn err(&self, detail: String) -> AgentError {
        AgentError::Image { image: self.what.clone(), detail }
    }

    fn read_file(&mut self, name: &str) -> Result<Vec<u8>> {
        let (off, size) = self.index.get(name).ok_or_else(|| self.err(format!("{name} is not in the archive")))?;
        if size > MAX_METADATA {
            return Err(self.err(format!("{name} is {size} bytes, too big for metadata")));
        }
        let mut buf = vec![0u8; size as usize];
        self.r.seek(SeekFrom::Start(off)).and_then(|_| self.r.read_exact(&mut buf)).map_err(AgentError::io("reading", self.what.clone()))?;
        Ok(buf)
    }

    /// sha256 digest, size and first 4 bytes of a file of the archive.
    fn hash_file(&mut self, name: &str) -> Result<(String, u64, u64, [u8; 4])> {
        let (off, size) = self.index.get(name).ok_or_else(|| self.err(format!("{name} is not in the archive")))?;
        let mut magic = [0u8; 4];
        let mut h = Sha256::new();
        let mut left = size;
        let mut buf = vec![0u8; WRITE_CHUNK];
        self.r.seek(SeekFrom::Start(off)).map_err(AgentError::io("reading", self.what.clone()))?;
        let mut first = true;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.r.read_exact(&mut buf[..n]).map_err(AgentError::io("reading", self.what.clone()))?;
            if first {
                let m = n.min(4);
                magic[..m].copy_from_slice(&buf[..m]);
                first = false;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Ok((format!("sha256:{}", hex(&h.finalize())), off, size, magic))
    }
}

fn hex(d: &[u8]) -> String {
    let mut s = String::with_capacity(d.len() * 2);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn blob_path(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    let ok = !alg.is_empty() && alg.chars().all(|c| c.is_ascii_alphanumeric()) && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    ok.then(|| format!("blobs/{alg}/{hex}"))
}

#[derive(PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
    Leaf,
}

fn host_platform(p: &Option<Platform>) -> bool {
    p.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == oci_arch())
}

struct Planner<'a, R> {
    ar: &'a mut Archive<R>,
    blobs: Vec<Blob>,
    seen: BTreeSet<String>,
}

impl<R: Read + Seek> Planner<'_, R> {
    /// Adds `d` and what it references (children first). `required`: a missing blob is an error;
    /// otherwise (an index entry for another platform) it is skipped. Returns whether it was added.
    fn walk(&mut self, d: &Descriptor, required: bool, depth: u32) -> Result<bool> {
        if self.seen.contains(&d.digest) {
            return Ok(true);
        }
        if depth > 8 {
            return Err(self.ar.err(format!("{}: indexes nested too deep", d.digest)));
        }
        let path = blob_path(&d.digest).ok_or_else(|| self.ar.err(format!("bad digest {:?}", d.digest)))?;
        let Some((offset, size)) = self.ar.index.get(&path) else {
            if required {
                return Err(self.ar.err(format!("blob {} ({}) is referenced but not in the archive", d.digest, d.media_type)));
            }
            return Ok(false);
        };
        if size != d.size {
            return Err(self.ar.err(format!("blob {} is {size} bytes, its descriptor says {}", d.digest, d.size)));
        }
        let mut kind = match d.media_type.as_str() {
            MT_OCI_INDEX | MT_DOCKER_LIST => Kind::Index,
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => Kind::Manifest,
            _ => Kind::Leaf,
        };
        let mut media_type = d.media_type.clone();
        let mut labels = BTreeMap::new();
        let body = if kind != Kind::Leaf || d.media_type.is_empty() { Some(self.ar.read_file(&path)?) } else { None };
        if let (Some(body), true) = (&body, d.media_type.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
            if v.get("manifests").is_some() {
                kind = Kind::Index;
            } else if v.get("config").is_some() && v.get("layers").is_some() {
                kind = Kind::Manifest;
            }
            media_type = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or(match kind {
                Kind::Index => MT_OCI_INDEX,
                Kind::Manifest => MT_OCI_MANIFEST,
                Kind::Leaf => "application/octet-stream",
            }).to_string();
        }
        match (kind, body) {
            (Kind::Index, Some(body)) => {
                let idx: IndexJson = serde_json::from_slice(&body).map_err(|e| self.ar.err(format!("index {}: {e}", d.digest)))?;
                let mut any = false;
                for (i, m) in idx.manifests.iter().enumerate() {
                    if self.walk(m, required && host_platform(&m.platform), depth + 1)? {
                        labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), m.digest.clone());
                        any = true;
                    }
                }
                if !any {
                    return Err(self.ar.err(format!("index {} references no manifest present in the archive", d.digest)));
                }
            }
            (Kind::Manifest, Some(body)) => {
                let m: ManifestJson = serde_json::from_slice(&body).map_err(|e| self.ar.err(format!("manifest {}: {e}", d.digest)))?;
                if !self.walk(&m.config, required, depth + 1)? {
                    return Ok(false);
                }
                labels.insert("containerd.io/gc.ref.content.config".into(), m.config.digest.clone());
                for (i, l) in m.layers.iter().enumerate() {
                    if !self.walk(l, required, depth + 1)? {
                        return Ok(false);
                    }
                    labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
                }
            }
            _ => {}
        }
        self.seen.insert(d.digest.clone());
        self.blobs.push(Blob { desc: Descriptor::plain(&media_type, d.digest.clone(), d.size), source: BlobSource::Archive { offset }, labels });
        Ok(true)
    }

    fn push_new(&mut self, blob: Blob) {
        if self.seen.insert(blob.desc.digest.clone()) {
            self.blobs.push(blob);
        }
    }
}

/// Plans the import of an OCI image layout (`index.json`) or a docker-archive (`manifest.json`,
/// converted to a Docker schema 2 manifest over the archive's layer tars, as `ctr` does).
pub fn plan_import<R: Read + Seek>(ar: &mut Archive<R>) -> Result<ImportPlan> {
    let has_index = ar.index.get("index.json").is_some();
    let has_docker = ar.index.get("manifest.json").is_some();
    if has_index {
        let plan = plan_oci(ar)?;
        if !plan.images.is_empty() || !has_docker {
            return Ok(plan);
        }
    }
    if has_docker {
        return plan_docker(ar);
    }
    Err(ar.err("neither index.json (OCI image layout) nor manifest.json (docker-archive) at the top of the archive".into()))
}

fn plan_oci<R: Read + Seek>(ar: &mut Archive<R>) -> Result<ImportPlan> {
    let body = ar.read_file("index.json")?;
    let idx: IndexJson = serde_json::from_slice(&body).map_err(|e| ar.err(format!("index.json: {e}")))?;
    let mut p = Planner { ar, blobs: Vec::new(), seen: BTreeSet::new() };
    let mut images: Vec<ImageRecord> = Vec::new();
    for d in &idx.manifests {
        let Some(name) = oci_image_name(&d.annotations) else { continue };
        let name = normalize_reference(name).map_err(|e| p.ar.err(e))?;
        p.walk(d, true, 0)?;
        let target = Descriptor { platform: None, ..d.clone() };
        images.retain(|i| i.name != name);
        images.push(ImageRecord { name, target });
    }
    Ok(ImportPlan { format: "oci", blobs: p.blobs, images })
}

fn layer_media_type(magic: &[u8; 4]) -> &'static str {
    if magic[..2] == [0x1f, 0x8b] {
        MT_DOCKER_LAYER_GZIP
    } else if *magic == [0x28, 0xb5, 0x2f, 0xfd] {
        MT_OCI_LAYER_ZSTD
    } else {
        MT_DOCKER_LAYER
    }
}

fn plan_docker<R: Read + Seek>(ar: &mut Archive<R>) -> Result<ImportPlan> {
    let body = ar.read_file("manifest.json")?;
    let entries: Vec<DockerArchiveEntry> = serde_json::from_slice(&body).map_err(|e| ar.err(format!("manifest.json: {e}")))?;
    let mut p = Planner { ar, blobs: Vec::new(), seen: BTreeSet::new() };
    let mut images: Vec<ImageRecord> = Vec::new();
    for e in &entries {
        let (digest, offset, size, _) = p.ar.hash_file(&e.config)?;
        let config = Descriptor::plain(MT_DOCKER_CONFIG, digest, size);
        p.push_new(Blob { desc: config.clone(), source: BlobSource::Archive { offset }, labels: BTreeMap::new() });
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, offset, size, magic) = p.ar.hash_file(l)?;
            let d = Descriptor::plain(layer_media_type(&magic), digest, size);
            p.push_new(Blob { desc: d.clone(), source: BlobSource::Archive { offset }, labels: BTreeMap::new() });
            layers.push(d);
        }
        let manifest = serde_json::to_vec(&DockerManifest { schema_version: 2, media_type: MT_DOCKER_MANIFEST, config: &config, layers: &layers })
            .map_err(|e| p.ar.err(format!("encoding manifest: {e}")))?;
        let desc = Descriptor::plain(MT_DOCKER_MANIFEST, format!("sha256:{}", sha(&manifest)), manifest.len() as u64);
        let mut labels = BTreeMap::from([("containerd.io/gc.ref.content.config".to_string(), config.digest.clone())]);
        for (i, l) in layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        p.push_new(Blob { desc: desc.clone(), source: BlobSource::Inline(manifest), labels });
        for tag in e.repo_tags.iter().flatten() {
            let name = normalize_reference(tag).map_err(|e| p.ar.err(e))?;
            images.retain(|i| i.name != name);
            images.push(ImageRecord { name, target: desc.clone() });
        }
    }
    Ok(ImportPlan { format: "docker-archive", blobs: p.blobs, images })
}

/// Opens and plans `archive` (blocking file I/O: run it off the async threads).
pub fn plan_file(archive: &Path) -> Result<ImportPlan> {
    let f = std::fs::File::open(archive).map_err(AgentError::io("opening", archive))?;
    let mut ar = Archive::open(std::io::BufReader::with_capacity(1 << 16, f), &archive.display().to_string())?;
    let plan = plan_import(&mut ar)?;
    if plan.images.is_empty() {
        return Err(AgentError::Image {
            image: archive.display().to_string(),
            detail: format!("no image name in the archive (annotation {ANNOTATION_IMAGE_NAME}, a full {ANNOTATION_REF_NAME}, or docker RepoTags)"),
        });
    }
    Ok(plan)
}

/// containerd's content, images and leases services in one namespace, under one lease.
struct ImportClient {
    content: ContentClient<Channel>,
    images: ImagesClient<Channel>,
    leases: LeasesClient<Channel>,
    cri: ImageServiceClient<Channel>,
    lease: String,
    socket: String,
}

fn ctd_err(call: &'static str, object: impl Into<String>) -> impl FnOnce(tonic::Status) -> AgentError {
    AgentError::cri(call, object)
}

/// A gRPC channel to containerd's socket (a path or `unix://PATH`), for its own services
/// (`containerd_client::services::v1::*Client::new(channel)`) and CRI alike. Requests to
/// containerd's services carry the namespace in the `containerd-namespace` metadata.
pub async fn containerd_channel(socket: &Path) -> Result<Channel> {
    let path = PathBuf::from(socket.to_string_lossy().trim_start_matches("unix://"));
    let p = path.clone();
    Endpoint::from_static("http://containerd.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|source| AgentError::Connect { endpoint: path.display().to_string(), source })
}

impl ImportClient {
    async fn connect(socket: &Path) -> Result<ImportClient> {
        let channel = containerd_channel(socket).await?;
        let path = socket.to_string_lossy().trim_start_matches("unix://").to_string();
        Ok(ImportClient {
            content: ContentClient::new(channel.clone()),
            images: ImagesClient::new(channel.clone()),
            leases: LeasesClient::new(channel.clone()),
            cri: ImageServiceClient::new(channel),
            lease: String::new(),
            socket: path,
        })
    }

    /// A request in the k8s.io namespace, under the import lease once there is one.
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        md.insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(K8S_NAMESPACE));
        if let Ok(v) = self.lease.parse() {
            if !self.lease.is_empty() {
                md.insert("containerd-lease", v);
            }
        }
        r
    }

    /// A lease that keeps written blobs from the garbage collector until the image records
    /// reference them (expires by itself in an hour if we die midway).
    async fn create_lease(&mut self) -> Result<()> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let id = format!("dari-import-{}-{nanos}", std::process::id());
        let expire = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        let r = self.req(leases::CreateRequest { id: id.clone(), labels });
        self.leases.create(r).await.map_err(ctd_err("containerd leases.Create", id.clone()))?;
        self.lease = id;
        Ok(())
    }

    async fn delete_lease(&mut self) {
        if self.lease.is_empty() {
            return;
        }
        let id = std::mem::take(&mut self.lease);
        let r = self.req(leases::DeleteRequest { id: id.clone(), sync: false });
        if let Err(e) = self.leases.delete(r).await {
            tracing::warn!(lease = %id, error = %e, "deleting the import lease (it expires by itself)");
        }
    }

    /// Makes sure the blob is in the content store with its labels; returns whether it was written.
    async fn ensure_blob(&mut self, archive: &Path, blob: &Blob) -> Result<bool> {
        let digest = blob.desc.digest.clone();
        let info = self.content.info(self.req(content::InfoRequest { digest: digest.clone() })).await;
        match info {
            Ok(resp) => {
                let have = resp.into_inner().info.map(|i| i.labels).unwrap_or_default();
                let missing: Vec<String> = blob.labels.iter().filter(|(k, v)| have.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
                if !missing.is_empty() {
                    let info = content::Info { digest: digest.clone(), labels: blob.labels.clone().into_iter().collect(), ..Default::default() };
                    let mask = prost_types::FieldMask { paths: missing.iter().map(|k| format!("labels.{k}")).collect() };
                    let r = self.req(content::UpdateRequest { info: Some(info), update_mask: Some(mask) });
                    self.content.update(r).await.map_err(ctd_err("containerd content.Update", digest.clone()))?;
                }
                let res = leases::Resource { id: digest.clone(), r#type: "content".into() };
                let r = self.req(leases::AddResourceRequest { id: self.lease.clone(), resource: Some(res) });
                self.leases.add_resource(r).await.map_err(ctd_err("containerd leases.AddResource", digest.clone()))?;
                Ok(false)
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.write_blob(archive, blob).await?;
                Ok(true)
            }
            Err(s) => Err(ctd_err("containerd content.Info", digest)(s)),
        }
    }

    /// Streams the blob into content.Write and commits it with its expected digest and size
    /// (containerd verifies both).
    async fn write_blob(&mut self, archive: &Path, blob: &Blob) -> Result<()> {
        let digest = blob.desc.digest.clone();
        let total = i64::try_from(blob.desc.size).unwrap_or(i64::MAX);
        let first = content::WriteContentRequest {
            action: content::WriteAction::Write as i32,
            r#ref: format!("dari-import-{digest}"),
            total,
            expected: digest.clone(),
            ..Default::default()
        };
        let commit = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            total,
            offset: total,
            expected: digest.clone(),
            labels: blob.labels.clone().into_iter().collect(),
            ..Default::default()
        };
        let read_error: Arc<std::sync::Mutex<Option<std::io::Error>>> = Arc::default();
        let stream: std::pin::Pin<Box<dyn futures::Stream<Item = content::WriteContentRequest> + Send>> = match &blob.source {
            BlobSource::Inline(bytes) => Box::pin(futures::stream::iter([content::WriteContentRequest { data: bytes.clone(), ..first }, commit])),
            BlobSource::Archive { offset } => {
                let mut f = tokio::fs::File::open(archive).await.map_err(AgentError::io("opening", archive))?;
                f.seek(SeekFrom::Start(*offset)).await.map_err(AgentError::io("reading", archive))?;
                let errslot = read_error.clone();
                // state: (file, next offset, first message template, commit once done)
                let chunks = futures::stream::unfold((f, 0u64, Some(first), Some(commit)), move |(mut f, pos, mut first, mut commit)| {
                    let errslot = errslot.clone();
                    async move {
                        let left = (total as u64).saturating_sub(pos);
                        if left == 0 {
                            if let Some(mut m) = first.take() {
                                // empty blob: open the writer, then commit
                                m.data = Vec::new();
                                return Some((m, (f, pos, None, commit)));
                            }
                            return commit.take().map(|c| (c, (f, pos, None, None)));
                        }
                        let n = left.min(WRITE_CHUNK as u64) as usize;
                        let mut data = vec![0u8; n];
                        if let Err(e) = f.read_exact(&mut data).await {
                            if let Ok(mut slot) = errslot.lock() {
                                *slot = Some(e);
                            }
                            return None;
                        }
                        let mut m = first.take().unwrap_or_default();
                        m.action = content::WriteAction::Write as i32;
                        m.offset = pos as i64;
                        m.data = data;
                        Some((m, (f, pos + n as u64, None, commit)))
                    }
                });
                Box::pin(chunks)
            }
        };
        let r = self.req(stream);
        let result = async {
            let mut resp = self.content.write(r).await?.into_inner();
            let mut committed = false;
            while let Some(m) = resp.message().await? {
                if m.action == content::WriteAction::Commit as i32 {
                    committed = true;
                }
            }
            Ok::<bool, tonic::Status>(committed)
        }
        .await;
        if let Some(e) = read_error.lock().ok().and_then(|mut s| s.take()) {
            return Err(AgentError::Io { op: "reading", path: archive.to_path_buf(), source: e });
        }
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(AgentError::Image { image: archive.display().to_string(), detail: format!("content.Write of {digest}: the stream ended without a commit") }),
            // written meanwhile by someone else: fine, it is there
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(ctd_err("containerd content.Write", digest)(s)),
        }
    }

    /// Points the image `name` at `target` (update, else create: what `ctr images import` does).
    async fn put_image(&mut self, rec: &ImageRecord) -> Result<()> {
        let target = containerd_client::types::Descriptor {
            media_type: rec.target.media_type.clone(),
            digest: rec.target.digest.clone(),
            size: i64::try_from(rec.target.size).unwrap_or(i64::MAX),
            annotations: rec.target.annotations.clone().into_iter().collect(),
        };
        let image = images::Image { name: rec.name.clone(), target: Some(target), ..Default::default() };
        for _ in 0..2 {
            let mask = prost_types::FieldMask { paths: vec!["target".into()] };
            let r = self.req(images::UpdateImageRequest { image: Some(image.clone()), update_mask: Some(mask), source_date_epoch: None });
            match self.images.update(r).await {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(ctd_err("containerd images.Update", rec.name.clone())(s)),
            }
            let r = self.req(images::CreateImageRequest { image: Some(image.clone()), source_date_epoch: None });
            match self.images.create(r).await {
                Ok(_) => return Ok(()),
                // created meanwhile: update it
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(ctd_err("containerd images.Create", rec.name.clone())(s)),
            }
        }
        Err(AgentError::Image { image: rec.name.clone(), detail: "images.Update/Create kept racing with another writer".into() })
    }

    /// CRI learns images from containerd's image events, asynchronously: wait until its
    /// ImageStatus knows `name` (pointing at this import), so a pod started right after the
    /// import does not find the image missing. A containerd without CRI answers Unimplemented; one
    /// whose CRI plugin is still starting answers "server is not initialized yet" (retried).
    async fn wait_cri(&mut self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        loop {
            interval.tick().await;
            let r = self.req(cri_v1::ImageStatusRequest { image: Some(cri_v1::ImageSpec { image: name.into(), ..Default::default() }), verbose: false });
            match self.cri.image_status(r).await {
                Ok(resp) if resp.get_ref().image.is_some() => return Ok(()),
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(()),
                // containerd's CRI plugin answers this until it has finished starting (just after
                // the socket appears): it will learn the image then.
                Err(s) if s.message().contains("server is not initialized yet") => {}
                Err(s) => return Err(AgentError::cri("ImageStatus", name)(s)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::Timeout { what: format!("CRI at {} to see the imported image {name}", self.socket), secs: timeout.as_secs() });
            }
        }
    }
}

/// Imports an OCI-layout or docker-archive tarball into containerd's `k8s.io` namespace
/// (what `dari image import FILE.tar` does) through containerd's gRPC API: every blob goes into
/// the content store (skipped when already there) under a lease, then each named image is
/// created or updated to point at its manifest or index, then we wait until CRI lists it.
/// Layers are not unpacked here: CRI unpacks into its snapshotter when it creates the first
/// container. Returns the imported image names.
#[tracing::instrument(skip_all, fields(archive = %archive.display()))]
pub async fn import(containerd_socket: &Path, archive: &Path) -> Result<Vec<String>> {
    let started = std::time::Instant::now();
    let path = archive.to_path_buf();
    let plan = tokio::task::spawn_blocking(move || plan_file(&path))
        .await
        .map_err(|e| AgentError::Image { image: archive.display().to_string(), detail: format!("planning task failed: {e}") })??;
    let mut c = ImportClient::connect(containerd_socket).await?;
    c.create_lease().await?;
    let result = async {
        let mut written = 0usize;
        for blob in &plan.blobs {
            if c.ensure_blob(archive, blob).await? {
                written += 1;
            }
        }
        for rec in &plan.images {
            c.put_image(rec).await?;
        }
        Ok::<usize, AgentError>(written)
    }
    .await;
    c.delete_lease().await;
    let written = result?;
    for rec in &plan.images {
        c.wait_cri(&rec.name, Duration::from_secs(10)).await?;
    }
    let names: Vec<String> = plan.images.iter().map(|i| i.name.clone()).collect();
    tracing::info!(format = plan.format, blobs = plan.blobs.len(), written, images = ?names, ms = started.elapsed().as_millis() as u64, "imported");
    Ok(names)
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
    fn plan_bytes(bytes: Vec<u8>) -> Result<ImportPlan> {
        let mut ar = Archive::open(std::io::Cursor::new(bytes), "test.tar")?;
        plan_import(&mut ar)
    }

    fn blob_bytes(archive: &[u8], b: &Blob) -> Vec<u8> {
        match &b.source {
            BlobSource::Inline(v) => v.clone(),
            BlobSource::Archive { offset } => archive[*offset as usize..*offset as usize + b.desc.size as usize].to_vec(),
        }
    }

    #[test]
    fn references_normalise_like_containerd() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("foo/bar:v1", "docker.io/foo/bar:v1"),
            ("index.docker.io/foo/bar", "docker.io/foo/bar:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("dari.local/busybox:1.35", "dari.local/busybox:1.35"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/a/b:t", "localhost:5000/a/b:t"),
            ("registry:5000/img", "registry:5000/img:latest"),
            ("busybox:1@sha256:abcd", "docker.io/library/busybox@sha256:abcd"),
        ] {
            assert_eq!(normalize_reference(input).as_deref(), Ok(want), "{input}");
        }
        for bad in ["", "Busybox", "a b", "busybox:", "busybox@sha256:xyz", "x//y", "busybox:t@g"] {
            assert!(normalize_reference(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn oci_layout_plans_layer_config_manifest_with_gc_labels() {
        let layer = tar(&busybox_layer(b"ELF", &["sh".into()]));
        let archive = oci_archive(&busybox_spec(), &layer);
        let plan = plan_bytes(archive.clone()).expect("plan");
        assert_eq!(plan.format, "oci");
        assert_eq!(plan.images.len(), 1);
        assert_eq!(plan.images[0].name, BUSYBOX_IMAGE);
        assert_eq!(plan.images[0].target.media_type, MT_OCI_MANIFEST);
        let kinds: Vec<&str> = plan.blobs.iter().map(|b| b.desc.media_type.as_str()).collect();
        assert_eq!(kinds, ["application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar", MT_OCI_MANIFEST]);
        // every blob's bytes hash to its digest (the offsets are right)
        for b in &plan.blobs {
            assert_eq!(b.desc.digest, format!("sha256:{}", sha(&blob_bytes(&archive, b))), "{:?}", b.desc);
        }
        assert_eq!(blob_bytes(&archive, &plan.blobs[1]), layer);
        let m = &plan.blobs[2];
        assert_eq!(m.desc.digest, plan.images[0].target.digest);
        assert_eq!(m.labels.get("containerd.io/gc.ref.content.config"), Some(&plan.blobs[0].desc.digest));
        assert_eq!(m.labels.get("containerd.io/gc.ref.content.l.0"), Some(&plan.blobs[1].desc.digest));
        assert_eq!(m.labels.len(), 2);
    }

    fn docker_archive(tags: &[&str], layers: &[&[u8]], dedup_symlink: bool) -> Vec<u8> {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let config_name = format!("{}.json", sha(&config));
        let mut entries = vec![Entry::File { path: config_name.clone(), mode: 0o644, data: config }];
        let mut names = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let dir = format!("l{i}");
            entries.push(Entry::Dir { path: dir.clone(), mode: 0o755 });
            if dedup_symlink && i > 0 {
                entries.push(Entry::Symlink { path: format!("{dir}/layer.tar"), target: "../l0/layer.tar".into() });
            } else {
                entries.push(Entry::File { path: format!("{dir}/layer.tar"), mode: 0o644, data: l.to_vec() });
            }
            names.push(format!("{dir}/layer.tar"));
        }
        let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": tags, "Layers": names }]);
        entries.push(Entry::File { path: "manifest.json".into(), mode: 0o644, data: serde_json::to_vec(&manifest).expect("json") });
        tar(&entries)
    }

    #[test]
    fn docker_archive_becomes_a_schema2_manifest_over_its_layer_tars() {
        let plain = tar(&[Entry::File { path: "hello".into(), mode: 0o644, data: b"hi".to_vec() }]);
        let gz = [&[0x1f_u8, 0x8b, 8, 0][..], b"not really gzip"].concat();
        let archive = docker_archive(&["busybox:latest", "example.com/team/app:2"], &[&plain, &gz], false);
        let plan = plan_bytes(archive.clone()).expect("plan");
        assert_eq!(plan.format, "docker-archive");
        let names: Vec<&str> = plan.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["docker.io/library/busybox:latest", "example.com/team/app:2"]);
        assert_eq!(plan.blobs.len(), 4);
        let (config, l0, l1, manifest) = (&plan.blobs[0], &plan.blobs[1], &plan.blobs[2], &plan.blobs[3]);
        assert_eq!(config.desc.media_type, MT_DOCKER_CONFIG);
        assert_eq!(l0.desc.media_type, MT_DOCKER_LAYER);
        assert_eq!(l1.desc.media_type, MT_DOCKER_LAYER_GZIP);
        assert_eq!(l0.desc.digest, format!("sha256:{}", sha(&plain)));
        assert_eq!(l1.desc.digest, format!("sha256:{}", sha(&gz)));
        for b in &plan.blobs {
            assert_eq!(b.desc.digest, format!("sha256:{}", sha(&blob_bytes(&archive, b))));
        }
        let BlobSource::Inline(m) = &manifest.source else { panic!("manifest is generated") };
        let v: serde_json::Value = serde_json::from_slice(m).expect("manifest json");
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MT_DOCKER_MANIFEST);
        assert_eq!(v["config"]["digest"], config.desc.digest.as_str());
        assert_eq!(v["layers"][1]["digest"], l1.desc.digest.as_str());
        assert_eq!(v["layers"][1]["size"], gz.len());
        assert_eq!(plan.images[0].target, manifest.desc);
        assert_eq!(manifest.labels.len(), 3);
        assert_eq!(manifest.labels["containerd.io/gc.ref.content.l.1"], l1.desc.digest);
    }

    #[test]
    fn docker_archive_symlinked_layers_resolve_and_dedupe() {
        let plain = tar(&[Entry::File { path: "a".into(), mode: 0o644, data: b"x".to_vec() }]);
        let plan = plan_bytes(docker_archive(&["x/y:z"], &[&plain, &plain], true)).expect("plan");
        // config, one layer (twice in the manifest), manifest
        assert_eq!(plan.blobs.len(), 3);
        let BlobSource::Inline(m) = &plan.blobs[2].source else { panic!("manifest") };
        let v: serde_json::Value = serde_json::from_slice(m).expect("json");
        assert_eq!(v["layers"][0], v["layers"][1]);
    }

    /// An OCI layout whose index.json points at a nested index with the host's manifest and a
    /// foreign platform's manifest that is not in the archive (a single-platform export).
    fn nested_layout(name_annotations: serde_json::Value, drop_host_layer: bool) -> Vec<u8> {
        let layer = tar(&[Entry::File { path: "f".into(), mode: 0o644, data: b"data".to_vec() }]);
        let config = br#"{"os":"linux"}"#.to_vec();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&layer)), "size": layer.len() }],
        }))
        .expect("json");
        let foreign = if oci_arch() == "s390x" { "ppc64le" } else { "s390x" };
        let inner = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MT_OCI_INDEX,
            "manifests": [
                { "mediaType": MT_OCI_MANIFEST, "digest": format!("sha256:{}", "ab".repeat(32)), "size": 123, "platform": { "architecture": foreign, "os": "linux" } },
                { "mediaType": MT_OCI_MANIFEST, "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(), "platform": { "architecture": oci_arch(), "os": "linux" } },
            ],
        }))
        .expect("json");
        // no mediaType in the top-level descriptor: sniffed from the blob
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [{ "digest": format!("sha256:{}", sha(&inner)), "size": inner.len(), "annotations": name_annotations }] });
        let mut entries = vec![Entry::File { path: "./oci-layout".into(), mode: 0o644, data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec() }];
        let mut blobs = vec![config, manifest, inner];
        if !drop_host_layer {
            blobs.push(layer);
        }
        for b in blobs {
            entries.push(Entry::File { path: format!("./blobs/sha256/{}", sha(&b)), mode: 0o644, data: b });
        }
        entries.push(Entry::File { path: "./index.json".into(), mode: 0o644, data: serde_json::to_vec(&index).expect("json") });
        tar(&entries)
    }

    #[test]
    fn nested_index_skips_absent_foreign_platforms_and_labels_present_children() {
        let plan = plan_bytes(nested_layout(serde_json::json!({ ANNOTATION_REF_NAME: "example.com/multi:1" }), false)).expect("plan");
        assert_eq!(plan.images.len(), 1);
        assert_eq!(plan.images[0].name, "example.com/multi:1");
        let top = plan.blobs.last().expect("blobs");
        assert_eq!(top.desc.media_type, MT_OCI_INDEX, "sniffed");
        assert_eq!(top.desc.digest, plan.images[0].target.digest);
        assert_eq!(plan.blobs.len(), 4, "config, layer, manifest, index");
        // the foreign manifest (index 0) is absent: only m.1 is referenced
        assert_eq!(top.labels.keys().collect::<Vec<_>>(), ["containerd.io/gc.ref.content.m.1"]);
    }

    #[test]
    fn missing_host_blob_and_unnamed_archives_are_errors() {
        let e = plan_bytes(nested_layout(serde_json::json!({ ANNOTATION_IMAGE_NAME: "x.io/a:1" }), true)).expect_err("missing layer");
        assert!(e.to_string().contains("not in the archive"), "{e}");
        // a bare tag names nothing
        let plan = plan_bytes(nested_layout(serde_json::json!({ ANNOTATION_REF_NAME: "latest" }), false)).expect("plan");
        assert!(plan.images.is_empty());
        let e = plan_bytes(tar(&[Entry::File { path: "x".into(), mode: 0o644, data: vec![] }])).expect_err("no layout");
        assert!(e.to_string().contains("neither index.json"), "{e}");
        let e = plan_bytes(vec![0x1f, 0x8b, 8, 0, 0, 0]).expect_err("gzip");
        assert!(e.to_string().contains("compressed"), "{e}");
    }
    proptest::proptest! {
        /// Normalising is idempotent and always yields `domain/path(:tag|@digest)`.
        #[test]
        fn normalising_is_idempotent(
            domain in proptest::option::of("[a-z]{1,8}\\.[a-z]{2,3}(:[0-9]{2,5})?"),
            path in "[a-z0-9]{1,8}(/[a-z0-9_.-]{1,8}){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let mut r = domain.map(|d| format!("{d}/")).unwrap_or_default() + &path;
            if let Some(t) = tag { r = format!("{r}:{t}"); }
            let n = normalize_reference(&r).map_err(proptest::test_runner::TestCaseError::fail)?;
            let again = normalize_reference(&n);
            proptest::prop_assert_eq!(again.as_deref(), Ok(n.as_str()));
            proptest::prop_assert!(n.contains('/') && n.rsplit('/').next().is_some_and(|last| last.contains(':')), "{}", n);
        }

        /// Every regular file tar() writes is found by TarIndex at the right offset and size.
        #[test]
        fn tar_index_finds_every_file(files in proptest::collection::btree_map("[a-z]{1,12}(/[a-z]{1,12}){0,3}", proptest::collection::vec(proptest::num::u8::ANY, 0..2000), 1..12)) {
            // a file path must not also be a directory prefix of another
            let names: Vec<&String> = files.keys().collect();
            proptest::prop_assume!(!names.iter().any(|a| names.iter().any(|b| b.starts_with(&format!("{a}/")))));
            let entries: Vec<Entry> = files.iter().map(|(p, d)| Entry::File { path: p.clone(), mode: 0o644, data: d.clone() }).collect();
            let bytes = tar(&entries);
            let idx = TarIndex::read(std::io::Cursor::new(&bytes)).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            for (p, d) in &files {
                let (off, size) = idx.get(p).ok_or_else(|| proptest::test_runner::TestCaseError::fail(format!("{p} missing")))?;
                proptest::prop_assert_eq!(&bytes[off as usize..(off + size) as usize], d.as_slice());
            }
        }
    }
}
