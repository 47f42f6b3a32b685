//! `/system/*` handlers: requests are parsed into typed commands here, executed by the
//! [`ControlPlane`](crate::control::ControlPlane).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fjord_core::FunctionKey;
use fjord_core::openfaas::{
    DeleteFunctionRequest, FunctionDeployment, GatewayInfo, ProviderInfo, ScaleServiceRequest,
    VersionInfo,
};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::control::DeployMode;
use crate::error::ApiError;

/// Largest JSON body accepted on `/system/*`.
pub const MAX_API_BODY: usize = 1 << 20;

/// Reads a bounded body and decodes it, naming the offending field on error.
pub async fn json_body<T: DeserializeOwned>(req: Request, what: &str) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_API_BODY);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError::PayloadTooLarge(format!(
                    "request body is larger than the {} MiB limit for /system endpoints",
                    MAX_API_BODY >> 20
                )));
            }
            return Err(ApiError::BadRequest(format!(
                "cannot read request body: {e}"
            )));
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "empty body: expected a {what} JSON object"
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::BadRequest(format!("invalid {what}: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid {what}: field {path}: {inner}"))
        }
    })
}

pub(crate) fn namespace_param(q: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match q.get("namespace").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(ns) => {
            fjord_core::names::validate_label("namespace", ns)?;
            Ok(Some(ns.to_string()))
        }
    }
}

pub async fn list_functions(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ns = namespace_param(&q)?;
    Ok(Json(app.control.list(ns.as_deref())).into_response())
}

pub async fn create_function(
    State(app): State<AppState>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let d: FunctionDeployment = json_body(req, "FunctionDeployment").await?;
    app.control.deploy(d, DeployMode::CreateOrUpdate).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn update_function(
    State(app): State<AppState>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let d: FunctionDeployment = json_body(req, "FunctionDeployment").await?;
    app.control.deploy(d, DeployMode::Update).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn delete_function(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let d: DeleteFunctionRequest = json_body(req, "DeleteFunctionRequest").await?;
    let ns = d
        .namespace
        .filter(|n| !n.is_empty())
        .or(namespace_param(&q)?);
    let key = FunctionKey::new(&d.function_name, ns.as_deref())?;
    app.control.delete(&key).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn get_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let key = FunctionKey::new(&name, namespace_param(&q)?.as_deref())?;
    Ok(Json(app.control.status(&key)?).into_response())
}

pub async fn scale_function(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let body: ScaleServiceRequest = json_body(req, "ScaleServiceRequest").await?;
    if !body.service_name.is_empty() && body.service_name != name {
        return Err(ApiError::BadRequest(format!(
            "serviceName {:?} does not match the function in the path, {name:?}",
            body.service_name
        )));
    }
    let ns = body
        .namespace
        .filter(|n| !n.is_empty())
        .or(namespace_param(&q)?);
    let key = FunctionKey::new(&name, ns.as_deref())?;
    app.control.scale(&key, body.replicas).await?;
    Ok(StatusCode::ACCEPTED)
}

pub fn version_info() -> VersionInfo {
    VersionInfo {
        commit_message: None,
        sha: env!("FJORD_GIT_SHA").to_string(),
        release: env!("CARGO_PKG_VERSION").to_string(),
    }
}

pub async fn info() -> Json<GatewayInfo> {
    Json(GatewayInfo {
        provider: ProviderInfo {
            provider: "fjord".into(),
            orchestration: "process".into(),
            version: version_info(),
        },
        version: version_info(),
        arch: std::env::consts::ARCH.into(),
    })
}

pub async fn namespaces(State(app): State<AppState>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(app.control.namespaces()?))
}

pub async fn healthz() -> &'static str {
    "OK"
}

pub async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}: functions are at /function/NAME, the API under /system (see docs/api.md)",
        req.method(),
        req.uri().path()
    ))
}

/// `GET /metrics`: Prometheus text format, no auth (as in OpenFaaS).
pub async fn metrics(State(app): State<AppState>) -> Response {
    let depth: HashMap<String, u64> = app
        .queue
        .depth()
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut r = app.control.render_metrics(&depth).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[derive(serde::Deserialize)]
struct AlertPayload {
    #[serde(default)]
    alerts: Vec<Alert>,
}

#[derive(serde::Deserialize)]
struct Alert {
    status: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// Label that sets how much of `scale.max` one firing alert adds (percent, default 20).
const LABEL_SCALE_FACTOR: &str = "com.openfaas.scale.factor";

/// `POST /system/alert`: the AlertManager webhook, for users who keep their Prometheus rules.
/// A firing alert adds `ceil(max × factor / 100)` replicas (up to max); a resolved one goes
/// back to min.
pub async fn alert(State(app): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let payload: AlertPayload = json_body(req, "AlertManager webhook").await?;
    let mut missing = Vec::new();
    for a in payload.alerts {
        let Some(function) = a.labels.get("function_name") else {
            return Err(ApiError::BadRequest(
                "alerts[].labels.function_name: required (name.namespace)".into(),
            ));
        };
        let (name, ns) = FunctionKey::split_route(function);
        let key = FunctionKey::new(name, Some(ns))?;
        let Some(route) = app.control.lookup(&key.namespace, &key.name) else {
            missing.push(function.clone());
            continue;
        };
        let spec = route.handle.spec();
        let factor: f64 = spec
            .deployment
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SCALE_FACTOR))
            .and_then(|v| v.parse().ok())
            .filter(|f: &f64| *f > 0.0 && *f <= 100.0)
            .unwrap_or(20.0);
        let current = route.handle.desired();
        let target = match a.status.as_str() {
            "firing" => {
                let step = (spec.max_replicas as f64 * factor / 100.0).ceil().max(1.0) as u64;
                (current + step).min(spec.max_replicas)
            }
            "resolved" => spec.min_replicas,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "alerts[].status: {other:?} is neither firing nor resolved"
                )));
            }
        };
        app.control.scale(&key, target).await?;
    }
    if missing.is_empty() {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::NotFound(format!(
            "no such function(s): {}",
            missing.join(", ")
        )))
    }
}
