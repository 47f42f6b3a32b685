//! The web dashboard at `/ui/`: static assets embedded in the binary (another client of the
//! same JSON API), browser sessions (`POST /ui/session` with the admin password or an API
//! token → an in-memory session in an `HttpOnly`, `SameSite=Strict` cookie, carrying the scope
//! of what signed in) and the CSRF check for cookie-authenticated changes. The auth guard
//! ([`crate::guard`]) accepts the session cookie like Basic/Bearer credentials.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use fjord_control::tokens::Scope;
use fjord_core::FunctionKey;

use crate::api::{ApiPath, namespace_param};
use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "fjord_session";
/// The header a cookie-authenticated change must carry, equal to the session's CSRF token (a
/// cross-site form or a simple request cannot set it).
pub const CSRF_HEADER: &str = "x-fjord-csrf";
/// A session ends this long after sign-in, however active.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// …or after this long without a request.
pub const IDLE: Duration = Duration::from_secs(3600);
/// Sessions kept at most (the oldest go first beyond).
const CAPACITY: usize = 10_000;

/// `default-src 'self'`, no inline scripts or styles, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Session {
    scope: Scope,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Browser sessions, in memory (a restart signs everybody out). Keyed by the SHA-256 of the
/// session id, so the table's lookups compare hashes, not secrets.
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

/// What a valid session carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub scope: Scope,
    pub csrf: String,
}

fn random_256() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session: `(id, csrf token)`.
    pub fn create(&self, scope: Scope) -> (String, String) {
        self.create_at(scope, Instant::now())
    }

    fn create_at(&self, scope: Scope, now: Instant) -> (String, String) {
        let id = random_256();
        let csrf = random_256();
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.retain(|_, s| live(s, now));
            if map.len() >= CAPACITY
                && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|e| *e.0)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            key_of(&id),
            Session {
                scope,
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The session `id` names if it is still valid (and marks it used).
    pub fn get(&self, id: &str) -> Option<SessionInfo> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<SessionInfo> {
        let key = key_of(id);
        let mut map = self.lock();
        let s = map.get_mut(&key)?;
        if !live(s, now) {
            map.remove(&key);
            return None;
        }
        s.last_used = now;
        Some(SessionInfo {
            scope: s.scope,
            csrf: s.csrf.clone(),
        })
    }

    /// Signs out.
    pub fn remove(&self, id: &str) {
        self.lock().remove(&key_of(id));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.created) < MAX_AGE
        && now.saturating_duration_since(s.last_used) < IDLE
}

/// The session id in the request's `Cookie` headers, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// Removes the session cookie from a request that goes to a function (other cookies stay).
/// Costs one header lookup when the request has no cookie.
pub fn strip_session_cookie(headers: &mut HeaderMap) {
    let Some(first) = headers.get(header::COOKIE) else {
        return;
    };
    let has = |v: &HeaderValue| {
        v.to_str()
            .is_ok_and(|v| v.split(';').any(|c| c.trim().starts_with("fjord_session=")))
    };
    if !has(first) && headers.get_all(header::COOKIE).iter().count() == 1 {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with("fjord_session="))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Whether a method changes state (and so needs the CSRF header with a cookie).
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// 401 without `WWW-Authenticate`: a browser would otherwise pop up its own sign-in dialog
/// over the dashboard's.
fn unauthorized(msg: &str) -> Response {
    (StatusCode::UNAUTHORIZED, format!("{msg}\n")).into_response()
}

/// The guard's check of a cookie-authenticated request: the session's scope, or the answer
/// (401 for an unknown or expired session, 403 for a change without the CSRF header).
#[allow(clippy::result_large_err)]
pub fn authenticate_cookie(
    sessions: &Sessions,
    method: &Method,
    headers: &HeaderMap,
    id: &str,
) -> Result<Scope, Response> {
    let Some(s) = sessions.get(id) else {
        return Err(unauthorized(
            "the dashboard session expired or is unknown: sign in again",
        ));
    };
    if changes(method) {
        let sent = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(s.csrf.as_bytes())) {
            return Err(ApiError::Forbidden(
                "a change made with the dashboard's session cookie needs the X-Fjord-CSRF header of that session".into(),
            )
            .into_response());
        }
    }
    Ok(s.scope)
}

