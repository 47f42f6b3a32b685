//! Function logs from the pods' log API: one follower per started pod of a function
//! (`GET …/pods/NAME/log?follow=true&timestamps=true&container=FUNCTION`), each line pushed
//! to the function's [`LogBook`] with the pod's name as the instance and the kubelet's
//! timestamp, so `/system/logs` and `fjord logs` merge and follow every pod as they do local
//! replicas.
//!
//! A stream that ends while its pod still runs (the container restarted, the API server
//! closed the connection) is opened again with `sinceTime` at the last line's second, and
//! lines up to the last one seen are skipped. A pod's first stream takes its last
//! [`FIRST_TAIL`] lines, so a gateway started beside long-running pods does not read their
//! whole history. Followers stop when their pod leaves the store (not when it starts
//! terminating: its drain lines still come), is replaced (new uid) or the function is removed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fjord_runtime_api::logs::LogBook;
use futures_util::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, LogParams};

use crate::error::KubeError;

/// Lines a pod's first log stream starts with (the in-memory ring keeps 2,000 per function).
pub const FIRST_TAIL: i64 = 1000;

/// Wait before reopening a pod's log stream that ended or failed.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Wait after a refusal (403: no `pods/log` permission; 4xx): the pod's logs stay away until
/// the role is fixed, without a request per second.
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The running log followers of one function, by pod name.
#[derive(Default)]
pub(crate) struct Followers {
    by_pod: Mutex<HashMap<String, Follower>>,
}

struct Follower {
    uid: String,
    task: tokio::task::AbortHandle,
}

impl Followers {
    /// Follows exactly the started pods among `pods`: new ones get a follower (`spawn`
    /// starts its task), gone or replaced ones lose theirs.
    pub(crate) fn sync(
        &self,
        pods: &[Pod],
        mut spawn: impl FnMut(&str) -> Option<tokio::task::AbortHandle>,
    ) {
        let live: HashMap<&str, &str> = pods
            .iter()
            // Terminating pods too: their last lines (draining, exit) are worth having.
            .filter(|p| started(p))
            .filter_map(|p| {
                Some((
                    p.metadata.name.as_deref()?,
                    p.metadata.uid.as_deref().unwrap_or_default(),
                ))
            })
            .collect();
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        by_pod.retain(|name, f| {
            let keep = live.get(name.as_str()) == Some(&f.uid.as_str()) && !f.task.is_finished();
            if !keep {
                f.task.abort();
            }
            keep
        });
        for (name, uid) in live {
            if by_pod.contains_key(name) {
                continue;
            }
            if let Some(task) = spawn(name) {
                by_pod.insert(
                    name.to_string(),
                    Follower {
                        uid: uid.to_string(),
                        task,
                    },
                );
            }
        }
    }

    /// Stops every follower (the function was removed).
    pub(crate) fn stop_all(&self) {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        for (_, f) in by_pod.drain() {
            f.task.abort();
        }
    }

    /// The pods followed now.
    #[cfg(test)]
    fn pods(&self) -> Vec<String> {
        let by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = by_pod.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Whether a container of the pod has started: before that the log API has nothing and
/// answers 400 ("container is waiting to start").
pub(crate) fn started(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.restart_count > 0
                    || c.state
                        .as_ref()
                        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            })
        })
}

/// Splits a log line the API server wrote with `timestamps=true`: its RFC 3339 time and
/// the text.
pub(crate) fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((t, rest)) => match t.parse::<Timestamp>() {
            Ok(ts) => (Some(ts), rest),
            Err(_) => (None, line),
        },
        None => match line.parse::<Timestamp>() {
            // An empty line: only the time.
            Ok(ts) => (Some(ts), ""),
            Err(_) => (None, line),
        },
    }
}

