//! Connections from the gateway to replicas: HTTP/1.1 keep-alive, pooled per thread.
//!
//! Each gateway worker is a current-thread runtime, so a pool per thread needs no lock and
//! a connection's task runs on the thread that uses it. A connection goes back to its pool
//! the moment its response body has been read to the end, from inside the body: no task is
//! spawned per request to wait for that (hyper-util's pooled client spawns one for every
//! HTTP/1 response with a body), no mutex, no pool key built per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::uri::Authority;
use axum::http::{HeaderValue, Request, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

/// A connection idle this long is not reused (the replica may have dropped it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per replica and thread; more are closed.
const MAX_IDLE_PER_REPLICA: usize = 1024;
/// How often a thread's pool drops its closed and expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why a request got no response from the replica.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Send(#[source] hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<Authority, Vec<Idle>>,
    swept: Option<Instant>,
}

impl Pool {
    fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, list| {
            list.retain(|i| !i.sender.is_closed() && now - i.since < IDLE_TIMEOUT);
            !list.is_empty()
        });
        self.swept = Some(now);
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// The most recently used idle connection to `authority` that is still open.
fn take(authority: &Authority) -> Option<http1::SendRequest<Body>> {
    POOL.with_borrow_mut(|p| {
        let list = p.idle.get_mut(authority)?;
        while let Some(i) = list.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        None
    })
}

/// Back into this thread's pool, ready for the next request.
fn put(authority: Authority, sender: http1::SendRequest<Body>) {
    if sender.is_closed() {
        return;
    }
    POOL.with_borrow_mut(|p| {
        let now = Instant::now();
        if p.swept.is_none_or(|t| now - t >= SWEEP_EVERY) {
            p.sweep(now);
        }
        let list = p.idle.entry(authority).or_default();
        if list.len() < MAX_IDLE_PER_REPLICA {
            list.push(Idle { sender, since: now });
        }
    });
}

async fn connect(authority: &Authority) -> Result<http1::SendRequest<Body>, UpstreamError> {
    let port = authority.port_u16().unwrap_or(80);
    let stream = fjord_runtime::netns::connect(authority.host(), port)
        .await
        .map_err(UpstreamError::Connect)?;
    let (sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Handshake)?;
    // Ends when the replica closes the connection or every sender is gone.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `req` (origin-form URI: path and query) to the replica at `authority` on a pooled
/// connection, or a new one. A request that a pooled connection closed before sending is
/// sent again on another; one that was sent is never repeated.
pub async fn send(
    authority: &Authority,
    mut req: Request<Body>,
) -> Result<Response<PooledBody>, UpstreamError> {
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    while let Some(mut sender) = take(authority) {
        // Back in the pool as soon as its last response ended: its connection task may
        // not have asked for the next request yet.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(pooled(resp, sender, authority)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(UpstreamError::Send(e.into_error())),
            },
        }
    }
    let mut sender = connect(authority).await?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(UpstreamError::Send)?;
    Ok(pooled(resp, sender, authority))
}

fn pooled(
    resp: Response<Incoming>,
    sender: http1::SendRequest<Body>,
    authority: &Authority,
) -> Response<PooledBody> {
    resp.map(|inner| {
        let mut body = PooledBody {
            inner,
            reuse: Some((authority.clone(), sender)),
        };
        // No body (204, HEAD, Content-Length: 0): reusable at once.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    })
}

/// A replica's response body; its connection returns to the pool once the body has been
/// read to its end (a body dropped before that closes the connection).
pub struct PooledBody {
    inner: Incoming,
    reuse: Option<(Authority, http1::SendRequest<Body>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((authority, sender)) = self.reuse.take() {
            put(authority, sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // An error: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.reuse = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A replica on loopback that counts its connections; `/close` answers with
    /// `Connection: close`, `/big` streams a body in two chunks.
    async fn replica() -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let mut r = Response::builder();
                        if req.uri().path() == "/close" {
                            r = r.header(header::CONNECTION, "close");
                        }
                        let host = req.headers().get(header::HOST).cloned();
                        let body = match req.uri().path() {
                            "/big" => vec![b'x'; 256 * 1024],
                            _ => format!("{}?{}", req.uri(), host.is_some()).into_bytes(),
                        };
                        r.body(Full::new(bytes::Bytes::from(body)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr.to_string().parse().unwrap(), conns)
    }

    async fn get(authority: &Authority, path: &str) -> Result<String, UpstreamError> {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let resp = send(authority, req).await?;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (authority, conns) = replica().await;
        for i in 0..5 {
            assert_eq!(
                get(&authority, &format!("/a?{i}")).await.unwrap(),
                format!("/a?{i}?true")
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one keep-alive connection");
        // Read to the end in several frames: reused too.
        assert_eq!(get(&authority, "/big").await.unwrap().len(), 256 * 1024);
        get(&authority, "/").await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_left_unread_or_a_closed_connection_is_not_reused() {
        let (authority, conns) = replica().await;
        // The response is dropped before its body is read: that connection is not pooled.
        let resp = send(
            &authority,
            Request::get("/big").body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        drop(resp);
        get(&authority, "/").await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // The replica closes after answering: the next request opens another connection
        // (and is not lost to the closed one).
        get(&authority, "/close").await.unwrap();
        tokio::task::yield_now().await;
        get(&authority, "/").await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_each_get_a_connection_and_all_are_pooled() {
        let (authority, conns) = replica().await;
        let all = futures_util::future::join_all((0..8).map(|i| {
            let a = authority.clone();
            async move { get(&a, &format!("/{i}")).await }
        }))
        .await;
        assert!(all.iter().all(|r| r.is_ok()), "{all:?}");
        assert_eq!(conns.load(Ordering::SeqCst), 8);
        // Eight idle now: eight more at once open none.
        futures_util::future::join_all((0..8).map(|_| get(&authority, "/"))).await;
        assert_eq!(conns.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let e = get(&authority, "/").await.unwrap_err();
        assert!(matches!(e, UpstreamError::Connect(_)), "{e:?}");
    }
}