/// Security headers of every dashboard response.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The embedded assets: path under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../ui/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/dom.js"),
    ),
    (
        "list.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/list.js"),
    ),
    (
        "function.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/function.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/pages.js"),
    ),
    (
        "sha256.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/sha256.js"),
    ),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../ui/vendor/uplot/LICENSE"),
    ),
];

/// `GET /ui/` and `GET /ui/{file}`.
pub async fn asset(req: Request) -> Response {
    let path = req.uri().path().strip_prefix("/ui/").unwrap_or("");
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, ty, bytes)) => secure(
            (
                [(header::CONTENT_TYPE, HeaderValue::from_static(ty))],
                *bytes,
            )
                .into_response(),
        ),
        None => secure(
            ApiError::NotFound(format!(
                "no dashboard file {path}: the dashboard is at /ui/"
            ))
            .into_response(),
        ),
    }
}

/// `GET /ui` → `/ui/`.
pub async fn ui_root() -> Response {
    see_other("/ui/")
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn wants_html(req: &Request) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// `GET /` on the dashboard's listener: browsers (asking for HTML) go to the dashboard; API
/// clients get the usual 404.
pub async fn root(req: Request) -> Response {
    if wants_html(&req) {
        see_other("/ui/")
    } else {
        crate::api::not_found(req).await.into_response()
    }
}

/// Where `fjord serve --ui-listen` puts the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UiListen {
    /// The main address with port + 1 (a free port when the main one is 0).
    #[default]
    Default,
    /// No dashboard.
    Off,
    Addr(SocketAddr),
}

impl std::str::FromStr for UiListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "default" | "" => Ok(Self::Default),
            _ => s.parse().map(Self::Addr).map_err(|e| {
                format!("{e}: give an address (127.0.0.1:8081), `default` (the --listen port + 1) or `off`")
            }),
        }
    }
}

impl UiListen {
    /// The address to bind beside the main `listen` one, `None` when off.
    pub fn resolve(self, listen: SocketAddr) -> Option<SocketAddr> {
        match self {
            Self::Off => None,
            Self::Addr(a) => Some(a),
            Self::Default => {
                let port = match listen.port() {
                    0 => 0,
                    p => p.checked_add(1).unwrap_or(0),
                };
                Some(SocketAddr::new(listen.ip(), port))
            }
        }
    }
}

/// The request's host as the browser named it (without its port), if it is a plain host
/// name or address (nothing that could bend the redirect's URL).
fn request_host(req: &Request) -> Option<String> {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))?;
    let host = match authority.strip_prefix('[') {
        // [v6]:port
        Some(rest) => format!("[{}]", rest.split(']').next()?),
        None => authority.split(':').next()?.to_string(),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    ok.then_some(host)
}

/// The main listener's answer to `/ui/…` (and `/` from a browser): the same path on the
/// dashboard's own listener (another port of the host the browser asked for, same scheme),
/// or 404 with `--ui-listen off`.
async fn to_dashboard(
    State(app): State<AppState>,
    axum::Extension(ui): axum::Extension<UiPort>,
    req: Request,
) -> Response {
    let is_root = req.uri().path() == "/";
    if is_root && !wants_html(&req) {
        return crate::api::not_found(req).await.into_response();
    }
    let Some(port) = ui.0 else {
        if is_root {
            return crate::api::not_found(req).await.into_response();
        }
        return ApiError::NotFound(
            "the dashboard is off on this server (fjord serve --ui-listen off)".into(),
        )
        .into_response();
    };
    let host = request_host(&req).unwrap_or_else(|| "localhost".into());
    let scheme = if app.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = if is_root { "/ui/" } else { req.uri().path() };
    let query = req.uri().query().map_or(String::new(), |q| format!("?{q}"));
    let to = format!("{scheme}://{host}:{port}{path}{query}");
    match HeaderValue::from_str(&to) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => ApiError::BadRequest("cannot build the dashboard's URL".into()).into_response(),
    }
}

/// The dashboard listener's port, known to the main listener's redirects.
#[derive(Clone, Copy)]
struct UiPort(Option<u16>);

/// The main listener's dashboard routes: redirects to the dashboard's own listener (`port`;
/// `None` with `--ui-listen off`). No sessions here: functions' pages share this origin.
pub fn redirects(port: Option<u16>) -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(to_dashboard))
        .route("/ui", get(to_dashboard))
        .route("/ui/", get(to_dashboard))
        .route("/ui/{*file}", get(to_dashboard))
        .layer(axum::Extension(UiPort(port)))
}

