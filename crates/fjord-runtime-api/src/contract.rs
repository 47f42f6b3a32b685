//! The contract every [`Runtime`] passes: run [`runtime_contract_tests!`](crate::runtime_contract_tests)
//! in the runtime's crate with a [`Subject`] that knows how to make specs for it.
//!
//! Waits are condition waits with generous bounds (the machines are shared); nothing asserts
//! that something has not happened yet after a short delay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_core::{FunctionKey, FunctionSpec};
use http::Method;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::prefetch;
use crate::{
    BoxFuture, EndpointKind, FunctionHandle, InProcessRequest, Runtime, RuntimeError, Source,
};

/// What a runtime's contract run needs from it.
pub trait Subject: Send + Sync + 'static {
    fn runtime(&self) -> Arc<dyn Runtime>;
    /// A function named `name` that runs here and whose answer contains `marker`.
    fn spec(&self, name: &str, marker: &str) -> (FunctionSpec, Source);
    /// A version of `name` that never becomes ready (its process exits at once, its image
    /// cannot start…).
    fn broken(&self, name: &str) -> (FunctionSpec, Source);
    /// A spec [`Runtime::validate`] refuses.
    fn invalid(&self, name: &str) -> (FunctionSpec, Source);
    /// Connects to an HTTP endpoint's authority (a runtime may name endpoints its own way).
    fn connect(
        &self,
        authority: &str,
    ) -> BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        let a = authority.to_string();
        Box::pin(async move { tokio::net::TcpStream::connect(a).await })
    }
    /// Cleans up after one check (the default stops every replica).
    fn finish(&self) -> BoxFuture<'static, ()> {
        let rt = self.runtime();
        Box::pin(async move { rt.shutdown().await })
    }
    /// The bound of every wait (a replica start, a rollout).
    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// Generates one `#[tokio::test]` per contract check; `$make` is an async expression giving a
