//! `fjord build --image`, `fjord push --image` and `fjord up --image` against real
//! components started here: `docker-registry` on a free loopback port, a base image made by
//! umoci (busybox-static plus the host's bash and the libraries `ldd` lists) and pushed by
//! skopeo, `skopeo`/`umoci` reading what fjord wrote, and `runc` running the image in a
//! network namespace this test creates.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::free_port;
use common::registry::{Registry, copy_with_libs, run, umoci_image};

const FJORD: &str = env!("CARGO_BIN_EXE_fjord");

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Pushes the test base image to `reg` with skopeo: `HOST/base/bash:1`.
fn push_base(reg: &Registry, creds: Option<&str>) -> String {
    let name = format!("{}/base/bash:1", reg.host());
    push_layout(base_layout(), "base", &name, creds);
    name
}

/// Pushes `tag` of the OCI layout `layout` to `dest` with skopeo (an independent tool).
fn push_layout(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.arg(format!("--dest-creds={c}"));
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd);
}

/// An OCI layout in the test target dir, made once per test binary by umoci: `populate`
/// fills the image's root, `config` are umoci's `--config.*` flags.
fn made_layout(dir: &str, tag: &str, populate: impl FnOnce(&Path), config: &[String]) -> PathBuf {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let l = work.join("oci");
    umoci_image(&l, tag, populate, config);
    l
}

/// busybox-static at /bin/busybox with `applets` linked to it, and a world-writable /tmp.
fn busybox_root(r: &Path, applets: &[&str]) {
    for d in ["bin", "tmp"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    run(Command::new("chmod").arg("1777").arg(r.join("tmp")));
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
}

/// `fjord up --image --base-image BASE --skip-deploy` in `dir`: builds and pushes every
/// image of the stack; no gateway needed (none answers on port 1).
fn build_and_push(dir: &Path, base: &str) -> Output {
    fjord(
        dir,
        &[
            "up",
            "--image",
            "--base-image",
            base,
            "--skip-deploy",
            "-q",
            "-g",
            "http://127.0.0.1:1",
        ],
    )
}

/// The base image, made once by umoci: busybox-static (with `sh` and `cat` links), the
/// host's bash with the libraries `ldd` lists, a world-writable /tmp, PATH set.
fn base_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let populate = |r: &Path| {
            busybox_root(r, &["sh", "cat", "env", "sleep"]);
            copy_with_libs(r, Path::new("/bin/bash"));
        };
        made_layout(
            "fjord-image-base",
            "base",
            populate,
            &["--config.env=PATH=/bin".into()],
        )
    })
}

/// A stack with one bash function `hello` whose image is `image`.
fn stack(image: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stack.yml"),
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  hello:\n    lang: bash\n    handler: ./hello\n    image: {image}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("hello")).unwrap();
    std::fs::write(
        dir.path().join("hello/handler.sh"),
        // A background process left behind (its parent exits): PID 1 must reap it.
        "body=$(cat)\n(sleep 0.2 &)\necho \"hello ${body:-world} from $Http_Method $Http_Path\"\n",
    )
    .unwrap();
    dir
}

