//! Replica lifecycle: persistence across restarts, crash restarts, memory limits, rollouts.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_survive_a_restart() {
    let dir = TestDir::new();
    let mut s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    let mut env = fork_fn("keep-env", "env");
    env["envVars"] = json!({"KEPT": "yes"});
    env["labels"] = json!({"team": "persist"});
    s.deploy_ready(&env).await;
    s.deploy_ready(&http_fn("keep-http", "3")).await;
    assert_eq!(s.call("keep-env").await.0, StatusCode::OK);
    assert_eq!(s.call("keep-http/").await.0, StatusCode::OK);

    let t = Instant::now();
    let status = s.terminate(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM must end fjord with status 0, got {status}; log:\n{}",
        s.log_tail()
    );
    eprintln!("graceful shutdown took {:?}", t.elapsed());
    drop(s);

    let s = Server::start_in(dir, ServeOpts::default()).await;
    let list = s.list_functions().await;
    let mut names: Vec<&str> = list.iter().filter_map(|f| f["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["keep-env", "keep-http"], "after restart: {list:?}");
    let st = s.wait_ready("keep-env", READY_TIMEOUT).await;
    assert_eq!(st["envVars"]["KEPT"], "yes", "{st}");
    assert_eq!(st["labels"]["team"], "persist", "{st}");
    s.wait_ready("keep-http", READY_TIMEOUT).await;
    let body = s.call_until_ok("keep-env", Duration::from_secs(30)).await;
    assert!(body.lines().any(|l| l == "KEPT=yes"), "{body}");
    let body = s
        .call_until_ok("keep-http/after", Duration::from_secs(30))
        .await;
    let e = echo(&body);
    assert_eq!(e["version"], "3", "{e}");
    assert_eq!(e["path"], "/after", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_replica_is_restarted() {
    let s = Server::start().await;
    s.deploy_ready(&http_fn("crashy", "1")).await;
    s.call_until_ok("crashy/", Duration::from_secs(30)).await;

    // The process dies mid-request: any error answer (or a dropped connection) is fine, but
    // not a hang and not a 200.
    match s
        .invoke(Method::GET, "crashy/crash")
        .timeout(Duration::from_secs(15))
        .send()
        .await
    {
        Ok(r) => {
            let (code, body) = text(r).await;
            assert_ne!(code, StatusCode::OK, "/crash cannot succeed: {body}");
        }
        Err(e) => assert!(!e.is_timeout(), "/crash hung: {e}"),
    }

    // A new process serves after the crash (the old one exited; each process start has its
    // own PID namespace, so the pid it sees is the same: the restart count tells them apart).
    s.call_until_ok("crashy/", Duration::from_secs(30)).await;
    let st = s
        .wait_status(
            "crashy",
            Duration::from_secs(30),
            "fjord.restarts >= 1",
            |v| fjord_num(v, "restarts") >= 1,
        )
        .await;
    assert_eq!(st["fjord"]["mode"], "http", "{st}");
    s.wait_ready("crashy", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kills_and_restarts_only_that_replica() {
    let s = Server::start().await;
    let mut hog = http_fn("hog", "1");
    hog["limits"] = json!({"memory": "64Mi"});
    s.deploy_ready(&hog).await;
    s.deploy_ready(&fork_fn("steady", "cat")).await;

    // A bystander loop: steady must answer 200 throughout (bounded: ≤ 400 requests, ≤ 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = {
        let stop = stop.clone();
        let client = s.client.clone();
        let url = s.url("/function/steady");
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            // Runs until told to stop, but at least 20 requests (the OOM itself is quick).
            while (!stop.load(Ordering::SeqCst) || n < 20) && n < 400 && Instant::now() < deadline {
                n += 1;
                match client
                    .post(&url)
                    .body(format!("ping-{n}"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let (code, body) = text(r).await;
                        if code != StatusCode::OK || body != format!("ping-{n}") {
                            failures.push(format!("#{n}: {code} {body}"));
                        }
                    }
                    Err(e) => failures.push(format!("#{n}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (n, failures)
        })
    };

    let r = s
        .invoke(Method::GET, "hog/hog")
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match r {
        Ok(r) => {
            let (code, body) = text(r).await;
            assert_ne!(
                code,
                StatusCode::OK,
                "allocating 300 MB under a 64Mi limit must not succeed: {body}"
            );
        }
        Err(e) => assert!(!e.is_timeout(), "/hog hung: {e}"),
    }
    let st = s
        .wait_status("hog", Duration::from_secs(30), "fjord.oomKills >= 1", |v| {
            fjord_num(v, "oomKills") >= 1
        })
        .await;
    eprintln!("hog status after OOM: {}", st["fjord"]);
    let body = s.call_until_ok("hog/", Duration::from_secs(30)).await;
    assert_eq!(echo(&body)["version"], "1");
    s.wait_status("hog", Duration::from_secs(30), "fjord.restarts >= 1", |v| {
        fjord_num(v, "restarts") >= 1
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let (n, failures) = bystander.await.unwrap();
    assert!(n >= 20, "bystander made only {n} requests");
    assert!(
        failures.is_empty(),
        "the other function must keep answering 200 while hog is OOM-killed; {} of {n} failed: {failures:?}",
        failures.len()
    );
}

/// What one load task saw: requests made, failures, versions seen (deduplicated runs).
type LoadResult = (usize, Vec<String>, Vec<String>);

/// What the load tasks have seen so far, for waiting on their progress.
#[derive(Default)]
struct LoadProgress {
    /// Requests made by all tasks.
    requests: AtomicUsize,
    /// The last version each task got.
    latest: Mutex<Vec<Option<String>>>,
}

impl LoadProgress {
    /// Whether every task's last answer was `version`; else what they last got.
    fn all_on(&self, version: &str) -> Result<(), String> {
        let latest = self.latest.lock().unwrap();
        if latest.iter().all(|v| v.as_deref() == Some(version)) {
            Ok(())
        } else {
            Err(format!("last versions per task: {latest:?}"))
        }
    }
}

/// Runs `tasks` concurrent request loops against `url` until `stop`; each returns
/// (requests, failures, versions seen in order).
fn spawn_load(
    s: &Server,
    path: &str,
    tasks: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<LoadProgress>,
) -> Vec<tokio::task::JoinHandle<LoadResult>> {
    *progress.latest.lock().unwrap() = vec![None; tasks];
    (0..tasks)
        .map(|t| {
            let stop = stop.clone();
            let progress = progress.clone();
            let client = s.client.clone();
            let url = s.url(&format!("/function/{path}"));
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut versions = Vec::new();
                let mut n = 0;
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && n < 3000 && Instant::now() < deadline {
                    n += 1;
                    progress.requests.fetch_add(1, Ordering::SeqCst);
                    match client
                        .get(&url)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let (code, body) = text(r).await;
                            if code == StatusCode::OK {
                                match serde_json::from_str::<serde_json::Value>(&body) {
                                    Ok(v) => {
                                        let ver = v["version"].as_str().unwrap_or("?").to_string();
                                        progress.latest.lock().unwrap()[t] = Some(ver.clone());
                                        if versions.last() != Some(&ver) {
                                            versions.push(ver);
                                        }
                                    }
                                    Err(_) => {
                                        failures.push(format!("task {t} #{n}: bad body {body}"))
                                    }
                                }
                            } else {
                                failures.push(format!("task {t} #{n}: {code} {body}"));
                            }
                        }
                        Err(e) => failures.push(format!("task {t} #{n}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (n, failures, versions)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_is_zero_downtime() {
    let s = Server::start().await;
    let mut v1 = http_fn("rolling", "1");
    // min == max: the test load must not make the autoscaler add replicas mid-rollout.
    v1["labels"] = json!({"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "2"});
    let st = s.deploy_ready(&v1).await;
    assert_eq!(num(&st, "replicas"), 2, "scale.min 2: {st}");
    assert_eq!(num(&st, "availableReplicas"), 2, "{st}");

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(LoadProgress::default());
    let load = spawn_load(&s, "rolling/", 4, stop.clone(), progress.clone());
    wait_until(
        Duration::from_secs(30),
        "every load task served by version 1",
        || async { progress.all_on("1") },
    )
    .await;

    let mut v2 = v1.clone();
    v2["envVars"]["VERSION"] = json!("2");
    s.sys_expect(Method::PUT, "/system/functions", &v2, StatusCode::ACCEPTED)
        .await;

    // Wait until 10 consecutive probes see version 2 (≤ 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut streak = 0;
    let mut last = String::new();
    while streak < 10 {
        if Instant::now() > deadline {
            stop.store(true, Ordering::SeqCst);
            panic!("rollout to VERSION=2 not complete within 60 s; last answer: {last}");
        }
        let (code, body) = s.call("rolling/").await;
        if code == StatusCode::OK && echo(&body)["version"] == "2" {
            streak += 1;
        } else {
            streak = 0;
        }
        last = format!("{code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep the load on while the old replicas drain: until every task is on version 2 and
    // the tasks have made 40 more requests.
    let after_switch = progress.requests.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(60),
        "load on version 2 through the drain",
        || async {
            progress.all_on("2")?;
            let more = progress.requests.load(Ordering::SeqCst) - after_switch;
            if more >= 40 {
                Ok(())
            } else {
                Err(format!("{more} requests since the switch"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    let mut failures = Vec::new();
    for h in load {
        let (n, f, versions) = h.await.unwrap();
        assert_eq!(
            versions.first().map(String::as_str),
            Some("1"),
            "the load started before the PUT, so it must first see version 1: {versions:?}"
        );
        total += n;
        failures.extend(f);
        assert!(
            versions.iter().all(|v| v == "1" || v == "2"),
            "unexpected versions {versions:?}"
        );
        assert_eq!(
            versions.last().map(String::as_str),
            Some("2"),
            "after the switch every client must get version 2: {versions:?}"
        );
    }
    assert!(total >= 20, "load loop made only {total} requests");
    eprintln!("zero-downtime rollout: {total} requests during the update");
    assert!(
        failures.is_empty(),
        "zero-downtime update: {} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );

    let st = s.wait_ready("rolling", Duration::from_secs(30)).await;
    assert_eq!(st["envVars"]["VERSION"], "2", "{st}");
    assert_eq!(num(&st, "replicas"), 2, "{st}");
    let st = s
        .wait_status(
            "rolling",
            Duration::from_secs(30),
            "old replicas gone",
            |v| num(v, "availableReplicas") == 2,
        )
        .await;
    assert!(
        st["fjord"]["lastError"].as_str().unwrap_or("").is_empty(),
        "{st}"
    );
    for _ in 0..10 {
        let (code, body) = s.call("rolling/").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(echo(&body)["version"], "2", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rollout_keeps_old_version_serving() {
    let s = Server::start_opts(ServeOpts::args(&["--rollout-timeout", "5"])).await;
    s.deploy_ready(&http_fn("stable", "1")).await;

    let broken = json!({
        "service": "stable",
        "image": "fjord-test/broken:latest",
        "envProcess": "sh -c 'exit 1'",
        "envVars": {"mode": "http", "VERSION": "2"},
    });
    s.sys_expect(
        Method::PUT,
        "/system/functions",
        &broken,
        StatusCode::ACCEPTED,
    )
    .await;

    // While the rollout fails, version 1 keeps answering (bounded: ≤ 90 s, ≤ 900 probes).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut probes = 0;
    let st = loop {
        probes += 1;
        let (code, body) = s.call("stable/").await;
        assert_eq!(
            code,
            StatusCode::OK,
            "old version must keep serving: {body}"
        );
        assert_eq!(echo(&body)["version"], "1", "{body}");
        let st = s.get_function("stable").await.expect("function exists");
        if !st["fjord"]["lastError"].as_str().unwrap_or("").is_empty() {
            break st;
        }
        assert!(
            Instant::now() < deadline && probes < 900,
            "fjord.lastError never set after a broken rollout: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "lastError after broken rollout: {}",
        st["fjord"]["lastError"]
    );

    // Still serving version 1 once the control plane has rolled back (rollout `failed`).
    s.wait_status(
        "stable",
        Duration::from_secs(30),
        "fjord.rollout.state failed",
        |v| v["fjord"]["rollout"]["state"] == "failed",
    )
    .await;
    for _ in 0..10 {
        let (code, body) = s.call("stable/").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(echo(&body)["version"], "1", "{body}");
    }
    let st = s.get_function("stable").await.unwrap();
    assert!(num(&st, "availableReplicas") >= 1, "{st}");
}
