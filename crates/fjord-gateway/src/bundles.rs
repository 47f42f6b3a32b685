//! The bundle store: packed bundles by digest (`<data>/bundles/<hex>.tar.gz`), tags in the
//! state store, and per-function unpacked copies (`<data>/run/<uid>/<hex>/`, owned by root
//! and readable only by the function's group) that replicas run from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use fjord_bundle::{BundleError, Digest, Extractor, Manifest};
use fjord_core::ProcessDefaults;
use fjord_store::Store;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::AppState;
use crate::api::ApiPath;
use crate::api::json_body;
use crate::error::ApiError;

/// Largest bundle accepted by `PUT /system/bundles/{digest}`.
pub const MAX_BUNDLE_BYTES: u64 = 2 << 30;

pub struct Bundles {
    dir: PathBuf,
    run: PathBuf,
    /// Functions run under their own uid: unpack for their group only.
    isolate: bool,
}

/// `resize` means `resize:latest`, as in Docker.
pub fn normalize_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn validate_tag(tag: &str) -> Result<(), ApiError> {
    let ok = !tag.is_empty()
        && tag.len() <= 255
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "tag {:?} is not a valid image name: use letters, digits and . _ - : / (e.g. resize-image:latest)",
            tag.chars().take(80).collect::<String>()
        )))
    }
}

impl Bundles {
    pub fn new(data_dir: &Path, isolate: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = data_dir.join("bundles");
        let run = data_dir.join("run");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::create_dir_all(&run)?;
        // Private: a sandboxed function sees only its own bundle, bound at /home/app.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir, run, isolate })
    }

