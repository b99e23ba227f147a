//! OCI image-layout archives without a registry or any tool: a deterministic ustar writer,
//! the layer / config / manifest / index.json blobs, and a reader that checks an archive
//! (used by tests and `dari lab images --check`).
//!
//! Archive layout (what `ctr -n k8s.io images import FILE` accepts):
//!
//! ```text
//! oci-layout                      {"imageLayoutVersion":"1.0.0"}
//! index.json                      manifests[i].annotations["io.containerd.image.name"] = NAME
//! blobs/sha256/<layer>            an uncompressed tar (application/vnd.oci.image.layer.v1.tar)
//! blobs/sha256/<config>           architecture, os, Entrypoint/Cmd/Env, rootfs.diff_ids
//! blobs/sha256/<manifest>
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Directory.
    Dir {
        /// Mode bits.
        mode: u32,
    },
    /// Regular file.
    File {
        /// Mode bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// Symbolic link.
    Symlink {
        /// Target.
        target: String,
    },
}

/// A layer as path (no leading `/`) → entry. Parent directories are added by [`Layer::tar`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    /// The entries.
    pub entries: BTreeMap<String, Entry>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/').trim_end_matches('/').to_string()
}

impl Layer {
    /// Adds (or replaces) a file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.entries.insert(clean(path), Entry::File { mode, data });
    }

    /// Adds a file unless the path is taken.
    pub fn file_if_absent(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.entries.entry(clean(path)).or_insert(Entry::File { mode, data });
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entries.insert(clean(path), Entry::Dir { mode });
    }

    /// Adds a symlink unless the path is taken.
    pub fn symlink_if_absent(&mut self, path: &str, target: &str) {
        self.entries.entry(clean(path)).or_insert(Entry::Symlink { target: target.into() });
    }

    /// Whether a path exists.
    pub fn has(&self, path: &str) -> bool {
        self.entries.contains_key(&clean(path))
    }

    /// The layer as an uncompressed tar, entries sorted, parents first, all owned by root,
    /// mtime 0: the same layer always gives the same bytes (and digest).
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut all: BTreeMap<String, Entry> = BTreeMap::new();
        for (p, e) in &self.entries {
            let mut cur = String::new();
            let parts: Vec<&str> = p.split('/').collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                if !cur.is_empty() {
                    cur.push('/');
                }
                cur.push_str(part);
                all.entry(cur.clone()).or_insert(Entry::Dir { mode: 0o755 });
            }
            all.insert(p.clone(), e.clone());
        }
        let mut out = Vec::new();
        for (p, e) in &all {
            match e {
                Entry::Dir { mode } => push_header(&mut out, &format!("{p}/"), *mode, 0, b'5', "")?,
                Entry::File { mode, data } => {
                    push_header(&mut out, p, *mode, data.len() as u64, b'0', "")?;
                    push_data(&mut out, data);
                }
                Entry::Symlink { target } => push_header(&mut out, p, 0o777, 0, b'2', target)?,
            }
        }
        out.extend_from_slice(&[0u8; 1024]);
        Ok(out)
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn push_header(out: &mut Vec<u8>, path: &str, mode: u32, size: u64, kind: u8, link: &str) -> Result<()> {
    let mut h = [0u8; 512];
    let (prefix, name) = split_path(path).ok_or_else(|| LabError::Image {
        image: "-".into(),
        reason: format!("path too long for ustar: {path}"),
    })?;
    if link.len() > 100 {
        return Err(LabError::Image { image: "-".into(), reason: format!("symlink target too long: {link}") });
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    Ok(())
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn split_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    // ustar: prefix (<=155) + '/' + name (<=100), split at a slash.
    let bytes = path.as_bytes();
    for i in (0..bytes.len()).rev() {
        if bytes[i] == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0 {
            return Some((&path[..i], &path[i + 1..]));
        }
    }
    None
}

/// One file read back from a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path as stored.
    pub path: String,
    /// Type flag (`0` file, `5` dir, `2` symlink).
    pub kind: u8,
    /// Mode bits.
    pub mode: u32,
    /// Link target.
    pub link: String,
    /// Content.
    pub data: Vec<u8>,
}

