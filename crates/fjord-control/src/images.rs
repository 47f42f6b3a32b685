//! Container images as the control plane sees them: an [`ImageSource`] pulls an image
//! reference (or finds a pinned digest again) and hands back its unpacked layers; the
//! control plane pins the deployment to the digest and gives the layers to the container
//! runtime. The image store (fjord-oci) implements it; tests use a fake.

use std::sync::Arc;

use fjord_runtime_api::{BoxFuture, ImageRootfs};
use zeroize::Zeroizing;

/// The annotation naming a secret (in the function's namespace) that holds registry
/// credentials for pulling its image, as a Docker `config.json` (`.dockerconfigjson`).
pub const REGISTRY_AUTH_ANNOTATION: &str = "com.fjord.registry-auth";

/// Registry credentials for one pull: a Docker `config.json` document (`{"auths": {...}}`).
pub struct RegistryAuth(pub Zeroizing<Vec<u8>>);

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The user's to fix (shown as 400): an invalid reference, an unknown repository or tag,
    /// missing or wrong credentials, no linux/amd64 image, a layer that cannot be unpacked
    /// safely or is too large. The message names the image and what to do.
    #[error("{0}")]
    Invalid(String),
    /// The registry could not be reached or failed (shown as 502).
    #[error("{0}")]
    Unreachable(String),
    /// Ours: the disk, the store (500).
    #[error("{0}")]
    Internal(String),
}

/// What image garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct GcReport {
    /// Images (manifests and their configs) removed.
    pub images: usize,
    /// Unpacked layers removed.
    pub layers: usize,
    /// Bytes freed on disk.
    pub bytes: u64,
}

/// How far a pull has come, layer by layer: the image source reports into it, the
/// function's status reads it (`fjord.pull`) while the deploy waits for the pull.
#[derive(Default)]
pub struct PullWatch {
    layers: std::sync::Mutex<Vec<LayerPull>>,
}

#[derive(Default, Clone, Copy)]
struct LayerPull {
    bytes: u64,
    total: u64,
    done: bool,
}

/// A summary of a [`PullWatch`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PullSnapshot {
    pub layers: usize,
    pub layers_done: usize,
    /// Bytes downloaded (layers already present count as downloaded).
    pub bytes: u64,
    /// Sum of the layers' sizes known so far (a layer's size is known when its download
    /// starts).
    pub total_bytes: u64,
}

impl PullWatch {
    /// Layer `index` of `count` has `bytes` of `total`; `done` once it is unpacked (or was
    /// already present).
    pub fn layer(&self, index: usize, count: usize, bytes: u64, total: u64, done: bool) {
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        if layers.len() < count {
            layers.resize(count, LayerPull::default());
        }
        if let Some(l) = layers.get_mut(index) {
            *l = LayerPull {
                bytes: bytes.max(l.bytes),
                total: total.max(l.total),
                done: done || l.done,
            };
        }
    }

    pub fn snapshot(&self) -> PullSnapshot {
        let layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        PullSnapshot {
            layers: layers.len(),
            layers_done: layers.iter().filter(|l| l.done).count(),
            bytes: layers.iter().map(|l| l.bytes).sum(),
            total_bytes: layers.iter().map(|l| l.total).sum(),
        }
    }
}

/// Where container images come from.
pub trait ImageSource: Send + Sync + 'static {
    /// Resolves `reference` and pulls what is missing, by the pull policy of Kubernetes
    /// (`:latest` or no tag: check the registry's digest; another tag: only if not present;
    /// a digest: never when present). The result's `digest` is what the deployment pins.
    /// Layers' progress goes to `watch`.
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        auth: Option<&'a RegistryAuth>,
        watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>>;

    /// The image a version was pinned to: from the local store, or pulled by digest from
    /// `reference`'s repository if it is gone (never what the tag names today).
    fn pinned<'a>(
        &'a self,
        reference: &'a str,
        digest: &'a str,
        auth: Option<&'a RegistryAuth>,
        watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>>;

    /// The digest `reference` names now (its own digest if it has one; else the registry's
    /// answer for its tag), without pulling anything: what the trust policy verifies before
    /// a pull. `None`: this source cannot tell before pulling (verified after the pull).
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<Option<String>, ImageError>> {
        let _ = (reference, auth);
        Box::pin(async { Ok(None) })
    }

    /// The signatures stored next to image `digest` of `reference`'s repository (cosign's
    /// `sha256-<hex>.sig` tag); empty when it has none. Sources that cannot hold
    /// signatures (test fakes) have none.
    fn signatures<'a>(
        &'a self,
        reference: &'a str,
        digest: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<Vec<fjord_trust::Signature>, ImageError>> {
        let _ = (reference, digest, auth);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Removes images and layers no digest in `keep` needs.
    fn gc<'a>(&'a self, keep: &'a [String]) -> BoxFuture<'a, Result<GcReport, ImageError>>;
}