fn fjord(dir: &Path, args: &[&str]) -> Output {
    Command::new(FJORD)
        .args(args)
        .current_dir(dir)
        // An empty Docker config: the tests never read the user's.
        .env("DOCKER_CONFIG", dir.join(".docker"))
        // The watchdog layer is made once for all the tests, outside the user's ~/.cache.
        .env(
            "XDG_CACHE_HOME",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fjord-image-cache"),
        )
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "fjord failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The digest on fjord's `REFERENCE DIGEST` line for `image`.
fn printed_digest(stdout: &str, image: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{image} ")))
        .unwrap_or_else(|| panic!("no line for {image} in {stdout:?}"))
        .trim()
        .to_string()
}

fn skopeo_digest(target: &str) -> String {
    let out = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", target]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// A network namespace for the container, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("fjord-img-{}-{n}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }

    /// curl inside the namespace: (status, body).
    fn curl(&self, args: &[&str]) -> Option<(u16, String)> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "curl",
                "-s",
                "-m",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A runc container, deleted on drop.
struct Container(String);

impl Container {
    /// The container's PID 1, as the host sees it.
    fn pid(&self) -> u64 {
        let out = run(Command::new("runc").args(["state", &self.0]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["pid"].as_u64().unwrap()
    }

    fn state(&self) -> String {
        let out = Command::new("runc")
            .args(["state", &self.0])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["status"].as_str().unwrap_or("gone").to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.0])
            .status();
    }
}

/// Pulls `image` with skopeo, unpacks it with umoci and starts it with `runc run -d` in a
/// network namespace of its own (reached with [`Netns::curl`]); `env` is added to the
/// process's environment. The container's output goes to `work/container.log`.
fn run_on_runc(image: &str, work: &Path, env: &[&str]) -> (Netns, Container) {
    let pulled = work.join("pulled");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:run", pulled.display())));
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:run", pulled.display()))
        .arg(&bundle));
    let netns = Netns::new();
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    // The image's own config, as umoci turned it into a runtime spec.
    assert_eq!(cfg["process"]["user"]["uid"], 1000);
    assert_eq!(cfg["process"]["cwd"], "/home/app");
    cfg["process"]["terminal"] = false.into();
    for e in env {
        cfg["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push((*e).into());
    }
    for ns in cfg["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = format!("/var/run/netns/{}", netns.0).into();
        }
    }
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let id = netns.0.clone();
    let log = std::fs::File::create(work.join("container.log")).unwrap();
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .stderr(Stdio::null())
        .status();
    run(Command::new("runc")
        .args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log));
    (netns, Container(id))
}

#[test]
fn build_is_reproducible_push_skips_what_the_registry_has_and_the_image_runs_on_runc() {
    let reg = Registry::start(None);
    let base = push_base(&reg, None);
    let image = format!("{}/fn/hello:1", reg.host());
    let app = stack(&image);
    let dir = app.path();

    // Build twice from scratch: the same digest.
    let one = printed_digest(
        &ok(&fjord(
            dir,
            &["build", "--image", "--base-image", &base, "-q"],
        )),
        &image,
    );
    let two = printed_digest(
        &ok(&fjord(
            dir,
            &[
                "build",
                "--image",
                "--no-cache",
                "--base-image",
                &base,
                "-q",
            ],
        )),
        &image,
    );
    assert_eq!(one, two, "two builds of the same inputs differ");
    assert!(one.starts_with("sha256:") && one.len() == 71, "{one}");

    // Independent tools read the layout and agree on the digest.
    let layout = dir.join("build/hello/image");
    assert_eq!(skopeo_digest(&format!("oci:{}:1", layout.display())), one);
    let stat = run(Command::new("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:1", layout.display())));
    assert!(stat.contains("fjord build --image"), "{stat}");

    // Push: every blob goes up, the registry serves the manifest fjord printed.
    let out = fjord(dir, &["push", "--image"]);
    let pushed = printed_digest(&ok(&out), &image);
    assert_eq!(pushed, one);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("uploading").count(), 4, "{err}");
    assert_eq!(skopeo_digest(&format!("docker://{image}")), one);

    // Again: nothing is uploaded twice.
    let out = fjord(dir, &["push", "--image"]);
    assert_eq!(printed_digest(&ok(&out), &image), one);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("uploading"), "{err}");
    assert_eq!(err.matches("already in").count(), 4, "{err}");

    // The pushed image, unpacked by umoci from the registry's copy, runs on plain runc.
    let work = tempfile::tempdir().unwrap();
    let (netns, container) = run_on_runc(&image, work.path(), &[]);
    let container_log = || std::fs::read_to_string(work.path().join("container.log")).unwrap();
    wait_for("the watchdog's /_/health on 8080", 30, || {
        netns
            .curl(&["http://127.0.0.1:8080/_/health"])
            .is_some_and(|(s, _)| s == 200)
    });
    let (status, body) = netns
        .curl(&["-d", "Ada", "http://127.0.0.1:8080/greet"])
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "hello Ada from POST /greet\n"),
        "{}",
        container_log()
    );
    // The orphaned `sleep` was reaped: no zombie stays in the container.
    wait_for("the orphaned sleep to be reaped", 30, || {
        // Orphans become children of the container's PID 1, zombies included (which have
        // left the cgroup, so `runc ps` would not list them): look for them in /proc.
        let init = container.pid();
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            // `pid (comm) state ppid ...`
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                let Some((head, tail)) = st.rsplit_once(") ") else {
                    return false;
                };
                let ppid = tail.split_whitespace().nth(1);
                head.ends_with("(sleep") && ppid == Some(init.to_string().as_str())
            })
        })
    });
    // SIGTERM: the watchdog drains and exits.
    run(Command::new("runc").args(["kill", &container.0, "TERM"]));
    wait_for("the container to stop after SIGTERM", 30, || {
        container.state() == "stopped"
    });
    assert!(container_log().contains("draining"), "{}", container_log());
}

