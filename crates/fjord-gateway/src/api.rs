//! `/system/*` handlers: requests are parsed into typed commands here, executed by the
//! [`ControlPlane`](fjord_control::ControlPlane).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fjord_core::FunctionKey;
use fjord_core::openfaas::{
    DeleteFunctionRequest, FunctionDeployment, FunctionStatus, GatewayInfo, ProviderInfo,
    ScaleServiceRequest, VersionInfo,
};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;
use fjord_control::DeployMode;

/// axum's `Path`, with its rejections (e.g. `%FF`, not UTF-8) as our plain-text errors.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(r) if r.status().is_server_error() => Err(ApiError::Internal(r.body_text())),
            Err(r) => Err(ApiError::BadRequest(format!(
                "path: {}: percent-encode the name as UTF-8",
                r.body_text()
            ))),
        }
    }
}

/// Largest JSON body accepted on `/system/*`.
pub const MAX_API_BODY: usize = 1 << 20;

/// Reads a bounded body (in size, and in time: `--read-timeout`) and decodes it, naming the
/// offending field on error.
pub async fn json_body<T: DeserializeOwned>(
    app: &AppState,
    req: Request,
    what: &str,
) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_API_BODY);
    let collected = match app.config.read_timeout {
        Some(t) => tokio::time::timeout(t, limited.collect())
            .await
            .map_err(|_| {
                ApiError::RequestTimeout(format!(
                    "the request body did not arrive within --read-timeout ({})",
                    humantime::format_duration(t)
                ))
            })?,
        None => limited.collect().await,
    };
    let bytes = match collected {
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

#[utoipa::path(
    get, path = "/system/functions", tag = "functions",
    params(("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Namespace to list (a DNS-1123 label); default `openfaas-fn`. An unknown namespace gives `[]`.")),
    responses(
        (status = 200, description = "The functions of the namespace, sorted by name", body = [FunctionStatus]),
        (status = 400, description = "`namespace` is not a DNS-1123 label", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
    ),
    security(("basicAuth" = []))
)]
pub async fn list_functions(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ns = namespace_param(&q)?;
    Ok(Json(app.control.list(ns.as_deref())).into_response())
}

/// 202 naming the deploy's generation, so a client can wait for this version (its
/// `fjord.rollout`) rather than any ready replica.
fn deploy_accepted(generation: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        [("x-fjord-generation", generation.to_string())],
    )
        .into_response()
}

