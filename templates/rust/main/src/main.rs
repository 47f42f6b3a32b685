//! fjord rust runtime: a small std-only HTTP/1.1 server on 127.0.0.1:$PORT that calls
//! `handler::handle` (your crate, `function/`) for every request, whatever the method and path.
//!
//! One thread per connection; keep-alive (HTTP/1.0 too with `Connection: keep-alive`), idle
//! connections kept 180 s (longer than the gateway's 90 s pool timeout); `Content-Length` and
//! chunked request bodies; `Expect: 100-continue`; HEAD answered without a body; the request
//! head is limited to 64 KiB (431 beyond). A panicking handler gives a 500 (the panic message
//! goes to stderr). SIGTERM: exit once the requests in progress have been answered.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use handler::{Request, Response, handle};

const MAX_HEAD: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 4096;
const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
const SIGTERM: i32 = 15;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static DRAINING: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn on_sigterm(_: i32) {
    DRAINING.store(true, Ordering::SeqCst);
    if IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(0) }
    }
}

fn main() {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.trim().parse().unwrap_or_else(|_| {
            eprintln!("PORT={p:?} is not a port number");
            std::process::exit(2)
        }),
        Err(_) => 8080,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1)
    });
    // SAFETY: installs a handler that only touches atomics and calls _exit.
    unsafe {
        signal(SIGTERM, on_sigterm as extern "C" fn(i32) as usize);
    }
    println!("rust function listening on 127.0.0.1:{port}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = thread::Builder::new().spawn(move || serve(stream)) {
                    eprintln!("cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

enum Fail {
    /// The connection broke or the peer went away: close it without an answer.
    Io,
    /// Answer with this status and message, then close.
    Bad(u16, &'static str),
}

impl From<io::Error> for Fail {
    fn from(_: io::Error) -> Self {
        Fail::Io
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        match serve_one(&mut reader, &mut writer) {
            Ok(true) => continue,
            Ok(false) | Err(Fail::Io) => break,
            Err(Fail::Bad(status, msg)) => {
                let res = Response::new(status, format!("{msg}\n"))
                    .with_header("Content-Type", "text/plain; charset=utf-8");
                let _ = write_response(&mut writer, &res, false, false, false);
                break;
            }
        }
    }
}

/// Reads one line (without its CRLF or LF) into `line`. Ok(false) at end of stream before
/// any byte. At most `*budget` bytes, which it lowers; beyond, `too_long`.
fn read_line(
    r: &mut BufReader<TcpStream>,
    budget: &mut usize,
    too_long: Fail,
    line: &mut Vec<u8>,
) -> Result<bool, Fail> {
    line.clear();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', line)?;
    if n == 0 {
        return Ok(false);
    }
    if n > *budget {
        return Err(too_long);
    }
    *budget -= n;
    if line.pop() != Some(b'\n') {
        return Err(Fail::Io);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(true)
}

/// Serves one request. Ok(true): keep the connection for another one.
fn serve_one(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> Result<bool, Fail> {
    const HEAD_TOO_LARGE: Fail = Fail::Bad(431, "request head too large");
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    loop {
        if !read_line(r, &mut budget, HEAD_TOO_LARGE, &mut line)? {
            return Ok(false);
        }
        if !line.is_empty() {
            break;
        }
    }
    let request_line = String::from_utf8_lossy(&line).into_owned();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Fail::Bad(400, "malformed request line"));
    };
    if method.is_empty() || target.is_empty() {
        return Err(Fail::Bad(400, "malformed request line"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Fail::Bad(505, "unsupported HTTP version")),
    };

    let mut headers = Vec::new();
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<String> = None;
    let (mut conn_close, mut conn_keep, mut expect) = (false, false, false);
    loop {
        if !read_line(r, &mut budget, HEAD_TOO_LARGE, &mut line)? {
            return Err(Fail::Io);
        }
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Fail::Bad(400, "folded header lines are not supported"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(Fail::Bad(400, "malformed header line"));
        };
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(Fail::Bad(400, "malformed header line"));
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim_matches([' ', '\t'])
            .to_string();
        match name.as_str() {
            "content-length" => {
                let n = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()));
                match (n, content_length) {
                    (Some(n), None) => content_length = Some(n),
                    (Some(n), Some(c)) if n == c => {}
                    _ => return Err(Fail::Bad(400, "invalid Content-Length")),
                }
            }
            "transfer-encoding" => {
                transfer_encoding = Some(match transfer_encoding {
                    Some(t) => format!("{t}, {value}"),
                    None => value.clone(),
                });
            }
            "connection" => {
                for token in value.split(',') {
                    let token = token.trim();
                    conn_close |= token.eq_ignore_ascii_case("close");
                    conn_keep |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            "expect" => expect = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        headers.push((name, value));
    }
    let mut keep = if http10 { conn_keep } else { !conn_close };

    let body = if let Some(te) = transfer_encoding {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        if http10 || !last.eq_ignore_ascii_case("chunked") {
            return Err(Fail::Bad(501, "unsupported Transfer-Encoding"));
        }
        if expect && r.buffer().is_empty() {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if content_length.is_some() {
            keep = false;
        }
        read_chunked(r)?
    } else if let Some(n) = content_length.filter(|n| *n > 0) {
        if expect && !http10 && (r.buffer().len() as u64) < n {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = Vec::with_capacity(n.min(1 << 20) as usize);
        r.by_ref().take(n).read_to_end(&mut body)?;
        if body.len() as u64 != n {
            return Err(Fail::Io);
        }
        body
    } else {
        Vec::new()
    };

    let mut target = target;
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        target = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let head_only = method == "HEAD";
    let req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    };

    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let res = panic::catch_unwind(AssertUnwindSafe(|| handle(req))).unwrap_or_else(|_| {
        Response::new(500, "Internal Server Error\n")
            .with_header("Content-Type", "text/plain; charset=utf-8")
    });
    if DRAINING.load(Ordering::SeqCst) {
        keep = false;
    }
    let written = write_response(w, &res, head_only, keep, http10);
    if IN_FLIGHT.fetch_sub(1, Ordering::SeqCst) == 1 && DRAINING.load(Ordering::SeqCst) {
        let _ = io::stdout().flush();
        std::process::exit(0);
    }
    written?;
    Ok(keep)
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Fail> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        let mut budget = MAX_CHUNK_LINE;
        if !read_line(
            r,
            &mut budget,
            Fail::Bad(400, "chunk size line too long"),
            &mut line,
        )? {
            return Err(Fail::Io);
        }
        let size = line.split(|b| *b == b';').next().unwrap_or(&[]);
        let size = std::str::from_utf8(size)
            .ok()
            .map(|s| s.trim_matches([' ', '\t']))
            .filter(|s| !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or(Fail::Bad(400, "invalid chunk size"))?;
        if size == 0 {
            let mut budget = MAX_HEAD;
            loop {
                let too_long = Fail::Bad(431, "trailers too large");
                if !read_line(r, &mut budget, too_long, &mut line)? {
                    return Err(Fail::Io);
                }
                if line.is_empty() {
                    return Ok(body);
                }
            }
        }
        let before = body.len();
        r.by_ref().take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(Fail::Io);
        }
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if crlf != *b"\r\n" {
            return Err(Fail::Bad(400, "malformed chunk"));
        }
    }
}

fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'(' && b != b')')
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn write_response(
    w: &mut TcpStream,
    res: &Response,
    head_only: bool,
    keep: bool,
    http10: bool,
) -> io::Result<()> {
    if !(100..=999).contains(&res.status) || !res.headers.iter().all(|(k, v)| valid_header(k, v)) {
        eprintln!(
            "invalid response from the handler (status {} or a header name/value); answering 500",
            res.status
        );
        let fallback = Response::new(500, "Internal Server Error\n")
            .with_header("Content-Type", "text/plain; charset=utf-8");
        return write_response(w, &fallback, head_only, keep, http10);
    }
    let status = res.status;
    let no_body = status < 200 || status == 204 || status == 304;
    let mut out = Vec::with_capacity(256 + res.body.len().min(64 * 1024));
    write!(out, "HTTP/1.1 {status} {}\r\n", reason(status))?;
    for (k, v) in &res.headers {
        if k.eq_ignore_ascii_case("content-length")
            || k.eq_ignore_ascii_case("transfer-encoding")
            || k.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !no_body {
        write!(out, "Content-Length: {}\r\n", res.body.len())?;
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body || head_only {
        w.write_all(&out)
    } else if res.body.len() <= 64 * 1024 {
        out.extend_from_slice(&res.body);
        w.write_all(&out)
    } else {
        w.write_all(&out)?;
        w.write_all(&res.body)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