#[test]
fn wrong_or_missing_credentials_and_a_registry_that_is_down_are_clear_errors() {
    let public = Registry::start(None);
    let base = push_base(&public, None);
    let private = Registry::start(Some(("alice", "right")));
    let image = format!("{}/fn/hello:1", private.host());
    let app = stack(&image);
    let dir = app.path();
    ok(&fjord(
        dir,
        &["build", "--image", "--base-image", &base, "-q"],
    ));

    // No credentials at all: say how to log in.
    let out = fjord(dir, &["push", "--image"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("registry {} refused", private.host()))
            && err.contains("docker login")
            && err.contains("--registry-config"),
        "{err}"
    );

    // A wrong password: name the file the credentials came from.
    let config = dir.join("auth.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"wrong"}}}}}}"#,
            private.host()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = fjord(dir, &["push", "--image", "--registry-config", cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("are wrong or lack access") && err.contains(cfg),
        "{err}"
    );

    // The right one works, through DOCKER_CONFIG too.
    std::fs::create_dir_all(dir.join(".docker")).unwrap();
    std::fs::write(
        dir.join(".docker/config.json"),
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("wrong", "right"),
    )
    .unwrap();
    let out = fjord(dir, &["push", "--image"]);
    let digest = printed_digest(&ok(&out), &image);
    let inspected = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds=alice:right",
        &format!("docker://{image}"),
    ]));
    assert!(inspected.contains(&digest), "{inspected}");

    // The registry goes down: unreachable, not a credentials problem.
    drop(private);
    let out = fjord(dir, &["push", "--image"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is unreachable"), "{err}");

    // A base image whose registry is down: the build says so.
    drop(public);
    let out = fjord(
        dir,
        &["build", "--image", "--no-cache", "--base-image", &base],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("base image") && err.contains("is unreachable"),
        "{err}"
    );
}

/// A fake gateway that records the requests `fjord up` sends (the real one is being
/// wired to the container runtime elsewhere): answers /system/info and accepts deploys.
/// `(method and path, body)` of each request.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn fake_gateway() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let request = line
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            record
                .lock()
                .unwrap()
                .push((request.clone(), String::from_utf8_lossy(&body).into_owned()));
            let (status, reply) = if request.starts_with("GET /system/info") {
                (
                    "200 OK",
                    r#"{"provider":{"provider":"fake","orchestration":"fake","version":{"sha":"x","release":"x"}},"version":{"sha":"x","release":"x"},"arch":"x86_64"}"#,
                )
            } else {
                ("202 Accepted", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn up_with_image_pushes_to_the_registry_and_deploys_the_image_reference() {
    let reg = Registry::start(None);
    let base = push_base(&reg, None);
    let image = format!("{}/fn/hello:2", reg.host());
    let app = stack(&image);
    let dir = app.path();
    let (port, seen) = fake_gateway();
    let gw = format!("http://127.0.0.1:{port}");
    let out = fjord(
        dir,
        &[
            "up",
            "--image",
            "--base-image",
            &base,
            "--no-wait",
            "-q",
            "-g",
            &gw,
        ],
    );
    let stdout = ok(&out);
    let digest = printed_digest(&stdout, &image);
    assert_eq!(skopeo_digest(&format!("docker://{image}")), digest);
    let seen = seen.lock().unwrap();
    let (_, body) = seen
        .iter()
        .find(|(r, _)| r == "POST /system/functions")
        .unwrap_or_else(|| panic!("no deploy among {seen:?}"));
    let d: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(d["service"], "hello");
    assert_eq!(d["image"], image.as_str());
    assert_eq!(d["annotations"]["com.fjord.runtime"], "container");
    // The image carries fprocess; the deploy does not override it.
    assert!(d.get("envProcess").is_none_or(|v| v.is_null()), "{d}");
    // Nothing went to the gateway's bundle store.
    assert!(
        !seen.iter().any(|(r, _)| r.contains("/system/bundle")),
        "{seen:?}"
    );
}

#[test]
fn an_http_mode_template_is_proxied_by_the_watchdog_which_honours_port() {
    let reg = Registry::start(None);
    let base = push_base(&reg, None);
    let image = format!("{}/fn/web:1", reg.host());
    let app = tempfile::tempdir().unwrap();
    let dir = app.path();
    // A stack-local template whose server is busybox httpd on the upstream port.
    std::fs::create_dir_all(dir.join("template/bbhttp")).unwrap();
    std::fs::write(
        dir.join("template/bbhttp/template.yml"),
        "language: bbhttp\nfprocess: busybox httpd -f -p 127.0.0.1:5000 -h /home/app/function\nmode: http\nbuild: none\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("stack.yml"),
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  web:\n    lang: bbhttp\n    handler: ./web\n    image: {image}\n    build_args:\n      BASE_IMAGE: {base}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.join("web")).unwrap();
    std::fs::write(dir.join("web/index.html"), "served by httpd\n").unwrap();
    // The base image comes from stack.yml's build_args.BASE_IMAGE here.
    let out = fjord(dir, &["build", "--image", "-q"]);
    let digest = printed_digest(&ok(&out), &image);
    let cfg = run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:1", dir.join("build/web/image").display())));
    assert!(
        cfg.contains("mode=http") && cfg.contains("upstream_url=http://127.0.0.1:5000"),
        "{cfg}"
    );
    assert_eq!(
        printed_digest(&ok(&fjord(dir, &["push", "--image"])), &image),
        digest
    );

    let work = tempfile::tempdir().unwrap();
    let (netns, container) = run_on_runc(&image, work.path(), &["port=9000"]);
    let log = || std::fs::read_to_string(work.path().join("container.log")).unwrap();
    wait_for("the upstream behind /_/health on port 9000", 30, || {
        netns
            .curl(&["http://127.0.0.1:9000/_/health"])
            .is_some_and(|(s, _)| s == 200)
    });
    let (status, body) = netns.curl(&["http://127.0.0.1:9000/index.html"]).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "served by httpd\n"),
        "{}",
        log()
    );
    // `port` moved the listener: nothing on 8080.
    assert!(
        netns
            .curl(&["http://127.0.0.1:8080/_/health"])
            .is_none_or(|(s, _)| s == 0),
        "{}",
        log()
    );
    // SIGTERM: the watchdog stops the function's server and exits.
    run(Command::new("runc").args(["kill", &container.0, "TERM"]));
    wait_for("the container to stop after SIGTERM", 30, || {
        container.state() == "stopped"
    });
    assert!(log().contains("draining"), "{}", log());
}

/// `fjord watchdog` on the host (not PID 1): `fprocess` on stdin/stdout with the request's
/// metadata, exec_timeout, max_inflight, health, and draining on SIGTERM.
#[test]
fn the_watchdog_forks_times_out_limits_inflight_and_drains_on_sigterm() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fn.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nbody=$(cat)\ncase \"$body\" in\n  slow*) touch \"$TMPDIR/started\"; sleep ${body#slow } ;;\n  fail) echo broken >&2; exit 3 ;;\nesac\necho \"got $body $Http_Method $Http_Path $Http_Query $Http_X_Trace\"\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("755").arg(&script));
    let log = std::fs::File::create(dir.path().join("watchdog.log")).unwrap();
    let mut child = Command::new(FJORD)
        .arg("watchdog")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("fprocess", script.to_str().unwrap())
        .env("port", port.to_string())
        .env("exec_timeout", "3s")
        .env("max_inflight", "1")
        .env("TMPDIR", dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let curl = |args: &[&str]| -> (u16, String) {
        let out = run(Command::new("curl")
            .args(["-s", "-m", "20", "-w", "\n%{http_code}"])
            .args(args));
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    };
    wait_for("the watchdog's health", 30, || {
        http_status(port, "/_/health") == Some(200)
    });
    assert!(
        dir.path().join(".lock").exists(),
        "no /tmp/.lock equivalent"
    );
    assert_eq!(
        curl(&["-d", "hi", "-H", "X-Trace: t1", &url("/a/b?c=1")]),
        (200, "got hi POST /a/b c=1 t1\n".to_string())
    );
    let (status, body) = curl(&["-d", "fail", &url("/")]);
    assert_eq!(status, 500);
    assert!(body.contains("broken"), "{body}");
    assert_eq!(curl(&["-d", "slow 100", &url("/")]).0, 504);
    // The timed-out request's processes are gone, its `sleep` included.
    wait_for("the timed-out sleep to be killed", 30, || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00100\x00")
                && std::fs::read_to_string(e.path().join("environ"))
                    .is_ok_and(|env| env.contains(dir.path().to_str().unwrap()))
        })
    });
    std::fs::remove_file(dir.path().join("started")).unwrap();

    // One request in flight (a slow one, started in the background): the next gets 429.
    let wd = Kill(&mut child);
    let slow_url = url("/");
    let slow = std::thread::spawn(move || {
        Command::new("curl")
            .args([
                "-s",
                "-m",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                "slow 2",
                &slow_url,
            ])
            .output()
            .unwrap()
    });
    // Wait until the slow request's process runs, then a second request is refused.
    wait_for("the slow request to start", 30, || {
        dir.path().join("started").exists()
    });
    assert_eq!(curl(&["-d", "x", &url("/")]).0, 429);
    // SIGTERM while it runs: the watchdog lets it finish, then exits 0.
    run(Command::new("kill").args(["-TERM", &wd.0.id().to_string()]));
    let out = slow.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let status = wd.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A Python base image, made once by umoci from the host's own files: busybox-static,
