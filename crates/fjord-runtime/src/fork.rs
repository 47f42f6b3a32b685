//! Fork mode, the classic-watchdog contract: per request, start the function's process in
//! its replica's sandbox, write the request body to its stdin, and answer with its stdout.
//!
//! Output is buffered up to [`STREAM_AFTER`] so a failing process can still get a 500;
//! beyond that it streams as produced (a 100 MB response is never held in memory), as
//! of-watchdog's streaming mode does.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use fjord_runtime_api::{BoxFuture, InProcess, InProcessBody, InProcessRequest};

use crate::program::Program;
use crate::replica::{ReplicaEnv, pump};
use crate::sandbox::PidNs;
use crate::{FunctionHandle, Serving};

/// Output kept in memory before the response starts streaming.
pub const STREAM_AFTER: usize = 1 << 20;

pub use fjord_runtime_api::body::{PREFETCH, Prefetched, prefetch};

/// The response body of a fork-mode call.
pub type ForkBody = InProcessBody;

/// A fork-mode replica: the sandbox every request's process runs in.
pub struct ForkSlot {
    env: Arc<ReplicaEnv>,
    base_env: Vec<(OsString, OsString)>,
    /// The program of the replica's version.
    program: Arc<Program>,
    ooms_seen: AtomicU64,
    /// The replica's PID namespace, which every call's process joins (sandboxed). One per
    /// replica rather than per call: joining costs two `setns` calls, while a namespace
    /// per call would add an init process to create and reap on every request.
    pidns: Option<PidNs>,
}

impl ForkSlot {
    pub(crate) fn new(
        env: Arc<ReplicaEnv>,
        base_env: Vec<(OsString, OsString)>,
        program: Arc<Program>,
        pidns: Option<PidNs>,
    ) -> Self {
        Self {
            env,
            base_env,
            program,
            ooms_seen: AtomicU64::new(0),
            pidns,
        }
    }

    /// Kills every process left in the replica's PID namespace (the replica is stopping).
    pub(crate) fn stop(&self) {
        if let Some(ns) = &self.pidns {
            ns.kill();
        }
    }
}

impl InProcess for ForkSlot {
    fn call<'a>(
        &'a self,
        handle: &'a FunctionHandle,
        serving: &'a Serving,
        req: InProcessRequest<'a>,
    ) -> BoxFuture<'a, Response<InProcessBody>> {
        Box::pin(invoke(
            handle,
            serving,
            self,
            ForkRequest {
                method: req.method,
                path: req.path,
                query: req.query,
                headers: req.headers,
                body: req.body,
            },
        ))
    }
}

/// The parts of a request the process sees.
pub struct ForkRequest<'a, B> {
    pub method: &'a Method,
    /// The path after the function's name, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: B,
}

