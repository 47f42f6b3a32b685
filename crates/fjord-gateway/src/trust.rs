//! Content trust over HTTP: bundle signatures (`PUT /system/bundles/{digest}/signature`)
//! and the report of what the server's trust policy would refuse (`GET /system/trust`).
//! The verification itself is the control plane's (fjord_control::trust).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use fjord_bundle::Digest;
use fjord_trust::BundleSignatures;

use crate::api::{ApiPath, json_body};
use crate::error::ApiError;
use crate::state::AppState;

/// `PUT /system/bundles/{digest}/signature`: adds detached signatures of a bundle the
/// gateway has (kept beside it; earlier signatures stay, so a bundle can carry an old and a
/// new key's during a rotation). The keys are not checked here: the trust policy checks
/// them at every deploy.
#[utoipa::path(
    put, path = "/system/bundles/{digest}/signature", tag = "bundles",
    params(("digest" = String, Path, pattern = "^sha256:[0-9a-f]{64}$", description = "The bundle's digest", example = "sha256:0000000000000000000000000000000000000000000000000000000000000000")),
    request_body(content = BundleSignatures, description = "Signatures: each a base64 simple-signing payload naming the bundle's digest (`critical.type`: `fjord bundle signature`) and a base64 ECDSA P-256/SHA-256 signature over it (docs/trust.md)"),
    responses(
        (status = 204, description = "Stored beside the bundle"),
        (status = 400, description = "Not a sha256 digest, or not a signature document (the message says what is wrong)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The token's scope is below deploy", body = String, content_type = "text/plain"),
        (status = 404, description = "The gateway does not have this bundle: upload it first", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 500, description = "Storing it failed (disk)", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn put_bundle_signature(
    State(app): State<AppState>,
    ApiPath(digest): ApiPath<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let d = Digest::parse(&digest).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let doc: BundleSignatures = json_body(&app, req, "bundle signature").await?;
    doc.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    app.control.bundles().add_signatures(&d, doc)?;
    tracing::info!(digest = %d, "bundle signature stored");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /system/trust`: every stored function checked again under the server's trust
/// policy (signatures read again); `trust.state` is `refused` for those it would refuse
/// (and, if `running` is false, did refuse at the last start).
#[utoipa::path(
    get, path = "/system/trust", tag = "functions",
    responses(
        (status = 200, description = "One entry per stored function, by namespace and name", body = Vec<fjord_control::TrustReport>),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn report(
    State(app): State<AppState>,
) -> Result<axum::Json<Vec<fjord_control::TrustReport>>, ApiError> {
    Ok(axum::Json(app.control.trust_report().await?))
}

/// The content trust policy (`--trust-policy`), with its one startup log line either way.
pub(crate) fn policy(
    config: &crate::GatewayConfig,
) -> Result<Option<fjord_trust::Policy>, crate::StartError> {
    let Some(path) = &config.trust_policy else {
        tracing::info!(
            "content trust: no --trust-policy, unsigned images and bundles are allowed to run"
        );
        return Ok(None);
    };
    let policy = fjord_trust::Policy::load(path)?;
    tracing::info!(policy = %path.display(), rules = %policy.describe(), "content trust: policy loaded");
    Ok(Some(policy))
}