/// Debian's python3 (/usr/bin/python3.X) with its standard library (no tests) and every library `ldd` lists for
/// it and its extension modules. (~50 MB: also a realistic size for pulls.)
fn python_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let populate = |r: &Path| {
            // The version `fjord build` compiles with (it runs /usr/bin/python3).
            let exe = std::fs::canonicalize("/usr/bin/python3").unwrap();
            let py = exe.file_name().unwrap().to_str().unwrap().to_string();
            let stdlib = Path::new("/usr/lib").join(&py);
            busybox_root(r, &["sh"]);
            for d in ["usr/bin", "usr/lib"] {
                std::fs::create_dir_all(r.join(d)).unwrap();
            }
            std::os::unix::fs::symlink(&py, r.join("usr/bin/python3")).unwrap();
            run(Command::new("cp")
                .arg("-a")
                .arg(&stdlib)
                .arg(r.join("usr/lib/")));
            for skip in ["test", "idlelib", "tkinter", "ensurepip", "lib2to3"] {
                let _ = std::fs::remove_dir_all(r.join("usr/lib").join(&py).join(skip));
            }
            copy_with_libs(r, &exe);
            for e in std::fs::read_dir(stdlib.join("lib-dynload")).unwrap() {
                copy_with_libs(r, &e.unwrap().path());
            }
        };
        made_layout(
            "fjord-image-python",
            "python",
            populate,
            &["--config.env=PATH=/usr/bin:/bin".into()],
        )
    })
}

