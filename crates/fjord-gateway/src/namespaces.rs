//! `/system/namespace/{name}`: namespaces with labels and annotations, as OpenFaaS's
//! namespaces API has them.
//!
//! A namespace exists when it was created here, or when it holds functions or secrets
//! (deploying into a new namespace still works, as it always has in fjord), and
//! `openfaas-fn` always exists. Only created namespaces have a record, so only they keep
//! labels and annotations; `PUT` on an implicit namespace gives it one.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use fjord_core::DEFAULT_NAMESPACE;
use fjord_core::openfaas::FunctionNamespace;
use fjord_store::StoredNamespace;

use crate::api::{ApiPath, json_body};
use crate::error::ApiError;
use crate::state::AppState;

/// Most labels or annotations a namespace may carry (each), and the longest key and value:
/// generous for metadata, small enough that a namespace record stays a small row.
const MAX_ENTRIES: usize = 64;
const MAX_KEY: usize = 253;
const MAX_VALUE: usize = 4096;

fn valid_name(name: &str) -> Result<(), ApiError> {
    Ok(fjord_core::names::validate_label("name", name)?)
}

/// Keys non-empty, without control characters; bounded sizes. Errors name the field.
fn check_map(field: &str, m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_ENTRIES {
        return Err(ApiError::BadRequest(format!(
            "{field}: {} entries; at most {MAX_ENTRIES} are allowed",
            m.len()
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_KEY || k.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ApiError::BadRequest(format!(
                "{field}: key {k:?} is invalid: use 1 to {MAX_KEY} characters without spaces or control characters"
            )));
        }
        if v.len() > MAX_VALUE || v.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "{field}.{k}: the value must be at most {MAX_VALUE} bytes, without NUL"
            )));
        }
    }
    Ok(())
}

/// Whether `name` exists (created, or holding functions or secrets, or the default).
fn exists(app: &AppState, name: &str) -> Result<bool, ApiError> {
    Ok(name == DEFAULT_NAMESPACE || app.control.store().namespaces()?.iter().any(|n| n == name))
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "namespace {name} not found: create it with POST /system/namespace/{name} (`fjord namespace create {name}`)"
    ))
}

/// The body of a POST/PUT, checked against the path's name.
async fn read_body(app: &AppState, name: &str, req: Request) -> Result<StoredNamespace, ApiError> {
    let body: FunctionNamespace = json_body(app, req, "FunctionNamespace").await?;
    if !body.name.is_empty() && body.name != name {
        return Err(ApiError::BadRequest(format!(
            "name: {:?} does not match the namespace in the path, {name:?}",
            body.name
        )));
    }
    let labels = body.labels.unwrap_or_default();
    let annotations = body.annotations.unwrap_or_default();
    check_map("labels", &labels)?;
    check_map("annotations", &annotations)?;
    Ok(StoredNamespace {
        name: name.to_string(),
        labels,
        annotations,
    })
}

