//! Finding the host's world-writable directories once at start, for the sandbox to hide:
//! without this, functions could leave files in `/var/tmp`, `/dev/shm` or `/run/lock` that
//! outlive them and that other functions (or a later function given the same uid) read, even
//! with `readOnlyRootFilesystem` (those are separate mounts a read-only root does not cover).
//!
//! A full walk of the filesystem is too slow for a start (seconds); the walk covers the
//! well-known scratch directories, every mount point, and three levels below `/`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::sandbox::HostMasks;

/// Scratch directories that get a private, empty, size-limited tmpfs.
const SCRATCH: [&str; 5] = ["/var/tmp", "/dev/shm", "/run/lock", "/run/shm", "/var/lock"];
const MQUEUE: &str = "/dev/mqueue";
/// Not walked: replaced by the sandbox (`/tmp`, `/proc`) or not a place for files.
const SKIP: [&str; 3] = ["/tmp", "/proc", "/sys"];
const DEPTH: usize = 3;

fn world_writable_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o002 != 0)
}

/// Mount points from `/proc/self/mountinfo` (octal escapes such as `\040` decoded).
fn mount_points() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|raw| {
            let b = raw.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\'
                    && i + 3 < b.len()
                    && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
                {
                    out.push(v);
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            PathBuf::from(std::ffi::OsStr::from_bytes(&out))
        })
        .collect()
}

fn walk(dir: &Path, depth: usize, skip: &dyn Fn(&Path) -> bool, found: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        // Not following symlinks: the mount goes on the real directory, found on its own.
        if !e.file_type().is_ok_and(|t| t.is_dir()) || skip(&p) {
            continue;
        }
        if world_writable_dir(&p) {
            // Everything below is hidden with it.
            found.insert(p);
        } else if depth > 1 {
            walk(&p, depth - 1, skip, found);
        }
    }
}

fn cstr(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

/// The directories to hide, except those under `data_dir` (private to root already). One that
/// holds `data_dir` is made read-only rather than hidden: functions run from bundles in there.
pub(crate) fn discover(data_dir: &Path) -> HostMasks {
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let skip = |p: &Path| SKIP.iter().any(|s| p.starts_with(s)) || p.starts_with(&data_dir);
    let mut scratch = BTreeSet::new();
    let mut found = BTreeSet::new();
    for s in SCRATCH {
        // `/var/lock` is usually a symlink to `/run/lock`.
        if let Ok(real) = std::fs::canonicalize(s)
            && real.is_dir()
            && !skip(&real)
        {
            if data_dir.starts_with(&real) {
                // An empty tmpfs would hide the bundles functions run from: read-only instead.
                found.insert(real);
            } else {
                scratch.insert(real);
            }
        }
    }
    let mqueue = Path::new(MQUEUE);
    let mqueue = mqueue.is_dir().then(|| mqueue.to_path_buf());
    for m in mount_points() {
        if !skip(&m) && world_writable_dir(&m) {
            found.insert(m);
        }
    }
    walk(Path::new("/"), DEPTH, &skip, &mut found);
    let readonly: Vec<CString> = found
        .iter()
        .filter(|p| {
            !scratch.iter().any(|s| p.starts_with(s))
                && mqueue.as_deref().is_none_or(|q| !p.starts_with(q))
                // Below another one: already hidden.
                && !found.iter().any(|o| o != *p && p.starts_with(o))
        })
        .filter_map(|p| cstr(p))
        .collect();
    HostMasks {
        scratch: scratch.iter().filter_map(|p| cstr(p)).collect(),
        readonly,
        mqueue: mqueue.as_deref().and_then(cstr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_usual_scratch_dirs_and_never_tmp() {
        let m = discover(Path::new("/nonexistent-data-dir"));
        let all: Vec<&str> = m
            .scratch
            .iter()
            .chain(&m.readonly)
            .map(|c| c.to_str().unwrap())
            .collect();
        assert!(all.contains(&"/var/tmp"), "{all:?}");
        assert!(all.contains(&"/dev/shm"), "{all:?}");
        assert!(
            !all.iter()
                .any(|p| p.starts_with("/tmp") || p.starts_with("/proc")),
            "{all:?}"
        );
    }
}
