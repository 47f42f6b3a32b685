//! Talking to registries for `fjord build --image` and `fjord push`: fetching a base image's
//! blobs as they are (compressed, to be reused unchanged) into an OCI layout, and pushing a
//! layout's image to a registry (blobs first, those the registry has skipped, then the
//! manifest).

use std::path::PathBuf;

use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::auth::DockerConfig;
use crate::client::{Failure, classify, default_docker_config, registry_client};
use crate::error::OciError;
use crate::layout::{Descriptor, Layout, MT_OCI_MANIFEST, oci_layer_media_type, sha256_hex};
use crate::reference::Reference;

/// How registries are reached and with which credentials.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host` or `host:port`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// The Docker `config.json` to read credentials from; [`default_docker_config`] when
    /// `None`.
    pub docker_config: Option<PathBuf>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401/403.
    #[error(
        "registry {registry} refused to let us {op} {reference}: {}",
        match config {
            Some(c) => format!("the credentials for {registry} in {} are wrong or lack access", c.display()),
            None => format!("it needs credentials: log in (`docker login {registry}` writes them) or add an `auths` entry for {registry} to the Docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json), or pass --registry-config FILE"),
        }
    )]
    Unauthorized {
        registry: String,
        reference: String,
        op: &'static str,
        /// The file the credentials came from, if any were sent.
        config: Option<PathBuf>,
    },
    #[error(
        "registry {registry} is unreachable ({detail}): is it running, and is the address right?"
    )]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry} refused the name {reference}: {detail}")]
    NameRefused {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("{0}")]
    Oci(#[from] OciError),
}

/// A client for one registry, with the credentials the options give for it.
pub(crate) struct Session {
    pub(crate) client: oci_client::Client,
    pub(crate) auth: RegistryAuth,
    config: Option<PathBuf>,
    reference: Reference,
    pub(crate) cref: oci_client::Reference,
}

impl Session {
    pub(crate) fn new(
        reference: &Reference,
        opts: &RegistryOptions,
    ) -> Result<Self, RegistryError> {
        let registry = reference.registry();
        let client = registry_client(registry, &opts.insecure, None);
        // An explicit file must exist; the default one may not.
        let (path, explicit) = match &opts.docker_config {
            Some(p) => (Some(p.clone()), true),
            None => (default_docker_config(), false),
        };
        let mut auth = RegistryAuth::Anonymous;
        let mut config = None;
        if let Some(p) = path
            && (explicit || p.exists())
        {
            let c = DockerConfig::load(&p).map_err(OciError::from)?;
            if let Some(creds) = c.credentials_for(registry) {
                auth = creds.to_client();
                config = Some(p);
            }
        }
        Ok(Self {
            client,
            auth,
            config,
            reference: reference.clone(),
            cref: reference.to_client(),
        })
    }

    /// Pushes an OCI image manifest (to the session's reference: its tag or digest).
    pub(crate) async fn push_manifest(&self, manifest: Vec<u8>) -> Result<(), RegistryError> {
        self.client
            .push_manifest_raw(
                &self.cref,
                manifest,
                MT_OCI_MANIFEST.parse().expect("a valid header value"),
            )
            .await
            .map(drop)
            .map_err(|e| self.err("push", e))
    }

    pub(crate) fn err(&self, op: &'static str, e: OciDistributionError) -> RegistryError {
        let registry = self.reference.registry().to_string();
        let reference = self.reference.to_string();
        match classify(e) {
            Failure::Unauthorized => RegistryError::Unauthorized {
                registry,
                reference,
                op,
                config: self.config.clone(),
            },
            Failure::NotFound(detail) => RegistryError::NotFound { reference, detail },
            Failure::NameRefused(detail) => RegistryError::NameRefused {
                registry,
                reference,
                detail,
            },
            Failure::Unreachable(detail) => RegistryError::Unreachable { registry, detail },
            Failure::DigestMismatch { expected, actual } => RegistryError::Registry {
                registry,
                detail: format!("digest mismatch: expected {expected}, got {actual}"),
            },
            Failure::Registry(detail) => RegistryError::Registry { registry, detail },
        }
    }
}

#[derive(Deserialize)]
struct AnyManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

