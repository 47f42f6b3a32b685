//! API tokens (create, list, revoke, scopes, expiry, hashed at rest, kept across restarts),
//! per-function invocation auth (`com.fjord.auth: token`), failed-auth rate limiting, and
//! the CLI's `fjord token` / `--token` / `fjord login --token`.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Creates a token with the admin password; returns (id, token).
async fn create(s: &Server, name: &str, scope: &str, expires: Option<&str>) -> (String, String) {
    let mut body = json!({"name": name, "scope": scope});
    if let Some(e) = expires {
        body["expiresIn"] = json!(e);
    }
    let txt = s
        .sys_expect(Method::POST, "/system/tokens", &body, StatusCode::CREATED)
        .await;
    let v: Value = serde_json::from_str(&txt).unwrap();
    assert_eq!(v["name"], name);
    assert_eq!(v["scope"], scope);
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("fjord_"), "{token}");
    (v["id"].as_str().unwrap().to_string(), token)
}

/// The secret part of `fjord_<id>_<secret>` (which may itself hold `_`).
fn secret_of(token: &str) -> &str {
    let s = token.splitn(3, '_').nth(2).expect("fjord_<id>_<secret>");
    assert!(s.len() >= 40, "{token}");
    s
}

/// A request with a bearer token.
fn bearer(s: &Server, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    s.open(method, path).bearer_auth(token)
}