/// The real python3-http template, built into an image on a Python base, runs on runc: the
/// watchdog starts the template's own server with PORT and proxies to it.
#[test]
fn a_python3_http_function_image_runs_on_runc() {
    let reg = Registry::start(None);
    let base = format!("{}/base/python:3.11", reg.host());
    push_layout(python_layout(), "python", &base, None);
    let image = format!("{}/fn/py:1", reg.host());
    let app = tempfile::tempdir().unwrap();
    let dir = app.path();
    std::fs::write(
        dir.join("stack.yml"),
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  py:\n    lang: python3-http\n    handler: ./py\n    image: {image}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.join("py")).unwrap();
    std::fs::write(
        dir.join("py/handler.py"),
        "import os\n\ndef handle(event, context):\n    return {\"statusCode\": 201, \"body\": {\"got\": event.body.decode(), \"path\": event.path, \"port\": os.environ.get(\"PORT\")}}\n",
    )
    .unwrap();
    std::fs::write(dir.join("py/requirements.txt"), "").unwrap();
    let out = build_and_push(dir, &base);
    let digest = printed_digest(&ok(&out), &image);
    assert_eq!(skopeo_digest(&format!("docker://{image}")), digest);

    let work = tempfile::tempdir().unwrap();
    let (netns, _container) = run_on_runc(&image, work.path(), &[]);
    let log = || std::fs::read_to_string(work.path().join("container.log")).unwrap();
    wait_for("the python server behind /_/health", 60, || {
        netns
            .curl(&["http://127.0.0.1:8080/_/health"])
            .is_some_and(|(s, _)| s == 200)
    });
    let (status, body) = netns
        .curl(&["-d", "ping", "http://127.0.0.1:8080/some/path"])
        .unwrap();
    assert_eq!(status, 201, "{body}\n{}", log());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["got"], "ping");
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["port"], "5000");
}

