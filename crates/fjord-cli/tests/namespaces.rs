//! Namespaces as in OpenFaaS (`/system/namespaces`, `/system/namespace/{name}`, `fjord
//! namespace`), deploys refused at once when their program cannot start, and a faas-cli
//! deploy of a bundle pushed with `fjord push`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{NS, READY_TIMEOUT, ServeOpts, Server, TestDir, fork_fn, send_text, text};
use fjord_bundle::raw::{Entry, tar_gz};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn get_json(s: &Server, path: &str) -> (StatusCode, Value) {
    let (st, body) = text(s.sys(Method::GET, path).send().await.unwrap()).await;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (st, v)
}

async fn namespaces(s: &Server) -> Vec<String> {
    let (st, v) = get_json(s, "/system/namespaces").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn delete(s: &Server, path: &str) -> (StatusCode, String) {
    text(s.sys(Method::DELETE, path).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_api_round_trip() {
    let dir = TestDir::new();
    let mut s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    assert!(namespaces(&s).await.contains(&NS.to_string()));

    // The OpenAPI document describes every method of the new route.
    let (st, doc) = get_json(&s, "/system/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    let route = &doc["paths"]["/system/namespace/{name}"];
    for method in ["get", "post", "put", "delete"] {
        assert!(
            route[method]["responses"].is_object(),
            "openapi.json lacks {method} /system/namespace/{{name}}"
        );
    }
    assert!(doc["components"]["schemas"]["FunctionNamespace"].is_object());

    // Unknown: 404 saying how to create it.
    let (st, v) = get_json(&s, "/system/namespace/team-a").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v.to_string().contains("fjord namespace create team-a"),
        "{v}"
    );
    s.sys_expect(
        Method::PUT,
        "/system/namespace/team-a",
        &json!({"labels": {}}),
        StatusCode::NOT_FOUND,
    )
    .await;

    // Create with labels and annotations; read back.
    s.sys_expect(
        Method::POST,
        "/system/namespace/team-a",
        &json!({"name": "team-a", "labels": {"env": "dev"}, "annotations": {"owner": "ada"}}),
        StatusCode::ACCEPTED,
    )
    .await;
    let (st, v) = get_json(&s, "/system/namespace/team-a").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"name": "team-a", "labels": {"env": "dev"}, "annotations": {"owner": "ada"}})
    );
    assert!(namespaces(&s).await.contains(&"team-a".to_string()));
    let body = s
        .sys_expect(
            Method::POST,
            "/system/namespace/team-a",
            &json!({}),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(
        body.contains("PUT"),
        "the 409 should say what to do: {body}"
    );

    // Update replaces labels and annotations.
    s.sys_expect(
        Method::PUT,
        "/system/namespace/team-a",
        &json!({"labels": {"env": "prod"}}),
        StatusCode::ACCEPTED,
    )
    .await;
    let (_, v) = get_json(&s, "/system/namespace/team-a").await;
    assert_eq!(v["labels"], json!({"env": "prod"}));
    assert_eq!(v["annotations"], json!({}));

    // Invalid input: 400 naming the field.
    for (path, body, field) in [
        ("/system/namespace/Team_A", json!({}), "name"),
        ("/system/namespace/team-b", json!({"name": "other"}), "name"),
        (
            "/system/namespace/team-b",
            json!({"labels": {"": "x"}}),
            "labels",
        ),
        (
            "/system/namespace/team-b",
            json!({"annotations": {"k": 1}}),
            "annotations",
        ),
    ] {
        let answer = s
            .sys_expect(Method::POST, path, &body, StatusCode::BAD_REQUEST)
            .await;
        assert!(
            answer.contains(field),
            "POST {path} {body}: should name {field}: {answer}"
        );
    }
    let (st, body) = get_json(&s, "/system/namespace/Team_A").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, body) = delete(&s, &format!("/system/namespace/{NS}")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the default namespace: {body}");

    // A namespace holding only a secret is listed; it cannot be deleted while the secret is
    // there, and is gone with it.
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": "api-key", "namespace": "vault", "value": "s3cr3t"}),
        StatusCode::ACCEPTED,
    )
    .await;
    assert!(namespaces(&s).await.contains(&"vault".to_string()));
    let (st, v) = get_json(&s, "/system/namespace/vault").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, body) = delete(&s, "/system/namespace/vault").await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("secret(s) api-key"),
        "should name the secret: {body}"
    );
    s.sys_expect(
        Method::DELETE,
        "/system/secrets",
        &json!({"name": "api-key", "namespace": "vault"}),
        StatusCode::ACCEPTED,
    )
    .await;
    assert!(!namespaces(&s).await.contains(&"vault".to_string()));

    // A namespace with a function: 409 naming it; empty, it is deleted.
    let mut f = fork_fn("lister", "cat");
    f["namespace"] = json!("team-a");
    s.deploy(&f).await;
    let (st, body) = delete(&s, "/system/namespace/team-a").await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("function(s) lister"),
        "should name the function: {body}"
    );
    s.sys_expect(
        Method::DELETE,
        "/system/functions",
        &json!({"functionName": "lister", "namespace": "team-a"}),
        StatusCode::ACCEPTED,
    )
    .await;
    // Still created (it has a record), now empty.
    assert!(namespaces(&s).await.contains(&"team-a".to_string()));
    let (st, body) = delete(&s, "/system/namespace/team-a").await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (st, _) = get_json(&s, "/system/namespace/team-a").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(!namespaces(&s).await.contains(&"team-a".to_string()));
    let (st, body) = delete(&s, "/system/namespace/team-a").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");

    // Deploying into a namespace nobody created still works (as it always has): it exists
    // while it holds the function.
    let mut f = fork_fn("adhoc", "cat");
    f["namespace"] = json!("adhoc-ns");
    s.deploy(&f).await;
    assert!(namespaces(&s).await.contains(&"adhoc-ns".to_string()));

    // Changes need the admin scope; reading needs read.
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/tokens",
            &json!({"name": "reader", "scope": "read"}),
        )
        .await;
    assert!(st.is_success(), "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .open(Method::GET, "/system/namespace/adhoc-ns")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .open(Method::POST, "/system/namespace/by-reader")
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Created namespaces and their labels survive a restart.
    s.sys_expect(
        Method::POST,
        "/system/namespace/kept",
        &json!({"labels": {"tier": "gold"}}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.terminate(Duration::from_secs(20)).await;
    let s = Server::start_in(dir, ServeOpts::default()).await;
    let (st, v) = get_json(&s, "/system/namespace/kept").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!({"tier": "gold"}));
}

/// Runs the real `fjord` CLI in `cwd` against `s`.
async fn fjord(s: &Server, cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"));
    cmd.args(args)
        .current_dir(cwd)
        .kill_on_drop(true)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("FJORD_") || k.starts_with("OPENFAAS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FJORD_URL", s.url(""))
        .env("FJORD_CONFIG", cwd.join("no-config.json"))
        .env("FJORD_DATA_DIR", cwd.join("no-data-dir"));
    if let Some(p) = &s.password {
        cmd.env("FJORD_PASSWORD", p);
    }
    let what = format!("fjord {}", args.join(" "));
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fjord-ns-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_cli_commands() {
    let s = Server::start().await;
    let tmp = workdir();
    let cwd = tmp.path();
    let ok = |what: &str, r: &(Option<i32>, String, String)| {
        assert_eq!(r.0, Some(0), "{what}: stdout {}\nstderr {}", r.1, r.2);
    };

    let r = fjord(
        &s,
        cwd,
        &[
            "namespace",
            "create",
            "team-a",
            "--label",
            "env=dev",
            "-l",
            "tier=gold",
            "--annotation",
            "owner=ada",
        ],
    )
    .await;
    ok("create", &r);
    assert!(r.1.contains("Created namespace team-a"), "{}", r.1);

    let r = fjord(&s, cwd, &["namespace", "get", "team-a"]).await;
    ok("get", &r);
    for want in ["team-a", "env=dev", "tier=gold", "owner=ada"] {
        assert!(r.1.contains(want), "get should show {want}: {}", r.1);
    }
    let r = fjord(&s, cwd, &["namespace", "get", "team-a", "--json"]).await;
    ok("get --json", &r);
    let v: Value = serde_json::from_str(&r.1).unwrap();
    assert_eq!(v["labels"], json!({"env": "dev", "tier": "gold"}));

    let r = fjord(&s, cwd, &["namespace", "list"]).await;
    ok("list", &r);
    let listed: Vec<&str> = r.1.lines().collect();
    assert!(
        listed.contains(&"team-a") && listed.contains(&NS),
        "{}",
        r.1
    );

    let r = fjord(
        &s,
        cwd,
        &["namespace", "update", "team-a", "-l", "env=prod"],
    )
    .await;
    ok("update", &r);
    let (_, v) = get_json(&s, "/system/namespace/team-a").await;
    assert_eq!(v["labels"], json!({"env": "prod"}));

    // Errors say what to do next.
    let r = fjord(&s, cwd, &["namespace", "create", "team-a"]).await;
    assert_eq!(r.0, Some(1), "second create: {}", r.2);
    assert!(
        r.2.contains("409") && r.2.contains("fjord namespace update"),
        "{}",
        r.2
    );
    let r = fjord(&s, cwd, &["namespace", "create", "x", "--label", "nokey"]).await;
    assert_eq!(r.0, Some(2), "bad --label: {}", r.2);
    assert!(r.2.contains("KEY=VALUE"), "{}", r.2);
    let r = fjord(&s, cwd, &["namespace", "get", "missing"]).await;
    assert_eq!(r.0, Some(5), "get of a missing namespace: {}", r.2);
    assert!(r.2.contains("fjord namespace create missing"), "{}", r.2);

    let r = fjord(&s, cwd, &["namespace", "delete", "team-a"]).await;
    ok("delete", &r);
    let r = fjord(&s, cwd, &["namespace", "delete", "team-a"]).await;
    assert_eq!(r.0, Some(5), "second delete: {}", r.2);
}

/// Uploads a bundle made of `files` (with `manifest.json`) under `tag`.
async fn upload(s: &Server, tag: &str, manifest: Value, files: &[(&str, &[u8], u32)]) {
    let manifest = manifest.to_string();
    let mut entries = vec![Entry::file("manifest.json", manifest.as_bytes())];
    for (name, data, mode) in files {
        entries.push(Entry::file(name, data).mode(*mode));
    }
    let bundle = tar_gz(&entries);
    let mut h = fjord_bundle::Hasher::default();
    h.update(&bundle);
    let digest = h.finish().as_str().to_string();
    let (st, body) = send_text(
        s.sys(Method::PUT, &format!("/system/bundles/{digest}?tag={tag}"))
            .body(bundle),
    )
    .await;
    assert!(st.is_success(), "upload {tag}: {st} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_a_program_that_cannot_start() {
    let s = Server::start().await;
    upload(
        &s,
        "scripts:1",
        json!({"name": "scripts", "language": "bash", "fprocess": "./ok.sh", "mode": "fork"}),
        &[
            ("ok.sh", b"#!/bin/sh\necho ok\n", 0o755),
            (
                "needs-missing.sh",
                b"#!/usr/bin/env no-such-interpreter-xyz\nprint('hi')\n",
                0o755,
            ),
            ("gone-interp.sh", b"#!/opt/nowhere/bin/lua\n", 0o755),
        ],
    )
    .await;

    for (name, image, process, needle) in [
        // A relative program with no bundle to be relative to.
        ("rel", "not-a-bundle:latest", "./handler", "./handler"),
        // Not on the function's PATH.
        (
            "nopath",
            "x:1",
            "no-such-program-xyz --flag",
            "no-such-program-xyz",
        ),
        // Not in the bundle.
        ("missing", "scripts:1", "./handler", "./handler"),
        // In the bundle, but its interpreter is nowhere.
        (
            "envinterp",
            "scripts:1",
            "./needs-missing.sh",
            "no-such-interpreter-xyz",
        ),
        (
            "absinterp",
            "scripts:1",
            "./gone-interp.sh",
            "/opt/nowhere/bin/lua",
        ),
    ] {
        let mut body = fork_fn(name, process);
        body["image"] = json!(image);
        let answer = s
            .sys_expect(
                Method::POST,
                "/system/functions",
                &body,
                StatusCode::BAD_REQUEST,
            )
            .await;
        assert!(
            answer.contains("envProcess") && answer.contains(needle),
            "{name}: the 400 should name the field and {needle}: {answer}"
        );
        assert!(s.get_function(name).await.is_none(), "{name} was stored");
    }

    // The bundle's own program runs.
    let mut ok = fork_fn("ok", "./ok.sh");
    ok["image"] = json!("scripts:1");
    s.deploy_ready(&ok).await;
    let (st, body) = s.call("ok").await;
    assert_eq!((st, body.trim()), (StatusCode::OK, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faas_cli_deploy_of_a_pushed_bundle_runs_with_the_bundles_interpreter() {
    let s = Server::start().await;
    let tmp = workdir();
    let cwd = tmp.path();
    let ok = |what: &str, r: &(Option<i32>, String, String)| {
        assert_eq!(r.0, Some(0), "{what}: stdout {}\nstderr {}", r.1, r.2);
    };
    ok(
        "fjord new",
        &fjord(&s, cwd, &["new", "greet", "--lang", "python3"]).await,
    );
    let handler: PathBuf = cwd.join("greet/handler.py");
    std::fs::write(
        &handler,
        "import sys\n\ndef handle(req):\n    return 'hello ' + req.strip() + ' from ' + sys.version.split()[0]\n",
    )
    .unwrap();
    ok("fjord build", &fjord(&s, cwd, &["build"]).await);
    ok("fjord push", &fjord(&s, cwd, &["push"]).await);
    let stack = std::fs::read_to_string(cwd.join("stack.yaml"))
        .or_else(|_| std::fs::read_to_string(cwd.join("stack.yml")))
        .unwrap();
    let image = stack
        .lines()
        .find_map(|l| l.trim().strip_prefix("image:"))
        .expect("image in the stack file")
        .trim()
        .to_string();

    // What `faas-cli deploy` sends for this stack.yml: `fprocess` from the OpenFaaS python3
    // template (`python index.py`), and nulls/empties for what the stack leaves out.
    let body = json!({
        "service": "greet",
        "image": image,
        "envProcess": "python index.py",
        "envVars": {"write_debug": "false"},
        "labels": null,
        "annotations": null,
        "constraints": [],
        "secrets": [],
        "registryAuth": "",
        "network": "func_functions",
        "readOnlyRootFilesystem": false,
    });
    s.sys_expect(
        Method::PUT,
        "/system/functions",
        &body,
        StatusCode::NOT_FOUND,
    )
    .await;
    s.sys_expect(
        Method::POST,
        "/system/functions",
        &body,
        StatusCode::ACCEPTED,
    )
    .await;
    s.wait_ready("greet", READY_TIMEOUT).await;
    let (st, out) = s.call_text(Method::POST, "greet", "Ada").await;
    let python3 = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import sys; print(sys.version.split()[0])"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&python3.stdout).trim().to_string();
    assert_eq!(
        (st, out.trim()),
        (StatusCode::OK, format!("hello Ada from {version}").as_str()),
        "the function should run the bundle's code with its interpreter"
    );
    // What the user sent is what they see.
    let f = s.get_function("greet").await.unwrap();
    assert_eq!(f["envProcess"], "python index.py");
}