/// Go's canonical MIME header form (`x-call-id` → `X-Call-Id`), dashes then underscores,
/// as the classic watchdog names its `Http_*` variables.
fn cgi_name(header: &str) -> String {
    let mut out = String::with_capacity(5 + header.len());
    out.push_str("Http_");
    let mut upper = true;
    for c in header.chars() {
        if c == '-' {
            out.push('_');
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn cgi_env<B>(req: &ForkRequest<'_, B>) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(req.headers.len() + 6);
    let mut seen = std::collections::HashSet::new();
    for (name, value) in req.headers {
        // First value only, as the watchdog does.
        if !seen.insert(name) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            env.push((cgi_name(name.as_str()), v.to_string()));
        }
    }
    env.push(("Http_Method".into(), req.method.to_string()));
    let len = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-1")
        .to_string();
    env.push(("Http_ContentLength".into(), len.clone()));
    env.push(("Http_Content_Length".into(), len));
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        env.push(("Http_Query".into(), q.to_string()));
    }
    if !req.path.is_empty() {
        env.push(("Http_Path".into(), req.path.to_string()));
    }
    env
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ForkBody> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn full(b: Bytes) -> ForkBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Runs one request in `slot` and returns the function's response.
pub async fn invoke<B>(
    handle: &FunctionHandle,
    serving: &Serving,
    slot: &ForkSlot,
    req: ForkRequest<'_, B>,
) -> Response<ForkBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let spec = &serving.spec;
    let wd = &spec.watchdog;
    let started = Instant::now();
    let instance = &slot.env.id;

    let mut cmd = slot.env.command(&slot.program, &slot.base_env);
    if wd.cgi_headers {
        cmd.envs(cgi_env(&req));
    }
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot create a pipe: {e}\n"),
            );
        }
    };
    let stderr = if wd.combine_output {
        match writer.try_clone() {
            Ok(w) => Stdio::from(w),
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot create a pipe: {e}\n"),
                );
            }
        }
    } else {
        Stdio::piped()
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(writer))
        .stderr(stderr)
        .kill_on_drop(true);

    handle.logs.push(instance, "Forking fprocess.");
    let spawned = match &slot.pidns {
        Some(ns) => ns.spawn(&mut cmd),
        None => cmd.spawn(),
    };
    // The command holds the pipe's write ends: drop them so EOF arrives when the child exits.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot start {}: {e}", slot.program.path.display());
            handle.logs.push(instance, &format!("fjord: {msg}"));
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{msg}\n"));
        }
    };
    let pid = child.id().map(|p| p as i32);
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, handle.logs.clone(), instance.clone(), false));
    }
    let mut out = match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read output: {e}\n"),
            );
        }
    };

    // Feed the body while reading the output, so a process that echoes a large body
    // never blocks on a full pipe.
    let feeder = child
        .stdin
        .take()
        .map(|stdin| tokio::spawn(feed(req.body, stdin)));

    let deadline = wd.exec_timeout.map(|t| tokio::time::Instant::now() + t);
    let mut buf = BytesMut::with_capacity(8 << 10);
    let read = async {
        loop {
            if buf.len() >= STREAM_AFTER {
                return Ok(false);
            }
            if out.read_buf(&mut buf).await? == 0 {
                return Ok::<bool, std::io::Error>(true);
            }
        }
    };
    let finished = match deadline {
        Some(d) => tokio::time::timeout_at(d, read).await,
        None => Ok(read.await),
    };

    let kill = |pid: Option<i32>| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };

    match finished {
        Err(_elapsed) => {
            kill(pid);
            let _ = child.wait().await;
            if let Some(f) = feeder {
                f.abort();
            }
            handle.logs.push(
                instance,
                &format!(
                    "Killed process: exec_timeout of {:?} exceeded",
                    wd.exec_timeout.unwrap_or_default()
                ),
            );
            text(StatusCode::REQUEST_TIMEOUT, "Killed process.\n")
        }
        Ok(Err(e)) => {
            kill(pid);
            let _ = child.wait().await;
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the function's output failed: {e}\n"),
            )
        }
        Ok(Ok(true)) => {
            // All output read; wait for the exit status (still bounded by exec_timeout).
            let status = match deadline {
                Some(d) => tokio::time::timeout_at(d, child.wait()).await,
                None => Ok(child.wait().await),
            };
            if let Some(f) = feeder {
                f.abort();
            }
            let body = buf.freeze();
            let elapsed = started.elapsed();
            let status = match status {
                Err(_) => {
                    kill(pid);
                    let _ = child.wait().await;
                    return text(StatusCode::REQUEST_TIMEOUT, "Killed process.\n");
                }
                Ok(Err(e)) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("waiting for the function failed: {e}\n"),
                    );
                }
                Ok(Ok(s)) => s,
            };
            if wd.write_debug {
                handle.logs.push(instance, &String::from_utf8_lossy(&body));
            }
            handle.logs.push(
                instance,
                &format!(
                    "Wrote {} Bytes - Duration: {:.6}s",
                    body.len(),
                    elapsed.as_secs_f64()
                ),
            );
            if !status.success() {
                let mut reason = describe_exit(status);
                let ooms = slot.env.oom_kills();
                if ooms > slot.ooms_seen.swap(ooms, Ordering::Relaxed) {
                    handle.count_oom_kill();
                    reason = "killed: out of memory (limits.memory)".into();
                }
                handle
                    .logs
                    .push(instance, &format!("fjord: process {reason}"));
                let mut msg = BytesMut::from(format!("{reason}\n").as_bytes());
                msg.extend_from_slice(&body);
                return text(StatusCode::INTERNAL_SERVER_ERROR, msg.freeze());
            }
            let mut r = Response::new(full(body));
            set_content_type(&mut r, wd.content_type.as_deref(), req.headers);
            r
        }
        Ok(Ok(false)) => {
            // Large output: stream the rest; the exit status can only be logged now.
            let logs = handle.logs.clone();
            let instance = instance.clone();
            let counted = Arc::new(AtomicU64::new(buf.len() as u64));
            let count = counted.clone();
            let first = futures_util::stream::once(std::future::ready(Ok(buf.freeze())));
            let rest = ReaderStream::with_capacity(out, 64 << 10).inspect(move |r| {
                if let Ok(b) = r {
                    count.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            });
            let stream = first.chain(rest).map(|r| r.map(http_body::Frame::data));
            tokio::spawn(async move {
                let status = match deadline {
                    Some(d) => tokio::time::timeout_at(d, child.wait()).await.ok(),
                    None => Some(child.wait().await),
                };
                if status.is_none() {
                    kill(pid);
                    let _ = child.wait().await;
                    logs.push(
                        &instance,
                        "Killed process: exec_timeout exceeded while streaming",
                    );
                }
                if let Some(f) = feeder {
                    let _ = f.await;
                }
                logs.push(
                    &instance,
                    &format!(
                        "Wrote {} Bytes - Duration: {:.6}s",
                        counted.load(Ordering::Relaxed),
                        started.elapsed().as_secs_f64()
                    ),
                );
            });
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            set_content_type(&mut r, wd.content_type.as_deref(), req.headers);
            r
        }
    }
}