/// The whole path a user takes: `fjord up --image` builds the image, pushes it to the local
/// registry and deploys it to a real `fjord serve`, which pulls it and runs it in a container
/// (its own watchdog inside); then a call answers through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_image_runs_the_function_as_a_container_on_fjord() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (the server runs containers)"
    );
    let reg = Registry::start(None);
    let base = push_base(&reg, None);
    let image = format!("{}/fn/hello:e2e", reg.host());
    let app = stack(&image);
    let server = common::Server::start().await;
    let password = std::fs::read_to_string(server.password_file()).expect("password");
    let out = Command::new(FJORD)
        .args(["up", "--image", "--base-image", &base, "-q", "-g"])
        .arg(server.url(""))
        .current_dir(app.path())
        .env("DOCKER_CONFIG", app.path().join(".docker"))
        .env(
            "XDG_CACHE_HOME",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fjord-image-cache"),
        )
        .env("FJORD_PASSWORD", password.trim())
        .env("FJORD_CONFIG", app.path().join("fjord-config.json"))
        .output()
        .expect("fjord up");
    let stdout = ok(&out);
    let digest = printed_digest(&stdout, &image);
    let st = server.wait_ready("hello", common::READY_TIMEOUT).await;
    assert_eq!(st["fjord"]["runtime"], "container", "{st}");
    assert_eq!(
        st["fjord"]["digest"],
        digest.as_str(),
        "runs what was pushed: {st}"
    );
    let (code, body) = server
        .call_text(reqwest::Method::POST, "hello/greet", "Ada")
        .await;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body.trim(), "hello Ada from POST /greet");
}

