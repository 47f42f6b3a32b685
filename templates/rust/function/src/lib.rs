//! Your fjord function.
//!
//! The runtime (the template's `main` crate) calls [`handle`] once per HTTP request, from
//! several threads at once (one per connection), so shared state must be `Sync`.
//!
//! [`Request`] and [`Response`] are defined here, in your crate, so that you own them: add
//! methods or trait impls as you like, but keep their fields, names and types — the runtime
//! builds a `Request` from each HTTP request and sends each `Response` back.

/// An HTTP request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path as sent, without the query string and not percent-decoded (`/a%20b`).
    pub path: String,
    /// The raw query string without `?`, `""` if none (`a=1&b=x%20y`).
    pub query: String,
    /// Header names lower-cased, in the order received; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    /// The body (chunked transfer encoding already decoded).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// An HTTP response. The runtime adds `Content-Length` (and `Connection` when needed); a
/// `Content-Length`, `Transfer-Encoding` or `Connection` header set here is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status and body and no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Handles one request.
pub fn handle(req: Request) -> Response {
    let body = req.body_text();
    // `echo Ada | fjord invoke` sends a trailing newline.
    let name = match body.trim() {
        "" => "world",
        name => name,
    };
    Response::new(200, format!("Hello, {name}!"))
        .with_header("Content-Type", "text/plain; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets() {
        let req = Request {
            method: "POST".into(),
            body: b"fjord".to_vec(),
            ..Default::default()
        };
        let res = handle(req);
        assert_eq!(res.status, 200);
        assert_eq!(res.body, b"Hello, fjord!");
    }

    #[test]
    fn trims_the_body() {
        let req = Request {
            method: "POST".into(),
            body: b"Ada\n".to_vec(),
            ..Request::default()
        };
        assert_eq!(handle(req).body, b"Hello, Ada!");
    }
}
