//! A function's secrets as its processes see them: one read-only file per secret in
//! `/var/openfaas/secrets/` (as in OpenFaaS), readable only by the function's uid.
//!
//! Sandboxed (root), the files live only in a tmpfs mounted inside each function process's
//! own mount namespace (see `sandbox.rs`): they never touch a disk and no other uid can reach
//! them. Not root, they are written to a private (0700) directory on `/dev/shm` (tmpfs) and
//! `FJORD_SECRETS_DIR` tells the function where.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

/// Where functions find their secrets, as in OpenFaaS.
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";

/// Environment variable naming the directory with the function's secrets (set only for
/// functions that have secrets).
pub const SECRETS_DIR_ENV: &str = "FJORD_SECRETS_DIR";

pub use fjord_runtime_api::SecretFiles;

/// What the sandbox needs to build the secrets tmpfs in a child, prepared before the fork.
pub(crate) struct SecretMount {
    pub target: CString,
    /// tmpfs mount options: owner, mode 0500, size.
    pub options: CString,
    /// Full path in the namespace, and content.
    pub files: Vec<(CString, Arc<Zeroizing<Vec<u8>>>)>,
    pub uid: u32,
}

impl std::fmt::Debug for SecretMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretMount")
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl SecretMount {
    pub fn new(secrets: &SecretFiles, uid: u32) -> std::io::Result<Option<Self>> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let mut size = 64 << 10;
        let mut files = Vec::with_capacity(secrets.names().count());
        for (name, value) in secrets.iter() {
            size += value.len().div_ceil(4096) * 4096 + 4096;
            let path =
                CString::new(format!("{SECRETS_MOUNT}/{name}")).map_err(std::io::Error::other)?;
            files.push((path, value.clone()));
        }
        Ok(Some(Self {
            target: CString::new(SECRETS_MOUNT).map_err(std::io::Error::other)?,
            options: CString::new(format!("mode=0500,uid={uid},gid={uid},size={size}"))
                .map_err(std::io::Error::other)?,
            files,
            uid,
        }))
    }
}

/// Creates the mount point on the host (an empty root-owned directory): a mount needs an
/// existing directory, even in a private namespace.
pub(crate) fn ensure_mount_point() -> std::io::Result<()> {
    std::fs::create_dir_all(SECRETS_MOUNT)
}

/// Not sandboxed: writes the secrets into a fresh private directory on tmpfs (`/dev/shm`),
/// else in `fallback` (on disk: documented). Returns the directory.
pub(crate) fn write_private_dir(
    secrets: &SecretFiles,
    replica: &str,
    fallback: &Path,
) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.join(format!("fjord-{}-{replica}", std::process::id()))
    } else {
        fallback.to_path_buf()
    };
    // `create`, not `create_all`: a directory someone else made first is refused.
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    for (name, value) in secrets.iter() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(dir.join(name))?;
        f.write_all(value)?;
    }
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o500))?;
    Ok(dir)
}

/// Removes a directory made by [`write_private_dir`].
pub(crate) fn remove_private_dir(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_only() {
        let mut s = SecretFiles::default();
        s.push("api-key".into(), Zeroizing::new(b"hunter2".to_vec()));
        let d = format!("{s:?}");
        assert!(d.contains("api-key"));
        assert!(!d.contains("hunter2"));
        let m = SecretMount::new(&s, 2_000_001).unwrap().unwrap();
        assert_eq!(
            m.files[0].0.to_str().unwrap(),
            "/var/openfaas/secrets/api-key"
        );
        assert!(
            m.options
                .to_str()
                .unwrap()
                .starts_with("mode=0500,uid=2000001,gid=2000001,")
        );
        let dm = format!("{m:?}");
        assert!(dm.contains("api-key") && !dm.contains("hunter2") && !dm.contains("104"));
    }
}
