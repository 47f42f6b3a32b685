//! HTTPS for `fjord serve --tls-cert/--tls-key`: rustls (ring), HTTP/2 and HTTP/1.1 by ALPN,
//! and certificate reload without a restart (on SIGHUP, and when the files change). A new
//! certificate that cannot be loaded is logged and the one in use keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Where the certificate chain and its private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate could not be loaded; names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "TLS key {key} does not belong to the certificate {cert} ({reason}): give the key the certificate was issued for"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Reads and checks a certificate chain and its key.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: files.cert.clone(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let cert_pem = std::fs::read(&files.cert).map_err(|e| cert_err(format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "holds no certificate (expected PEM blocks -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key_pem = std::fs::read(&files.key).map_err(|e| key_err(format!("cannot read: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(format!(
            "no private key found ({e}); expected PEM -----BEGIN PRIVATE KEY----- (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY"
        ))
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_err(format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
                reason: "their public keys differ".into(),
            })
        }
        Err(e) => Err(cert_err(format!("not a valid X.509 certificate: {e}"))),
    }
}

/// Short SHA-256 fingerprint of a certificate's leaf, for logs.
fn fingerprint(ck: &CertifiedKey) -> String {
    ck.cert.first().map_or_else(String::new, |c| {
        Sha256::digest(c.as_ref())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// Hands every handshake the current certificate; reload swaps it atomically.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The TLS side of the gateway: one rustls config for every worker, whose certificate can be
/// replaced while serving.
pub struct Tls {
    pub files: TlsFiles,
    resolver: Arc<CertResolver>,
    pub config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Loads the certificate (errors name the file) and builds the server config.
    pub fn new(files: TlsFiles) -> Result<Tls, TlsError> {
        let ck = load(&files)?;
        tracing::info!(cert = %files.cert.display(), fingerprint = %fingerprint(&ck), "TLS certificate loaded");
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::new(ck),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Cert {
                path: files.cert.clone(),
                reason: format!("TLS setup: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            resolver,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and swaps the certificate in; on error the old one stays.
    pub fn reload(&self, why: &str) {
        match load(&self.files) {
            Ok(ck) => {
                let fp = fingerprint(&ck);
                self.resolver.current.store(ck);
                tracing::info!(cert = %self.files.cert.display(), fingerprint = %fp, "TLS certificate reloaded ({why})");
            }
            Err(e) => {
                tracing::error!(
                    "TLS certificate not reloaded ({why}), still serving the previous one: {e}"
                )
            }
        }
    }

    /// Reloads on SIGHUP and when either file changes (polled every `every`), until the
    /// task is aborted.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still watched");
                None
            }
        };
        let stamp = |p: &Path| -> Option<(SystemTime, u64, u64)> {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        };
        let mut seen = (stamp(&self.files.cert), stamp(&self.files.key));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = (stamp(&self.files.cert), stamp(&self.files.key));
                    // Remember what was tried, so a broken pair is reported once; replacing
                    // the key after the certificate is a second change and is tried again.
                    if now != seen {
                        seen = now;
                        self.reload("the files changed");
                    }
                }
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.reload("SIGHUP"),
            }
        }
    }
}
