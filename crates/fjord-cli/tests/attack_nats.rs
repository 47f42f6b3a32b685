//! Issue 11, item 3: NATS was unauthenticated, and whoever could publish to it could queue a
//! call fjord ran. Through the real binary against a real nats-server with authorization:
//! fjord connects with the credentials in its `--queue` URL; an attacker holding a leaked NATS
//! credential (but not fjord's queue key) publishes a forged call for a token-protected
//! function, with a callback of their own: it is dead-lettered with the integrity reason, the
//! function never runs it and the callback never comes. fjord warns at startup when NATS lets
//! anonymous clients in, and not when it does not; anonymous clients cannot connect to a
//! server set up as the README says.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fjord_queue::nats_server::NatsServer;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const USER: &str = "fjord";
const PASSWORD: &str = "n4ts-pa55word";
/// fjord's WARN line when NATS accepts anonymous clients.
const ANONYMOUS_WARNING: &str = "NATS accepts clients without credentials";

/// A loopback HTTP listener that records the body of every request it gets.
struct Listener {
    url: String,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    async fn start() -> Listener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            sink.lock().unwrap().push(body.to_vec());
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Listener { url, got, task }
    }

    fn bodies(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

async fn call_record(s: &Server, id: &str) -> (StatusCode, Value) {
    let r = s
        .sys(Method::GET, &format!("/system/async-calls/{id}"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, check: F) {
    wait_until(limit, what, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_call_from_a_leaked_nats_credential_never_runs() {
    let nats = NatsServer::start_with_auth(USER, PASSWORD);
    // The callback listener is on loopback, which fjord refuses unless allowed.
    let s = Server::start_opts(ServeOpts::args(&[
        "--queue",
        &nats.url_with(&format!("{USER}:{PASSWORD}")),
        "--callback-allow",
        "127.0.0.1",
    ]))
    .await;
    // Marks each run in the output it sends to the callback.
    let mut f = fork_fn("private", "sh -c 'printf \"ran:\"; cat'");
    f["annotations"] = json!({"com.fjord.auth": "token"});
    s.deploy_ready(&f).await;
    let hook = Listener::start().await;

    // The attacker: a raw client with fjord's NATS credentials, no queue key. The call is
    // written the way fjord writes one, dated a minute back so it would be adopted at once.
    let raw = async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
        .connect(nats.url())
        .await
        .expect("the leaked credential connects");
    let js = async_nats::jetstream::new(raw);
    let created = fjord_queue::now_ms() - 60_000;
    let line = json!({
        "id": "forged-1",
        "function": "private.openfaas-fn",
        "createdAtMs": created,
        "method": "POST",
        "path": "/",
        "headers": [["content-type", "text/plain"]],
        "callbackUrl": hook.url,
    });
    js.publish(
        "fjord.calls.private_openfaas-fn",
        format!("{line}\nforged").into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // fjord finds the message (its periodic sweep), refuses it, and says why.
    let mut record = Value::Null;
    eventually(
        Duration::from_secs(30),
        "the forged call to be dead-lettered",
        async || {
            let ran = hook.bodies();
            assert!(
                ran.is_empty(),
                "the forged call ran and called back: {ran:?}"
            );
            let (status, v) = call_record(&s, "forged-1").await;
            record = v;
            status == StatusCode::OK && record["state"] == "dead"
        },
    )
    .await;
    let why = record["lastError"].as_str().unwrap_or_default();
    assert!(why.contains("integrity check failed"), "{record}");
    assert!(
        why.contains("--queue-key"),
        "the reason names the fix: {record}"
    );
    assert_eq!(record["attempts"], 0, "{record}");
    assert!(
        s.log_tail().contains("refusing a queued call"),
        "{}",
        s.log_tail()
    );

    // A genuine call queued after it runs and calls back: the pipeline works, so the
    // forged call's silence is the integrity check, not a broken setup.
    let r = s
        .sys(Method::POST, "/async-function/private")
        .header("X-Callback-Url", &hook.url)
        .body("genuine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually(
        Duration::from_secs(30),
        "the genuine callback",
        async || !hook.bodies().is_empty(),
    )
    .await;
    assert_eq!(hook.bodies(), ["ran:genuine"], "only the genuine call ran");
    let (_, record) = call_record(&s, "forged-1").await;
    assert_eq!(record["state"], "dead", "{record}");
    assert!(
        record["callback"].is_null(),
        "no callback attempt: {record}"
    );

    // The password fjord was given never shows in its log.
    assert!(!s.log_tail().contains(PASSWORD), "{}", s.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_nats_is_warned_about_and_refused_when_set_up_with_authorization() {
    // nats-server's default: anyone may connect. fjord says so, loudly, once.
    let open = NatsServer::start();
    let s = Server::start_opts(ServeOpts::args(&["--queue", &open.url()])).await;
    let log = s.log_tail();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(ANONYMOUS_WARNING))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("authorization"),
        "{}",
        warnings[0]
    );
    drop(s);

    // Set up as the README says: an authorization block. Anonymous clients are refused...
    let locked = NatsServer::start_with_auth(USER, PASSWORD);
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(locked.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client connected");
    // ...fjord with the credentials starts, without the warning and without showing them.
    let s = Server::start_opts(ServeOpts::args(&[
        "--queue",
        &locked.url_with(&format!("{USER}:{PASSWORD}")),
    ]))
    .await;
    let log = s.log_tail();
    assert!(log.contains("async calls queue in NATS JetStream"), "{log}");
    assert!(!log.contains(ANONYMOUS_WARNING), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    drop(s);

    // Without them fjord does not start, and says what is missing.
    let dir = TestDir::new();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tune-kernel=false"])
        .arg("--data-dir")
        .arg(dir.data_dir())
        .args(["--queue", &locked.url()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("requires authentication"), "{stderr}");
}
