//! Content trust end to end (issue 19), through the real binary as root: a real
//! `docker-registry` on loopback, images made by umoci/skopeo and run by runc, keys made by
//! `fjord key generate`, images signed by `fjord sign` (cosign's layout in the registry),
//! bundles signed with detached signatures uploaded beside them, and `fjord serve
//! --trust-policy`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::registry::{HTTPD, Images, Registry};
use common::{READY_TIMEOUT, ServeOpts, Server, TestDir, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASS: &str = "trust-test-passphrase";

fn root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the content trust tests need root (runc, sandboxes)"
    );
}

/// A key pair made by `fjord key generate` in `dir` (PREFIX.key, PREFIX.pub); returns the
/// prefix path and the key id it printed.
async fn generate_key(dir: &Path, prefix: &str) -> (PathBuf, String) {
    let p = dir.join(prefix);
    let out = common::run_cli(
        &[
            "key",
            "generate",
            "--output-key-prefix",
            p.to_str().unwrap(),
        ],
        &[("FJORD_KEY_PASSWORD", PASS)],
        &dir.join("cli.json"),
    )
    .await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let key = p.with_extension("key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let id = out
        .stderr
        .split("key id ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the key id is printed")
        .to_string();
    (p, id)
}

fn key_file(prefix: &Path, ext: &str) -> String {
    prefix.with_extension(ext).display().to_string()
}

/// `fjord sign --key PREFIX.key IMAGE`.
async fn sign(dir: &Path, prefix: &Path, image: &str) {
    let out = common::run_cli(
        &["sign", "--key", &key_file(prefix, "key"), image],
        &[("FJORD_KEY_PASSWORD", PASS)],
        &dir.join("cli.json"),
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "fjord sign {image}: {}{}",
        out.stdout,
        out.stderr
    );
}

fn write_policy(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A deploy or update expected to fail: its status and message.
async fn refused(s: &Server, method: Method, body: &Value) -> (StatusCode, String) {
    s.sys_json(method, "/system/functions", body).await
}

async fn cli(s: &Server, args: &[&str]) -> common::CliOut {
    let password = std::fs::read_to_string(s.password_file()).expect("password");
    let config = s.data_dir().with_extension("cli.json");
    let url = s.url("");
    let mut all = args.to_vec();
    all.extend(["-g", url.as_str()]);
    common::run_cli(&all, &[("FJORD_PASSWORD", password.trim())], &config).await
}

fn trust(st: &Value) -> &Value {
    &st["fjord"]["trust"]
}

/// The registry's manifest `tag` of `repo`, as it stores it.
async fn get_manifest(reg: &Registry, repo: &str, tag: &str) -> (String, Vec<u8>) {
    let r = common::client()
        .get(format!("http://{}/v2/{repo}/manifests/{tag}", reg.host()))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("registry");
    assert_eq!(r.status(), StatusCode::OK, "manifest {repo}:{tag}");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    (ct, r.bytes().await.unwrap().to_vec())
}

async fn put_manifest(reg: &Registry, repo: &str, tag: &str, ct: &str, body: Vec<u8>) {
    let r = common::client()
        .put(format!("http://{}/v2/{repo}/manifests/{tag}", reg.host()))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("registry");
    assert!(
        r.status().is_success(),
        "put manifest {repo}:{tag}: {}",
        r.status()
    );
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

async fn says(s: &Server, name: &str, want: &str) {
    let (code, body) = s.call_text(Method::POST, name, "x").await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::OK, want),
        "{name} serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_images_signed_by_a_trusted_key_deploy_and_restarts_verify_again() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    images
        .httpd("v1", "v1", &HTTPD)
        .httpd("v2", "v2", &HTTPD)
        .httpd("v3", "v3", &HTTPD);
    let d1 = reg.push(&images.layout(), "v1", "web", "1");
    let d2 = reg.push(&images.layout(), "v2", "web", "2");
    reg.push(&images.layout(), "v3", "web", "3");

    let dir = TestDir::new();
    let keys = dir.tmp.path();
    let (trusted, trusted_id) = generate_key(keys, "trusted").await;
    let (other, _) = generate_key(keys, "other").await;
    sign(keys, &trusted, &reg.image("web", "1")).await;
    sign(keys, &other, &reg.image("web", "3")).await;
    // cosign's layout: a manifest at sha256-<hex>.sig whose layer is the simple-signing
    // payload naming the digest, with the signature in its annotation.
    let (_, sig) = get_manifest(&reg, "web", &sig_tag(&d1)).await;
    let sig: Value = serde_json::from_slice(&sig).unwrap();
    let layer = &sig["layers"][0];
    assert_eq!(
        layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json",
        "{sig}"
    );
    assert!(
        layer["annotations"]["dev.cosignproject.cosign/signature"].is_string(),
        "{sig}"
    );

    // openfaas-fn wants the trusted key; every other namespace runs anything.
    let policy = write_policy(
        keys,
        "policy.yml",
        &format!(
            "namespaces:\n  openfaas-fn:\n    keys: [{}]\ndefault:\n  allow-unsigned: true\n",
            key_file(&trusted, "pub")
        ),
    );
    let opts = ServeOpts::args(&["--trust-policy", &policy]);
    let mut s = Server::start_in(dir.clone(), opts.clone()).await;

    let web = |tag: &str| json!({"service": "web", "image": reg.image("web", tag)});
    s.deploy(&web("1")).await;
    let st = s.wait_ready("web", READY_TIMEOUT).await;
    assert_eq!(trust(&st)["state"], "verified", "{st}");
    assert_eq!(trust(&st)["keyId"], trusted_id.as_str(), "{st}");
    let described = cli(&s, &["describe", "web"]).await.stdout;
    assert!(
        described.contains(&format!("verified (signed by key {trusted_id})")),
        "{described}"
    );
    says(&s, "web", "hello v1 x").await;

    // Unsigned: 403, and v1 keeps serving.
    let (code, body) = refused(&s, Method::PUT, &web("2")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("unsigned"), "{body}");
    says(&s, "web", "hello v1 x").await;
    // Signed, but by a key the policy does not list.
    let (code, body) = refused(&s, Method::PUT, &web("3")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("signed by an untrusted key"), "{body}");
    // v1's signature copied next to v2 (its signature tag): it names v1's digest.
    let (ct, m) = get_manifest(&reg, "web", &sig_tag(&d1)).await;
    put_manifest(&reg, "web", &sig_tag(&d2), &ct, m).await;
    let (code, body) = refused(&s, Method::PUT, &web("2")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("signature over another digest"), "{body}");
    assert!(
        body.contains(&d1),
        "names the digest it was made for: {body}"
    );
    // A command of the host cannot be signed: refused where signatures are required.
    let (code, body) = refused(
        &s,
        Method::POST,
        &json!({"service": "cmd", "image": "cmd", "envProcess": "cat"}),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    says(&s, "web", "hello v1 x").await;
    let st = s.get_function("web").await.unwrap();
    assert_eq!(st["image"], reg.image("web", "1"), "nothing changed: {st}");

    // Refused before the pull: nothing of the unsigned image was downloaded.
    let record = |d: &str| {
        s.data_dir()
            .join("images/images")
            .join(format!("{}.json", d.trim_start_matches("sha256:")))
    };
    assert!(record(&d1).exists(), "{}", record(&d1).display());
    assert!(!record(&d2).exists(), "the refused image was pulled");

    // Another namespace: the default entry allows unsigned images.
    let mut dev = web("2");
    dev["namespace"] = json!("dev");
    s.deploy(&dev).await;
    let st = s
        .wait_status(
            "web?namespace=dev",
            READY_TIMEOUT,
            "web in dev ready",
            |st| st["availableReplicas"].as_u64().unwrap_or(0) > 0,
        )
        .await;
    assert_eq!(trust(&st)["state"], "unsigned-allowed", "{st}");

    let out = cli(&s, &["trust", "check"]).await;
    assert_eq!(
        out.code,
        Some(0),
        "nothing refused: {}{}",
        out.stdout,
        out.stderr
    );

    // Restart under a policy that trusts only the other key: web is verified again and
    // refused (not started); `fjord trust check` lists it and fails.
    s.terminate(Duration::from_secs(30)).await;
    let policy2 = write_policy(
        keys,
        "policy2.yml",
        &format!(
            "namespaces:\n  openfaas-fn:\n    keys: [{}]\ndefault:\n  allow-unsigned: true\n",
            key_file(&other, "pub")
        ),
    );
    let mut s = Server::start_in(dir.clone(), ServeOpts::args(&["--trust-policy", &policy2])).await;
    assert!(s.get_function("web").await.is_none(), "refused at restart");
    let out = cli(&s, &["trust", "check"]).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("web ") && l.contains("openfaas-fn"))
        .unwrap_or_else(|| panic!("web listed: {}", out.stdout));
    assert!(
        line.contains("stopped") && line.contains("refused") && line.contains("untrusted key"),
        "{line}"
    );

    // Back to the first policy: verified again after the restart, serving v1.
    s.terminate(Duration::from_secs(30)).await;
    let s = Server::start_in(dir.clone(), opts).await;
    s.call_until_ok("web", READY_TIMEOUT).await;
    says(&s, "web", "hello v1 x").await;
    let st = s.get_function("web").await.unwrap();
    assert_eq!(trust(&st)["state"], "verified", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_run_only_with_a_trusted_signature_beside_them() {
    root();
    let dir = TestDir::new();
    let keys = dir.tmp.path();
    let (trusted, trusted_id) = generate_key(keys, "trusted").await;
    let (other, _) = generate_key(keys, "other").await;
    let open = |prefix: &Path| {
        fjord_trust::PrivateKey::from_encrypted_pem(
            &std::fs::read_to_string(prefix.with_extension("key")).unwrap(),
            PASS.as_bytes(),
        )
        .expect("the generated key opens")
    };
    let (tk, ok) = (open(&trusted), open(&other));
    // The public key as a secret of the namespace (`secret:NAME` in the policy).
    let policy = write_policy(
        keys,
        "policy.yml",
        "namespaces:\n  openfaas-fn:\n    keys: [\"secret:signing-key\"]\n",
    );
    let s = Server::start_in(dir.clone(), ServeOpts::args(&["--trust-policy", &policy])).await;
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": "signing-key", "value": std::fs::read_to_string(trusted.with_extension("pub")).unwrap()}),
        StatusCode::ACCEPTED,
    )
    .await;

    let a = s.upload_script_bundle("a", "#!/bin/sh\necho A\n").await;
    let b = s.upload_script_bundle("b", "#!/bin/sh\necho B\n").await;
    let put_sig = async |digest: &str, doc: &fjord_trust::BundleSignatures| {
        s.sys_json(
            Method::PUT,
            &format!("/system/bundles/{digest}/signature"),
            &serde_json::to_value(doc).unwrap(),
        )
        .await
    };
    let signed =
        |k: &fjord_trust::PrivateKey, d: &str| fjord_trust::BundleSignatures::sign(k, "fn", d);
    let (code, body) = put_sig(&a, &signed(&tk, &a)).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    let f = |d: &str| json!({"service": "fn", "image": d});
    s.deploy(&f(&a)).await;
    s.wait_ready("fn", READY_TIMEOUT).await;
    assert_eq!(s.call("fn").await, (StatusCode::OK, "A\n".into()));
    let st = s.get_function("fn").await.unwrap();
    assert_eq!(trust(&st)["state"], "verified", "{st}");
    assert_eq!(trust(&st)["keyId"], trusted_id.as_str(), "{st}");

    // B unsigned: 403, A keeps serving.
    let (code, body) = refused(&s, Method::PUT, &f(&b)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("unsigned"), "{body}");
    // B signed by a key the policy does not list.
    put_sig(&b, &signed(&ok, &b)).await;
    let (code, body) = refused(&s, Method::PUT, &f(&b)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("untrusted key"), "{body}");
    // A's signature uploaded for B: it names A's digest.
    put_sig(&b, &signed(&tk, &a)).await;
    let (code, body) = refused(&s, Method::PUT, &f(&b)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("signature over another digest"), "{body}");
    assert_eq!(s.call("fn").await, (StatusCode::OK, "A\n".into()));

    // A signed bundle whose archive was altered on disk after the upload.
    let c = s.upload_script_bundle("c", "#!/bin/sh\necho C\n").await;
    put_sig(&c, &signed(&tk, &c)).await;
    let archive = s
        .data_dir()
        .join("bundles")
        .join(format!("{}.tar.gz", c.trim_start_matches("sha256:")));
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&archive, bytes).unwrap();
    let (code, body) = refused(&s, Method::PUT, &f(&c)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("tampered"), "{body}");

    // Malformed signature documents and unknown bundles.
    let (code, body) = s
        .sys_json(
            Method::PUT,
            &format!("/system/bundles/{a}/signature"),
            &json!({"signatures": [{"payload": "e30=", "signature": "AA=="}]}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let missing = format!("sha256:{}", "0".repeat(64));
    let (code, body) = put_sig(&missing, &signed(&tk, &missing)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");

    // Signed by the trusted key: the update goes through.
    put_sig(&b, &signed(&tk, &b)).await;
    s.update(&f(&b)).await;
    wait_until(READY_TIMEOUT, "B serves", async || {
        match s.call("fn").await {
            (StatusCode::OK, b) if b == "B\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The key secret replaced by something that is not a public key: 400 naming it.
    s.sys_expect(
        Method::PUT,
        "/system/secrets",
        &json!({"name": "signing-key", "value": "not a key"}),
        StatusCode::ACCEPTED,
    )
    .await;
    let (code, body) = refused(&s, Method::PUT, &f(&a)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("signing-key"), "{body}");
    assert_eq!(s.call("fn").await, (StatusCode::OK, "B\n".into()));

    // A namespace the policy does not name (and no default): refused.
    let mut elsewhere = f(&a);
    elsewhere["namespace"] = json!("dev");
    let (code, body) = refused(&s, Method::POST, &elsewhere).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("no entry for namespace dev"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_policies_and_keys_stop_the_server_with_a_reason() {
    let dir = TestDir::new();
    let keys = dir.tmp.path();
    std::fs::write(keys.join("bad.pub"), "not a key\n").unwrap();
    for (text, needle) in [
        (
            "namespaces:\n  openfaas-fn:\n    keys: [bad.pub]\n",
            "bad.pub",
        ),
        (
            "namespaces:\n  openfaas-fn:\n    keys: [missing.pub]\n",
            "missing.pub",
        ),
        ("namespace:\n  x: {}\n", "not a trust policy"),
    ] {
        let policy = write_policy(keys, "policy.yml", text);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tune-kernel=false",
                "--data-dir",
            ])
            .arg(dir.data_dir())
            .args(["--trust-policy", &policy])
            .output()
            .expect("fjord serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started");
        assert!(
            err.contains("--trust-policy") && err.contains(needle),
            "{text}: {err}"
        );
    }
    let _ = Arc::clone(&dir);
}

/// `fjord up` in a stack folder with one python3-http function `greet` answering `body`.
async fn up(s: &Server, project: &Path, body: &str, extra: &[&str]) -> common::CliOut {
    stack_cli(s, project, body, "up", extra).await
}

/// `fjord CMD` (up, build, push, deploy) on the one-function stack, its handler answering `body`.
async fn stack_cli(
    s: &Server,
    project: &Path,
    body: &str,
    cmd: &str,
    extra: &[&str],
) -> common::CliOut {
    let handler = project.join("greet");
    std::fs::create_dir_all(&handler).unwrap();
    std::fs::write(
        project.join("stack.yml"),
        "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  greet:\n    lang: python3-http\n    handler: ./greet\n    image: greet:latest\n",
    )
    .unwrap();
    std::fs::write(
        handler.join("handler.py"),
        format!("def handle(event, context):\n    return {{\"statusCode\": 200, \"body\": \"{body}\"}}\n"),
    )
    .unwrap();
    let password = std::fs::read_to_string(s.password_file()).expect("password");
    let url = s.url("");
    let stack = project.join("stack.yml");
    let mut args = vec![cmd, "-f", stack.to_str().unwrap()];
    if cmd != "build" {
        args.extend(["-g", url.as_str()]);
    }
    args.extend_from_slice(extra);
    common::run_cli(
        &args,
        &[
            ("FJORD_PASSWORD", password.trim()),
            ("FJORD_KEY_PASSWORD", PASS),
        ],
        &project.join("cli.json"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjord_up_sign_uploads_a_bundle_signature_the_policy_accepts() {
    let dir = TestDir::new();
    let keys = dir.tmp.path();
    let (trusted, trusted_id) = generate_key(keys, "trusted").await;
    let policy = write_policy(
        keys,
        "policy.yml",
        &format!("default:\n  keys: [{}]\n", key_file(&trusted, "pub")),
    );
    let s = Server::start_in(dir.clone(), ServeOpts::args(&["--trust-policy", &policy])).await;
    let project = keys.join("project");
    let key = key_file(&trusted, "key");
    let out = up(&s, &project, "v1", &["--sign", &key]).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v1".into()));
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(trust(&st)["keyId"], trusted_id.as_str(), "{st}");
    // Without --sign the new bundle is uploaded but refused at deploy; v1 keeps serving.
    let out = up(&s, &project, "v2", &[]).await;
    assert_ne!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("403") && out.stderr.contains("unsigned"),
        "{}",
        out.stderr
    );
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v1".into()));
    // `fjord build --sign` leaves the signature beside the bundle; a plain push uploads it.
    let out = stack_cli(&s, &project, "v3", "build", &["--sign", &key]).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(project.join("build/greet/bundle.sig.json").exists());
    for cmd in ["push", "deploy"] {
        let out = stack_cli(&s, &project, "v3", cmd, &[]).await;
        assert_eq!(out.code, Some(0), "{cmd}: {}{}", out.stdout, out.stderr);
    }
    wait_until(Duration::from_secs(30), "v3 serving", async || {
        match s.call("greet").await {
            (StatusCode::OK, b) if b == "v3" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let st = s.get_function("greet").await.unwrap();
    assert_eq!(trust(&st)["keyId"], trusted_id.as_str(), "{st}");
    // A later build without --sign: the signature left over names the old digest and is
    // not uploaded, so the new bundle is refused and v3 keeps serving.
    for cmd in ["build", "push"] {
        let out = stack_cli(&s, &project, "v4", cmd, &[]).await;
        assert_eq!(out.code, Some(0), "{cmd}: {}{}", out.stdout, out.stderr);
    }
    let out = stack_cli(&s, &project, "v4", "deploy", &[]).await;
    assert!(
        out.code != Some(0) && out.stderr.contains("403"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(s.call("greet").await, (StatusCode::OK, "v3".into()));
    // --sign with --image is a usage error naming where images are signed.
    let out = stack_cli(&s, &project, "v4", "build", &["--image", "--sign", &key]).await;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("fjord push --image --sign"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjord_up_image_sign_pushes_a_cosign_signature_the_policy_accepts() {
    use common::registry::{copy_with_libs, run, umoci_image};
    root();
    let reg = Registry::start(None);
    let dir = TestDir::new();
    let keys = dir.tmp.path();
    // A base image made by umoci: busybox and the host's bash (the bash template's needs).
    let layout = keys.join("base-oci");
    umoci_image(
        &layout,
        "base",
        |r: &Path| {
            for d in ["bin", "tmp"] {
                std::fs::create_dir_all(r.join(d)).unwrap();
            }
            run(std::process::Command::new("chmod")
                .arg("1777")
                .arg(r.join("tmp")));
            std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
            for applet in ["sh", "cat", "env", "sleep"] {
                std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
            }
            copy_with_libs(r, Path::new("/bin/bash"));
        },
        &["--config.env=PATH=/bin".into()],
    );
    let base = reg.push(&layout, "base", "base/bash", "1");
    assert!(base.starts_with("sha256:"));
    let (trusted, trusted_id) = generate_key(keys, "trusted").await;
    let policy = write_policy(
        keys,
        "policy.yml",
        &format!("default:\n  keys: [{}]\n", key_file(&trusted, "pub")),
    );
    let s = Server::start_in(dir.clone(), ServeOpts::args(&["--trust-policy", &policy])).await;
    let project = keys.join("project");
    std::fs::create_dir_all(project.join("hello")).unwrap();
    let image = reg.image("hello", "1");
    std::fs::write(
        project.join("stack.yml"),
        format!("version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  hello:\n    lang: bash\n    handler: ./hello\n    image: {image}\n"),
    )
    .unwrap();
    std::fs::write(project.join("hello/handler.sh"), "echo signed\n").unwrap();
    let password = std::fs::read_to_string(s.password_file()).expect("password");
    let url = s.url("");
    let stack = project.join("stack.yml");
    let base_ref = reg.image("base/bash", "1");
    let key = key_file(&trusted, "key");
    // An image build: 60 s was not always enough on a loaded CI machine.
    let out = common::run_cli_within(
        &[
            "up",
            "-f",
            stack.to_str().unwrap(),
            "-g",
            &url,
            "--image",
            "--base-image",
            &base_ref,
            "--sign",
            &key,
        ],
        &[
            ("FJORD_PASSWORD", password.trim()),
            ("FJORD_KEY_PASSWORD", PASS),
        ],
        &project.join("cli.json"),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let st = s.wait_ready("hello", READY_TIMEOUT).await;
    assert_eq!(st["fjord"]["runtime"], "container", "{st}");
    assert_eq!(trust(&st)["state"], "verified", "{st}");
    assert_eq!(trust(&st)["keyId"], trusted_id.as_str(), "{st}");
    let digest = st["fjord"]["digest"].as_str().unwrap().to_string();
    // The signature sits where cosign puts it, over the digest that runs.
    let (_, m) = get_manifest(&reg, "hello", &sig_tag(&digest)).await;
    assert!(String::from_utf8_lossy(&m).contains("dev.cosignproject.cosign/signature"));
    let (code, body) = s.call_text(Method::POST, "hello", "").await;
    assert_eq!((code, body.trim()), (StatusCode::OK, "signed"));
}
