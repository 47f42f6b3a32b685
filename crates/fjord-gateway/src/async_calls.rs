//! Asynchronous invocations: `POST /async-function/...` stores the request durably and
//! answers 202 with its call id; a dispatcher runs queued calls through the same invoke path
//! as sync calls (over loopback HTTP to this gateway), retries them on the codes that deserve
//! it, posts results to the callback URL, and dead-letters what never succeeds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fjord_core::FunctionKey;
use fjord_queue::{BoxFuture, CallRecord, CallRequest, CallState, CancelOutcome, NewCall, Queue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use fjord_core::policy::{DEFAULT_MAX_INFLIGHT, RetryPolicy, max_inflight};

use crate::api::ApiPath;
use crate::callback::{CallbackPolicy, ResolveError};
use crate::error::ApiError;
use crate::invoke::{Caller, Invoker, X_CALL_ID, split_async_path, strip_hop_by_hop};
use crate::state::AppState;
use fjord_control::{ControlPlane, Route};

/// A worker that dies leaves its calls to be re-run after this long.
const LEASE: Duration = Duration::from_secs(600);
/// Callback deliveries tried per call.
const CALLBACK_ATTEMPTS: u32 = 3;
/// Function responses larger than this are not posted to callbacks whole.
const MAX_CALLBACK_BODY: usize = 32 << 20;
/// Most of a callback receiver's answer that is read (the rest is dropped with the
/// connection): a hostile receiver cannot make fjord buffer or wait on a large body.
const MAX_CALLBACK_RESPONSE: usize = 64 << 10;

static X_CALLBACK_URL: HeaderName = HeaderName::from_static("x-callback-url");

/// Checks `X-Callback-Url` when a call is queued: an http(s) URL, and a literal IP address
/// only if callbacks may go there. Host names are checked when the callback is sent, after
/// they are resolved.
fn valid_callback(url: &str, policy: &CallbackPolicy) -> Result<(), ApiError> {
    let shown = || url.chars().take(200).collect::<String>();
    let uri = (url.starts_with("http://") || url.starts_with("https://"))
        .then(|| url.parse::<axum::http::Uri>().ok())
        .flatten()
        .filter(|u| u.authority().is_some());
    let Some(uri) = uri else {
        return Err(ApiError::BadRequest(format!(
            "X-Callback-Url {:?} is not an http(s) URL, e.g. http://app.internal:8000/done",
            shown()
        )));
    };
    let host = uri.host().unwrap_or_default();
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        let port = uri.port_u16().unwrap_or(default_port(&uri));
        if let Err(r) = policy.check(host, SocketAddr::new(ip, port)) {
            return Err(ApiError::BadRequest(format!(
                "X-Callback-Url {:?}: {r}",
                shown()
            )));
        }
    }
    Ok(())
}

fn default_port(uri: &axum::http::Uri) -> u16 {
    if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    }
}

