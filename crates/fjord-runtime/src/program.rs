//! Resolving a function's `fprocess` to a real executable once per deploy, and the base
//! environment every process of the function starts with.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fjord_core::FunctionSpec;

/// The PATH functions see unless they set their own, as in a typical container image. The
/// gateway's own PATH is not inherited: a pyenv shim first on it costs ~130 ms per start.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a sandboxed function sees its unpacked bundle (read-only), and its working
/// directory: where OpenFaaS images keep the function's code, so relative commands
/// (`./handler`, `python index.py`) and handlers that name `/home/app/...` work unchanged.
pub const BUNDLE_MOUNT: &str = "/home/app";

/// Creates the bundle mount point on the host (an empty root-owned directory) if missing.
pub(crate) fn ensure_bundle_mount() -> std::io::Result<()> {
    std::fs::create_dir_all(BUNDLE_MOUNT)
}

/// The executable and arguments of a function, resolved at deploy time.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
    /// The unpacked bundle on the host, if the function runs one: its working directory,
    /// seen at [`BUNDLE_MOUNT`] when sandboxed (else the replica's private `/tmp`).
    pub workdir: Option<PathBuf>,
    /// The function's secrets, decrypted by the gateway (files in `/var/openfaas/secrets`).
    pub secrets: crate::secrets::SecretFiles,
}

/// Why a program cannot run; shown to the user as a 400 on `envProcess`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("envProcess: {0}")]
pub struct ProgramError(pub String);

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether an unprivileged user (not the owner, not in the group) may execute `p`:
/// every directory above it searchable by others, the file executable by others.
fn others_can_execute(p: &Path) -> bool {
    let mode = |q: &Path| q.metadata().map(|m| m.permissions().mode()).unwrap_or(0);
    if mode(p) & 0o001 == 0 {
        return false;
    }
    p.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0)
}

/// Resolves `argv[0]` through the function's PATH to a canonical path. `sandboxed`: the
/// function runs under its own uid, so the file must be reachable by others. `workdir`: the
/// unpacked bundle, where relative commands (`./main`) are found.
pub fn resolve(
    spec: &FunctionSpec,
    sandboxed: bool,
    workdir: Option<&Path>,
) -> Result<Program, ProgramError> {
    let cmd = &spec.argv[0];
    // The bundle as a sandboxed function sees it: `/home/app/main` is `<bundle>/main`.
    if sandboxed
        && let Some(dir) = workdir
        && let Ok(inside) = Path::new(cmd).strip_prefix(BUNDLE_MOUNT)
    {
        if !is_executable(&dir.join(inside)) {
            return Err(ProgramError(format!(
                "{cmd:?} is not an executable file in the bundle"
            )));
        }
        return Ok(Program {
            path: PathBuf::from(cmd),
            args: spec.argv[1..].to_vec(),
            workdir: Some(dir.to_path_buf()),
            secrets: Default::default(),
        });
    }
    let found = if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        if !p.is_absolute() {
            // Without a bundle the working directory is the replica's private, empty /tmp:
            // a relative program can never be there (it would fail on every call).
            let Some(dir) = workdir else {
                return Err(ProgramError(format!(
                    "{cmd:?} is a relative path, but the image is not a bundle the gateway has, so there is nothing for it to be relative to: push the bundle first (`fjord push`), or give the program's absolute path"
                )));
            };
            if !is_executable(&dir.join(&p)) {
                return Err(ProgramError(format!(
                    "{cmd:?} is not an executable file in the bundle"
                )));
            }
            check_interpreter(cmd, &dir.join(&p), spec)?;
            // Relative to the working directory (the bundle, else the replica's /tmp).
            return Ok(Program {
                path: p,
                args: spec.argv[1..].to_vec(),
                workdir: workdir.map(Path::to_path_buf),
                secrets: Default::default(),
            });
        }
        if !is_executable(&p) {
            return Err(ProgramError(format!(
                "{cmd:?} is not an executable file on this machine"
            )));
        }
        p
    } else {
        let path = spec.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(cmd))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                ProgramError(format!(
                    "command {cmd:?} not found in PATH ({path}); install it or give its absolute path"
                ))
            })?
    };
    check_interpreter(cmd, &found, spec)?;
    let real = std::fs::canonicalize(&found).unwrap_or(found);
    if sandboxed && real.starts_with("/tmp") {
        return Err(ProgramError(format!(
            "{} is under /tmp, which each function sees as its own private, empty directory; put the program elsewhere (e.g. /opt or /srv)",
            real.display()
        )));
    }
    if sandboxed && !others_can_execute(&real) {
        return Err(ProgramError(format!(
            "{} is not executable by the function's unprivileged user (a parent directory or the file is private); use a system path such as /usr/bin/python3",
            real.display()
        )));
    }
    Ok(Program {
        path: real,
        args: spec.argv[1..].to_vec(),
        workdir: workdir.map(Path::to_path_buf),
        secrets: Default::default(),
    })
}

