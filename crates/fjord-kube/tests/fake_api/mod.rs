//! A small fake Kubernetes API server behind kube's mock service (a `tower_test` pair), shared
//! by the runtime's and the Function controller's tests: lists from per-collection contents,
//! watches as streamed bodies the test pushes events into, server-side apply by echoing the
//! object (with a generation), scale, status patches and delete with success, and scripted
//! answers that take precedence. Every request is recorded, so a test waits for the one it
//! expects instead of sleeping.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type MockBody = UnsyncBoxBody<Bytes, BoxError>;
pub type MockHandle = tower_test::mock::Handle<Request<kube::client::Body>, Response<MockBody>>;

/// Every wait's bound: generous, the machine is shared.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const NS: &str = "openfaas-fn";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/openfaas-fn/deployments";
pub const SERVICES: &str = "/api/v1/namespaces/openfaas-fn/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/openfaas-fn/endpointslices";
pub const PODS: &str = "/api/v1/namespaces/openfaas-fn/pods";
pub const FUNCTIONS: &str = "/apis/openfaas.com/v1/namespaces/openfaas-fn/functions";
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// A second function namespace, for the Function controller's namespace following.
pub const TEAM_NS: &str = "team-a";
pub const TEAM_FUNCTIONS: &str = "/apis/openfaas.com/v1/namespaces/team-a/functions";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// Query parameters, empty ones dropped (kube writes `?&a=b`).
    pub query: BTreeSet<String>,
    pub content_type: Option<String>,
    pub body: Value,
    /// The status the fake answered with.
    pub status: u16,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        self.query.contains("watch=true")
    }
    pub fn is_list(&self, collection: &str) -> bool {
        self.method == Method::GET && self.path == collection && !self.is_watch()
    }
}

#[derive(Default)]
pub struct State {
    /// List contents per collection path.
    pub lists: HashMap<&'static str, Vec<Value>>,
    /// Open watch streams per collection path.
    pub watches: HashMap<&'static str, Vec<mpsc::UnboundedSender<Bytes>>>,
    /// Answers for (method, path), used before the defaults, first in first out.
    pub scripted: VecDeque<(Method, String, u16, Value)>,
    /// `metadata.generation` of each applied Deployment.
    pub generations: HashMap<String, i64>,
    pub resource_version: u64,
    pub recorded: Vec<Recorded>,
    /// Open log streams per pod name.
    pub logs: HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
    /// Ticks on every recorded request.
    pub seen: watch::Sender<usize>,
}

pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code,
    })
}

