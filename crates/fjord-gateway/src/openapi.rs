//! The OpenAPI 3.1 document of the whole gateway API, `GET /system/openapi.json`, generated
//! from the handlers' `#[utoipa::path]` attributes and the JSON types' `ToSchema` derives.
//!
//! Adding a route: annotate its handler with `#[utoipa::path(...)]` (every status it can
//! answer, with `text/plain` bodies for errors) and list the handler in [`ApiDoc`]'s `paths`
//! below (its body types in `schemas`). The test `every_route_is_documented` fails until then.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Type;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::responses::{InvokeResponses, Unauthorized, header, plain};
use crate::{api, async_calls, bundles, invoke, logs, namespaces, secrets, tokens};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fjord gateway",
        description = "The OpenFaaS gateway REST API as fjord implements it, plus fjord's extensions (bundles, async calls). Errors are plain text, one line ending in a newline, saying what to do. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        api::healthz,
        api::metrics,
        api::info,
        crate::ui::system_status,
        api::namespaces,
        namespaces::get_namespace,
        namespaces::create_namespace,
        namespaces::update_namespace,
        namespaces::delete_namespace,
        api::list_functions,
        api::create_function,
        api::update_function,
        api::delete_function,
        api::get_function,
        crate::ui::history,
        crate::ui::summaries,
        api::scale_function,
        api::alert,
        logs::logs,
        bundles::head_bundle,
        bundles::put_bundle,
        bundles::set_tag,
        bundles::gc_images,
        crate::trust::put_bundle_signature,
        crate::trust::report,
        async_calls::list_calls,
        async_calls::get_call,
        async_calls::replay,
        async_calls::enqueue,
        async_calls::cancel,
        invoke::invoke,
        invoke_sub_path,
        enqueue_sub_path,
        openapi_json,
        secrets::list,
        secrets::create,
        secrets::update,
        secrets::delete,
        tokens::create,
        tokens::list,
        tokens::revoke,
    ),
    components(
        schemas(
            fjord_control::images::GcReport,
            fjord_control::TrustReport,
            fjord_core::openfaas::TrustStatus,
            fjord_trust::BundleSignatures,
            fjord_trust::payload::EncodedSignature,
            fjord_core::openfaas::FunctionDeployment,
            fjord_core::openfaas::FunctionResources,
            fjord_core::openfaas::FunctionStatus,
            fjord_core::openfaas::FjordStatus,
            fjord_core::openfaas::RolloutStatus,
            fjord_core::openfaas::PullStatus,
            fjord_core::openfaas::TriggerStatus,
            fjord_core::openfaas::ScaleServiceRequest,
            fjord_core::openfaas::DeleteFunctionRequest,
            fjord_core::openfaas::GatewayInfo,
            fjord_core::openfaas::ProviderInfo,
            fjord_core::openfaas::VersionInfo,
            fjord_core::openfaas::LogMessage,
            fjord_queue::CallRecord,
            fjord_queue::CallState,
            bundles::TagRequest,
            api::AlertPayload,
            api::Alert,
            fjord_core::openfaas::Secret,
            fjord_core::openfaas::SecretDescription,
            fjord_core::openfaas::FunctionNamespace,
            tokens::CreateToken,
            fjord_control::tokens::CreatedToken,
            fjord_control::tokens::TokenInfo,
            fjord_control::tokens::Scope,
            fjord_control::history::FunctionHistory,
            fjord_control::history::Point,
            fjord_control::history::FunctionSummary,
            crate::ui::SystemStatus,
            crate::ui::ConnectorStatus,
            crate::ui::DataDirPart,
        ),
        responses(Unauthorized),
    ),
    modifiers(&Security, &UniqueOperationIds, &ParametersNotNull),
    tags(
        (name = "functions", description = "Deploy, update, scale, delete functions; their logs"),
        (name = "invoke", description = "Call functions, synchronously or queued"),
        (name = "async calls", description = "Queued calls (fjord extension)"),
        (name = "bundles", description = "Function code without images (fjord extension)"),
        (name = "images", description = "Container images pulled for functions (fjord extension)"),
        (name = "system", description = "The gateway itself"),
        (name = "secrets", description = "Function secrets: values go in, never come out"),
        (name = "tokens", description = "API tokens with scopes (fjord extension)"),
        (name = "namespaces", description = "Namespaces with labels and annotations"),
    )
)]
pub struct ApiDoc;

