//! A function's state on the cluster, read from what Kubernetes reports: its Deployment (how
//! many replicas are wanted and available), the EndpointSlices of its Service (which pods
//! may get requests now) and its pods (why new ones do not start).
//!
//! Routing uses EndpointSlices and their `ready` condition, as OpenFaaS Pro does, rather than
//! core/v1 Endpoints' first subset (faas-netes CE): a pod that is shutting down is marked
//! `terminating` and not ready there, so it stops getting requests as soon as its watchdog
//! reports unhealthy, while its in-flight requests drain.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use fjord_core::spec::LABEL_FAAS_FUNCTION;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::objects::{FUNCTION_PORT, PORT_NAME};

/// The label the EndpointSlice controller puts on a Service's slices.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Container waiting reasons that will not resolve by waiting: the image cannot be pulled,
/// the container cannot be made, or it keeps exiting. `ContainerCreating` and
/// `PodInitializing` are progress, not problems.
pub const STUCK_WAITING_REASONS: [&str; 8] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What fjord needs to know about a function on the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FunctionReplicas {
    /// Replicas wanted (`spec.replicas`; Kubernetes' default of 1 when unset).
    pub desired: u32,
    /// Replicas that have been ready for the Deployment's `minReadySeconds`.
    pub available: u32,
    /// Where requests may go now: each ready pod's address and port, sorted, no duplicates.
    pub ready_endpoints: Vec<SocketAddr>,
    /// Why the function is not getting to its desired state, in words for a person, when
    /// Kubernetes says something is wrong (rather than merely not done yet).
    pub not_progressing: Option<String>,
}

/// The function's state from its Deployment, the EndpointSlices and its pods. Slices of other
/// Services and pods of other functions are ignored, so callers may pass a whole namespace's.
pub fn function_replicas(
    deployment: &Deployment,
    slices: &[EndpointSlice],
    pods: &[Pod],
) -> FunctionReplicas {
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    FunctionReplicas {
        desired: u32::try_from(desired).unwrap_or(0),
        available: u32::try_from(available).unwrap_or(0),
        ready_endpoints: ready_endpoints(name, slices),
        not_progressing: not_progressing(deployment, name, pods),
    }
}

/// The addresses of the ready endpoints in the slices of Service `service`.
///
/// Only `conditions.ready == true` counts. The API lets a slice leave `ready` unset (meaning
/// unknown); the EndpointSlice controller always sets it for a selector Service like a
/// function's, so unset is treated as not ready: no request goes to a pod nobody vouched for.
pub fn ready_endpoints(service: &str, slices: &[EndpointSlice]) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        if labels
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .map(String::as_str)
            != Some(service)
        {
            continue;
        }
        // FQDN slices name hosts, not pods.
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let port = slice_port(slice);
        for endpoint in &slice.endpoints {
            let is_ready = endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            if !is_ready {
                continue;
            }
            ready.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    ready.into_iter().collect()
}

/// The pods' port: the slice's `http` port (the Service's target port), else 8080.
fn slice_port(slice: &EndpointSlice) -> u16 {
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(FUNCTION_PORT as u16)
}

/// Why the function's pods are not coming up, most specific first: a container stuck waiting
/// (it names the image or the crash), a pod no node can take, then the Deployment's own
/// conditions (which only say that something is wrong).
fn not_progressing(deployment: &Deployment, name: &str, pods: &[Pod]) -> Option<String> {
    let mut ours: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            labels.and_then(|l| l.get(LABEL_FAAS_FUNCTION)).map(String::as_str) == Some(name)
                // A pod being deleted is on its way out; its state explains nothing new.
                && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    // The same pods in any order give the same reason.
    ours.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let stuck = ours.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        let reason = status
            .init_container_statuses
            .iter()
            .chain(status.container_statuses.iter())
            .flatten()
            .find_map(stuck_container)?;
        Some(format!("{reason} (pod {})", pod_name(pod)))
    });
    let unschedulable = || {
        ours.iter().find_map(|pod| {
            let condition = pod.status.as_ref()?.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })?;
            Some(format!(
                "Unschedulable: {} (pod {})",
                condition.message.as_deref().unwrap_or("no node can run it"),
                pod_name(pod)
            ))
        })
    };
    let deployment_condition = || {
        let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
        let failure = conditions
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True");
        let deadline = conditions
            .iter()
            .find(|c| c.type_ == "Progressing" && c.status == "False");
        let c = failure.or(deadline)?;
        Some(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or(&c.type_),
            c.message.as_deref().unwrap_or("no message")
        ))
    };
    stuck.or_else(unschedulable).or_else(deployment_condition)
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("unnamed")
}

