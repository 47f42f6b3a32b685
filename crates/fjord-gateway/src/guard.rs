//! The auth middleware of `/system/*` and `/metrics`: authenticates with [`crate::auth`] (or
//! the dashboard's session cookie, [`crate::ui`]), then checks the route's scope from the
//! route table.

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::net::{IpAddr, SocketAddr};

use fjord_control::tokens::Scope;

use crate::error::ApiError;
use crate::routes::needed_scope;
use crate::state::AppState;

/// Middleware for `GET /metrics`: with `--metrics-auth`, the admin password or a token of
/// scope `read` (the metrics name every function, token-protected ones included).
pub async fn require_metrics(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !app.config.metrics_auth || app.auth.basic.is_none() {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    match app.auth.authenticate(ip, req.headers()).await {
        Ok(scope) if scope.covers(Scope::Read) => next.run(req).await,
        Ok(scope) => ApiError::Forbidden(format!(
            "GET /metrics needs scope read (--metrics-auth); this API token has scope {}",
            scope.as_str()
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Middleware for `/system/*` on the main listener: authenticates (Basic or Bearer; the
/// dashboard's session cookie is not credentials here, where functions' pages share the
/// origin), then checks the route's scope.
pub async fn require(State(app): State<AppState>, req: Request, next: Next) -> Response {
    check(&app, req, next, false).await
}

/// Middleware for `/system/*` on the dashboard's listener: the session cookie counts too.
pub async fn require_session(State(app): State<AppState>, req: Request, next: Next) -> Response {
    check(&app, req, next, true).await
}

async fn check(app: &AppState, req: Request, next: Next, cookies: bool) -> Response {
    let auth = &app.auth;
    if auth.basic.is_none() {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    // On the dashboard's listener the session cookie counts as credentials when no
    // Authorization header is sent (changes need its CSRF header too).
    let cookie = match cookies
        && !req
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION)
    {
        true => crate::ui::session_cookie(req.headers()),
        false => None,
    };
    let scope = if let Some(id) = cookie {
        match crate::ui::authenticate_cookie(&app.sessions, req.method(), req.headers(), id) {
            Ok(s) => s,
            Err(r) => return r,
        }
    } else {
        match auth.authenticate(ip, req.headers()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path = %req.uri().path(), client = %ip, "rejected /system request: {e}");
                return e.into_response();
            }
        }
    };
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let needed = needed_scope(req.method().as_str(), pattern);
    if !scope.covers(needed) {
        return ApiError::Forbidden(format!(
            "{} {} needs scope {}; this API token has scope {}",
            req.method(),
            req.uri().path(),
            needed.as_str(),
            scope.as_str()
        ))
        .into_response();
    }
    next.run(req).await
}