/// A base image fetched into a layout: its linux/amd64 manifest digest, config and layers
/// (descriptors under OCI media types; the blobs are in the layout).
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub reference: Reference,
    /// The digest the reference resolved to (for the `org.opencontainers.image.base.digest`
    /// label).
    pub digest: String,
    pub config: serde_json::Value,
    pub layers: Vec<Descriptor>,
}

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    MT_OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Fetches `reference`'s linux/amd64 image into `layout` (blobs already there are not
/// downloaded again); every blob is checked against its digest. `progress` hears of each
/// layer downloaded. (For a build: the future is not `Send`, as `progress` need not be.)
pub async fn fetch_base(
    reference: &Reference,
    opts: &RegistryOptions,
    layout: &Layout,
    progress: &dyn Fn(&str),
) -> Result<BaseImage, RegistryError> {
    let s = Session::new(reference, opts)?;
    let (bytes, top) = manifest(&s, &s.cref, reference.digest()).await?;
    let m: AnyManifest = json(&s, &bytes, "manifest")?;
    let (m, digest) = if let Some(entries) = &m.manifests {
        let e = entries
            .iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| {
                RegistryError::Oci(OciError::WrongPlatform {
                    reference: reference.to_string(),
                    available: entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect(),
                })
            })?;
        let pref = reference.with_digest(&e.digest).to_client();
        let (b, d) = manifest(&s, &pref, Some(&e.digest)).await?;
        (json::<AnyManifest>(&s, &b, "manifest")?, d)
    } else {
        let _ = m.media_type;
        (m, top)
    };
    let (Some(config), Some(layers)) = (m.config, m.layers) else {
        return Err(RegistryError::Oci(OciError::Unsupported {
            reference: reference.to_string(),
            detail: "the manifest has no config or no layers".into(),
        }));
    };
    let config_bytes = blob(&s, &config.digest, layout).await?;
    let config_json: serde_json::Value = json(&s, &config_bytes, "image config")?;
    let os = config_json["os"].as_str().unwrap_or("linux");
    let arch = config_json["architecture"].as_str().unwrap_or("amd64");
    if os != "linux" || arch != "amd64" {
        return Err(RegistryError::Oci(OciError::WrongPlatform {
            reference: reference.to_string(),
            available: vec![format!("{os}/{arch}")],
        }));
    }
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let mt = oci_layer_media_type(&l.media_type).ok_or_else(|| {
            RegistryError::Oci(OciError::Unsupported {
                reference: reference.to_string(),
                detail: format!("layer {} is {}, not a tar layer", l.digest, l.media_type),
            })
        })?;
        if !layout.has_blob(&l.digest) {
            progress(&format!(
                "base layer {}/{} {} ({} KiB)",
                i + 1,
                layers.len(),
                short(&l.digest),
                l.size / 1024
            ));
        }
        blob(&s, &l.digest, layout).await?;
        out.push(Descriptor {
            media_type: mt.to_string(),
            digest: l.digest.clone(),
            size: l.size,
            annotations: None,
        });
    }
    Ok(BaseImage {
        reference: reference.clone(),
        digest,
        config: config_json,
        layers: out,
    })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn json<T: serde::de::DeserializeOwned>(
    s: &Session,
    bytes: &[u8],
    what: &str,
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Registry {
        registry: s.reference.registry().to_string(),
        detail: format!("invalid {what} for {}: {e}", s.reference),
    })
}

async fn manifest(
    s: &Session,
    cref: &oci_client::Reference,
    want: Option<&str>,
) -> Result<(Vec<u8>, String), RegistryError> {
    let (bytes, served) = s
        .client
        .pull_manifest_raw(cref, &s.auth, ACCEPT)
        .await
        .map_err(|e| s.err("pull", e))?;
    let actual = sha256_hex(&bytes);
    let expected = want.unwrap_or(&served);
    if actual != expected {
        return Err(RegistryError::Oci(OciError::DigestMismatch {
            what: format!("the manifest of {}", s.reference),
            expected: expected.to_string(),
            actual,
        }));
    }
    Ok((bytes.to_vec(), actual))
}

/// A blob from the layout if present and intact, else from the registry (verified).
async fn blob(s: &Session, digest: &str, layout: &Layout) -> Result<Vec<u8>, RegistryError> {
    if let Ok(b) = layout.read_blob(digest) {
        return Ok(b);
    }
    let mut out = Vec::new();
    s.client
        .pull_blob(&s.cref, digest, &mut out)
        .await
        .map_err(|e| s.err("pull", e))?;
    let actual = sha256_hex(&out);
    if actual != digest {
        return Err(RegistryError::Oci(OciError::DigestMismatch {
            what: format!("blob {digest} of {}", s.reference),
            expected: digest.to_string(),
            actual,
        }));
    }
    layout.put_blob(&out)?;
    Ok(out)
}

/// What a push is doing, for the progress callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// The registry has the blob already: not sent.
    Exists { digest: String, size: u64 },
    /// The blob is being sent.
    Uploading { digest: String, size: u64 },
    /// The manifest is in: the image is pullable by `digest`.
    Manifest { digest: String },
}

/// Pushes the layout's image to `reference` (its tag; a digest in it is ignored) and returns
/// the manifest's digest.
pub async fn push(
    layout: &Layout,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: &(dyn Fn(&PushEvent) + Send + Sync),
) -> Result<String, RegistryError> {
    let (desc, m) = layout.image()?;
    let s = Session::new(reference, opts)?;
    s.client
        .store_auth_if_needed(s.cref.resolve_registry(), &s.auth)
        .await;
    // Ask for push rights first: a 401 is reported before any upload.
    s.client
        .auth(&s.cref, &s.auth, RegistryOperation::Push)
        .await
        .map_err(|e| s.err("push", e))?;
    let mut blobs: Vec<&Descriptor> = m.layers.iter().collect();
    blobs.push(&m.config);
    for b in blobs {
        let exists = s
            .client
            .blob_exists(&s.cref, &b.digest)
            .await
            .map_err(|e| s.err("push", e))?;
        if exists {
            progress(&PushEvent::Exists {
                digest: b.digest.clone(),
                size: b.size,
            });
            continue;
        }
        progress(&PushEvent::Uploading {
            digest: b.digest.clone(),
            size: b.size,
        });
        let bytes = layout.read_blob(&b.digest)?;
        s.client
            .push_blob(&s.cref, bytes, &b.digest)
            .await
            .map_err(|e| s.err("push", e))?;
    }
    s.push_manifest(layout.read_blob(&desc.digest)?).await?;
    progress(&PushEvent::Manifest {
        digest: desc.digest.clone(),
    });
    Ok(desc.digest)
}