async fn status_of(r: reqwest::RequestBuilder) -> (StatusCode, String) {
    text(r.send().await.expect("request")).await
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files(&p, out);
        } else if ft.is_file() {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_revocation_expiry_and_storage() {
    let s = Server::start().await;
    let (read_id, read) = create(&s, "dashboard", "read", None).await;
    let (_, deploy) = create(&s, "ci", "deploy", None).await;
    let (_, admin) = create(&s, "ops", "admin", Some("30d")).await;

    // read: GET routes only.
    let (st, body) = status_of(bearer(&s, Method::GET, "/system/functions", &read)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = status_of(
        bearer(&s, Method::POST, "/system/functions", &read).json(&fork_fn("nope", "cat")),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("needs scope deploy"), "{body}");
    assert!(s.get_function("nope").await.is_none());

    // deploy: deploys, but cannot manage tokens.
    let (st, body) = status_of(
        bearer(&s, Method::POST, "/system/functions", &deploy).json(&fork_fn("echo", "cat")),
    )
    .await;
    assert!(st.is_success(), "deploy token deploys: {st} {body}");
    s.wait_ready("echo", READY_TIMEOUT).await;
    let (st, body) = status_of(
        bearer(&s, Method::POST, "/system/tokens", &deploy)
            .json(&json!({"name": "x", "scope": "admin"})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("needs scope admin"), "{body}");
    let (st, _) = status_of(bearer(&s, Method::GET, "/system/tokens", &deploy)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // admin: may create tokens.
    let (st, body) = status_of(
        bearer(&s, Method::POST, "/system/tokens", &admin)
            .json(&json!({"name": "made-by-token", "scope": "read"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");

    // The list never shows secrets or hashes.
    let (st, body) = status_of(bearer(&s, Method::GET, "/system/tokens", &admin)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 4, "{body}");
    for t in &list {
        assert!(t.get("token").is_none() && t.get("hash").is_none(), "{t}");
    }
    assert!(
        !body.contains("fjord_") && !body.contains("argon2"),
        "{body}"
    );
    let ops = list.iter().find(|t| t["name"] == "ops").unwrap();
    assert!(ops["expiresAt"].is_string(), "{ops}");

    // Bad requests name the field.
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/tokens",
            &json!({"name": "x", "scope": "root"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("scope"), "{body}");
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/tokens",
            &json!({"name": "x", "scope": "read", "expiresIn": "soon"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("expiresIn"), "{body}");

    // Revocation takes effect at once (the read token was verified and cached above).
    let (st, _) = status_of(bearer(&s, Method::GET, "/system/info", &read)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = status_of(s.sys(Method::DELETE, &format!("/system/tokens/{read_id}"))).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (st, body) = status_of(bearer(&s, Method::GET, "/system/info", &read)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "revoked: {body}");
    let (st, _) = status_of(s.sys(Method::DELETE, &format!("/system/tokens/{read_id}"))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Expiry.
    let (_, short) = create(&s, "short", "read", Some("1s")).await;
    let body = wait_until(Duration::from_secs(30), "the 1s token refused", || async {
        let (st, body) = status_of(bearer(&s, Method::GET, "/system/info", &short)).await;
        if st == StatusCode::UNAUTHORIZED {
            Ok(body)
        } else {
            Err(format!("{st} {body}"))
        }
    })
    .await;
    assert!(body.contains("expired"), "{body}");

    // Hashed at rest: no token (nor its secret part) in any file of the data dir, nor in
    // the server's log.
    let mut all = Vec::new();
    files(&s.data_dir(), &mut all);
    assert!(all.iter().any(|p| p.ends_with("state.db")));
    for p in &all {
        let bytes = std::fs::read(p).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for t in [&read, &deploy, &admin, &short] {
            let secret = secret_of(t);
            assert!(
                !text.contains(secret),
                "{} holds a token in plain text",
                p.display()
            );
        }
    }
    assert!(!s.log_tail().contains(secret_of(&deploy)));

    // Tokens survive a restart.
    let dir = s.dir.clone();
    drop(s);
    let s = Server::start_in(dir, ServeOpts::default()).await;
    let (st, body) = status_of(bearer(&s, Method::GET, "/system/functions", &deploy)).await;
    assert_eq!(st, StatusCode::OK, "after restart: {body}");
    let (st, _) = status_of(bearer(&s, Method::GET, "/system/functions", &read)).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "a revoked token stays revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_can_require_a_token() {
    let s = Server::start().await;
    let (_, invoke) = create(&s, "app", "invoke", None).await;
    let (_, read) = create(&s, "dash", "read", None).await;
    let mut f = fork_fn("private", "env");
    f["annotations"] = json!({"com.fjord.auth": "token"});
    s.deploy_ready(&f).await;
    s.deploy_ready(&fork_fn("public", "cat")).await;

    let (st, body) = status_of(s.open(Method::POST, "/function/private")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("requires an API token"), "{body}");
    let (st, _) = status_of(bearer(
        &s,
        Method::POST,
        "/function/private",
        "fjord_00_bad",
    ))
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = status_of(bearer(&s, Method::POST, "/function/private", &read)).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a read token may not invoke: {body}"
    );

    let (st, body) =
        status_of(bearer(&s, Method::POST, "/function/private", &invoke).header("X-Probe", "yes"))
            .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(
        body.contains("Http_X_Probe=yes"),
        "the function ran: {body}"
    );
    assert!(
        !body.contains("Http_Authorization") && !body.contains(&invoke),
        "the token is not passed to the function: {body}"
    );
    // The admin password works too.
    let (st, _) = status_of(s.sys(Method::POST, "/function/private")).await;
    assert_eq!(st, StatusCode::OK);

    // Async calls: checked when queued; the token is not kept in the queue.
    let (st, _) = status_of(s.open(Method::POST, "/async-function/private")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = status_of(bearer(&s, Method::POST, "/async-function/private", &invoke)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");

    // Functions without the annotation stay open.
    let (st, body) = status_of(s.open(Method::POST, "/function/public").body("hi")).await;
    assert_reply((st, body), StatusCode::OK, "hi", "reply");

    // A typo in the annotation is refused, not silently open.
    let mut bad = fork_fn("typo", "cat");
    bad["annotations"] = json!({"com.fjord.auth": "tokens"});
    let (st, body) = s.sys_json(Method::POST, "/system/functions", &bad).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("com.fjord.auth"), "{body}");

    // Dropping the annotation opens the function again.
    s.update(&fork_fn("private", "env")).await;
    wait_until(READY_TIMEOUT, "open again after the update", async || {
        status_of(s.open(Method::POST, "/function/private")).await.0 == StatusCode::OK
    })
    .await;
    let mut all = Vec::new();
    files(&s.data_dir(), &mut all);
    for p in &all {
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(secret_of(&invoke)),
            "{} holds the invoke token",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_address() {
    let s = Server::start_opts(ServeOpts::args(&["--auth-fail-limit", "3"])).await;
    let pw = s.password.clone().unwrap();
    let attacker = client_from("127.0.0.1");
    for i in 0..3 {
        let r = attacker
            .get(s.url("/system/functions"))
            .basic_auth("admin", Some(format!("guess-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // Blocked now, even with the right password, before anything is checked.
    let r = attacker
        .get(s.url("/system/functions"))
        .basic_auth("admin", Some(&pw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(r.headers(), "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (_, body) = text(r).await;
    assert!(body.contains("too many failed"), "{body}");
    // Calls to unprotected paths are not authentication and are not blocked.
    let r = attacker
        .post(s.url("/function/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "unknown functions are not auth"
    );

    // Another address with the right password gets in; its successes are not counted.
    let other = client_from("127.0.0.2");
    for _ in 0..5 {
        let r = other
            .get(s.url("/system/functions"))
            .basic_auth("admin", Some(&pw))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_token_commands_and_login_with_a_token() {
    let s = Server::start().await;
    let config = s.dir.tmp.path().join("cli-config.json");
    let pw = s.password.clone().unwrap();
    let admin_env = [
        ("FJORD_URL", s.base.as_str()),
        ("FJORD_PASSWORD", pw.as_str()),
    ];

    let out = run_cli(
        &[
            "token",
            "create",
            "ci",
            "--scope",
            "deploy",
            "--expires",
            "30d",
        ],
        &admin_env,
        &config,
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let token = out.stdout.trim().to_string();
    assert!(
        token.starts_with("fjord_"),
        "only the token on stdout: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("shown only this once"),
        "{}",
        out.stderr
    );
    let id = token.split('_').nth(1).unwrap().to_string();

    let out = run_cli(&["token", "list"], &admin_env, &config).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&id) && out.stdout.contains("deploy"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&token));

    // --token (and FJORD_TOKEN) instead of the password.
    let url_env = [("FJORD_URL", s.base.as_str())];
    let out = run_cli(&["list", "--token", &token], &url_env, &config).await;
    assert_eq!(out.code, Some(0), "--token: {}", out.stderr);
    let with_env = [
        ("FJORD_URL", s.base.as_str()),
        ("FJORD_TOKEN", token.as_str()),
    ];
    let out = run_cli(&["token", "list"], &with_env, &config).await;
    assert_eq!(out.code, Some(4), "a deploy token cannot list tokens");
    assert!(out.stderr.contains("needs scope admin"), "{}", out.stderr);

    // fjord login --token saves it; later commands use it.
    let out = run_cli(&["login", "--token", &token], &url_env, &config).await;
    assert_eq!(out.code, Some(0), "login: {}", out.stderr);
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains(&token));
    let out = run_cli(&["list"], &url_env, &config).await;
    assert_eq!(out.code, Some(0), "with the saved token: {}", out.stderr);

    let out = run_cli(&["token", "revoke", &id], &admin_env, &config).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = run_cli(&["list"], &url_env, &config).await;
    assert_eq!(out.code, Some(4), "revoked: {}", out.stderr);
    let out = run_cli(&["token", "revoke", &id], &admin_env, &config).await;
    assert_eq!(out.code, Some(5), "unknown id: {}", out.stderr);
}
