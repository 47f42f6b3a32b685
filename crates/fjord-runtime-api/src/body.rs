//! Request bodies read ahead: an in-process replica (fork mode) gets its body prefetched, so
//! a client that sends headers and then stalls costs a connection, never a process.

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// Request body read before a process is started: a body up to this size arrives whole
/// first, so a client that sends headers and then stalls costs a connection, never a
/// process. A larger body starts the process once this much has arrived, and the rest
/// streams to its stdin (the number of such processes is bounded by the gateway).
pub const PREFETCH: usize = 64 << 10;

/// A request body whose first bytes were read ahead ([`prefetch`]).
pub struct Prefetched<B> {
    head: Option<Bytes>,
    rest: Option<B>,
}

impl<B> Prefetched<B> {
    /// True when the whole body was read.
    pub fn is_complete(&self) -> bool {
        self.rest.is_none()
    }
}

/// Reads `body` until it ends or `limit` bytes have arrived, whichever comes first.
/// Errors are the body's own (the gateway's read-timeout wrapper, a client that went away).
pub async fn prefetch<B>(mut body: B, limit: usize) -> Result<Prefetched<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let len = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if len >= limit {
            break;
        }
        let Some(frame) = body.frame().await else {
            let head = match first {
                Some(f) if buf.is_empty() => Some(f),
                _ => Some(buf.freeze()),
            };
            return Ok(Prefetched { head, rest: None });
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        // The common single-frame body is kept as is, without a copy.
        match &first {
            None if buf.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    buf.extend_from_slice(&f);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    let head = match first {
        Some(f) if buf.is_empty() => Some(f),
        _ => Some(buf.freeze()),
    };
    Ok(Prefetched {
        head,
        rest: Some(body),
    })
}

impl<B> Body for Prefetched<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(h) = self.head.take().filter(|h| !h.is_empty()) {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(h))));
        }
        match self.rest.as_mut() {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Bytes::is_empty)
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}
