//! The router in process (`tower::ServiceExt::oneshot`) over the fake runtime: status
//! codes, auth and the JSON the API answers, without processes or sockets. End-to-end
//! behaviour stays in the real-binary tests of fjord-cli.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::testing::TestApp;

fn request(method: &str, uri: &str, body: &str) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .expect("request");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

fn admin(t: &TestApp, mut req: Request<Body>) -> Request<Body> {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", t.password));
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Basic {token}").parse().expect("header"),
    );
    req
}

async fn send(t: &TestApp, req: Request<Body>) -> (StatusCode, String) {
    let resp = t.router().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn system_routes_need_credentials() {
    let t = TestApp::new().await;
    let (status, body) = send(&t, request("GET", "/system/functions", "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = send(&t, admin(&t, request("GET", "/system/functions", ""))).await;
    assert_eq!(status, StatusCode::OK);
    let mut wrong = request("GET", "/system/functions", "");
    wrong.headers_mut().insert(
        header::AUTHORIZATION,
        "Basic YWRtaW46d3Jvbmc=".parse().expect("header"),
    );
    let (status, body) = send(&t, wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn deploy_list_invoke_delete() {
    let t = TestApp::new().await;
    let deploy =
        r#"{"service":"hello","image":"fake/hello:1","envProcess":"x","envVars":{"MARKER":"hi"}}"#;
    let (status, body) = send(&t, admin(&t, request("POST", "/system/functions", deploy))).await;
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = send(&t, admin(&t, request("GET", "/system/functions", ""))).await;
    assert_eq!(status, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["replicas"], 1);
    let (status, body) = send(&t, request("POST", "/function/hello/sub?q=1", "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "fake/hello:1 hi");
    let (status, _) = send(
        &t,
        admin(
            &t,
            request("DELETE", "/system/functions", r#"{"functionName":"hello"}"#),
        ),
    )
    .await;
    assert!(status.is_success());
    let (status, body) = send(&t, request("POST", "/function/hello", "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn bad_input_gets_400_naming_the_field_and_unknown_names_404() {
    let t = TestApp::new().await;
    let (status, body) = send(
        &t,
        admin(
            &t,
            request("POST", "/system/functions", r#"{"service":"a","image":7}"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("image"), "the error names the field: {body}");
    let (status, body) = send(
        &t,
        admin(&t, request("POST", "/system/functions", "{not json")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The runtime refuses what cannot run: 400 with its reason, nothing stored.
    let invalid = r#"{"service":"bad","image":"invalid/x:1","envProcess":"x"}"#;
    let (status, body) = send(&t, admin(&t, request("POST", "/system/functions", invalid))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("cannot run here"), "{body}");
    let (status, _) = send(&t, admin(&t, request("GET", "/system/function/bad", ""))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        &t,
        admin(
            &t,
            request("DELETE", "/system/functions", r#"{"functionName":"nope"}"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&t, request("GET", "/function/nope", "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn scale_goes_to_the_runtime() {
    let t = TestApp::new().await;
    t.deploy("s", "fake/s:1", "m").await;
    let (status, body) = send(
        &t,
        admin(
            &t,
            request(
                "POST",
                "/system/scale-function/s",
                r#"{"serviceName":"s","replicas":3}"#,
            ),
        ),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    assert!(
        t.runtime
            .recorded()
            .contains(&fjord_runtime_api::fake::Recorded::Scale {
                function: "s.openfaas-fn".into(),
                replicas: 3
            }),
        "{:?}",
        t.runtime.recorded()
    );
    let (_, body) = send(&t, admin(&t, request("GET", "/system/function/s", ""))).await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["availableReplicas"], 3);
}

/// Every entry of the route table is served with its method, and every `/system` entry is
/// behind the auth middleware: without credentials it answers 401 (never 404/405, never the
/// handler).
#[tokio::test]
async fn every_table_route_is_routed_and_system_routes_are_protected() {
    let t = TestApp::new().await;
    let mut checked = 0;
    for e in crate::routes::table() {
        let path = e
            .path
            .replace("{name}", "x")
            .replace("{id}", "x")
            .replace("{digest}", "sha256:00")
            .replace("{*path}", "x");
        let method = if e.method == "ANY" { "PATCH" } else { e.method };
        let (status, body) = send(&t, request(method, &path, "")).await;
        match e.access {
            crate::routes::Access::System(_) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}")
            }
            _ => assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && status != StatusCode::UNAUTHORIZED,
                "{method} {path}: {status} {body}"
            ),
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} routes in the table");
    // Not in the table: 404 from the fallback, even under /system.
    let (status, _) = send(&t, admin(&t, request("GET", "/system/no-such-thing", ""))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&t, admin(&t, request("PATCH", "/system/functions", ""))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn image_gc_answers_what_it_removed_and_status_names_the_runtime() {
    let t = TestApp::new().await;
    let (status, body) = send(&t, request("POST", "/system/images/gc", "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(&t, admin(&t, request("POST", "/system/images/gc", ""))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        report,
        serde_json::json!({"images": 0, "layers": 0, "bytes": 0})
    );

    t.deploy("rt", "fake/rt", "m").await;
    let (status, body) = send(&t, admin(&t, request("GET", "/system/function/rt", ""))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let f: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(f["fjord"]["runtime"], "fake");
}
