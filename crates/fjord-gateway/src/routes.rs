//! The route table as data: one list gives the router, each `/system` route's token scope
//! and the set the OpenAPI document must cover. A new route is one line here.

use std::sync::LazyLock;

use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter, any, on};

use crate::state::AppState;
use crate::{
    api, async_calls, bundles, invoke, logs, namespaces, openapi, secrets, tokens, trust, ui,
};
use fjord_control::tokens::Scope;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/system/*`: admin credentials, or an API token covering this scope.
    System(Scope),
    /// Open, or guarded by the function itself (`com.fjord.auth`) or its own middleware.
    Open,
    /// `/metrics`: open unless `--metrics-auth`.
    Metrics,
}

/// One route: method (`ANY` for every method), axum path pattern, access, handler.
pub struct RouteEntry {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub(crate) handler: MethodRouter<AppState>,
}

fn entry<H, T>(method: &'static str, path: &'static str, access: Access, h: H) -> RouteEntry
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let handler = match method {
        "ANY" => any(h),
        m => on(
            MethodFilter::try_from(axum::http::Method::from_bytes(m.as_bytes()).expect("a method"))
                .expect("a routable method"),
            h,
        ),
    };
    RouteEntry {
        method,
        path,
        access,
        handler,
    }
}

/// Every route fjord serves.
pub fn table() -> Vec<RouteEntry> {
    use Access::{Metrics, Open, System};
    use Scope::{Admin, Deploy, Read};
    vec![
        entry(
            "GET",
            "/system/functions",
            System(Read),
            api::list_functions,
        ),
        entry(
            "POST",
            "/system/functions",
            System(Deploy),
            api::create_function,
        ),
        entry(
            "PUT",
            "/system/functions",
            System(Deploy),
            api::update_function,
        ),
        entry(
            "DELETE",
            "/system/functions",
            System(Deploy),
            api::delete_function,
        ),
        entry(
            "GET",
            "/system/function/{name}",
            System(Read),
            api::get_function,
        ),
        entry(
            "GET",
            "/system/functions/history",
            System(Read),
            ui::summaries,
        ),
        entry(
            "GET",
            "/system/function/{name}/history",
            System(Read),
            ui::history,
        ),
        entry(
            "POST",
            "/system/scale-function/{name}",
            System(Deploy),
            api::scale_function,
        ),
        entry("GET", "/system/info", System(Read), api::info),
        entry("GET", "/system/status", System(Read), ui::system_status),
        entry("GET", "/system/namespaces", System(Read), api::namespaces),
        // Namespaces are shared by everyone's functions and secrets: changing them is the admin's.
        entry(
            "GET",
            "/system/namespace/{name}",
            System(Read),
            namespaces::get_namespace,
        ),
        entry(
            "POST",
            "/system/namespace/{name}",
            System(Admin),
            namespaces::create_namespace,
        ),
        entry(
            "PUT",
            "/system/namespace/{name}",
            System(Admin),
            namespaces::update_namespace,
        ),
        entry(
            "DELETE",
            "/system/namespace/{name}",
            System(Admin),
            namespaces::delete_namespace,
        ),
        entry("GET", "/system/logs", System(Read), logs::logs),
        entry(
            "GET",
            "/system/openapi.json",
            System(Read),
            openapi::openapi_json,
        ),
        entry(
            "PUT",
            "/system/bundles/{digest}",
            System(Deploy),
            bundles::put_bundle,
        ),
        entry(
            "HEAD",
            "/system/bundles/{digest}",
            System(Deploy),
            bundles::head_bundle,
        ),
        entry(
            "PUT",
            "/system/bundles/{digest}/signature",
            System(Deploy),
            trust::put_bundle_signature,
        ),
        entry("GET", "/system/trust", System(Read), trust::report),
        entry(
            "POST",
            "/system/bundle-tags",
            System(Deploy),
            bundles::set_tag,
        ),
        entry(
            "POST",
            "/system/images/gc",
            System(Deploy),
            bundles::gc_images,
        ),
        entry("POST", "/system/alert", System(Deploy), api::alert),
        entry(
            "GET",
            "/system/async-calls",
            System(Read),
            async_calls::list_calls,
        ),
        entry(
            "GET",
            "/system/async-calls/{id}",
            System(Read),
            async_calls::get_call,
        ),
        entry(
            "POST",
            "/system/async-calls/{id}/replay",
            System(Deploy),
            async_calls::replay,
        ),
        // Secret names are needed to deploy; values and changes are the admin's.
        entry("GET", "/system/secrets", System(Deploy), secrets::list),
        entry("POST", "/system/secrets", System(Admin), secrets::create),
        entry("PUT", "/system/secrets", System(Admin), secrets::update),
        entry("DELETE", "/system/secrets", System(Admin), secrets::delete),
        entry("GET", "/system/tokens", System(Admin), tokens::list),
        entry("POST", "/system/tokens", System(Admin), tokens::create),
        entry(
            "DELETE",
            "/system/tokens/{id}",
            System(Admin),
            tokens::revoke,
        ),
        entry("ANY", "/function/{*path}", Open, invoke::invoke),
        entry(
            "POST",
            "/async-function/{*path}",
            Open,
            async_calls::enqueue,
        ),
        // Deleting a queued call needs a token; the handler checks it.
        entry(
            "DELETE",
            "/async-function/{*path}",
            Open,
            async_calls::cancel,
        ),
        entry("GET", "/healthz", Open, api::healthz),
        entry("GET", "/metrics", Metrics, api::metrics),
    ]
}

/// `(method, path, scope)` of every `/system` route, for the per-request scope check.
static SCOPES: LazyLock<Vec<(&'static str, &'static str, Scope)>> = LazyLock::new(|| {
    table()
        .into_iter()
        .filter_map(|e| match e.access {
            Access::System(s) => Some((e.method, e.path, s)),
            _ => None,
        })
        .collect()
});

/// The scope a `/system` request needs: its route's; HEAD falls back to GET's; a route not
/// in the table needs admin (fail closed).
pub fn needed_scope(method: &str, pattern: &str) -> Scope {
    let find = |m: &str| {
        SCOPES
            .iter()
            .find(|(tm, tp, _)| *tm == m && *tp == pattern)
            .map(|e| e.2)
    };
    find(method)
        .or_else(|| (method == "HEAD").then(|| find("GET")).flatten())
        .unwrap_or(Scope::Admin)
}
