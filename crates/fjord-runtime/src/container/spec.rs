//! The OCI runtime spec (`config.json`) of a container replica, and the parts of it decided
//! from the image and the deployment (process, environment, user, port).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fjord_core::FunctionSpec;
use fjord_runtime_api::ImageConfig;
use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use super::Plan;

/// Docker's default capabilities minus those a function has no use for (`MKNOD`,
/// `NET_RAW`, `SETFCAP`, `SYS_CHROOT`, `AUDIT_WRITE`). They hold only inside the
/// container's user namespace: over its own files, not the host's.
const CAPABILITIES: [Capability; 9] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
];

/// The port the image's watchdog listens on: `port` from envVars (the watchdogs read it),
/// else 8080 when the image exposes it or nothing, else the image's only exposed TCP port.
pub(crate) fn watchdog_port(spec: &FunctionSpec, image: &ImageConfig) -> Result<u16, String> {
    if let Some(p) = spec.env.get("port") {
        return p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("envVars.port: {p:?} is not a port number"));
    }
    let tcp: Vec<u16> = image
        .exposed_ports
        .iter()
        .filter_map(|p| {
            let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            (proto == "tcp").then(|| n.parse().ok()).flatten()
        })
        .collect();
    Ok(match tcp.as_slice() {
        [only] => *only,
        _ => super::WATCHDOG_PORT,
    })
}

/// The container's environment: the image's `Env`, then what fjord sets (as for a
/// process replica: the function's name, `fprocess` from envProcess), then `envVars`
/// (timeouts, `mode`, `upstream_url`, `port`…) — later entries win.
pub(crate) fn environment(spec: &FunctionSpec, image: &ImageConfig) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if env.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
    };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    if !image.env.iter().any(|kv| kv.starts_with("PATH=")) {
        set("PATH", crate::program::DEFAULT_PATH);
    }
    set("OPENFAAS_NAME", &spec.key.name);
    set("OPENFAAS_NAMESPACE", &spec.key.namespace);
    // The image's own `fprocess` (OpenFaaS Dockerfiles set one) stays unless the deployment
    // names another.
    if let Some(p) = spec
        .deployment
        .env_process
        .as_deref()
        .filter(|p| !p.trim().is_empty())
    {
        set("fprocess", p);
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    order
        .into_iter()
        .map(|k| {
            let v = &env[&k];
            format!("{k}={v}")
        })
        .collect()
}

/// A regular file of the image (the top-most layer that has it); never follows a symlink,
/// which could point anywhere on the host.
fn image_file(layers: &[PathBuf], path: &str) -> Option<String> {
    layers.iter().rev().find_map(|l| {
        let p = l.join(path);
        let meta = std::fs::symlink_metadata(&p).ok()?;
        meta.is_file().then(|| std::fs::read_to_string(&p).ok())?
    })
}

/// Who the container's process runs as, inside: the image's `User` resolved as Docker
/// does it, through the image's own `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    /// Groups of `/etc/group` that list the user by name, after the primary one (none when
    /// no group lists it).
    pub additional_gids: Vec<u32>,
}

/// `name:x:id:…` lines of a passwd or group file: the entry named `name`, as fields.
fn entry<'a>(file: &'a str, name: &str) -> Option<Vec<&'a str>> {
    file.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == name)
}

/// Resolves the image's `User` (`name`, `uid`, `name:group`, `uid:gid`…). Names must
/// exist in the image; a uid not in its passwd gets gid 0, as in Docker. Ids above
/// `max_id` (the last one the function's range maps) are refused.
pub(crate) fn image_user(
    image: &ImageConfig,
    layers: &[PathBuf],
    max_id: u32,
) -> Result<ImageUser, String> {
    let user = image.user.as_deref().unwrap_or("").trim();
    if user.is_empty() {
        return Ok(ImageUser::default());
    }
    let (name, group) = match user.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (user, None),
    };
    let passwd = image_file(layers, "etc/passwd").unwrap_or_default();
    let groups = image_file(layers, "etc/group").unwrap_or_default();
    let id = |s: &str, what: &str| -> Result<u32, String> {
        s.parse::<u32>()
            .map_err(|_| format!("its User {user:?}: {what} {s:?} is not a number"))
    };
    let (uid, primary, user_name) = match name.parse::<u32>() {
        Ok(uid) => {
            let known = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[2] == name).then(|| (f[0].to_string(), f[3].to_string()))
            });
            match known {
                Some((n, g)) => (uid, id(&g, "the passwd gid")?, Some(n)),
                None => (uid, 0, None),
            }
        }
        Err(_) => {
            let f = entry(&passwd, name)
                .filter(|f| f.len() > 3)
                .ok_or_else(|| format!("its User {user:?} is not in the image's /etc/passwd"))?;
            (
                id(f[2], "the passwd uid")?,
                id(f[3], "the passwd gid")?,
                Some(name.to_string()),
            )
        }
    };
    let gid = match group.map(str::trim).filter(|g| !g.is_empty()) {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let f = entry(&groups, g).ok_or_else(|| {
                    format!("its User {user:?}: group {g:?} is not in the image's /etc/group")
                })?;
                id(f[2], "the group's gid")?
            }
        },
    };
    let mut additional_gids: Vec<u32> = match &user_name {
        Some(n) if group.is_none() => groups
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[3].split(',').any(|m| m.trim() == n))
                    .then(|| f[2].parse::<u32>().ok())?
            })
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    // As initgroups(3): the primary group is a supplementary one too.
    if !additional_gids.is_empty() {
        additional_gids.insert(0, gid);
    }
    if let Some(big) = [uid, gid]
        .into_iter()
        .chain(additional_gids.iter().copied())
        .find(|i| *i > max_id)
    {
        return Err(format!(
            "its User {user:?} uses id {big}, beyond the ids 0-{max_id} a container's users map to"
        ));
    }
    Ok(ImageUser {
        uid,
        gid,
        additional_gids,
    })
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .expect("every field is set")
}

