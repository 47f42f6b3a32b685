//! Unpacking one layer, as it downloads, into a directory that overlayfs can stack.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fjord_bundle::{BundleError, Extractor};
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::Receiver;

use crate::error::{OciError, io_at};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Hashes and counts what the tar reader consumes; fails once more than `limit` bytes came.
struct Counted<R> {
    inner: R,
    hash: Sha256,
    count: u64,
    limit: u64,
    over: Arc<AtomicBool>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.over.store(true, Ordering::Relaxed);
            return Err(io::Error::other("the unpacked size limit was reached"));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

pub(crate) struct Unpack<'a> {
    /// The layer's (compressed) digest, for errors.
    pub digest: &'a str,
    /// The config's `rootfs.diff_ids` entry: sha256 of the uncompressed tar.
    pub diff_id: &'a str,
    pub max_unpacked: u64,
    pub max_entries: u64,
}

/// A layer's body as it downloads: chunks from the download task (async) to the unpack (a
/// blocking thread), so that nothing waits for the whole blob and no copy of it is written.
pub(crate) struct Body {
    rx: Receiver<Bytes>,
    chunk: Bytes,
    done: bool,
}

impl Body {
    pub(crate) fn new(rx: Receiver<Bytes>) -> Self {
        Self {
            rx,
            chunk: Bytes::new(),
            done: false,
        }
    }

    /// Takes the next non-empty chunk; false at the end (the sender is gone).
    fn next_chunk(&mut self) -> bool {
        while !self.done {
            match self.rx.blocking_recv() {
                Some(c) if c.is_empty() => {}
                Some(c) => {
                    self.chunk = c;
                    return true;
                }
                None => self.done = true,
            }
        }
        false
    }

    /// At least `n` bytes at the front of the current chunk (fewer only at the end).
    fn peek(&mut self, n: usize) -> &[u8] {
        if self.chunk.len() < n {
            let mut joined = self.chunk.to_vec();
            while joined.len() < n && self.next_chunk() {
                joined.extend_from_slice(&self.chunk);
            }
            self.chunk = Bytes::from(joined);
        }
        &self.chunk
    }
}

/// The sha256 digest of every chunk received until the sender is gone (on a blocking thread of
/// its own: it runs beside the unpack, on the other core, instead of adding to it).
pub(crate) fn digest_of(mut rx: Receiver<Bytes>) -> String {
    let mut hash = Sha256::new();
    while let Some(c) = rx.blocking_recv() {
        hash.update(&c);
    }
    format!("sha256:{:x}", hash.finalize())
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Body {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.chunk.is_empty() {
            self.next_chunk();
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, amt: usize) {
        let _ = self.chunk.split_to(amt.min(self.chunk.len()));
    }
}

/// A zstd stream of one or more frames (as `zstd` and `pzstd` write them).
struct Zstd<R: BufRead> {
    frame: Option<StreamingDecoder<R, FrameDecoder>>,
}

impl<R: BufRead> Zstd<R> {
    fn new(inner: R) -> io::Result<Self> {
        let frame = StreamingDecoder::new(inner).map_err(io::Error::other)?;
        Ok(Self { frame: Some(frame) })
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(frame) = self.frame.as_mut() else {
                return Ok(0);
            };
            let n = frame.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is done: another may follow.
            let mut inner = self.frame.take().expect("just used").into_inner();
            if inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.frame = Some(StreamingDecoder::new(inner).map_err(io::Error::other)?);
        }
    }
}

/// Unpacks `body` (gzip, zstd or plain tar, told apart by their magic numbers) beneath `dest`
/// as it arrives and checks the uncompressed stream against the diff_id. The body is not
/// verified yet (the caller checks its digest once all of it came, and trusts nothing before):
/// the extractor refuses unsafe entries whatever their origin, and `dest` is a fresh directory
/// under `tmp/` that is removed unless both digests match.
pub(crate) fn unpack(u: &Unpack<'_>, body: &mut Body, dest: &Path) -> Result<(), OciError> {
    let head = body.peek(ZSTD_MAGIC.len());
    let tar: Box<dyn Read + Send + '_> = if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::bufread::MultiGzDecoder::new(body))
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(Zstd::new(body).map_err(|e| OciError::BadLayer {
            digest: u.digest.to_string(),
            entry: String::new(),
            reason: format!("not a valid zstd stream: {e}"),
        })?)
    } else {
        Box::new(body)
    };
    let over = Arc::new(AtomicBool::new(false));
    let mut counted = Counted {
        inner: tar,
        hash: Sha256::new(),
        count: 0,
        limit: u.max_unpacked,
        over: over.clone(),
    };
    let root = File::open(dest).map_err(io_at(dest))?;
    let extractor = Extractor::default()
        .oci_layer(true)
        .limits(u64::MAX, u.max_entries);
    let too_large = || OciError::LayerTooLarge {
        digest: u.digest.to_string(),
        which: "unpacked",
        limit: u.max_unpacked,
    };
    let bad = |entry: String, reason: String| OciError::BadLayer {
        digest: u.digest.to_string(),
        entry,
        reason,
    };
    let result = extractor.extract(&mut counted, root.as_fd());
    if over.load(Ordering::Relaxed) {
        return Err(too_large());
    }
    match result {
        Ok(()) => {}
        Err(BundleError::Entry { entry, reason }) => return Err(bad(entry, reason)),
        Err(BundleError::Io { path, source }) => {
            return Err(OciError::Io {
                path: dest.join(path),
                source,
            });
        }
        Err(e) => return Err(bad(String::new(), e.to_string())),
    }
    // The tar reader stops at the end-of-archive blocks: the rest (padding) counts too.
    let drained = io::copy(&mut counted, &mut io::sink());
    if over.load(Ordering::Relaxed) {
        return Err(too_large());
    }
    drained.map_err(|e| bad(String::new(), format!("not a valid compressed tar: {e}")))?;
    let actual = format!("sha256:{:x}", counted.hash.finalize());
    if actual != u.diff_id {
        return Err(OciError::DigestMismatch {
            what: format!("the uncompressed content of layer {}", u.digest),
            expected: u.diff_id.to_string(),
            actual,
        });
    }
    Ok(())
}