/// On the dashboard's listener, every response outside `/ui/` (functions answering the invoke
/// console, the API) is a sandboxed document (`Content-Security-Policy: sandbox`, without
/// `allow-same-origin`): a function's HTML opened there runs in an opaque origin, so its
/// scripts cannot read the dashboard's pages, session or API with the admin's cookie.
pub async fn sandbox(req: Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let dashboard = path == "/ui" || path.starts_with("/ui/");
    let mut r = next.run(req).await;
    if !dashboard {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    r
}

/// What the dashboard learns about its session.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView<'a> {
    scope: &'a str,
    csrf: &'a str,
    /// `fjord serve --auth=false`: everything is open (the dashboard shows a banner).
    auth_disabled: bool,
    /// fjord's version.
    version: &'a str,
}

fn session_json(scope: Scope, csrf: &str, auth_disabled: bool) -> Response {
    secure(
        axum::Json(SessionView {
            scope: scope.as_str(),
            csrf,
            auth_disabled,
            version: env!("CARGO_PKG_VERSION"),
        })
        .into_response(),
    )
}

/// `GET /ui/session`: the current session (its scope and CSRF token), 401 without one.
pub async fn get_session(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if app.auth.basic.is_none() {
        return session_json(Scope::Admin, "", true);
    }
    match session_cookie(&headers).and_then(|id| app.sessions.get(id)) {
        Some(s) => session_json(s.scope, &s.csrf, false),
        None => secure(unauthorized("not signed in")),
    }
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// `POST /ui/session` (JSON `{"password": …}` or `{"token": …}`): checks them as the API does
/// (same rate limiting), then sets the session cookie.
pub async fn sign_in(State(app): State<AppState>, req: Request) -> Response {
    if app.auth.basic.is_none() {
        return session_json(Scope::Admin, "", true);
    }
    // JSON only: a cross-site form cannot send it without a CORS preflight.
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return secure(
            ApiError::BadRequest(
                "sign in with a JSON body: {\"password\": …} or {\"token\": …}".into(),
            )
            .into_response(),
        );
    }
    let ip = client_ip(&req);
    let body = match axum::body::to_bytes(req.into_body(), 16 << 10).await {
        Ok(b) => b,
        Err(_) => {
            return secure(
                ApiError::PayloadTooLarge("sign-in body over 16 KiB".into()).into_response(),
            );
        }
    };
    let Ok(form) = serde_json::from_slice::<SignIn>(&body) else {
        return secure(
            ApiError::BadRequest(
                "sign in with a JSON body: {\"password\": …} or {\"token\": …}".into(),
            )
            .into_response(),
        );
    };
    let authorization = match (form.password, form.token) {
        (Some(p), _) if !p.is_empty() => {
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{p}", crate::auth::ADMIN_USER));
            format!("Basic {b64}")
        }
        (_, Some(t)) if !t.is_empty() => format!("Bearer {}", t.trim()),
        _ => return secure(unauthorized("enter the admin password or an API token")),
    };
    let mut headers = HeaderMap::new();
    let Ok(v) = HeaderValue::from_str(&authorization) else {
        return secure(unauthorized("wrong password or token"));
    };
    headers.insert(header::AUTHORIZATION, v);
    let scope = match app.auth.authenticate(ip, &headers).await {
        Ok(s) => s,
        Err(ApiError::Unauthorized(_)) => {
            return secure(unauthorized("wrong password or token"));
        }
        Err(e) => return secure(e.into_response()),
    };
    let (id, csrf) = app.sessions.create(scope);
    tracing::info!(client = %ip, scope = scope.as_str(), "dashboard sign-in");
    let mut r = session_json(scope, &csrf, false);
    let secure_flag = if app.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure_flag}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `DELETE /ui/session`: signs out (needs the CSRF header, like every change).
