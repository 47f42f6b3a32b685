//! The OpenFaaS management API: CRUD round-trip, validation errors, info, namespaces, scaling.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A ~50 KB JSON document, as a string (an annotation value).
fn big_json_string() -> String {
    let items: Vec<Value> = (0..1000)
        .map(|i| json!({"id": i, "name": format!("item-{i:05}"), "tags": ["a", "b\"q", "ü"]}))
        .collect();
    let s = serde_json::to_string(&json!({"items": items})).unwrap();
    assert!(s.len() > 45_000, "big annotation is {} bytes", s.len());
    s
}

fn assert_status_matches(st: &Value, sent: &Value, what: &str) {
    assert_eq!(st["name"], sent["service"], "{what}: name; status {st}");
    assert_eq!(st["image"], sent["image"], "{what}: image; status {st}");
    assert_eq!(st["namespace"], NS, "{what}: namespace; status {st}");
    // Labels come back with the provider's faas_function, as from OpenFaaS.
    let mut labels = sent["labels"].clone();
    if labels.is_null() {
        labels = json!({});
    }
    labels["faas_function"] = sent["service"].clone();
    assert_eq!(st["labels"], labels, "{what}: labels; status {st}");
    for field in [
        "envProcess",
        "envVars",
        "annotations",
        "limits",
        "requests",
        "secrets",
        "constraints",
    ] {
        assert_eq!(
            st[field], sent[field],
            "{what}: field {field} differs from what was sent (status {})",
            st
        );
    }
    assert_eq!(
        st["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        sent["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        "{what}: readOnlyRootFilesystem; status {st}"
    );
    let created = st["createdAt"].as_str().unwrap_or_default();
    assert!(
        created.len() >= 20 && created.contains('T'),
        "{what}: createdAt must be RFC 3339, got {:?}",
        st["createdAt"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_get_list_update_delete_round_trip() {
    let s = Server::start().await;
    let big = big_json_string();
    let sent = json!({
        "service": "roundtrip",
        "image": "ghcr.io/example/roundtrip:1.0",
        "envProcess": "cat",
        "envVars": {"GREETING": "hello world", "EMPTY": "", "UNICODE": "ünïcødé ✓"},
        "labels": {"team": "core", "com.openfaas.scale.min": "1", "com.openfaas.scale.max": "3"},
        "annotations": {"topic": "orders", "big.json": big, "com.example/desc": "a \"quoted\" value"},
        "limits": {"memory": "128Mi", "cpu": "500m"},
        "requests": {"memory": "64Mi", "cpu": "100m"},
        "secrets": ["db-password", "api-key"],
        "constraints": ["node.platform.os == linux"],
        "readOnlyRootFilesystem": true,
    });
    // Secrets must exist before a function names them (tests/secrets.rs covers the rest).
    for name in ["db-password", "api-key"] {
        let secret = json!({"name": name, "value": "v"});
        s.sys_expect(
            Method::POST,
            "/system/secrets",
            &secret,
            StatusCode::ACCEPTED,
        )
        .await;
    }
    s.sys_expect(
        Method::POST,
        "/system/functions",
        &sent,
        StatusCode::ACCEPTED,
    )
    .await;

    // GET right after the 202: the function is known (possibly not ready yet).
    let got = s
        .get_function("roundtrip")
        .await
        .expect("function known right after deploy");
    assert_status_matches(&got, &sent, "GET after deploy");
    let ready = s.wait_ready("roundtrip", READY_TIMEOUT).await;
    assert_status_matches(&ready, &sent, "GET when ready");
    assert_eq!(
        num(&ready, "replicas"),
        1,
        "scale.min 1 → 1 replica: {ready}"
    );
    assert_eq!(ready["fjord"]["mode"], "fork", "fjord.mode: {ready}");

    // ?namespace= form.
    let (code, body) = send_text(s.sys(
        Method::GET,
        "/system/function/roundtrip?namespace=openfaas-fn",
    ))
    .await;
    assert_eq!(code, StatusCode::OK, "GET with ?namespace=: {body}");

    let list = s.list_functions().await;
    let entry = list
        .iter()
        .find(|f| f["name"] == "roundtrip")
        .unwrap_or_else(|| panic!("roundtrip missing from list: {list:?}"));
    assert_status_matches(entry, &sent, "list entry");

    // The function works.
    let (code, body) = s.call_text(Method::POST, "roundtrip", "ping").await;
    assert_reply((code, body), StatusCode::OK, "ping", "invoke roundtrip");

    // PUT changes fields.
    let updated = json!({
        "service": "roundtrip",
        "image": "ghcr.io/example/roundtrip:2.0",
        "envProcess": "cat",
        "envVars": {"GREETING": "bonjour"},
        "labels": {"team": "edge"},
        "annotations": {"topic": "invoices"},
        "limits": {"memory": "256Mi", "cpu": "1"},
        "requests": {"memory": "32Mi"},
        "secrets": ["api-key"],
    });
    s.sys_expect(
        Method::PUT,
        "/system/functions",
        &updated,
        StatusCode::ACCEPTED,
    )
    .await;
    let got = s
        .wait_status("roundtrip", Duration::from_secs(30), "image 2.0", |v| {
            v["image"] == "ghcr.io/example/roundtrip:2.0"
        })
        .await;
    // Only the "updated" fields are compared; readOnlyRootFilesystem now false.
    assert_status_matches(&got, &updated, "GET after PUT");
    s.wait_ready("roundtrip", READY_TIMEOUT).await;

    // POST of an existing function updates it as well.
    let mut again = updated.clone();
    again["envVars"] = json!({"GREETING": "hallo"});
    s.sys_expect(
        Method::POST,
        "/system/functions",
        &again,
        StatusCode::ACCEPTED,
    )
    .await;
    let got = s
        .wait_status("roundtrip", Duration::from_secs(30), "envVars hallo", |v| {
            v["envVars"]["GREETING"] == "hallo"
        })
        .await;
    assert_status_matches(&got, &again, "GET after second POST");
    let list = s.list_functions().await;
    assert_eq!(
        list.iter().filter(|f| f["name"] == "roundtrip").count(),
        1,
        "POST of an existing function must not duplicate it: {list:?}"
    );

    // DELETE.
    s.sys_expect(
        Method::DELETE,
        "/system/functions",
        &json!({"functionName": "roundtrip"}),
        StatusCode::ACCEPTED,
    )
    .await;
    assert!(
        s.get_function("roundtrip").await.is_none(),
        "GET after DELETE must be 404"
    );
    let list = s.list_functions().await;
    assert!(
        !list.iter().any(|f| f["name"] == "roundtrip"),
        "deleted function still listed: {list:?}"
    );
    let body = wait_until(
        Duration::from_secs(30),
        "invoking a deleted function gives 404",
        || async {
            match s.call("roundtrip").await {
                (StatusCode::NOT_FOUND, body) => Ok(body),
                (code, body) => Err(format!("{code}: {body}")),
            }
        },
    )
    .await;
    assert!(
        body.contains("roundtrip"),
        "404 body must name the function: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_4xx_plain_text_never_500() {
    let s = Server::start().await;

    // Unknown function.
    let (code, body) = s.call("no-such-fn").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "unknown function: {body}");
    assert!(
        body.contains("no-such-fn"),
        "404 body must name the function: {body}"
    );
    let (code, body) = s.call("no-such-fn.openfaas-fn/sub/path?x=1").await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "unknown function with ns: {body}"
    );
    assert!(
        body.contains("no-such-fn"),
        "404 body must name the function: {body}"
    );

    // Invalid deploy bodies: (description, raw body, substring the 400 must contain).
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", r#"{"service": "a", "image": "#.to_string(), ""),
        ("not an object", "[1,2,3]".to_string(), ""),
        (
            "missing service",
            r#"{"image":"x","envProcess":"env"}"#.to_string(),
            "service",
        ),
        (
            "bad name",
            r#"{"service":"Bad_Name","image":"x","envProcess":"env"}"#.to_string(),
            "Bad_Name",
        ),
        (
            "bad namespace",
            r#"{"service":"ok-name","namespace":"Bad.NS","image":"x","envProcess":"env"}"#
                .to_string(),
            "namespace",
        ),
        (
            "limits.memory lots",
            r#"{"service":"a","image":"x","envProcess":"env","limits":{"memory":"lots"}}"#
                .to_string(),
            "limits.memory",
        ),
        (
            "exec_timeout soon",
            r#"{"service":"a","image":"x","envProcess":"env","envVars":{"exec_timeout":"soon"}}"#
                .to_string(),
            "exec_timeout",
        ),
        (
            "scale label not a number",
            r#"{"service":"a","image":"x","envProcess":"env","labels":{"com.openfaas.scale.min":"many"}}"#
                .to_string(),
            "com.openfaas.scale.min",
        ),
        (
            "envVars value of the wrong type",
            r#"{"service":"a","image":"x","envProcess":"env","envVars":{"A":1}}"#.to_string(),
            "envVars",
        ),
        (
            "readOnlyRootFilesystem not a bool",
            r#"{"service":"a","image":"x","envProcess":"env","readOnlyRootFilesystem":"yes"}"#
                .to_string(),
            "readOnlyRootFilesystem",
        ),
    ];
    // POST must validate strictly. PUT may check existence first (the function is missing),
    // so it may answer 400 or 404, but never 5xx; a 400 must name the field too.
    for method in [Method::POST, Method::PUT] {
        for (what, raw, needle) in &cases {
            let (code, body) = send_text(
                s.sys(method.clone(), "/system/functions")
                    .header("content-type", "application/json")
                    .body(raw.clone()),
            )
            .await;
            let complete =
                serde_json::from_str::<Value>(raw).is_ok_and(|v| v.get("service").is_some());
            if method == Method::PUT && code == StatusCode::NOT_FOUND && complete {
                continue;
            }
            assert_eq!(
                code,
                StatusCode::BAD_REQUEST,
                "{method} /system/functions with {what} ({raw}) must be 400, body: {body}"
            );
            assert!(
                body.contains(needle),
                "{method} {what}: 400 body must mention {needle:?}: {body}"
            );
            assert!(!body.trim().is_empty(), "{method} {what}: empty 400 body");
        }
    }
    // None of the invalid deploys created anything.
    let list = s.list_functions().await;
    assert!(
        list.is_empty(),
        "invalid deploys must not create functions: {list:?}"
    );

    // PUT of a missing function.
    s.sys_expect(
        Method::PUT,
        "/system/functions",
        &fork_fn("missing-fn", "cat"),
        StatusCode::NOT_FOUND,
    )
    .await;

    // DELETE of a missing function; DELETE with a bad body.
    s.sys_expect(
        Method::DELETE,
        "/system/functions",
        &json!({"functionName": "missing-fn"}),
        StatusCode::NOT_FOUND,
    )
    .await;
    let body = s
        .sys_expect(
            Method::DELETE,
            "/system/functions",
            &json!({"nope": 1}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        body.contains("functionName"),
        "DELETE 400 must name functionName: {body}"
    );

    // GET / scale of a missing function.
    assert!(s.get_function("missing-fn").await.is_none());
    s.sys_expect(
        Method::POST,
        "/system/scale-function/missing-fn",
        &json!({"serviceName": "missing-fn", "replicas": 1}),
        StatusCode::NOT_FOUND,
    )
    .await;

    // Oversize body on /system → 413 (retry on transport errors: the server may close early).
    let huge = json!({
        "service": "huge",
        "image": "x",
        "envProcess": "cat",
        "annotations": {"pad": "x".repeat(1536 * 1024)},
    });
    let raw = serde_json::to_vec(&huge).unwrap();
    let mut outcome = String::new();
    let mut got_413 = false;
    for _ in 0..3 {
        match s
            .sys(Method::POST, "/system/functions")
            .header("content-type", "application/json")
            .body(raw.clone())
            .send()
            .await
        {
            Ok(r) => {
                let (code, body) = text(r).await;
                assert_ne!(
                    code,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "oversize body: {body}"
                );
                assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "oversize body: {body}");
                got_413 = true;
                break;
            }
            Err(e) => outcome = format!("transport error: {e}"),
        }
    }
    assert!(got_413, "oversize body never got a 413 answer: {outcome}");
    assert!(
        s.get_function("huge").await.is_none(),
        "oversize deploy must not be applied"
    );

    // The server is still healthy.
    let r = s.open(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_namespaces_and_scaling() {
    // No autoscaler: it would take a manual scale above min back to min within a tick.
    let s = Server::start_opts(ServeOpts::args(&["--autoscale-interval", "1h"])).await;

    let (code, body) = send_text(s.sys(Method::GET, "/system/info")).await;
    assert_eq!(code, StatusCode::OK, "/system/info: {body}");
    let info: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(info["provider"]["provider"], "fjord", "info: {info}");
    assert_eq!(info["provider"]["orchestration"], "process", "info: {info}");
    for v in [&info["provider"]["version"], &info["version"]] {
        assert!(v["sha"].is_string(), "version.sha must be a string: {info}");
        assert!(
            v["release"].as_str().is_some_and(|r| !r.is_empty()),
            "version.release must be non-empty: {info}"
        );
    }
    assert!(
        info["arch"].as_str().is_some_and(|a| !a.is_empty()),
        "arch: {info}"
    );

    let (code, body) = send_text(s.sys(Method::GET, "/system/namespaces")).await;
    assert_eq!(code, StatusCode::OK, "/system/namespaces: {body}");
    let ns: Vec<String> = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(
        ns.iter().any(|n| n == NS),
        "namespaces must include {NS}: {ns:?}"
    );

    s.deploy_ready(&http_fn("scaler", "1")).await;
    s.sys_expect(
        Method::POST,
        "/system/scale-function/scaler",
        &json!({"serviceName": "scaler", "replicas": 2}),
        StatusCode::ACCEPTED,
    )
    .await;
    let st = s
        .wait_status("scaler", READY_TIMEOUT, "2 available replicas", |v| {
            num(v, "availableReplicas") == 2
        })
        .await;
    assert_eq!(
        num(&st, "replicas"),
        2,
        "desired replicas after scale: {st}"
    );
    // The function still answers with 2 replicas.
    for _ in 0..10 {
        let body = s.call_until_ok("scaler/", Duration::from_secs(30)).await;
        assert_eq!(echo(&body)["version"], "1");
    }

    // As in OpenFaaS, scale to 0 sets 0 whatever scale.min says; the next call wakes it.
    s.sys_expect(
        Method::POST,
        "/system/scale-function/scaler",
        &json!({"serviceName": "scaler", "replicas": 0}),
        StatusCode::ACCEPTED,
    )
    .await;
    let st = s.get_function("scaler").await.expect("scaler exists");
    assert!(st["name"] == "scaler");
    assert_eq!(num(&st, "replicas"), 0, "scale to 0 sets 0: {st}");
    let (code, body) = s.call("scaler/").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a call after scale to 0 wakes the function: {body}"
    );
    assert_eq!(echo(&body)["version"], "1");

    // And back to 1.
    s.sys_expect(
        Method::POST,
        "/system/scale-function/scaler",
        &json!({"serviceName": "scaler", "replicas": 1}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.wait_ready("scaler", READY_TIMEOUT).await;
    s.call_until_ok("scaler/", Duration::from_secs(30)).await;
}