    fn archive(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("{}.tar.gz", d.hex()))
    }

    /// The bundle an image names: a digest (`sha256:…`) or a tag set by `fjord push`.
    pub fn resolve(&self, store: &Store, image: &str) -> Result<Option<Digest>, ApiError> {
        let digest = if image.starts_with("sha256:") {
            Some(Digest::parse(image).map_err(|e| ApiError::BadRequest(format!("image: {e}")))?)
        } else {
            store
                .tag(&normalize_tag(image))?
                .and_then(|d| Digest::parse(&d).ok())
        };
        Ok(digest.filter(|d| self.archive(d).exists()))
    }

    /// The bundle a stored version was pinned to. Its archive must still be here: falling
    /// back to the tag would run code that was never deployed.
    pub fn pinned(&self, digest: &str) -> Result<Digest, ApiError> {
        let d = Digest::parse(digest)
            .map_err(|e| ApiError::Internal(format!("pinned bundle {digest:?}: {e}")))?;
        if !self.archive(&d).exists() {
            return Err(ApiError::Internal(format!(
                "the bundle this version was deployed with ({d}) is missing from {}: deploy the function again",
                self.dir.display()
            )));
        }
        Ok(d)
    }

    /// Unpacks a bundle for one function (once per function and digest) and returns where it
    /// is and how to run it.
    pub async fn unpack_for(
        self: &Arc<Self>,
        digest: &Digest,
        uid: u32,
    ) -> Result<(PathBuf, ProcessDefaults), ApiError> {
        let this = self.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            let base = this.run.join(uid.to_string());
            let dest = base.join(digest.hex());
            // Also for directories made by an older fjord.
            std::fs::create_dir_all(&base)
                .and_then(|()| this.protect_uid_dir(&base, uid))
                .map_err(|e| ApiError::Internal(format!("{}: {e}", base.display())))?;
            let manifest = if dest.join(fjord_bundle::MANIFEST).exists() {
                Manifest::read_dir(&dest)
            } else {
                // Owned by root, readable by the function's group only; extracted by a thread
                // running as the function's uid, so even a flaw in the extractor could write
                // only where that uid may.
                Extractor::default()
                    .owner(this.isolate.then_some((0, uid)))
                    .extract_as(this.isolate.then_some((uid, uid)))
                    .unpack(&this.archive(&digest), &dest)
            }
            .map_err(|e| bundle_error(&digest, e))?;
            let mut env = manifest.env.clone();
            if manifest.mode == "http" {
                env.entry("mode".into()).or_insert_with(|| "http".into());
            }
            Ok((
                dest,
                ProcessDefaults {
                    fprocess: manifest.fprocess,
                    env,
                },
            ))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("unpacking failed: {e}")))?
    }

    /// `run/<uid>/` is the function's own: root:<gid> 0750, so no other function can list
    /// which bundles it runs (found by the isolation tests: it was 0755).
    fn protect_uid_dir(&self, base: &Path, uid: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if self.isolate {
            std::os::unix::fs::chown(base, Some(0), Some(uid))?;
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o750))
        } else {
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700))
        }
    }

    /// Removes a function's unpacked bundles (when it is deleted), keeping `keep` if given.
    pub fn remove_for(&self, uid: u32, keep: Option<&Path>) {
        let base = self.run.join(uid.to_string());
        match keep {
            None => {
                let _ = std::fs::remove_dir_all(&base);
            }
            Some(k) => {
                if let Ok(entries) = std::fs::read_dir(&base) {
                    for e in entries.flatten() {
                        if e.path() != k {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
            }
        }
    }
}

/// What the archive holds is the client's fault (400, naming the entry); the disk failing is
/// ours (500).
fn bundle_error(digest: &Digest, e: BundleError) -> ApiError {
    match e {
        BundleError::Io { .. } => ApiError::Internal(format!("bundle {digest}: {e}")),
        e => ApiError::BadRequest(format!("bundle {digest}: {e}")),
    }
}

/// `HEAD /system/bundles/{digest}`: 200 if the gateway has it (the CLI then skips the upload).
#[utoipa::path(
    head, path = "/system/bundles/{digest}", tag = "bundles",
    params(("digest" = String, Path, pattern = "^sha256:[0-9a-f]{64}$", description = "`sha256:` and the 64 hex digits of the archive's sha256", example = "sha256:0000000000000000000000000000000000000000000000000000000000000000")),
    responses(
        (status = 200, description = "The gateway has this bundle"),
        (status = 400, description = "Not a sha256 digest"),
        (status = 401, description = "Missing or wrong credentials"),
        (status = 404, description = "The gateway does not have it: upload it with PUT"),
    ),
    security(("basicAuth" = []))
)]
pub async fn head_bundle(
    State(app): State<AppState>,
    ApiPath(digest): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let d = Digest::parse(&digest).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if app.control.bundles().archive(&d).exists() {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::NotFound(format!(
            "bundle {d} is not on this gateway"
        )))
    }
}