/// `POST /async-function/{name}[.{ns}][/{path}]`.
#[utoipa::path(
    post, path = "/async-function/{function}", tag = "invoke",
    params(
        ("function" = String, Path, description = "`name` or `name.namespace`"),
        ("X-Callback-Url" = Option<String>, Header, description = "Where to POST the result (http or https; loopback, private and link-local addresses only if allowed by --callback-allow)"),
        ("X-Call-Id" = Option<String>, Header, description = "The call's id (1 to 128 characters); default a new UUID"),
    ),
    request_body(content = String, content_type = "*/*", description = "Any body, at most --max-async-body (8 MiB)"),
    responses(
        (status = 202, description = "Stored durably; it runs later", headers(("X-Call-Id" = String, description = "The call's id"))),
        (status = 400, description = "X-Callback-Url is not an http(s) URL or names an address callbacks may not go to (see --callback-allow), or the body could not be read", body = String, content_type = "text/plain"),
        (status = 401, description = "The function is annotated com.fjord.auth: token and no valid token was sent", body = String, content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The token's scope may not call functions", body = String, content_type = "text/plain"),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
        (status = 409, description = "A call with this X-Call-Id already exists", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than --max-async-body", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The queue failed to store the call", body = String, content_type = "text/plain"),
        (status = 503, description = "The queue is shutting down", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(())
)]
pub async fn enqueue(
    State(app): State<AppState>,
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<SocketAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    // Queued calls never carry the dashboard's session either.
    crate::ui::strip_session_cookie(&mut parts.headers);
    let (segment, sub_path) = split_async_path(parts.uri.path())
        .ok_or_else(|| ApiError::NotFound("no function named in the path".into()))?;
    let (name, namespace) = FunctionKey::split_route(segment);
    let route = app.control.lookup(namespace, name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "error finding function {name}.{namespace}: it is not deployed"
        ))
    })?;
    if route.requires_token {
        app.auth.check_invoke(remote.ip(), &parts.headers).await?;
        // Checked now; never kept in the queue (nor shown to the function).
        parts.headers.remove(header::AUTHORIZATION);
    }
    let callback_url = match parts.headers.get(&X_CALLBACK_URL) {
        None => None,
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("X-Callback-Url is not valid text".into()))?;
            valid_callback(s, &app.config.callback)?;
            Some(s.to_string())
        }
    };
    let limit = app.config.max_async_body;
    let limited = http_body_util::Limited::new(body, limit).collect();
    let collected = match app.config.read_timeout {
        Some(t) => tokio::time::timeout(t, limited).await.map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within --read-timeout ({})",
                humantime::format_duration(t)
            ))
        })?,
        None => limited.await,
    };
    let body = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError::PayloadTooLarge(format!(
                    "async request body is larger than the {} KiB limit (--max-async-body)",
                    limit >> 10
                )));
            }
            return Err(ApiError::BadRequest(format!(
                "cannot read request body: {e}"
            )));
        }
    };
    let id = parts
        .headers
        .get(&X_CALL_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| {
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
        });
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    // The function sees who queued the call, as for a sync call.
    crate::invoke::forwarded_for(&mut headers, Caller::Client(remote));
    headers.remove(&X_CALLBACK_URL);
    headers.remove(header::CONTENT_LENGTH);
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let call = NewCall {
        id: id.clone(),
        function: route.handle.qualified.to_string(),
        request: CallRequest {
            method: parts.method.to_string(),
            path: sub_path.to_string(),
            query: parts.uri.query().map(str::to_string),
            headers,
            body: body.to_vec(),
            callback_url,
        },
    };
    app.queue.enqueue(call).await?;
    route
        .metrics
        .last_request_ms
        .store(fjord_control::metrics::now_ms(), Ordering::Relaxed);
    // Start a function at zero now, not when a worker gets to the call.
    app.control.demand(&route, fjord_control::Demand::Cold);
    if route.queued.worker_running.load(Ordering::Acquire) {
        route.queued.wake.notify_one();
    } else {
        app.dispatch.notify_one();
    }
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(X_CALL_ID.clone(), v);
    }
    Ok(r)
}

/// `DELETE /async-function/{call-id}`: cancels a call that has not started. The call id is
/// the capability for open functions; a call of a token-protected function (or of one this
/// server does not know) also needs a token that may call it.
#[utoipa::path(
    delete, path = "/async-function/{function}", tag = "invoke",
    params(("function" = String, Path, description = "Here: the id of the call to cancel (its X-Call-Id)")),
    responses(
        (status = 202, description = "Cancelled"),
        (status = 400, description = "The id is not valid UTF-8", body = String, content_type = "text/plain"),
        (status = 401, description = "The call's function is annotated com.fjord.auth: token and no valid token was sent", body = String, content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The token's scope may not call functions", body = String, content_type = "text/plain"),
        (status = 404, description = "No such call", body = String, content_type = "text/plain"),
        (status = 409, description = "The call is running or finished", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The queue failed", body = String, content_type = "text/plain"),
        (status = 503, description = "The queue is shutting down", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(())
)]
pub async fn cancel(
    State(app): State<AppState>,
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let Some(record) = app.queue.get(&id).await? else {
        return Err(ApiError::NotFound(format!("no async call {id}")));
    };
    let (name, namespace) = FunctionKey::split_route(&record.function);
    let protected = app
        .control
        .lookup(namespace, name)
        .is_none_or(|r| r.requires_token);
    if protected {
        app.auth.check_invoke(remote.ip(), &headers).await?;
    }
    match app.queue.cancel(&id).await? {
        CancelOutcome::Cancelled => Ok(StatusCode::ACCEPTED),
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("no async call {id}"))),
        CancelOutcome::TooLate(s) => Err(ApiError::Conflict(format!(
            "async call {id} is {}: only queued or retrying calls can be cancelled",
            s.as_str()
        ))),
    }
}

