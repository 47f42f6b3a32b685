//! `fjord serve`.

use std::time::Duration;

use crate::cli::{LogFormat, RuntimeKind, ServeArgs};
use crate::config::default_data_dir;
use crate::error::CliError;

fn init_logging(format: LogFormat) {
    // kube's client logs each failed request as an error without saying which; fjord logs
    // the failures itself, with the operation and what to do.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    // Colours only for a person at a terminal: a journal, a file or `kubectl logs` would
    // keep the escape codes (NO_COLOR: https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--runtime` with the flags it depends on, checked before anything starts.
fn check_runtime(a: &ServeArgs) -> Result<(), CliError> {
    match a.runtime {
        RuntimeKind::Local => match &a.kubeconfig {
            Some(_) => Err(CliError::Usage(
                "--kubeconfig is for --runtime kubernetes: add --runtime kubernetes, or remove --kubeconfig".into(),
            )),
            None => Ok(()),
        },
        RuntimeKind::Kubernetes if !cfg!(feature = "kubernetes") => Err(CliError::Other(
            "--runtime kubernetes: this fjord was built without Kubernetes support (cargo feature `kubernetes`); build it with default features".into(),
        )),
        // Every gateway replica takes async calls: one replica's file would lose them with
        // its pod, and the others' calls would never reach it.
        RuntimeKind::Kubernetes if a.queue == fjord_gateway::QueueBackend::Embedded => {
            Err(CliError::Usage(
                "--runtime kubernetes needs async calls in NATS JetStream, shared by the gateway's replicas: give --queue nats://HOST:PORT (or FJORD_QUEUE), e.g. the server of deploy/kubernetes/nats.yaml".into(),
            ))
        }
        RuntimeKind::Kubernetes => Ok(()),
    }
}

/// The Kubernetes runtime for `--runtime kubernetes`: the cluster of `kubeconfig` (else
/// `KUBECONFIG`, `~/.kube/config` or the in-cluster service account), once its API server has
/// answered, so that a gateway without its cluster does not start.
#[cfg(feature = "kubernetes")]
async fn kubernetes(
    kubeconfig: Option<std::path::PathBuf>,
    rollout_timeout: Duration,
) -> Result<std::sync::Arc<fjord_kube::KubeRuntime>, CliError> {
    use fjord_kube::{ClusterConfig, KubeError};
    /// Long enough for a distant API server, short enough to be told at once.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
    let from = match kubeconfig {
        Some(path) => ClusterConfig::Kubeconfig(path),
        None => ClusterConfig::Infer,
    };
    let config = fjord_kube::KubeRuntimeConfig {
        rollout_timeout,
        ..Default::default()
    };
    match fjord_kube::KubeRuntime::connect(&from, config, PROBE_TIMEOUT).await {
        Ok(rt) => {
            tracing::info!(cluster = ?from, "functions run on Kubernetes");
            Ok(std::sync::Arc::new(rt))
        }
        Err(e) => {
            let todo = match (&e, &from) {
                (KubeError::Kubeconfig { .. }, _) => {
                    "give --kubeconfig a kubeconfig for the cluster (`kubectl config view --raw --minify > FILE` writes the current context's)"
                }
                (KubeError::ApiServer { .. }, ClusterConfig::Kubeconfig(_)) => {
                    "check that the cluster is up and that the server address of the kubeconfig's current context is reachable from here"
                }
                (KubeError::ApiServer { .. }, ClusterConfig::Infer) => {
                    "check that the cluster is up and reachable from here, or name another with --kubeconfig"
                }
                _ => {
                    "run fjord in the cluster under a service account (deploy/kubernetes/), or give --kubeconfig FILE (or KUBECONFIG)"
                }
            };
            Err(CliError::Other(format!(
                "--runtime kubernetes: {e}; {todo}"
            )))
        }
    }
}

/// The Function object controller, for the namespaces fjord serves on the cluster.
#[cfg(feature = "kubernetes")]
fn function_objects(
    cluster: &std::sync::Arc<fjord_kube::KubeRuntime>,
) -> fjord_gateway::MoreTriggers {
    use super::function_objects::FunctionObjects;
    let config = fjord_kube::ControllerConfig::default();
    tracing::info!(
        "Function objects (openfaas.com/v1) in {} and the namespaces labelled openfaas=1 are deployed",
        config.namespaces.join(", ")
    );
    let cluster = cluster.clone();
    std::sync::Arc::new(move |control| {
        vec![Box::new(FunctionObjects {
            runtime: cluster.clone(),
            config: config.clone(),
            control: control.clone(),
        }) as Box<dyn fjord_gateway::trigger::Trigger>]
    })
}

pub fn run(a: ServeArgs) -> Result<(), CliError> {
    init_logging(a.log_format);
    check_runtime(&a)?;
    let mut config =
        fjord_gateway::GatewayConfig::new(a.listen, a.data_dir.unwrap_or_else(default_data_dir));
    config.auth = a.auth;
    config.ui_listen = a.ui_listen;
    config.shutdown_timeout = Duration::from_secs(a.shutdown_timeout);
    config.rollout_timeout = Duration::from_secs(a.rollout_timeout);
    config.ready_timeout = Duration::from_secs(a.ready_timeout);
    config.pids_max = a.pids_max;
    config.tmp_size = a.tmp_size;
    config.default_memory_limit = (a.default_memory_limit > 0).then_some(a.default_memory_limit);
    config.tune_kernel = a.tune_kernel;
    config.network = fjord_gateway::NetworkConfig {
        mode: a.function_network,
        subnet: a.function_subnet,
        egress_allow: a.function_egress_allow,
    };
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
    config.connectors = fjord_gateway::connectors::ConnectorSettings {
        nats: a.nats_connector,
        mqtt: a.mqtt,
        mqtt_tls: fjord_gateway::connectors::mqtt::MqttTls {
            ca: a.mqtt_ca,
            cert: a.mqtt_cert,
            key: a.mqtt_key,
        },
        mqtt_version: a.mqtt_version,
        ..Default::default()
    };
    config.auth_fail_limit = a.auth_fail_limit;
    config.callback = fjord_gateway::CallbackPolicy::new(a.callback_allow);
    config.metrics_auth = a.metrics_auth;
    config.max_connections = a
        .max_connections
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    config.max_connections_per_ip = a.max_connections_per_ip;
    config.max_forks_per_function = a.max_forks_per_function;
    config.max_forks_per_ip = a.max_forks_per_ip;
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        config.tls = Some(fjord_gateway::TlsFiles { cert, key });
    }
    config.autoscale_interval = a.autoscale_interval.max(Duration::from_millis(100));
    config.scale_zero_duration = a.scale_zero_duration;
    config.containers = fjord_gateway::ContainerSettings {
        mode: a.containers,
        oci_runtime: a.oci_runtime,
        insecure_registries: a.insecure_registry,
        registry_config: a.registry_config,
        max_layer_bytes: a.max_layer_size,
    };
    config.trust_policy = a.trust_policy;
    if let Some(w) = a.workers {
        config.workers = usize::from(w);
    }
    let runtime = a.runtime;
    #[cfg(feature = "kubernetes")]
    let kubeconfig = a.kubeconfig;
    // Before any thread: replicas' mounts live in fjord's own mount namespace (replicas of
    // this machine only).
    if runtime == RuntimeKind::Local {
        fjord_runtime::private_mount_namespace();
    }
    // The control runtime (API side effects, replica supervision); HTTP workers have their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fjord-control")
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        // On the control runtime: the Kubernetes runtime's watches run on it.
        #[cfg(feature = "kubernetes")]
        if runtime == RuntimeKind::Kubernetes {
            let cluster = kubernetes(kubeconfig, config.rollout_timeout).await?;
            config.more_triggers = Some(function_objects(&cluster));
            config.runtime = Some(cluster);
        }
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
