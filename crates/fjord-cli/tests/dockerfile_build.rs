//! `lang: dockerfile`: a handler folder with a Dockerfile, built by a real `buildah` (as
//! root, no Docker daemon) from a base image in a real `docker-registry` on a loopback port
//! (the base is made here by umoci from busybox-static and pushed by skopeo), pushed by
//! `fjord push --image` and run by fjord's container runtime (runc).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod common;

use common::registry::{Registry, run, umoci_image};

const FJORD: &str = env!("CARGO_BIN_EXE_fjord");

/// The base image, made once by umoci: busybox-static with the applets the tests' Dockerfiles
/// and handlers use, a world-writable /tmp, PATH set.
fn base_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fjord-dockerfile-base");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let l = work.join("oci");
        let populate = |r: &Path| {
            for d in ["bin", "tmp"] {
                std::fs::create_dir_all(r.join(d)).unwrap();
            }
            run(Command::new("chmod").arg("1777").arg(r.join("tmp")));
            std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
            for applet in ["sh", "cat", "echo", "ls", "id"] {
                std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
            }
        };
        umoci_image(&l, "base", populate, &["--config.env=PATH=/bin".into()]);
        l
    })
}

/// Pushes the base image to `reg`: `HOST/base/busybox:1`.
fn push_base(reg: &Registry) -> String {
    reg.push(base_layout(), "base", "base/busybox", "1");
    reg.image("base/busybox", "1")
}

fn root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (buildah's RUN steps and the server's containers)"
    );
}

fn fjord(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(FJORD)
        .args(args)
        .current_dir(dir)
        // An empty Docker config: the tests never read the user's.
        .env("DOCKER_CONFIG", dir.join(".docker"))
        .env(
            "XDG_CACHE_HOME",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fjord-image-cache"),
        )
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "fjord failed: {}", show(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stack with one `lang: dockerfile` function `hello` (image `image`) whose folder holds
/// `dockerfile`, and `build_args`.
fn stack(image: &str, build_args: &[(&str, &str)], dockerfile: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut yml = format!(
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  hello:\n    lang: dockerfile\n    handler: ./hello\n    image: {image}\n"
    );
    if !build_args.is_empty() {
        yml.push_str("    build_args:\n");
        for (k, v) in build_args {
            yml.push_str(&format!("      {k}: {v}\n"));
        }
    }
    std::fs::write(dir.path().join("stack.yml"), yml).unwrap();
    std::fs::create_dir(dir.path().join("hello")).unwrap();
    if let Some(d) = dockerfile {
        std::fs::write(dir.path().join("hello/Dockerfile"), d).unwrap();
    }
    dir
}

fn in_registry(reg: &Registry, repo: &str) -> bool {
    Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}", reg.image(repo, "latest")))
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_skeleton_builds_with_build_args_pushes_and_serves_as_a_container() {
    root();
    let reg = Registry::start(None);
    let base = push_base(&reg);
    let image = reg.image("fn/hello", "latest");
    let app = tempfile::tempdir().unwrap();
    // The skeleton `fjord new` writes, with a build argument used by a RUN step.
    ok(&fjord(
        app.path(),
        &[
            "new",
            "hello",
            "--lang",
            "dockerfile",
            "--prefix",
            &format!("{}/fn", reg.host()),
        ],
        &[],
    ));
    let df_path = app.path().join("hello/Dockerfile");
    let skeleton = std::fs::read_to_string(&df_path).unwrap();
    assert!(skeleton.contains("ARG BASE_IMAGE="), "{skeleton}");
    assert!(
        skeleton.contains("COPY --from=fjord-watchdog"),
        "{skeleton}"
    );
    std::fs::write(
        &df_path,
        skeleton.replace(
            "USER 1000:1000",
            "ARG GREETING=unset\nRUN echo \"$GREETING\" > greeting\nUSER 1000:1000",
        ),
    )
    .unwrap();
    std::fs::write(
        app.path().join("hello/handler.sh"),
        "body=$(cat)\necho \"$(cat greeting) ${body:-world} from $Http_Method $Http_Path\"\n",
    )
    .unwrap();
    let yml = std::fs::read_to_string(app.path().join("stack.yml")).unwrap();
    assert!(yml.contains("lang: dockerfile"), "{yml}");
    std::fs::write(
        app.path().join("stack.yml"),
        format!("{yml}    build_args:\n      BASE_IMAGE: {base}\n      GREETING: hola\n"),
    )
    .unwrap();

    // An image with or without --image (as faas-cli builds `lang: dockerfile`), and two
    // builds from a clean state give the same digest (--timestamp 0).
    let first = ok(&fjord(app.path(), &["build", "-q"], &[]));
    std::fs::remove_dir_all(app.path().join("build")).unwrap();
    let second = ok(&fjord(app.path(), &["build", "--image", "-q"], &[]));
    assert_eq!(first, second, "the same inputs give the same image");
    // Again with nothing changed: every step cached, the image left as it is.
    let out = fjord(app.path(), &["build"], &[]);
    assert_eq!(ok(&out), first);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("==> hello: unchanged sha256:"),
        "{}",
        show(&out)
    );
    let digest = first
        .trim()
        .strip_prefix(&format!("{image} "))
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_string();
    // The layout is an ordinary OCI image: umoci reads it, and it carries the watchdog.
    let layout = app.path().join("build/hello/image");
    let stat = run(Command::new("umoci")
        .args(["stat", "--json", "--image"])
        .arg(format!("{}:latest", layout.display())));
    assert!(stat.contains("history"), "{stat}");

    let server = common::Server::start().await;
    let password = std::fs::read_to_string(server.password_file()).expect("password");
    let out = fjord(
        app.path(),
        // No --image: the function is an image anyway, pushed to its registry and deployed
        // as a container.
        &["up", "-q", "-g", &server.url("")],
        &[
            ("FJORD_PASSWORD", password.trim()),
            (
                "FJORD_CONFIG",
                app.path().join("fjord-config.json").to_str().unwrap(),
            ),
        ],
    );
    let stdout = ok(&out);
    assert!(
        stdout.contains(&format!("{image} {digest}")),
        "up pushes what was built: {}",
        show(&out)
    );
    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{image}")));
    assert_eq!(
        inspect.trim(),
        digest,
        "the registry serves the built image"
    );
    let st = server.wait_ready("hello", common::READY_TIMEOUT).await;
    assert_eq!(st["fjord"]["runtime"], "container", "{st}");
    assert_eq!(st["fjord"]["digest"], digest.as_str(), "{st}");
    let (code, body) = server
        .call_text(reqwest::Method::POST, "hello/greet", "Ada")
        .await;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body.trim(), "hola Ada from POST /greet");
}

