//! Fork mode (classic watchdog): a process per request, body on stdin, stdout as the answer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn env_lines(body: &str) -> Vec<&str> {
    body.lines().collect()
}

fn assert_line(body: &str, line: &str, what: &str) {
    assert!(
        env_lines(body).contains(&line),
        "{what}: expected a line {line:?} in the function's env output:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_env_sees_method_query_headers_and_env_vars() {
    let s = Server::start().await;
    let mut f = fork_fn("env", "env");
    f["envVars"] = json!({"CUSTOM_VAR": "custom-value"});
    s.deploy_ready(&f).await;

    for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let r = s
            .invoke(method, "env")
            .body(if m == "GET" { "" } else { "payload" })
            .send()
            .await
            .unwrap_or_else(|e| panic!("{m} /function/env: {e}"));
        assert_invocation_headers(&r, &format!("{m} /function/env"));
        let (code, body) = text(r).await;
        assert_eq!(code, StatusCode::OK, "{m} /function/env: {body}");
        assert_line(&body, &format!("Http_Method={m}"), m);
        assert_line(&body, "CUSTOM_VAR=custom-value", m);
    }

    // Query, path, custom header, call id.
    let r = s
        .invoke(Method::GET, "env/sub/path?testing=1")
        .header("X-Custom", "yes")
        .header("X-Call-Id", "my-call-id-123")
        .send()
        .await
        .unwrap();
    assert_invocation_headers(&r, "GET /function/env/sub/path?testing=1");
    assert_eq!(
        header(r.headers(), "x-call-id"),
        Some("my-call-id-123"),
        "a sent X-Call-Id must be echoed; headers: {:?}",
        r.headers()
    );
    let (code, body) = text(r).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_line(&body, "Http_Query=testing=1", "query");
    assert_line(&body, "Http_X_Custom=yes", "custom header");
    assert_line(&body, "Http_Path=/sub/path", "path");
    assert_line(&body, "Http_X_Call_Id=my-call-id-123", "call id header");

    // Generated call ids differ per request.
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = s.invoke(Method::GET, "env").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        ids.insert(
            header(r.headers(), "x-call-id")
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(ids.len(), 3, "generated X-Call-Id must be unique: {ids:?}");

    // name.namespace route.
    let (code, body) = s
        .call_text(Method::POST, "env.openfaas-fn?testing=2", "x")
        .await;
    assert_eq!(code, StatusCode::OK, "/function/env.openfaas-fn: {body}");
    assert_line(&body, "Http_Query=testing=2", "name.namespace route");
    assert_line(&body, "Http_Method=POST", "name.namespace route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_cat_echoes_bodies_byte_exact() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("cat", "cat")).await;

    let r = s
        .invoke(Method::POST, "cat")
        .body("hello, fjord")
        .send()
        .await
        .unwrap();
    assert_invocation_headers(&r, "POST /function/cat");
    let (code, body) = text(r).await;
    assert_reply((code, body), StatusCode::OK, "hello, fjord", "reply");

    // ~5 MB of binary data, every byte value, not a repeating short pattern.
    let mut big = Vec::with_capacity(5 * 1024 * 1024 + 7);
    let mut x: u32 = 0x1234_5678;
    while big.len() < 5 * 1024 * 1024 + 7 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.push((x >> 7) as u8);
    }
    let r = s
        .invoke(Method::POST, "cat")
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let code = r.status();
    let got = r.bytes().await.expect("read 5 MB answer");
    assert_eq!(code, StatusCode::OK, "5 MB echo status");
    assert_eq!(got.len(), big.len(), "5 MB echo length");
    assert!(got[..] == big[..], "5 MB echo is not byte-exact");

    // Empty body.
    let (code, body) = send_text(s.invoke(Method::POST, "cat")).await;
    assert_reply((code, body), StatusCode::OK, "", "empty body echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_nonzero_exit_is_500_with_output() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("fails", "sh -c 'echo oops; exit 3'"))
        .await;
    let (code, body) = s.call_text(Method::POST, "fails", "x").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "exit 3: {body}");
    assert!(
        body.contains("oops"),
        "500 body must carry the output: {body}"
    );
    // The function keeps working (a new process per request).
    let (code, body) = s.call("fails").await;
    assert_eq!(
        code,
        StatusCode::INTERNAL_SERVER_ERROR,
        "second call: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_exec_timeout_is_408() {
    let s = Server::start().await;
    let mut f = fork_fn("slow", "sleep 5");
    f["envVars"] = json!({"exec_timeout": "1s"});
    s.deploy_ready(&f).await;
    let t = Instant::now();
    let r = s
        .invoke(Method::POST, "slow")
        .body("x")
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let elapsed = t.elapsed();
    let (code, body) = text(r).await;
    assert_eq!(
        code,
        StatusCode::REQUEST_TIMEOUT,
        "exec_timeout 1s with sleep 5: {body}"
    );
    assert!(
        elapsed < Duration::from_millis(4000),
        "408 must come soon after the 1 s exec_timeout, took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_combine_output_and_content_type() {
    let s = Server::start().await;
    let script = "sh -c 'echo out-line; echo err-line-combined >&2'";
    s.deploy_ready(&fork_fn("combined", script)).await;
    let mut quiet = fork_fn("quiet", "sh -c 'echo out-line; echo err-line-quiet >&2'");
    quiet["envVars"] = json!({"combine_output": "false"});
    s.deploy_ready(&quiet).await;
    let mut typed = fork_fn("typed", "cat");
    typed["envVars"] = json!({"content_type": "application/x-fjord-test"});
    s.deploy_ready(&typed).await;

    let (code, body) = s.call("combined").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        body.contains("out-line") && body.contains("err-line-combined"),
        "combine_output defaults to true: stderr belongs in the answer: {body:?}"
    );

    let (code, body) = s.call("quiet").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("out-line"), "stdout missing: {body:?}");
    assert!(
        !body.contains("err-line-quiet"),
        "combine_output=false: stderr must not be in the answer: {body:?}"
    );
    s.wait_log(
        "name=quiet&tail=100",
        "err-line-quiet",
        Duration::from_secs(30),
    )
    .await;

    let (code, headers, body) = send_reply(
        s.invoke(Method::POST, "typed")
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    let ct = header(&headers, "content-type")
        .unwrap_or_default()
        .to_string();

    assert_reply((code, body), StatusCode::OK, "{}", "reply");
    assert!(
        ct.starts_with("application/x-fjord-test"),
        "content_type env must set the answer's Content-Type, got {ct:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_logs_have_watchdog_lines() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("logged", "cat")).await;
    for i in 0..3 {
        let r = s
            .invoke(Method::POST, "logged")
            .body(format!("body-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let lines = s
        .wait_log(
            "name=logged&tail=100",
            "Forking fprocess.",
            Duration::from_secs(30),
        )
        .await;
    let lines = if lines
        .iter()
        .any(|l| l["text"].as_str().unwrap_or_default().contains("Wrote "))
    {
        lines
    } else {
        s.wait_log("name=logged&tail=100", "Wrote ", Duration::from_secs(30))
            .await
    };
    let wrote = lines
        .iter()
        .filter_map(|l| l["text"].as_str())
        .find(|t| t.contains("Wrote "))
        .unwrap();
    assert!(
        wrote.contains("Bytes - Duration:"),
        "watchdog line format is `Wrote N Bytes - Duration: Xs`: {wrote:?}"
    );
    for l in &lines {
        for field in ["name", "namespace", "instance", "timestamp", "text"] {
            assert!(l[field].is_string(), "log line lacks string {field}: {l}");
        }
        assert_eq!(l["name"], "logged", "{l}");
        assert_eq!(l["namespace"], NS, "{l}");
    }
    // tail bounds the number of lines.
    let two = s.logs("name=logged&tail=2").await;
    assert!(two.len() <= 2, "tail=2 gave {} lines: {two:?}", two.len());
    assert!(!two.is_empty(), "tail=2 gave no lines");
    // namespace param and a since in the future.
    let ns = s.logs("name=logged&namespace=openfaas-fn&tail=100").await;
    assert!(!ns.is_empty(), "namespace=openfaas-fn gave no lines");
    let future = s.logs("name=logged&since=2999-01-01T00:00:00Z").await;
    assert!(
        future.is_empty(),
        "since in the future must give no lines: {future:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_functions_run_unprivileged() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("whoami", "id -u")).await;
    let (code, body) = s.call("whoami").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let uid: u32 = body
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`id -u` printed {body:?}: {e}"));
    assert_ne!(uid, 0, "functions must not run as root");
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_streams_a_100_mb_body_without_holding_it() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("big", "cat")).await;
    let before = vm_hwm_kb(s.pid());
    let body = body_stream(CHUNKS, CHUNK);
    let mut r = s
        .invoke(Method::POST, "big")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("POST 100 MB to /function/big");
    assert_eq!(r.status(), StatusCode::OK);
    let mut pos = 0usize;
    while let Some(c) = r.chunk().await.expect("read the echoed body") {
        for b in c.iter() {
            assert_eq!(*b, ((pos / CHUNK) % 251) as u8, "byte {pos} differs");
            pos += 1;
        }
    }
    assert_eq!(pos, CHUNK * CHUNKS, "echoed length");
    let after = vm_hwm_kb(s.pid());
    assert!(
        after < before + 48 * 1024,
        "the gateway's peak memory grew from {before} KiB to {after} KiB: the body was buffered"
    );
}

/// `chunks` chunks of `size` bytes, chunk i filled with `i % 251`.
fn body_stream(
    chunks: usize,
    size: usize,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter((0..chunks).map(move |i| Ok(vec![(i % 251) as u8; size])))
}
