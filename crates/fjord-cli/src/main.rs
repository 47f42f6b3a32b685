//! The `fjord` binary: parses arguments, sets up logging, runs the command, maps errors to
//! exit codes. Everything else lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "fjord",
    version,
    about = "Self-hosted serverless functions in one binary, compatible with OpenFaaS",
    long_about = "fjord runs functions-as-a-service on one machine with nothing else installed: \
an HTTP gateway with the OpenFaaS REST API, a sandboxed process runtime, logs and auth.\n\n\
Start the platform with `fjord serve`, then deploy functions with faas-cli, curl, or the API."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: gateway, runtime and state store
    #[command(
        after_help = "Examples:\n  fjord serve\n  fjord serve --listen 0.0.0.0:8080 --data-dir /var/lib/fjord\n  \
RUST_LOG=debug fjord serve --log-format json"
    )]
    Serve {
        /// Address to listen on (port 0 picks a free port, written to <data-dir>/gateway.addr)
        #[arg(long, default_value = "127.0.0.1:8080", env = "FJORD_LISTEN")]
        listen: SocketAddr,
        /// Where functions, logs and credentials are kept [default: $XDG_DATA_HOME/fjord]
        #[arg(long, env = "FJORD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Require HTTP basic auth on /system/* (user admin; password generated into the data dir)
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
        auth: bool,
        /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        shutdown_timeout: u64,
        /// Seconds an update may take to become ready before it is rolled back
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        rollout_timeout: u64,
        /// Seconds a request waits for a starting replica before a 503
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        ready_timeout: u64,
        /// Maximum processes per replica (cgroup pids limit; stops fork bombs)
        #[arg(long, default_value_t = 1024)]
        pids_max: u64,
        /// As root, set /sys/kernel/rcu_expedited=1 while serving: cgroup moves, and so replica
        /// cold starts, get ~10 ms faster. Restored at shutdown
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
        tune_kernel: bool,
        /// HTTP worker threads, each with its own event loop [default: one per core]
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: Option<u16>,
        /// Log format
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Print fjord's version and commit
    Version,
}

fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("fjord");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/fjord"),
        None => PathBuf::from("/var/lib/fjord"),
    }
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let v = fjord_gateway::version_info();
            println!("fjord {} ({})", v.release, v.sha);
            ExitCode::SUCCESS
        }
        Command::Serve {
            listen,
            data_dir,
            auth,
            shutdown_timeout,
            rollout_timeout,
            ready_timeout,
            pids_max,
            workers,
            tune_kernel,
            log_format,
        } => {
            init_logging(log_format);
            let mut config = fjord_gateway::GatewayConfig::new(
                listen,
                data_dir.unwrap_or_else(default_data_dir),
            );
            config.auth = auth;
            config.shutdown_timeout = Duration::from_secs(shutdown_timeout);
            config.rollout_timeout = Duration::from_secs(rollout_timeout);
            config.ready_timeout = Duration::from_secs(ready_timeout);
            config.pids_max = pids_max;
            config.tune_kernel = tune_kernel;
            if let Some(w) = workers {
                config.workers = usize::from(w);
            }
            // The control runtime (API side effects, replica supervision); HTTP workers have
            // their own.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fjord-control")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: fjord_gateway::GatewayConfig) -> anyhow::Result<()> {
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
    fjord_gateway::serve(config, shutdown).await?;
    Ok(())
}