/// `GET /system/openapi.json`: this document, rendered once.
#[utoipa::path(
    get, path = "/system/openapi.json", tag = "system",
    responses(
        (status = 200, description = "This OpenAPI document", body = Object, content_type = "application/json"),
        (status = 401, response = Unauthorized),
    ),
    security(("basicAuth" = []))
)]
pub async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    });
    let mut r = doc.as_str().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `ANY /function/{function}/{path}`: the same handler as `/function/{function}`; documented
/// apart because an OpenAPI path parameter is one segment.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/function/{function}/{path}", tag = "invoke",
    params(
        ("function" = String, Path, description = "`name` or `name.namespace`"),
        ("path" = String, Path, description = "The path the function sees (it may have more segments)"),
        ("X-Call-Id" = Option<String>, Header, description = "Passed to the function and returned; default a new UUID"),
    ),
    request_body(content = String, content_type = "*/*", description = "Any body; streamed to the function"),
    responses(InvokeResponses),
    security(())
)]
#[allow(dead_code)]
fn invoke_sub_path() {}

/// `POST /async-function/{function}/{path}`: the same handler as `/async-function/{function}`.
#[utoipa::path(
    post, path = "/async-function/{function}/{path}", tag = "invoke",
    params(
        ("function" = String, Path, description = "`name` or `name.namespace`"),
        ("path" = String, Path, description = "The path the function will see"),
        ("X-Callback-Url" = Option<String>, Header, description = "Where to POST the result (http or https; loopback, private and link-local addresses only if allowed by --callback-allow)"),
        ("X-Call-Id" = Option<String>, Header, description = "The call's id (1 to 128 characters); default a new UUID"),
    ),
    request_body(content = String, content_type = "*/*", description = "Any body, at most --max-async-body (8 MiB)"),
    responses(
        (status = 202, description = "Stored durably; it runs later", headers(("X-Call-Id" = String, description = "The call's id"))),
        (status = 400, description = "X-Callback-Url is not an http(s) URL or names an address callbacks may not go to (see --callback-allow), or the body could not be read", body = String, content_type = "text/plain"),
        (status = 401, description = "The function is annotated com.fjord.auth: token and no valid token was sent", body = String, content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The token's scope may not call functions", body = String, content_type = "text/plain"),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
        (status = 409, description = "A call with this X-Call-Id already exists", body = String, content_type = "text/plain"),
        (status = 408, description = "The body did not arrive within --read-timeout", body = String, content_type = "text/plain"),
        (status = 413, description = "The body is larger than --max-async-body", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many failed authentications from this address", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
        (status = 500, description = "The queue failed to store the call", body = String, content_type = "text/plain"),
        (status = 503, description = "The queue is shutting down", body = String, content_type = "text/plain", headers(("Retry-After" = String))),
    ),
    security(())
)]
#[allow(dead_code)]
fn enqueue_sub_path() {}

/// Basic auth on `/system/*` (the only scheme for now).
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basicAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "User admin (<data-dir>/secrets/basic-auth-user), password in <data-dir>/secrets/basic-auth-password; off with `fjord serve --auth=false`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from POST /system/tokens (`fjord token create`); its scope (read, deploy, admin) must cover the route",
                    ))
                    .build(),
            ),
        );
        // Wherever basic auth is accepted, a token is too: an alternative requirement.
        let bearer =
            utoipa::openapi::security::SecurityRequirement::new("bearerAuth", Vec::<String>::new());
        for item in doc.paths.paths.values_mut() {
            for (_, op) in operations_mut(item) {
                if let Some(reqs) = &mut op.security
                    && reqs.iter().any(|r| {
                        serde_json::to_value(r)
                            .ok()
                            .is_some_and(|v| v.get("basicAuth").is_some())
                    })
                {
                    reqs.push(bearer.clone());
                    // Every authenticated route can also refuse a token's scope, or an
                    // address that failed to authenticate too often.
                    let responses = &mut op.responses.responses;
                    responses.entry("403".into()).or_insert_with(|| {
                        plain("The API token's scope does not cover this route (the message names the scope needed)")
                            .build()
                            .into()
                    });
                    responses.entry("429".into()).or_insert_with(|| {
                        plain("Too many failed authentications from this address")
                            .header("Retry-After", header("Seconds to wait"))
                            .build()
                            .into()
                    });
                }
            }
        }
    }
}

