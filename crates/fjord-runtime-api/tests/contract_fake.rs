//! The in-memory fake passes the same contract as the real runtimes.

use std::sync::Arc;

use fjord_core::FunctionSpec;
use fjord_core::openfaas::FunctionDeployment;
use fjord_runtime_api::fake::FakeRuntime;
use fjord_runtime_api::{Runtime, Source};

struct Fake(Arc<FakeRuntime>);

fn spec(name: &str, image: &str, marker: &str) -> (FunctionSpec, Source) {
    let d: FunctionDeployment = serde_json::from_value(serde_json::json!({
        "service": name,
        "image": image,
        "envProcess": "fake-echo",
        "envVars": {"MARKER": marker},
    }))
    .expect("a deployment");
    (
        FunctionSpec::from_deployment(d).expect("a spec"),
        Source::default(),
    )
}

impl fjord_runtime_api::contract::Subject for Fake {
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.0.clone()
    }
    fn spec(&self, name: &str, marker: &str) -> (FunctionSpec, Source) {
        spec(name, "fake/echo:1", marker)
    }
    fn broken(&self, name: &str) -> (FunctionSpec, Source) {
        spec(name, "broken/echo:1", "")
    }
    fn invalid(&self, name: &str) -> (FunctionSpec, Source) {
        spec(name, "invalid/echo:1", "")
    }
}

fjord_runtime_api::runtime_contract_tests!(async { Fake(FakeRuntime::new()) });
