//! The process runtime passes the `Runtime` contract (as root it runs sandboxed: own uid,
//! cgroups, network namespace; otherwise as this user).

use std::sync::Arc;
use std::time::Duration;

use fjord_core::FunctionSpec;
use fjord_core::openfaas::FunctionDeployment;
use fjord_runtime::{ProcessRuntime, Runtime, RuntimeConfig, Source};
use fjord_runtime_api::BoxFuture;

struct Process {
    runtime: Arc<ProcessRuntime>,
    _dir: tempfile::TempDir,
}

/// A uid no user of this machine has (the sandbox runs functions under it as root).
const UID: u32 = 61_234;

fn spec(json: serde_json::Value) -> (FunctionSpec, Source) {
    let d: FunctionDeployment = serde_json::from_value(json).expect("a deployment");
    let source = Source {
        uid: UID,
        ..Source::default()
    };
    (FunctionSpec::from_deployment(d).expect("a spec"), source)
}

async fn subject() -> Process {
    // Not /tmp: functions get a private /tmp, so the data dir lives elsewhere.
    let dir = tempfile::Builder::new()
        .prefix("fjord-contract-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let runtime = ProcessRuntime::new(RuntimeConfig {
        data_dir: dir.path().to_path_buf(),
        rollout_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(2),
        pids_max: 256,
        tune_kernel: false,
        network: Default::default(),
        tmp_size_bytes: fjord_runtime::DEFAULT_TMP_SIZE,
        default_memory_bytes: Some(fjord_runtime::DEFAULT_MEMORY_LIMIT),
    })
    .await
    .expect("the process runtime starts");
    Process {
        runtime: Arc::new(runtime),
        _dir: dir,
    }
}

impl fjord_runtime_api::contract::Subject for Process {
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.runtime.clone()
    }
    /// Fork mode: `env` prints the environment, MARKER included.
    fn spec(&self, name: &str, marker: &str) -> (FunctionSpec, Source) {
        spec(serde_json::json!({
            "service": name, "image": "env", "envProcess": "env",
            "envVars": {"MARKER": marker},
        }))
    }
    /// An http-mode replica whose process exits at once: it crash-loops and never gets ready.
    fn broken(&self, name: &str) -> (FunctionSpec, Source) {
        spec(serde_json::json!({
            "service": name, "image": "false", "envProcess": "false",
            "envVars": {"mode": "http"},
        }))
    }
    fn invalid(&self, name: &str) -> (FunctionSpec, Source) {
        spec(serde_json::json!({
            "service": name, "image": "missing", "envProcess": "/nonexistent/fjord-contract",
        }))
    }
    fn connect(
        &self,
        authority: &str,
    ) -> BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        let a = authority.to_string();
        Box::pin(async move {
            let (host, port) = a.rsplit_once(':').expect("host:port");
            fjord_runtime::netns::connect(host, port.parse().expect("a port")).await
        })
    }
}

fjord_runtime_api::runtime_contract_tests!(subject());
