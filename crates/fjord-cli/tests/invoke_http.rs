//! HTTP mode (of-watchdog `mode=http`): a long-running process per replica, proxied to.

mod common;

use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_proxies_path_query_headers_and_redirects() {
    let s = Server::start().await;
    let st = s.deploy_ready(&http_fn("h", "7")).await;
    assert_eq!(st["fjord"]["mode"], "http", "fjord.mode: {st}");

    let r = s
        .invoke(Method::POST, "h/some/path?x=1&y=two%20words")
        .header("X-Custom", "yes")
        .header("content-type", "text/plain")
        .body("request body")
        .send()
        .await
        .unwrap();
    assert_invocation_headers(&r, "POST /function/h/some/path");
    let (code, body) = text(r).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let e = echo(&body);
    assert_eq!(e["method"], "POST", "{e}");
    assert_eq!(e["path"], "/some/path", "path remainder: {e}");
    assert_eq!(e["query"], "x=1&y=two%20words", "raw query: {e}");
    assert_eq!(
        e["headers"]["x-custom"], "yes",
        "request headers reach the function: {e}"
    );
    assert_eq!(e["body"], "request body", "{e}");
    assert_eq!(e["version"], "7", "envVars reach the process: {e}");
    let xff = e["headers"]["x-forwarded-for"].as_str().unwrap_or_default();
    assert!(
        xff.contains("127.0.0.1"),
        "X-Forwarded-For must be set: {e}"
    );

    // Every method, and the bare function URL with and without a trailing slash.
    for m in ["GET", "PUT", "PATCH", "DELETE"] {
        let (code, body) =
            send_text(s.invoke(Method::from_bytes(m.as_bytes()).unwrap(), "h")).await;
        assert_eq!(code, StatusCode::OK, "{m} /function/h: {body}");
        let e = echo(&body);
        assert_eq!(e["method"], m, "{e}");
        assert_eq!(
            e["path"], "/",
            "bare /function/h is / for the function: {e}"
        );
    }
    let (code, body) = s.call("h/").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(echo(&body)["path"], "/");

    // Call id echoed, also through the http proxy; and the function sees it.
    let r = s
        .invoke(Method::GET, "h/ids")
        .header("X-Call-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(r.headers(), "x-call-id"),
        Some("abc-123"),
        "{:?}",
        r.headers()
    );
    let (_, body) = text(r).await;
    assert_eq!(echo(&body)["headers"]["x-call-id"], "abc-123", "{body}");

    // Redirects are passed through, not followed.
    let r = s.invoke(Method::GET, "h/redirect").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "302 must reach the caller");
    assert_eq!(
        header(r.headers(), "location"),
        Some("http://example.invalid/elsewhere"),
        "{:?}",
        r.headers()
    );

    // Function status codes and headers pass through.
    let r = s.invoke(Method::GET, "h/status/418").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 418);
    assert_eq!(
        header(r.headers(), "x-fn-header"),
        Some("set"),
        "{:?}",
        r.headers()
    );
    let (code, body) = s.call("h/status/404").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        body, "status 404",
        "a function's own 404 body must pass through"
    );

    // name.namespace route.
    let (code, body) = s.call("h.openfaas-fn/other?z=9").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let e = echo(&body);
    assert_eq!(e["path"], "/other", "{e}");
    assert_eq!(e["query"], "z=9", "{e}");

    // A large body through the proxy.
    let big = "0123456789abcdef".repeat(128 * 1024);
    let (code, body) = s.call_text(Method::POST, "h/big", big.clone()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(echo(&body)["body"].as_str().map(str::len), Some(big.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_streams_server_sent_events_as_produced() {
    let s = Server::start().await;
    s.deploy_ready(&http_fn("sse", "1")).await;
    let mut r = s
        .invoke(Method::GET, "sse/stream?15")
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("GET /function/sse/stream");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(r.headers(), "content-type"),
        Some("text/event-stream")
    );
    // The function pauses 15 s after the first event: it must arrive before that (a
    // generous bound: the machine may be busy).
    let t0 = std::time::Instant::now();
    let first = tokio::time::timeout(std::time::Duration::from_secs(12), r.chunk())
        .await
        .expect("the first event was held back: the gateway buffered the stream")
        .expect("read the first chunk")
        .expect("a first chunk");
    assert!(
        String::from_utf8_lossy(&first).contains("data: event 0"),
        "first chunk: {first:?}"
    );
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.expect("read the rest") {
        rest.extend_from_slice(&c);
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("data: event 1"),
        "rest: {rest:?}"
    );
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(12),
        "the stream ended early"
    );
}
