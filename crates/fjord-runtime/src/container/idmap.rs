//! The ids a container function's image users map to: each function gets its own range of
//! 65,536 host ids (container 0..65535 → host `first..`), and its replicas see the image's
//! layers through idmapped mounts of that range, so the image's files keep their owners
//! inside (a `USER app` image owns its home) while the shared layer store stays owned by
//! the ids in the tar files, never written.
//!
//! Raw syscalls: libc has the calls (`open_tree`, `mount_setattr`, `move_mount`, a clone
//! into a new user namespace) that nix and rustix do not wrap.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fjord_core::FunctionKey;

/// Ids per function: container ids `0..RANGE` (`nobody` is 65534).
pub const RANGE: u32 = 65_536;

/// Where a runtime's ranges come from: called once, on the first container function
/// (the gateway reserves a host-wide block in the uid registry). `Ok((first, ranges))`.
pub type IdBlockSource = Arc<dyn Fn() -> Result<(u32, u32), String> + Send + Sync>;

/// One function's range, and a user namespace with its mapping (what
/// `mount_setattr(MOUNT_ATTR_IDMAP)` takes).
#[derive(Debug)]
pub(crate) struct IdMap {
    /// Container root's host id.
    pub first: u32,
    userns: OwnedFd,
}

fn os_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

impl IdMap {
    /// A user namespace mapping container `0..RANGE` to host `first..`: a child made in a
    /// new one (as fork does: no exec), mapped by fjord, its namespace kept open, killed.
    pub(crate) fn new(first: u32) -> std::io::Result<Self> {
        // SAFETY: a fork-like clone (no new stack: the child runs on a copy of this one);
        // the child calls only async-signal-safe functions until it is killed.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(os_err("cannot make a user namespace"));
        }
        if pid == 0 {
            // SAFETY: the child: waits for its SIGKILL (or its parent's death).
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            }
        }
        let pid = pid as libc::pid_t;
        let made = (|| {
            let map = format!("0 {first} {RANGE}\n");
            std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
            std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
        })();
        let child = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
        Ok(Self {
            first,
            userns: made.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot map the user namespace: {e}"))
            })?,
        })
    }

    /// A read-only clone of the directory `src` whose files' owners are shifted into this
    /// range (a file of uid 1000 shows as `first + 1000`; ids beyond the range as nobody),
    /// detached: alive while the descriptor is, and usable as an overlay's lower layer
    /// through `/proc/self/fd/N` without being mounted anywhere.
    pub(crate) fn tree(&self, src: &Path) -> std::io::Result<OwnedFd> {
        idmapped_tree(src, self.userns.as_fd())
    }
}

fn idmapped_tree(src: &Path, userns: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let src_c = c_path(src)?;
    // SAFETY: plain syscalls on valid C strings; the returned descriptor is owned at once.
    let tree = unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        );
        if fd < 0 {
            return Err(os_err(&format!("open_tree {}", src.display())));
        }
        OwnedFd::from_raw_fd(fd as i32)
    };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP
            | libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` lives across the call, its size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(os_err(&format!("idmapped mount of {}", src.display())));
    }
    Ok(tree)
}

/// Whether idmapped mounts of `dir` work (kernel ≥ 5.12 and a filesystem that has them:
/// ext4, xfs, btrfs, tmpfs ≥ 6.3…) as overlay lower layers while detached (kernel ≥ 6.5
/// or so), tried with a throwaway identity mapping in a namespace of its own.
pub(crate) fn supported(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".idmap-probe-{}", std::process::id()));
    let src = probe.join("src");
    let below = probe.join("below");
    let target = probe.join("target");
    let tried = (|| {
        for d in [&src, &below, &target] {
            std::fs::create_dir_all(d)?;
        }
        let tree = IdMap::new(0)?.tree(&src)?;
        // Two layers, as an image's (one directory twice is refused: "conflicting lowerdir").
        let options = format!(
            "lowerdir=/proc/self/fd/{}:{}",
            tree.as_raw_fd(),
            below.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(options.as_str()),
        )
        .map_err(|e| {
            std::io::Error::other(format!("an overlay over a detached idmapped tree: {e}"))
        })?;
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        Ok::<(), std::io::Error>(())
    })();
    let _ = std::fs::remove_dir_all(&probe);
    tried.map_err(|e| e.to_string())
}

/// The ranges of one runtime: a function keeps its range while it exists (across updates),
/// and a range freed by a removed function goes to a new one only after every other range
/// has been used since (round robin).
pub(crate) struct Ranges {
    source: IdBlockSource,
    state: Mutex<RangesState>,
}

#[derive(Default)]
struct RangesState {
    /// `(first id, number of ranges)`, once reserved.
    block: Option<(u32, u32)>,
    next: u32,
    by_function: HashMap<FunctionKey, (u32, Arc<IdMap>)>,
}

impl std::fmt::Debug for Ranges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranges").finish_non_exhaustive()
    }
}

impl Ranges {
    pub(crate) fn new(source: IdBlockSource) -> Self {
        Self {
            source,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RangesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The function's range, given one if it has none yet.
    pub(crate) fn get_or_assign(&self, key: &FunctionKey) -> Result<Arc<IdMap>, String> {
        let mut s = self.lock();
        if let Some((_, m)) = s.by_function.get(key) {
            return Ok(m.clone());
        }
        let (first, count) = match s.block {
            Some(b) => b,
            None => {
                let b = (self.source)()?;
                s.block = Some(b);
                b
            }
        };
        let used: std::collections::HashSet<u32> =
            s.by_function.values().map(|(i, _)| *i).collect();
        let Some(index) = (0..count)
            .map(|k| (s.next + k) % count)
            .find(|i| !used.contains(i))
        else {
            return Err(format!(
                "all {count} id ranges of this server's container functions are in use: remove a container function first"
            ));
        };
        let map = Arc::new(IdMap::new(first + index * RANGE).map_err(|e| e.to_string())?);
        s.next = (index + 1) % count;
        s.by_function.insert(key.clone(), (index, map.clone()));
        Ok(map)
    }

    /// Frees the function's range (every replica of it is gone).
    pub(crate) fn release(&self, key: &FunctionKey) {
        self.lock().by_function.remove(key);
    }
}