/// One handler documented for several methods shares one operationId; OpenAPI wants them
/// unique, so those get the method as a prefix (`post_invoke`).
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for item in doc.paths.paths.values() {
            for op in operations(item) {
                if let Some(id) = &op.1.operation_id {
                    *count.entry(id.clone()).or_default() += 1;
                }
            }
        }
        let mut seen = HashSet::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations_mut(item) {
                if let Some(id) = &op.operation_id
                    && count.get(id).copied().unwrap_or(0) > 1
                {
                    let suffix = if path.ends_with("{path}") {
                        "_sub_path"
                    } else {
                        ""
                    };
                    let new = format!("{method}_{id}{suffix}");
                    if seen.insert(new.clone()) {
                        op.operation_id = Some(new);
                    }
                }
            }
        }
    }
}

/// `Option<String>` parameters come out as `string | null`, but a query or header value is
/// never JSON null (a client would send the text `null`): optional is enough.
struct ParametersNotNull;

impl Modify for ParametersNotNull {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{Schema, SchemaType};
        for item in doc.paths.paths.values_mut() {
            for (_, op) in operations_mut(item) {
                for p in op.parameters.iter_mut().flatten() {
                    if let Some(RefOr::T(Schema::Object(o))) = &mut p.schema
                        && let SchemaType::Array(types) = &o.schema_type
                    {
                        let kept: Vec<Type> = types
                            .iter()
                            .filter(|t| **t != Type::Null)
                            .cloned()
                            .collect();
                        if let [only] = kept.as_slice() {
                            o.schema_type = SchemaType::Type(only.clone());
                        }
                    }
                }
            }
        }
    }
}

type Op = utoipa::openapi::path::Operation;

fn operations(item: &utoipa::openapi::PathItem) -> Vec<(&'static str, &Op)> {
    [
        ("get", &item.get),
        ("put", &item.put),
        ("post", &item.post),
        ("delete", &item.delete),
        ("head", &item.head),
        ("patch", &item.patch),
        ("options", &item.options),
        ("trace", &item.trace),
    ]
    .into_iter()
    .filter_map(|(m, o)| o.as_ref().map(|o| (m, o)))
    .collect()
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(&'static str, &mut Op)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("options", &mut item.options),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(m, o)| o.as_mut().map(|o| (m, o)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(path, methods)` of every route, from the route table the router is built from.
    fn registered_routes() -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for e in crate::routes::table() {
            let m = e.method.to_lowercase();
            match out.iter_mut().find(|(p, _)| p == e.path) {
                Some((_, ms)) => ms.push(m),
                None => out.push((e.path.to_string(), vec![m])),
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented() {
        let doc = ApiDoc::openapi();
        let documented: BTreeMap<String, Vec<&str>> = doc
            .paths
            .paths
            .iter()
            .map(|(p, item)| {
                (
                    p.clone(),
                    operations(item).into_iter().map(|(m, _)| m).collect(),
                )
            })
            .collect();
        for (path, methods) in registered_routes() {
            // axum's `{*rest}` matches one or more segments: documented as `{function}` (and
            // `{function}/{path}`), so look for any documented path under the prefix.
            let (prefix, wildcard) = match path.find("{*") {
                Some(i) => (path[..i].to_string(), true),
                None => (path.clone(), false),
            };
            let matching: Vec<&Vec<&str>> = documented
                .iter()
                .filter(|(p, _)| {
                    if wildcard {
                        p.starts_with(&prefix)
                    } else {
                        **p == prefix
                    }
                })
                .map(|(_, m)| m)
                .collect();
            assert!(
                !matching.is_empty(),
                "route {path} is not in the OpenAPI document: add #[utoipa::path] to its handler and list it in ApiDoc (openapi.rs)"
            );
            for m in methods {
                let wanted: Vec<&str> = if m == "any" {
                    vec!["get", "post", "put", "patch", "delete"]
                } else {
                    vec![m.as_str()]
                };
                for w in wanted {
                    assert!(
                        matching.iter().any(|ms| ms.contains(&w)),
                        "{} {path} is not in the OpenAPI document (openapi.rs)",
                        w.to_uppercase()
                    );
                }
            }
        }
    }

    #[test]
    fn document_is_valid_json_with_security_and_unique_ids() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["components"]["securitySchemes"]["basicAuth"]["scheme"],
            "basic"
        );
        let mut ids = HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default().to_string();
                assert!(
                    ids.insert(id.clone()),
                    "duplicate operationId {id} ({method} {path})"
                );
                // Every /system route needs basic auth; the rest are open.
                let secured = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get("basicAuth").is_some()));
                assert_eq!(secured, path.starts_with("/system/"), "{method} {path}");
                if secured {
                    assert!(op["responses"].get("401").is_some(), "{method} {path}: 401");
                }
            }
        }
    }
}
