use std::path::PathBuf;

use crate::auth::AuthConfigError;
use crate::reference::ReferenceError;

/// Errors of the image store. The server maps them to HTTP statuses: `InvalidReference`,
/// `WrongPlatform`, `BadLayer`, `LayerTooLarge`, `Unsupported` → 400 (the deployment's
/// fault), `NotFound` → 404, `Unauthorized` → 401/403 shown to the user, `Unreachable` and
/// `Registry` → 502, `DigestMismatch` → 502 (the registry served something else), `Io` → 500.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid image reference {reference:?}: {source}")]
    InvalidReference {
        reference: String,
        source: ReferenceError,
    },
    /// The registry has no such repository, tag or digest (404), or the image is not
    /// present locally and the pull policy forbids pulling it.
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    /// 401/403 from the registry.
    #[error(
        "registry {registry} refused to serve {reference}: {}",
        if *.credentials_given { "the credentials given are wrong or lack access" } else { "it needs credentials and none were given (a Docker config entry or the function's registry-auth secret)" }
    )]
    Unauthorized {
        registry: String,
        reference: String,
        credentials_given: bool,
    },
    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    /// The image has no linux/amd64 variant.
    #[error("image {reference} has no linux/amd64 variant; it has: {}", if available.is_empty() { "none listed".to_string() } else { available.join(", ") })]
    WrongPlatform {
        reference: String,
        available: Vec<String>,
    },
    /// Content that does not hash to the digest that names it: never stored, never used.
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("layer {digest} is larger than the {limit}-byte limit for {which} layers")]
    LayerTooLarge {
        digest: String,
        /// `compressed` or `unpacked`.
        which: &'static str,
        limit: u64,
    },
    /// The layer holds an entry that cannot be unpacked safely (`..`, an escaping link, a
    /// device, …) or is not a valid tar stream.
    #[error("layer {digest}: {}{reason}", if entry.is_empty() { String::new() } else { format!("entry {entry} ") })]
    BadLayer {
        digest: String,
        entry: String,
        reason: String,
    },
    /// A manifest or media type fjord does not handle (schema 1, zstd layers, …).
    #[error("image {reference}: {detail}")]
    Unsupported { reference: String, detail: String },
    /// Any other failure of the registry (5xx, a protocol violation, an invalid manifest).
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("registry credentials: {0}")]
    AuthConfig(#[from] AuthConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciError {
    let path = path.into();
    move |source| OciError::Io { path, source }
}

/// An error and its sources, on one line (reqwest's own message omits the cause).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