/// fjord's seccomp deny-list (the process runtime's, by name): denied calls fail with
/// `EPERM`, `clone3` with `ENOSYS` (libc falls back to `clone`, whose namespace flags are
/// checked). Architectures other than the host's are refused by libseccomp.
fn seccomp() -> LinuxSeccomp {
    let mut syscalls = vec![
        LinuxSyscallBuilder::default()
            .names(
                crate::seccomp::denied()
                    .into_iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>(),
            )
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .build()
            .expect("complete"),
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .expect("complete"),
    ];
    // One rule per flag: any namespace flag set fails the call.
    let ns_rule = |name: &str, flag: u64| {
        LinuxSyscallBuilder::default()
            .names(vec![name.to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(flag)
                    .value_two(flag)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()
                    .expect("complete"),
            ])
            .build()
            .expect("complete")
    };
    for flag in crate::seccomp::NS_FLAGS {
        syscalls.push(ns_rule("clone", flag));
        syscalls.push(ns_rule("unshare", flag));
    }
    syscalls.push(ns_rule("unshare", crate::seccomp::CLONE_NEWTIME));
    let arch = if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64]
    } else {
        vec![Arch::ScmpArchNative]
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(arch)
        .syscalls(syscalls)
        .build()
        .expect("complete")
}

/// What varies per replica.
pub(crate) struct Replica<'a> {
    pub id: &'a str,
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    /// Bound read-only at `/var/openfaas/secrets`.
    pub secrets: Option<&'a Path>,
    pub cgroups_path: Option<&'a str>,
}

