//! `/system/bundles`: uploads and tags for the bundle store (fjord_control::bundles).

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use std::path::Path;

use fjord_bundle::Digest;
use fjord_control::bundles::{MAX_BUNDLE_BYTES, normalize_tag, validate_tag};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::api::ApiPath;
use crate::api::json_body;
use crate::error::ApiError;
use crate::state::AppState;

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
        (status = 401, response = crate::responses::Unauthorized),
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
        let tmp = bundles.upload_path(&d);
        let result = receive(req.into_body(), &tmp, &d, app.config.read_timeout).await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        bundles.admit(&d, tmp).await?;
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
        (status = 401, response = crate::responses::Unauthorized),
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

/// `POST /system/images/gc`: removes the container images and layers no function uses
/// (fjord also does this after every delete and every update of a container function).
#[utoipa::path(
    post, path = "/system/images/gc", tag = "images",
    responses(
        (status = 200, description = "What was removed", body = fjord_control::images::GcReport),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 500, description = "The image store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn gc_images(
    State(app): State<AppState>,
) -> Result<axum::Json<fjord_control::images::GcReport>, ApiError> {
    Ok(axum::Json(app.control.gc_images().await?))
}
