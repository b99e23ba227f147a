//! Small file helpers: atomic writes with explicit modes, reads that name the path.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::PkiError;

/// Permission class of a written file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileMode {
    /// 0600: private keys, kubeconfigs.
    Secret,
    /// 0644: certificates.
    Public,
}

impl FileMode {
    fn bits(self) -> u32 {
        match self {
            FileMode::Secret => 0o600,
            FileMode::Public => 0o644,
        }
    }
}

/// Writes `data` to `path` via a temporary file in the same directory, fsync and rename, so a
/// crash never leaves a half-written key. The final mode is set explicitly (umask-independent).
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: FileMode) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode.bits())
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode.bits()))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Reads a UTF-8 file, `Ok(None)` if it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}
