//! The seccomp filter every function process runs under, modelled on Docker's default
//! profile: a deny-list of system calls an unprivileged process has no business making
//! (kernel modules, mounts, namespaces, keyrings, bpf, perf, userfaultfd, io_uring, clock
//! setting, reboot, ...). Denied calls fail with `EPERM` rather than killing the process, so
//! programs that probe for a feature fall back as they do in a container. `clone3` fails with
//! `ENOSYS` (its flags sit in memory a filter cannot read), which makes libc fall back to
//! `clone`, whose namespace flags are checked.
//!
//! Compiled once (at runtime start) into BPF; `sandbox.rs` installs it in `pre_exec` with a
//! raw `seccomp(2)` call, last, right before exec.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled filters, ready to install in a child.
#[derive(Debug)]
pub(crate) struct Filters {
    /// Deny-list, `EPERM`.
    pub deny: Vec<libc::sock_filter>,
    /// `clone3` and x32-ABI calls, `ENOSYS`.
    pub enosys: Vec<libc::sock_filter>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter for {arch}: {source}")]
pub struct SeccompError {
    arch: &'static str,
    source: seccompiler::BackendError,
}

/// Namespace flags of `clone`/`unshare`: creating namespaces (user namespaces above all)
/// opens kernel attack surface a function does not need.
pub(crate) const NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// `unshare` only (in `clone` the low byte is the exit signal).
pub(crate) const CLONE_NEWTIME: u64 = 0x80;

/// `personality(2)` values Docker allows: Linux, UNAME26, ADDR_NO_RANDOMIZE-less variants,
/// and the query.
const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `(name, number)` of each listed system call: the name for OCI seccomp profiles (the
/// container runtime), the number for the BPF filter.
macro_rules! syscalls {
    ($($n:ident),* $(,)?) => {
        vec![$((stringify!($n).trim_start_matches("SYS_"), libc::$n)),*]
    };
}

/// System calls denied outright.
pub(crate) fn denied() -> Vec<(&'static str, libc::c_long)> {
    #[allow(unused_mut)]
    let mut v = syscalls![
        SYS_acct,
        SYS_add_key,
        SYS_bpf,
        SYS_clock_adjtime,
        SYS_clock_settime,
        SYS_delete_module,
        SYS_fanotify_init,
        SYS_finit_module,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fsopen,
        SYS_fspick,
        SYS_init_module,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_io_uring_setup,
        SYS_kexec_file_load,
        SYS_kexec_load,
        SYS_keyctl,
        SYS_lookup_dcookie,
        SYS_mount,
        SYS_mount_setattr,
        SYS_move_mount,
        SYS_nfsservctl,
        SYS_open_by_handle_at,
        SYS_open_tree,
        SYS_perf_event_open,
        SYS_pivot_root,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_reboot,
        SYS_request_key,
        SYS_setns,
        SYS_settimeofday,
        SYS_swapoff,
        SYS_swapon,
        SYS_syslog,
        SYS_umount2,
        SYS_userfaultfd,
        SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend(syscalls![
        SYS_ioperm,
        SYS_iopl,
        SYS__sysctl,
        SYS_sysfs,
        SYS_uselib,
        SYS_ustat,
    ]);
    v
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|source| SeccompError {
        arch: std::env::consts::ARCH,
        source,
    })
}

/// x32-ABI calls on x86_64: the number with this bit set, under the same audit arch, so a
/// deny-list by number would not see them.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The `ENOSYS` filter, by hand (seccompiler has one action per filter and no ranges): five
/// classic-BPF instructions. `clone3`, and on x86_64 every x32-ABI call, which is what
/// kernels built or booted without x32 (Debian's default) answer anyway. Installing a filter
/// costs in proportion to its length, and repeating the deny-list for x32 doubled it.
fn enosys_filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let i = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let x32 = cfg!(target_arch = "x86_64");
    // Jump offsets count from the next instruction; the last one returns ENOSYS.
    let mut p = vec![
        // `seccomp_data.nr` is at offset 0.
        i(LD_W_ABS, 0, 0, 0),
        i(JEQ_K, if x32 { 2 } else { 1 }, 0, libc::SYS_clone3 as u32),
    ];
    if x32 {
        p.push(i(JGE_K, 1, 0, X32_SYSCALL_BIT));
    }
    p.push(i(RET_K, 0, 0, RET_ALLOW));
    p.push(i(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    p
}

fn masked(flag: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(flag),
        flag,
    )?])
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
    arch: TargetArch,
) -> Result<Vec<libc::sock_filter>, seccompiler::BackendError> {
    let prog: BpfProgram =
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch)?.try_into()?;
    Ok(prog
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

/// Builds the filters for this machine's architecture.
pub(crate) fn build() -> Result<Filters, SeccompError> {
    let arch = arch()?;
    let err = |source| SeccompError {
        arch: std::env::consts::ARCH,
        source,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied()
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    let clone_rules = NS_FLAGS
        .iter()
        .map(|f| masked(*f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut unshare_rules = clone_rules.clone();
    unshare_rules.push(masked(CLONE_NEWTIME).map_err(err)?);
    rules.insert(libc::SYS_clone, clone_rules);
    rules.insert(libc::SYS_unshare, unshare_rules);
    // One rule whose conditions must all hold: the value is none of the allowed ones.
    let odd_personality = SeccompRule::new(
        PERSONALITY_ALLOWED
            .iter()
            .map(|v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?,
    )
    .map_err(err)?;
    rules.insert(libc::SYS_personality, vec![odd_personality]);
    let deny = compile(rules, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(err)?;
    Ok(Filters {
        deny,
        enosys: enosys_filter(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_arch() {
        let f = build().unwrap();
        assert!(f.deny.len() > 50, "{}", f.deny.len());
        // The last instruction is the ENOSYS return every jump lands on.
        let last = f.enosys.len() - 1;
        for (n, ins) in f.enosys.iter().enumerate() {
            if ins.code == 0x15 || ins.code == 0x35 {
                assert_eq!(n + 1 + ins.jt as usize, last);
            }
        }
        assert_eq!(f.enosys[last].k, 0x0005_0000 | libc::ENOSYS as u32);
        // BPF programs are limited to 4096 instructions.
        assert!(f.deny.len() < 4096);
        let names = denied();
        assert!(names.contains(&("mount", libc::SYS_mount)));
        assert!(names.iter().all(|(n, _)| !n.starts_with("SYS_")));
    }
}