/// `GET /system/async-calls/{id}`.
#[utoipa::path(
    get, path = "/system/async-calls/{id}", tag = "async calls",
    params(("id" = String, Path, description = "The call's id (X-Call-Id)")),
    responses(
        (status = 200, description = "The call", body = CallRecord),
        (status = 400, description = "The id is not valid UTF-8", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 404, description = "No such call", body = String, content_type = "text/plain"),
        (status = 500, description = "The queue failed", body = String, content_type = "text/plain"),
        (status = 503, description = "The queue is shutting down", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(("basicAuth" = []))
)]
pub async fn get_call(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CallRecord>, ApiError> {
    app.queue
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no async call {id}")))
}

/// `GET /system/async-calls?state=dead&limit=100`.
#[utoipa::path(
    get, path = "/system/async-calls", tag = "async calls",
    params(
        ("state" = Option<CallState>, Query, description = "Only calls in this state"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "The calls", body = [CallRecord]),
        (status = 400, description = "`state` or `limit` is invalid", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 500, description = "The queue failed", body = String, content_type = "text/plain"),
        (status = 503, description = "The queue is shutting down", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(("basicAuth" = []))
)]
pub async fn list_calls(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<CallRecord>>, ApiError> {
    let state = match q.get("state").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(CallState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "state: {s:?} is not one of queued, running, retrying, done, dead, cancelled"
            ))
        })?),
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit: {l:?} must be from 1 to 10000")))?,
    };
    Ok(Json(app.queue.list(state, limit).await?))
}

/// `POST /system/async-calls/{id}/replay`: runs a dead-lettered call again.
#[utoipa::path(
    post, path = "/system/async-calls/{id}/replay", tag = "async calls",
    params(("id" = String, Path, description = "The call's id (X-Call-Id)")),
    responses(
        (status = 202, description = "Queued again"),
        (status = 400, description = "The id is not valid UTF-8", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 404, description = "No such call", body = String, content_type = "text/plain"),
        (status = 409, description = "The call is not dead-lettered", body = String, content_type = "text/plain"),
        (status = 500, description = "The queue failed", body = String, content_type = "text/plain"),
        (status = 503, description = "The queue is shutting down", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(("basicAuth" = []))
)]
pub async fn replay(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let q = &app.queue;
    match q.get(&id).await? {
        None => Err(ApiError::NotFound(format!("no async call {id}"))),
        Some(c) if c.state != CallState::Dead => Err(ApiError::Conflict(format!(
            "async call {id} is {}: only dead-lettered calls can be replayed",
            c.state.as_str()
        ))),
        Some(_) => {
            q.replay(&id).await?;
            app.dispatch.notify_one();
            Ok(StatusCode::ACCEPTED)
        }
    }
}

/// Runs queued calls until `shutdown`; then puts running calls back in the queue.
///
/// One long-lived worker per function with due calls keeps a small buffer of claimed calls
/// and runs up to `max_inflight` of them at once through the gateway's own invoke path,
/// in-process (no loopback HTTP). A call's slot is freed as soon as the function answered;
/// recording the outcome (a durable write) and the callback happen after, so the queue's
/// commit latency never throttles the function. A scan of the queue at most every
/// [`SCAN_INTERVAL`] starts workers for functions that have none and wakes idle ones whose
/// retries came due.
pub struct Dispatcher {
    pub queue: Arc<dyn Queue>,
    /// State for in-process invocations (its own upstream client pool).
    pub app: AppState,
    /// Send the original method (false: always POST, as OpenFaaS's queue worker does).
    pub keep_method: bool,
    /// This server alone runs the queue's calls (embedded). A shared queue (NATS) may hold
    /// calls of functions deployed only on other servers: those are left to them instead of
    /// being dead-lettered as "not deployed".
    pub exclusive: bool,
}

/// How often the dispatcher scans the queue for due functions.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// A worker with nothing to do for this long stops (the scan restarts it when needed).
const WORKER_IDLE: Duration = Duration::from_secs(30);
/// Claimed calls a worker keeps ready beyond its running ones, at most.
const MAX_PREFETCH: usize = 512;
/// How long a stopping worker lets finished calls record their outcome.
const FINISH_GRACE: Duration = Duration::from_secs(2);