/// `PUT /system/bundles/{digest}[?tag=name:tag]`: stores a packed bundle after checking that
/// its sha256 is the digest in the path. 201 when stored, 200 when it was already there.
#[utoipa::path(
    put, path = "/system/bundles/{digest}", tag = "bundles",
    params(
        ("digest" = String, Path, pattern = "^sha256:[0-9a-f]{64}$", description = "`sha256:` and the 64 hex digits of the archive's sha256", example = "sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        ("tag" = Option<String>, Query, description = "Image name to point at the bundle, e.g. `resize:1.2` (default tag `latest`)"),
    ),
    request_body(content = String, content_type = "application/octet-stream", description = "The bundle (tar.gz), at most 2 GiB, streamed to disk"),
    responses(
        (status = 200, description = "The gateway already had it"),
        (status = 201, description = "Stored"),
        (status = 400, description = "Not a sha256 digest, a body that does not hash to it, not a bundle, an archive that cannot be unpacked safely (the message names the entry: a link out of it, a name through a symlink, a device, ...), or a bad tag", body = String, content_type = "text/plain"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 408, description = "The upload stalled: no data for --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "Larger than 2 GiB", body = String, content_type = "text/plain"),
        (status = 500, description = "Storing it failed (disk)", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn put_bundle(
    State(app): State<AppState>,
    ApiPath(digest): ApiPath<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    req: Request<Body>,
) -> Result<StatusCode, ApiError> {
    let d = Digest::parse(&digest).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let tag = q.get("tag").map(|t| normalize_tag(t));
    if let Some(t) = &tag {
        validate_tag(t)?;
    }
    let bundles = app.control.bundles();
    let dest = bundles.archive(&d);
    let status = if dest.exists() {
        StatusCode::OK
    } else {
        let tmp = bundles.dir.join(format!(
            ".upload-{}-{}",
            d.hex(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = receive(req.into_body(), &tmp, &d, app.config.read_timeout).await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let check = tmp.clone();
        let manifest = tokio::task::spawn_blocking(move || fjord_bundle::read_manifest(&check))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Err(e) = manifest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(bundle_error(&d, e));
        }
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(|e| ApiError::Internal(format!("storing the bundle: {e}")))?;
        tracing::info!(digest = %d, "bundle stored");
        StatusCode::CREATED
    };
    if let Some(t) = tag {
        app.control.store().set_tag(&t, d.as_str())?;
    }
    Ok(status)
}

/// Streams an upload to `tmp`, checking its size and digest. A large upload may take long,
/// so `--read-timeout` bounds each wait for data (an upload that stalls gets 408), not the
/// whole transfer.
async fn receive(
    body: Body,
    tmp: &Path,
    expected: &Digest,
    idle: Option<std::time::Duration>,
) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", tmp.display())))?;
    let mut hasher = fjord_bundle::Hasher::default();
    let mut size = 0u64;
    let mut body = body;
    loop {
        let next = match idle {
            Some(t) => tokio::time::timeout(t, body.frame()).await.map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the bundle upload stalled: no data for {} (--read-timeout)",
                    humantime::format_duration(t)
                ))
            })?,
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > MAX_BUNDLE_BYTES {
                return Err(ApiError::PayloadTooLarge(format!(
                    "bundle is larger than {} GiB",
                    MAX_BUNDLE_BYTES >> 30
                )));
            }
            hasher.update(&data);
            file.write_all(&data)
                .await
                .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
        }
    }
    file.sync_all()
        .await
        .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    let got = hasher.finish();
    if &got != expected {
        return Err(ApiError::BadRequest(format!(
            "upload does not match its digest: the path says {expected}, the body hashes to {got}"
        )));
    }
    Ok(())
}

/// Points an image name at a bundle the gateway has.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct TagRequest {
    /// Image name, e.g. `resize-image:latest` (default tag `latest`).
    #[schema(pattern = "^[A-Za-z0-9._:/@-]+$", max_length = 248)]
    tag: String,
    /// `sha256:<64 hex>`.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    digest: String,
}

/// `POST /system/bundle-tags` `{"tag": "resize-image:latest", "digest": "sha256:…"}`.
#[utoipa::path(
    post, path = "/system/bundle-tags", tag = "bundles",
    request_body(content = TagRequest),
    responses(
        (status = 200, description = "Tagged"),
        (status = 400, description = "Empty or malformed body, a bad digest or tag", body = String, content_type = "text/plain"),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, description = "The gateway does not have this bundle", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn set_tag(State(app): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let r: TagRequest = json_body(&app, req, "bundle tag").await?;
    let d = Digest::parse(&r.digest).map_err(|e| ApiError::BadRequest(format!("digest: {e}")))?;
    let tag = normalize_tag(&r.tag);
    validate_tag(&tag)?;
    if !app.control.bundles().archive(&d).exists() {
        return Err(ApiError::NotFound(format!(
            "bundle {d} is not on this gateway: upload it with PUT /system/bundles/{d}"
        )));
    }
    app.control.store().set_tag(&tag, d.as_str())?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_default_to_latest() {
        assert_eq!(normalize_tag("resize"), "resize:latest");
        assert_eq!(normalize_tag("acme/resize:1.2"), "acme/resize:1.2");
        assert_eq!(
            normalize_tag("localhost:5000/resize"),
            "localhost:5000/resize:latest"
        );
        assert!(validate_tag("acme/resize:latest").is_ok());
        assert!(validate_tag("bad tag").is_err());
        assert!(validate_tag("").is_err());
    }
}
