//! `--runtime kubernetes`: the Function object controller of `fjord_kube::controller`, on
//! this gateway's control plane (deploys go through the same checks as the REST API's).

use std::sync::Arc;

use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use fjord_gateway::invoke::Invoker;
use fjord_gateway::trigger::{BoxFuture, Trigger};
use fjord_gateway::{ControlPlane, DeployMode};
use fjord_kube::{ControllerConfig, FunctionStore, StoreError};
use tokio_util::sync::CancellationToken;

/// The control plane as the controller's store.
struct Functions(Arc<ControlPlane>);

fn store_error(e: fjord_control::ControlError) -> StoreError {
    use fjord_control::ControlError as E;
    match e {
        // Refused as it is: only a change of the object can help.
        E::BadRequest(m) | E::Forbidden(m) | E::NotFound(m) => StoreError::Invalid(m),
        other => StoreError::Failed(other.to_string()),
    }
}

impl FunctionStore for Functions {
    fn deployment(&self, key: &FunctionKey) -> Option<FunctionDeployment> {
        match self.0.store().get(&key.namespace, &key.name) {
            Ok(f) => f.map(|f| f.deployment),
            Err(e) => {
                tracing::warn!(function = %key, error = %e, "function objects: cannot read the store");
                None
            }
        }
    }

    fn functions(&self, namespace: &str) -> Vec<(FunctionKey, FunctionDeployment)> {
        let all = match self.0.store().list() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "function objects: cannot read the store");
                return Vec::new();
            }
        };
        all.into_iter()
            .filter(|f| f.namespace == namespace)
            .filter_map(|f| {
                let key = FunctionKey::new(&f.name, Some(&f.namespace)).ok()?;
                Some((key, f.deployment))
            })
            .collect()
    }

    fn deploy(
        &self,
        deployment: FunctionDeployment,
    ) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.0
                .deploy(deployment, DeployMode::FunctionObject)
                .await
                .map(|_| ())
                .map_err(store_error)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a FunctionKey,
    ) -> futures_util::future::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self.0.delete_function_object(key).await {
                Ok(()) | Err(fjord_control::ControlError::NotFound(_)) => Ok(()),
                Err(e) => Err(StoreError::Failed(e.to_string())),
            }
        })
    }
}

/// The controller as one of the gateway's triggers (it runs until the gateway stops).
pub struct FunctionObjects {
    pub runtime: Arc<fjord_kube::KubeRuntime>,
    pub config: ControllerConfig,
    pub control: Arc<ControlPlane>,
}

impl Trigger for FunctionObjects {
    fn name(&self) -> &'static str {
        "function-objects"
    }

    fn run(
        self: Box<Self>,
        _invoker: Invoker,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let store = Arc::new(Functions(self.control));
            tokio::select! {
                () = fjord_kube::controller::run(self.runtime.client(), self.config, store) => {}
                () = shutdown.cancelled() => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use fjord_kube::Function;
    use fjord_kube::controller::{deployment_for, is_deployed};

    use super::*;

    fn control() -> (Arc<ControlPlane>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path();
        let store = fjord_store::Store::open(&data.join("state.db")).expect("store");
        let bundles = fjord_gateway::Bundles::new(data, false).expect("bundles");
        let (key, _) = fjord_gateway::SecretKey::load_or_create(data).expect("secrets key");
        let runtime = fjord_runtime_api::fake::FakeRuntime::new();
        (ControlPlane::new(store, runtime, bundles, key), dir)
    }

    fn object(name: &str, image: &str) -> Function {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "openfaas.com/v1", "kind": "Function",
            "metadata": { "name": name, "namespace": "openfaas-fn", "uid": "uid-1", "generation": 1 },
            "spec": {
                "name": name, "image": image, "handler": "fake",
                "environment": { "A": "1" }, "labels": { "team": "x" },
                "annotations": { "com.openfaas.scale.min": "1" },
                "limits": { "memory": "64Mi" },
            },
        }))
        .expect("a Function")
    }

    /// What the controller deploys comes back from the control plane as deployed, so a
    /// re-list or restart deploys nothing again; what the control plane refuses is invalid.
    #[tokio::test]
    async fn deployed_objects_read_back_as_deployed_and_refusals_are_invalid() {
        let (control, _dir) = control();
        let functions = Functions(control.clone());
        let key = FunctionKey::new("hello", None).expect("key");
        let f = object("hello", "fake/v1");
        let d = deployment_for(&key, &f).expect("a deployment");
        assert!(!is_deployed(&functions, &key, &d));
        functions.deploy(d.clone()).await.expect("deployed");
        assert!(is_deployed(&functions, &key, &d));
        let changed = deployment_for(&key, &object("hello", "fake/v2")).expect("a deployment");
        assert!(!is_deployed(&functions, &key, &changed));
        assert_eq!(functions.functions("openfaas-fn").len(), 1);
        assert!(functions.functions("other").is_empty());

        // Refused as it is (a name the REST API refuses too): waits for the object to change.
        let bad_key = FunctionKey::new("ok", None).expect("key");
        let mut bad = deployment_for(&bad_key, &object("ok", "fake/v1")).expect("a deployment");
        bad.service = "Not_A_Name".into();
        assert!(matches!(
            functions.deploy(bad).await,
            Err(StoreError::Invalid(_))
        ));

        // The REST API may not delete it; the controller does, and twice is no error.
        assert!(matches!(
            control.delete(&key).await,
            Err(fjord_control::ControlError::Conflict(_))
        ));
        functions.delete(&key).await.expect("deleted");
        functions.delete(&key).await.expect("already gone");
        assert!(functions.deployment(&key).is_none());
    }
}
