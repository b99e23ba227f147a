//! Pod volumes on the host: emptyDir (a directory under the pod's dir), hostPath (the path,
//! created for `DirectoryOrCreate`/`FileOrCreate`), configMap / secret / downwardAPI / projected
//! (files rendered by [`render_files`], pure, then written under the pod's dir).
//!
//! Not yet: `emptyDir.medium: Memory` is a plain directory (no tmpfs), no atomic `..data`
//! symlink swap on updates (files are written once at pod start), PVCs and other sources are
//! rejected with a clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};

use super::translate::{field_ref, Lookups, NodeContext, VolumePaths};
use crate::error::{AgentError, Result};

/// One file of a rendered volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Path relative to the volume root.
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

fn select(data: &BTreeMap<String, Vec<u8>>, items: Option<&Vec<KeyToPath>>, default_mode: i32, what: &str, optional: bool) -> std::result::Result<Vec<File>, String> {
    let mut out = Vec::new();
    match items {
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(d) => out.push(File { path: it.path.clone(), data: d.clone(), mode: it.mode.unwrap_or(default_mode) as u32 }),
                    None if optional => {}
                    None => return Err(format!("{what}: key {} not found", it.key)),
                }
            }
        }
        None => {
            for (k, d) in data {
                out.push(File { path: k.clone(), data: d.clone(), mode: default_mode as u32 });
            }
        }
    }
    for f in &out {
        if f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(format!("{what}: path {} must be relative without '..'", f.path));
        }
    }
    Ok(out)
}

/// The files of a configMap/secret/downwardAPI/projected volume, or `None` for volume kinds
/// that are directories (emptyDir, hostPath). Errors name the missing object or key.
pub fn render_files(pod: &Pod, v: &Volume, lk: &Lookups, node: &NodeContext, pod_ip: Option<&str>) -> std::result::Result<Option<Vec<File>>, String> {
    let empty = BTreeMap::new();
    if let Some(cm) = &v.config_map {
        let optional = cm.optional.unwrap_or(false);
        let data = match lk.config_maps.get(&cm.name) {
            Some(d) => d,
            None if optional => &empty,
            None => return Err(format!("configmap \"{}\" not found", cm.name)),
        };
        return select(data, cm.items.as_ref(), cm.default_mode.unwrap_or(0o644), &format!("configmap {}", cm.name), optional).map(Some);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        let data = match lk.secrets.get(&name) {
            Some(d) => d,
            None if optional => &empty,
            None => return Err(format!("secret \"{name}\" not found")),
        };
        return select(data, s.items.as_ref(), s.default_mode.unwrap_or(0o644), &format!("secret {name}"), optional).map(Some);
    }
    if let Some(d) = &v.downward_api {
        let mut out = Vec::new();
        for it in d.items.clone().unwrap_or_default() {
            let value = match &it.field_ref {
                Some(f) => field_ref(pod, &f.field_path, pod_ip, node).ok_or_else(|| format!("unsupported fieldRef {}", f.field_path))?,
                None => return Err(format!("downwardAPI item {}: only fieldRef is supported", it.path)),
            };
            out.push(File { path: it.path.clone(), data: value.into_bytes(), mode: it.mode.or(d.default_mode).unwrap_or(0o644) as u32 });
        }
        return Ok(Some(out));
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644);
        let mut out = Vec::new();
        for src in p.sources.clone().unwrap_or_default() {
            let sub = if let Some(cm) = src.config_map {
                Volume { name: v.name.clone(), config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource { default_mode: Some(mode), items: cm.items, name: cm.name, optional: cm.optional }), ..Default::default() }
            } else if let Some(s) = src.secret {
                Volume { name: v.name.clone(), secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource { default_mode: Some(mode), items: s.items, secret_name: Some(s.name), optional: s.optional }), ..Default::default() }
            } else if let Some(d) = src.downward_api {
                Volume { name: v.name.clone(), downward_api: Some(k8s_openapi::api::core::v1::DownwardAPIVolumeSource { default_mode: Some(mode), items: d.items }), ..Default::default() }
            } else {
                return Err("projected volume: only configMap, secret and downwardAPI sources are supported (no service account tokens)".into());
            };
            out.extend(render_files(pod, &sub, lk, node, pod_ip)?.unwrap_or_default());
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// ConfigMaps and Secrets a pod references (volumes, env, envFrom): (configmaps, secrets).
pub fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in spec.volumes.clone().unwrap_or_default() {
        if let Some(cm) = v.config_map {
            cms.push(cm.name);
        }
        if let Some(s) = v.secret.and_then(|s| s.secret_name) {
            secrets.push(s);
        }
        for src in v.projected.and_then(|p| p.sources).unwrap_or_default() {
            if let Some(cm) = src.config_map {
                cms.push(cm.name);
            }
            if let Some(s) = src.secret {
                secrets.push(s.name);
            }
        }
    }
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for e in c.env_from.clone().unwrap_or_default() {
            if let Some(r) = e.config_map_ref {
                cms.push(r.name);
            }
            if let Some(r) = e.secret_ref {
                secrets.push(r.name);
            }
        }
        for e in c.env.clone().unwrap_or_default() {
            if let Some(vf) = e.value_from {
                if let Some(r) = vf.config_map_key_ref {
                    cms.push(r.name);
                }
                if let Some(r) = vf.secret_key_ref {
                    secrets.push(r.name);
                }
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Creates every volume of `pod` under `pod_dir` and returns name → host path.
pub fn materialise(pod: &Pod, pod_dir: &Path, lk: &Lookups, node: &NodeContext, pod_ip: Option<&str>) -> Result<VolumePaths> {
    let pod_name = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""));
    let mut out = BTreeMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        let path: PathBuf = if v.empty_dir.is_some() {
            let p = pod_dir.join("empty-dir").join(&v.name);
            std::fs::create_dir_all(&p).map_err(AgentError::io("creating emptyDir", &p))?;
            set_mode(&p, 0o777)?;
            p
        } else if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(AgentError::io("creating hostPath", &p))?,
                "FileOrCreate" if !p.exists() => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(AgentError::io("creating hostPath parent", parent))?;
                    }
                    std::fs::write(&p, b"").map_err(AgentError::io("creating hostPath file", &p))?;
                }
                "Directory" if !p.is_dir() => return Err(AgentError::Pod { pod: pod_name, detail: format!("hostPath {} is not a directory", p.display()) }),
                "File" if !p.is_file() => return Err(AgentError::Pod { pod: pod_name, detail: format!("hostPath {} is not a file", p.display()) }),
                _ => {}
            }
            p
        } else {
            match render_files(pod, &v, lk, node, pod_ip).map_err(|detail| AgentError::Pod { pod: pod_name.clone(), detail })? {
                Some(files) => {
                    let root = pod_dir.join("files").join(&v.name);
                    let _ = std::fs::remove_dir_all(&root);
                    std::fs::create_dir_all(&root).map_err(AgentError::io("creating volume dir", &root))?;
                    for f in files {
                        let p = root.join(&f.path);
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).map_err(AgentError::io("creating volume dir", parent))?;
                        }
                        std::fs::write(&p, &f.data).map_err(AgentError::io("writing volume file", &p))?;
                        set_mode(&p, f.mode)?;
                    }
                    root
                }
                None => return Err(AgentError::Pod { pod: pod_name, detail: format!("volume {}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected are supported", v.name) }),
            }
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(AgentError::io("chmod", p))
}