impl crate::trigger::Trigger for Dispatcher {
    fn name(&self) -> &'static str {
        "async-queue"
    }

    fn run(
        self: Box<Self>,
        invoker: Invoker,
        shutdown: CancellationToken,
    ) -> crate::trigger::BoxFuture<'static, ()> {
        Box::pin(self.dispatch(invoker, shutdown))
    }
}

impl Dispatcher {
    async fn dispatch(self, invoker: Invoker, shutdown: CancellationToken) {
        if let Ok(n) = self.queue.requeue_running().await
            && n > 0
        {
            tracing::info!(
                calls = n,
                "re-queued async calls interrupted by the last stop"
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let callbacks: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let this = Arc::new(Worker {
            queue: self.queue,
            app: self.app,
            invoker,
            keep_method: self.keep_method,
            exclusive: self.exclusive,
            callbacks,
        });
        let exclusive = self.exclusive;
        let wake = this.app.dispatch.clone();
        let mut workers: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        let mut stopped = tokio::task::JoinSet::new();
        let mut last_scan: Option<Instant> = None;
        loop {
            let next = last_scan.map_or(Duration::ZERO, |t| {
                SCAN_INTERVAL.saturating_sub(t.elapsed())
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // A call for a function without a worker: scan now (or as soon as allowed).
                _ = wake.notified() => tokio::time::sleep(next).await,
                _ = tokio::time::sleep(next.max(SCAN_INTERVAL / 2)) => {}
                Some(done) = stopped.join_next(), if !stopped.is_empty() => {
                    if let Ok(function) = done {
                        workers.remove(&function);
                    }
                    continue;
                }
            }
            let due = match this.queue.due_functions().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "async queue unavailable");
                    last_scan = Some(Instant::now());
                    continue;
                }
            };
            last_scan = Some(Instant::now());
            while let Some(done) = stopped.try_join_next() {
                if let Ok(function) = done {
                    workers.remove(&function);
                }
            }
            for function in due {
                let (name, ns) = FunctionKey::split_route(&function);
                let route = this.control().lookup(ns, name);
                if route.is_none() && !exclusive {
                    continue;
                }
                if let Some(route) = &route
                    && workers.contains_key(&function)
                {
                    route.queued.wake.notify_one();
                    continue;
                }
                let (w, f, s) = (this.clone(), function.clone(), shutdown.clone());
                let handle = stopped.spawn(async move {
                    w.work(&f, route, s).await;
                    f
                });
                workers.insert(function, handle);
            }
        }
        // Graceful shutdown: workers stop taking work; calls still running go back to the
        // queue (the gateway they run through is closing too) and run again after the restart.
        while stopped.join_next().await.is_some() {}
        if let Ok(n) = this.queue.requeue_running().await
            && n > 0
        {
            tracing::info!(calls = n, "re-queued async calls still running at shutdown");
        }
    }
}

/// A moving average that follows changes within a few dozen samples.
fn ewma(avg: f64, sample: f64) -> f64 {
    if avg.is_finite() {
        avg + (sample - avg) / 16.0
    } else {
        sample
    }
}

/// What every function's worker shares.
struct Worker {
    queue: Arc<dyn Queue>,
    app: AppState,
    invoker: Invoker,
    keep_method: bool,
    exclusive: bool,
    callbacks: Client<HttpConnector, Full<Bytes>>,
}

/// A call's attempt: the function's status, headers and body, or why there was none.
type Outcome = Result<(StatusCode, HeaderMap, Bytes), String>;

impl Worker {
    fn control(&self) -> &Arc<ControlPlane> {
        &self.app.control
    }

