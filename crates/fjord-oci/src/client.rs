//! What pulls (store.rs) and pushes (push.rs) share about talking to a registry: which
//! registries get plain HTTP, the client's settings, where Docker keeps credentials, and what
//! an `oci-client` error means.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};

use crate::error::chain;
use crate::reference::host_of;

/// Plain HTTP only to loopback registries and those named `insecure`; HTTPS to every other.
pub(crate) fn plain_http(insecure: &[String], registry: &str) -> bool {
    let host = host_of(registry);
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback || insecure.iter().any(|i| i == registry || i == host)
}

/// A client for `registry` (rustls with ring; bounded connect and read times).
pub(crate) fn registry_client(
    registry: &str,
    insecure: &[String],
    max_concurrent_download: Option<usize>,
) -> oci_client::Client {
    // The one provider the workspace uses; an error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if plain_http(insecure, registry) {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    let defaults = ClientConfig::default();
    oci_client::Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        max_concurrent_download: max_concurrent_download
            .unwrap_or(defaults.max_concurrent_download),
        ..defaults
    })
}

/// Where Docker keeps credentials: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json` (the file may not exist).
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// What a failed registry request means, before the caller names it in its own error type.
pub(crate) enum Failure {
    /// 401/403, or the registry's UNAUTHORIZED/DENIED codes.
    Unauthorized,
    /// 404, or the registry's *_UNKNOWN codes.
    NotFound(String),
    /// The registry refuses the repository name or tag.
    NameRefused(String),
    /// Content that does not hash to its digest.
    DigestMismatch { expected: String, actual: String },
    /// No HTTP answer at all (refused, timed out, DNS).
    Unreachable(String),
    /// Any other answer of the registry.
    Registry(String),
}

pub(crate) fn classify(e: OciDistributionError) -> Failure {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Failure::Unauthorized,
        OciDistributionError::ServerError {
            code: 404, message, ..
        } => Failure::NotFound(format!("the registry answered 404 {}", message.trim())),
        OciDistributionError::ImageManifestNotFoundError(m) => Failure::NotFound(m),
        OciDistributionError::RegistryError { envelope, .. } => {
            let has = |f: fn(&OciErrorCode) -> bool| envelope.errors.iter().any(|e| f(&e.code));
            let detail = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            if has(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                Failure::Unauthorized
            } else if has(|c| matches!(c, OciErrorCode::NameInvalid | OciErrorCode::TagInvalid)) {
                Failure::NameRefused(detail)
            } else if has(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Failure::NotFound(detail)
            } else {
                Failure::Registry(detail)
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            Failure::DigestMismatch { expected, actual }
        }
        // Some calls (blob_exists) turn a 401 into a plain HTTP error.
        OciDistributionError::RequestError(e)
            if e.status()
                .is_some_and(|c| c.as_u16() == 401 || c.as_u16() == 403) =>
        {
            Failure::Unauthorized
        }
        OciDistributionError::RequestError(e) if e.status().is_some() => {
            Failure::Registry(chain(&e))
        }
        OciDistributionError::RequestError(e) => Failure::Unreachable(chain(&e)),
        other => Failure::Registry(chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_insecure_registries() {
        let insecure = vec!["reg.lan".to_string(), "other.lan:5000".to_string()];
        for (registry, plain) in [
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("reg.lan:443", true),
            ("reg.lan", true),
            ("other.lan:5000", true),
            ("other.lan:5001", false),
            ("docker.io", false),
            ("10.0.0.1:5000", false),
            ("localhost.example.com", false),
            ("[::2]:5000", false),
        ] {
            assert_eq!(plain_http(&insecure, registry), plain, "{registry}");
        }
    }
}
