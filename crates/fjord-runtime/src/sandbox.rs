//! The step between fork and exec that puts a function's process in its sandbox: join the
//! replica's cgroups, get private mount and IPC namespaces with the replica's own `/tmp` (a
//! size-limited tmpfs), private scratch tmpfs over the host's world-writable directories, a
//! procfs that hides other users' processes, a read-only root when asked, the function's
//! secrets on a private read-only tmpfs at `/var/openfaas/secrets`; then drop every
//! capability, become the function's uid/gid, die with fjord, set no-new-privs, mark every
//! inherited descriptor close-on-exec, and install the seccomp filter. Before the fork, the
//! spawning thread points its children at the replica's PID namespace ([`PidNs`]).
//!
//! This is the one module that needs `unsafe`: `pre_exec` runs in the forked child of a
//! multi-threaded process, so it only makes raw, async-signal-safe system calls on data
//! prepared before the fork.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use crate::seccomp::Filters;
use crate::secrets::SecretMount;

/// Everything the child does before exec, prepared in the parent (once per replica).
#[derive(Debug, Default)]
pub struct SandboxPlan {
    /// `cgroup.procs` files of the replica's cgroups (kept open by the replica).
    pub cgroup_procs: Vec<RawFd>,
    /// Directory bind-mounted at `/tmp` in a new mount namespace (the replica's tmpfs).
    pub private_tmp: Option<CString>,
    /// Working directory after the mounts (the bundle's mount point); `/tmp` when `None`.
    pub workdir: Option<CString>,
    /// The function's unpacked bundle on the host, bound read-only at
    /// [`crate::program::BUNDLE_MOUNT`] (with `private_tmp`): the function never walks the
    /// data dir's parents, which may be private (`/root` is 0700).
    pub bundle: Option<CString>,
    /// Remount `/` read-only in that namespace (`readOnlyRootFilesystem`).
    pub readonly_root: bool,
    /// Drop to this uid and gid, with no supplementary groups.
    pub user: Option<(u32, u32)>,
    /// Secrets to mount (only with `private_tmp`, i.e. in a new mount namespace).
    pub secrets: Option<Arc<SecretMount>>,
    /// The function's network namespace to join (a descriptor the replica keeps open).
    pub netns: Option<RawFd>,
    /// The host's world-writable directories, hidden in that namespace (with `private_tmp`).
    pub masks: Option<Arc<HostMasks>>,
    /// tmpfs options of the private scratch directories (`/dev/shm`, `/var/tmp`, ...).
    pub scratch_options: Option<CString>,
    /// Empty the capability bounding, inheritable and ambient sets (running as root).
    pub drop_caps: bool,
    /// Installed last, right before exec.
    pub seccomp: Option<Arc<Filters>>,
    /// Highest descriptor to mark close-on-exec where `close_range` cannot (kernel < 5.11).
    pub max_fd: i32,
}

/// The host's world-writable directories, found once at start: a function gets a private,
/// size-limited tmpfs over the scratch ones and sees the others read-only, so nothing it
/// writes outside its own `/tmp` reaches the host or another function.
#[derive(Debug, Default)]
pub struct HostMasks {
    /// Well-known scratch directories (`/var/tmp`, `/dev/shm`, `/run/lock`): private tmpfs.
    pub scratch: Vec<CString>,
    /// Other world-writable directories: bound read-only over themselves.
    pub readonly: Vec<CString>,
    /// `/dev/mqueue`: a fresh mqueue mount for the process's own IPC namespace.
    pub mqueue: Option<CString>,
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

/// The bundle's mount point, NUL-terminated for the raw syscalls.
const BUNDLE_MOUNT: &std::ffi::CStr = c"/home/app";
const _: () = assert!(
    BUNDLE_MOUNT.to_bytes().len() == crate::program::BUNDLE_MOUNT.len(),
    "BUNDLE_MOUNT and program::BUNDLE_MOUNT must name the same directory"
);

/// Binds `src` at `target`, then makes that bind read-only, nosuid and nodev (exec stays
/// allowed: the bundle holds the function's program).
///
/// # Safety
/// Called only from `pre_exec`, in a new mount namespace; raw syscalls.
unsafe fn bind_readonly(src: &CString, target: &std::ffi::CStr) -> io::Result<()> {
    let null = std::ptr::null();
    // SAFETY: raw syscalls with NUL-terminated strings that outlive the calls.
    unsafe {
        check(libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            null,
            libc::MS_BIND,
            null.cast(),
        ))?;
        check(libc::mount(
            null,
            target.as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            null.cast(),
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

/// `capset(2)` header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Hides the host's world-writable directories in this mount namespace.
///
/// # Safety
/// Called only from `pre_exec`, in a new mount namespace; raw syscalls.
unsafe fn mask_host_dirs(m: &HostMasks, options: &CString, readonly: bool) -> io::Result<()> {
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    let null = std::ptr::null();
    // SAFETY: raw syscalls with NUL-terminated strings that outlive the calls.
    unsafe {
        for dir in &m.scratch {
            check(libc::mount(
                c"tmpfs".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                options.as_ptr().cast(),
            ))?;
        }
        for dir in &m.readonly {
            check(libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                null.cast(),
            ))?;
            check(libc::mount(
                null,
                dir.as_ptr(),
                null,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                null.cast(),
            ))?;
        }
        if let Some(mq) = &m.mqueue {
            // After CLONE_NEWIPC: shows only this process's own message queues.
            check(libc::mount(
                c"mqueue".as_ptr(),
                mq.as_ptr(),
                c"mqueue".as_ptr(),
                flags,
                null.cast(),
            ))?;
        }
        // A procfs of its own where other users' processes are invisible (`hidepid`): no
        // other function's or the gateway's command line, environment or fds. Mounted from
        // inside the replica's PID namespace, it lists that namespace's processes only.
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let mounted = libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            proc_flags,
            c"hidepid=invisible".as_ptr().cast(),
        );
        if mounted == -1 && *libc::__errno_location() == libc::EINVAL {
            // Kernels before 5.8 know only the number.
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                proc_flags,
                c"hidepid=2".as_ptr().cast(),
            ))?;
        } else {
            check(mounted)?;
        }
    }
    Ok(())
}