    /// Runs `function`'s calls until it has had nothing to do for [`WORKER_IDLE`], is
    /// deleted, or `shutdown`.
    async fn work(
        self: &Arc<Self>,
        function: &str,
        route: Option<Arc<Route>>,
        shutdown: CancellationToken,
    ) {
        let Some(route) = route else {
            self.dead_letter_all(function).await;
            return;
        };
        let metrics = route.metrics.clone();
        let queued = route.queued.clone();
        queued.worker_running.store(true, Ordering::Release);
        let mut buffer: std::collections::VecDeque<fjord_queue::Claimed> = Default::default();
        let mut running = tokio::task::JoinSet::new();
        let mut finishing = tokio::task::JoinSet::new();
        let mut claiming: Option<BoxFuture<'static, Result<Vec<fjord_queue::Claimed>, String>>> =
            None;
        // Calls to keep claimed ahead of the running ones: as many as `cap` slots finish
        // during one claim (Little's law on moving averages), so a fast function never
        // waits for the queue's commit, while a slow one claims only what it can start
        // (a claimed call is `running` for the API and can no longer be cancelled).
        let mut claim_secs = 0.002f64;
        let mut call_secs = f64::INFINITY;
        let mut claim_started = Instant::now();
        // The last claim found fewer calls than it asked for: wait for a wake-up.
        let mut empty = false;
        let mut idle_since = Instant::now();
        // Finished calls with nothing more to do than be marked done, recorded in batches:
        // one write (and one wake-up) for many calls. At most one batch is being written.
        let mut done: Vec<(String, u16)> = Vec::new();
        let mut flushing = tokio::task::JoinSet::new();
        // The function's settings, parsed again only when it is updated.
        let mut settings: Option<(Arc<Route>, usize, Arc<RetryPolicy>)> = None;
        // Made once, not per turn of the loop: each would register and unregister a waiter
        // (a lock) every time a call finishes.
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        let woken = queued.wake.notified();
        tokio::pin!(woken);
        loop {
            let (name, ns) = FunctionKey::split_route(function);
            let Some(route) = self.control().lookup(ns, name) else {
                // Deleted: running calls end with its 404. The rest can never run here: with
                // the queue to itself, this server dead-letters them; a shared queue gets
                // them back for servers that still have the function.
                let why = format!("function {function} is not deployed");
                for c in buffer.drain(..) {
                    let _ = if self.exclusive {
                        self.queue.dead_letter(&c.id, None, &why).await
                    } else {
                        self.queue
                            .retry_later(&c.id, fjord_queue::now_ms(), None, &why)
                            .await
                    };
                }
                if self.exclusive {
                    self.dead_letter_all(function).await;
                }
                break;
            };
            let (cap, policy) = match &settings {
                Some((r, cap, policy)) if Arc::ptr_eq(r, &route) => (*cap, policy.clone()),
                _ => {
                    let annotations = route.handle.spec().deployment.annotations.clone();
                    let cap = max_inflight(annotations.as_ref()).unwrap_or(DEFAULT_MAX_INFLIGHT);
                    let policy = Arc::new(
                        RetryPolicy::from_annotations(annotations.as_ref())
                            .unwrap_or_else(|_| RetryPolicy::default()),
                    );
                    settings = Some((route.clone(), cap, policy.clone()));
                    (cap, policy)
                }
            };
            if !done.is_empty() && flushing.is_empty() {
                let (q, batch) = (self.queue.clone(), std::mem::take(&mut done));
                flushing.spawn(async move { q.complete_many(batch).await });
            }
            // Twice what finishes during one claim, topped up when half is left: claims
            // come in batches (each is a commit) yet the buffer does not run dry.
            let prefetch = (2.0 * (claim_secs / call_secs) * cap as f64)
                .ceil()
                .min(MAX_PREFETCH as f64) as usize;
            while running.len() < cap
                && let Some(call) = buffer.pop_front()
            {
                let (w, r) = (self.clone(), route.clone());
                running.spawn(async move { w.attempt_call(&r, call).await });
            }
            let have = buffer.len() + running.len();
            if claiming.is_none() && !empty && have < cap + prefetch.div_ceil(2) {
                let want = cap + prefetch - have;
                claim_started = Instant::now();
                let (q, f) = (self.queue.clone(), function.to_string());
                claiming = Some(Box::pin(async move {
                    q.claim(&f, want, LEASE).await.map_err(|e| e.to_string())
                }));
            }
            if running.is_empty() && buffer.is_empty() && claiming.is_none() && flushing.is_empty()
            {
                if idle_since.elapsed() >= WORKER_IDLE {
                    break;
                }
            } else {
                idle_since = Instant::now();
            }
            tokio::select! {
                _ = &mut stopping => {
                    running.abort_all();
                    break;
                }
                Some(done_call) = running.join_next(), if !running.is_empty() => {
                    if let Ok((call, outcome, elapsed)) = done_call {
                        call_secs = ewma(call_secs, elapsed.as_secs_f64());
                        match &outcome {
                            Ok((status, _, _))
                                if call.request.callback_url.is_none()
                                    && !policy.codes.contains(&status.as_u16()) =>
                            {
                                metrics.async_processed.fetch_add(1, Ordering::Relaxed);
                                done.push((call.id, status.as_u16()));
                            }
                            _ => {
                                let (w, r, p) = (self.clone(), route.clone(), policy.clone());
                                finishing.spawn(async move {
                                    w.finish(&r, &p, call, outcome, elapsed).await
                                });
                            }
                        }
                    }
                }
                Some(flushed) = flushing.join_next(), if !flushing.is_empty() => {
                    if let Ok(Err(e)) = flushed {
                        tracing::warn!(function, error = %e, "recording finished async calls failed");
                    }
                }
                Some(_) = finishing.join_next(), if !finishing.is_empty() => {}
                claimed = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    claiming = None;
                    claim_secs = ewma(claim_secs, claim_started.elapsed().as_secs_f64());
                    match claimed {
                        Ok(calls) => {
                            empty = calls.is_empty();
                            buffer.extend(calls);
                        }
                        Err(e) => {
                            tracing::warn!(function, error = %e, "claiming async calls failed");
                            empty = true;
                        }
                    }
                }
                _ = &mut woken => {
                    woken.set(queued.wake.notified());
                    empty = false;
                }
                _ = tokio::time::sleep(WORKER_IDLE), if empty => {}
            }
        }
        queued.worker_running.store(false, Ordering::Release);
        // A worker stops idle (nothing claimed), deleted (claimed calls dead-lettered) or at
        // shutdown, when the dispatcher re-queues every claimed call. Let finished calls
        // record their outcome first.
        let _ = tokio::time::timeout(FINISH_GRACE, async {
            if !done.is_empty() {
                flushing.spawn({
                    let (q, batch) = (self.queue.clone(), std::mem::take(&mut done));
                    async move { q.complete_many(batch).await }
                });
            }
            while flushing.join_next().await.is_some() {}
            while finishing.join_next().await.is_some() {}
        })
        .await;
        flushing.abort_all();
        finishing.abort_all();
    }

    /// Dead-letters the calls of a function that is no longer deployed.
    async fn dead_letter_all(&self, function: &str) {
        loop {
            let Ok(calls) = self.queue.claim(function, 1000, LEASE).await else {
                return;
            };
            if calls.is_empty() {
                return;
            }
            for c in calls {
                let _ = self
                    .queue
                    .dead_letter(&c.id, None, &format!("function {function} is not deployed"))
                    .await;
            }
        }
    }

    /// Runs one attempt of `call` and returns it with the outcome and how long it took.
    async fn attempt_call(
        self: Arc<Self>,
        route: &Arc<Route>,
        mut call: fjord_queue::Claimed,
    ) -> (fjord_queue::Claimed, Outcome, Duration) {
        let m = &route.metrics;
        m.async_inflight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = self.attempt(route, &mut call).await;
        m.async_inflight.fetch_sub(1, Ordering::Relaxed);
        (call, outcome, started.elapsed())
    }

    /// Records an attempt's outcome: done, retry later or dead letter; then the callback.
    async fn finish(
        &self,
        route: &Arc<Route>,
        policy: &RetryPolicy,
        call: fjord_queue::Claimed,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        let m = &route.metrics;
        let (status, retry_after, error) = match &outcome {
            Ok((s, h, _)) => (Some(s.as_u16()), retry_after(h), None),
            Err(e) => (None, None, Some(e.clone())),
        };
        let retryable = match status {
            Some(s) => policy.codes.contains(&s),
            None => true,
        };
        if retryable && call.attempt < policy.attempts {
            let wait = policy.wait(call.attempt, retry_after, rand::random::<f64>());
            m.async_retried.fetch_add(1, Ordering::Relaxed);
            let why = error
                .clone()
                .unwrap_or_else(|| format!("status {}", status.unwrap_or(0)));
            let _ = self
                .queue
                .retry_later(
                    &call.id,
                    fjord_queue::now_ms() + wait.as_millis() as u64,
                    status,
                    &why,
                )
                .await;
            tracing::info!(call = %call.id, function = %call.function, attempt = call.attempt, wait_ms = wait.as_millis() as u64, %why, "async call will be retried");
            return;
        }
        // The callback goes out before the final state is recorded: a crash in between then
        // re-runs the call (a duplicate callback) instead of leaving a finished call whose
        // callback was never sent. At-least-once, for callbacks too.
        let callback = match &call.request.callback_url {
            Some(url) => {
                let (s, headers, body) = match outcome {
                    Ok((s, h, b)) => (s.as_u16(), h, b),
                    // Network-level failure: 503, as OpenFaaS's queue worker reports it.
                    Err(e) => (503, HeaderMap::new(), Bytes::from(e)),
                };
                let result = self
                    .callback(url, &call, s, &headers, body, elapsed, policy.attempts)
                    .await;
                if result.starts_with("failed") || result.starts_with("refused") {
                    m.async_callback_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(call = %call.id, %url, %result, "callback not delivered");
                }
                Some(result)
            }
            None => None,
        };
        if retryable {
            m.async_dead.fetch_add(1, Ordering::Relaxed);
            let why = error
                .clone()
                .unwrap_or_else(|| format!("status {}", status.unwrap_or(0)));
            let _ = self
                .queue
                .dead_letter(
                    &call.id,
                    status,
                    &format!("gave up after {} attempt(s): {why}", call.attempt),
                )
                .await;
            tracing::warn!(call = %call.id, function = %call.function, attempts = call.attempt, %why, "async call dead-lettered");
        } else {
            m.async_processed.fetch_add(1, Ordering::Relaxed);
            let _ = self.queue.complete(&call.id, status.unwrap_or(0)).await;
        }
        if let Some(result) = callback {
            let _ = self.queue.set_callback_result(&call.id, &result).await;
        }
    }

    /// One attempt through the gateway's own invoke path, in-process: the same routing,
    /// waking, limits and metrics as a sync call, without a loopback connection.
    async fn attempt(&self, route: &Arc<Route>, call: &mut fjord_queue::Claimed) -> Outcome {
        let r = &call.request;
        // The path the function sees (what followed its name in /async-function/...).
        let mut uri = if r.path.starts_with('/') {
            r.path.clone()
        } else {
            format!("/{}", r.path)
        };
        if let Some(q) = r.query.as_deref().filter(|q| !q.is_empty()) {
            uri.push('?');
            uri.push_str(q);
        }
        let method = if self.keep_method {
            r.method.as_str()
        } else {
            "POST"
        };
        let mut b = axum::http::Request::builder().method(method).uri(&uri);
        for (k, v) in &r.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b = b.header(&X_CALL_ID, call.id.as_str());
        // The body is not needed after this attempt: a retry reads it from the queue again.
        let body = std::mem::take(&mut call.request.body);
        let req = b
            .body(axum::body::Body::from(body))
            .map_err(|e| format!("invalid stored request: {e}"))?;
        let resp = self.invoker.call(route, Caller::Trigger, req).await;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_CALLBACK_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the function's response: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// Posts the result to the call's callback URL: resolved once per attempt, every address
    /// checked against `--callback-allow`, and sent to a checked address (never re-resolved
    /// by the connector); redirects are not followed; at most [`MAX_CALLBACK_RESPONSE`] of
    /// the answer is read. A refused address is final: no retry.
    #[allow(clippy::too_many_arguments)]
    async fn callback(
        &self,
        url: &str,
        call: &fjord_queue::Claimed,
        status: u16,
        headers: &HeaderMap,
        body: Bytes,
        elapsed: Duration,
        max_attempts: u32,
    ) -> String {
        let uri = match url.parse::<axum::http::Uri>() {
            Ok(u) if u.host().is_some() => u,
            _ => return "failed: the callback URL is not valid".into(),
        };
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(default_port(&uri));
        // The Host header names the URL's host (without user info), whatever address is used.
        let host_header = uri
            .authority()
            .and_then(|a| a.as_str().rsplit('@').next())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = uri.scheme_str().unwrap_or("http");
        let mut last = String::new();
        for n in 0..CALLBACK_ATTEMPTS {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(500 << n)).await;
            }
            let addrs = match self.app.config.callback.resolve(host, port).await {
                Ok(a) => a,
                Err(ResolveError::Refused(r)) => return format!("refused: {r}"),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            for addr in addrs {
                let mut b = axum::http::Request::builder()
                    .method("POST")
                    .uri(format!("{scheme}://{addr}{path}"));
                for (k, v) in headers {
                    if matches!(
                        k.as_str(),
                        "content-length"
                            | "transfer-encoding"
                            | "connection"
                            | "host"
                            | "date"
                            | "x-call-id"
                            | "x-duration-seconds"
                            | "x-start-time"
                    ) {
                        continue;
                    }
                    b = b.header(k, v);
                }
                if let Some(h) = &host_header {
                    b = b.header(header::HOST, h.clone());
                }
                b = b
                    .header(&X_CALL_ID, call.id.as_str())
                    .header("X-Function-Status", status.to_string())
                    .header("X-Function-Name", call.function.as_str())
                    .header(
                        "X-Duration-Seconds",
                        format!("{:.6}", elapsed.as_secs_f64()),
                    )
                    .header("X-Retry", call.attempt.saturating_sub(1).to_string())
                    .header("X-Retry-Max", max_attempts.saturating_sub(1).to_string());
                let req = match b.body(Full::new(body.clone())) {
                    Ok(r) => r,
                    Err(e) => return format!("failed: invalid callback request: {e}"),
                };
                match tokio::time::timeout(Duration::from_secs(30), self.callbacks.request(req))
                    .await
                {
                    Ok(Ok(resp)) => {
                        let code = resp.status();
                        // Read a little (lets a keep-alive connection be reused), never more.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            http_body_util::Limited::new(resp.into_body(), MAX_CALLBACK_RESPONSE)
                                .collect(),
                        )
                        .await;
                        if code.is_success() {
                            return format!("delivered ({})", code.as_u16());
                        }
                        // A redirect is an answer too: it is not followed.
                        last = format!("status {}", code.as_u16());
                        break;
                    }
                    // Unreachable: try the next checked address.
                    Ok(Err(e)) if e.is_connect() => last = e.to_string(),
                    Ok(Err(e)) => {
                        last = e.to_string();
                        break;
                    }
                    Err(_) => {
                        last = "timed out after 30 s".into();
                        break;
                    }
                }
            }
        }
        format!("failed after {CALLBACK_ATTEMPTS} attempts: {last}")
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::policy::*;

    #[test]
    fn retry_policy_from_annotations() {
        let p = RetryPolicy::from_annotations(None).unwrap();
        assert_eq!(p.attempts, 3);
        assert!(p.codes.contains(&503) && !p.codes.contains(&400));
        let a: std::collections::BTreeMap<String, String> = [
            (ANNOTATION_RETRY_ATTEMPTS.to_string(), "5".to_string()),
            (ANNOTATION_RETRY_CODES.to_string(), "500, 418".to_string()),
            (ANNOTATION_RETRY_MIN_WAIT.to_string(), "100ms".to_string()),
            (ANNOTATION_RETRY_MAX_WAIT.to_string(), "2s".to_string()),
        ]
        .into();
        let p = RetryPolicy::from_annotations(Some(&a)).unwrap();
        assert_eq!((p.attempts, p.codes.clone()), (5, vec![500, 418]));
        for attempt in 1..10 {
            let w = p.wait(attempt, None, rand::random::<f64>());
            assert!(
                w >= Duration::from_millis(50) && w <= Duration::from_secs(2),
                "{w:?}"
            );
        }
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(1)), 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(100)), 0.5),
            Duration::from_secs(2)
        );
        let bad: std::collections::BTreeMap<String, String> =
            [(ANNOTATION_RETRY_CODES.to_string(), "abc".to_string())].into();
        assert!(
            RetryPolicy::from_annotations(Some(&bad))
                .unwrap_err()
                .contains(ANNOTATION_RETRY_CODES)
        );
    }

    #[test]
    fn callback_urls() {
        let open = CallbackPolicy::new(vec![
            crate::callback::CallbackAllow::parse("127.0.0.1").unwrap(),
        ]);
        let strict = CallbackPolicy::default();
        assert!(valid_callback("http://127.0.0.1:9000/done", &open).is_ok());
        assert!(valid_callback("https://app.example/cb?x=1", &strict).is_ok());
        // Host names are checked at send time, after resolution.
        assert!(valid_callback("http://localhost:9000/done", &strict).is_ok());
        for bad in ["", "ftp://x", "not a url", "http://", "/relative"] {
            assert!(valid_callback(bad, &open).is_err(), "{bad}");
        }
        for internal in [
            "http://127.0.0.1:9000/done",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:10.0.0.1]:80/",
        ] {
            let e = valid_callback(internal, &strict).unwrap_err().to_string();
            assert!(
                e.contains("X-Callback-Url") && e.contains("--callback-allow"),
                "{e}"
            );
        }
    }
}
