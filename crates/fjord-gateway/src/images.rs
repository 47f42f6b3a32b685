//! The image store (fjord-oci) as the control plane's [`ImageSource`]: pulls by the
//! Kubernetes pull policy, registry credentials from a function's secret or the server's
//! Docker config, pull progress in the server log, errors mapped to what the user must fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fjord_control::images::{GcReport, ImageError, ImageSource, PullWatch, RegistryAuth};
use fjord_oci::{Credentials, DockerConfig, ImageStore, OciError, PullPolicy, Reference};
use fjord_runtime_api::{BoxFuture, ImageRootfs};

pub struct OciImages {
    store: Arc<ImageStore>,
}

impl OciImages {
    pub fn new(store: Arc<ImageStore>) -> Self {
        Self { store }
    }
}

fn parse(reference: &str) -> Result<Reference, ImageError> {
    Reference::parse(reference).map_err(|e| {
        ImageError::Invalid(format!(
            "image: {reference:?} is not an image reference: {e}"
        ))
    })
}

/// The credentials for `r`'s registry in a function's registry-auth secret.
fn credentials(
    r: &Reference,
    auth: Option<&RegistryAuth>,
) -> Result<Option<Credentials>, ImageError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&auth.0).map_err(|_| {
        ImageError::Invalid(
            "the registry-auth secret is not UTF-8 text: store a Docker config.json in it".into(),
        )
    })?;
    let config = DockerConfig::parse(text).map_err(|e| {
        ImageError::Invalid(format!(
            "the registry-auth secret is not a Docker config.json ({e}): store the output of `docker login` (~/.docker/config.json) in it"
        ))
    })?;
    match config.credentials_for(r.registry()) {
        Some(c) => Ok(Some(c.clone())),
        None => Err(ImageError::Invalid(format!(
            "the registry-auth secret has no credentials for {}: add an \"auths\" entry for it",
            r.registry()
        ))),
    }
}

fn image_error(e: OciError) -> ImageError {
    match e {
        OciError::Unreachable { .. } | OciError::Registry { .. } => {
            ImageError::Unreachable(e.to_string())
        }
        OciError::Io { .. } => ImageError::Internal(format!("image store: {e}")),
        e => ImageError::Invalid(e.to_string()),
    }
}

impl OciImages {
    async fn fetch(
        &self,
        r: &Reference,
        policy: PullPolicy,
        auth: Option<&RegistryAuth>,
        watch: &PullWatch,
    ) -> Result<Arc<ImageRootfs>, ImageError> {
        let creds = credentials(r, auth)?;
        let started = Instant::now();
        let name = r.to_string();
        // One log line per layer download (not per chunk; layers download in parallel, so
        // remember which were logged: a bit per layer index, more than 64 layers are rare).
        let logged = AtomicU64::new(0);
        let progress = |p: &fjord_oci::Progress| {
            use fjord_oci::LayerState;
            let bit = 1u64 << (p.index % 64);
            if p.state == LayerState::Downloading
                && logged.fetch_or(bit, Ordering::Relaxed) & bit == 0
            {
                tracing::info!(image = %name, layer = %p.layer, index = p.index + 1, count = p.count, bytes = p.total, "pulling layer");
            }
            let (bytes, done) = match p.state {
                LayerState::Downloading => (p.bytes, false),
                LayerState::Unpacking => (p.total, false),
                LayerState::Present | LayerState::Done => (p.total, true),
            };
            watch.layer(p.index, p.count, bytes, p.total, done);
        };
        let image = self
            .store
            .pull(r, policy, creds.as_ref(), &progress)
            .await
            .map_err(image_error)?;
        tracing::info!(image = %name, digest = %image.digest, elapsed_ms = started.elapsed().as_millis() as u64, "image ready");
        Ok(Arc::new(image))
    }
}

impl ImageSource for OciImages {
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        auth: Option<&'a RegistryAuth>,
        watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>> {
        Box::pin(async move {
            let r = parse(reference)?;
            self.fetch(&r, PullPolicy::default_for(&r), auth, watch)
                .await
        })
    }

    fn pinned<'a>(
        &'a self,
        reference: &'a str,
        digest: &'a str,
        auth: Option<&'a RegistryAuth>,
        watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>> {
        Box::pin(async move {
            if let Some(image) = self.store.get(digest).map_err(image_error)? {
                return Ok(Arc::new(image));
            }
            // Gone from the store (collected, or a new data dir): the same digest again.
            let r = parse(reference)?.with_digest(digest);
            self.fetch(&r, PullPolicy::IfNotPresent, auth, watch).await
        })
    }

    fn resolve<'a>(
        &'a self,
        reference: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<Option<String>, ImageError>> {
        Box::pin(async move {
            let r = parse(reference)?;
            let creds = credentials(&r, auth)?;
            let d = self
                .store
                .resolve_digest(&r, creds.as_ref())
                .await
                .map_err(image_error)?;
            Ok(Some(d))
        })
    }

    fn signatures<'a>(
        &'a self,
        reference: &'a str,
        digest: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<Vec<fjord_trust::Signature>, ImageError>> {
        Box::pin(async move {
            let r = parse(reference)?;
            let creds = credentials(&r, auth)?;
            let found = self
                .store
                .signatures(&r, digest, creds.as_ref())
                .await
                .map_err(image_error)?;
            Ok(found
                .into_iter()
                .map(|s| fjord_trust::Signature {
                    payload: s.payload,
                    signature: s.signature,
                })
                .collect())
        })
    }

    fn gc<'a>(&'a self, keep: &'a [String]) -> BoxFuture<'a, Result<GcReport, ImageError>> {
        Box::pin(async move {
            let r = self.store.gc(keep).await.map_err(image_error)?;
            Ok(GcReport {
                images: r.images.len(),
                layers: r.layers.len(),
                bytes: r.bytes,
            })
        })
    }
}
