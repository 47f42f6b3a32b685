//! `fjord serve`.

use std::time::Duration;

use crate::cli::{LogFormat, ServeArgs};
use crate::config::default_data_dir;
use crate::error::CliError;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(a: ServeArgs) -> Result<(), CliError> {
    init_logging(a.log_format);
    let mut config =
        fjord_gateway::GatewayConfig::new(a.listen, a.data_dir.unwrap_or_else(default_data_dir));
    config.auth = a.auth;
    config.shutdown_timeout = Duration::from_secs(a.shutdown_timeout);
    config.rollout_timeout = Duration::from_secs(a.rollout_timeout);
    config.ready_timeout = Duration::from_secs(a.ready_timeout);
    config.pids_max = a.pids_max;
    config.tune_kernel = a.tune_kernel;
    config.exec_timeout = (!a.exec_timeout.is_zero()).then_some(a.exec_timeout);
    config.read_timeout = (!a.read_timeout.is_zero()).then_some(a.read_timeout);
    config.write_timeout = (!a.write_timeout.is_zero()).then_some(a.write_timeout);
    config.header_timeout = (!a.header_timeout.is_zero()).then_some(a.header_timeout);
    config.max_async_body = usize::try_from(a.max_async_body).unwrap_or(usize::MAX);
    config.async_keep_method = a.async_method == "original";
    config.queue = a.queue;
    config.nats = fjord_gateway::NatsSettings {
        creds: a.nats_creds,
        nkey: a.nats_nkey,
        ca: a.nats_ca,
        tls: a.nats_tls,
        queue_key: a.queue_key,
    };
    config.auth_fail_limit = a.auth_fail_limit;
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        config.tls = Some(fjord_gateway::TlsFiles { cert, key });
    }
    config.autoscale_interval = a.autoscale_interval.max(Duration::from_millis(100));
    if let Some(w) = a.workers {
        config.workers = usize::from(w);
    }
    // The control runtime (API side effects, replica supervision); HTTP workers have their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fjord-control")
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            trigger.cancel();
        });
        fjord_gateway::serve(config, shutdown).await.map_err(|e| {
            tracing::error!("{e}");
            CliError::Other(e.to_string())
        })
    })
}