pub async fn sign_out(State(app): State<AppState>, req: Request) -> Response {
    if let Some(id) = session_cookie(req.headers()) {
        match authenticate_cookie(&app.sessions, req.method(), req.headers(), id) {
            Ok(_) => app.sessions.remove(id),
            Err(r) if r.status() == StatusCode::FORBIDDEN => return secure(r),
            Err(_) => {}
        }
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("fjord_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    secure(r)
}

/// `GET /system/function/{name}/history`: the function's last 15 minutes, sampled every few
/// seconds (for the dashboard's graphs).
#[utoipa::path(
    get, path = "/system/function/{name}/history", tag = "functions",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "The function's name"),
        ("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Default `openfaas-fn`"),
    ),
    responses(
        (status = 200, description = "Samples of the last 15 minutes, oldest first (kept in memory: empty after a restart)", body = fjord_control::history::FunctionHistory),
        (status = 400, description = "`name` or `namespace` is not a DNS-1123 label", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
        (status = 404, description = "The function is not deployed", body = String, content_type = "text/plain"),
    ),
    security(("basicAuth" = []))
)]
pub async fn history(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let key = FunctionKey::new(&name, namespace_param(&q)?.as_deref())?;
    Ok(axum::Json(app.control.history(&key)?).into_response())
}

/// `GET /system/functions/history`: per function of a namespace, what the functions list
/// shows besides the status (requests/s sparkline, error rate, p50/p99 of the last minute).
#[utoipa::path(
    get, path = "/system/functions/history", tag = "functions",
    params(("namespace" = Option<String>, Query, pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", max_length = 63, description = "Default `openfaas-fn`; an unknown namespace gives `[]`")),
    responses(
        (status = 200, description = "One entry per function, sorted by name", body = Vec<fjord_control::history::FunctionSummary>),
        (status = 400, description = "`namespace` is not a DNS-1123 label", body = String, content_type = "text/plain"),
        (status = 401, response = crate::responses::Unauthorized),
    ),
    security(("basicAuth" = []))
)]
pub async fn summaries(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ns = namespace_param(&q)?;
    Ok(axum::Json(app.control.history_summaries(ns.as_deref())).into_response())
}

/// When this server started (for its uptime).
static STARTED: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// `GET /system/status`: the server as the dashboard's System page shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemStatus {
    /// fjord's release and commit.
    pub version: String,
    pub commit: String,
    pub arch: String,
    /// `--containers`: `auto`, `on` or `off` (processes always run).
    pub containers: String,
    /// `embedded` (SQLite in the data dir) or `nats`.
    pub queue: String,
    /// Whether the queue answered just now; why not when it did not.
    pub queue_healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_error: Option<String>,
    /// Async calls waiting, over every function.
    pub queued: u64,
    pub uptime_seconds: u64,
    /// Authentication on `/system` (off with `--auth=false`), HTTPS.
    pub auth: bool,
    pub tls: bool,
    /// The NATS queue's server (without credentials), with `--queue nats://…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// The triggers besides HTTP: `cron` (built in) and each broker connector (`--nats`,
    /// `--mqtt`) with its connection state, as `/healthz` reports it.
    pub connectors: Vec<ConnectorStatus>,
    /// The data dir's file system: size and free space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// What the data dir holds: its top-level entries (bundles, images, logs, the state and
    /// queue databases…) with their sizes, largest first (counted at most once a minute).
    pub data_dir: String,
    pub data_dir_bytes: u64,
    pub data_dir_parts: Vec<DataDirPart>,
}

/// One connector on the System page.
#[derive(Serialize, utoipa::ToSchema, Clone)]
pub struct ConnectorStatus {
    pub name: String,
    /// `connected`, `disconnected, reconnecting`, or `built in` (cron).
    pub state: String,
}

/// One top-level entry of the data dir and its size.
#[derive(Serialize, utoipa::ToSchema, Clone)]
pub struct DataDirPart {
    pub name: String,
    pub bytes: u64,
}

/// Files counted at most per data dir walk (a huge image store is reported as at least this).
const WALK_LIMIT: usize = 200_000;

/// The data dir's top-level entries and their sizes (allocated bytes), largest first.
fn data_dir_usage(dir: &std::path::Path) -> Vec<DataDirPart> {
    use std::os::unix::fs::MetadataExt;
    fn size(p: &std::path::Path, budget: &mut usize) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        let mut total = m.blocks() * 512;
        if m.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if *budget == 0 {
                    break;
                }
                *budget -= 1;
                total += size(&e.path(), budget);
            }
        }
        total
    }
    let mut budget = WALK_LIMIT;
    let mut parts: Vec<DataDirPart> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| DataDirPart {
            name: e.file_name().to_string_lossy().into_owned(),
            bytes: size(&e.path(), &mut budget),
        })
        .collect();
    parts.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    parts
}

