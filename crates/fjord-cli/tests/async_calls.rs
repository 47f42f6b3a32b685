//! Async invocations through the real binary: accept → queue → function → callback, retries,
//! dead letters, replay, cancel, per-function concurrency, and no loss across `kill -9` —
//! each case against both queue backends (the embedded one, and NATS JetStream with a real
//! `nats-server` started per test) — and several servers sharing one NATS.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fjord_queue::nats_server::NatsServer;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One callback as received.
#[derive(Clone, Debug)]
struct Callback {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A callback receiver on a free loopback port, collecting everything posted to it.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Callback>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/done", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Callback>>> = Arc::default();
        let sink = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            sink.lock().unwrap().push(Callback { headers, body });
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"thanks"),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { url, got, task }
    }

    fn all(&self) -> Vec<Callback> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` callbacks arrived (bounded).
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Callback> {
        wait_until(timeout, &format!("{n} callbacks"), || async {
            let all = self.all();
            if all.len() >= n {
                Ok(all)
            } else {
                Err(format!("{} callbacks", all.len()))
            }
        })
        .await
    }

    /// How many callbacks came from `function` (`name.namespace`).
    fn count_from(&self, function: &str) -> usize {
        self.all()
            .iter()
            .filter(|c| c.headers.get("x-function-name").map(String::as_str) == Some(function))
            .count()
    }
}

async fn enqueue(
    s: &Server,
    path: &str,
    body: &str,
    callback: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let mut r = s
        .client
        .post(s.url(&format!("/async-function/{path}")))
        .body(body.to_string());
    if let Some(cb) = callback {
        r = r.header("X-Callback-Url", cb);
    }
    let resp = r.send().await.expect("POST /async-function");
    let status = resp.status();
    let id = header(resp.headers(), "x-call-id").map(str::to_string);
    (status, id, resp.text().await.unwrap_or_default())
}

async fn call_state(s: &Server, id: &str) -> Value {
    let r = s
        .sys(Method::GET, &format!("/system/async-calls/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET call {id}");
    r.json().await.unwrap()
}

async fn wait_state(s: &Server, id: &str, state: &str, timeout: Duration) -> Value {
    wait_until(timeout, &format!("call {id} in state {state}"), || async {
        let v = call_state(s, id).await;
        if v["state"] == state { Ok(v) } else { Err(v) }
    })
    .await
}

async fn accepted_calls_run_and_call_back_with_headers(b: &Backend) {
    let s = b.server(&[]).await;
    let cb = Receiver::start().await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;
    let (status, id, body) = enqueue(&s, "echo/some/path?x=1", "hello async", Some(&cb.url)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = id.expect("X-Call-Id on the 202");
    let got = cb.wait_for(1, Duration::from_secs(30)).await;
    let c = &got[0];
    assert_eq!(c.body, b"hello async");
    assert_eq!(c.headers["x-call-id"], id);
    assert_eq!(c.headers["x-function-status"], "200");
    assert_eq!(c.headers["x-function-name"], "echo.openfaas-fn");
    assert!(c.headers["x-duration-seconds"].parse::<f64>().is_ok());
    assert_eq!(c.headers["x-retry"], "0");
    assert_eq!(c.headers["x-retry-max"], "2");
    wait_state(&s, &id, "done", Duration::from_secs(30)).await;
    // The callback's outcome is written just after the final state (a separate write).
    let v = wait_until(
        Duration::from_secs(30),
        "the callback's outcome recorded",
        || async {
            let v = call_state(&s, &id).await;
            if v["callback"].is_null() {
                Err(v)
            } else {
                Ok(v)
            }
        },
    )
    .await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    assert!(
        v["callback"]
            .as_str()
            .unwrap_or("")
            .starts_with("delivered"),
        "{v}"
    );
    // The function saw the original method, path and query.
    s.deploy_ready(&fork_fn("env", "env")).await;
    let (_, id2, _) = enqueue(&s, "env/p/q?testing=1", "", Some(&cb.url)).await;
    let got = cb.wait_for(2, Duration::from_secs(30)).await;
    let c = got
        .iter()
        .find(|c| c.headers.get("x-call-id") == id2.as_ref())
        .unwrap();
    let out = String::from_utf8_lossy(&c.body);
    assert!(
        out.contains("Http_Method=POST")
            && out.contains("Http_Path=/p/q")
            && out.contains("Http_Query=testing=1"),
        "{out}"
    );
}

async fn bad_requests_are_refused(b: &Backend) {
    let s = b.server(&["--max-async-body", "1KiB"]).await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;
    let (status, _, body) = enqueue(&s, "echo", "x", Some("not a url")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("X-Callback-Url"), "{body}");
    let (status, _, body) = enqueue(&s, "echo", &"x".repeat(4096), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, _, body) = enqueue(&s, "nope", "x", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let r = s
        .sys(Method::GET, "/system/async-calls/no-such-call")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .sys(Method::GET, "/system/async-calls?state=weird")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Bad retry annotations are refused at deploy.
    let mut f = fork_fn("badretry", "cat");
    f["annotations"] = json!({"com.openfaas.retry.codes": "abc"});
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &f,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("com.openfaas.retry.codes"), "{body}");
}

/// Fails `n - 1` times, then succeeds (the counter lives in the replica's private /tmp).
fn flaky(n: u32) -> String {
    format!(
        "sh -c 'c=$(cat /tmp/c 2>/dev/null || echo 0); c=$((c+1)); echo $c > /tmp/c; [ $c -ge {n} ] && echo ok-$c || exit 1'"
    )
}

async fn retries_follow_the_policy_then_dead_letter_and_replay(b: &Backend) {
    let s = b.server(&[]).await;
    let cb = Receiver::start().await;
    let annotations = json!({
        "com.openfaas.retry.attempts": "4",
        "com.openfaas.retry.min_wait": "100ms",
        "com.openfaas.retry.max_wait": "300ms",
    });
    let mut f = fork_fn("flaky", &flaky(3));
    f["annotations"] = annotations.clone();
    s.deploy_ready(&f).await;
    let (_, id, _) = enqueue(&s, "flaky", "", Some(&cb.url)).await;
    let id = id.unwrap();
    let got = cb.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].headers["x-function-status"], "200");
    assert_eq!(got[0].headers["x-retry"], "2", "third attempt");
    assert_eq!(got[0].headers["x-retry-max"], "3");
    assert_eq!(String::from_utf8_lossy(&got[0].body).trim(), "ok-3");
    let v = wait_state(&s, &id, "done", Duration::from_secs(30)).await;
    assert_eq!(v["attempts"], 3, "{v}");

    // Never succeeds: dead-lettered after 4 attempts, failure posted to the callback.
    let mut f = fork_fn("broken", "sh -c 'echo no; exit 1'");
    f["annotations"] = annotations;
    s.deploy_ready(&f).await;
    let (_, id, _) = enqueue(&s, "broken", "", Some(&cb.url)).await;
    let id = id.unwrap();
    let v = wait_state(&s, &id, "dead", Duration::from_secs(30)).await;
    assert_eq!(v["attempts"], 4, "{v}");
    assert_eq!(v["status"], 500, "{v}");
    let got = cb.wait_for(2, Duration::from_secs(30)).await;
    assert!(got.iter().any(
        |c| c.headers.get("x-call-id") == Some(&id) && c.headers["x-function-status"] == "500"
    ));
    let r = s
        .sys(Method::GET, "/system/async-calls?state=dead")
        .send()
        .await
        .unwrap();
    let dead: Vec<Value> = r.json().await.unwrap();
    assert!(dead.iter().any(|c| c["id"] == id.as_str()), "{dead:?}");
    // Replay runs it again from attempt 1.
    let r = s
        .sys(Method::POST, &format!("/system/async-calls/{id}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v = wait_state(&s, &id, "dead", Duration::from_secs(30)).await;
    assert_eq!(v["attempts"], 4, "{v}");
    let got = cb.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter()
            .filter(|c| c.headers.get("x-call-id") == Some(&id))
            .count(),
        2
    );
    // A done call cannot be replayed.
    let done = got[0].headers["x-call-id"].clone();
    let r = s
        .sys(Method::POST, &format!("/system/async-calls/{done}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

async fn queued_calls_can_be_cancelled_running_ones_cannot(b: &Backend) {
    let s = b.server(&[]).await;
    let mut f = fork_fn("slow", "sh -c 'sleep 2; echo done'");
    f["annotations"] = json!({"com.openfaas.queue.max_inflight": "1"});
    s.deploy_ready(&f).await;
    let (_, first, _) = enqueue(&s, "slow", "", None).await;
    let (_, second, _) = enqueue(&s, "slow", "", None).await;
    let (first, second) = (first.unwrap(), second.unwrap());
    wait_state(&s, &first, "running", Duration::from_secs(30)).await;
    let r = s
        .client
        .delete(s.url(&format!("/async-function/{second}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s
        .client
        .delete(s.url(&format!("/async-function/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // A third call, queued behind the cancelled one: once it is done, the worker has passed
    // the cancelled call, which must not have run.
    let (status, third, body) = enqueue(&s, "slow", "", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_state(&s, &first, "done", Duration::from_secs(30)).await;
    wait_state(&s, &third.unwrap(), "done", Duration::from_secs(30)).await;
    assert_eq!(call_state(&s, &second).await["state"], "cancelled");
    let r = s
        .client
        .delete(s.url("/async-function/no-such-call"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn a_slow_function_does_not_starve_another(b: &Backend) {
    let s = b.server(&[]).await;
    let cb = Receiver::start().await;
    // Slow enough that the 40 calls take ≥ 40 s at 10 at a time: a loaded machine delaying the
    // quick calls by seconds must not look like starvation (the test ends with the quick ones).
    s.deploy_ready(&fork_fn("slowpoke", "sh -c 'sleep 10; echo slow'"))
        .await;
    s.deploy_ready(&fork_fn("quick", "sh -c 'echo quick'"))
        .await;
    for i in 0..40 {
        let (status, _, body) = enqueue(&s, "slowpoke", "", Some(&cb.url)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "slow call {i}: {body}");
    }
    let t0 = Instant::now();
    for i in 0..5 {
        let (status, _, body) = enqueue(&s, "quick", "", Some(&cb.url)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "quick call {i}: {body}");
    }
    wait_until(
        Duration::from_secs(60),
        "5 quick callbacks (quick calls starved)",
        || async { cb.count_from("quick.openfaas-fn") == 5 },
    )
    .await;
    // 40 slow calls at 10 at a time take ≥ 40 s; the quick ones must not wait for them.
    let slow_done = cb.count_from("slowpoke.openfaas-fn");
    assert!(
        slow_done < 40,
        "quick calls finished only after all slow ones ({:?})",
        t0.elapsed()
    );
}

async fn kill_9_loses_no_accepted_call(b: &Backend) {
    const N: usize = 300;
    let dir = TestDir::new();
    let cb = Receiver::start().await;
    let s = Server::start_in(dir.clone(), b.opts(&[])).await;
    let mut f = fork_fn("work", "sh -c 'sleep 0.05; cat'");
    f["annotations"] = json!({"com.openfaas.queue.max_inflight": "4"});
    s.deploy_ready(&f).await;
    let mut accepted = HashSet::new();
    for i in 0..N {
        let (status, id, body) = enqueue(&s, "work", &format!("call {i}"), Some(&cb.url)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        accepted.insert(id.unwrap());
    }
    // Let some run, then kill -9 while most are queued and some are running.
    cb.wait_for(10, Duration::from_secs(30)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(s);
    let s = Server::start_in(dir.clone(), b.opts(&[])).await;
    let bound = Duration::from_secs(120) + b.redelivery();
    wait_until(
        bound,
        "every accepted call completed after kill -9",
        || async {
            let seen: HashSet<String> = cb
                .all()
                .into_iter()
                .filter_map(|c| c.headers.get("x-call-id").cloned())
                .collect();
            let missing = accepted.difference(&seen).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {N} missing"))
            }
        },
    )
    .await;
    // Duplicates only for calls that were in flight at the kill.
    let total = cb.all().len();
    assert!(
        (N..=N + 8).contains(&total),
        "{total} callbacks for {N} calls"
    );
    drop(s);
}

async fn max_inflight_zero_pauses_until_updated(b: &Backend) {
    let s = b.server(&[]).await;
    let mut f = fork_fn("paused", "cat");
    f["annotations"] = json!({"com.openfaas.queue.max_inflight": "0"});
    s.deploy_ready(&f).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, id, _) = enqueue(&s, "paused", "", None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(id.unwrap());
    }
    // Kept: the point is that time passes and nothing runs; no event marks a call that
    // was (wrongly) not started.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &ids {
        assert_eq!(
            call_state(&s, id).await["state"],
            "queued",
            "{id} ran while paused"
        );
    }
    f["annotations"] = json!({"com.openfaas.queue.max_inflight": "2"});
    s.deploy_ready(&f).await;
    for id in &ids {
        wait_state(&s, id, "done", Duration::from_secs(30)).await;
    }
    // Out of range is a deploy error naming the annotation.
    f["annotations"] = json!({"com.openfaas.queue.max_inflight": "-1"});
    let msg = s
        .sys_expect(
            reqwest::Method::POST,
            "/system/functions",
            &f,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(msg.contains("com.openfaas.queue.max_inflight"), "{msg}");
}

/// The queue backend of the server under test.
enum Backend {
    Embedded,
    Nats(NatsServer),
}

impl Backend {
    fn nats() -> Backend {
        Backend::Nats(NatsServer::start())
    }

    fn opts(&self, extra: &[&str]) -> ServeOpts {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // The callback receivers listen on loopback, refused unless allowed.
        args.extend(["--callback-allow".to_string(), "127.0.0.1".to_string()]);
        if let Backend::Nats(n) = self {
            args.extend(["--queue".to_string(), n.url()]);
            // Servers sharing one NATS queue share its key (they refuse each other's calls
            // otherwise).
            let key = n.queue_key_file().display().to_string();
            args.extend(["--queue-key".to_string(), key]);
        }
        ServeOpts { args }
    }

    async fn server(&self, extra: &[&str]) -> Server {
        Server::start_opts(self.opts(extra)).await
    }

    /// How long a call claimed by a SIGKILLed server takes to run again: at once for the
    /// embedded queue (its restart re-queues it); for NATS, after the consumer's ack_wait
    /// (30 s) and the next sweep.
    fn redelivery(&self) -> Duration {
        match self {
            Backend::Embedded => Duration::ZERO,
            Backend::Nats(_) => Duration::from_secs(45),
        }
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Backend::Embedded).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Backend::nats()).await
                }
            )*
        }
    };
}

on_both_backends!(
    accepted_calls_run_and_call_back_with_headers,
    bad_requests_are_refused,
    retries_follow_the_policy_then_dead_letter_and_replay,
    queued_calls_can_be_cancelled_running_ones_cannot,
    a_slow_function_does_not_starve_another,
    kill_9_loses_no_accepted_call,
    max_inflight_zero_pauses_until_updated,
);

/// Two `fjord serve` sharing one NATS JetStream: calls accepted by either run once each,
/// spread over both servers; a server stopping gracefully hands its claims back and the
/// other finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_nats_queue() {
    const N: usize = 200;
    let b = Backend::nats();
    let cb = Receiver::start().await;
    let a = b.server(&[]).await;
    let mut other = b.server(&[]).await;
    // Each server reports which one ran the call (its own data dir in an env var).
    for (s, tag) in [(&a, "a"), (&other, "b")] {
        let mut f = fork_fn("shared", "sh -c 'sleep 0.02; printf \"$SERVER\"'");
        f["envVars"] = json!({"SERVER": tag});
        f["annotations"] = json!({"com.openfaas.queue.max_inflight": "4"});
        s.deploy_ready(&f).await;
    }
    let mut accepted = HashSet::new();
    for i in 0..N {
        let s = if i % 2 == 0 { &a } else { &other };
        let (status, id, body) = enqueue(s, "shared", "", Some(&cb.url)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        accepted.insert(id.unwrap());
    }
    // Stop one server halfway: its running and claimed calls go back to the stream.
    cb.wait_for(N / 4, Duration::from_secs(60)).await;
    let stopped = other.terminate(Duration::from_secs(20)).await;
    assert!(stopped.success(), "graceful stop: {stopped}");
    let got = cb.wait_for(N, Duration::from_secs(90)).await;
    let ids: Vec<String> = got
        .iter()
        .filter_map(|c| c.headers.get("x-call-id").cloned())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, accepted, "every accepted call ran");
    // A graceful stop re-queues the calls still running: those may run twice, nothing else.
    assert!(ids.len() <= N + 8, "{} callbacks for {N} calls", ids.len());
    let by: HashMap<String, usize> = got.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(String::from_utf8_lossy(&c.body).into_owned())
            .or_default() += 1;
        m
    });
    assert!(
        by.get("a").copied().unwrap_or(0) > 0 && by.get("b").copied().unwrap_or(0) > 0,
        "both servers ran calls: {by:?}"
    );
    // The call records are shared: either server answers for any call.
    let any = accepted.iter().next().unwrap();
    assert_eq!(call_state(&a, any).await["state"], "done");
}