#[utoipa::path(
    post, path = "/system/functions", tag = "functions",
    request_body(content = FunctionDeployment, description = "The function to deploy (create, or update if it exists)"),
    responses(
        (status = 202, description = "Validated, stored and handed to the runtime; replicas become ready afterwards. `X-Fjord-Generation` numbers this deploy: wait for `fjord.rollout` of that generation", headers(("X-Fjord-Generation" = u64, description = "This deploy's generation"))),
        (status = 400, description = "Empty or malformed body, or a field that fails validation (the message names it); for a container image also an unknown image or tag, missing or wrong registry credentials, no linux/amd64 variant, a layer that cannot be unpacked safely or is too large", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "Refused by the server's trust policy (--trust-policy): unsigned, signed by an untrusted key, a signature over another digest, or a tampered bundle; nothing changed (or the token's scope is below deploy)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 409, description = "`--runtime kubernetes`: the function is managed by its Function object (`openfaas.com/v1`, annotation `com.fjord.function-object`); change or delete that object instead", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 500, description = "The state store or runtime failed", body = String, content_type = "text/plain"),
        (status = 502, description = "The image's registry cannot be reached or failed (the message names it); nothing changed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn create_function(
    State(app): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let d: FunctionDeployment = json_body(&app, req, "FunctionDeployment").await?;
    let generation = app.control.deploy(d, DeployMode::CreateOrUpdate).await?;
    Ok(deploy_accepted(generation))
}

#[utoipa::path(
    put, path = "/system/functions", tag = "functions",
    request_body(content = FunctionDeployment, description = "The new version of a deployed function (rolled out without downtime)"),
    responses(
        (status = 202, description = "Validated, stored and rolling out. `X-Fjord-Generation` numbers this deploy: wait for `fjord.rollout` of that generation", headers(("X-Fjord-Generation" = u64, description = "This deploy's generation"))),
        (status = 400, description = "Empty or malformed body, or a field that fails validation (the message names it); for a container image also an unknown image or tag, missing or wrong registry credentials, no linux/amd64 variant, a layer that cannot be unpacked safely or is too large", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 403, description = "Refused by the server's trust policy (--trust-policy): unsigned, signed by an untrusted key, a signature over another digest, or a tampered bundle; the previous version keeps serving (or the token's scope is below deploy)", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 409, description = "`--runtime kubernetes`: the function is managed by its Function object (`openfaas.com/v1`, annotation `com.fjord.function-object`); change or delete that object instead", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 404, description = "The function is not deployed (POST creates it)", body = String, content_type = "text/plain"),
        (status = 500, description = "The state store or runtime failed", body = String, content_type = "text/plain"),
        (status = 502, description = "The image's registry cannot be reached or failed (the message names it); nothing changed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn update_function(
    State(app): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let d: FunctionDeployment = json_body(&app, req, "FunctionDeployment").await?;
    let generation = app.control.deploy(d, DeployMode::Update).await?;
    Ok(deploy_accepted(generation))
}

#[utoipa::path(
    delete, path = "/system/functions", tag = "functions",
    params(("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Namespace when the body has none; default `openfaas-fn`")),
    request_body(content = DeleteFunctionRequest, description = "The function to delete"),
    responses(
        (status = 202, description = "Replicas stopped, function and its logs removed"),
        (status = 400, description = "Empty or malformed body, or a field that fails validation (the message names it)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 409, description = "`--runtime kubernetes`: the function is managed by its Function object (`openfaas.com/v1`, annotation `com.fjord.function-object`); change or delete that object instead", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
        (status = 500, description = "The state store or runtime failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn delete_function(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let d: DeleteFunctionRequest = json_body(&app, req, "DeleteFunctionRequest").await?;
    let ns = d
        .namespace
        .filter(|n| !n.is_empty())
        .or(namespace_param(&q)?);
    let key = FunctionKey::new(&d.function_name, ns.as_deref())?;
    app.control.delete(&key).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    get, path = "/system/function/{name}", tag = "functions",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The function's name"),
        ("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Default `openfaas-fn`"),
    ),
    responses(
        (status = 200, description = "The function's status", body = FunctionStatus),
        (status = 400, description = "`name` or `namespace` is not a DNS-1123 label", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn get_function(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let key = FunctionKey::new(&name, namespace_param(&q)?.as_deref())?;
    Ok(Json(app.control.status(&key)?).into_response())
}

#[utoipa::path(
    post, path = "/system/scale-function/{name}", tag = "functions",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The function's name"),
        ("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Namespace when the body has none; default `openfaas-fn`"),
    ),
    request_body(content = ScaleServiceRequest, description = "The replica count wanted: 0 to `com.openfaas.scale.max` (above is clamped); `com.openfaas.scale.min` does not apply"),
    responses(
        (status = 202, description = "Scaling to the count in the body (OpenFaaS clients ignore it); surplus replicas drain before stopping", body = ScaleResult),
        (status = 400, description = "Empty or malformed body, or a field that fails validation (the message names it)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
        (status = 500, description = "The state store or runtime failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn scale_function(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<(StatusCode, Json<ScaleResult>), ApiError> {
    let body: ScaleServiceRequest = json_body(&app, req, "ScaleServiceRequest").await?;
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
    let replicas = app.control.scale(&key, body.replicas).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ScaleResult {
            service_name: key.name,
            namespace: key.namespace,
            replicas,
            requested: body.replicas,
        }),
    ))
}

/// Answer of `POST /system/scale-function/{name}` (OpenFaaS answers 202 with no body, and
/// its clients ignore this one): the count actually set.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleResult {
    pub service_name: String,
    pub namespace: String,
    /// Replicas set: the request clamped to `com.openfaas.scale.max`.
    pub replicas: u64,
    /// Replicas asked for.
    pub requested: u64,
}

pub fn version_info() -> VersionInfo {
    VersionInfo {
        commit_message: None,
        sha: env!("FJORD_GIT_SHA").to_string(),
        release: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[utoipa::path(
    get, path = "/system/info", tag = "system",
    responses(
        (status = 200, description = "What this gateway is", body = GatewayInfo),
        (status = 401, response = crate::responses::Unauthorized),
    ),
    security(("basicAuth" = []))
)]
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

#[utoipa::path(
    get, path = "/system/namespaces", tag = "system",
    responses(
        (status = 200, description = "Every namespace, sorted: `openfaas-fn`, those created with POST /system/namespace/{name}, and those holding functions or secrets", body = [String]),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 500, description = "The state store failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn namespaces(State(app): State<AppState>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(app.control.namespaces()?))
}

#[utoipa::path(
    get, path = "/healthz", tag = "system",
    responses((status = 200, description = "The gateway is up; with connectors' brokers (`--nats`), one more line per broker: `nats: connected` or `nats: disconnected, reconnecting`", body = String, content_type = "text/plain", example = "OK")),
    security(())
)]
pub async fn healthz(State(app): State<AppState>) -> String {
    let brokers = app.config.connectors.health.report();
    if brokers.is_empty() {
        "OK".into()
    } else {
        format!("OK\n{brokers}")
    }
}

pub async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}: functions are at /function/NAME, the API under /system (see docs/api.md)",
        req.method(),
        req.uri().path()
    ))
}

