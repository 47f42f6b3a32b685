//! The sync invoke path, `ANY /function/{name}[.{ns}][/{path}]`: look up the routing
//! snapshot, pick the ready replica with the fewest requests in flight, and stream the
//! request to it (http mode) or fork the function's process (fork mode).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, Uri, Version, header};
use axum::response::IntoResponse;
use fjord_core::FunctionKey;
use fjord_runtime_api::body::{self, PREFETCH};
use fjord_runtime_api::{EndpointKind, InProcessRequest, Inflight, Pick, Serving};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fjord_control::metrics::{FunctionMetrics, now_ms};
use fjord_control::{Demand, Route};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::state::AppState;

pub static X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
pub static X_START_TIME: HeaderName = HeaderName::from_static("x-start-time");
pub static X_DURATION_SECONDS: HeaderName = HeaderName::from_static("x-duration-seconds");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers, never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Splits `/function/name.ns/rest` into the route segment and the path the function sees.
pub fn split_function_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/function/")?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Splits `/async-function/name.ns/rest` like [`split_function_path`].
pub fn split_async_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/async-function/")?;
    Some(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Keeps the replica's and the function's in-flight counts (and a fork-mode process's
/// permit) until the response body is done.
struct Guarded<B, G = (Inflight, Gauge)> {
    inner: B,
    _guards: G,
}

impl<B, G> HttpBody for Guarded<B, G>
where
    B: HttpBody + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Cuts a body that is still incomplete at its deadline (read_timeout for request bodies,
/// write_timeout for responses). A body that keeps up is never touched, and the deadline is
/// only looked at while the body waits for data.
struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl<B> Deadline<B> {
    fn new(inner: B, limit: Duration, expired: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            expired,
        }
    }
}

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(f.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if self.sleep.as_mut().poll(cx).is_ready() {
                    self.expired.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err("body timed out".into())))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Most requests that may wait at once for a starting (or saturated) function; more get 503.
pub const MAX_HELD: u64 = 1000;

/// Counts a request in the function's gauges until dropped.
struct Gauge(Arc<FunctionMetrics>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Held(Arc<FunctionMetrics>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

fn new_call_id() -> HeaderValue {
    // A thread-local RNG: `new_v4` would make a getrandom syscall per request.
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// `ANY /function/{name}[.{ns}][/{path}]` (the sub-path form is documented in `openapi.rs`).
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/function/{function}", tag = "invoke",
    params(
        ("function" = String, Path, description = "`name` or `name.namespace`"),
        ("X-Call-Id" = Option<String>, Header, description = "Passed to the function and returned; default a new UUID"),
    ),
    request_body(content = String, content_type = "*/*", description = "Any body; streamed to the function"),
    responses(crate::responses::InvokeResponses),
    security(())
)]
pub async fn invoke(
    State(app): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response<Body> {
    // Functions never see the dashboard's session (a browser sends it to every path).
    crate::ui::strip_session_cookie(req.headers_mut());
    run(app, remote, req).await
}

/// Who asks for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// An HTTP client: its address is appended to `X-Forwarded-For` and counts against the
    /// per-address limits.
    Client(SocketAddr),
    /// A trigger inside fjord (the async queue, a connector): authorised when its work was
    /// accepted, bounded by its own limits.
    Trigger,
}

/// The one path from "call function F with this request" to its response: pick a ready
/// replica (or wake the function / wait for capacity), proxy or call it in process, count
/// it. The HTTP handler, the async queue worker and every other [`crate::trigger::Trigger`]
/// call functions through it.
#[derive(Clone)]
pub struct Invoker {
    app: AppState,
}

impl Invoker {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }

    /// Largest message a connector passes to a function: the async calls' body limit, since
    /// both are bodies fjord holds whole in memory before the call.
    pub fn max_message_body(&self) -> usize {
        self.app.config.max_async_body
    }

    /// The function's route, when deployed (a lock-free lookup).
    pub fn lookup(&self, key: &FunctionKey) -> Option<Arc<Route>> {
        self.app.control.lookup(&key.namespace, &key.name)
    }

    /// Calls `route`'s function with `req`, whose URI is the path (and query) the function
    /// sees. The answer carries `X-Call-Id` (the request's, else a new one), `X-Start-Time`
    /// and `X-Duration-Seconds`.
    pub async fn call(&self, route: &Arc<Route>, caller: Caller, req: Request) -> Response<Body> {
        let started = Instant::now();
        let (call_id, start_value) = call_headers(&req);
        let response = call(
            &self.app,
            caller,
            req,
            route,
            &call_id,
            &start_value,
            started,
        )
        .await;
        stamp(response, call_id, start_value, started)
    }
}

/// The call id (the request's `X-Call-Id`, else a new one) and the start time.
fn call_headers(req: &Request) -> (HeaderValue, HeaderValue) {
    let start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let call_id = req
        .headers()
        .get(&X_CALL_ID)
        .cloned()
        .unwrap_or_else(new_call_id);
    (call_id, HeaderValue::from(start_ns as u64))
}

fn stamp(
    mut response: Response<Body>,
    call_id: HeaderValue,
    start_value: HeaderValue,
    started: Instant,
) -> Response<Body> {
    let h = response.headers_mut();
    h.insert(X_CALL_ID.clone(), call_id);
    h.insert(X_START_TIME.clone(), start_value);
    if let Ok(v) = HeaderValue::try_from(format!("{:.6}", started.elapsed().as_secs_f64())) {
        h.insert(X_DURATION_SECONDS.clone(), v);
    }
    response
}

/// Adds the peer's address to `X-Forwarded-For` as a proxy does (`<client's value>, <peer>`):
/// what the client sent is kept but can no longer pass for the client's address. Both modes
/// (fork mode sees it as `Http_X_Forwarded_For`). Queued calls got theirs when queued.
pub fn forwarded_for(h: &mut HeaderMap, caller: Caller) {
    let Caller::Client(remote) = caller else {
        return;
    };
    let ip = remote.ip();
    let value = if h.contains_key(&X_FORWARDED_FOR) {
        // Rare: only then is a new value built (every line the client sent, joined).
        let mut v = Vec::with_capacity(64);
        for line in h.get_all(&X_FORWARDED_FOR) {
            v.extend_from_slice(line.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ip.to_string().as_bytes());
        HeaderValue::from_bytes(&v)
    } else {
        HeaderValue::try_from(ip.to_string())
    };
    if let Ok(v) = value {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
}

async fn run(app: AppState, remote: SocketAddr, mut req: Request) -> Response<Body> {
    let started = Instant::now();
    let (call_id, start_value) = call_headers(&req);
    let route = split_function_path(req.uri().path()).and_then(|(segment, _)| {
        let (name, namespace) = FunctionKey::split_route(segment);
        app.control.lookup(namespace, name)
    });
    let caller = Caller::Client(remote);
    let response = match &route {
        None => {
            let (name, namespace) = split_function_path(req.uri().path())
                .map_or(("", ""), |(s, _)| FunctionKey::split_route(s));
            ApiError::NotFound(format!(
                "error finding function {name}.{namespace}: it is not deployed"
            ))
            .into_response()
        }
        Some(route) => match function_uri(req.uri()) {
            Err(e) => e.into_response(),
            Ok(uri) => {
                *req.uri_mut() = uri;
                if route.requires_token {
                    // Boxed: the token check's future stays out of the invoke future of open
                    // functions.
                    match Box::pin(app.auth.check_invoke(remote.ip(), req.headers())).await {
                        Ok(()) => {
                            // The gateway's credential is not the function's business.
                            req.headers_mut().remove(header::AUTHORIZATION);
                            call(&app, caller, req, route, &call_id, &start_value, started).await
                        }
                        Err(e) => e.into_response(),
                    }
                } else {
                    call(&app, caller, req, route, &call_id, &start_value, started).await
                }
            }
        },
    };
    stamp(response, call_id, start_value, started)
}

/// `/function/name.ns/rest?q` → `/rest?q`: the path the function sees.
fn function_uri(uri: &Uri) -> Result<Uri, ApiError> {
    let sub_path = split_function_path(uri.path()).map_or("/", |(_, p)| p);
    let path_and_query = match uri.query() {
        Some(q) => format!("{sub_path}?{q}"),
        None => sub_path.to_string(),
    };
    Uri::try_from(path_and_query)
        .map_err(|e| ApiError::BadRequest(format!("invalid request path: {e}")))
}

/// Counts and forwards one call to a function.
async fn call(
    app: &AppState,
    caller: Caller,
    req: Request,
    route: &Arc<Route>,
    call_id: &HeaderValue,
    start_value: &HeaderValue,
    started: Instant,
) -> Response<Body> {
    // Only for functions that asked for it (`com.fjord.log.requests`): one flag read otherwise.
    let report = route
        .handle
        .logs
        .reports_requests()
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let m = &route.metrics;
    m.started.fetch_add(1, Ordering::Relaxed);
    m.last_request_ms.store(now_ms(), Ordering::Relaxed);
    m.inflight.fetch_add(1, Ordering::Relaxed);
    let gauge = Gauge(m.clone());
    let r = forward(app, caller, req, route, call_id, start_value, gauge)
        .await
        .unwrap_or_else(|e| {
            if matches!(e.status().as_u16(), 429 | 503) {
                route.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            }
            e.into_response()
        });
    let elapsed = started.elapsed();
    m.observe(r.status().as_u16(), elapsed.as_secs_f64());
    if let Some((method, path)) = report {
        // Like a Lambda REPORT line: one per call, in the function's own log.
        static GATEWAY: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("gateway"));
        route.handle.logs.push(
            &GATEWAY,
            &format!(
                "REPORT {method} {path} status={} duration={:.3}ms call_id={}",
                r.status().as_u16(),
                elapsed.as_secs_f64() * 1e3,
                call_id.to_str().unwrap_or("?")
            ),
        );
    }
    r
}

/// Picks a replica, waking the function from zero or waiting for capacity when needed
/// (bounded in count and time), and sends the request to it.
async fn forward(
    app: &AppState,
    caller: Caller,
    req: Request,
    route: &Arc<Route>,
    call_id: &HeaderValue,
    start_value: &HeaderValue,
    gauge: Gauge,
) -> Result<Response<Body>, ApiError> {
    let handle = &route.handle;
    let (serving, inflight) = match handle.pick_within() {
        Pick::Ready(s, i) => (s, i),
        first => wait_for_replica(app, route, first).await?,
    };
    let (mut parts, body) = req.into_parts();
    // One rule for each limit: the function's own env var, else the gateway's flag.
    let wd = &serving.spec.watchdog;
    let read_limit = wd.read_timeout.or(app.config.read_timeout);
    let write_limit = wd.write_timeout.or(app.config.write_timeout);
    let read_expired = Arc::new(AtomicBool::new(false));
    let body = match read_limit {
        Some(t) if !body.is_end_stream() => Body::new(Deadline::new(body, t, read_expired.clone())),
        _ => body,
    };
    let read_timed_out = || {
        read_expired.load(Ordering::Relaxed).then(|| {
            ApiError::RequestTimeout(format!(
                "the request body to {} did not arrive within its read_timeout of {}",
                route.handle.qualified,
                humantime::format_duration(read_limit.unwrap_or_default())
            ))
        })
    };
    // The function sees them too (fork mode as Http_X_Call_Id, Http_X_Start_Time).
    parts.headers.insert(X_CALL_ID.clone(), call_id.clone());
    parts
        .headers
        .insert(X_START_TIME.clone(), start_value.clone());
    forwarded_for(&mut parts.headers, caller);
    let guards = (inflight, gauge);
    let response = match &guards.0.endpoint().kind {
        EndpointKind::Http { authority } => {
            // Origin form: the replica gets the path and query alone.
            if parts.uri.authority().is_some() {
                parts.uri = Uri::from(
                    parts
                        .uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                );
            }
            parts.version = Version::HTTP_11;
            let h = &mut parts.headers;
            strip_hop_by_hop(h);
            if !h.contains_key(&X_FORWARDED_HOST)
                && let Some(host) = h.get(header::HOST).cloned()
            {
                h.insert(X_FORWARDED_HOST.clone(), host);
            }
            let upstream =
                crate::upstream::send(authority, axum::http::Request::from_parts(parts, body));
            // One rule: the function's exec_timeout, else the gateway's --exec-timeout.
            let limit = serving
                .spec
                .watchdog
                .exec_timeout
                .or(app.config.exec_timeout);
            let result = match limit {
                Some(t) => match tokio::time::timeout(t, upstream).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ApiError::GatewayTimeout(format!(
                            "function {} did not answer within its exec_timeout of {}",
                            handle.qualified,
                            humantime::format_duration(t)
                        )));
                    }
                },
                None => upstream.await,
            };
            if let Some(e) = read_timed_out() {
                return Err(e);
            }
            let resp = result.map_err(|e| {
                ApiError::BadGateway(format!(
                    "function {} (replica {}) failed before answering: {e}; it may have crashed or been OOM-killed: see GET /system/logs?name={}&namespace={}",
                    handle.qualified,
                    guards.0.endpoint().replica,
                    handle.key.name,
                    handle.key.namespace
                ))
            })?;
            let (mut parts, body) = resp.into_parts();
            // The caller's connection has its own version (an HTTP/1.0 replica is common).
            parts.version = Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(
                parts,
                Body::new(Guarded {
                    inner: body,
                    _guards: guards,
                }),
            )
        }
        EndpointKind::InProcess(replica) => {
            let replica = replica.clone();
            // The body first (bounded by read_timeout and PREFETCH), then a process: a
            // client that stalls after its headers must not hold a host process.
            let body = match body::prefetch(body.map_err(Into::into).boxed_unsync(), PREFETCH).await
            {
                Ok(b) => b,
                Err(e) => {
                    return Err(read_timed_out().unwrap_or_else(|| {
                        ApiError::BadRequest(format!("reading the request body failed: {e}"))
                    }));
                }
            };
            // Triggers' calls are bounded by their own limits (async max_inflight) instead.
            let client = match caller {
                Caller::Client(a) => Some(a.ip()),
                Caller::Trigger => None,
            };
            let permit = app
                .forks
                .acquire(&handle.qualified, &route.metrics, client)?;
            let resp = replica
                .call(
                    handle,
                    &serving,
                    InProcessRequest {
                        method: &parts.method,
                        path: parts.uri.path(),
                        query: parts.uri.query(),
                        headers: &parts.headers,
                        body,
                    },
                )
                .await;
            if let Some(e) = read_timed_out() {
                return Err(e);
            }
            let (parts, body) = resp.into_parts();
            Response::from_parts(
                parts,
                Body::new(Guarded {
                    inner: body,
                    _guards: (guards, permit),
                }),
            )
        }
    };
    Ok(match write_limit {
        Some(t) => {
            response.map(|b| Body::new(Deadline::new(b, t, Arc::new(AtomicBool::new(false)))))
        }
        None => response,
    })
}