/// Installs a compiled seccomp filter on the calling thread (no-new-privs already set).
///
/// # Safety
/// Raw syscall on a program that outlives it.
unsafe fn install_filter(prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program; `fprog` and `prog` outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == -1 {
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
                // Own IPC namespace: SysV shared memory and POSIX message queues are private
                // and die with the process, instead of outliving it host-wide.
                check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
                // Slave rather than private (as runc does): when a replica ends, the unmount
                // of its /tmp tmpfs reaches every namespace's copy, so no other function's
                // process keeps that memory alive.
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ))?;
                if let Some(m) = &self.secrets {
                    mount_secrets(m)?;
                }
                if let Some(src) = &self.bundle {
                    // Before the masks: its source may lie under a directory they hide.
                    bind_readonly(src, BUNDLE_MOUNT)?;
                }
                check(libc::mount(
                    tmp.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                if let (Some(m), Some(opts)) = (&self.masks, &self.scratch_options) {
                    mask_host_dirs(m, opts, self.readonly_root)?;
                }
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
        if self.drop_caps {
            // While still root (CAP_SETPCAP): nothing exec'd later, setuid binaries included,
            // can get a capability back. Capabilities are numbered from 0 without gaps: the
            // first EINVAL is past the kernel's last one (no need to try all 64).
            for cap in 0..64 {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
                {
                    break;
                }
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
        if self.drop_caps {
            // setuid cleared the permitted, effective and ambient sets; not the inheritable
            // one, which a file's inheritable capabilities could use.
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            // SAFETY: capset with structs that outlive the call; prctl with integers.
            unsafe {
                check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
            }
        }
        // SAFETY: prctl with integer arguments.
        unsafe {
            // After the credential change, which clears it: replicas die with fjord even on
            // `kill -9` (their own children are reaped through the cgroup at the next start).
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // No exec can raise privileges again (setuid `su`, file capabilities); also what
            // lets an unprivileged process install the seccomp filter.
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        // Every descriptor past stdio closes at exec, whatever fjord (or whoever started
        // fjord) left open without CLOEXEC. Marking rather than closing keeps std's own
        // exec-error pipe working.
        // SAFETY: close_range/fcntl with integer arguments.
        unsafe {
            let r = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if r == -1 {
                for fd in 3..=self.max_fd {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
        if let Some(f) = &self.seccomp {
            // Last: from here on only execve runs.
            // SAFETY: the programs live in the plan, which outlives the child's pre_exec.
            unsafe {
                install_filter(&f.enosys)?;
                install_filter(&f.deny)?;
            }
        }
        Ok(())
    }

    /// Installs the plan on a command (PDEATHSIG, no-new-privs, seccomp and fd closing also
    /// when not sandboxing).
    pub fn install(self: &Arc<Self>, cmd: &mut tokio::process::Command) {
        let plan = self.clone();
        // SAFETY: `apply` only makes async-signal-safe syscalls and does not allocate.
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
    }
}

/// Stack of a PID namespace's init: it runs in fjord's address space, on this stack only.
const INIT_STACK: usize = 64 << 10;
/// `__WALL`: also reap children whose exit signal is not SIGCHLD.
const WALL: u32 = 0x4000_0000;

/// A PID namespace for a replica's processes: they see themselves with small PIDs and see,
/// signal or `pidfd_open` no process outside it (fjord, other functions, the host).
///
/// Its PID 1 is a minimal init that only reaps the orphans reparented to it. The function's
/// processes join the namespace as ordinary members (PID 2 and up) while staying fjord's
/// direct children, so a function is never PID 1 (whose signals without a handler the
/// kernel drops): SIGTERM on stop, the timeout's SIGKILL to its process group, exit
/// statuses and stdio pipes behave exactly as without a namespace. Dropping (or
/// [`PidNs::kill`]) kills the init, and the kernel then kills everything left in the
/// namespace: no orphan outlives its replica.
///
/// The init is created with `CLONE_VM | CLONE_FILES`: it shares fjord's memory and
/// descriptor table instead of holding a copy-on-write snapshot of them (a forked copy would
/// pin the gateway's memory as it changes, and keep its sockets open) and costs one cheap
/// `clone` per namespace.
pub struct PidNs {
    /// The init, in fjord's own namespace: fjord's unreaped child, so the number cannot be
    /// reused before [`Drop`] reaps it.
    pid: libc::pid_t,
    /// `/proc/<init>/ns/pid`, which the spawning thread joins for the children it forks.
    ns: OwnedFd,
    stack: InitStack,
}

/// The init's stack, unmapped only once the init is reaped.
struct InitStack(*mut libc::c_void);
// SAFETY: a plain mapping address, used by one owner at a time.
unsafe impl Send for InitStack {}
unsafe impl Sync for InitStack {}

impl std::fmt::Debug for PidNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PidNs").field("init", &self.pid).finish()
    }
}

/// PID 1 of a replica's namespace. It runs in fjord's address space on its own stack, so it
/// makes raw system calls only: rustix's `linux_raw` backend, never libc, whose `errno` is
/// the thread-local of the fjord thread that cloned it. Every signal stays blocked (the
/// mask is set before the clone): fjord's handlers, copied into it, never run here, and
/// only SIGKILL (from fjord) ends it.
extern "C" fn pidns_init(_: *mut libc::c_void) -> libc::c_int {
    use rustix::process::{Signal, WaitId, WaitIdOptions, waitid};
    // First, its own empty descriptor table: the shared one would keep fjord's files (the
    // data dir's lock, listening sockets) open after fjord dies, until this init's
    // PDEATHSIG comes. `max_fd` above the highest open one: the kernel copies nothing.
    // SAFETY: a raw syscall on no memory.
    let _ = unsafe { close_range_unshare_all() };
    // Dies with the fjord thread that made it (then the kernel kills the whole namespace).
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let _ = rustix::thread::set_name(c"fjord-pidns");
    let options = WaitIdOptions::from_bits_retain(WaitIdOptions::EXITED.bits() | WALL);
    let idle = rustix::thread::Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        // Blocks while it has children (orphans reparented to it) and reaps each as it
        // exits; ECHILD, none yet: look again in a second (a raw `waitid` cannot wait for
        // the first one to arrive, and a late reap only keeps a zombie a little longer).
        if waitid(WaitId::All, options).is_err() {
            let _ = rustix::thread::nanosleep(&idle);
        }
    }
}

/// `close_range(0, ~0, CLOSE_RANGE_UNSHARE)`: the calling thread leaves a shared descriptor
/// table for an empty one of its own. A raw `syscall` instruction (neither libc, whose
/// `errno` belongs to another thread in the init, nor rustix, which lacks the call): the
/// kernel's result, negative on error.
///
/// # Safety
/// Takes no pointers; safe to call from any thread, but closes every descriptor it shares.
#[cfg(target_arch = "x86_64")]
unsafe fn close_range_unshare_all() -> isize {
    let ret: isize;
    // SAFETY: the x86_64 syscall ABI: number in rax, arguments in rdi, rsi, rdx; rcx and
    // r11 clobbered.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_close_range as isize => ret,
            in("rdi") 0usize,
            in("rsi") u32::MAX as usize,
            in("rdx") libc::CLOSE_RANGE_UNSHARE as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86_64 version.
///
/// # Safety
/// As the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn close_range_unshare_all() -> isize {
    let ret: isize;
    // SAFETY: the aarch64 syscall ABI: number in x8, arguments and result in x0..x2.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") libc::SYS_close_range as usize,
            inlateout("x0") 0isize => ret,
            in("x1") u32::MAX as usize,
            in("x2") libc::CLOSE_RANGE_UNSHARE as usize,
            options(nostack),
        );
    }
    ret
}

/// fjord's own PID namespace, to return the spawning thread to after a spawn.
fn own_pidns() -> io::Result<std::os::fd::BorrowedFd<'static>> {
    use std::os::fd::AsFd;
    static OWN: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = OWN.get() {
        return Ok(fd.as_fd());
    }
    let fd = OwnedFd::from(std::fs::File::open("/proc/self/ns/pid")?);
    Ok(OWN.get_or_init(|| fd).as_fd())
}

