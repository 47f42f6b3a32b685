//! Function secrets end to end, through the real `fjord serve` (as root, so sandboxed):
//! `/system/secrets` statuses, encryption at rest, the files a function sees, rolls on
//! update, and the `fjord secret` commands.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{NS, Server, TestDir, fork_fn, http_fn, text};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(s: &Server, name: &str, value: &str) {
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/secrets",
            &json!({"name": name, "value": value}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "create secret {name}: {body}");
}

async fn list(s: &Server, query: &str) -> (String, Vec<Value>) {
    let r = s
        .sys(Method::GET, &format!("/system/secrets{query}"))
        .send()
        .await
        .unwrap();
    let (st, body) = text(r).await;
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
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/secrets",
            &json!({"name": "api-key", "value": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("api-key") && body.contains("update"),
        "{body}"
    );
    // rawValue (base64) is the other way to give a value.
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/secrets",
            &json!({"name": "raw.bin", "rawValue": "AAEC/w=="}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");

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

    let (st, body) = s
        .sys_json(
            Method::PUT,
            "/system/secrets",
            &json!({"name": "api-key", "value": "n3w"}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (st, body) = s
        .sys_json(
            Method::PUT,
            "/system/secrets",
            &json!({"name": "absent", "value": "n3w"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
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
        let (st, body) = s
            .sys_json(
                Method::POST,
                "/system/secrets",
                &json!({"name": bad, "value": "x"}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "name {bad:?}: {body}");
        assert!(body.starts_with("name:"), "name {bad:?}: {body}");
    }
    let (st, body) = s
        .sys_json(Method::POST, "/system/secrets", &json!({"name": "novalue"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.starts_with("value:"), "{body}");
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/secrets",
            &json!({"name": "b64", "rawValue": "!!"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.starts_with("rawValue:"), "{body}");
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/secrets",
            &json!({"name": 5, "value": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("name"), "{body}");
    let r = s
        .sys(Method::POST, "/system/secrets")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (st, body) = text(r).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let big = json!({"name": "big", "value": "x".repeat(2 << 20)});
    let (st, body) = s.sys_json(Method::POST, "/system/secrets", &big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // Not without credentials. A new connection: the server closes the one the 413 arrived
    // on (the rest of that body was never read), and a pooled reuse could race with that.
    let r = common::client()
        .get(s.url("/system/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let (st, body) = s
        .sys_json(
            Method::DELETE,
            "/system/secrets",
            &json!({"name": "api-key"}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (st, body) = s
        .sys_json(
            Method::DELETE,
            "/system/secrets",
            &json!({"name": "api-key"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
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
    let (st, body) = s.sys_json(Method::PUT, "/system/functions", &v2).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
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
    let (st, body) = s.sys_json(Method::POST, "/system/functions", &fresh).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
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

    let (st, body) = s
        .sys_json(
            Method::PUT,
            "/system/secrets",
            &json!({"name": "token", "value": "second"}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    for name in ["fork-user", "http-user"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (st, body) = s.call(name).await;
            if st == StatusCode::OK && body == "second" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} still answers {st} {body:?} 30 s after the secret changed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (st, body) = s
        .sys_json(Method::DELETE, "/system/secrets", &json!({"name": "token"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("fork-user") && body.contains("http-user"),
        "{body}"
    );
    let (_, items) = list(&s, "").await;
    assert_eq!(items.len(), 2, "nothing deleted: {items:?}");
    for name in ["fork-user", "http-user"] {
        let (st, body) = s
            .sys_json(
                Method::DELETE,
                "/system/functions",
                &json!({"functionName": name}),
            )
            .await;
        assert!(st.is_success(), "{body}");
    }
    let (st, body) = s
        .sys_json(Method::DELETE, "/system/secrets", &json!({"name": "token"}))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
}

/// Runs the real `fjord` binary against `s`.
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
    let (code, out, err) = fjord(
        &s,
        &["secret", "create", "lit", "--from-literal", "one"],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = fjord(
        &s,
        &["secret", "create", "lit", "--from-literal", "again"],
        b"",
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("409") && err.contains("fjord secret update"),
        "{err}"
    );
    let file = s.dir.tmp.path().join("value.txt");
    std::fs::write(&file, "from-file\n").unwrap();
    let (code, _, err) = fjord(
        &s,
        &[
            "secret",
            "create",
            "filed",
            "--from-file",
            file.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fjord(&s, &["secret", "create", "piped"], b"  from-stdin\n").await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fjord(&s, &["secret", "create", "empty"], b"\n").await;
    assert_eq!(code, 2, "an empty value is a usage error: {err}");
    assert!(err.contains("--from-literal"), "{err}");

    let (code, out, _) = fjord(&s, &["secret", "list"], b"").await;
    assert_eq!(code, 0);
    for n in ["lit", "filed", "piped"] {
        assert!(out.lines().any(|l| l.starts_with(n)), "{n} in {out}");
    }
    assert!(
        !out.contains("one") && !out.contains("from-"),
        "no values: {out}"
    );
    let (code, out, _) = fjord(&s, &["secret", "ls", "--json"], b"").await;
    assert_eq!(code, 0);
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

    let (code, _, err) = fjord(
        &s,
        &["secret", "update", "lit", "--from-literal", "two"],
        b"",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fjord(
        &s,
        &["secret", "update", "nope", "--from-literal", "x"],
        b"",
    )
    .await;
    assert_eq!(code, 5, "not found: {err}");
    let (code, _, err) = fjord(&s, &["secret", "rm", "lit"], b"").await;
    assert_eq!(code, 1, "in use: {err}");
    assert!(err.contains("show"), "{err}");
    let (code, _, err) = fjord(&s, &["secret", "remove", "piped", "--namespace", NS], b"").await;
    assert_eq!(code, 1, "in use: {err}");
    let (st, _) = s
        .sys_json(
            Method::DELETE,
            "/system/functions",
            &json!({"functionName": "show"}),
        )
        .await;
    assert!(st.is_success());
    let (code, _, err) = fjord(&s, &["secret", "rm", "lit"], b"").await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fjord(&s, &["secret", "rm", "lit"], b"").await;
    assert_eq!(code, 5, "{err}");

    let (code, out, _) = fjord(&s, &["secret", "--help"], b"").await;
    assert_eq!(code, 0);
    for w in [
        "create",
        "list",
        "update",
        "remove",
        "/var/openfaas/secrets",
    ] {
        assert!(out.contains(w), "{w} in help: {out}");
    }
    let (code, out, _) = fjord(&s, &["secret", "create", "--help"], b"").await;
    assert_eq!(code, 0);
    for w in ["--from-literal", "--from-file", "--trim", "stdin"] {
        assert!(out.contains(w), "{w} in help: {out}");
    }
}
