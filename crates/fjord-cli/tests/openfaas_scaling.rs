//! Scaling as OpenFaaS does it, through the real `fjord serve` and `fjord` CLI: the
//! `faas_function` label, scale-function to 0 and above max, `fjord scale NAME N`, the
//! Community Edition autoscaling rule, scale-to-zero durations and the health-path alias.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn with_labels(mut d: Value, labels: Value) -> Value {
    d["labels"] = labels;
    d
}

fn reason(st: &Value) -> String {
    st["fjord"]["lastScaleReason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// POST /system/scale-function/{name}: status and the JSON answer (`Null` if none).
async fn scale(s: &Server, name: &str, replicas: u64) -> (StatusCode, Value) {
    let (code, body) = s
        .sys_json(
            Method::POST,
            &format!("/system/scale-function/{name}"),
            &json!({"serviceName": name, "replicas": replicas}),
        )
        .await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn cli(s: &Server, args: &[&str]) -> CliOut {
    let config = s.dir.tmp.path().join("cli-config.json");
    let pw = s.password.clone().expect("auth is on");
    run_cli(
        args,
        &[
            ("FJORD_URL", s.base.as_str()),
            ("FJORD_PASSWORD", pw.as_str()),
        ],
        &config,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faas_function_label_is_returned_and_never_stored() {
    let s = Server::start().await;
    let name = "labelled";
    s.deploy_ready(&with_labels(fork_fn(name, "cat"), json!({"team": "core"})))
        .await;
    let st = s.get_function(name).await.expect("deployed");
    assert_eq!(st["labels"]["faas_function"], name, "GET: {st}");
    assert_eq!(st["labels"]["team"], "core", "user labels kept: {st}");
    let listed = s.list_functions().await;
    let f = listed.iter().find(|f| f["name"] == name).expect("listed");
    assert_eq!(f["labels"]["faas_function"], name, "list: {f}");

    // A function without labels has it too.
    s.deploy_ready(&fork_fn("bare", "cat")).await;
    let st = s.get_function("bare").await.unwrap();
    assert_eq!(st["labels"], json!({"faas_function": "bare"}), "{st}");

    // A client that sends back what it read (faas_function included) updates fine.
    let mut again = fork_fn(name, "cat");
    again["labels"] = st_labels(&s, name).await;
    again["labels"]["team"] = json!("edge");
    s.sys_expect(
        Method::PUT,
        "/system/functions",
        &again,
        StatusCode::ACCEPTED,
    )
    .await;
    let st = s
        .wait_status(name, READY_TIMEOUT, "team edge", |v| {
            v["labels"]["team"] == "edge"
        })
        .await;
    assert_eq!(
        st["labels"],
        json!({"faas_function": name, "team": "edge"}),
        "{st}"
    );

    // Another value is refused, naming the label; nothing changes.
    let bad = with_labels(fork_fn(name, "cat"), json!({"faas_function": "other"}));
    let body = s
        .sys_expect(
            Method::PUT,
            "/system/functions",
            &bad,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        body.contains("labels.faas_function") && body.contains("reserved"),
        "the 400 names the label and why: {body}"
    );
    assert_eq!(
        s.get_function(name).await.unwrap()["labels"]["faas_function"],
        name
    );
}

async fn st_labels(s: &Server, name: &str) -> Value {
    s.get_function(name).await.expect("deployed")["labels"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_below_min_works_and_the_next_call_wakes_it() {
    let s = Server::start_opts(ServeOpts::args(&["--ready-timeout", "30"])).await;
    let name = "napper";
    // Default min 1, no scale.zero label: OpenFaaS still lets the API set 0.
    s.deploy_ready(&http_fn(name, "1")).await;
    let (code, answer) = scale(&s, name, 0).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["replicas"], 0, "the answer says 0 was set: {answer}");
    let st = s
        .wait_status(
            name,
            Duration::from_secs(30),
            "0 replicas, none left",
            |v| num(v, "replicas") == 0 && num(v, "availableReplicas") == 0,
        )
        .await;
    assert!(reason(&st).contains("API"), "{st}");

    // Held until a replica is ready, then answered.
    let (code, body) = send_text(
        s.invoke(Method::GET, &format!("{name}/wake"))
            .timeout(Duration::from_secs(40)),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a call at 0 wakes the function: {body}"
    );
    assert_eq!(echo(&body)["path"], "/wake");
    let st = s.get_function(name).await.unwrap();
    assert!(num(&st, "replicas") >= 1, "woken: {st}");
    assert!(fjord_num(&st, "coldStarts") >= 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_above_max_is_clamped_and_the_count_set_is_reported() {
    let s = Server::start().await;
    let name = "capped";
    s.deploy_ready(&with_labels(
        http_fn(name, "1"),
        json!({"com.openfaas.scale.max": "3"}),
    ))
    .await;
    let (code, answer) = scale(&s, name, 10).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer,
        json!({"serviceName": name, "namespace": NS, "replicas": 3, "requested": 10}),
        "the answer says what was set"
    );
    let st = s.get_function(name).await.unwrap();
    assert_eq!(num(&st, "replicas"), 3, "{st}");
    assert!(
        reason(&st).contains("asked for 10"),
        "lastScaleReason says it was clamped: {st}"
    );

    // The CLI prints the count set, not the one asked for.
    let out = cli(&s, &["scale", name, "7"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("to 3 replica") && out.stdout.contains("asked for 7"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjord_scale_takes_the_count_as_an_argument_or_with_r() {
    let s = Server::start().await;
    let name = "counted";
    s.deploy_ready(&with_labels(
        http_fn(name, "1"),
        json!({"com.openfaas.scale.max": "4"}),
    ))
    .await;
    let out = cli(&s, &["scale", name, "3"]).await;
    assert_eq!(out.code, Some(0), "fjord scale {name} 3: {}", out.stderr);
    assert!(out.stdout.contains("to 3 replica"), "{}", out.stdout);
    assert_eq!(num(&s.get_function(name).await.unwrap(), "replicas"), 3);

    let out = cli(&s, &["scale", name, "-r", "2"]).await;
    assert_eq!(out.code, Some(0), "-r 2: {}", out.stderr);
    assert_eq!(num(&s.get_function(name).await.unwrap(), "replicas"), 2);
    let out = cli(&s, &["scale", name, "--replicas", "0"]).await;
    assert_eq!(out.code, Some(0), "--replicas 0: {}", out.stderr);
    assert_eq!(num(&s.get_function(name).await.unwrap(), "replicas"), 0);

    // Neither, or both: a usage error that changes nothing.
    for args in [vec!["scale", name], vec!["scale", name, "1", "-r", "2"]] {
        let out = cli(&s, &args).await;
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("REPLICAS") || out.stderr.contains("--replicas"));
    }
    assert_eq!(num(&s.get_function(name).await.unwrap(), "replicas"), 0);
}

/// Calls `name` from `loops` tasks, each at most every `every`, until `stop` is set or
/// `limit` has passed; returns the count of each status (0 = transport error).
async fn paced_load(
    s: &Server,
    name: &str,
    loops: usize,
    every: Duration,
    limit: Duration,
    stop: &AtomicBool,
) -> std::collections::BTreeMap<u16, u64> {
    let end = Instant::now() + limit;
    let tasks = (0..loops).map(|_| async move {
        let mut codes = std::collections::BTreeMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            tick.tick().await;
            let code = match s
                .invoke(Method::GET, name)
                .timeout(Duration::from_secs(20))
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            *codes.entry(code).or_insert(0u64) += 1;
        }
        codes
    });
    let mut all = std::collections::BTreeMap::new();
    for codes in join_all(tasks).await {
        for (k, v) in codes {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn community_rule_steps_up_above_five_rps_and_returns_to_min() {
    let s = Server::start().await;
    let name = "popular";
    // No scale.type / scale.target label: the Community Edition rule.
    s.deploy_ready(&with_labels(
        http_fn(name, "1"),
        json!({"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "10"}),
    ))
    .await;

    // About 30 requests/s (three loops, one call each 100 ms) until the rule fires; the
    // rule needs more than 5/s for 5 s.
    let stop = AtomicBool::new(false);
    let (codes, st) = tokio::join!(
        paced_load(
            &s,
            name,
            3,
            Duration::from_millis(100),
            Duration::from_secs(60),
            &stop
        ),
        async {
            let st = s
                .wait_status(name, Duration::from_secs(60), "scaled up", |v| {
                    num(v, "replicas") > 1
                })
                .await;
            stop.store(true, Ordering::Relaxed);
            st
        }
    );
    assert!(
        codes.keys().all(|c| *c == 200),
        "every call under load succeeds: {codes:?}"
    );
    assert_eq!(
        num(&st, "replicas"),
        3,
        "one step: 1 + ceil(max 10 × factor 20 %): {st}"
    );
    let why = reason(&st);
    assert!(
        why.contains("autoscaler") && why.contains("successful req/s"),
        "{st}"
    );

    // The rate falls back: min again.
    let st = s
        .wait_status(name, Duration::from_secs(40), "back to min 1", |v| {
            num(v, "replicas") == 1
        })
        .await;
    assert!(reason(&st).contains("(min)"), "{st}");
    let (code, body) = s.call(name).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_duration_label_scales_an_idle_function_to_zero() {
    // A long gateway default: only the label can take `brief` to zero in time.
    let s = Server::start_opts(ServeOpts::args(&["--scale-zero-duration", "1h"])).await;
    s.deploy_ready(&with_labels(
        http_fn("steady", "1"),
        json!({"com.openfaas.scale.zero": "true"}),
    ))
    .await;
    s.deploy(&with_labels(
        http_fn("brief", "1"),
        json!({"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "2s"}),
    ))
    .await;
    let st = s
        .wait_status("brief", Duration::from_secs(30), "scaled to zero", |v| {
            num(v, "replicas") == 0
        })
        .await;
    assert!(reason(&st).contains("zero after 2s"), "{st}");
    let steady = s.get_function("steady").await.unwrap();
    assert_eq!(
        num(&steady, "replicas"),
        1,
        "the gateway default (1h) keeps an unlabelled one up: {steady}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_zero_duration_flag_is_the_default_idle_time() {
    let s = Server::start_opts(ServeOpts::args(&["--scale-zero-duration", "2s"])).await;
    s.deploy(&with_labels(
        http_fn("idle", "1"),
        json!({"com.openfaas.scale.zero": "true"}),
    ))
    .await;
    let st = s
        .wait_status("idle", Duration::from_secs(30), "scaled to zero", |v| {
            num(v, "replicas") == 0
        })
        .await;
    assert!(reason(&st).contains("zero after 2s"), "{st}");

    // Documented with its default; under a second is refused before anything starts.
    let out = cli(&s, &["serve", "--help"]).await;
    assert!(
        out.stdout.contains("--scale-zero-duration") && out.stdout.contains("[default: 15m]"),
        "{}",
        out.stdout
    );
    let out = cli(&s, &["serve", "--scale-zero-duration", "500ms"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("under 1s"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_path_annotation_is_the_readiness_path() {
    // A short --ready-timeout: a call to a function that never gets ready answers sooner.
    let s = Server::start_opts(ServeOpts::args(&["--ready-timeout", "3"])).await;
    // The test function logs `LOGLINE <query>` for /log?<query>: the probe leaves a trace.
    let mut d = http_fn("healthy", "1");
    d["annotations"] = json!({"com.openfaas.health.http.path": "/log?probed-health"});
    s.deploy_ready(&d).await;
    s.wait_log(
        "name=healthy&tail=100",
        "LOGLINE probed-health",
        Duration::from_secs(30),
    )
    .await;

    // Both set: the ready annotation wins, the health path is never requested.
    let mut d = http_fn("both", "1");
    d["annotations"] = json!({
        "com.openfaas.health.http.path": "/log?health-loses",
        "com.openfaas.ready.http.path": "/log?ready-wins",
    });
    s.deploy_ready(&d).await;
    let lines = s
        .wait_log(
            "name=both&tail=100",
            "LOGLINE ready-wins",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        !lines.iter().any(|l| l["text"]
            .as_str()
            .unwrap_or_default()
            .contains("health-loses")),
        "{lines:?}"
    );

    // A health path that never answers 2xx keeps the replica out of service.
    let mut d = http_fn("sick", "1");
    d["annotations"] = json!({"com.openfaas.health.http.path": "/status/503"});
    s.deploy(&d).await;
    let (code, body) = s.call("sick").await;
    assert_eq!(
        code,
        StatusCode::SERVICE_UNAVAILABLE,
        "no replica passes /status/503: {body}"
    );
}