/// [`Subject`].
#[macro_export]
macro_rules! runtime_contract_tests {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_apply_serves() {
            let s = $make.await;
            $crate::contract::apply_serves(&s).await;
            $crate::contract::Subject::finish(&s).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_scale_up_down_and_to_zero() {
            let s = $make.await;
            $crate::contract::scale_up_down_and_to_zero(&s).await;
            $crate::contract::Subject::finish(&s).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_update_rolls_out() {
            let s = $make.await;
            $crate::contract::update_rolls_out(&s).await;
            $crate::contract::Subject::finish(&s).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_failed_update_keeps_old_version() {
            let s = $make.await;
            $crate::contract::failed_update_keeps_old_version(&s).await;
            $crate::contract::Subject::finish(&s).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_validate_refuses_invalid() {
            let s = $make.await;
            $crate::contract::validate_refuses_invalid(&s).await;
            $crate::contract::Subject::finish(&s).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_remove_and_unknown() {
            let s = $make.await;
            $crate::contract::remove_and_unknown(&s).await;
            $crate::contract::Subject::finish(&s).await;
        }
    };
}

/// Calls one ready replica of `handle` with an empty POST; `(status, body)`.
pub async fn call<S: Subject + ?Sized>(
    s: &S,
    handle: &FunctionHandle,
) -> Result<(u16, String), String> {
    let (serving, inflight) = handle.pick().ok_or("no ready replica")?;
    match &inflight.endpoint().kind {
        EndpointKind::InProcess(replica) => {
            let empty: crate::handle::InProcessRequestSource = Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            let body = prefetch(empty, 1024).await.map_err(|e| e.to_string())?;
            let headers = http::HeaderMap::new();
            let resp = replica
                .call(
                    handle,
                    &serving,
                    InProcessRequest {
                        method: &Method::POST,
                        path: "/",
                        query: None,
                        headers: &headers,
                        body,
                    },
                )
                .await;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        }
        EndpointKind::Http { authority } => {
            let mut stream = s
                .connect(authority.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let req = format!(
                "POST / HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            stream
                .read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out).into_owned();
            let status = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
            let body = text
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string();
            Ok((status, body))
        }
    }
}

/// Waits until `cond(handle)` holds, at most the subject's patience.
async fn wait_for<S: Subject + ?Sized>(
    s: &S,
    handle: &FunctionHandle,
    what: &str,
    cond: impl Fn(&FunctionHandle) -> bool,
) {
    let deadline = tokio::time::Instant::now() + s.patience();
    while !cond(handle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {:?}; status: {:?}",
            s.patience(),
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn available(h: &FunctionHandle) -> usize {
    h.serving().endpoints.len()
}

async fn deploy<S: Subject + ?Sized>(
    s: &S,
    rt: &dyn Runtime,
    spec: FunctionSpec,
    source: Source,
    replicas: u64,
) -> Arc<FunctionHandle> {
    rt.validate(&spec, &source).expect("a valid spec validates");
    let applied = rt.apply(Arc::new(spec), source, replicas).expect("apply");
    assert!(applied.generation >= 1, "generations start at 1");
    let h = applied.handle;
    assert!(
        h.wait_ready(s.patience()).await,
        "no replica became ready: {:?}",
        h.status()
    );
    h
}

/// A deployed function gets a ready replica that answers, and the runtime knows it by key.
pub async fn apply_serves<S: Subject + ?Sized>(s: &S) {
    let rt = s.runtime();
    let (spec, source) = s.spec("contract-apply", "m-apply");
    let key = spec.key.clone();
    let h = deploy(s, &*rt, spec, source, 1).await;
    let (status, body) = call(s, &h).await.expect("call");
    assert_eq!(status, 200, "body: {body}");
    assert!(body.contains("m-apply"), "answer {body:?} lacks the marker");
    let got = rt.get(&key).expect("get finds the function");
    assert!(
        Arc::ptr_eq(&got, &h),
        "get returns the handle apply returned"
    );
    assert_eq!(h.status().desired, 1);
    rt.remove(&key).await.expect("remove");
}

/// Scale changes the number of ready replicas, down to zero and back.
pub async fn scale_up_down_and_to_zero<S: Subject + ?Sized>(s: &S) {
    let rt = s.runtime();
    let (spec, source) = s.spec("contract-scale", "m-scale");
    let key = spec.key.clone();
    let h = deploy(s, &*rt, spec, source, 1).await;
    rt.scale(&key, 3).expect("scale to 3");
    assert_eq!(h.desired(), 3);
    wait_for(s, &h, "3 ready replicas", |h| available(h) == 3).await;
    rt.scale(&key, 0).expect("scale to 0");
    assert_eq!(h.desired(), 0);
    wait_for(s, &h, "no replica at zero", |h| available(h) == 0).await;
    assert!(
        !h.wait_ready(Duration::from_millis(10)).await,
        "wait_ready at zero returns false at once"
    );
    rt.scale(&key, 1).expect("scale back to 1");
    assert!(h.wait_ready(s.patience()).await, "ready again after zero");
    let (status, body) = call(s, &h).await.expect("call after zero");
    assert_eq!(status, 200, "body: {body}");
    rt.remove(&key).await.expect("remove");
}

/// An update becomes the serving version; its generation is the next one.
pub async fn update_rolls_out<S: Subject + ?Sized>(s: &S) {
    let rt = s.runtime();
    let (spec, source) = s.spec("contract-update", "m-v1");
    let key = spec.key.clone();
    let h = deploy(s, &*rt, spec, source, 1).await;
    let first = h.status().rollout.generation;
    let (spec2, source2) = s.spec("contract-update", "m-v2");
    let applied = rt.apply(Arc::new(spec2), source2, 1).expect("apply v2");
    assert!(
        Arc::ptr_eq(&applied.handle, &h),
        "an update keeps the handle"
    );
    assert_eq!(applied.generation, first + 1);
    let outcome = tokio::time::timeout(s.patience(), applied.done)
        .await
        .expect("the rollout ends in time")
        .expect("the runtime answers");
    assert_eq!(outcome, Ok(()), "the update rolls out");
    let (status, body) = call(s, &h).await.expect("call v2");
    assert_eq!(status, 200, "body: {body}");
    assert!(
        body.contains("m-v2"),
        "after the rollout v2 answers, got {body:?}"
    );
    rt.remove(&key).await.expect("remove");
}

/// An update that never becomes ready fails and the previous version keeps serving.
pub async fn failed_update_keeps_old_version<S: Subject + ?Sized>(s: &S) {
    let rt = s.runtime();
    let (spec, source) = s.spec("contract-broken", "m-good");
    let key = spec.key.clone();
    let h = deploy(s, &*rt, spec, source, 1).await;
    let (bad, bad_source) = s.broken("contract-broken");
    let applied = rt
        .apply(Arc::new(bad), bad_source, 1)
        .expect("apply broken");
    let outcome = tokio::time::timeout(s.patience(), applied.done)
        .await
        .expect("the rollout ends in time")
        .expect("the runtime answers");
    assert!(
        outcome.is_err(),
        "a version that never gets ready fails its rollout"
    );
    let (status, body) = call(s, &h).await.expect("call the old version");
    assert_eq!(status, 200, "body: {body}");
    assert!(
        body.contains("m-good"),
        "the old version still serves, got {body:?}"
    );
    rt.remove(&key).await.expect("remove");
}

/// `validate` refuses what cannot run, with the reason, and `apply` of it starts nothing.
pub async fn validate_refuses_invalid<S: Subject + ?Sized>(s: &S) {
    let rt = s.runtime();
    let (spec, source) = s.invalid("contract-invalid");
    let key = spec.key.clone();
    match rt.validate(&spec, &source) {
        Err(RuntimeError::Invalid(msg)) => assert!(!msg.is_empty(), "the reason is given"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(rt.get(&key).is_none(), "nothing was started");
}

/// `remove` forgets the function; unknown functions are `NotFound` everywhere.
pub async fn remove_and_unknown<S: Subject + ?Sized>(s: &S) {
    let rt = s.runtime();
    let (spec, source) = s.spec("contract-remove", "m-remove");
    let key = spec.key.clone();
    let h = deploy(s, &*rt, spec, source, 1).await;
    rt.remove(&key).await.expect("remove");
    assert!(rt.get(&key).is_none(), "gone after remove");
    assert_eq!(h.desired(), 0, "a removed function wants no replica");
    assert!(matches!(
        rt.remove(&key).await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(rt.scale(&key, 1), Err(RuntimeError::NotFound(_))));
    let unknown = FunctionKey::new("contract-never-deployed", None).expect("a valid name");
    assert!(rt.get(&unknown).is_none());
    assert!(matches!(
        rt.scale(&unknown, 1),
        Err(RuntimeError::NotFound(_))
    ));
}
