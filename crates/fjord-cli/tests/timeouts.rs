//! read_timeout and write_timeout: one rule, the function's env var else the gateway's flag.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A request body that sends one chunk, then stalls for `stall` before the rest.
fn stalling_body(stall: Duration) -> reqwest::Body {
    let chunks = futures_util::stream::unfold(0u8, move |i| async move {
        match i {
            0 => Some((Ok::<_, std::io::Error>(b"first ".to_vec()), 1)),
            1 => {
                tokio::time::sleep(stall).await;
                Some((Ok(b"second".to_vec()), 2))
            }
            _ => None,
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_get_408_in_both_modes() {
    let s = Server::start().await;
    let mut fork = fork_fn("slowfork", "cat");
    fork["envVars"] = json!({"read_timeout": "1s"});
    s.deploy_ready(&fork).await;
    let mut http = http_fn("slowhttp", "1");
    http["envVars"]["read_timeout"] = json!("1s");
    s.deploy_ready(&http).await;

    for name in ["slowfork", "slowhttp"] {
        // With a length, so the function waits for all of it.
        let r = s
            .invoke(Method::POST, name)
            .header("Content-Length", "12")
            .body(stalling_body(Duration::from_secs(4)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{name}: {body}");
        assert!(
            body.contains("read_timeout") && body.contains(name),
            "{name}: {body}"
        );
        // A body that keeps up is untouched.
        let r = s
            .invoke(Method::POST, name)
            .header("Content-Length", "12")
            .body(stalling_body(Duration::from_millis(100)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_read_timeout_applies_when_the_function_sets_none() {
    let s = Server::start_opts(ServeOpts::args(&["--read-timeout", "1s"])).await;
    s.deploy_ready(&fork_fn("plain", "cat")).await;
    let r = s
        .invoke(Method::POST, "plain")
        .body(stalling_body(Duration::from_secs(4)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_cuts_a_slow_response() {
    let s = Server::start().await;
    // PY_HTTP's /stream sends one event, pauses 6 s, then another.
    let mut f = http_fn("slowout", "1");
    f["envVars"]["write_timeout"] = json!("1s");
    s.deploy_ready(&f).await;
    let mut r = s
        .invoke(Method::GET, "slowout/stream")
        .send()
        .await
        .expect("response headers");
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), r.chunk()).await {
            Ok(Ok(Some(c))) => got.extend_from_slice(&c),
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("the response was neither cut nor finished within 30 s"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("event 0"), "{text}");
    // Cut, not finished: the second event (6 s later) never came.
    assert!(
        !text.contains("event 1"),
        "write_timeout must cut the stream: {text}"
    );
}
