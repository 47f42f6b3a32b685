//! The step between fork and exec that puts a function's process in its sandbox: join the
//! replica's cgroups, get a private mount namespace with the replica's own `/tmp` (and a
//! read-only root when asked), the function's secrets on a private read-only tmpfs at
//! `/var/openfaas/secrets`, drop to the function's uid/gid, and die with fjord.
//!
//! This is the one module that needs `unsafe`: `pre_exec` runs in the forked child of a
//! multi-threaded process, so it only makes raw, async-signal-safe system calls on data
//! prepared before the fork.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::secrets::SecretMount;

/// Everything the child does before exec, prepared in the parent.
#[derive(Debug, Clone, Default)]
pub struct SandboxPlan {
    /// `cgroup.procs` files of the replica's cgroups (kept open by the replica).
    pub cgroup_procs: Vec<RawFd>,
    /// Directory bind-mounted at `/tmp` in a new mount namespace.
    pub private_tmp: Option<CString>,
    /// Working directory after the mounts (the bundle); `/tmp` when `None`.
    pub workdir: Option<CString>,
    /// Remount `/` read-only in that namespace (`readOnlyRootFilesystem`).
    pub readonly_root: bool,
    /// Drop to this uid and gid, with no supplementary groups.
    pub user: Option<(u32, u32)>,
    /// Secrets to mount (only with `private_tmp`, i.e. in a new mount namespace).
    pub secrets: Option<Arc<SecretMount>>,
    /// The function's network namespace to join (a descriptor the replica keeps open).
    pub netns: Option<RawFd>,
}

/// Mounts a tmpfs owned by the function's uid (mode 0500) at the secrets directory of this
/// mount namespace, writes one 0400 file per secret, then makes the mount read-only. Nothing
/// reaches a disk, and the tmpfs disappears with the namespace's last process.
///
/// # Safety
/// Called only from `pre_exec` (after `unshare(CLONE_NEWNS)`); raw syscalls on data prepared
/// before the fork.
unsafe fn mount_secrets(m: &SecretMount) -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: raw syscalls with NUL-terminated strings and buffers that outlive the calls.
    unsafe {
        check(libc::mount(
            c"tmpfs".as_ptr(),
            m.target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            m.options.as_ptr().cast(),
        ))?;
        for (path, value) in &m.files {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o400 as libc::c_uint,
            );
            if fd == -1 {
                return Err(io::Error::last_os_error());
            }
            let mut rest: &[u8] = value;
            while !rest.is_empty() {
                let n = libc::write(fd, rest.as_ptr().cast(), rest.len());
                if n <= 0 {
                    let e = io::Error::last_os_error();
                    libc::close(fd);
                    return Err(e);
                }
                rest = &rest[n as usize..];
            }
            let owned = libc::fchown(fd, m.uid, m.uid);
            libc::close(fd);
            check(owned)?;
        }
        check(libc::mount(
            std::ptr::null(),
            m.target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
            std::ptr::null(),
        ))
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl SandboxPlan {
    fn apply(&self) -> io::Result<()> {
        if let Some(fd) = self.netns {
            // SAFETY: setns(2) on a descriptor owned by the parent; first, while still root.
            check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })?;
        }
        for fd in &self.cgroup_procs {
            // SAFETY: plain write(2) of a static buffer to a descriptor owned by the parent.
            let n = unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(tmp) = &self.private_tmp {
            let root = c"/";
            let target = c"/tmp";
            // SAFETY: raw syscalls with NUL-terminated strings that outlive the call.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                if let Some(m) = &self.secrets {
                    mount_secrets(m)?;
                }
                check(libc::mount(
                    tmp.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                // After the binds: a bind mount copies its source mount's flags, so binding
                // /tmp from an already read-only root would make /tmp read-only too.
                if self.readonly_root {
                    check(libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
                let dir = self.workdir.as_deref().unwrap_or(target);
                check(libc::chdir(dir.as_ptr()))?;
            }
        }
        if let Some((uid, gid)) = self.user {
            // SAFETY: credential syscalls; order matters (groups and gid before uid).
            unsafe {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
        }
        // Last, because a credential change clears it: replicas die with fjord even on
        // `kill -9` (their own children are reaped through the cgroup at the next start).
        // SAFETY: prctl with integer arguments.
        unsafe {
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
        }
        Ok(())
    }

    /// Installs the plan on a command (PDEATHSIG is set even when not sandboxing).
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: `apply` only makes async-signal-safe syscalls and does not allocate.
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }
}
