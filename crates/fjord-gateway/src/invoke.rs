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
use fjord_core::FunctionKey;
use fjord_runtime::fork::{self, ForkRequest};
use fjord_runtime::{EndpointKind, Inflight};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::AppState;
use crate::error::ApiError;

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

/// Keeps the replica's in-flight count until the response body is done.
struct Guarded<B> {
    inner: B,
    _inflight: Inflight,
}

impl<B> HttpBody for Guarded<B>
where
    B: HttpBody + Unpin,
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

pub async fn invoke(
    State(app): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let (mut parts, body) = req.into_parts();
    let (segment, sub_path) = split_function_path(parts.uri.path())
        .ok_or_else(|| ApiError::NotFound("no function named in the path".into()))?;
    let (name, namespace) = FunctionKey::split_route(segment);
    let Some(route) = app.control.lookup(namespace, name) else {
        return Err(ApiError::NotFound(format!(
            "error finding function {name}.{namespace}: it is not deployed"
        )));
    };
    let handle = &route.handle;
    let (serving, inflight) = match handle.pick() {
        Some(p) => p,
        None => {
            if handle.wait_ready(app.config.ready_timeout).await
                && let Some(p) = handle.pick()
            {
                p
            } else {
                return Err(not_ready(handle));
            }
        }
    };
    route
        .invocations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let call_id = match parts.headers.get(&X_CALL_ID) {
        Some(v) => v.clone(),
        None =>
        // A thread-local RNG: `new_v4` would make a getrandom syscall per request.
        {
            HeaderValue::try_from(
                uuid::Builder::from_random_bytes(rand::random())
                    .into_uuid()
                    .to_string(),
            )
            .map_err(|e| ApiError::Internal(e.to_string()))?
        }
    };
    let start_value = HeaderValue::from(start_ns as u64);
    // The function sees them too (fork mode as Http_X_Call_Id, Http_X_Start_Time).
    parts.headers.insert(X_CALL_ID.clone(), call_id.clone());
    parts
        .headers
        .insert(X_START_TIME.clone(), start_value.clone());

    let mut response = match &inflight.endpoint().kind {
        EndpointKind::Http { authority } => {
            let path_and_query = match parts.uri.query() {
                Some(q) => format!("{sub_path}?{q}"),
                None => sub_path.to_string(),
            };
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority.clone())
                .path_and_query(path_and_query)
                .build()
                .map_err(|e| ApiError::BadRequest(format!("invalid request path: {e}")))?;
            parts.version = Version::HTTP_11;
            let h = &mut parts.headers;
            strip_hop_by_hop(h);
            if !h.contains_key(&X_FORWARDED_FOR)
                && let Ok(v) = HeaderValue::try_from(remote.ip().to_string())
            {
                h.insert(X_FORWARDED_FOR.clone(), v);
            }
            if !h.contains_key(&X_FORWARDED_HOST)
                && let Some(host) = h.get(header::HOST).cloned()
            {
                h.insert(X_FORWARDED_HOST.clone(), host);
            }
            let upstream = app
                .client
                .request(axum::http::Request::from_parts(parts, body));
            let result = match serving.spec.watchdog.exec_timeout {
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
            let resp = result.map_err(|e| {
                ApiError::BadGateway(format!(
                    "function {} (replica {}) failed before answering: {e}; it may have crashed or been OOM-killed: see GET /system/logs?name={}&namespace={}",
                    handle.qualified,
                    inflight.endpoint().replica,
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
                    _inflight: inflight,
                }),
            )
        }
        EndpointKind::Fork(slot) => {
            let slot = slot.clone();
            let resp = fork::invoke(
                handle,
                &serving,
                &slot,
                ForkRequest {
                    method: &parts.method,
                    path: sub_path,
                    query: parts.uri.query(),
                    headers: &parts.headers,
                    body,
                },
            )
            .await;
            let (parts, body) = resp.into_parts();
            Response::from_parts(
                parts,
                Body::new(Guarded {
                    inner: body,
                    _inflight: inflight,
                }),
            )
        }
    };
    let h = response.headers_mut();
    h.insert(X_CALL_ID.clone(), call_id);
    h.insert(X_START_TIME.clone(), start_value);
    if let Ok(v) = HeaderValue::try_from(format!("{:.6}", started.elapsed().as_secs_f64())) {
        h.insert(X_DURATION_SECONDS.clone(), v);
    }
    Ok(response)
}

fn not_ready(handle: &fjord_runtime::FunctionHandle) -> ApiError {
    let s = handle.status();
    let why = if s.desired == 0 {
        format!(
            "it is scaled to zero; scale it up with POST /system/scale-function/{}",
            handle.key.name
        )
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

/// How long a request waits for a starting replica before it gets a 503.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

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
