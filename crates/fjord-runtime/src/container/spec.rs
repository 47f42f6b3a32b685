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

/// Whether the image's `User` is someone other than root. A user name must exist in the
/// image's `/etc/passwd`.
pub(crate) fn image_user_is_unprivileged(
    image: &ImageConfig,
    layers: &[PathBuf],
) -> Result<bool, String> {
    let user = image.user.as_deref().unwrap_or("").trim();
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() || name == "root" || name == "0" {
        return Ok(false);
    }
    if name.parse::<u32>().is_ok() {
        return Ok(true);
    }
    let passwd = image_file(layers, "etc/passwd").unwrap_or_default();
    let uid = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse::<u32>().ok())?
    });
    match uid {
        Some(uid) => Ok(uid != 0),
        None => Err(format!(
            "its User {user:?} is not in the image's /etc/passwd"
        )),
    }
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
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
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
    let mut linux = LinuxBuilder::default()
        .uid_mappings(vec![
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(plan.host_uid)
                .size(1u32)
                .build()?,
        ])
        .gid_mappings(vec![
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(plan.host_uid)
                .size(1u32)
                .build()?,
        ])
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
        let layer = tempfile::tempdir().unwrap();
        std::fs::create_dir(layer.path().join("etc")).unwrap();
        std::fs::write(
            layer.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:100:101::/home/app:/bin/sh\n",
        )
        .unwrap();
        let layers = vec![layer.path().to_path_buf()];
        let user = |u: &str| {
            image_user_is_unprivileged(
                &ImageConfig {
                    user: Some(u.into()),
                    ..Default::default()
                },
                &layers,
            )
        };
        assert_eq!(user(""), Ok(false));
        assert_eq!(user("root"), Ok(false));
        assert_eq!(user("0:0"), Ok(false));
        assert_eq!(user("app"), Ok(true));
        assert_eq!(user("1000:1000"), Ok(true));
        assert!(user("nobody-here").unwrap_err().contains("/etc/passwd"));
    }
}