/// No replica could take the request at once: wake the function from zero, or add a
/// replica to a saturated one, and wait — at most `--ready-timeout`, and at most
/// [`MAX_HELD`] requests per function — then 503 (nothing became ready) or 429 (saturated at
/// its maximum scale).
async fn wait_for_replica(
    app: &AppState,
    route: &Arc<Route>,
    first: Pick,
) -> Result<(Arc<Serving>, Inflight), ApiError> {
    let handle = &route.handle;
    let m = &route.metrics;
    if m.held.fetch_add(1, Ordering::Relaxed) >= MAX_HELD {
        m.held.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::Unavailable(format!(
            "function {} is starting and {MAX_HELD} requests are already waiting for it; retry shortly",
            handle.qualified
        )));
    }
    let _held = Held(m.clone());
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + app.config.ready_timeout;
    let mut cold = false;
    let mut saturated = matches!(first, Pick::Saturated);
    if saturated && !app.control.demand(route, Demand::Saturated) {
        return Err(at_capacity(handle));
    }
    loop {
        if handle.desired() == 0 {
            cold = true;
            app.control.demand(route, Demand::Cold);
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            break;
        }
        if saturated {
            // Capacity frees up when a request finishes; check often, briefly.
            tokio::time::sleep(Duration::from_millis(2).min(remaining)).await;
        } else if !handle.wait_ready(remaining).await {
            break;
        }
        match handle.pick_within() {
            Pick::Ready(s, i) => {
                if cold {
                    m.cold_starts.fetch_add(1, Ordering::Relaxed);
                    m.cold_start_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                return Ok((s, i));
            }
            Pick::Saturated => {
                if !saturated && !app.control.demand(route, Demand::Saturated) {
                    return Err(at_capacity(handle));
                }
                saturated = true;
            }
            Pick::NoneReady => saturated = false,
        }
    }
    if saturated {
        Err(at_capacity(handle))
    } else {
        Err(not_ready(handle))
    }
}

