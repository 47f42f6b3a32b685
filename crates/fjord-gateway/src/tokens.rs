//! `/system/tokens`: the HTTP face of the token registry (fjord_control::tokens).

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use fjord_control::tokens::{CreatedToken, TokenInfo};

use crate::api::json_body;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /system/tokens` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateToken {
    name: String,
    scope: String,
    /// `30d`, `12h`, `90m`…; absent: never expires.
    #[serde(default)]
    expires_in: Option<String>,
}

#[utoipa::path(
    post, path = "/system/tokens", tag = "tokens",
    request_body(content = CreateToken),
    responses(
        (status = 201, description = "The token, shown this once", body = CreatedToken),
        (status = 400, description = "Malformed JSON, or a field is invalid (the message names it)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn create(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body: CreateToken = json_body(&app, req, "token request").await?;
    let out = app
        .auth
        .tokens
        .create(
            app.control.store(),
            &body.name,
            &body.scope,
            body.expires_in.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `GET /system/tokens` (admin).
#[utoipa::path(
    get, path = "/system/tokens", tag = "tokens",
    responses(
        (status = 200, description = "Every token (never the token itself or its hash)", body = [TokenInfo]),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn list(State(app): State<AppState>) -> Json<Vec<TokenInfo>> {
    Json(app.auth.tokens.list())
}

/// `DELETE /system/tokens/{id}` (admin): revokes at once.
#[utoipa::path(
    delete, path = "/system/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id (GET /system/tokens)")),
    responses(
        (status = 204, description = "Revoked: the token is refused from now on"),
        (status = 404, description = "No token with this id", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.auth.tokens.revoke(app.control.store(), &id)?;
    Ok(StatusCode::NO_CONTENT)
}
