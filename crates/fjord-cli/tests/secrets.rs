//! Function secrets end to end, through the real `fjord serve` (as root, so sandboxed):
//! `/system/secrets` statuses, encryption at rest, the files a function sees, rolls on
//! update, and the `fjord secret` commands.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{NS, Server, TestDir, fork_fn, http_fn, send_text, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(s: &Server, name: &str, value: &str) {
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": name, "value": value}),
        StatusCode::ACCEPTED,
    )
    .await;
}

async fn list(s: &Server, query: &str) -> (String, Vec<Value>) {
    let (st, body) = send_text(s.sys(Method::GET, &format!("/system/secrets{query}"))).await;
    assert_eq!(st, StatusCode::OK, "GET /system/secrets{query}: {body}");
    let v: Vec<Value> = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (body, v)
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files += 1;
                let data = std::fs::read(e.path()).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(e.path().display().to_string());
                }
            }
        }
    }
    assert!(
        files >= 4,
        "expected state.db, the key and more under {}",
        dir.display()
    );
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_api_statuses_and_values_never_returned() {
    let s = Server::start().await;
    let value = "v4lue-never-returned-1f2e";
    create(&s, "api-key", value).await;
    let body = s
        .sys_expect(
            Method::POST,
            "/system/secrets",
            &json!({"name": "api-key", "value": "x"}),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(
        body.contains("api-key") && body.contains("update"),
        "{body}"
    );
    // rawValue (base64) is the other way to give a value.
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": "raw.bin", "rawValue": "AAEC/w=="}),
        StatusCode::ACCEPTED,
    )
    .await;

    let (raw, items) = list(&s, "").await;
    assert_eq!(
        items,
        vec![
            json!({"name": "api-key", "namespace": NS}),
            json!({"name": "raw.bin", "namespace": NS})
        ]
    );
    assert!(!raw.contains(value), "values are never listed: {raw}");
    let (_, other) = list(&s, "?namespace=other-ns").await;
    assert!(other.is_empty(), "{other:?}");

    s.sys_expect(
        Method::PUT,
        "/system/secrets",
        &json!({"name": "api-key", "value": "n3w"}),
        StatusCode::ACCEPTED,
    )
    .await;
    let body = s
        .sys_expect(
            Method::PUT,
            "/system/secrets",
            &json!({"name": "absent", "value": "n3w"}),
            StatusCode::NOT_FOUND,
        )
        .await;
    assert!(body.contains("absent") && body.contains("create"), "{body}");

    // Names become file names: strictly validated, 400 naming the field.
    let long = "a".repeat(254);
    for bad in [
        "../etc/passwd",
        "a/b",
        "",
        "UPPER",
        ".hidden",
        "a..b",
        "tab\there",
        long.as_str(),
    ] {
        let body = s
            .sys_expect(
                Method::POST,
                "/system/secrets",
                &json!({"name": bad, "value": "x"}),
                StatusCode::BAD_REQUEST,
            )
            .await;
        assert!(body.starts_with("name:"), "name {bad:?}: {body}");
    }
    let body = s
        .sys_expect(
            Method::POST,
            "/system/secrets",
            &json!({"name": "novalue"}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.starts_with("value:"), "{body}");
    let body = s
        .sys_expect(
            Method::POST,
            "/system/secrets",
            &json!({"name": "b64", "rawValue": "!!"}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.starts_with("rawValue:"), "{body}");
    let body = s
        .sys_expect(
            Method::POST,
            "/system/secrets",
            &json!({"name": 5, "value": "x"}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("name"), "{body}");
    let (st, body) = send_text(s.sys(Method::POST, "/system/secrets").body("{not json")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let big = json!({"name": "big", "value": "x".repeat(2 << 20)});
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &big,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;

    // Not without credentials. A new connection: the server closes the one the 413 arrived
    // on (the rest of that body was never read), and a pooled reuse could race with that.
    let r = common::client()
        .get(s.url("/system/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    s.sys_expect(
        Method::DELETE,
        "/system/secrets",
        &json!({"name": "api-key"}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.sys_expect(
        Method::DELETE,
        "/system/secrets",
        &json!({"name": "api-key"}),
        StatusCode::NOT_FOUND,
    )
    .await;
    let (_, items) = list(&s, "").await;
    assert_eq!(items, vec![json!({"name": "raw.bin", "namespace": NS})]);

    assert!(
        !s.log_tail().contains(value),
        "the server log must not show values"
    );
}

/// What a sandboxed function sees of its secrets: the value, modes, owner, and no way to
/// write; and nothing of another function's secret, even through /proc/<pid>/root.
const PROBE: &str = r#"sh -c 'cat /var/openfaas/secrets/mine; echo; echo ls=$(ls /var/openfaas/secrets | tr "\n" " "); echo me=$(id -u); stat -c "file=%a:%u" /var/openfaas/secrets/mine; stat -c "dir=%a:%u" /var/openfaas/secrets; echo env=$FJORD_SECRETS_DIR; (echo x > /var/openfaas/secrets/mine) 2>/dev/null && echo write=ok || echo write=denied; (echo x > /var/openfaas/secrets/new) 2>/dev/null && echo create=ok || echo create=denied; cat /proc/[0-9]*/root/var/openfaas/secrets/theirs 2>/dev/null; echo end'"#;

fn line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_see_only_their_own_secrets_read_only() {
    let s = Server::start().await;
    create(&s, "mine", "alpha-secret-value").await;
    create(&s, "theirs", "beta-secret-value").await;
    // B: a long-lived http replica holding "theirs" (its process is in /proc).
    let mut b = http_fn("holder", "1");
    b["secrets"] = json!(["theirs"]);
    s.deploy_ready(&b).await;
    let mut a = fork_fn("prober", PROBE);
    a["secrets"] = json!(["mine", "mine"]);
    s.deploy_ready(&a).await;

    let (st, body) = s.call("prober").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.starts_with("alpha-secret-value\n"), "{body}");
    assert_eq!(
        line(&body, "ls=").trim(),
        "mine",
        "only its own secret: {body}"
    );
    let me = line(&body, "me=");
    assert_ne!(me, "0");
    assert_eq!(line(&body, "file="), format!("400:{me}"), "{body}");
    assert_eq!(line(&body, "dir="), format!("500:{me}"), "{body}");
    assert_eq!(line(&body, "env="), "/var/openfaas/secrets");
    assert_eq!(line(&body, "write="), "denied", "{body}");
    assert_eq!(line(&body, "create="), "denied", "{body}");
    assert!(
        !body.contains("beta-secret-value"),
        "read B's secret: {body}"
    );
    assert!(body.trim_end().ends_with("end"), "{body}");

    // The holder really has its file (so the check above could have failed).
    let mut b2 = fork_fn("holder2", "cat /var/openfaas/secrets/theirs");
    b2["secrets"] = json!(["theirs"]);
    s.deploy_ready(&b2).await;
    assert_eq!(
        s.call("holder2").await,
        (StatusCode::OK, "beta-secret-value".into())
    );
    // A function without secrets has an empty directory there.
    s.deploy_ready(&fork_fn("plain", "ls -A /var/openfaas/secrets"))
        .await;
    assert_eq!(s.call("plain").await, (StatusCode::OK, String::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_survive_a_restart() {
    let dir = TestDir::new();
    let plaintext = "pl41ntext-must-not-hit-disk-93c1";
    {
        let s = Server::start_in(dir.clone(), Default::default()).await;
        create(&s, "db-password", plaintext).await;
        let mut f = fork_fn("reader", "cat /var/openfaas/secrets/db-password");
        f["secrets"] = json!(["db-password"]);
        s.deploy_ready(&f).await;
        assert_eq!(s.call("reader").await, (StatusCode::OK, plaintext.into()));
        let hits = files_containing(&dir.data_dir(), plaintext.as_bytes());
        assert!(hits.is_empty(), "plaintext found on disk: {hits:?}");
        // Checkpoint the WAL too, then look again after the server stopped.
    }
    let hits = files_containing(&dir.data_dir(), plaintext.as_bytes());
    assert!(hits.is_empty(), "plaintext found on disk: {hits:?}");
    let key = dir.data_dir().join("secrets/secrets.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let key_bytes = std::fs::read(&key).unwrap();

    let s = Server::start_in(dir.clone(), Default::default()).await;
    assert_eq!(
        std::fs::read(&key).unwrap(),
        key_bytes,
        "the key is kept across starts"
    );
    s.wait_ready("reader", common::READY_TIMEOUT).await;
    assert_eq!(s.call("reader").await, (StatusCode::OK, plaintext.into()));
    drop(s);

    // A key file of the wrong size stops the server with a clear error.
    std::fs::write(&key, b"not a key").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tune-kernel=false",
            "--data-dir",
        ])
        .arg(dir.data_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("secrets.key") && err.contains("9 bytes"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_400_and_the_old_version_keeps_serving() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("svc", "echo v1")).await;
    let mut v2 = fork_fn("svc", "echo v2");
    v2["secrets"] = json!(["not-there"]);
    let body = s
        .sys_expect(
            Method::PUT,
            "/system/functions",
            &v2,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        body.contains("secrets[0]") && body.contains("not-there"),
        "{body}"
    );
    assert_eq!(s.call("svc").await, (StatusCode::OK, "v1\n".into()));
    let st = s.get_function("svc").await.unwrap();
    assert!(
        st["secrets"].is_null(),
        "the stored spec is unchanged: {st}"
    );

    let mut fresh = fork_fn("fresh", "echo hi");
    fresh["secrets"] = json!(["../escape"]);
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &fresh,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.starts_with("secrets[0]:"), "{body}");
    assert!(s.get_function("fresh").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_a_secret_rolls_its_functions_and_deleting_one_in_use_is_409() {
    let s = Server::start().await;
    create(&s, "token", "first").await;
    create(&s, "unused", "x").await;
    let mut f = fork_fn("fork-user", "cat /var/openfaas/secrets/token");
    f["secrets"] = json!(["token"]);
    s.deploy_ready(&f).await;
    // An http replica reads the file per request: it sees the new value only after a roll.
    let mut h = http_fn("http-user", "1");
    h["secrets"] = json!(["token"]);
    h["envProcess"] = json!(
        "/usr/bin/python3 -c 'import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n  b=open(\"/var/openfaas/secrets/token\",\"rb\").read();s.send_response(200);s.end_headers();s.wfile.write(b)\nimport os\nh.HTTPServer((\"127.0.0.1\",int(os.environ[\"PORT\"])),H).serve_forever()'"
    );
    s.deploy_ready(&h).await;
    assert_eq!(s.call("fork-user").await.1, "first");
    assert_eq!(s.call("http-user").await.1, "first");

    s.sys_expect(
        Method::PUT,
        "/system/secrets",
        &json!({"name": "token", "value": "second"}),
        StatusCode::ACCEPTED,
    )
    .await;
    for name in ["fork-user", "http-user"] {
        let what = format!("{name} answers the changed secret");
        wait_until(Duration::from_secs(30), &what, || async {
            let (st, body) = s.call(name).await;
            st == StatusCode::OK && body == "second"
        })
        .await;
    }

    let body = s
        .sys_expect(
            Method::DELETE,
            "/system/secrets",
            &json!({"name": "token"}),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(
        body.contains("fork-user") && body.contains("http-user"),
        "{body}"
    );
    let (_, items) = list(&s, "").await;
    assert_eq!(items.len(), 2, "nothing deleted: {items:?}");
    for name in ["fork-user", "http-user"] {
        s.remove(name).await;
    }
    s.sys_expect(
        Method::DELETE,
        "/system/secrets",
        &json!({"name": "token"}),
        StatusCode::ACCEPTED,
    )
    .await;
}

/// Runs the real `fjord` binary against `s`.
/// Runs `fjord args` with `stdin` against `s`; asserts its exit code; stdout and stderr.
async fn fjord_exits(s: &Server, args: &[&str], stdin: &[u8], code: i32) -> (String, String) {
    let (got, out, err) = fjord(s, args, stdin).await;
    assert_eq!(got, code, "fjord {}: {out}{err}", args.join(" "));
    (out, err)
}

async fn fjord(s: &Server, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let cfg = s.dir.tmp.path().join("cli-config.json");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"));
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FJORD_URL", s.url(""))
        .env("FJORD_CONFIG", &cfg)
        .env("FJORD_DATA_DIR", s.dir.tmp.path().join("none"))
        .env("FJORD_PASSWORD", s.password.clone().unwrap_or_default())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("fjord finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_secret_create_list_update_remove() {
    let s = Server::start().await;
    fjord_exits(
        &s,
        &["secret", "create", "lit", "--from-literal", "one"],
        b"",
        0,
    )
    .await;
    let (_, err) = fjord_exits(
        &s,
        &["secret", "create", "lit", "--from-literal", "again"],
        b"",
        1,
    )
    .await;
    assert!(
        err.contains("409") && err.contains("fjord secret update"),
        "{err}"
    );
    let file = s.dir.tmp.path().join("value.txt");
    std::fs::write(&file, "from-file\n").unwrap();
    fjord_exits(
        &s,
        &[
            "secret",
            "create",
            "filed",
            "--from-file",
            file.to_str().unwrap(),
        ],
        b"",
        0,
    )
    .await;
    fjord_exits(&s, &["secret", "create", "piped"], b" from-stdin\n", 0).await;
    let (_, err) = fjord_exits(&s, &["secret", "create", "empty"], b"\n", 2).await;
    assert!(err.contains("--from-literal"), "{err}");

    let (out, _) = fjord_exits(&s, &["secret", "list"], b"", 0).await;
    for n in ["lit", "filed", "piped"] {
        assert!(out.lines().any(|l| l.starts_with(n)), "{n} in {out}");
    }
    assert!(
        !out.contains("one") && !out.contains("from-"),
        "no values: {out}"
    );
    let (out, _) = fjord_exits(&s, &["secret", "ls", "--json"], b"", 0).await;
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.len(), 3);

    // Values arrive trimmed (as faas-cli's --trim) and byte exact: a function reads them.
    let mut f = fork_fn(
        "show",
        "sh -c 'cat /var/openfaas/secrets/lit /var/openfaas/secrets/filed /var/openfaas/secrets/piped'",
    );
    f["secrets"] = json!(["lit", "filed", "piped"]);
    s.deploy_ready(&f).await;
    assert_eq!(s.call("show").await.1, "onefrom-filefrom-stdin");

    fjord_exits(
        &s,
        &["secret", "update", "lit", "--from-literal", "two"],
        b"",
        0,
    )
    .await;
    fjord_exits(
        &s,
        &["secret", "update", "nope", "--from-literal", "x"],
        b"",
        5,
    )
    .await;
    let (_, err) = fjord_exits(&s, &["secret", "rm", "lit"], b"", 1).await;
    assert!(err.contains("show"), "{err}");
    fjord_exits(
        &s,
        &["secret", "remove", "piped", "--namespace", NS],
        b"",
        1,
    )
    .await;
    let (st, _) = s
        .sys_json(
            Method::DELETE,
            "/system/functions",
            &json!({"functionName": "show"}),
        )
        .await;
    assert!(st.is_success());
    fjord_exits(&s, &["secret", "rm", "lit"], b"", 0).await;
    fjord_exits(&s, &["secret", "rm", "lit"], b"", 5).await;

    let (out, _) = fjord_exits(&s, &["secret", "--help"], b"", 0).await;
    for w in [
        "create",
        "list",
        "update",
        "remove",
        "/var/openfaas/secrets",
    ] {
        assert!(out.contains(w), "{w} in help: {out}");
    }
    let (out, _) = fjord_exits(&s, &["secret", "create", "--help"], b"", 0).await;
    for w in ["--from-literal", "--from-file", "--trim", "stdin"] {
        assert!(out.contains(w), "{w} in help: {out}");
    }
}
