//! Image signatures where cosign keeps them: for the image `sha256:H` in repository R, an
//! OCI manifest tagged `sha256-H.sig` in R, one layer per signature. Each layer's blob is
//! the signed payload (media type [`SIMPLE_SIGNING_MEDIA_TYPE`]) and its annotation
//! [`SIGNATURE_ANNOTATION`] holds the base64 signature. This module only moves those bytes:
//! what they mean is fjord-trust's business.

use oci_client::RegistryOperation;
use serde_json::json;

use crate::auth::{Credentials, DockerConfig};
use crate::client::registry_client;
use crate::error::OciError;
use crate::layout::{MT_OCI_MANIFEST, sha256_hex};
use crate::push::{RegistryError, RegistryOptions, Session};
use crate::reference::Reference;
use crate::store::ImageStore;

/// cosign's media type for a signature layer's payload.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Payloads are small JSON documents (cosign's are ~250 bytes): never read a large blob.
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// The most signature layers read for one image.
const MAX_LAYERS: usize = 64;
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ACCEPT: &[&str] = &[
    MT_OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// One signature found next to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob (verified against its digest).
    pub payload: Vec<u8>,
    /// The base64 signature from the layer's annotation.
    pub signature: String,
}

/// The tag cosign stores `digest`'s signatures under: `sha256:H` → `sha256-H.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

#[derive(serde::Deserialize)]
struct SigManifest {
    #[serde(default)]
    layers: Vec<SigLayer>,
}

#[derive(serde::Deserialize, serde::Serialize, Clone, PartialEq)]
struct SigLayer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl SigLayer {
    fn signature(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get(SIGNATURE_ANNOTATION)
            .map(String::as_str)
    }
}

/// Adds a signature of `digest` (an image in `reference`'s repository) to the registry, as
/// `cosign sign` does: the payload blob, then the signature manifest with the signatures
/// already there plus this one. Returns the signature manifest's reference.
pub async fn push_signature(
    reference: &Reference,
    digest: &str,
    payload: &[u8],
    signature: &str,
    opts: &RegistryOptions,
) -> Result<Reference, RegistryError> {
    let target = reference.with_tag(&signature_tag(digest));
    let s = Session::new(&target, opts)?;
    s.client
        .store_auth_if_needed(s.cref.resolve_registry(), &s.auth)
        .await;
    s.client
        .auth(&s.cref, &s.auth, RegistryOperation::Push)
        .await
        .map_err(|e| s.err("push", e))?;
    let mut layers = match s.client.pull_manifest_raw(&s.cref, &s.auth, ACCEPT).await {
        Ok((bytes, _)) => serde_json::from_slice::<SigManifest>(&bytes)
            .map(|m| m.layers)
            .unwrap_or_default(),
        Err(e) => match s.err("pull", e) {
            RegistryError::NotFound { .. } => Vec::new(),
            e => return Err(e),
        },
    };
    let payload_digest = sha256_hex(payload);
    let layer = SigLayer {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_string(),
        digest: payload_digest.clone(),
        size: payload.len() as u64,
        annotations: Some([(SIGNATURE_ANNOTATION.to_string(), signature.to_string())].into()),
    };
    if layers.contains(&layer) {
        return Ok(target);
    }
    let blob = async |bytes: Vec<u8>, digest: &str| -> Result<(), RegistryError> {
        let exists = s
            .client
            .blob_exists(&s.cref, digest)
            .await
            .map_err(|e| s.err("push", e))?;
        if !exists {
            s.client
                .push_blob(&s.cref, bytes, digest)
                .await
                .map_err(|e| s.err("push", e))?;
        }
        Ok(())
    };
    blob(payload.to_vec(), &payload_digest).await?;
    layers.push(layer);
    // The config cosign writes: an empty image whose "layers" are the payloads.
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        "config": {},
    }))
    .expect("plain JSON");
    let config_digest = sha256_hex(&config);
    let config_size = config.len();
    blob(config, &config_digest).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "size": config_size, "digest": config_digest},
        "layers": layers,
    }))
    .expect("plain JSON");
    s.push_manifest(manifest).await?;
    Ok(target)
}