/// A known route with another method (axum adds the `Allow` header).
pub async fn method_not_allowed(req: Request<Body>) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}: the Allow header lists the methods that are (see docs/api.md)",
        req.method(),
        req.uri().path()
    ))
}

/// `GET /metrics`: Prometheus text format, no auth by default (as in OpenFaaS); with
/// `--metrics-auth` the admin password or a token of scope `read`.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "--metrics-auth is on and no valid credentials were sent", body = String, content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 403, description = "--metrics-auth is on and the token's scope is below read", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(())
)]
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

/// The AlertManager webhook body (only the fields fjord reads).
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct AlertPayload {
    #[serde(default)]
    alerts: Vec<Alert>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct Alert {
    /// `firing` or `resolved`.
    #[schema(pattern = "^(firing|resolved)$")]
    status: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// `POST /system/alert`: the AlertManager webhook, for users who keep their Prometheus rules.
/// A firing alert adds `ceil(max × factor / 100)` replicas (up to max); a resolved one goes
/// back to min.
#[utoipa::path(
    post, path = "/system/alert", tag = "functions",
    request_body(content = AlertPayload, description = "AlertManager webhook; `alerts[].labels.function_name` = `name.namespace`"),
    responses(
        (status = 200, description = "Every named function was scaled"),
        (status = 400, description = "Empty or malformed body, or a field that fails validation (the message names it)", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than 1 MiB", body = String, content_type = "text/plain"),
        (status = 404, description = "Some named functions are not deployed (the others were scaled)", body = String, content_type = "text/plain"),
        (status = 500, description = "The state store or runtime failed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn alert(State(app): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let payload: AlertPayload = json_body(&app, req, "AlertManager webhook").await?;
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
        // com.openfaas.scale.factor (validated at deploy); 0 adds nothing.
        let factor = spec.scale.factor;
        let current = route.handle.desired();
        let target = match a.status.as_str() {
            "firing" => {
                let step = (spec.max_replicas as f64 * factor / 100.0).ceil() as u64;
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
