//! An in-memory [`Runtime`]: replicas are in-process endpoints that answer at once. It
//! records what it was asked to do, so control-plane rules can be unit-tested without
//! processes, root or a wall clock; it passes the same contract suite as real runtimes.
//!
//! Conventions a test uses to steer it: an image starting with `invalid` fails
//! [`Runtime::validate`]; a version whose image starts with `broken` never becomes ready
//! (its rollout fails and the previous version keeps serving). Each replica answers
//! `200` with `<image> <env MARKER>` (the deployment's `MARKER` env var).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fjord_core::{FunctionKey, FunctionSpec};
use http::Response;
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;

use crate::logs::LogBook;
use crate::{
    Applied, BoxFuture, Endpoint, EndpointKind, FunctionHandle, InProcess, InProcessBody,
    InProcessRequest, Runtime, RuntimeError, Serving, Source,
};

/// One thing the fake runtime was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Apply { function: String, replicas: u64 },
    Scale { function: String, replicas: u64 },
    Remove { function: String },
    Shutdown,
}

struct FakeFunction {
    handle: Arc<FunctionHandle>,
    spec: Arc<FunctionSpec>,
}

/// See the module docs.
#[derive(Default)]
pub struct FakeRuntime {
    /// Shown as the runtime's name ("fake" unless made with [`FakeRuntime::named`]).
    name: &'static str,
    functions: Mutex<HashMap<FunctionKey, FakeFunction>>,
    recorded: Mutex<Vec<Recorded>>,
}

/// A fake replica: answers with its version's image and `MARKER`.
struct FakeReplica {
    reply: Bytes,
}

impl InProcess for FakeReplica {
    fn call<'a>(
        &'a self,
        _handle: &'a FunctionHandle,
        _serving: &'a Serving,
        _req: InProcessRequest<'a>,
    ) -> BoxFuture<'a, Response<InProcessBody>> {
        let body = Full::new(self.reply.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        Box::pin(async move { Response::new(body) })
    }
}

impl FakeRuntime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A fake runtime that calls itself `name` (to tell two apart, e.g. `process` and
    /// `container`, in a control plane's tests).
    pub fn named(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            ..Self::default()
        })
    }

    /// What it was asked to do so far, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, r: Recorded) {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }

    fn endpoints(spec: &FunctionSpec, n: u64) -> Vec<Arc<Endpoint>> {
        let marker = spec
            .deployment
            .env_vars
            .as_ref()
            .and_then(|e| e.get("MARKER"))
            .cloned()
            .unwrap_or_default();
        let reply = Bytes::from(format!("{} {marker}", spec.deployment.image));
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    Arc::from(format!("{}-fake{i}", spec.key.name)),
                    EndpointKind::InProcess(Arc::new(FakeReplica {
                        reply: reply.clone(),
                    })),
                    None,
                ))
            })
            .collect()
    }
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        if self.name.is_empty() {
            "fake"
        } else {
            self.name
        }
    }

    fn isolates(&self) -> bool {
        false
    }

    fn validate(&self, spec: &FunctionSpec, _source: &Source) -> Result<(), RuntimeError> {
        if spec.deployment.image.starts_with("invalid") {
            return Err(RuntimeError::Invalid(format!(
                "image: {:?} cannot run here",
                spec.deployment.image
            )));
        }
        Ok(())
    }

    fn apply(
        &self,
        spec: Arc<FunctionSpec>,
        source: Source,
        replicas: u64,
    ) -> Result<Applied, RuntimeError> {
        self.validate(&spec, &source)?;
        self.record(Recorded::Apply {
            function: spec.key.to_string(),
            replicas,
        });
        let (tx, done) = oneshot::channel();
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let broken = spec.deployment.image.starts_with("broken");
        if let Some(f) = functions.get_mut(&spec.key) {
            let generation = f.handle.begin_rollout(replicas);
            if broken {
                let _ = tx.send(Err(format!(
                    "version {generation} never became ready (fake: image {})",
                    spec.deployment.image
                )));
            } else {
                f.handle.set_desired(replicas);
                f.handle.publish(Serving {
                    spec: spec.clone(),
                    endpoints: Self::endpoints(&spec, replicas),
                });
                f.spec = spec;
                f.handle.rollout().state = crate::RolloutState::Ready;
                let _ = tx.send(Ok(()));
            }
            return Ok(Applied {
                handle: f.handle.clone(),
                generation,
                done,
            });
        }
        let handle = Arc::new(FunctionHandle::new(
            spec.clone(),
            replicas,
            Arc::new(LogBook::new(None)),
            "fake",
            None,
        ));
        let generation = handle.begin_rollout(replicas);
        if broken {
            handle.set_last_error(Some("fake: broken image".into()));
            handle.rollout().state = crate::RolloutState::Failed;
        } else {
            handle.publish(Serving {
                spec: spec.clone(),
                endpoints: Self::endpoints(&spec, replicas),
            });
            handle.rollout().state = crate::RolloutState::Ready;
        }
        // As the real runtimes: a new function's deploy is answered at once; a broken first
        // version shows as a failed rollout.
        let _ = tx.send(Ok(()));
        functions.insert(
            spec.key.clone(),
            FakeFunction {
                handle: handle.clone(),
                spec,
            },
        );
        Ok(Applied {
            handle,
            generation,
            done,
        })
    }

    fn scale(&self, key: &FunctionKey, replicas: u64) -> Result<(), RuntimeError> {
        let functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let f = functions
            .get(key)
            .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
        self.record(Recorded::Scale {
            function: key.to_string(),
            replicas,
        });
        f.handle.set_desired(replicas);
        let endpoints = if f.spec.deployment.image.starts_with("broken") {
            Vec::new()
        } else {
            Self::endpoints(&f.spec, replicas)
        };
        f.handle.publish(Serving {
            spec: f.spec.clone(),
            endpoints,
        });
        Ok(())
    }

    fn remove<'a>(&'a self, key: &'a FunctionKey) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let f = self
                .functions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key)
                .ok_or_else(|| RuntimeError::NotFound(key.to_string()))?;
            self.record(Recorded::Remove {
                function: key.to_string(),
            });
            f.handle.set_desired(0);
            f.handle.publish(Serving {
                spec: f.spec,
                endpoints: Vec::new(),
            });
            Ok(())
        })
    }

    fn get(&self, key: &FunctionKey) -> Option<Arc<FunctionHandle>> {
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|f| f.handle.clone())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.record(Recorded::Shutdown);
            let drained: Vec<_> = self
                .functions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for (_, f) in drained {
                f.handle.set_desired(0);
                f.handle.publish(Serving {
                    spec: f.spec,
                    endpoints: Vec::new(),
                });
            }
        })
    }
}
