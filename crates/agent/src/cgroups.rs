//! Removing the agent's cgroupfs directories (pods under `/dari/<node>/pod<uid>`): runc removes
//! each container's cgroup, but the parents it created stay behind unless someone rmdirs them.

use std::path::{Path, PathBuf};

/// The cgroup file system root.
pub const ROOT: &str = "/sys/fs/cgroup";

fn subdirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let p = e.path();
                subdirs(&p, out);
                out.push(p);
            }
        }
    }
}

/// rmdirs `cgroup` (e.g. `/dari/node1/pod<uid>`) and its empty descendants in every hierarchy
/// under `root` (v1 controllers and the unified one). Busy cgroups (with processes) are left
/// alone. Returns how many directories were removed.
pub fn remove(root: &Path, cgroup: &str) -> usize {
    let rel = cgroup.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return 0;
    }
    let mut removed = 0;
    let Ok(hierarchies) = std::fs::read_dir(root) else { return 0 };
    for h in hierarchies.flatten() {
        let target = h.path().join(rel);
        if !target.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        subdirs(&target, &mut dirs);
        dirs.push(target);
        for d in dirs {
            if std::fs::remove_dir(&d).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_tree_in_every_hierarchy_and_nothing_else() {
        let root = tempfile::tempdir().expect("tempdir");
        for h in ["cpu", "memory"] {
            std::fs::create_dir_all(root.path().join(h).join("dari/n1/podA/ctr1")).expect("mkdir");
            std::fs::create_dir_all(root.path().join(h).join("dari/n1/podB")).expect("mkdir");
        }
        assert_eq!(remove(root.path(), "/dari/n1/podA"), 4);
        assert!(!root.path().join("cpu/dari/n1/podA").exists());
        assert!(root.path().join("memory/dari/n1/podB").exists());
        assert_eq!(remove(root.path(), "/"), 0);
        assert_eq!(remove(root.path(), "/dari/../etc"), 0);
    }
}
