//! Reaching a cluster: the client's configuration (a kubeconfig, or the in-cluster service
//! account) and a first request that shows the API server answers, so that a gateway that
//! cannot reach its cluster refuses to start instead of accepting deploys it cannot apply.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::KubeError;
use crate::runtime::{KubeRuntime, KubeRuntimeConfig};

/// Where the Kubernetes client's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterConfig {
    /// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account (kube's
    /// `Config::infer`).
    Infer,
    /// The current context of this kubeconfig file.
    Kubeconfig(PathBuf),
}

/// The client configuration `from` names; nothing is sent to the cluster yet.
pub async fn client_config(from: &ClusterConfig) -> Result<kube::Config, KubeError> {
    match from {
        ClusterConfig::Infer => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(kube::Error::InferConfig(e))),
        ClusterConfig::Kubeconfig(path) => {
            let bad = |e: kube::config::KubeconfigError| KubeError::Kubeconfig {
                path: path.clone(),
                reason: match e {
                    // Its own text repeats the path.
                    kube::config::KubeconfigError::ReadConfig(io, _) => {
                        format!("cannot read it: {io}")
                    }
                    other => other.to_string(),
                },
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(bad)
        }
    }
}

/// Asks the API server at `server` (the client's) for its version, within `timeout`: the
/// one request every authenticated client may make, so an error here is the connection's or
/// the credentials', never RBAC's.
pub async fn probe(
    client: &kube::Client,
    server: &str,
    timeout: Duration,
) -> Result<(), KubeError> {
    let failed = |reason: String| KubeError::ApiServer {
        server: server.to_string(),
        reason,
    };
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) => {
            let hint = match status.code {
                401 => " (the kubeconfig's credentials were refused)",
                _ => "",
            };
            Err(failed(format!(
                "it answered {} {}: {}{hint}",
                status.code, status.reason, status.message
            )))
        }
        // Without kube's own prefix ("ServiceError: "): the chain says what failed.
        Ok(Err(kube::Error::Service(e))) => Err(failed(error_chain(e.as_ref()))),
        Ok(Err(kube::Error::HyperError(e))) => Err(failed(error_chain(&e))),
        Ok(Err(e)) => Err(failed(error_chain(&e))),
        Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
    }
}

/// An error and its sources on one line: hyper's own text ("client error (Connect)") hides
/// the cause ("Connection refused") in its source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

impl KubeRuntime {
    /// A runtime for the cluster `from` names, once its API server has answered ([`probe`]
    /// within `probe_timeout`). Call it inside a Tokio runtime: the watches run on it.
    pub async fn connect(
        from: &ClusterConfig,
        config: KubeRuntimeConfig,
        probe_timeout: Duration,
    ) -> Result<Self, KubeError> {
        let client_config = client_config(from).await?;
        let server = client_config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client = kube::Client::try_from(client_config).map_err(KubeError::Config)?;
        probe(&client, &server, probe_timeout).await?;
        Self::new(client, config)
    }
}