/// Follows `pod`'s log (container `container`) into `logs` until aborted.
pub(crate) async fn follow_pod(
    client: kube::Client,
    namespace: String,
    container: String,
    pod: String,
    logs: Arc<LogBook>,
) {
    let instance: Arc<str> = Arc::from(pod.as_str());
    let mut last: Option<Timestamp> = None;
    let mut failing: Option<String> = None;
    loop {
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let params = LogParams {
            container: Some(container.clone()),
            follow: true,
            timestamps: true,
            tail_lines: last.is_none().then_some(FIRST_TAIL),
            // Whole seconds (rounded down) are what every kubelet honours: lines of that
            // second already seen are skipped below.
            since_time: last.map(|t| Timestamp::from_second(t.as_second()).unwrap_or(t)),
            ..LogParams::default()
        };
        let wait = match api.log_stream(&pod, &params).await {
            Ok(stream) => {
                if failing.take().is_some() {
                    tracing::info!(%namespace, %pod, "pod logs: following again");
                }
                let mut lines = stream.lines();
                loop {
                    match lines.try_next().await {
                        Ok(Some(line)) => {
                            let (ts, text) = split_timestamp(&line);
                            if let (Some(ts), Some(seen)) = (ts, last)
                                && ts <= seen
                            {
                                continue;
                            }
                            let at = ts.map_or_else(SystemTime::now, SystemTime::from);
                            logs.push_at(&instance, text, at);
                            if ts.is_some() {
                                last = ts;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%namespace, %pod, error = %e, "pod logs: stream ended");
                            break;
                        }
                    }
                }
                REOPEN_AFTER
            }
            Err(e) => {
                let refused = matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 401);
                let text = KubeError::from_kube(
                    crate::error::Operation {
                        verb: "get",
                        resource: "pods/log",
                        namespace: namespace.clone(),
                        name: pod.clone(),
                    },
                    e,
                )
                .to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%namespace, %pod, error = %text, "pod logs: cannot follow; retrying");
                    failing = Some(text);
                }
                if refused {
                    REFUSED_RETRY_AFTER
                } else {
                    REOPEN_AFTER
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, uid: &str, state: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "uid": uid },
            "status": { "containerStatuses": [{
                "name": "f", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": state,
            }]},
        }))
        .expect("a pod")
    }

    #[test]
    fn only_started_containers_have_logs() {
        assert!(started(&pod("a", "1", json!({"running": {}}))));
        assert!(started(&pod(
            "a",
            "1",
            json!({"terminated": {"exitCode": 1}})
        )));
        assert!(!started(&pod(
            "a",
            "1",
            json!({"waiting": {"reason": "ContainerCreating"}})
        )));
        let no_status: Pod = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        assert!(!started(&no_status));
    }

    #[test]
    fn timestamps_are_split_off() {
        let (ts, text) = split_timestamp("2026-12-03T09:00:01.123456789Z hello world");
        assert_eq!(text, "hello world");
        assert_eq!(
            ts.expect("a time").to_string(),
            "2026-12-03T09:00:01.123456789Z"
        );
        assert_eq!(split_timestamp("no time here"), (None, "no time here"));
        let (ts, text) = split_timestamp("2026-12-03T09:00:01Z");
        assert!(ts.is_some());
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn followers_follow_started_pods_and_stop_with_them() {
        let followers = Followers::default();
        let spawned = std::cell::RefCell::new(Vec::new());
        let spawn = |name: &str| {
            spawned.borrow_mut().push(name.to_string());
            Some(tokio::spawn(std::future::pending::<()>()).abort_handle())
        };
        let running = json!({"running": {}});
        followers.sync(
            &[
                pod("a", "1", running.clone()),
                pod("b", "2", json!({"waiting": {}})),
            ],
            spawn,
        );
        assert_eq!(followers.pods(), vec!["a"]);
        // Started now; a still followed, not twice.
        followers.sync(
            &[
                pod("a", "1", running.clone()),
                pod("b", "2", running.clone()),
            ],
            spawn,
        );
        assert_eq!(followers.pods(), vec!["a", "b"]);
        assert_eq!(*spawned.borrow(), vec!["a", "b"]);
        // b replaced by a pod of the same name (new uid); a gone.
        followers.sync(&[pod("b", "3", running.clone())], spawn);
        assert_eq!(followers.pods(), vec!["b"]);
        assert_eq!(*spawned.borrow(), vec!["a", "b", "b"]);
        followers.stop_all();
        assert!(followers.pods().is_empty());
    }
}
