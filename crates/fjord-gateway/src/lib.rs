//! fjord's HTTP gateway: the OpenFaaS REST API under `/system`, basic auth, and the invoke
//! path `/function/*`, on top of the process runtime and the state store.

mod api;
mod auth;
mod control;
mod error;
mod invoke;
mod logs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{any, get, post};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

pub use api::version_info;
pub use auth::{ADMIN_USER, password_path};
pub use control::{ControlPlane, DeployMode};
pub use error::ApiError;
pub use invoke::{split_function_path, strip_hop_by_hop};

/// Settings of `fjord serve`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Basic auth on `/system/*`.
    pub auth: bool,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// How long an update may take to become ready before it is abandoned.
    pub rollout_timeout: Duration,
    /// How long a request waits for a starting replica before a 503.
    pub ready_timeout: Duration,
    /// `pids.max` per replica.
    pub pids_max: u64,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            auth: true,
            shutdown_timeout: Duration::from_secs(10),
            rollout_timeout: Duration::from_secs(60),
            ready_timeout: invoke::DEFAULT_READY_TIMEOUT,
            pids_max: 1024,
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub control: Arc<ControlPlane>,
    pub client: Client<HttpConnector, Body>,
    pub config: Arc<GatewayConfig>,
    pub shutdown: CancellationToken,
}

/// Errors that stop `fjord serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin credentials: {0}")]
    Auth(std::io::Error),
    #[error("state store: {0}")]
    Store(#[from] fjord_store::StoreError),
    #[error("runtime: {0}")]
    Runtime(#[from] fjord_runtime::RuntimeError),
    #[error(
        "cannot listen on {addr}: {source} (is another fjord serve running? pick another with --listen)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Api(#[from] ApiError),
}

fn router(state: AppState, creds: Option<Arc<auth::Credentials>>) -> Router {
    let system = Router::new()
        .route(
            "/system/functions",
            get(api::list_functions)
                .post(api::create_function)
                .put(api::update_function)
                .delete(api::delete_function),
        )
        .route("/system/function/{name}", get(api::get_function))
        .route("/system/scale-function/{name}", post(api::scale_function))
        .route("/system/info", get(api::info))
        .route("/system/namespaces", get(api::namespaces))
        .route("/system/logs", get(logs::logs))
        .route_layer(axum::middleware::from_fn_with_state(creds, auth::require));
    Router::new()
        .merge(system)
        .route("/function/{*path}", any(invoke::invoke))
        .route("/healthz", get(api::healthz))
        .fallback(api::not_found)
        .with_state(state)
}

/// Runs the gateway until `shutdown` is cancelled, then drains and stops every replica.
pub async fn serve(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let data_dir = &config.data_dir.clone();
    let dd_err = |source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(dd_err)?;
    std::fs::set_permissions(
        data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(dd_err)?;

    let creds = if config.auth {
        let (creds, created) = auth::load_or_create(data_dir).map_err(StartError::Auth)?;
        let path = auth::password_path(data_dir);
        if created {
            tracing::info!(user = auth::ADMIN_USER, password_file = %path.display(), "generated the admin password for /system/*");
        } else {
            tracing::info!(user = auth::ADMIN_USER, password_file = %path.display(), "basic auth on /system/*");
        }
        Some(Arc::new(creds))
    } else {
        tracing::warn!(
            "--auth=false: /system/* is open to anyone who can reach {}",
            config.listen
        );
        None
    };

    let store = fjord_store::Store::open(&data_dir.join("state.db"))?;
    let runtime = fjord_runtime::ProcessRuntime::new(fjord_runtime::RuntimeConfig {
        data_dir: data_dir.clone(),
        rollout_timeout: config.rollout_timeout,
        stop_grace: Duration::from_secs(5),
        pids_max: config.pids_max,
    })
    .await?;
    let control = ControlPlane::new(store, runtime);
    let restored = control.restore().await?;
    if restored > 0 {
        tracing::info!(
            functions = restored,
            "restored functions from the state store"
        );
    }

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    // Lets scripts and tests that asked for port 0 find the gateway.
    let _ = std::fs::write(data_dir.join("gateway.addr"), local.to_string());
    tracing::info!(addr = %local, data_dir = %data_dir.display(), "fjord serve listening on http://{local}");

    let config = Arc::new(config);
    let state = AppState {
        control: control.clone(),
        client,
        config: config.clone(),
        shutdown: shutdown.clone(),
    };
    let app = router(state, creds);
    let graceful = {
        let s = shutdown.clone();
        async move { s.cancelled().await }
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(graceful);
    let server = tokio::spawn(async move { server.await });

    shutdown.cancelled().await;
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: draining in-flight requests");
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(_) => tracing::info!("all requests drained"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    control.shutdown().await;
    let _ = std::fs::remove_file(data_dir.join("gateway.addr"));
    tracing::info!("stopped");
    Ok(())
}