/// `CrashLoopBackOff: back-off 10s restarting failed container=hello (container hello; last
/// exit: OOMKilled, code 137)` for a container stuck in one of [`STUCK_WAITING_REASONS`].
fn stuck_container(c: &ContainerStatus) -> Option<String> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if !STUCK_WAITING_REASONS.contains(&reason) {
        return None;
    }
    let mut text = reason.to_string();
    if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
        text.push_str(": ");
        text.push_str(message);
    }
    text.push_str(&format!(" (container {}", c.name));
    if let Some(last) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        text.push_str(&format!(
            "; last exit: {}, code {}",
            last.reason.as_deref().unwrap_or("unknown"),
            last.exit_code
        ));
    }
    text.push(')');
    Some(text)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::{Value, json};

    use super::*;

    fn from(v: Value) -> EndpointSlice {
        serde_json::from_value(v).expect("a valid EndpointSlice")
    }

    fn slice(service: &str, endpoints: Value) -> EndpointSlice {
        from(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{service}-abcde"),
                "labels": { "kubernetes.io/service-name": service },
            },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": endpoints,
        }))
    }

    fn deployment(replicas: Option<i32>, status: Value) -> Deployment {
        let mut d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "hello", "namespace": "openfaas-fn" },
            "spec": {
                "selector": { "matchLabels": { "faas_function": "hello" } },
                "template": { "spec": { "containers": [{ "name": "hello" }] } },
            },
            "status": status,
        });
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        serde_json::from_value(d).expect("a valid Deployment")
    }

    fn pod(name: &str, status: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "labels": { "faas_function": "hello" } },
            "status": status,
        }))
        .expect("a valid Pod")
    }

    fn waiting(reason: &str, message: &str) -> Value {
        json!({ "containerStatuses": [{
            "name": "hello", "image": "hello:1", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": { "waiting": { "reason": reason, "message": message } },
        }]})
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    #[test]
    fn only_ready_endpoints_get_requests() {
        let slices = [slice(
            "hello",
            json!([
                { "addresses": ["10.0.0.2"], "conditions": { "ready": true, "serving": true, "terminating": false } },
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": false, "serving": false, "terminating": false } },
            ]),
        )];
        assert_eq!(
            ready_endpoints("hello", &slices),
            vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]
        );
    }

    #[test]
    fn terminating_endpoints_are_excluded_even_while_serving() {
        // A pod draining after SIGTERM: still serving its in-flight requests, but no new ones.
        let slices = [slice(
            "hello",
            json!([
                { "addresses": ["10.0.0.4"], "conditions": { "ready": false, "serving": true, "terminating": true } },
                { "addresses": ["10.0.0.5"], "conditions": { "ready": false, "serving": false, "terminating": true } },
                { "addresses": ["10.0.0.6"], "conditions": { "ready": true, "serving": true, "terminating": false } },
            ]),
        )];
        assert_eq!(
            ready_endpoints("hello", &slices),
            vec![addr("10.0.0.6:8080")]
        );
    }

    #[test]
    fn unknown_readiness_is_not_ready() {
        let slices = [slice(
            "hello",
            json!([{ "addresses": ["10.0.0.7"] }, { "addresses": ["10.0.0.8"], "conditions": {} }]),
        )];
        assert_eq!(ready_endpoints("hello", &slices), Vec::<SocketAddr>::new());
    }

    #[test]
    fn endpoints_of_other_services_and_fqdn_slices_are_ignored() {
        let ready = json!([{ "addresses": ["10.0.0.9"], "conditions": { "ready": true } }]);
        let mut fqdn = slice(
            "hello",
            json!([{ "addresses": ["pod.example"], "conditions": { "ready": true } }]),
        );
        fqdn.address_type = "FQDN".to_string();
        let slices = [slice("other", ready), fqdn];
        assert_eq!(ready_endpoints("hello", &slices), Vec::<SocketAddr>::new());
    }

    #[test]
    fn endpoints_are_deduplicated_across_slices_and_keep_ipv6() {
        // During a slice hand-over the controller may list one pod in two slices.
        let endpoints = json!([
            { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
            { "addresses": ["fd00::1"], "conditions": { "ready": true } },
        ]);
        let mut v6 = slice("hello", endpoints.clone());
        v6.address_type = "IPv6".to_string();
        let slices = [slice("hello", endpoints), v6];
        assert_eq!(
            ready_endpoints("hello", &slices),
            vec![addr("10.0.0.1:8080"), addr("[fd00::1]:8080")]
        );
    }

    #[test]
    fn the_port_comes_from_the_slices_http_port() {
        let mut s = slice(
            "hello",
            json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": true } }]),
        );
        s.ports = serde_json::from_value(json!([
            { "name": "metrics", "port": 8081 },
            { "name": "http", "port": 9000 },
        ]))
        .expect("ports");
        assert_eq!(
            ready_endpoints("hello", &[s.clone()]),
            vec![addr("10.0.0.1:9000")]
        );
        s.ports = None;
        assert_eq!(ready_endpoints("hello", &[s]), vec![addr("10.0.0.1:8080")]);
    }

    #[test]
    fn desired_and_available_come_from_the_deployment() {
        let d = deployment(
            Some(3),
            json!({ "availableReplicas": 2, "readyReplicas": 2 }),
        );
        let r = function_replicas(&d, &[], &[]);
        assert_eq!((r.desired, r.available), (3, 2));
        assert_eq!(r.not_progressing, None);

        // Kubernetes defaults replicas to 1; a new Deployment has no status yet.
        let r = function_replicas(&deployment(None, json!({})), &[], &[]);
        assert_eq!((r.desired, r.available), (1, 0));

        let r = function_replicas(&deployment(Some(0), json!({})), &[], &[]);
        assert_eq!((r.desired, r.available), (0, 0));
    }

    #[test]
    fn function_replicas_routes_to_its_own_ready_endpoints() {
        let d = deployment(Some(1), json!({ "availableReplicas": 1 }));
        let slices = [slice(
            "hello",
            json!([{ "addresses": ["10.1.2.3"], "conditions": { "ready": true } }]),
        )];
        let r = function_replicas(&d, &slices, &[]);
        assert_eq!(r.ready_endpoints, vec![addr("10.1.2.3:8080")]);
    }

    #[test]
    fn image_pull_failures_are_reported() {
        let d = deployment(Some(1), json!({}));
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            let pods = [pod(
                "hello-1",
                waiting(reason, "Back-off pulling image \"hello:1\""),
            )];
            let r = function_replicas(&d, &[], &pods);
            assert_eq!(
                r.not_progressing.as_deref(),
                Some(
                    format!(
                        "{reason}: Back-off pulling image \"hello:1\" (container hello) (pod hello-1)"
                    )
                    .as_str()
                )
            );
        }
    }

    #[test]
    fn a_crash_loop_names_the_last_exit() {
        let d = deployment(Some(1), json!({}));
        let pods = [pod(
            "hello-1",
            json!({ "containerStatuses": [{
                "name": "hello", "image": "hello:1", "imageID": "", "ready": false,
                "restartCount": 4,
                "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container" } },
                "lastState": { "terminated": { "reason": "OOMKilled", "exitCode": 137 } },
            }]}),
        )];
        assert_eq!(
            function_replicas(&d, &[], &pods).not_progressing.as_deref(),
            Some(
                "CrashLoopBackOff: back-off 40s restarting failed container (container hello; last exit: OOMKilled, code 137) (pod hello-1)"
            )
        );
    }

    #[test]
    fn starting_containers_are_not_a_problem() {
        let d = deployment(Some(1), json!({}));
        for reason in ["ContainerCreating", "PodInitializing"] {
            let pods = [pod("hello-1", waiting(reason, ""))];
            assert_eq!(
                function_replicas(&d, &[], &pods).not_progressing,
                None,
                "{reason}"
            );
        }
    }

    #[test]
    fn other_functions_and_deleted_pods_are_ignored() {
        let d = deployment(Some(1), json!({}));
        let mut other = pod("other-1", waiting("ErrImagePull", "x"));
        other.metadata.labels = Some([("faas_function".to_string(), "other".to_string())].into());
        let mut leaving = pod("hello-old", waiting("CrashLoopBackOff", "x"));
        leaving.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-05-01T00:00:00Z")).expect("time");
        assert_eq!(
            function_replicas(&d, &[], &[other, leaving]).not_progressing,
            None
        );
    }

    #[test]
    fn the_first_stuck_pod_by_name_is_reported() {
        let d = deployment(Some(2), json!({}));
        let pods = [
            pod("hello-b", waiting("CrashLoopBackOff", "b")),
            pod("hello-a", waiting("ErrImagePull", "a")),
        ];
        let reason = function_replicas(&d, &[], &pods)
            .not_progressing
            .expect("a reason");
        assert!(reason.starts_with("ErrImagePull: a "), "{reason}");
    }

    #[test]
    fn unschedulable_pods_are_reported() {
        let d = deployment(Some(1), json!({}));
        let pods = [pod(
            "hello-1",
            json!({ "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory.",
            }]}),
        )];
        assert_eq!(
            function_replicas(&d, &[], &pods).not_progressing.as_deref(),
            Some("Unschedulable: 0/3 nodes are available: 3 Insufficient memory. (pod hello-1)")
        );
    }

    #[test]
    fn deployment_conditions_are_the_last_resort() {
        let d = deployment(
            Some(1),
            json!({ "conditions": [
                { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                  "message": "ReplicaSet \"hello-5d\" has timed out progressing." },
            ]}),
        );
        assert_eq!(
            function_replicas(&d, &[], &[]).not_progressing.as_deref(),
            Some("ProgressDeadlineExceeded: ReplicaSet \"hello-5d\" has timed out progressing.")
        );

        let d = deployment(
            Some(1),
            json!({ "conditions": [
                { "type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated" },
                { "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                  "message": "pods \"hello-x\" is forbidden: exceeded quota: compute" },
            ]}),
        );
        assert_eq!(
            function_replicas(&d, &[], &[]).not_progressing.as_deref(),
            Some("FailedCreate: pods \"hello-x\" is forbidden: exceeded quota: compute")
        );

        // A pod's own reason is more specific than the deadline it caused.
        let d = deployment(
            Some(1),
            json!({ "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded" }]}),
        );
        let pods = [pod("hello-1", waiting("ImagePullBackOff", "no such image"))];
        let reason = function_replicas(&d, &[], &pods)
            .not_progressing
            .expect("a reason");
        assert!(reason.starts_with("ImagePullBackOff"), "{reason}");
    }

    #[test]
    fn progressing_deployments_have_no_reason() {
        let d = deployment(
            Some(1),
            json!({ "conditions": [
                { "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" },
                { "type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable" },
            ]}),
        );
        assert_eq!(function_replicas(&d, &[], &[]).not_progressing, None);
    }
}