impl PidNs {
    /// A new namespace with its init running.
    pub fn new() -> io::Result<Self> {
        own_pidns()?;
        // SAFETY: anonymous mapping, checked below; unmapped on every path that does not
        // hand it to a running init. Its lowest page is a guard: an overflow faults rather
        // than writing over fjord's memory.
        let stack = unsafe {
            let stack = libc::mmap(
                std::ptr::null_mut(),
                INIT_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if stack == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(stack, 4096, libc::PROT_NONE) == -1 {
                let e = io::Error::last_os_error();
                libc::munmap(stack, INIT_STACK);
                return Err(e);
            }
            stack
        };
        // SAFETY: signal masks of this thread only (restored right after); `clone` with a
        // stack the init alone uses and a function that only makes raw syscalls on it.
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let top = stack.cast::<u8>().add(INIT_STACK).cast::<libc::c_void>();
            let pid = libc::clone(
                pidns_init,
                top,
                libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_NEWPID | libc::SIGCHLD,
                std::ptr::null_mut(),
            );
            let err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid == -1 {
                libc::munmap(stack, INIT_STACK);
                return Err(err);
            }
            pid
        };
        // Our unreaped child: the number names this init and nothing else.
        match std::fs::File::open(format!("/proc/{pid}/ns/pid")) {
            Ok(fd) => Ok(Self {
                pid,
                ns: OwnedFd::from(fd),
                stack: InitStack(stack),
            }),
            Err(e) => {
                // SAFETY: our own child, with no other process in its namespace yet (so it
                // is reaped at once); its stack is unmapped after it is gone.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
                    libc::munmap(stack, INIT_STACK);
                }
                Err(e)
            }
        }
    }

    /// Spawns `cmd` as a member of this namespace: the calling thread's children go there
    /// for the duration of the (synchronous) spawn only.
    pub fn spawn(&self, cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
        use std::os::fd::AsRawFd;
        let own = own_pidns()?;
        /// Puts the thread's children back in fjord's namespace, whatever the spawn did.
        struct Back(std::os::fd::BorrowedFd<'static>);
        impl Drop for Back {
            fn drop(&mut self) {
                // SAFETY: setns(2) on a descriptor that lives as long as the process.
                if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWPID) } == -1 {
                    // Never seen (fjord's own namespace is always allowed), and a thread
                    // whose next child would land in a function's namespace cannot go on.
                    std::process::abort();
                }
            }
        }
        // SAFETY: setns(2) on a descriptor we own; only this thread's children are affected.
        check(unsafe { libc::setns(self.ns.as_raw_fd(), libc::CLONE_NEWPID) })?;
        let _back = Back(own);
        cmd.spawn()
    }

    /// Kills the init, and with it every process left in the namespace.
    pub fn kill(&self) {
        // SAFETY: kill(2) of our own unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

impl Drop for PidNs {
    fn drop(&mut self) {
        self.kill();
        let pid = self.pid;
        let stack = InitStack(std::mem::replace(&mut self.stack.0, std::ptr::null_mut()));
        // The init exits only once every process of the namespace is gone, including
        // fjord's own children there that it has not reaped yet: wait off the async threads.
        let reap = move || {
            let stack = stack;
            loop {
                // SAFETY: waitpid(2) of our own child.
                let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
                if r == pid || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            // SAFETY: the init that ran on it is gone.
            unsafe { libc::munmap(stack.0, INIT_STACK) };
        };
        // A detached thread rather than tokio's blocking pool, which a runtime shutting down
        // waits for: the zombies the init waits on may be the ones that shutdown never reaps.
        // (Without a thread, the stack leaks; the kill is sent.)
        let _ = std::thread::Builder::new()
            .name("fjord-pidns-reap".into())
            .spawn(reap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's init must not hold fjord's files (the data dir's lock, sockets) open: it
    /// leaves the descriptor table it was cloned with first thing.
    #[test]
    fn pidns_init_keeps_none_of_fjords_descriptors() {
        if !nix::unistd::geteuid().is_root() {
            return; // a PID namespace needs root
        }
        let kept = std::fs::File::open("/proc/self/status").unwrap();
        let ns = PidNs::new().unwrap();
        let fds = || {
            std::fs::read_dir(format!("/proc/{}/fd", ns.pid))
                .map(|d| d.count())
                .unwrap_or(usize::MAX)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while fds() != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(fds(), 0, "the init's descriptor table");
        // fjord's own table is untouched.
        let mut s = String::new();
        std::io::Read::read_to_string(&mut &kept, &mut s).unwrap();
        assert!(s.contains("Pid:"));
        drop(ns);
    }
}
