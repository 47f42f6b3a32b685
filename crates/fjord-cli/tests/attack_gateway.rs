//! Attacks on the gateway from issue 11 (items 2 and 10), through the real binary: the async
//! callback as an SSRF into internal services, failed-login lockouts, `/metrics` naming
//! token-protected functions, cancelling another caller's protected call, and a forged
//! `X-Forwarded-For`.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How a [`Listener`] answers.
#[derive(Clone)]
enum Reply {
    Ok,
    /// 302 to this URL.
    Redirect(String),
    /// 200 with a body that never ends.
    Endless,
}

/// A loopback HTTP service: plays an internal service, or a callback receiver. Counts every
/// TCP connection it accepts (not only whole requests) and keeps the bodies it got.
struct Listener {
    port: u16,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Bytes of endless bodies written before the peer went away.
    streamed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    async fn start(reply: Reply) -> Listener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let streamed = Arc::new(AtomicUsize::new(0));
        let (c, b, st) = (connections.clone(), bodies.clone(), streamed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (b, st, reply) = (b.clone(), st.clone(), reply.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (b, st, reply) = (b.clone(), st.clone(), reply.clone());
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|x| x.to_bytes().to_vec())
                                .unwrap_or_default();
                            b.lock().unwrap().push(body);
                            let resp = match reply {
                                Reply::Ok => hyper::Response::new(
                                    Full::new(Bytes::from_static(b"thanks")).boxed(),
                                ),
                                Reply::Redirect(to) => hyper::Response::builder()
                                    .status(302)
                                    .header("location", to)
                                    .body(Full::new(Bytes::new()).boxed())
                                    .unwrap(),
                                Reply::Endless => {
                                    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                                    let stream = futures_util::stream::unfold((), move |()| {
                                        let (chunk, st) = (chunk.clone(), st.clone());
                                        async move {
                                            st.fetch_add(chunk.len(), Ordering::SeqCst);
                                            Some((Ok::<_, Infallible>(Frame::data(chunk)), ()))
                                        }
                                    });
                                    hyper::Response::new(StreamBody::new(stream).boxed())
                                }
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Listener {
            port,
            connections,
            bodies,
            streamed,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    async fn wait_bodies(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        wait_until(timeout, &format!("{n} requests"), || async {
            let b = self.bodies();
            if b.len() >= n {
                Ok(b)
            } else {
                Err(format!("{} requests", b.len()))
            }
        })
        .await
    }
}

async fn enqueue(
    s: &Server,
    function: &str,
    body: &str,
    callback: &str,
) -> (StatusCode, String, String) {
    let (st, headers, text) = send_reply(
        s.client
            .post(s.url(&format!("/async-function/{function}")))
            .header("X-Callback-Url", callback)
            .body(body.to_string()),
    )
    .await;
    let id = header(&headers, "x-call-id")
        .unwrap_or_default()
        .to_string();

    (st, id, text)
}

/// Waits until the call's callback outcome is recorded (it is, after its final state).
async fn callback_outcome(s: &Server, id: &str, timeout: Duration) -> (Value, String) {
    wait_until(
        timeout,
        &format!("the callback outcome of {id}"),
        || async {
            let (st, body) = s
                .sys_text(Method::GET, &format!("/system/async-calls/{id}"))
                .await;
            assert_eq!(st, StatusCode::OK, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            match v["callback"].as_str() {
                Some(cb) => Ok((v.clone(), cb.to_string())),
                None => Err(v),
            }
        },
    )
    .await
}

/// Creates an API token; returns the token.
async fn token(s: &Server, name: &str, scope: &str) -> String {
    let txt = s
        .sys_expect(
            Method::POST,
            "/system/tokens",
            &json!({"name": name, "scope": scope}),
            StatusCode::CREATED,
        )
        .await;
    let v: Value = serde_json::from_str(&txt).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// The issue's SSRF: a callback aimed at a loopback service (here a listener this test runs,
/// standing in for an internal API). By default fjord must never connect to it, whether the
/// URL names the address (400 at once) or a host name resolving to it (refused when sent,
/// recorded on the call, not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_internal_addresses_are_refused_by_default() {
    let internal = Listener::start(Reply::Ok).await;
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;
    let port = internal.port;
    let deploy = r#"{"service":"pwned","image":"x","envProcess":"sh -c id"}"#;
    for url in [
        format!("http://127.0.0.1:{port}/system/functions"),
        format!("http://[::ffff:127.0.0.1]:{port}/system/functions"),
        format!("http://[::1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
    ] {
        let (st, _, body) = enqueue(&s, "echo", deploy, &url).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body.contains("X-Callback-Url") && body.contains("--callback-allow"),
            "{url}: {body}"
        );
    }
    let own = format!("http://{}/system/functions", s.addr);
    let (st, _, body) = enqueue(&s, "echo", deploy, &own).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("X-Callback-Url") && body.contains("itself"),
        "{body}"
    );
    let (st, _, body) = enqueue(&s, "echo", deploy, "gopher://x/").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");

    // A host name is checked after it is resolved: localhost is loopback too.
    let url = format!("http://localhost:{port}/system/functions");
    let (st, id, body) = enqueue(&s, "echo", deploy, &url).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (call, outcome) = callback_outcome(&s, &id, Duration::from_secs(30)).await;
    assert!(
        outcome.starts_with("refused") && outcome.contains("--callback-allow"),
        "{call}"
    );
    assert_eq!(call["state"], "done", "the call itself ran: {call}");
    assert_eq!(
        internal.connections(),
        0,
        "fjord connected to the internal service"
    );
    // Logged once, not retried.
    let log = s.log_tail();
    let lines = log
        .lines()
        .filter(|l| l.contains(&id) && l.contains("callback not delivered"))
        .count();
    assert_eq!(lines, 1, "{log}");
}

/// With `--callback-allow 127.0.0.1` a loopback receiver gets the callback (and an async call's
/// function sees `X-Forwarded-For` completed with the peer); a 302 from it is
/// not followed (the port it points at gets nothing); a receiver answering an endless body
/// neither hangs the callback nor is read beyond a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_callbacks_are_delivered_without_redirects_or_unbounded_reads() {
    let s = Server::start_opts(ServeOpts::args(&["--callback-allow", "127.0.0.1"])).await;
    s.deploy_ready(&fork_fn("echo", "cat")).await;

    let receiver = Listener::start(Reply::Ok).await;
    let url = format!("http://127.0.0.1:{}/done", receiver.port);
    let (st, id, body) = enqueue(&s, "echo", "hello", &url).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_bodies(1, Duration::from_secs(30)).await;
    assert_eq!(got[0], b"hello");
    let (call, outcome) = callback_outcome(&s, &id, Duration::from_secs(30)).await;
    assert_eq!(outcome, "delivered (200)", "{call}");
    // An async call's function sees the queuing client's X-Forwarded-For with its peer
    // appended, as a sync call does.
    s.deploy_ready(&fork_fn("env", "env")).await;
    let r = s
        .client
        .post(s.url("/async-function/env"))
        .header("X-Forwarded-For", "203.0.113.7")
        .header(
            "X-Callback-Url",
            format!("http://127.0.0.1:{}/", receiver.port),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let got = receiver.wait_bodies(2, Duration::from_secs(30)).await;
    let out = String::from_utf8_lossy(&got[1]);
    assert!(
        out.lines()
            .any(|l| l == "Http_X_Forwarded_For=203.0.113.7, 127.0.0.1"),
        "async: {out}"
    );
    // Still refused: a loopback address the list does not name, and the gateway itself.
    let (st, _, body) = enqueue(&s, "echo", "x", "http://127.0.0.2:9/").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let own = format!("http://{}/async-function/echo", s.addr);
    let (st, _, body) = enqueue(&s, "echo", "x", &own).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("itself"), "{body}");

    let target = Listener::start(Reply::Ok).await;
    let redirector = Listener::start(Reply::Redirect(format!(
        "http://127.0.0.1:{}/stolen",
        target.port
    )))
    .await;
    let url = format!("http://127.0.0.1:{}/done", redirector.port);
    let (st, id, body) = enqueue(&s, "echo", "secret", &url).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (call, outcome) = callback_outcome(&s, &id, Duration::from_secs(30)).await;
    assert!(outcome.contains("302"), "{call}");
    assert!(!redirector.bodies().is_empty());
    assert_eq!(target.connections(), 0, "the redirect was followed");

    let endless = Listener::start(Reply::Endless).await;
    let url = format!("http://127.0.0.1:{}/done", endless.port);
    let (st, id, body) = enqueue(&s, "echo", "big", &url).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (call, outcome) = callback_outcome(&s, &id, Duration::from_secs(30)).await;
    assert_eq!(outcome, "delivered (200)", "{call}");
    // fjord stopped reading: what the receiver could write is bounded by the socket buffers,
    // not by the body (which never ends).
    let before = endless.streamed.load(Ordering::SeqCst);
    assert!(before < 16 << 20, "{before} bytes written to fjord");
    let (st, _) = s.call("echo").await;
    assert_eq!(st, StatusCode::OK, "the gateway stays responsive");
}

/// Requests without credentials (a CLI run before `fjord login`) are answered 401 but never
/// count towards a lockout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_credentials_never_lock_a_client_out() {
    let s = Server::start_opts(ServeOpts::args(&["--auth-fail-limit", "3"])).await;
    let pw = s.password.clone().unwrap();
    let c = client_from("127.0.0.1");
    for i in 0..20 {
        let r = c.get(s.url("/system/functions")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "request {i}");
    }
    let r = c
        .get(s.url("/system/functions"))
        .basic_auth("admin", Some(&pw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A user name failing from many addresses (each below the per-address limit) is locked:
/// 429 with Retry-After even from a fresh address with the right password, while other
/// accounts (an API token) still get in from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_failing_from_many_addresses_is_locked() {
    let s = Server::start_opts(ServeOpts::args(&["--auth-fail-limit", "2"])).await;
    let pw = s.password.clone().unwrap();
    let read = token(&s, "reader", "read").await;
    // Per-user limit: 5 × 2 = 10 failures; one from each of 10 addresses.
    for i in 0..10 {
        let c = client_from(&format!("127.0.1.{}", 10 + i));
        let r = c
            .get(s.url("/system/functions"))
            .basic_auth("admin", Some(format!("guess-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let fresh = client_from("127.0.2.1");
    let r = fresh
        .get(s.url("/system/functions"))
        .basic_auth("admin", Some(&pw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(r.headers(), "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let r = fresh
        .get(s.url("/system/functions"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "only the attacked account is locked"
    );
}

/// `/metrics` names every function, token-protected ones too: with `--metrics-auth` it needs
/// the admin password or a read token. Without the flag it stays open (OpenFaaS-compatible).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_auth_hides_function_names() {
    let mut f = fork_fn("secret-fn", "cat");
    f["annotations"] = json!({"com.fjord.auth": "token"});
    let s = Server::start_opts(ServeOpts::args(&["--metrics-auth"])).await;
    s.deploy_ready(&f).await;
    let (st, body) = text(s.open(Method::GET, "/metrics").send().await.unwrap()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body.contains("secret-fn"), "{body}");
    let invoke = token(&s, "caller", "invoke").await;
    let r = s
        .open(Method::GET, "/metrics")
        .bearer_auth(&invoke)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let read = token(&s, "scraper", "read").await;
    let (st, body) = text(
        s.open(Method::GET, "/metrics")
            .bearer_auth(&read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("secret-fn"), "{body}");
    let (st, _) = text(s.sys(Method::GET, "/metrics").send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK);

    let open = Server::start().await;
    let (st, _) = text(open.open(Method::GET, "/metrics").send().await.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "open by default");
}

/// Cancelling a queued call of a token-protected function needs a token that may call it;
/// a call of an open function can still be cancelled by whoever knows its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_protected_call_needs_its_token() {
    let s = Server::start().await;
    // Paused (max_inflight 0): calls stay queued, so they can be cancelled.
    let mut protected = fork_fn("vault", "cat");
    protected["annotations"] = json!({
        "com.fjord.auth": "token",
        "com.openfaas.queue.max_inflight": "0",
    });
    let mut open = fork_fn("public", "cat");
    open["annotations"] = json!({"com.openfaas.queue.max_inflight": "0"});
    s.deploy_ready(&protected).await;
    s.deploy_ready(&open).await;
    let invoke = token(&s, "caller", "invoke").await;
    let read = token(&s, "reader", "read").await;

    let r = s
        .client
        .post(s.url("/async-function/vault"))
        .bearer_auth(&invoke)
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let path = format!("/async-function/{id}");

    let (st, body) = text(s.open(Method::DELETE, &path).send().await.unwrap()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    let (st, body) = text(
        s.open(Method::DELETE, &path)
            .bearer_auth(&read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let r = s
        .sys(Method::GET, &format!("/system/async-calls/{id}"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "queued", "still queued: {v}");
    let (st, body) = text(
        s.open(Method::DELETE, &path)
            .bearer_auth(&invoke)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");

    let r = s
        .client
        .post(s.url("/async-function/public"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let (st, body) = text(
        s.open(Method::DELETE, &format!("/async-function/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        st,
        StatusCode::ACCEPTED,
        "open functions keep the id as capability: {body}"
    );
}

/// A client's `X-Forwarded-For` reaches the function with the real peer appended, in both
/// modes (async calls: in the callback test), so a forged value can never pass for the
/// client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_gets_the_peer_appended() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("env", "env")).await;
    s.deploy_ready(&http_fn("h", "1")).await;

    let (st, out) = send_text(
        s.invoke(Method::POST, "env")
            .header("X-Forwarded-For", "203.0.113.7"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert!(
        out.lines()
            .any(|l| l == "Http_X_Forwarded_For=203.0.113.7, 127.0.0.1"),
        "fork mode: {out}"
    );
    let (_, out) = send_text(s.invoke(Method::POST, "env")).await;
    assert!(
        out.lines().any(|l| l == "Http_X_Forwarded_For=127.0.0.1"),
        "fork mode without the header: {out}"
    );

    let (st, body) = send_text(
        s.invoke(Method::POST, "h")
            .header("X-Forwarded-For", "203.0.113.7"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let e = echo(&body);
    assert_eq!(
        e["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1",
        "http mode: {e}"
    );
}
