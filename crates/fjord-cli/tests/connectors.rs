//! Event connectors through the real binary: cron schedules (a seconds schedule end to end,
//! exactly once across two servers sharing NATS with one stopped halfway) and NATS subjects
//! (payload in, reply out, response subject, subscriptions following redeploys and
//! deletes), with deploy-time checks and startup errors. Brokers are real `nats-server`s
//! started per test.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use fjord_queue::nats_server::NatsServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A fork-mode function logging each call's scheduled time and connector to stderr (the
/// function's logs), answering with its body (`cat`).
fn logging_fn(name: &str, annotations: Value) -> Value {
    json!({
        "service": name,
        "image": "fjord-test/cron:latest",
        "envProcess": "sh -c 'echo \"RUN $Http_X_Scheduled_Time $Http_X_Connector $Http_X_Topic\" >&2; cat'",
        // stderr to the logs, not into the answer.
        "envVars": {"combine_output": "false"},
        "annotations": annotations,
    })
}

/// The scheduled times of the runs `name` logged on `s`.
async fn runs(s: &Server, name: &str) -> Vec<String> {
    s.logs(&format!("name={name}&tail=10000"))
        .await
        .iter()
        .filter_map(|l| {
            let t = l["text"].as_str()?;
            let rest = t.split("RUN ").nth(1)?;
            let mut f = rest.split_whitespace();
            let at = f.next()?.to_string();
            assert_eq!(f.next(), Some("cron"), "X-Connector: {t}");
            assert_eq!(f.next(), Some("cron-function"), "X-Topic: {t}");
            Some(at)
        })
        .collect()
}

fn secs(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .timestamp()
}