pub fn full(code: u16, v: &Value) -> Response<MockBody> {
    let body = Full::new(Bytes::from(v.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(code).expect("a status code");
    r
}

/// A response body streaming what is sent on `rx` until its senders are gone.
pub fn streamed(rx: mpsc::UnboundedReceiver<Bytes>) -> MockBody {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

pub fn list_kind(collection: &str) -> &'static str {
    match collection {
        DEPLOYMENTS => "DeploymentList",
        SLICES => "EndpointSliceList",
        FUNCTIONS | TEAM_FUNCTIONS => "FunctionList",
        NAMESPACES => "NamespaceList",
        SERVICES => "ServiceList",
        _ => "PodList",
    }
}

pub fn collection_of(path: &str) -> Option<&'static str> {
    [
        DEPLOYMENTS,
        SERVICES,
        SLICES,
        PODS,
        FUNCTIONS,
        NAMESPACES,
        TEAM_FUNCTIONS,
    ]
    .into_iter()
    .find(|c| *c == path)
}

/// A client whose requests the returned fake answers.
pub fn fake_cluster() -> (kube::Client, FakeApi) {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    (kube::Client::new(service, NS), FakeApi::start(handle))
}

impl FakeApi {
    pub fn start(handle: MockHandle) -> Self {
        let api = FakeApi {
            state: Arc::default(),
            seen: watch::Sender::new(0),
        };
        tokio::spawn(api.clone().serve(handle));
        api
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake API state")
    }

    pub async fn serve(self, mut handle: MockHandle) {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.expect("request body").to_bytes();
            let mut rec = Recorded {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts
                    .uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                status: 200,
            };
            let response = self.respond(&mut rec);
            self.lock().recorded.push(rec);
            self.seen.send_modify(|n| *n += 1);
            send.send_response(response);
        }
    }

    pub fn respond(&self, rec: &mut Recorded) -> Response<MockBody> {
        let mut st = self.lock();
        if let Some(i) = st
            .scripted
            .iter()
            .position(|(m, p, _, _)| *m == rec.method && *p == rec.path)
            && let Some((_, _, code, body)) = st.scripted.remove(i)
        {
            rec.status = code;
            return full(code, &body);
        }
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        if rec.method == Method::GET
            && let Some(pod) = rec
                .path
                .strip_prefix(PODS)
                .and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.strip_suffix("/log"))
        {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            st.logs.entry(pod.to_string()).or_default().push(tx);
            return Response::new(streamed(rx));
        }
        if rec.method == Method::GET
            && let Some(collection) = collection_of(&rec.path)
        {
            if rec.is_watch() {
                let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                st.watches.entry(collection).or_default().push(tx);
                return Response::new(streamed(rx));
            }
            let items = st.lists.get(collection).cloned().unwrap_or_default();
            return full(
                200,
                &json!({
                    "apiVersion": "v1", "kind": list_kind(collection),
                    "metadata": { "resourceVersion": rv }, "items": items,
                }),
            );
        }
        if rec.method == Method::PATCH && rec.path.ends_with("/scale") {
            let name = rec.path.rsplit('/').nth(1).unwrap_or_default();
            let replicas = rec.body["spec"]["replicas"].clone();
            return full(
                200,
                &json!({
                    "apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": { "name": name, "namespace": NS, "resourceVersion": rv },
                    "spec": { "replicas": replicas },
                }),
            );
        }
        if rec.method == Method::PATCH
            && let Some(name) = rec
                .path
                .strip_prefix(FUNCTIONS)
                .and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.strip_suffix("/status"))
        {
            // A status patch: the object it would make (the spec is not the point here).
            return full(
                200,
                &json!({
                    "apiVersion": "openfaas.com/v1", "kind": "Function",
                    "metadata": { "name": name, "namespace": NS, "resourceVersion": rv },
                    "spec": { "name": name, "image": "" },
                    "status": rec.body["status"].clone(),
                }),
            );
        }
        if rec.method == Method::PATCH {
            let mut object = rec.body.clone();
            if rec.path.starts_with(DEPLOYMENTS) {
                let generation = st.generations.entry(rec.path.clone()).or_insert(0);
                *generation += 1;
                object["metadata"]["generation"] = json!(*generation);
            }
            object["metadata"]["resourceVersion"] = json!(rv);
            return full(200, &object);
        }
        if rec.method == Method::DELETE {
            return full(200, &status(200, "", ""));
        }
        rec.status = 404;
        full(404, &status(404, "NotFound", "not found"))
    }

    pub fn set_list(&self, collection: &'static str, items: Vec<Value>) {
        self.lock().lists.insert(collection, items);
    }

    pub fn script(&self, method: Method, path: &str, code: u16, body: Value) {
        self.lock()
            .scripted
            .push_back((method, path.to_string(), code, body));
    }

    /// Sends a watch event to every open watch of `collection`.
    pub fn push(&self, collection: &'static str, event_type: &str, mut object: Value) {
        let mut st = self.lock();
        st.resource_version += 1;
        if object.get("metadata").is_some() {
            object["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        }
        let line = format!("{}\n", json!({ "type": event_type, "object": object }));
        let senders = st.watches.entry(collection).or_default();
        senders.retain(|tx| tx.send(Bytes::from(line.clone())).is_ok());
        assert!(!senders.is_empty(), "no open watch on {collection}");
    }

    /// Writes `line` to every open log stream of `pod`; false when none is open.
    pub fn log(&self, pod: &str, line: &str) -> bool {
        let mut st = self.lock();
        let senders = st.logs.entry(pod.to_string()).or_default();
        senders.retain(|tx| tx.send(Bytes::from(format!("{line}\n"))).is_ok());
        !senders.is_empty()
    }

    /// Ends the open log streams of `pod` (as an API server closing the connection).
    pub fn end_logs(&self, pod: &str) {
        self.lock().logs.remove(pod);
    }

    /// Whether a watch of `collection` is still open (its reader has not gone).
    pub fn watch_open(&self, collection: &'static str) -> bool {
        let mut st = self.lock();
        let senders = st.watches.entry(collection).or_default();
        senders.retain(|tx| !tx.is_closed());
        !senders.is_empty()
    }

    /// Whether a reader still holds a log stream of `pod` open.
    pub fn log_followed(&self, pod: &str) -> bool {
        let mut st = self.lock();
        let senders = st.logs.entry(pod.to_string()).or_default();
        senders.retain(|tx| !tx.is_closed());
        !senders.is_empty()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().recorded.clone()
    }

    /// Waits until `n` recorded requests match `pred`, and returns those.
    pub async fn wait_for(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        let mut seen = self.seen.subscribe();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let matching: Vec<Recorded> = self.recorded().into_iter().filter(|r| pred(r)).collect();
            if matching.len() >= n {
                return matching;
            }
            if tokio::time::timeout_at(deadline, seen.changed())
                .await
                .is_err()
            {
                panic!(
                    "{what}: {n} request(s) not seen within {PATIENCE:?}; got {:#?}",
                    self.recorded()
                );
            }
        }
    }

    /// Waits until the four watches of the namespace are open.
    pub async fn wait_watching(&self) {
        for c in [DEPLOYMENTS, SERVICES, SLICES, PODS] {
            self.wait_for("watch", 1, |r| r.path == c && r.is_watch())
                .await;
        }
    }
}