/// A script's `#!` interpreter must exist too, or every start fails with ENOENT although
/// the script itself is there. `#!/usr/bin/env NAME` looks NAME up in the function's PATH.
fn check_interpreter(cmd: &str, script: &Path, spec: &FunctionSpec) -> Result<(), ProgramError> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let Some(line) = head[..n].strip_prefix(b"#!") else {
        return Ok(());
    };
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let Some(interp) = words.next() else {
        return Ok(());
    };
    if !is_executable(Path::new(interp)) {
        return Err(ProgramError(format!(
            "{cmd:?} starts with #!{interp}, which is not an executable file on this machine: install it or change the script's first line"
        )));
    }
    if Path::new(interp).file_name().is_some_and(|f| f == "env")
        && let Some(name) = words.find(|w| !w.starts_with('-') && !w.contains('='))
        && !name.contains('/')
    {
        let path = spec.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        if !path
            .split(':')
            .filter(|d| !d.is_empty())
            .any(|d| is_executable(&Path::new(d).join(name)))
        {
            return Err(ProgramError(format!(
                "{cmd:?} starts with #!{interp} {name}, but {name:?} is not found in the function's PATH ({path}): install it or change the script's first line"
            )));
        }
    }
    Ok(())
}

/// The environment a replica's processes start with: defaults, then the function's
/// `envVars`, then what fjord must set.
pub fn base_env(
    spec: &FunctionSpec,
    replica: &str,
    home: &Path,
    port: Option<u16>,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    let mut set = |k: &str, v: &std::ffi::OsStr| {
        env.insert(k.into(), v.to_os_string());
    };
    set("PATH", DEFAULT_PATH.as_ref());
    set("HOME", home.as_os_str());
    set("TMPDIR", home.as_os_str());
    set("LANG", "C.UTF-8".as_ref());
    set("HOSTNAME", replica.as_ref());
    for (k, v) in &spec.env {
        set(k, v.as_ref());
    }
    let fprocess = spec
        .deployment
        .env_process
        .clone()
        .unwrap_or_else(|| shell_join(&spec.argv));
    set("fprocess", fprocess.as_ref());
    set("OPENFAAS_NAME", spec.key.name.as_ref());
    set("OPENFAAS_NAMESPACE", spec.key.namespace.as_ref());
    if let Some(p) = port {
        set("PORT", p.to_string().as_ref());
    }
    env.into_iter().collect()
}

fn shell_join(argv: &[String]) -> String {
    argv.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::openfaas::FunctionDeployment;

    fn spec(fprocess: &str) -> FunctionSpec {
        FunctionSpec::from_deployment(FunctionDeployment {
            service: "f".into(),
            image: "x".into(),
            env_process: Some(fprocess.into()),
            env_vars: Some([("GREETING".to_string(), "hi".to_string())].into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn resolves_through_default_path_not_the_gateways() {
        let p = resolve(&spec("python3 -c 'print(1)'"), true, None).unwrap();
        assert!(p.path.starts_with("/usr/bin"), "{:?}", p.path);
        assert_eq!(p.args, ["-c", "print(1)"]);
        let e = resolve(&spec("no-such-command-xyz"), false, None).unwrap_err();
        assert!(e.to_string().contains("not found in PATH"), "{e}");
        let e = resolve(&spec("/nonexistent/bin"), false, None).unwrap_err();
        assert!(e.to_string().contains("not an executable"), "{e}");
    }

    #[test]
    fn private_paths_are_refused_when_sandboxed() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let exe = dir.path().join("run.sh");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = spec(exe.to_str().unwrap());
        assert!(resolve(&s, false, None).is_ok());
        let e = resolve(&s, true, None).unwrap_err();
        assert!(e.to_string().contains("unprivileged"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(resolve(&s, true, None).is_ok());

        let in_tmp = tempfile::tempdir_in("/tmp").unwrap();
        let exe = in_tmp.path().join("run.sh");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = resolve(&spec(exe.to_str().unwrap()), true, None).unwrap_err();
        assert!(e.to_string().contains("under /tmp"), "{e}");
    }

    #[test]
    fn relative_programs_need_a_bundle_and_scripts_their_interpreter() {
        let e = resolve(&spec("./handler"), false, None).unwrap_err();
        assert!(
            e.to_string().contains("\"./handler\" is a relative path"),
            "{e}"
        );

        let bundle = tempfile::tempdir_in("/var/tmp").unwrap();
        let write = |name: &str, text: &str| {
            let p = bundle.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write("ok.sh", "#!/bin/sh\necho hi\n");
        write("env.sh", "#!/usr/bin/env sh\necho hi\n");
        write("gone.sh", "#!/no/such/interpreter\n");
        write(
            "envgone.sh",
            "#!/usr/bin/env -S no-such-interpreter-xyz -u\n",
        );
        assert!(resolve(&spec("./ok.sh"), false, Some(bundle.path())).is_ok());
        assert!(resolve(&spec("./env.sh"), false, Some(bundle.path())).is_ok());
        let e = resolve(&spec("./gone.sh"), false, Some(bundle.path())).unwrap_err();
        assert!(e.to_string().contains("#!/no/such/interpreter"), "{e}");
        let e = resolve(&spec("./envgone.sh"), false, Some(bundle.path())).unwrap_err();
        assert!(e.to_string().contains("no-such-interpreter-xyz"), "{e}");
        let e = resolve(&spec("./missing"), false, Some(bundle.path())).unwrap_err();
        assert!(
            e.to_string()
                .contains("not an executable file in the bundle"),
            "{e}"
        );
    }

    #[test]
    fn env_order() {
        let s = spec("env");
        let env = base_env(&s, "f-1", Path::new("/tmp"), Some(8081));
        let get = |k: &str| {
            env.iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("GREETING").as_deref(), Some("hi"));
        assert_eq!(get("PORT").as_deref(), Some("8081"));
        assert_eq!(get("fprocess").as_deref(), Some("env"));
        assert_eq!(get("PATH").as_deref(), Some(DEFAULT_PATH));
    }
}