fn set_content_type(r: &mut Response<ForkBody>, forced: Option<&str>, req: &HeaderMap) {
    let value = forced
        .and_then(|c| HeaderValue::from_str(c).ok())
        .or_else(|| req.get(header::CONTENT_TYPE).cloned())
        .unwrap_or_else(|| HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CONTENT_TYPE, value);
}

/// Writes the request body to the child's stdin, then closes it. A child that exits
/// without reading its input is not an error.
async fn feed<B>(mut body: B, mut stdin: tokio::process::ChildStdin)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data()
            && stdin.write_all(&data).await.is_err()
        {
            break;
        }
    }
    let _ = stdin.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefetch_reads_small_bodies_whole_and_large_ones_in_part() {
        use futures_util::stream;
        let chunks = |n: usize, size: usize| {
            StreamBody::new(stream::iter((0..n).map(move |i| {
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![i as u8; size])))
            })))
        };
        let p = prefetch(chunks(3, 10), 100).await.unwrap();
        assert!(p.is_complete());
        let all = p.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 30);
        assert_eq!(&all[10..20], &[1u8; 10]);

        let p = prefetch(chunks(5, 40), 100).await.unwrap();
        assert!(!p.is_complete(), "stops once 100 bytes arrived");
        assert_eq!(p.collect().await.unwrap().to_bytes().len(), 200);

        let p = prefetch(chunks(0, 0), 100).await.unwrap();
        assert!(p.is_complete() && p.is_end_stream());
    }

    #[test]
    fn cgi_names_follow_go_canonical_form() {
        assert_eq!(cgi_name("x-call-id"), "Http_X_Call_Id");
        assert_eq!(cgi_name("content-type"), "Http_Content_Type");
        assert_eq!(cgi_name("user-agent"), "Http_User_Agent");
        assert_eq!(cgi_name("x-custom"), "Http_X_Custom");
    }
}