/// A base image with the host's Ruby, PHP and Java 17 (each with the libraries `ldd` lists
/// for it and for its extension modules), made once by umoci: the runtimes the ruby, php and
/// java templates build against, at the same paths. (Debian's JDK without jmods and headers:
/// ~190 MB, a heavy but real image.)
fn runtimes_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let jdk = std::fs::canonicalize("/usr/lib/jvm/java-17-openjdk-amd64").unwrap();
        let jdk_bin = jdk.join("bin");
        let populate = |r: &Path| {
            busybox_root(r, &["sh"]);
            for d in ["usr/lib/jvm", "etc", "usr/lib/x86_64-linux-gnu"] {
                std::fs::create_dir_all(r.join(d)).unwrap();
            }
            let cp = |from: &str, to: &str| {
                run(Command::new("cp").arg("-a").arg(from).arg(r.join(to)));
            };
            // Ruby: the interpreter, its library and its extension modules.
            copy_with_libs(r, Path::new("/usr/bin/ruby"));
            std::fs::create_dir_all(r.join("usr/lib/ruby")).unwrap();
            cp("/usr/lib/ruby/3.1.0", "usr/lib/ruby/");
            std::fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu/ruby")).unwrap();
            cp(
                "/usr/lib/x86_64-linux-gnu/ruby/3.1.0",
                "usr/lib/x86_64-linux-gnu/ruby/",
            );
            for so in shared_objects(&r.join("usr/lib/x86_64-linux-gnu/ruby/3.1.0")) {
                copy_with_libs(r, &Path::new("/").join(so.strip_prefix(r).unwrap()));
            }
            // PHP: the CLI alone (its core has JSON); no php.ini, no extra extensions.
            copy_with_libs(r, Path::new("/usr/bin/php"));
            // Java: the JDK's runtime part and its configuration in /etc.
            cp(jdk.to_str().unwrap(), "usr/lib/jvm/");
            let in_image = r.join(jdk.strip_prefix("/").unwrap());
            for skip in ["jmods", "include", "man", "demo", "lib/src.zip"] {
                let p = in_image.join(skip);
                let _ = std::fs::remove_dir_all(&p);
                let _ = std::fs::remove_file(&p);
            }
            cp("/etc/java-17-openjdk", "etc/");
            copy_with_libs(r, &jdk_bin.join("java"));
            for so in shared_objects(&in_image.join("lib")) {
                copy_with_libs(r, &Path::new("/").join(so.strip_prefix(r).unwrap()));
            }
        };
        made_layout(
            "fjord-image-runtimes",
            "runtimes",
            populate,
            &[format!(
                "--config.env=PATH={}:/usr/bin:/bin",
                jdk_bin.display()
            )],
        )
    })
}

/// Every shared object (`*.so` file) under `dir`.
fn shared_objects(dir: &Path) -> Vec<PathBuf> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-type", "f", "-name", "*.so"])
        .output()
        .unwrap();
    assert!(out.status.success(), "find {}", dir.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// The go, ruby, php and java templates build images too: `fjord up --image` on the hello
/// examples (the same handlers `scripts/run-examples` deploys as processes), then each image
/// runs on runc and greets through the watchdog inside it.
#[test]
fn go_ruby_php_and_java_function_images_run_on_runc() {
    let reg = Registry::start(None);
    let base = format!("{}/base/runtimes:1", reg.host());
    push_layout(runtimes_layout(), "runtimes", &base, None);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let app = tempfile::tempdir().unwrap();
    let dir = app.path();
    let functions = [
        ("hello-go", "golang-middleware"),
        ("hello-ruby", "ruby"),
        ("hello-php", "php"),
        ("hello-java", "java"),
    ];
    let mut yaml = "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n".to_string();
    for (name, lang) in functions {
        run(Command::new("cp")
            .arg("-r")
            .arg(examples.join(name))
            .arg(dir.join(name)));
        yaml += &format!(
            "  {name}:\n    lang: {lang}\n    handler: ./{name}\n    image: {}\n",
            reg.image(&format!("fn/{name}"), "1")
        );
    }
    std::fs::write(dir.join("stack.yml"), yaml).unwrap();
    let out = build_and_push(dir, &base);
    let stdout = ok(&out);
    for (name, lang) in functions {
        let image = reg.image(&format!("fn/{name}"), "1");
        assert_eq!(
            skopeo_digest(&format!("docker://{image}")),
            printed_digest(&stdout, &image),
            "{name}"
        );
        let work = tempfile::tempdir().unwrap();
        let (netns, _container) = run_on_runc(&image, work.path(), &[]);
        let log = || std::fs::read_to_string(work.path().join("container.log")).unwrap();
        // The watchdog answers its health check once the function's server (http mode)
        // listens; the JVM takes the longest.
        wait_for(&format!("{name}'s /_/health"), 60, || {
            netns
                .curl(&["http://127.0.0.1:8080/_/health"])
                .is_some_and(|(s, _)| s == 200)
        });
        let (status, body) = netns
            .curl(&["-d", "Ada", "http://127.0.0.1:8080/"])
            .unwrap();
        assert_eq!(status, 200, "{name} ({lang}): {body}\n{}", log());
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{name}: {body:?}: {e}\n{}", log()));
        assert_eq!(v["message"], "Hello, Ada!", "{name}");
        let (status, body) = netns.curl(&["http://127.0.0.1:8080/?name=Bo"]).unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains("Hello, Bo!"), "{name}: {body}");
    }
}