/// The last count of the data dir, and when.
static USAGE: Mutex<Option<(Instant, Vec<DataDirPart>)>> = Mutex::new(None);

async fn cached_data_dir_usage(dir: std::path::PathBuf) -> Vec<DataDirPart> {
    const FRESH: Duration = Duration::from_secs(60);
    if let Some((at, parts)) = USAGE.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        && at.elapsed() < FRESH
    {
        return parts.clone();
    }
    let parts = tokio::task::spawn_blocking(move || data_dir_usage(&dir))
        .await
        .unwrap_or_default();
    *USAGE.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), parts.clone()));
    parts
}

#[utoipa::path(
    get, path = "/system/status", tag = "system",
    responses(
        (status = 200, description = "The server: version, queue and its health, connectors, uptime, disk and data dir usage", body = SystemStatus),
        (status = 401, response = crate::responses::Unauthorized),
    ),
    security(("basicAuth" = []))
)]
pub async fn system_status(State(app): State<AppState>) -> axum::Json<SystemStatus> {
    let v = crate::api::version_info();
    let (queue_healthy, queue_error, queued) = match app.queue.depth().await {
        Ok(d) => (true, None, d.iter().map(|e| e.1).sum()),
        Err(e) => (false, Some(e.to_string()), 0),
    };
    let disk = nix::sys::statvfs::statvfs(&app.config.data_dir).ok();
    let mut connectors = vec![ConnectorStatus {
        name: "cron".into(),
        state: "built in".into(),
    }];
    connectors.extend(
        app.config
            .connectors
            .health
            .report()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(name, state)| ConnectorStatus {
                name: name.into(),
                state: state.into(),
            }),
    );
    let parts = cached_data_dir_usage(app.config.data_dir.clone()).await;
    axum::Json(SystemStatus {
        version: v.release,
        commit: v.sha,
        arch: std::env::consts::ARCH.into(),
        containers: format!("{:?}", app.config.containers.mode).to_lowercase(),
        queue: match app.config.queue {
            crate::state::QueueBackend::Embedded => "embedded".into(),
            crate::state::QueueBackend::Nats { .. } => "nats".into(),
        },
        queue_healthy,
        queue_error,
        queued,
        queue_url: match &app.config.queue {
            crate::state::QueueBackend::Nats { url, .. } => Some(fjord_queue::redact_url(url)),
            crate::state::QueueBackend::Embedded => None,
        },
        connectors,
        data_dir: app.config.data_dir.display().to_string(),
        data_dir_bytes: parts.iter().map(|p| p.bytes).sum(),
        data_dir_parts: parts,
        uptime_seconds: STARTED.elapsed().as_secs(),
        auth: app.auth.basic.is_some(),
        tls: app.config.tls.is_some(),
        disk_total_bytes: disk.as_ref().map(|d| d.blocks() * d.fragment_size()),
        disk_free_bytes: disk
            .as_ref()
            .map(|d| d.blocks_available() * d.fragment_size()),
    })
}

/// The dashboard listener's own routes (outside the API's route table: they are not JSON API
/// and the guard does not cover them; `/ui/session` checks credentials itself).
pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    std::sync::LazyLock::force(&STARTED);
    axum::Router::new()
        .route("/", get(root))
        .route("/ui", get(ui_root))
        .route(
            "/ui/session",
            get(get_session).post(sign_in).delete(sign_out),
        )
        .route("/ui/", get(asset))
        .route("/ui/{*file}", get(asset))
}