fn trigger(f: &Value, kind: &str) -> Option<Value> {
    f["fjord"]["triggers"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == kind)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_a_seconds_schedule_shows_it_and_follows_updates() {
    let s = Server::start().await;
    let every_second = json!({"topic": "cron-function", "schedule": "* * * * * *"});
    s.deploy_ready(&logging_fn("tick", every_second.clone()))
        .await;
    let seen = wait_until(
        Duration::from_secs(30),
        "three scheduled runs",
        async || {
            let r = runs(&s, "tick").await;
            if r.len() >= 3 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    // Whole seconds, in order, none twice, none skipped.
    let t: Vec<i64> = seen.iter().map(|r| secs(r)).collect();
    for w in t.windows(2) {
        assert_eq!(w[1] - w[0], 1, "consecutive seconds: {seen:?}");
    }
    assert!(
        seen.iter().all(|r| r.ends_with('Z') && !r.contains('.')),
        "{seen:?}"
    );

    // Counted once each call has answered (the log line comes before the answer).
    let c = wait_until(Duration::from_secs(30), "three runs counted", async || {
        let f = s.get_function("tick").await.expect("deployed");
        match trigger(&f, "cron") {
            Some(c) if c["fired"].as_u64().unwrap_or(0) >= 3 => Ok(c),
            _ => Err(f.to_string()),
        }
    })
    .await;
    assert_eq!(c["source"], "* * * * * * (UTC)");
    assert_eq!(c["active"], true);
    assert_eq!(c["lastStatus"], "ok", "{c}");
    let (last, next) = (
        c["lastRun"].as_str().unwrap(),
        c["nextRun"].as_str().unwrap(),
    );
    assert!(secs(next) > secs(last), "{c}");

    let (st, text) = text(
        s.open(Method::GET, "/metrics")
            .send()
            .await
            .expect("metrics"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        text.lines().any(|l| l.starts_with(
            "fjord_trigger_invocations_total{trigger=\"cron\",function=\"tick.openfaas-fn\",status=\"ok\"}"
        )),
        "{text}"
    );

    // fjord describe prints it.
    let password = std::fs::read_to_string(s.password_file()).expect("password");
    let cfg = tempfile::tempdir().expect("config dir");
    let out = run_cli(
        &["describe", "tick"],
        &[
            ("FJORD_URL", &s.url("")),
            ("FJORD_PASSWORD", password.trim()),
        ],
        &cfg.path().join("config.yml"),
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Trigger:"))
        .unwrap_or_else(|| panic!("a Trigger: line in {}", out.stdout));
    assert!(
        line.contains("cron * * * * * * (UTC), next ") && line.contains(" ok, fired "),
        "{line}"
    );

    // A bad schedule is refused, naming the annotation, and the function keeps running.
    for (annotations, named) in [
        (
            json!({"topic": "cron-function", "schedule": "61 * * * *"}),
            "annotations.schedule",
        ),
        (json!({"topic": "cron-function"}), "annotations.schedule"),
        (
            json!({"topic": "cron-function", "schedule": "* * * * *", "com.fjord.schedule.timezone": "Nowhere/Land"}),
            "annotations.com.fjord.schedule.timezone",
        ),
    ] {
        let msg = s
            .sys_expect(
                Method::PUT,
                "/system/functions",
                &logging_fn("tick", annotations),
                StatusCode::BAD_REQUEST,
            )
            .await;
        assert!(msg.contains(named), "{msg}");
    }
    let f = s.get_function("tick").await.expect("still deployed");
    assert_eq!(
        f["annotations"]["schedule"], "* * * * * *",
        "unchanged: {f}"
    );

    // An update without the schedule stops the runs and the trigger goes from the status.
    s.update(&logging_fn("tick", json!({}))).await;
    let f = wait_until(
        Duration::from_secs(30),
        "the cron trigger gone",
        async || {
            let f = s.get_function("tick").await.expect("deployed");
            if trigger(&f, "cron").is_none() {
                Ok(f)
            } else {
                Err(f.to_string())
            }
        },
    )
    .await;
    assert!(f["fjord"]["triggers"].is_null(), "{f}");
    let before = runs(&s, "tick").await.len();
    // Two scheduled seconds pass without a new run (the log is read after them).
    let t0 = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "two seconds", async || {
        t0.elapsed() > Duration::from_secs(2)
    })
    .await;
    let settled = runs(&s, "tick").await.len();
    assert!(
        settled <= before + 1,
        "at most the run in flight at the update"
    );
    // And none in the next two scheduled seconds either.
    let t1 = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "two more seconds", async || {
        t1.elapsed() > Duration::from_secs(2)
    })
    .await;
    assert_eq!(
        runs(&s, "tick").await.len(),
        settled,
        "no runs once unscheduled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_each_scheduled_time_once_across_servers_sharing_nats() {
    let nats = NatsServer::start();
    let key = nats.queue_key_file().display().to_string();
    let opts = ServeOpts::args(&["--queue", &nats.url(), "--queue-key", &key]);
    let mut a = Server::start_opts(opts.clone()).await;
    let b = Server::start_opts(opts).await;
    let f = logging_fn(
        "tick",
        json!({"topic": "cron-function", "schedule": "* * * * * *"}),
    );
    a.deploy_ready(&f).await;
    b.deploy_ready(&f).await;
    // Both run some (the first to claim a second wins it).
    let (ra, rb) = wait_until(
        Duration::from_secs(60),
        "runs on both servers",
        async || {
            let (ra, rb) = (runs(&a, "tick").await, runs(&b, "tick").await);
            if ra.len() + rb.len() >= 8 && !ra.is_empty() && !rb.is_empty() {
                Ok((ra, rb))
            } else {
                Err(format!("a {ra:?} b {rb:?}"))
            }
        },
    )
    .await;
    let _ = (ra, rb);
    // A's runs as they stand when it stops (it drains what it runs; later runs are B's).
    let ra: BTreeSet<i64> = runs(&a, "tick").await.iter().map(|r| secs(r)).collect();
    a.terminate(Duration::from_secs(30)).await;
    let stopped = chrono::Utc::now().timestamp();
    let rb: Vec<String> = wait_until(Duration::from_secs(60), "B runs on alone", async || {
        let rb = runs(&b, "tick").await;
        let after = rb.iter().filter(|r| secs(r) > stopped + 1).count();
        if after >= 4 {
            Ok(rb)
        } else {
            Err(format!("{after} after the stop: {rb:?}"))
        }
    })
    .await;
    let rb_set: BTreeSet<i64> = rb.iter().map(|r| secs(r)).collect();
    assert_eq!(rb_set.len(), rb.len(), "B ran a second twice: {rb:?}");
    let both: Vec<_> = ra.intersection(&rb_set).collect();
    assert!(both.is_empty(), "seconds run on both servers: {both:?}");
    // Every second up to A's last recorded run ran on one of them...
    let first = *ra.iter().chain(&rb_set).min().expect("runs");
    let a_last = *ra.iter().max().expect("A ran");
    for t in first..=a_last {
        assert!(
            ra.contains(&t) || rb_set.contains(&t),
            "second {t} ran nowhere: a {ra:?} b {rb_set:?}"
        );
    }
    // ...and every second after A stopped ran on B.
    let b_last = *rb_set.iter().max().expect("B ran");
    for t in (stopped + 2)..=b_last {
        assert!(
            rb_set.contains(&t),
            "second {t} not run after A stopped: {rb_set:?}"
        );
    }
}

/// A run still going on one server makes the next scheduled times skipped on every server:
/// runs of a slow function never overlap across two servers sharing NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_never_overlap_across_servers_sharing_nats() {
    let nats = NatsServer::start();
    let key = nats.queue_key_file().display().to_string();
    let opts = ServeOpts::args(&["--queue", &nats.url(), "--queue-key", &key]);
    let a = Server::start_opts(opts.clone()).await;
    let b = Server::start_opts(opts).await;
    // Each run takes 2.5 s and logs when it started and ended (ns).
    let f = json!({
        "service": "slow",
        "image": "fjord-test/slow:latest",
        "envProcess": "sh -c 's=$(date +%s%N); sleep 2.5; echo \"RAN $s $(date +%s%N)\" >&2; cat'",
        "envVars": {"combine_output": "false"},
        "annotations": {"topic": "cron-function", "schedule": "* * * * * *"},
    });
    a.deploy_ready(&f).await;
    b.deploy_ready(&f).await;
    let ran = async |s: &Server| -> Vec<(u128, u128)> {
        s.logs("name=slow&tail=10000")
            .await
            .iter()
            .filter_map(|l| {
                let t = l["text"].as_str()?;
                let mut w = t.split("RAN ").nth(1)?.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect()
    };
    let mut all = wait_until(Duration::from_secs(60), "five runs ended", async || {
        let mut all = ran(&a).await;
        all.extend(ran(&b).await);
        if all.len() >= 5 {
            Ok(all)
        } else {
            Err(format!("{all:?}"))
        }
    })
    .await;
    all.sort();
    for w in all.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "a run started at {} while another (from {} to {}) was going: {all:?}",
            w[1].0,
            w[0].0,
            w[0].1
        );
    }
    // The seconds in between were skipped (and counted) rather than run.
    let mut skipped = 0;
    for s in [&a, &b] {
        let f = s.get_function("slow").await.expect("deployed");
        skipped += trigger(&f, "cron").expect("the cron trigger")["skipped"]
            .as_u64()
            .unwrap_or(0);
    }
    assert!(skipped >= 5, "skipped runs counted: {skipped}");
}

/// The NATS server and a fjord subscribed to it.
async fn nats_setup() -> (NatsServer, Server, async_nats::Client) {
    let nats = NatsServer::start();
    let s = Server::start_opts(ServeOpts::args(&["--nats", &nats.url()])).await;
    let client = async_nats::connect(nats.url()).await.expect("test client");
    (nats, s, client)
}

/// Requests on `subject` until a subscriber answers (subscriptions follow deploys at once,
/// but asynchronously); returns the reply.
async fn request_until_answered(
    c: &async_nats::Client,
    subject: &str,
    body: &str,
) -> async_nats::Message {
    wait_until(
        Duration::from_secs(30),
        &format!("an answer on {subject}"),
        async || match tokio::time::timeout(
            Duration::from_secs(10),
            c.request(subject.to_string(), body.to_string().into()),
        )
        .await
        {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        },
    )
    .await
}

/// Whether nobody subscribes to `subject` any more (NATS answers "no responders").
async fn no_responders(c: &async_nats::Client, subject: &str) -> bool {
    matches!(
        c.request(subject.to_string(), "x".into()).await,
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subjects_invoke_reply_publish_and_follow_redeploys() {
    let (mut nats, s, c) = nats_setup().await;
    let (st, health) = send_text(s.open(Method::GET, "/healthz")).await;
    assert_eq!(
        (st, health.as_str()),
        (StatusCode::OK, "OK\nnats: connected\n")
    );
    s.deploy_ready(&logging_fn(
        "orders",
        json!({"topic": "orders.*, audit", "com.fjord.topic.response": "results"}),
    ))
    .await;
    let mut results = c.subscribe("results").await.expect("subscribe results");
    c.flush().await.expect("flush");
    // The payload is the body; the reply is the function's answer, with its status.
    let m = request_until_answered(&c, "orders.new", "order 1").await;
    assert_eq!(&m.payload[..], b"order 1");
    let status = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Fjord-Status"))
        .map(|v| v.to_string());
    assert_eq!(status.as_deref(), Some("200"));
    let call_id = m.headers.as_ref().and_then(|h| h.get("x-call-id"));
    assert!(
        call_id.is_some(),
        "the function's answer headers come along: {:?}",
        m.headers
    );
    // The response subject got it too, saying where it came from.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::StreamExt::next(&mut results),
    )
    .await
    .expect("a result in time")
    .expect("a result");
    assert_eq!(&r.payload[..], b"order 1");
    assert_eq!(
        r.headers
            .as_ref()
            .and_then(|h| h.get("X-Topic"))
            .map(|v| v.to_string())
            .as_deref(),
        Some("orders.new")
    );
    // The function saw the subject in X-Topic.
    s.wait_log("name=orders", "nats orders.new", Duration::from_secs(20))
        .await;
    // A plain publish (no reply) runs it as well: counted on the board.
    c.publish("audit", "fire and forget".into())
        .await
        .expect("publish");
    let f = wait_until(
        Duration::from_secs(30),
        "both subjects counted",
        async || {
            let f = s.get_function("orders").await.expect("deployed");
            let t = f["fjord"]["triggers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let fired = |src: &str| {
                t.iter()
                    .find(|x| x["source"] == src)
                    .and_then(|x| x["fired"].as_u64())
                    .unwrap_or(0)
            };
            if fired("orders.*") >= 1 && fired("audit") >= 1 {
                Ok(f)
            } else {
                Err(f.to_string())
            }
        },
    )
    .await;
    let t = trigger(&f, "nats").expect("nats triggers");
    assert_eq!(t["active"], true, "{f}");

    // Bad topics are refused at deploy, naming the annotation; nothing changes.
    for bad in ["orders..x", "orders.>.x", "a b", "orders,,audit"] {
        let msg = s
            .sys_expect(
                Method::PUT,
                "/system/functions",
                &logging_fn("orders", json!({"topic": bad})),
                StatusCode::BAD_REQUEST,
            )
            .await;
        assert!(msg.contains("annotations.topic"), "{bad}: {msg}");
    }
    assert_eq!(
        &request_until_answered(&c, "orders.again", "still")
            .await
            .payload[..],
        b"still"
    );

    // A redeploy moves the subscription; a delete removes it.
    s.update(&logging_fn("orders", json!({"topic": "invoices"})))
        .await;
    assert_eq!(
        &request_until_answered(&c, "invoices", "inv 1")
            .await
            .payload[..],
        b"inv 1"
    );
    wait_until(
        Duration::from_secs(30),
        "orders.* unsubscribed",
        async || no_responders(&c, "orders.x").await,
    )
    .await;
    let f = s.get_function("orders").await.expect("deployed");
    let sources: Vec<_> = f["fjord"]["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .map(|t| t["source"].clone())
        .collect();
    assert_eq!(sources, vec![json!("invoices")], "{f}");
    // The broker restarts: fjord reconnects and its subscriptions come back.
    nats.crash_and_restart();
    let c = async_nats::connect(nats.url())
        .await
        .expect("test client again");
    assert_eq!(
        &request_until_answered(&c, "invoices", "inv 2")
            .await
            .payload[..],
        b"inv 2"
    );
    let health = wait_until(Duration::from_secs(30), "healthz: connected", async || {
        let (_, h) = send_text(s.open(Method::GET, "/healthz")).await;
        if h.contains("nats: connected") {
            Ok(h)
        } else {
            Err(h)
        }
    })
    .await;
    assert!(health.starts_with("OK\n"), "{health}");
    s.remove("orders").await;
    wait_until(
        Duration::from_secs(30),
        "invoices unsubscribed",
        async || no_responders(&c, "invoices").await,
    )
    .await;
}

#[tokio::test]
async fn a_bad_broker_url_is_a_startup_error() {
    let dir = TestDir::new();
    for (url, expect) in [
        ("http://127.0.0.1:4222", "is not a NATS URL"),
        ("nats://", "is not a NATS URL"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.data_dir())
            .args(["--nats", url])
            .output()
            .await
            .expect("run fjord");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {err}");
        assert!(err.contains(expect), "{url}: {err}");
    }
    // A broker nobody listens on: refused at start, naming it.
    let port = free_port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.data_dir())
        .args(["--nats", &format!("nats://127.0.0.1:{port}")])
        .output()
        .await
        .expect("run fjord");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// A fork-mode worker: answers `done <body>` after a short pause, fails (500) on `fail`.
fn worker(annotations: Value) -> Value {
    json!({
        "service": "worker",
        "image": "fjord-test/worker:latest",
        "envProcess": "sh -c 'b=$(cat); echo \"RUN $b\" >&2; sleep 0.1; [ \"$b\" != fail ] && echo \"done $b\"'",
        "envVars": {"combine_output": "false"},
        "annotations": annotations,
    })
}

/// How many of the worker's log lines contain `what` (`RUN <body>` per call).
async fn worker_runs(s: &Server, what: &str) -> usize {
    s.logs("name=worker&tail=10000")
        .await
        .iter()
        .filter(|l| l["text"].as_str().is_some_and(|t| t.contains(what)))
        .count()
}

/// The calls of the failing message once at least three are logged (the log lines trail
/// the dead letter by a moment).
async fn three_attempts_of_fail(s: &Server) -> usize {
    wait_until(
        Duration::from_secs(20),
        "three attempts logged",
        async || {
            let n = worker_runs(s, "RUN fail").await;
            if n >= 3 { Ok(n) } else { Err(n.to_string()) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_subjects_ack_after_success_retry_dead_letter_and_survive_kill_9() {
    use async_nats::jetstream;
    let nats = NatsServer::start();
    let c = async_nats::connect(nats.url()).await.expect("test client");
    let js = jetstream::new(c.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: "JOBS".into(),
        subjects: vec!["jobs.>".into()],
        ..Default::default()
    })
    .await
    .expect("the JOBS stream");
    let mut results = c.subscribe("results").await.expect("subscribe results");
    let mut dead = c
        .subscribe("fjord.dead.openfaas-fn.worker")
        .await
        .expect("subscribe dead letters");
    c.flush().await.expect("flush");
    let dir = TestDir::new();
    // A small body limit, so one message below is too large for the function.
    let opts = ServeOpts::args(&["--nats", &nats.url(), "--max-async-body", "4KiB"]);
    let s = Server::start_in(dir.clone(), opts.clone()).await;
    s.deploy_ready(&worker(json!({
        "topic": "jobs.*",
        "com.fjord.topic.response": "results",
        "com.openfaas.queue.max_inflight": "2",
        "com.openfaas.retry.attempts": "3",
        "com.openfaas.retry.codes": "500",
        "com.openfaas.retry.min_wait": "100ms",
        "com.openfaas.retry.max_wait": "200ms",
    })))
    .await;
    // Messages stored in the stream before and while fjord runs.
    const N: usize = 30;
    for i in 0..20 {
        js.publish(format!("jobs.{}", i % 3), format!("m{i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let mut seen = BTreeSet::new();
    let mut next = async |seen: &mut BTreeSet<String>| {
        let m = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::StreamExt::next(&mut results),
        )
        .await
        .expect("a result in time")
        .expect("a result");
        let body = String::from_utf8_lossy(&m.payload).trim().to_string();
        seen.insert(body.trim_start_matches("done ").to_string());
    };
    while seen.len() < 3 {
        next(&mut seen).await;
    }
    // kill -9 in the middle of the batch, more messages while it is down, then a restart.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    drop(s);
    for i in 20..N {
        js.publish("jobs.late", format!("m{i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let s = Server::start_in(dir.clone(), opts).await;
    // Unacked messages come back after the ack wait (15 s): none is lost.
    let all: BTreeSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !all.is_subset(&seen) {
        assert!(
            std::time::Instant::now() < deadline,
            "lost after kill -9: {:?}",
            all.difference(&seen).collect::<Vec<_>>()
        );
        next(&mut seen).await;
    }
    // A message the function keeps failing is tried three times, then dead-lettered.
    js.publish("jobs.x", "fail".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let d = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::StreamExt::next(&mut dead),
    )
    .await
    .expect("a dead letter in time")
    .expect("a dead letter");
    assert_eq!(&d.payload[..], b"fail");
    let h = d.headers.expect("dead letter headers");
    assert_eq!(
        h.get("Fjord-Attempts").map(|v| v.to_string()).as_deref(),
        Some("3")
    );
    assert_eq!(
        h.get("X-Topic").map(|v| v.to_string()).as_deref(),
        Some("jobs.x")
    );
    assert!(
        h.get("Fjord-Reason")
            .is_some_and(|r| r.as_str().contains("HTTP 500")),
        "{h:?}"
    );
    // A message over the body limit is dead-lettered at once with the reason, never called.
    let big = "big".repeat(2000);
    js.publish("jobs.big", big.clone().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let d = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::StreamExt::next(&mut dead),
    )
    .await
    .expect("the too-large message dead-lettered in time")
    .expect("a dead letter");
    assert_eq!(d.payload.len(), big.len());
    let h = d.headers.expect("dead letter headers");
    let reason = h
        .get("Fjord-Reason")
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("6000 bytes") && reason.contains("4096-byte body limit"),
        "{reason}"
    );
    assert_eq!(
        h.get("Fjord-Attempts").map(|v| v.to_string()).as_deref(),
        Some("1")
    );
    // The log lines and the board may trail the dead letter by a moment.
    assert_eq!(
        three_attempts_of_fail(&s).await,
        3,
        "attempts of the failing message"
    );
    assert_eq!(
        worker_runs(&s, "RUN big").await,
        0,
        "the function was called with the too-large message"
    );
    let t = wait_until(
        Duration::from_secs(20),
        "four failures counted (three attempts, one too large)",
        async || {
            let f = s.get_function("worker").await.expect("deployed");
            match trigger(&f, "nats") {
                Some(t) if t["failed"].as_u64().unwrap_or(0) >= 4 => Ok(t),
                _ => Err(f.to_string()),
            }
        },
    )
    .await;
    assert_eq!(t["source"], "jobs.*");
    assert!(
        t["lag"].is_u64(),
        "a JetStream consumer reports its lag: {t}"
    );
}

/// A real mosquitto on a free loopback port, stopped on drop.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("config");
        let child = Self::spawn(&conf, port);
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }

    fn spawn(conf: &std::path::Path, port: u16) -> std::process::Child {
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/test installs it)");
        wait_until_blocking(Duration::from_secs(10), "mosquitto listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
        });
        child
    }

    /// Kills the broker (its sessions and subscriptions are gone: no persistence) and starts
    /// a new one on the same port.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self._dir.path().join("mosquitto.conf"), self.port);
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mosquitto with a plain listener (for the test's client) and a TLS one (for fjord) whose
/// certificate a private CA signed, requiring a client certificate from that CA.
struct TlsMosquitto {
    child: std::process::Child,
    plain: u16,
    tls: u16,
    ca: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsMosquitto {
    fn start() -> TlsMosquitto {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fjord test MQTT CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let ca_path = write("ca.pem", &ca.pem());
        let (cert, key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let server_cert = write("server.pem", &cert);
        let server_key = write("server.key", &key);
        let (cert, key) = leaf(vec!["fjord".into()]);
        let client_cert = write("client.pem", &cert);
        let client_key = write("client.key", &key);
        let (plain, tls) = (free_port(), free_port());
        let conf = write(
            "mosquitto.conf",
            &format!(
                // `user root`: started as root, mosquitto would drop to its own user, which
                // cannot read the private temp dir's certificates.
                "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
                 listener {plain} 127.0.0.1\n\
                 listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                ca_path.display(),
                server_cert.display(),
                server_key.display()
            ),
        );
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/test installs it)");
        for port in [plain, tls] {
            wait_until_blocking(Duration::from_secs(10), "mosquitto listening", || {
                std::net::TcpStream::connect(("127.0.0.1", port))
            });
        }
        TlsMosquitto {
            child,
            plain,
            tls,
            ca: ca_path,
            client_cert,
            client_key,
            _dir: dir,
        }
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_and_a_client_certificate() {
    let broker = TlsMosquitto::start();
    let url = format!("mqtts://127.0.0.1:{}", broker.tls);
    let serve = |extra: Vec<String>| {
        let dir = TestDir::new();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.data_dir())
                .args(extra)
                .output()
                .await
                .expect("run fjord")
        }
    };
    let s = |p: &std::path::Path| p.display().to_string();
    // Refused at start, saying why: the system's roots do not know the private CA; the
    // broker wants a client certificate; a key without its certificate.
    for (extra, expect) in [
        (vec!["--mqtt".into(), url.clone()], "certificate"),
        (
            vec![
                "--mqtt".into(),
                url.clone(),
                "--mqtt-ca".into(),
                s(&broker.ca),
            ],
            "cannot connect",
        ),
        (
            vec![
                "--mqtt".into(),
                url.clone(),
                "--mqtt-ca".into(),
                "/nonexistent.pem".into(),
            ],
            "--mqtt-ca /nonexistent.pem: cannot read",
        ),
        (
            vec![
                "--mqtt".into(),
                url.clone(),
                "--mqtt-key".into(),
                s(&broker.client_key),
            ],
            "--mqtt-cert",
        ),
    ] {
        let out = serve(extra.clone()).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: {err}");
        assert!(err.contains(expect), "{extra:?}: {err}");
    }
    // With the CA and the client certificate: subscribed over TLS, messages run the function.
    let (c, mut rx) = mqtt_client(broker.plain, &["results"]).await;
    let opts = ServeOpts::args(&[
        "--mqtt",
        &url,
        "--mqtt-ca",
        &s(&broker.ca),
        "--mqtt-cert",
        &s(&broker.client_cert),
        "--mqtt-key",
        &s(&broker.client_key),
    ]);
    let server = Server::start_in(TestDir::new(), opts).await;
    let (_, health) = send_text(server.open(Method::GET, "/healthz")).await;
    assert_eq!(health, "OK\nmqtt: connected\n");
    server
        .deploy_ready(&worker(json!({
            "topic": "secure/+",
            "com.fjord.topic.response": "results",
        })))
        .await;
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 60, "no answer to a message sent to fjord over TLS");
        c.publish(
            "secure/a",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"over tls".to_vec(),
        )
        .await
        .expect("publish");
        if let Ok(Some((_, body))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            && String::from_utf8_lossy(&body).contains("done over tls")
        {
            break;
        }
    }
}

/// Waits for a test client's `n` SUBACKs (its event loop sends one per SUBACK).
async fn subscribed(subacked: &mut tokio::sync::mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), subacked.recv())
            .await
            .expect("subscribed in time");
    }
}

/// A test MQTT client: publishes QoS 1, and forwards what it receives on `topics`.
async fn mqtt_client(
    port: u16,
    topics: &[&str],
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    // A client id of its own: a second client with the same id would keep kicking this one.
    static CLIENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let o = rumqttc::MqttOptions::new(format!("connectors-test-{n}"), "127.0.0.1", port);
    let (client, mut events) = rumqttc::AsyncClient::new(o, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for t in topics {
        client
            .subscribe(*t, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    let (subacked_tx, mut subacked) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = subacked_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    subscribed(&mut subacked, topics.len()).await;
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_qos1_acks_after_success_retries_dead_letters_and_survives_kill_9() {
    let mut broker = Mosquitto::start();
    let (c, mut rx) = mqtt_client(broker.port, &["results", "fjord/dead/openfaas-fn/worker"]).await;
    let dir = TestDir::new();
    let opts = ServeOpts::args(&["--mqtt", &broker.url()]);
    let s = Server::start_in(dir.clone(), opts.clone()).await;
    let (_, health) = send_text(s.open(Method::GET, "/healthz")).await;
    assert_eq!(health, "OK\nmqtt: connected\n");
    // Bad filters are refused at deploy.
    let msg = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &worker(json!({"topic": "sensors/#/temp"})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        msg.contains("annotations.topic") && msg.contains("MQTT"),
        "{msg}"
    );
    s.deploy_ready(&worker(json!({
        "topic": "sensors/+/temp",
        "com.fjord.topic.response": "results",
        "com.openfaas.retry.attempts": "3",
        "com.openfaas.retry.codes": "500",
        "com.openfaas.retry.min_wait": "100ms",
        "com.openfaas.retry.max_wait": "200ms",
    })))
    .await;
    let publish = async |topic: &str, body: String| {
        c.publish(topic, rumqttc::QoS::AtLeastOnce, false, body.into_bytes())
            .await
            .expect("publish");
    };
    // Once fjord's subscription is in place (a probe gets an answer)...
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut dead: Vec<String> = Vec::new();
    let mut take =
        async |seen: &mut BTreeSet<String>, dead: &mut Vec<String>, bound: Duration| -> bool {
            match tokio::time::timeout(bound, rx.recv()).await {
                Ok(Some((topic, body))) => {
                    let body = String::from_utf8_lossy(&body).trim().to_string();
                    if topic == "results" {
                        seen.insert(body.trim_start_matches("done ").to_string());
                    } else {
                        dead.push(body);
                    }
                    true
                }
                _ => false,
            }
        };
    let mut probe = 0;
    while !seen.iter().any(|b| b.starts_with("probe")) {
        probe += 1;
        assert!(probe < 60, "fjord never answered on sensors/+/temp");
        publish("sensors/probe/temp", format!("probe{probe}")).await;
        take(&mut seen, &mut dead, Duration::from_millis(500)).await;
    }
    // ...a batch, a kill -9 in its middle, more while fjord is down, and a restart.
    const N: usize = 20;
    for i in 0..10 {
        publish(&format!("sensors/r{}/temp", i % 3), format!("m{i}")).await;
    }
    while seen.iter().filter(|b| b.starts_with('m')).count() < 2 {
        assert!(
            take(&mut seen, &mut dead, Duration::from_secs(60)).await,
            "results in time"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    drop(s);
    for i in 10..N {
        publish("sensors/late/temp", format!("m{i}")).await;
    }
    let s = Server::start_in(dir.clone(), opts).await;
    let all: BTreeSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    while !all.is_subset(&seen) {
        assert!(
            take(&mut seen, &mut dead, Duration::from_secs(60)).await,
            "lost across kill -9: {:?}",
            all.difference(&seen).collect::<Vec<_>>()
        );
    }
    // Three attempts, then the dead-letter topic.
    publish("sensors/x/temp", "fail".to_string()).await;
    while dead.is_empty() {
        assert!(
            take(&mut seen, &mut dead, Duration::from_secs(60)).await,
            "a dead letter in time"
        );
    }
    assert_eq!(dead, vec!["fail".to_string()]);
    assert_eq!(
        three_attempts_of_fail(&s).await,
        3,
        "attempts of the failing message"
    );
    let f = s.get_function("worker").await.expect("deployed");
    let t = trigger(&f, "mqtt").expect("an mqtt trigger");
    assert_eq!(t["source"], "sensors/+/temp");
    assert!(t["fired"].as_u64().unwrap_or(0) >= 1, "{t}");
    // A redeploy moves the subscription.
    s.update(&worker(
        json!({"topic": "other/#", "com.fjord.topic.response": "results"}),
    ))
    .await;
    let mut n = 0;
    while !seen.contains("moved") {
        n += 1;
        assert!(n < 60, "no answer on other/# after the update");
        publish("other/a/b", "moved".to_string()).await;
        take(&mut seen, &mut dead, Duration::from_millis(500)).await;
    }
    // The broker restarts and forgets everything: fjord reconnects and subscribes again.
    broker.restart();
    let (c, mut rx) = mqtt_client(broker.port, &["results"]).await;
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 60, "no answer after the broker restart");
        c.publish(
            "other/x",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"again".to_vec(),
        )
        .await
        .expect("publish");
        if let Ok(Some((_, body))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            && String::from_utf8_lossy(&body).contains("again")
        {
            break;
        }
    }
    let (_, health) = send_text(s.open(Method::GET, "/healthz")).await;
    assert_eq!(health, "OK\nmqtt: connected\n");
}

/// A message an MQTT 5 test client received: topic, payload, correlation data, and the
/// `fjord-status` user property.
type Mqtt5Received = (String, Vec<u8>, Option<Vec<u8>>, Option<String>);

/// An MQTT 5 test client subscribed to `topics`.
async fn mqtt5_client(
    port: u16,
    topics: &[&str],
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Mqtt5Received>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let o = MqttOptions::new(
        format!("connectors-test-v5-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    let (client, mut events) = AsyncClient::new(o, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for t in topics {
        client
            .subscribe(*t, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    let (subacked_tx, mut subacked) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let props = p.properties.clone().unwrap_or_default();
                    let status = props
                        .user_properties
                        .iter()
                        .find(|(k, _)| k == "fjord-status")
                        .map(|(_, v)| v.clone());
                    let _ = tx.send((
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.payload.to_vec(),
                        props.correlation_data.map(|c| c.to_vec()),
                        status,
                    ));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subacked_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    subscribed(&mut subacked, topics.len()).await;
    (client, rx)
}

/// How many of the worker's calls on `s` had exactly `body`.
async fn worker_calls_with(s: &Server, body: &str) -> usize {
    let line = format!("RUN {body}");
    s.logs("name=worker&tail=10000")
        .await
        .iter()
        .filter(|l| l["text"].as_str().is_some_and(|t| t.trim() == line))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_servers_share_a_functions_messages_and_answer_response_topics() {
    let broker = Mosquitto::start();
    // A broker that does not speak MQTT 5 is not one to test here; a wrong version is.
    let out = common::run_cli(
        &["serve", "--mqtt", &broker.url(), "--mqtt-version", "6"],
        &[],
        &std::env::temp_dir().join("fjord-no-config.yml"),
    )
    .await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("3.1.1 or 5"), "{}", out.stderr);
    let opts = ServeOpts::args(&["--mqtt", &broker.url(), "--mqtt-version", "5"]);
    let a = Server::start_in(TestDir::new(), opts.clone()).await;
    let b = Server::start_in(TestDir::new(), opts).await;
    for s in [&a, &b] {
        let (_, health) = send_text(s.open(Method::GET, "/healthz")).await;
        assert_eq!(health, "OK\nmqtt: connected\n");
        s.deploy_ready(&worker(
            json!({"topic": "jobs/+", "com.openfaas.retry.attempts": "1"}),
        ))
        .await;
    }
    let (c, mut rx) = mqtt5_client(broker.port, &["replies/test"]).await;
    let request = async |body: String, correlation: String| {
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some("replies/test".into()),
            correlation_data: Some(correlation.into_bytes().into()),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        c.publish_with_properties(
            "jobs/a",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            body.into_bytes(),
            props,
        )
        .await
        .expect("publish");
    };
    // Probes until both servers' shared subscriptions are in place (each ran one).
    let mut n = 0;
    while worker_runs(&a, "RUN probe").await == 0 || worker_runs(&b, "RUN probe").await == 0 {
        n += 1;
        assert!(n < 60, "both servers never ran a probe on jobs/+");
        request(format!("probe{n}"), format!("p{n}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    while tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .is_ok()
    {}
    // Each message: one call across the two servers, and one reply with its correlation.
    const N: usize = 20;
    for i in 0..N {
        request(format!("m{i}"), format!("c{i}")).await;
    }
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < N {
        let (topic, body, correlation, status) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("replies in time")
                .expect("client running");
        assert_eq!(topic, "replies/test");
        let correlation = String::from_utf8(correlation.expect("correlation data")).unwrap();
        let i = correlation.trim_start_matches('c');
        assert_eq!(String::from_utf8_lossy(&body).trim(), format!("done m{i}"));
        assert_eq!(
            status.as_deref(),
            Some("200"),
            "fjord-status of {correlation}"
        );
        assert!(
            replies.insert(correlation.clone(), body).is_none(),
            "two replies to {correlation}"
        );
    }
    let (mut on_a, mut on_b) = (0, 0);
    for i in 0..N {
        let (x, y) = (
            worker_calls_with(&a, &format!("m{i}")).await,
            worker_calls_with(&b, &format!("m{i}")).await,
        );
        assert_eq!(
            x + y,
            1,
            "m{i} ran {x} times on one server, {y} on the other"
        );
        on_a += x;
        on_b += y;
    }
    assert!(
        on_a > 0 && on_b > 0,
        "shared: {on_a} on one server, {on_b} on the other"
    );
    // User properties reach the function as request headers; ones fjord sets do not.
    a.deploy_ready(&json!({
        "service": "props",
        "image": "fjord-test/props:latest",
        "envProcess": "sh -c 'echo \"tenant=$Http_X_Tenant topic=$Http_X_Topic\"'",
        "annotations": {"topic": "props/+"},
    }))
    .await;
    let mut n = 0;
    let body = loop {
        n += 1;
        assert!(n < 60, "no answer from props");
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some("replies/test".into()),
            correlation_data: Some(bytes::Bytes::from(format!("props{n}"))),
            user_properties: vec![
                ("X-Tenant".into(), "acme".into()),
                ("X-Topic".into(), "forged".into()),
            ],
            ..Default::default()
        };
        c.publish_with_properties(
            "props/a",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            b"".to_vec(),
            props,
        )
        .await
        .expect("publish");
        if let Ok(Some((_, body, Some(correlation), _))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            && correlation.starts_with(b"props")
        {
            break String::from_utf8_lossy(&body).trim().to_string();
        }
    };
    assert_eq!(body, "tenant=acme topic=props/a");
    // A failing call answers too, with its status, after the retry policy's last attempt.
    request("fail".into(), "cfail".into()).await;
    let status = loop {
        // Replies to late probes of props may come first.
        let (_, _, correlation, status) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the failure's reply in time")
            .expect("client running");
        if correlation.as_deref() == Some(&b"cfail"[..]) {
            break status;
        }
    };
    assert_eq!(status.as_deref(), Some("500"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedules_survive_a_restart_and_replay_only_the_latest_missed_run() {
    let dir = TestDir::new();
    let mut s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    s.deploy_ready(&logging_fn(
        "tick",
        json!({"topic": "cron-function", "schedule": "* * * * * *", "com.fjord.schedule.missed": "latest"}),
    ))
    .await;
    let before = wait_until(Duration::from_secs(30), "two runs", async || {
        let r = runs(&s, "tick").await;
        if r.len() >= 2 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    s.terminate(Duration::from_secs(30)).await;
    let last = runs_last(&before);
    // Down for a few scheduled seconds.
    let down = std::time::Instant::now();
    wait_until(Duration::from_secs(10), "3 s down", async || {
        down.elapsed() > Duration::from_secs(3)
    })
    .await;
    let s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    let after = wait_until(
        Duration::from_secs(30),
        "runs after the restart",
        async || {
            let r = runs(&s, "tick").await;
            if r.len() >= 2 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    let after: Vec<i64> = after.iter().map(|r| secs(r)).collect();
    // The schedule came back from the store; the first run is the latest missed second
    // (only that one: none of the seconds between the last run and it).
    assert!(
        after[0] >= last + 3,
        "the latest missed run, not an earlier one: last {last}, after {after:?}"
    );
    assert_eq!(after[1], after[0] + 1, "then on schedule: {after:?}");
    assert!(
        s.log_tail().contains("running the latest missed run"),
        "{}",
        s.log_tail()
    );
}

fn runs_last(r: &[String]) -> i64 {
    r.iter().map(|r| secs(r)).max().expect("runs")
}