fn parse_octal(f: &[u8]) -> u64 {
    let s: String = f.iter().take_while(|b| **b != 0 && **b != b' ').map(|b| *b as char).collect();
    u64::from_str_radix(s.trim(), 8).unwrap_or(0)
}

fn cstr(f: &[u8]) -> String {
    String::from_utf8_lossy(&f[..f.iter().position(|b| *b == 0).unwrap_or(f.len())]).into_owned()
}

/// Reads a ustar archive (what [`Layer::tar`] writes), checking header checksums.
pub fn read_tar(bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let bad = |r: String| LabError::Image { image: "-".into(), reason: r };
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= bytes.len() {
        let h = &bytes[off..off + 512];
        if h.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        let mut hc = [0u8; 512];
        hc.copy_from_slice(h);
        hc[148..156].copy_from_slice(b"        ");
        let sum: u64 = hc.iter().map(|b| u64::from(*b)).sum();
        if sum != parse_octal(&h[148..156]) {
            return Err(bad(format!("bad header checksum at offset {off}")));
        }
        let name = cstr(&h[0..100]);
        let prefix = cstr(&h[345..500]);
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let size = usize::try_from(parse_octal(&h[124..136])).map_err(|_| bad("size".into()))?;
        let start = off + 512;
        let end = start.checked_add(size).filter(|e| *e <= bytes.len()).ok_or_else(|| bad(format!("{path}: truncated")))?;
        out.push(TarEntry {
            path,
            kind: h[156],
            mode: u32::try_from(parse_octal(&h[100..108])).unwrap_or(0),
            link: cstr(&h[157..257]),
            data: bytes[start..end].to_vec(),
        });
        off = start + size.div_ceil(512) * 512;
    }
    Err(bad("archive has no end-of-archive marker".into()))
}

/// What goes into the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// Env, `K=V`.
    pub env: Vec<String>,
    /// Exposed TCP ports.
    pub ports: Vec<u16>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: String,
}

/// `sha256:<hex>`.
pub fn digest(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    let mut s = String::from("sha256:");
    for x in d.iter() {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// The GOARCH-style name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// A whole image-layout archive for one layer under every name in `names` (full references,
/// e.g. `docker.io/library/nginx:latest`).
pub fn archive(names: &[String], cfg: &ImageConfig, layer_tar: &[u8]) -> Result<Vec<u8>> {
    let layer_digest = digest(layer_tar);
    let mut config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": cfg.env,
            "WorkingDir": if cfg.workdir.is_empty() { "/" } else { cfg.workdir.as_str() },
            "Labels": cfg.labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "dari lab stand-in image (built from host binaries)" }],
    });
    if !cfg.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(cfg.entrypoint);
    }
    if !cfg.cmd.is_empty() {
        config["config"]["Cmd"] = json!(cfg.cmd);
    }
    if !cfg.ports.is_empty() {
        let m: serde_json::Map<String, Value> = cfg.ports.iter().map(|p| (format!("{p}/tcp"), json!({}))).collect();
        config["config"]["ExposedPorts"] = Value::Object(m);
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|e| LabError::Image { image: names.join(","), reason: e.to_string() })?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config_bytes), "size": config_bytes.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_tar.len() }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| LabError::Image { image: names.join(","), reason: e.to_string() })?;
    let manifests: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(&manifest_bytes),
                "size": manifest_bytes.len(),
                "annotations": {
                    "io.containerd.image.name": n,
                    "org.opencontainers.image.ref.name": n.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest"),
                },
                "platform": { "architecture": oci_arch(), "os": "linux" },
            })
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
    let index_bytes = serde_json::to_vec(&index).map_err(|e| LabError::Image { image: names.join(","), reason: e.to_string() })?;
    let mut outer = Layer::default();
    outer.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    outer.file("index.json", 0o644, index_bytes);
    for b in [layer_tar.to_vec(), config_bytes, manifest_bytes] {
        let d = digest(&b);
        outer.file(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")), 0o644, b);
    }
    outer.tar()
}

/// What [`check_archive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// The `io.containerd.image.name` annotations.
    pub names: Vec<String>,
    /// The image config.
    pub config: Value,
    /// Paths in the (single) layer.
    pub layer_paths: Vec<TarEntry>,
}

