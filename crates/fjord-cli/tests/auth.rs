//! HTTP Basic auth on /system/*, open /function/* and /healthz.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use reqwest::{Method, StatusCode};

fn assert_401(r: &reqwest::Response, what: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    let www = header(r.headers(), "www-authenticate").unwrap_or_default();
    assert_eq!(
        www, r#"Basic realm="Restricted""#,
        "{what}: WWW-Authenticate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_routes_need_basic_auth() {
    let s = Server::start().await;
    let mode = std::fs::metadata(s.password_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "password file mode is {mode:o}");

    for path in [
        "/system/functions",
        "/system/info",
        "/system/namespaces",
        "/system/function/x",
        "/system/logs?name=x",
    ] {
        let r = s.open(Method::GET, path).send().await.unwrap();
        assert_401(&r, &format!("GET {path} without credentials"));
    }
    let r = s
        .open(Method::POST, "/system/functions")
        .body(serde_json::to_vec(&fork_fn("sneaky", "cat")).unwrap())
        .send()
        .await
        .unwrap();
    assert_401(&r, "POST /system/functions without credentials");

    let r = s
        .open(Method::GET, "/system/functions")
        .basic_auth("admin", Some("wrong-password"))
        .send()
        .await
        .unwrap();
    assert_401(&r, "wrong password");
    let r = s
        .open(Method::GET, "/system/functions")
        .basic_auth("root", s.password.as_deref())
        .send()
        .await
        .unwrap();
    assert_401(&r, "wrong user");
    let r = s
        .open(Method::GET, "/system/functions")
        .header("authorization", "Bearer nonsense")
        .send()
        .await
        .unwrap();
    assert_401(&r, "not Basic");

    let (code, body) = send_text(s.sys(Method::GET, "/system/functions")).await;
    assert_eq!(code, StatusCode::OK, "right credentials: {body}");
    assert!(
        s.get_function("sneaky").await.is_none(),
        "an unauthenticated deploy must not be applied"
    );

    let r = s.open(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "/healthz is open");

    s.deploy_ready(&fork_fn("public", "cat")).await;
    let (code, body) = send_text(s.open(Method::POST, "/function/public").body("open")).await;
    assert_reply((code, body), StatusCode::OK, "open", "/function/* is open");
    // Unknown functions are a 404 without credentials, not a 401.
    let r = s.open(Method::GET, "/function/nope").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_be_disabled() {
    let s = Server::start_opts(ServeOpts::args(&["--auth=false"])).await;
    let (code, body) = send_text(s.open(Method::GET, "/system/functions")).await;
    assert_eq!(code, StatusCode::OK, "--auth=false: {body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(list.is_empty(), "{list:?}");
    let r = s.open(Method::GET, "/system/info").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
