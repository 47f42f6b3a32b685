//! `GET /system/logs`: NDJSON, one `{name, namespace, instance, timestamp, text}` per line,
//! with `tail`, `since`, `instance` and `follow` as in OpenFaaS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use fjord_core::FunctionKey;
use fjord_core::openfaas::LogMessage;
use fjord_runtime::logs::LogEntry;
use futures_util::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;
use fjord_control::not_found;

fn line(key: &FunctionKey, e: &LogEntry) -> Bytes {
    let msg = LogMessage {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        instance: e.instance.to_string(),
        timestamp: humantime::format_rfc3339_nanos(e.timestamp).to_string(),
        text: e.text.clone(),
    };
    let mut v = serde_json::to_vec(&msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn parse_bool(field: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "1" | "true" | "True" | "TRUE" | "t" => Ok(true),
        "0" | "false" | "False" | "FALSE" | "f" | "" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "{field}: {v:?} is not a boolean: use true or false"
        ))),
    }
}

#[utoipa::path(
    get, path = "/system/logs", tag = "functions",
    params(
        ("name" = String, Query, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The function's name (required)"),
        ("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Default `openfaas-fn`"),
        ("instance" = Option<String>, Query, description = "Only lines of this replica id, or `fjord`"),
        ("tail" = Option<i64>, Query, description = "The last N lines; absent or <= 0: all kept (the last 2000)"),
        ("follow" = Option<String>, Query, description = "`true`/`1`/`t`: stream new lines until the client disconnects; `false`/`0`/`f`/empty: no"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339 time: only lines at or after it"),
    ),
    responses(
        (status = 200, description = "Newline-delimited JSON, one LogMessage per line", body = LogMessage, content_type = "application/x-ndjson"),
        (status = 400, description = "A missing name, or a bad name, namespace, tail, follow or since (the message names it)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn logs(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name = q.get("name").filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::BadRequest(
            "name: the function's name is required, e.g. /system/logs?name=hello".into(),
        )
    })?;
    let key = FunctionKey::new(name, q.get("namespace").map(String::as_str))?;
    let tail = match q.get("tail").map(String::as_str) {
        None | Some("") => None,
        Some(t) => {
            let n: i64 = t
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("tail: {t:?} is not a whole number")))?;
            (n > 0).then_some(n as usize)
        }
    };
    let follow = parse_bool("follow", q.get("follow").map_or("", String::as_str))?;
    let since: Option<SystemTime> = match q.get("since").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(humantime::parse_rfc3339_weak(s).map_err(|e| {
            ApiError::BadRequest(format!(
                "since: {s:?} is not an RFC 3339 time such as 2026-01-02T15:04:05Z: {e}"
            ))
        })?),
    };
    let instance = q.get("instance").filter(|i| !i.is_empty()).cloned();
    let route = app
        .control
        .lookup(&key.namespace, &key.name)
        .ok_or_else(|| not_found(&key))?;
    let book = route.handle.logs.clone();

    // Subscribe before the snapshot so nothing falls between them.
    let rx = follow.then(|| book.subscribe());
    let snapshot = book.snapshot(since, tail);
    let last_seq = snapshot.last().map(|e| e.seq);
    let keep = {
        let instance = instance.clone();
        move |e: &LogEntry| instance.as_deref().is_none_or(|i| &*e.instance == i)
    };
    let key = Arc::new(key);
    let k1 = key.clone();
    let keep1 = keep.clone();
    let first = futures_util::stream::iter(
        snapshot
            .into_iter()
            .filter(move |e| keep1(e))
            .map(move |e| Ok::<Bytes, std::convert::Infallible>(line(&k1, &e))),
    );
    let body = match rx {
        None => Body::from_stream(first),
        Some(rx) => {
            let shutdown = app.shutdown.clone();
            let rest = tokio_stream_from(rx)
                .filter(move |e| {
                    let ok = last_seq.is_none_or(|s| e.seq > s) && keep(e);
                    std::future::ready(ok)
                })
                .map(move |e| Ok(line(&key, &e)))
                .take_until(async move { shutdown.cancelled().await });
            Body::from_stream(first.chain(rest))
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

/// A broadcast receiver as a stream; lagging followers skip what they missed.
fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<Arc<LogEntry>>,
) -> impl futures_util::Stream<Item = Arc<LogEntry>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
