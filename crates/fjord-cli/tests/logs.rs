//! `GET /system/logs?follow=true` streams lines as they are produced.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines() {
    let s = Server::start().await;
    s.deploy_ready(&http_fn("chatty", "1")).await;
    // Something from before the follow starts.
    let (code, body) = s.call("chatty/log?before-follow").await;
    assert_eq!(code, StatusCode::OK, "{body}");

    let (headers_tx, headers_rx) = tokio::sync::oneshot::channel();
    let follow = s
        .sys(Method::GET, "/system/logs?name=chatty&follow=true")
        .timeout(Duration::from_secs(40));
    let reader = tokio::spawn(async move {
        let mut r = follow.send().await.expect("follow request");
        let code = r.status();
        let ct = header(r.headers(), "content-type")
            .unwrap_or_default()
            .to_string();
        let _ = headers_tx.send(());
        if code != StatusCode::OK {
            let body = r.text().await.unwrap_or_default();
            return Err(format!("follow answered {code}: {body}"));
        }
        let mut buf = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, r.chunk()).await {
                Err(_) => return Err(format!("no marker line within 30 s; got:\n{buf}")),
                Ok(Err(e)) => return Err(format!("stream error {e}; got:\n{buf}")),
                Ok(Ok(None)) => return Err(format!("stream ended early; got:\n{buf}")),
                Ok(Ok(Some(chunk))) => {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    for line in buf.lines() {
                        if line.contains("LOGLINE after-follow-marker") {
                            let v: serde_json::Value = serde_json::from_str(line)
                                .map_err(|e| format!("bad NDJSON line {line:?}: {e}"))?;
                            return Ok((ct, v, buf.clone()));
                        }
                    }
                }
            }
        }
    });

    // The response head, then marker lines until the follower sees one: a line logged before
    // the server has subscribed the follower is (rightly) not in the stream.
    tokio::time::timeout(Duration::from_secs(30), headers_rx)
        .await
        .expect("the follow request's response head within 30 s")
        .expect("the follow reader sent its head");
    wait_until(
        Duration::from_secs(30),
        "a marker line followed",
        || async {
            let (code, body) = s.call("chatty/log?after-follow-marker").await;
            assert_eq!(code, StatusCode::OK, "{body}");
            reader.is_finished()
        },
    )
    .await;

    let (ct, line, all) = reader
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("logs follow: {e}"));
    assert!(
        ct.contains("ndjson"),
        "Content-Type should be application/x-ndjson, got {ct:?}"
    );
    assert_eq!(line["name"], "chatty", "{line}");
    assert_eq!(line["namespace"], NS, "{line}");
    assert!(line["instance"].is_string(), "{line}");
    assert!(
        line["timestamp"].as_str().is_some_and(|t| t.contains('T')),
        "{line}"
    );
    eprintln!("follow stream so far:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_are_reported_in_the_log_when_asked() {
    let s = Server::start().await;
    let mut reported = fork_fn("reported", "cat");
    reported["annotations"] = serde_json::json!({"com.fjord.log.requests": "true"});
    s.deploy_ready(&reported).await;
    s.deploy_ready(&fork_fn("quiet", "cat")).await;
    let r = s
        .invoke(Method::POST, "reported/some/path?x=1")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let call_id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let (code, _) = s.call("quiet").await;
    assert_eq!(code, StatusCode::OK);
    let lines = s
        .wait_log("name=reported", "REPORT", Duration::from_secs(30))
        .await;
    let report = lines
        .iter()
        .filter_map(|l| l["text"].as_str())
        .find(|t| t.starts_with("REPORT"))
        .expect("a REPORT line");
    assert!(
        report.starts_with("REPORT POST /some/path status=200 duration=")
            && report.contains(&format!("call_id={call_id}")),
        "{report}"
    );
    // Not asked: no line per call.
    let quiet = s.logs("name=quiet").await;
    assert!(
        !quiet
            .iter()
            .any(|l| l["text"].as_str().is_some_and(|t| t.contains("REPORT"))),
        "{quiet:?}"
    );
}