/// Checks an archive the way an importer would: oci-layout, index.json, every referenced blob
/// present with the right digest and size, one manifest, config diff_ids = layer digest.
pub fn check_archive(bytes: &[u8]) -> Result<ArchiveInfo> {
    let bad = |r: String| LabError::Image { image: "-".into(), reason: r };
    let entries = read_tar(bytes)?;
    let file = |p: &str| entries.iter().find(|e| e.path == p && e.kind == b'0').map(|e| e.data.clone());
    let blob = |d: &str, size: u64| -> Result<Vec<u8>> {
        let b = file(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))).ok_or_else(|| bad(format!("blob {d} missing")))?;
        if digest(&b) != d || b.len() as u64 != size {
            return Err(bad(format!("blob {d}: digest or size mismatch")));
        }
        Ok(b)
    };
    let layout: Value = serde_json::from_slice(&file("oci-layout").ok_or_else(|| bad("oci-layout missing".into()))?)
        .map_err(|e| bad(format!("oci-layout: {e}")))?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        return Err(bad("oci-layout: imageLayoutVersion is not 1.0.0".into()));
    }
    let index: Value = serde_json::from_slice(&file("index.json").ok_or_else(|| bad("index.json missing".into()))?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    let ms = index["manifests"].as_array().ok_or_else(|| bad("index.json: no manifests".into()))?;
    let mut names = Vec::new();
    let mut manifest = None;
    for m in ms {
        let name = m["annotations"]["io.containerd.image.name"].as_str().ok_or_else(|| bad("manifest without image name".into()))?;
        names.push(name.to_string());
        let d = m["digest"].as_str().unwrap_or_default();
        let b = blob(d, m["size"].as_u64().unwrap_or(0))?;
        manifest = Some(serde_json::from_slice::<Value>(&b).map_err(|e| bad(format!("manifest: {e}")))?);
    }
    let manifest = manifest.ok_or_else(|| bad("no manifest".into()))?;
    let c = &manifest["config"];
    let config: Value = serde_json::from_slice(&blob(c["digest"].as_str().unwrap_or_default(), c["size"].as_u64().unwrap_or(0))?)
        .map_err(|e| bad(format!("config: {e}")))?;
    let layers = manifest["layers"].as_array().ok_or_else(|| bad("manifest: no layers".into()))?;
    let mut layer_paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let d = l["digest"].as_str().unwrap_or_default();
        let b = blob(d, l["size"].as_u64().unwrap_or(0))?;
        if config["rootfs"]["diff_ids"][i].as_str() != Some(d) {
            return Err(bad(format!("config diff_id {i} does not match layer {d}")));
        }
        layer_paths.extend(read_tar(&b)?);
    }
    Ok(ArchiveInfo { names, config, layer_paths })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_determinism() {
        let mut l = Layer::default();
        l.file("/bin/busybox", 0o755, b"\x7fELF...".to_vec());
        l.symlink_if_absent("/bin/sh", "busybox");
        let long = format!("usr/{}/x", "d".repeat(120));
        l.file(&long, 0o644, vec![7; 600]);
        let t = l.tar().unwrap();
        assert_eq!(t, l.tar().unwrap());
        let e = read_tar(&t).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"bin/"));
        assert!(paths.contains(&long.as_str()));
        let sh = e.iter().find(|e| e.path == "bin/sh").unwrap();
        assert_eq!((sh.kind, sh.link.as_str()), (b'2', "busybox"));
        let a = archive(&["docker.io/library/busybox:latest".into()], &ImageConfig { cmd: vec!["sh".into()], ..Default::default() }, &t).unwrap();
        let info = check_archive(&a).unwrap();
        assert_eq!(info.names, vec!["docker.io/library/busybox:latest"]);
        assert_eq!(info.config["config"]["Cmd"][0], "sh");
        // A flipped byte in a blob is caught.
        let mut broken = a.clone();
        let pos = broken.windows(7).position(|w| w == b"\x7fELF...").unwrap();
        broken[pos + 1] = b'X';
        assert!(check_archive(&broken).is_err());
    }
}
