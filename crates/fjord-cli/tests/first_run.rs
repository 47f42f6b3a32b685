//! First run with every default, as a new user would: `fjord serve` with no `--data-dir`, as
//! root (data in `/var/lib/fjord`, isolated here in a private mount namespace so the host's
//! real one is untouched) and as a normal user (`~/.local/share/fjord`); a bundle function
//! answers whatever the data dir's parents allow; the CLI finds the local gateway's password
//! or says which sources it tried; a data dir that cannot work is refused with why.

mod common;

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

const FJORD: &str = env!("CARGO_BIN_EXE_fjord");
const NOBODY: u32 = 65534;

/// A `fjord serve` started by the test with a clean environment; killed (SIGTERM, then
/// SIGKILL) on drop.
struct Serve {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    base: String,
    password: String,
}

fn tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("fjord-first-run-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Reachable by the unprivileged user of the normal-user tests.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// A command with none of the caller's fjord or XDG settings: only what a fresh login has.
fn clean(program: &str, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

impl Serve {
    /// Waits for `gateway.addr` under `seen_data_dir` and for `/healthz`.
    async fn wait(mut child: Child, data_dir: PathBuf, log: PathBuf) -> Serve {
        let pid = child.id();
        let seen = |p: &str| {
            if data_dir.starts_with("/var/lib/fjord") {
                PathBuf::from(format!("/proc/{pid}/root"))
                    .join(data_dir.strip_prefix("/").unwrap())
                    .join(p)
            } else {
                data_dir.join(p)
            }
        };
        let addr_file = seen("gateway.addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("fjord serve exited with {st}:\n{}", log_of(&log));
            }
            // This server's own (its pid in the lock): before the script's mounts, the path
            // through /proc/<pid>/root still shows the host's /var/lib/fjord, which may be
            // another server's.
            let ours = std::fs::read_to_string(seen("serve.lock"))
                .is_ok_and(|l| l.trim() == pid.to_string());
            if ours
                && let Ok(a) = std::fs::read_to_string(&addr_file)
                && a.trim().contains(':')
            {
                break a.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {} within 30 s:\n{}",
                addr_file.display(),
                log_of(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let password = std::fs::read_to_string(seen("secrets/basic-auth-password"))
            .unwrap()
            .trim()
            .to_string();
        let s = Serve {
            child,
            data_dir,
            log,
            base: format!("http://{addr}"),
            password,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !client
            .get(format!("{}/healthz", s.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "no /healthz:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    fn log(&self) -> String {
        log_of(&self.log)
    }

    fn sys(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .basic_auth("admin", Some(&self.password))
    }

    /// Deploys, waits until ready, invokes with `body`; the answer.
    async fn deploy_and_call(
        &self,
        deployment: serde_json::Value,
        body: &str,
    ) -> (StatusCode, String) {
        let name = deployment["service"].as_str().unwrap().to_string();
        let r = self
            .sys(Method::POST, "/system/functions")
            .json(&deployment)
            .send()
            .await
            .unwrap();
        let st = r.status();
        assert!(
            st.is_success(),
            "deploy {name}: {st} {}\n{}",
            r.text().await.unwrap(),
            self.log()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let f: serde_json::Value = self
                .sys(Method::GET, &format!("/system/function/{name}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if f["availableReplicas"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never ready: {f}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = reqwest::Client::new()
            .post(format!("{}/function/{name}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Uploads a fork-mode bundle whose `./run.sh` prints where it runs and a file of its own.
    async fn upload_bundle(&self, work: &Path) -> String {
        let src = work.join("bundle-src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("greeting.txt"), "hello from the bundle").unwrap();
        let (digest, out) = common::pack_script_bundle(
            &src,
            "greet",
            "#!/bin/sh\necho \"$(cat greeting.txt), $(cat) (cwd $(pwd))\"\n",
        );
        let r = self
            .sys(Method::PUT, &format!("/system/bundles/{digest}"))
            .body(std::fs::read(&out).unwrap())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "upload: {}", r.status());
        digest
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== fjord serve log =====\n{}", self.log());
        }
    }
}

fn log_file(dir: &Path, name: &str) -> (PathBuf, Stdio, Stdio) {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    let f2 = f.try_clone().unwrap();
    (p, Stdio::from(f), Stdio::from(f2))
}

/// Runs `fjord serve` as root with no `--data-dir` and a 0700 HOME: the default data dir is
/// `/var/lib/fjord`. A private mount namespace puts a tmpfs there, so the host's real one is
/// untouched (its uid registry is bound in, so uid blocks stay unique on this machine).
async fn serve_as_root_with_defaults(t: &Path, home: &Path) -> Serve {
    let registry = t.join("uids");
    std::fs::create_dir_all(&registry).unwrap();
    std::fs::create_dir_all("/var/lib/fjord/uids").unwrap();
    let script = r#"set -e
mount --bind /var/lib/fjord/uids "$REGISTRY"
mount -t tmpfs -o mode=0755 fjord-first-run /var/lib/fjord
mkdir /var/lib/fjord/uids
mount --bind "$REGISTRY" /var/lib/fjord/uids
exec "$FJORD" serve --listen 127.0.0.1:0 --tune-kernel=false"#;
    let (log, out, err) = log_file(t, "serve-root.log");
    let child = clean("unshare", home)
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("REGISTRY", &registry)
        .env("FJORD", FJORD)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    Serve::wait(child, PathBuf::from("/var/lib/fjord"), log).await
}

fn private_home(t: &Path, owner: Option<u32>) -> PathBuf {
    let home = t.join("home");
    std::fs::create_dir_all(&home).unwrap();
    if let Some(uid) = owner {
        chown(&home, Some(uid), Some(uid)).unwrap();
    }
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    home
}

/// A `fjord` CLI command run in the root server's mount namespace (where `/var/lib/fjord`
/// is its data dir), optionally as nobody.
fn cli_in(
    s: &Serve,
    home: &Path,
    as_nobody: bool,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let pid = s.child.id().to_string();
    let mut c = clean("nsenter", home);
    c.args(["--target", &pid, "--mount", "--"]);
    if as_nobody {
        c.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    }
    c.arg(FJORD).args(args).envs(env.iter().copied());
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_with_no_flags_a_bundle_function_answers_and_the_cli_finds_the_password() {
    let t = tempdir();
    let home = private_home(t.path(), None);
    let s = serve_as_root_with_defaults(t.path(), &home).await;
    assert!(
        s.log().contains("/var/lib/fjord"),
        "the password file is logged under /var/lib/fjord:\n{}",
        s.log()
    );
    let digest = s.upload_bundle(t.path()).await;
    let (st, body) = s
        .deploy_and_call(json!({"service": "greet", "image": digest}), "Ada")
        .await;
    assert_eq!(
        (st, body.trim()),
        (StatusCode::OK, "hello from the bundle, Ada (cwd /home/app)"),
        "{}",
        s.log()
    );

    // The CLI, with no flag or variable, finds the password of the gateway it talks to.
    let (code, out, err) = cli_in(&s, &home, false, &["list", "-g", &s.base], &[]);
    assert_eq!(code, 0, "fjord list: {out}{err}");
    assert!(out.contains("greet"), "{out}");

    // A user who cannot read that password file: nothing is sent, and the 401 says so and
    // which file it tried.
    let (code, _, err) = cli_in(
        &s,
        Path::new("/nonexistent"),
        true,
        &["list", "-g", &s.base],
        &[],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no credentials sent"), "{err}");
    assert!(!err.contains("invalid credentials"), "{err}");
    assert!(
        err.contains("/var/lib/fjord/secrets/basic-auth-password: permission denied"),
        "{err}"
    );
    // A wrong password: the 401 names where it came from.
    let (code, _, err) = cli_in(
        &s,
        &home,
        false,
        &["list", "-g", &s.base],
        &[("FJORD_PASSWORD", "wrong")],
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("credentials tried: the password from FJORD_PASSWORD"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_a_data_dir_under_a_private_directory_still_runs_bundles() {
    // /root is 0700: a data dir below such a directory worked for no function before the
    // bundle was bound at /home/app in each function's own mount namespace.
    let t = tempdir();
    let home = private_home(t.path(), None);
    let data = home.join(".local/share/fjord");
    let (log, out, err) = log_file(t.path(), "serve-private.log");
    let child = clean(FJORD, &home)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tune-kernel=false",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let s = Serve::wait(child, data, log).await;
    let digest = s.upload_bundle(t.path()).await;
    let (st, body) = s
        .deploy_and_call(json!({"service": "greet", "image": digest}), "Bo")
        .await;
    assert_eq!(
        (st, body.trim()),
        (StatusCode::OK, "hello from the bundle, Bo (cwd /home/app)"),
        "{}",
        s.log()
    );
    // A program named inside the bundle that is not there: 400 at deploy, naming it.
    let r = s
        .sys(Method::POST, "/system/functions")
        .json(&json!({"service": "nope", "image": digest, "envProcess": "/home/app/missing.sh"}))
        .send()
        .await
        .unwrap();
    let st = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("/home/app/missing.sh"), "{body}");

    // A second server on the same data dir is refused, naming the first, and the first's
    // function keeps answering (before the lock, the second removed its replicas as stale).
    let out = clean(FJORD, &home)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tune-kernel=false",
            "--data-dir",
        ])
        .arg(&s.data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "is in use by another fjord serve (pid {}): stop it, or give this server a data dir of its own with --data-dir",
            s.child.id()
        )),
        "{err}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/function/greet", s.base))
        .body("Cy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.text().await.unwrap().trim(),
        "hello from the bundle, Cy (cwd /home/app)"
    );
}

/// `setpriv` to nobody, with a clean environment and the given HOME.
fn as_nobody(home: &Path) -> Command {
    let mut c = clean("setpriv", home);
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", FJORD]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_normal_user_with_no_flags_data_goes_to_the_users_own_dir() {
    let t = tempdir();
    let home = private_home(t.path(), Some(NOBODY));
    let (log, out, err) = log_file(t.path(), "serve-user.log");
    let child = as_nobody(&home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let s = Serve::wait(child, home.join(".local/share/fjord"), log).await;
    let (st, body) = s
        .deploy_and_call(
            json!({"service": "echo", "image": "echo", "envProcess": "cat"}),
            "from nobody",
        )
        .await;
    assert_eq!(
        (st, body.as_str()),
        (StatusCode::OK, "from nobody"),
        "{}",
        s.log()
    );
    assert!(s.data_dir.join("state.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_cannot_work_is_refused_with_why_and_what_to_do() {
    let t = tempdir();
    let home = private_home(t.path(), Some(NOBODY));
    // (A server that starts instead of refusing is stopped by `timeout`, failing the test.)
    // Not writable by the user.
    let root_owned = t.path().join("root-owned");
    std::fs::create_dir_all(&root_owned).unwrap();
    let out = as_nobody(&home)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root_owned.join("fjord"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "is not writable by user nobody; choose a data dir that user owns with --data-dir"
        ),
        "{err}"
    );

    // On a noexec filesystem, for a user whose functions run their bundle from there.
    let noexec = t.path().join("noexec");
    std::fs::create_dir_all(&noexec).unwrap();
    let script = r#"set -e
mount -t tmpfs -o noexec,uid=65534,gid=65534,mode=0700 fjord-first-run "$DIR"
exec timeout 60 setpriv --reuid=65534 --regid=65534 --clear-groups "$FJORD" serve --listen 127.0.0.1:0 --data-dir "$DIR/fjord""#;
    let out = clean("unshare", &home)
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("DIR", &noexec)
        .env("FJORD", FJORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is on a filesystem mounted noexec"), "{err}");
}
