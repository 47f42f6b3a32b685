//! `/system/secrets` (as in OpenFaaS): the HTTP face of the secrets vault
//! (fjord_control::secrets). Values are never returned by the API nor logged.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use base64::Engine;
use fjord_core::DEFAULT_NAMESPACE;
use fjord_core::openfaas::{Secret, SecretDescription};
use zeroize::Zeroizing;

use crate::api::{json_body, namespace_param};
use crate::error::ApiError;
use crate::state::AppState;
use fjord_control::secrets::validate_name;

fn namespace_of(body: Option<&str>, q: &HashMap<String, String>) -> Result<String, ApiError> {
    match body.filter(|n| !n.is_empty()) {
        Some(ns) => {
            fjord_core::names::validate_label("namespace", ns)?;
            Ok(ns.to_string())
        }
        None => Ok(namespace_param(q)?.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())),
    }
}

/// The value of a create/update: `value` (text), else `rawValue` (base64).
fn value_of(s: &Secret) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    if let Some(v) = s.value.as_deref().filter(|v| !v.is_empty()) {
        return Ok(Zeroizing::new(v.as_bytes().to_vec()));
    }
    if let Some(raw) = s.raw_value.as_deref().filter(|v| !v.is_empty()) {
        return base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map(Zeroizing::new)
            .map_err(|e| {
                ApiError::BadRequest(format!("rawValue: not valid base64 ({e}): encode the bytes with standard base64, or send text in value"))
            });
    }
    Err(ApiError::BadRequest(
        "value: the secret has no value: give it as value (text) or rawValue (base64)".into(),
    ))
}

/// `GET /system/secrets[?namespace=]`: names only, never values.
#[utoipa::path(
    get, path = "/system/secrets", tag = "secrets",
    params(("namespace" = Option<String>, Query, description = "Default openfaas-fn")),
    responses(
        (status = 200, description = "The secrets' names (never their values)", body = [fjord_core::openfaas::SecretDescription]),
        (status = 400, description = "Invalid namespace", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed, or the secrets key cannot open a stored secret", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<SecretDescription>>, ApiError> {
    let ns = namespace_of(None, &q)?;
    Ok(Json(app.control.list_secrets(&ns)?))
}

/// The `Secret` body of a POST/PUT/DELETE, its name checked, and the namespace it is in.
async fn read_secret(
    app: &AppState,
    q: &HashMap<String, String>,
    req: Request,
) -> Result<(String, Secret), ApiError> {
    let s: Secret = json_body(app, req, "Secret").await?;
    validate_name("name", &s.name)?;
    let ns = namespace_of(s.namespace.as_deref(), q)?;
    Ok((ns, s))
}

/// `POST /system/secrets`: 202, 409 if it exists.
#[utoipa::path(
    post, path = "/system/secrets", tag = "secrets",
    params(("namespace" = Option<String>, Query, description = "Default openfaas-fn")),
    request_body(content = fjord_core::openfaas::Secret, description = "`value` (text) or `rawValue` (base64)"),
    responses(
        (status = 202, description = "Stored, encrypted"),
        (status = 400, description = "Malformed JSON, or a field is invalid (the message names it)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 409, description = "A secret with this name exists: update it with PUT", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed, or the secrets key cannot open a stored secret", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn create(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let (ns, s) = read_secret(&app, &q, req).await?;
    let value = value_of(&s)?;
    app.control.create_secret(&ns, &s.name, &value).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `PUT /system/secrets`: 202, 404 if absent. Functions using it roll to the new value.
#[utoipa::path(
    put, path = "/system/secrets", tag = "secrets",
    params(("namespace" = Option<String>, Query, description = "Default openfaas-fn")),
    request_body(content = fjord_core::openfaas::Secret, description = "`value` (text) or `rawValue` (base64)"),
    responses(
        (status = 202, description = "Replaced; the functions that use it roll to the new value"),
        (status = 400, description = "Malformed JSON, or a field is invalid (the message names it)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 404, description = "No secret with this name: create it with POST", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed, or the secrets key cannot open a stored secret", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn update(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let (ns, s) = read_secret(&app, &q, req).await?;
    let value = value_of(&s)?;
    app.control.update_secret(&ns, &s.name, &value).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `DELETE /system/secrets` `{"name","namespace"?}` (or `?namespace=`): 202, 404 if absent,
/// 409 naming the functions that still use it.
#[utoipa::path(
    delete, path = "/system/secrets", tag = "secrets",
    params(("namespace" = Option<String>, Query, description = "Default openfaas-fn")),
    request_body(content = fjord_core::openfaas::Secret, description = "`name` (and `namespace`)"),
    responses(
        (status = 202, description = "Deleted"),
        (status = 400, description = "Malformed JSON, or a field is invalid (the message names it)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 404, description = "No secret with this name", body = String, content_type = "text/plain"),
        (status = 409, description = "Functions still use it (the message names them)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed, or the secrets key cannot open a stored secret", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn delete(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let (ns, s) = read_secret(&app, &q, req).await?;
    app.control.delete_secret(&ns, &s.name).await?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let s = |v: Option<&str>, r: Option<&str>| Secret {
            name: "x".into(),
            namespace: None,
            value: v.map(Into::into),
            raw_value: r.map(Into::into),
        };
        assert_eq!(&**value_of(&s(Some("v"), None)).unwrap(), b"v");
        assert_eq!(&**value_of(&s(Some(""), Some("AAE="))).unwrap(), &[0u8, 1]);
        assert!(
            value_of(&s(None, Some("!!")))
                .unwrap_err()
                .to_string()
                .starts_with("rawValue:")
        );
        assert!(
            value_of(&s(None, None))
                .unwrap_err()
                .to_string()
                .starts_with("value:")
        );
    }
}