#[test]
fn a_failing_run_step_is_shown_and_nothing_is_pushed() {
    root();
    let reg = Registry::start(None);
    let base = push_base(&reg);
    let image = reg.image("fn/broken", "latest");
    let app = stack(
        &image,
        // --base-image wins over stack.yml (this one does not exist).
        &[("BASE_IMAGE", "127.0.0.1:1/no/such:image")],
        Some(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo first step\nRUN echo about to fail && ls /no-such-dir\nRUN echo never reached\n",
        ),
    );
    let out = fjord(
        app.path(),
        &["up", "--image", "--base-image", &base, "--skip-deploy"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let all = String::from_utf8_lossy(&out.stderr);
    // Each step is reported as it starts.
    assert!(
        all.contains("==> hello: STEP 2/4: RUN echo first step"),
        "{}",
        show(&out)
    );
    let err = &all[all
        .find("error: ")
        .unwrap_or_else(|| panic!("{}", show(&out)))..];
    assert!(
        err.contains(
            "building hello failed at step `STEP 3/4: RUN echo about to fail && ls /no-such-dir`"
        ),
        "the failing step is named: {}",
        show(&out)
    );
    assert!(
        err.contains("about to fail") && err.contains("/no-such-dir"),
        "its output is shown: {}",
        show(&out)
    );
    assert!(!err.contains("never reached"), "{}", show(&out));
    assert!(
        !err.contains("\nfirst step\n"),
        "only the failing step's output: {}",
        show(&out)
    );
    assert!(!in_registry(&reg, "fn/broken"), "nothing was pushed");
    // The failed step's container is gone: nothing stays mounted in buildah's storage.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = app.path().to_str().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(dir)),
        "mounts left under {dir}:\n{mounts}"
    );
    assert!(
        !app.path().join("build/hello/image").exists(),
        "no image layout is left for `fjord push --image`"
    );
}

#[test]
fn a_missing_dockerfile_or_buildah_is_a_clear_error() {
    root();
    let app = stack("127.0.0.1:1/fn/hello:latest", &[], None);
    let out = fjord(app.path(), &["build", "--image"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a Dockerfile in its handler folder")
            && err.contains("fjord new NAME --lang dockerfile"),
        "{}",
        show(&out)
    );

    std::fs::write(app.path().join("hello/Dockerfile"), "FROM scratch\n").unwrap();
    // A normal user is told what is needed (buildah runs as root here).
    run(Command::new("chmod").args(["-R", "a+rwX"]).arg(app.path()));
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            FJORD,
            "build",
        ])
        .current_dir(app.path())
        .env("HOME", app.path())
        .env("DOCKER_CONFIG", app.path().join(".docker"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`sudo fjord build`"),
        "{}",
        show(&out)
    );
    // A handler folder holding the stack's build/ (where buildah's storage goes) is refused:
    // `COPY . .` would copy it into the image.
    std::fs::write(app.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(
        app.path().join("here.yml"),
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  here:\n    lang: dockerfile\n    handler: .\n    image: 127.0.0.1:1/here:1\n",
    )
    .unwrap();
    let out = fjord(app.path(), &["build", "-f", "here.yml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds the build folder"),
        "{}",
        show(&out)
    );
    let empty = tempfile::tempdir().unwrap();
    let out = fjord(
        app.path(),
        &["build", "--image"],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("install the buildah package"),
        "{}",
        show(&out)
    );
}

#[test]
fn a_base_image_behind_credentials_is_pulled_with_the_docker_config() {
    root();
    let reg = Registry::start(Some(("alice", "right")));
    let base = push_base(&reg);
    let image = reg.image("fn/private", "latest");
    let app = stack(
        &image,
        &[("BASE_IMAGE", &base)],
        Some("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo built > /built\n"),
    );
    // No credentials: the FROM step fails, named, and nothing is pushed.
    let out = fjord(app.path(), &["up", "--skip-deploy"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed at step `STEP 1/2: FROM")
            && err.contains("needs credentials")
            && err.contains("--registry-config"),
        "{}",
        show(&out)
    );
    // The Docker config fjord reads (DOCKER_CONFIG here) reaches buildah: the base is pulled,
    // and fjord's own push uses the same credentials.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:right");
    std::fs::create_dir_all(app.path().join(".docker")).unwrap();
    std::fs::write(
        app.path().join(".docker/config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            reg.host()
        ),
    )
    .unwrap();
    let out = fjord(app.path(), &["up", "--skip-deploy"], &[]);
    let stdout = ok(&out);
    assert!(
        stdout.starts_with(&format!("{image} sha256:")),
        "{}",
        show(&out)
    );
    let inspected = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds=alice:right",
        &format!("docker://{image}"),
    ]));
    assert!(inspected.contains("\"Digest\""), "{inspected}");
}