/// The digest `reference`'s tag names in its registry now (what `fjord sign IMAGE:TAG`
/// signs).
pub async fn resolve_digest(
    reference: &Reference,
    opts: &RegistryOptions,
) -> Result<String, RegistryError> {
    let s = Session::new(reference, opts)?;
    s.client
        .fetch_manifest_digest(&s.cref, &s.auth)
        .await
        .map_err(|e| s.err("pull", e))
}

impl ImageStore {
    /// The digest `reference` names: its own, or the one the registry serves for its tag now
    /// (a HEAD request; nothing is pulled).
    pub async fn resolve_digest(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<String, OciError> {
        if let Some(d) = reference.digest() {
            return Ok(d.to_string());
        }
        let (client, auth, given) = self.session(reference, credentials)?;
        client
            .fetch_manifest_digest(&reference.to_client(), &auth)
            .await
            .map_err(|e| crate::store::classify_for(reference, given, e))
    }

    /// A client for `reference`'s registry and the credentials to use: those given, else the
    /// Docker config's entry, else none.
    fn session(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<(oci_client::Client, oci_client::secrets::RegistryAuth, bool), OciError> {
        let config = self.config();
        let docker_config;
        let creds = match credentials {
            Some(c) => Some(c),
            None => match &config.docker_config {
                Some(path) => {
                    docker_config = DockerConfig::load(path)?;
                    docker_config.credentials_for(reference.registry())
                }
                None => None,
            },
        };
        let client = registry_client(reference.registry(), &config.insecure, None);
        let auth = creds.map_or(
            oci_client::secrets::RegistryAuth::Anonymous,
            Credentials::to_client,
        );
        Ok((client, auth, creds.is_some()))
    }

    /// The signatures stored next to image `digest` of `reference`'s repository (none when
    /// the registry has no signature manifest for it). Each payload is checked against its
    /// digest; layers that are not simple-signing payloads or carry no signature are skipped.
    pub async fn signatures(
        &self,
        reference: &Reference,
        digest: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<SignatureLayer>, OciError> {
        let target = reference.with_tag(&signature_tag(digest));
        let (client, auth, given) = self.session(reference, credentials)?;
        let cref = target.to_client();
        let err = |e| crate::store::classify_for(&target, given, e);
        let bytes = match client.pull_manifest_raw(&cref, &auth, ACCEPT).await {
            Ok((bytes, _)) => bytes,
            Err(e) => match err(e) {
                OciError::NotFound { .. } => return Ok(Vec::new()),
                e => return Err(e),
            },
        };
        let m: SigManifest = serde_json::from_slice(&bytes).map_err(|e| OciError::Registry {
            registry: reference.registry().to_string(),
            detail: format!("invalid signature manifest {target}: {e}"),
        })?;
        let mut out = Vec::new();
        for l in m.layers.iter().take(MAX_LAYERS) {
            let Some(signature) = l.signature() else {
                continue;
            };
            if l.media_type != SIMPLE_SIGNING_MEDIA_TYPE || l.size > MAX_PAYLOAD_BYTES {
                continue;
            }
            let mut payload = Vec::new();
            client
                .pull_blob(&cref, l.digest.as_str(), &mut payload)
                .await
                .map_err(err)?;
            let actual = sha256_hex(&payload);
            if actual != l.digest {
                return Err(OciError::DigestMismatch {
                    what: format!("signature payload of {target}"),
                    expected: l.digest.clone(),
                    actual,
                });
            }
            out.push(SignatureLayer {
                payload,
                signature: signature.to_string(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_tag_is_cosigns() {
        assert_eq!(
            signature_tag("sha256:0123abcd"),
            "sha256-0123abcd.sig".to_string()
        );
    }
}