fn at_capacity(handle: &fjord_runtime_api::FunctionHandle) -> ApiError {
    let spec = handle.spec();
    ApiError::TooManyRequests(format!(
        "function {} is at capacity: {} replica(s) (its maximum, com.openfaas.scale.max) each at max_inflight={}; retry later",
        handle.qualified,
        handle.desired(),
        spec.watchdog.max_inflight.unwrap_or(0)
    ))
}

fn not_ready(handle: &fjord_runtime_api::FunctionHandle) -> ApiError {
    let s = handle.status();
    let why = if s.desired == 0 {
        "it is at zero replicas and none started within --ready-timeout; see GET /system/logs"
            .to_string()
    } else {
        format!(
            "0 of {} replicas are ready{}",
            s.desired,
            s.last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        )
    };
    ApiError::Unavailable(format!("function {} is not ready: {why}", handle.qualified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_split() {
        assert_eq!(split_function_path("/function/env"), Some(("env", "/")));
        assert_eq!(
            split_function_path("/function/env.openfaas-fn/a/b"),
            Some(("env.openfaas-fn", "/a/b"))
        );
        assert_eq!(split_function_path("/function/env/"), Some(("env", "/")));
        assert_eq!(split_function_path("/system/functions"), None);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-custom", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-custom"));
    }
}