/// Names the dashboard's files (for tests).
#[cfg(test)]
fn asset_paths() -> std::collections::HashSet<&'static str> {
    ASSETS.iter().map(|a| a.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_carry_their_scope_and_expire() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let (id, csrf) = s.create_at(Scope::Read, t0);
        assert_eq!(id.len(), 43, "256 random bits, base64url");
        assert_ne!(id, csrf);
        let got = s.get_at(&id, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(got.scope, Scope::Read);
        assert_eq!(got.csrf, csrf);
        assert_eq!(s.get_at("nope", t0), None);
        // Idle: used at +59 min keeps it; then an hour without use ends it.
        let t1 = t0 + Duration::from_secs(59 * 60);
        assert!(s.get_at(&id, t1).is_some());
        assert!(s.get_at(&id, t1 + IDLE).is_none());
        assert!(s.get_at(&id, t1).is_none(), "an expired session is gone");
        // Absolute: even in use, 12 hours end it.
        let (id, _) = s.create_at(Scope::Admin, t0);
        let mut t = t0;
        while t < t0 + MAX_AGE - Duration::from_secs(1800) {
            t += Duration::from_secs(1800);
            assert!(s.get_at(&id, t).is_some());
        }
        assert!(s.get_at(&id, t0 + MAX_AGE).is_none());
        // Sign-out.
        let (id, _) = s.create_at(Scope::Admin, t0);
        s.remove(&id);
        assert!(s.get_at(&id, t0).is_none());
    }

    #[test]
    fn session_table_is_bounded() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let (first, _) = s.create_at(Scope::Admin, t0);
        for i in 0..CAPACITY as u64 {
            s.create_at(Scope::Read, t0 + Duration::from_millis(i + 1));
        }
        assert!(s.lock().len() <= CAPACITY);
        assert!(
            s.get_at(&first, t0 + Duration::from_secs(1)).is_none(),
            "the oldest went"
        );
    }

    #[test]
    fn cookie_changes_need_the_sessions_csrf_token() {
        let s = Sessions::new();
        let (id, csrf) = s.create(Scope::Deploy);
        let mut h = HeaderMap::new();
        assert_eq!(
            authenticate_cookie(&s, &Method::GET, &h, &id).unwrap(),
            Scope::Deploy
        );
        let refused = authenticate_cookie(&s, &Method::POST, &h, &id).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        h.insert(CSRF_HEADER, HeaderValue::from_static("wrong"));
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let r = authenticate_cookie(&s, &m, &h, &id).unwrap_err();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{m}");
        }
        h.insert(CSRF_HEADER, HeaderValue::from_str(&csrf).unwrap());
        assert_eq!(
            authenticate_cookie(&s, &Method::DELETE, &h, &id).unwrap(),
            Scope::Deploy
        );
        let unknown = authenticate_cookie(&s, &Method::GET, &h, "forged").unwrap_err();
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        assert!(
            unknown.headers().get(header::WWW_AUTHENTICATE).is_none(),
            "no browser dialog over the dashboard"
        );
    }

    #[test]
    fn functions_never_get_the_session_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fjord_session=secret; b=2"),
        );
        strip_session_cookie(&mut h);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("fjord_session=secret"),
        );
        strip_session_cookie(&mut h);
        assert!(h.get(header::COOKIE).is_none());
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("theirs=1"));
        strip_session_cookie(&mut h);
        assert_eq!(h[header::COOKIE], "theirs=1");
    }

    #[test]
    fn the_dashboards_address_follows_the_main_one() {
        let main: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let ui = |s: &str| s.parse::<UiListen>().unwrap().resolve(main);
        assert_eq!(ui("default"), Some("0.0.0.0:8081".parse().unwrap()));
        assert_eq!(ui("off"), None);
        assert_eq!(
            ui("127.0.0.1:9000"),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(UiListen::Default.resolve(any), Some(any), "a free port");
        assert!("nope".parse::<UiListen>().is_err());
    }

    #[test]
    fn redirects_keep_the_host_the_browser_asked_for() {
        let host = |h: &str| {
            let req = Request::builder()
                .uri("/ui/")
                .header(header::HOST, h)
                .body(axum::body::Body::empty())
                .unwrap();
            request_host(&req)
        };
        assert_eq!(host("fjord.example:8080").as_deref(), Some("fjord.example"));
        assert_eq!(host("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(
            host("evil.example/x@y:1"),
            None,
            "nothing that bends the URL"
        );
        assert_eq!(host(""), None);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fjord_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("fjord_sessionx=1"));
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn every_page_file_is_embedded() {
        let paths = asset_paths();
        let index = std::str::from_utf8(ASSETS[0].2).unwrap();
        // Every script and style the shell loads is served.
        for part in index.split("/ui/").skip(1) {
            let file = part.split('"').next().unwrap();
            assert!(
                paths.contains(file),
                "{file} is loaded by index.html but not embedded"
            );
        }
        assert!(!index.contains("<script>"), "no inline scripts (CSP)");
        let handler = index.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "no inline handlers (CSP)");
    }
}