#[utoipa::path(
    get, path = "/system/namespace/{name}", tag = "namespaces",
    params(("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The namespace (a DNS-1123 label)")),
    responses(
        (status = 200, description = "The namespace with its labels and annotations (empty for a namespace that was never created, only used)", body = FunctionNamespace),
        (status = 400, description = "`name` is not a DNS-1123 label", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 404, description = "No such namespace", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn get_namespace(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<FunctionNamespace>, ApiError> {
    valid_name(&name)?;
    let record = match app.control.store().namespace(&name)? {
        Some(r) => r,
        None if exists(&app, &name)? => StoredNamespace {
            name: name.clone(),
            ..Default::default()
        },
        None => return Err(not_found(&name)),
    };
    Ok(Json(FunctionNamespace {
        name: record.name,
        labels: Some(record.labels),
        annotations: Some(record.annotations),
    }))
}

#[utoipa::path(
    post, path = "/system/namespace/{name}", tag = "namespaces",
    params(("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The namespace to create (a DNS-1123 label)")),
    request_body(content = FunctionNamespace, description = "Labels and annotations; `name` may be left out"),
    responses(
        (status = 202, description = "Created"),
        (status = 400, description = "Malformed JSON, or a field is invalid (the message names it)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 409, description = "The namespace exists (created, or holding functions or secrets): change it with PUT", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn create_namespace(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    valid_name(&name)?;
    let record = read_body(&app, &name, req).await?;
    let _guard = app.control.lock_changes().await;
    if exists(&app, &name)? {
        return Err(ApiError::Conflict(format!(
            "namespace {name} already exists: change its labels and annotations with PUT /system/namespace/{name} (`fjord namespace update {name}`)"
        )));
    }
    app.control.store().upsert_namespace(&record)?;
    tracing::info!(namespace = %name, "namespace created");
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    put, path = "/system/namespace/{name}", tag = "namespaces",
    params(("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The namespace to change (a DNS-1123 label)")),
    request_body(content = FunctionNamespace, description = "The new labels and annotations (they replace the old ones); `name` may be left out"),
    responses(
        (status = 202, description = "Labels and annotations replaced"),
        (status = 400, description = "Malformed JSON, or a field is invalid (the message names it)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 404, description = "No such namespace: create it with POST", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn update_namespace(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    valid_name(&name)?;
    let record = read_body(&app, &name, req).await?;
    let _guard = app.control.lock_changes().await;
    if !exists(&app, &name)? {
        return Err(not_found(&name));
    }
    app.control.store().upsert_namespace(&record)?;
    tracing::info!(namespace = %name, "namespace updated");
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    delete, path = "/system/namespace/{name}", tag = "namespaces",
    params(("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The namespace to delete (a DNS-1123 label)")),
    responses(
        (status = 202, description = "Deleted"),
        (status = 400, description = "`name` is not a DNS-1123 label, or is the default namespace `openfaas-fn`", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "The credentials' scope does not allow this (the message names the scope needed)", body = String, content_type = "text/plain"),
        (status = 404, description = "No such namespace", body = String, content_type = "text/plain"),
        (status = 409, description = "Functions or secrets are still in it (the message names them)", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn delete_namespace(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    valid_name(&name)?;
    if name == DEFAULT_NAMESPACE {
        return Err(ApiError::BadRequest(format!(
            "name: {DEFAULT_NAMESPACE} is the default namespace and cannot be deleted"
        )));
    }
    // Held so no function or secret lands in the namespace between the check and the delete.
    let _guard = app.control.lock_changes().await;
    let store = app.control.store();
    let functions = store.function_names(&name)?;
    let secrets = store.secret_names(&name)?;
    if !functions.is_empty() || !secrets.is_empty() {
        let mut left = Vec::new();
        let mut next = Vec::new();
        if !functions.is_empty() {
            left.push(format!("function(s) {}", functions.join(", ")));
            next.push(format!("`fjord remove NAME --namespace {name}`"));
        }
        if !secrets.is_empty() {
            left.push(format!("secret(s) {}", secrets.join(", ")));
            next.push(format!("`fjord secret remove NAME --namespace {name}`"));
        }
        return Err(ApiError::Conflict(format!(
            "namespace {name} still has {}: delete them first ({})",
            left.join(" and "),
            next.join(", ")
        )));
    }
    if !store.delete_namespace(&name)? {
        return Err(not_found(&name));
    }
    tracing::info!(namespace = %name, "namespace deleted");
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_checked_naming_the_field() {
        let ok: BTreeMap<String, String> = [("env".to_string(), "dev".to_string())].into();
        assert!(check_map("labels", &ok).is_ok());
        let bad: BTreeMap<String, String> = [(String::new(), "x".to_string())].into();
        let e = check_map("labels", &bad).unwrap_err().to_string();
        assert!(e.starts_with("labels:"), "{e}");
        let bad: BTreeMap<String, String> = [("k".to_string(), "a\0b".to_string())].into();
        let e = check_map("annotations", &bad).unwrap_err().to_string();
        assert!(e.starts_with("annotations.k:"), "{e}");
    }
}
