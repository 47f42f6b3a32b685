//! Hostile input through the real binary: oversized bodies and heads, slow clients, invalid
//! UTF-8, deep JSON, path traversal in every name the API takes, a YAML bomb for `fjord
//! deploy`. Each is refused with a clear 4xx (plain text, not a 500, not a panic), and the
//! function deployed before keeps answering.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// (what, method, path, body, expected status, a word the message must contain)
type Case = (
    &'static str,
    &'static str,
    String,
    Vec<u8>,
    u16,
    &'static str,
);

/// Sends raw bytes on a fresh connection; returns the status and the body (after the head).
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before it has read everything: ignore write errors.
    let _ = c.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in the answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn basic(s: &Server) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("admin:{}", s.password.as_deref().unwrap()));
    format!("Basic {token}")
}

/// A request with `body` and the admin credentials, closing the connection after it.
fn request(s: &Server, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        basic(s),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The deployed function still answers, unchanged.
async fn still_answers(s: &Server) {
    let (st, body) = s.call_text(Method::POST, "echo", "still here").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body, "still here");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_clear_4xx_and_touch_nothing() {
    let s = Server::start_opts(ServeOpts::args(&["--max-async-body", "64KiB"])).await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;
    let before = s.get_function("echo").await.unwrap();

    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    // serde_json skips unknown fields without recursing, so depth costs nothing there; with
    // no `service` the request is still refused.
    let mut deep_field = br#"{"image":"x","envProcess":"cat","extra":"#.to_vec();
    deep_field.extend_from_slice(&deep);
    deep_field.push(b'}');
    let deep_object = "{\"a\":".repeat(10_000) + "1" + &"}".repeat(10_000);
    let mut bad_utf8_name = b"{\"service\":\"ec".to_vec();
    bad_utf8_name.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8_name.extend_from_slice(b"\",\"image\":\"x\",\"envProcess\":\"cat\"}");
    let mut bad_utf8_value =
        b"{\"service\":\"evil\",\"image\":\"x\",\"envProcess\":\"cat\",\"envVars\":{\"k\":\""
            .to_vec();
    bad_utf8_value.extend_from_slice(&[0xc3, 0x28]);
    bad_utf8_value.extend_from_slice(b"\"}}");
    let big_json = format!(
        "{{\"service\":\"evil\",\"image\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let digest = format!("sha256:{}", "0".repeat(64));

    let mut table: Vec<Case> = vec![
        (
            "JSON body over 1 MiB",
            "POST",
            "/system/functions".into(),
            big_json.into_bytes(),
            413,
            "limit",
        ),
        (
            "100k nested arrays",
            "POST",
            "/system/functions".into(),
            deep.clone(),
            400,
            "invalid type",
        ),
        (
            "100k nested arrays in an unknown field",
            "POST",
            "/system/functions".into(),
            deep_field,
            400,
            "missing field `service`",
        ),
        (
            "10k nested objects",
            "PUT",
            "/system/functions".into(),
            deep_object.into_bytes(),
            400,
            "missing field `service`",
        ),
        (
            "invalid UTF-8 in a name",
            "POST",
            "/system/functions".into(),
            bad_utf8_name,
            400,
            "FunctionDeployment",
        ),
        (
            "invalid UTF-8 in a value",
            "POST",
            "/system/functions".into(),
            bad_utf8_value,
            400,
            "FunctionDeployment",
        ),
        (
            "not JSON",
            "POST",
            "/system/scale-function/echo".into(),
            b"\x00\x01garbage".to_vec(),
            400,
            "ScaleServiceRequest",
        ),
        (
            "traversal in a deployed name",
            "POST",
            "/system/functions".into(),
            br#"{"service":"../../etc","image":"x","envProcess":"cat"}"#.to_vec(),
            400,
            "DNS-1123",
        ),
        (
            "traversal in a deployed namespace",
            "POST",
            "/system/functions".into(),
            br#"{"service":"evil","namespace":"../..","image":"x","envProcess":"cat"}"#.to_vec(),
            400,
            "namespace",
        ),
        (
            "traversal in a deleted name",
            "DELETE",
            "/system/functions".into(),
            br#"{"functionName":"../echo"}"#.to_vec(),
            400,
            "name",
        ),
        (
            "traversal in a deleted namespace",
            "DELETE",
            "/system/functions".into(),
            br#"{"functionName":"echo","namespace":"../openfaas-fn"}"#.to_vec(),
            400,
            "namespace",
        ),
        (
            "traversal in a function path",
            "GET",
            "/system/function/..%2F..%2Fetc%2Fpasswd".into(),
            vec![],
            400,
            "name",
        ),
        (
            "not UTF-8 in a function path",
            "GET",
            "/system/function/%FF%FE".into(),
            vec![],
            400,
            "UTF-8",
        ),
        (
            "traversal in a namespace param",
            "GET",
            "/system/functions?namespace=..%2F..%2Fetc".into(),
            vec![],
            400,
            "namespace",
        ),
        (
            "traversal in a scaled name",
            "POST",
            "/system/scale-function/..%2Fecho".into(),
            br#"{"replicas":0}"#.to_vec(),
            400,
            "name",
        ),
        (
            "traversal in a log name",
            "GET",
            "/system/logs?name=../../x".into(),
            vec![],
            400,
            "name",
        ),
        (
            "traversal in a log namespace",
            "GET",
            "/system/logs?name=echo&namespace=../../x".into(),
            vec![],
            400,
            "namespace",
        ),
        (
            "log tail not a number",
            "GET",
            "/system/logs?name=echo&tail=1e999".into(),
            vec![],
            400,
            "tail",
        ),
        (
            "traversal in a bundle digest",
            "PUT",
            "/system/bundles/..%2F..%2Fstate.db".into(),
            b"x".to_vec(),
            400,
            "sha256",
        ),
        (
            "traversal in a bundle digest (HEAD)",
            "HEAD",
            "/system/bundles/sha256:..%2F..%2F..%2Fetc%2Fpasswd".into(),
            vec![],
            400,
            "",
        ),
        (
            "traversal in a bundle tag",
            "POST",
            "/system/bundle-tags".into(),
            format!(r#"{{"tag":"../../x y","digest":"{digest}"}}"#).into_bytes(),
            400,
            "tag",
        ),
        (
            "traversal in an async call id",
            "GET",
            "/system/async-calls/..%2F..%2Fqueue.db".into(),
            vec![],
            404,
            "no async call",
        ),
        (
            "traversal in an invoked name",
            "GET",
            "/function/..%2F..%2Fetc".into(),
            vec![],
            404,
            "not deployed",
        ),
        (
            "traversal in an invoked namespace",
            "GET",
            "/function/echo...%2F..".into(),
            vec![],
            404,
            "not deployed",
        ),
        (
            "traversal in an enqueued name",
            "POST",
            "/async-function/..%2Fecho".into(),
            b"x".to_vec(),
            404,
            "not deployed",
        ),
        (
            "async body over --max-async-body",
            "POST",
            "/async-function/echo".into(),
            vec![b'x'; 100 << 10],
            413,
            "max-async-body",
        ),
    ];
    table.push((
        "a method the route does not have",
        "PATCH",
        "/system/functions".into(),
        vec![],
        405,
        "not allowed",
    ));
    let mut wrong = Vec::new();
    for (what, method, path, body, want, word) in &table {
        let (status, answer) = raw(&s.addr, &request(&s, method, path, body)).await;
        let clear = *method == "HEAD" || (answer.ends_with('\n') && answer.contains(word));
        if status != *want || !clear {
            wrong.push(format!(
                "{what}: {method} {path} answered {status} {answer:?}; want {want} mentioning {word:?}, ending in a newline"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Request heads: more than 100 headers, or more than 64 KiB of them → 431 (hyper).
    let mut many = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", s.addr);
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    assert_eq!(raw(&s.addr, many.as_bytes()).await.0, 431, "150 headers");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        "a".repeat(100 << 10)
    );
    assert_eq!(
        raw(&s.addr, huge.as_bytes()).await.0,
        431,
        "a 100 KiB header"
    );
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        "a".repeat(16 << 10)
    );
    assert_eq!(
        raw(&s.addr, fits.as_bytes()).await.0,
        200,
        "a 16 KiB header is fine"
    );

    // Nothing was deployed or changed by any of it.
    let names: Vec<String> = s
        .list_functions()
        .await
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo"]);
    let after = s.get_function("echo").await.unwrap();
    assert_eq!(after["createdAt"], before["createdAt"]);
    assert_eq!(after["envProcess"], before["envProcess"]);
    still_answers(&s).await;
    // The data dir still has its state (no traversal wrote or removed anything there).
    assert!(s.data_dir().join("state.db").exists());
    assert!(!s.data_dir().join("x y").exists());
}

/// A client that sends its head a byte at a time is cut at --header-timeout; one that sends its
/// body too slowly gets 408 at --read-timeout, on the invoke path and on /system alike.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut() {
    let s = Server::start_opts(ServeOpts::args(&[
        "--header-timeout",
        "2s",
        "--read-timeout",
        "2s",
    ]))
    .await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;

    // Slow head: one byte every 300 ms, for at most 60 s; the server must close first.
    let mut c = TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        s.addr,
        "a".repeat(200)
    );
    let started = Instant::now();
    let mut cut = false;
    for b in head.as_bytes() {
        if c.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(300), c.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                cut = true; // an early answer (a 408) counts as cut too
                break;
            }
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(cut, "a client sending its head byte by byte was never cut");

    // Slow bodies: the head promises 100 bytes, 10 arrive, the rest never.
    for (what, path) in [
        ("invoke", "/function/echo"),
        ("deploy", "/system/functions"),
        ("enqueue", "/async-function/echo"),
        // A bundle upload may take long, but not stall: its wait for each chunk is bounded.
        (
            "bundle upload",
            "/system/bundles/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ] {
        let mut c = TcpStream::connect(&s.addr).await.unwrap();
        let head = format!(
            "{} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
            if what == "bundle upload" {
                "PUT"
            } else {
                "POST"
            },
            s.addr,
            basic(&s)
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut buf)).await;
        let answer = String::from_utf8_lossy(&buf);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{what}: a body that stalls should get 408, got: {answer:?}"
        );
        assert!(answer.contains("read"), "{what}: {answer}");
    }
    still_answers(&s).await;
}

/// `fjord deploy -f bomb.yml`: the stack parser's budget refuses a billion-laughs file with a
/// clear error, and nothing is deployed.
#[tokio::test(flavor = "multi_thread")]
async fn a_yaml_bomb_is_refused_by_fjord_deploy() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;
    let dir = tempfile::Builder::new()
        .prefix("fjord-bomb-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut yaml = String::from(
        "version: 1.0\nprovider:\n  name: openfaas\nx0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        yaml.push_str(&format!(
            "x{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    yaml.push_str("functions:\n  bomb:\n    lang: python3-http\n    handler: ./bomb\n    image: bomb:latest\n    labels:\n      x: *a9\n");
    let file = dir.path().join("bomb.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["deploy", "-f"])
            .arg(&file)
            .current_dir(dir.path())
            .env("FJORD_URL", &s.base)
            .env("FJORD_PASSWORD", s.password.as_deref().unwrap())
            .env("FJORD_CONFIG", dir.path().join("config.json"))
            .env_remove("OPENFAAS_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("fjord deploy of a YAML bomb did not finish within 60 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "fjord deploy accepted a YAML bomb: {stderr}"
    );
    assert!(
        stderr.contains("bomb.yml") && (stderr.contains("alias") || stderr.contains("nodes")),
        "the error should name the file and the budget it broke: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let names: Vec<String> = s
        .list_functions()
        .await
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo"], "nothing from the bomb may be deployed");
    still_answers(&s).await;
}

/// HTTP/2 (h2c with prior knowledge) has the same bound on a request's headers.
#[tokio::test(flavor = "multi_thread")]
async fn http2_header_lists_are_bounded() {
    let s = Server::start().await;
    let stream = TcpStream::connect(&s.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let get = |extra: Option<String>| {
        let mut b = hyper::Request::get(format!("http://{}/healthz", s.addr));
        if let Some(v) = extra {
            b = b.header("x-big", v);
        }
        b.body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let ok = send
        .send_request(get(None))
        .await
        .expect("a plain h2 request");
    assert_eq!(ok.status(), 200);
    let fits = send
        .send_request(get(Some("a".repeat(16 << 10))))
        .await
        .expect("a 16 KiB header over h2");
    assert_eq!(fits.status(), 200);
    match send.send_request(get(Some("a".repeat(100 << 10)))).await {
        Ok(r) => assert_eq!(r.status(), 431, "a 100 KiB header over h2"),
        Err(e) => panic!("a 100 KiB header over h2: {e:?}"),
    }
}