/// The replica's OCI runtime spec.
pub(crate) fn build(plan: &Plan, r: &Replica<'_>) -> Result<Spec, oci_spec::OciSpecError> {
    let caps: Vec<Capability> = if plan.unprivileged {
        Vec::new()
    } else {
        CAPABILITIES.to_vec()
    };
    let caps: oci_spec::runtime::Capabilities = caps.into_iter().collect();
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let mut env = plan.env.clone();
    // The replica's name, as for process replicas, unless envVars or the image set one
    // (libc's getenv takes the first of duplicates).
    if !env.iter().any(|kv| kv.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", r.id));
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(plan.args.clone())
        .env(env)
        .cwd(plan.cwd.clone())
        .user({
            let mut u = UserBuilder::default().uid(plan.user.uid).gid(plan.user.gid);
            if !plan.user.additional_gids.is_empty() {
                u = u.additional_gids(plan.user.additional_gids.clone());
            }
            u.build()?
        })
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(nofile)
                .hard(nofile)
                .build()?,
        ])
        .build()?;

    let tmp_options = format!(
        "size={},nr_inodes={}",
        plan.tmp_size,
        (plan.tmp_size / 4096).clamp(1024, 1 << 20)
    );
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", &tmp_options],
        ),
    ];
    // No /sys: sysfs cannot be mounted from a user namespace in a network namespace it does
    // not own, and binding the host's would show the host's devices; functions need none.
    if let Some(s) = r.secrets {
        mounts.push(mount(
            crate::secrets::SECRETS_MOUNT,
            "none",
            &s.to_string_lossy(),
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        ));
    }

    let mut resources = LinuxResourcesBuilder::default().pids(
        LinuxPidsBuilder::default()
            .limit(plan.pids_max as i64)
            .build()?,
    );
    if let Some(m) = plan.memory_bytes {
        // swap = memory: no swap, as the process runtime's cgroups.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(m as i64)
                .swap(m as i64)
                .build()?,
        );
    }
    if let Some(c) = plan.cpu_millis {
        let period = 100_000u64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(((c * period / 1000).max(1000)) as i64)
                .build()?,
        );
    }
    let ns = |t: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(t).build();
    // The function's range (its image's files seen through idmapped layers), else container
    // root alone.
    let ids = if plan.ids.is_some() {
        super::idmap::RANGE
    } else {
        1
    };
    let mapping = || {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(plan.host_uid)
            .size(ids)
            .build()
    };
    let mut linux = LinuxBuilder::default()
        .uid_mappings(vec![mapping()?])
        .gid_mappings(vec![mapping()?])
        .namespaces(vec![
            ns(LinuxNamespaceType::Pid)?,
            ns(LinuxNamespaceType::Ipc)?,
            ns(LinuxNamespaceType::Uts)?,
            ns(LinuxNamespaceType::Mount)?,
            ns(LinuxNamespaceType::User)?,
            ns(LinuxNamespaceType::Cgroup)?,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(r.netns.to_path_buf())
                .build()?,
        ])
        .resources(resources.build()?)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .seccomp(seccomp());
    if let Some(p) = r.cgroups_path {
        linux = linux.cgroups_path(PathBuf::from(p));
    }
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(r.rootfs.to_path_buf())
                .readonly(plan.read_only)
                .build()?,
        )
        .hostname(r.id.to_string())
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::openfaas::FunctionDeployment;

    fn spec(json: serde_json::Value) -> FunctionSpec {
        let d: FunctionDeployment = serde_json::from_value(json).unwrap();
        FunctionSpec::from_deployment_for_image(d).unwrap()
    }

    #[test]
    fn env_order_image_then_fjord_then_envvars() {
        let image = ImageConfig {
            env: vec![
                "PATH=/usr/local/bin:/bin".into(),
                "fprocess=python index.py".into(),
                "mode=streaming".into(),
            ],
            ..Default::default()
        };
        let s = spec(serde_json::json!({
            "service": "f", "image": "x",
            "envVars": {"mode": "http", "exec_timeout": "5s"},
        }));
        let env = environment(&s, &image);
        let get = |k: &str| {
            env.iter()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        assert_eq!(get("PATH").as_deref(), Some("/usr/local/bin:/bin"));
        assert_eq!(get("fprocess").as_deref(), Some("python index.py"));
        assert_eq!(get("mode").as_deref(), Some("http"));
        assert_eq!(get("exec_timeout").as_deref(), Some("5s"));
        assert_eq!(get("OPENFAAS_NAME").as_deref(), Some("f"));
        // envProcess becomes the watchdog's fprocess; without a PATH the default one.
        let s = spec(serde_json::json!({"service": "f", "image": "x", "envProcess": "cat"}));
        let env = environment(&s, &ImageConfig::default());
        assert!(env.contains(&"fprocess=cat".to_string()), "{env:?}");
        assert!(env.contains(&format!("PATH={}", crate::program::DEFAULT_PATH)));
    }

    #[test]
    fn port_from_envvars_image_or_watchdog_default() {
        let plain = spec(serde_json::json!({"service": "f", "image": "x"}));
        let mut image = ImageConfig::default();
        assert_eq!(watchdog_port(&plain, &image), Ok(8080));
        image.exposed_ports = vec!["8080/tcp".into()];
        assert_eq!(watchdog_port(&plain, &image), Ok(8080));
        image.exposed_ports = vec!["3000/tcp".into()];
        assert_eq!(watchdog_port(&plain, &image), Ok(3000));
        let port =
            spec(serde_json::json!({"service": "f", "image": "x", "envVars": {"port": "9000"}}));
        assert_eq!(watchdog_port(&port, &image), Ok(9000));
        let bad = spec(serde_json::json!({"service": "f", "image": "x", "envVars": {"port": "x"}}));
        assert!(watchdog_port(&bad, &image).is_err());
    }

    #[test]
    fn image_users() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbig:x:70000:70000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\napp:x:1000:\nwww:x:33:app\naudio:x:29:other,app\n",
        )
        .unwrap();
        let layers = vec![dir.path().to_path_buf()];
        let user = |u: &str| {
            image_user(
                &ImageConfig {
                    user: Some(u.into()),
                    ..Default::default()
                },
                &layers,
                65_535,
            )
        };
        let ids = |uid, gid, extra: &[u32]| ImageUser {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        };
        assert_eq!(user(""), Ok(ImageUser::default()));
        assert_eq!(user("root"), Ok(ImageUser::default()));
        assert_eq!(user("0:0"), Ok(ImageUser::default()));
        assert_eq!(user("app"), Ok(ids(1000, 1000, &[1000, 29, 33])));
        assert_eq!(
            user("1000"),
            Ok(ids(1000, 1000, &[1000, 29, 33])),
            "by uid, as Docker"
        );
        assert_eq!(user("app:www"), Ok(ids(1000, 33, &[])));
        assert_eq!(user("1234"), Ok(ids(1234, 0, &[])), "unknown uid: gid 0");
        assert_eq!(user("1234:5"), Ok(ids(1234, 5, &[])));
        assert!(user("nobody-here").unwrap_err().contains("/etc/passwd"));
        assert!(user("app:nogroup").unwrap_err().contains("/etc/group"));
        assert!(user("big").unwrap_err().contains("0-65535"));
        assert!(user("app:x1").unwrap_err().contains("/etc/group"));
    }
}
