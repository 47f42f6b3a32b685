//! The container runtime passes the `Runtime` contract: images made in the test from
//! busybox, run by the real runc (root needed, as for every container).

mod common;

use std::sync::Arc;

use fjord_core::FunctionSpec;
use fjord_runtime::{ContainerRuntime, Runtime, Source};
use fjord_runtime_api::BoxFuture;

/// Dropped in this order: the data dir's cleanup (after a failed check) before the layers.
struct Container {
    runtime: Arc<ContainerRuntime>,
    _dir: common::DataDir,
    layers: common::Layers,
}

async fn subject() -> Container {
    let dir = common::data_dir();
    Container {
        runtime: Arc::new(common::runtime(dir.path()).await),
        layers: common::Layers::busybox(&[]),
        _dir: dir,
    }
}

impl fjord_runtime_api::contract::Subject for Container {
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.runtime.clone()
    }
    /// busybox httpd whose CGI answers `hello $MARKER`.
    fn spec(&self, name: &str, marker: &str) -> (FunctionSpec, Source) {
        common::spec(
            serde_json::json!({
                "service": name, "image": "fjord-test/httpd:1",
                "envVars": {"MARKER": marker},
            }),
            self.layers.image(&common::HTTPD, &[]),
        )
    }
    /// An image whose process exits at once.
    fn broken(&self, name: &str) -> (FunctionSpec, Source) {
        common::spec(
            serde_json::json!({"service": name, "image": "fjord-test/broken:1"}),
            self.layers
                .image(&["/bin/sh", "-c", "echo cannot start >&2; exit 3"], &[]),
        )
    }
    /// No Entrypoint, no Cmd, no envProcess: nothing to run.
    fn invalid(&self, name: &str) -> (FunctionSpec, Source) {
        common::spec(
            serde_json::json!({"service": name, "image": "fjord-test/empty:1"}),
            self.layers.image(&[], &[]),
        )
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
