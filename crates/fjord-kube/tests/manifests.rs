//! `deploy/kubernetes/*.yaml` and the golden objects, checked without a cluster:
//!
//! 1. Every document is read into its k8s-openapi type (dispatching on apiVersion and kind)
//!    and written back; it must come back identical. k8s-openapi ignores fields it does not
//!    know, so anything that does not come back is a misspelt or misplaced field, which
//!    `kubectl apply` would also drop (or refuse). Unknown kinds fail.
//! 2. The documents agree with one another: selectors select, ports and accounts exist,
//!    RBAC stays least-privilege, the CRD describes `fjord_kube::crd::Function`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PodTemplateSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One YAML document, as JSON, and where it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    /// `file: Kind/name`, for messages.
    fn what(&self) -> String {
        format!(
            "{}: {}/{}",
            self.file,
            self.str_at("/kind"),
            self.str_at("/metadata/name")
        )
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(files: &[PathBuf]) -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let values: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
        assert!(!values.is_empty(), "{file}: no documents");
        for value in values {
            assert!(
                value.is_object(),
                "{file}: a document that is not a mapping"
            );
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

/// Where `original` and `back` differ, as JSON paths.
fn differences(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => out.push(format!("{here}: unknown field")),
                    Some(other) => differences(value, other, &here, out),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: added when read back"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ if original != back => out.push(format!("{path}: {original} read back as {back}")),
        _ => {}
    }
}

/// Reads `doc` as a `T` and writes it back: the problems found, none if identical.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Vec<String> {
    let typed: T = match serde_json::from_value(doc.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("does not read as its type: {e}")],
    };
    let back = serde_json::to_value(&typed).expect("serialise");
    let mut out = Vec::new();
    differences(doc, &back, "", &mut out);
    out
}

fn typed<T: DeserializeOwned>(doc: &Doc) -> T {
    serde_json::from_value(doc.value.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc.what()))
}

/// The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), the fields fjord
/// uses, with their upstream names; any other field is refused.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_names: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitorEndpoint {
    port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scrape_timeout: Option<String>,
}

/// The problems of one document read as the type its apiVersion and kind name.
fn check_document(doc: &Doc) -> Vec<String> {
    let api_version = doc.str_at("/apiVersion");
    let kind = doc.str_at("/kind");
    macro_rules! dispatch {
        ($($ty:ty),* $(,)?) => {
            $(
                if api_version == <$ty as Resource>::API_VERSION && kind == <$ty as Resource>::KIND {
                    return round_trip::<$ty>(&doc.value);
                }
            )*
        };
    }
    dispatch!(
        Namespace,
        ServiceAccount,
        Service,
        Secret,
        Deployment,
        StatefulSet,
        Role,
        RoleBinding,
        ClusterRole,
        ClusterRoleBinding,
        PodDisruptionBudget,
        NetworkPolicy,
        CustomResourceDefinition,
        fjord_kube::crd::Function,
    );
    if (api_version, kind) == ("monitoring.coreos.com/v1", "ServiceMonitor") {
        return round_trip::<ServiceMonitor>(&doc.value);
    }
    vec![format!(
        "unknown apiVersion/kind {api_version}/{kind}: add its type to this test"
    )]
}

fn assert_all_round_trip(docs: &[Doc]) {
    let problems: Vec<String> = docs
        .iter()
        .flat_map(|doc| {
            check_document(doc)
                .into_iter()
                .map(move |p| format!("{}: {p}", doc.what()))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn manifests() -> Vec<Doc> {
    documents(&yaml_files(&deploy_dir()))
}

fn of_kind<T: DeserializeOwned + Resource>(docs: &[Doc]) -> Vec<T> {
    docs.iter()
        .filter(|d| d.str_at("/apiVersion") == T::API_VERSION && d.str_at("/kind") == T::KIND)
        .map(typed)
        .collect()
}

#[test]
fn every_manifest_document_is_a_known_type_with_only_known_fields() {
    let docs = manifests();
    assert!(docs.len() >= 10, "only {} documents", docs.len());
    assert_all_round_trip(&docs);
}

#[test]
fn golden_objects_round_trip_through_their_types() {
    let docs = documents(&yaml_files(&common::golden_dir()));
    assert!(!docs.is_empty());
    assert_all_round_trip(&docs);
}

#[test]
fn the_checker_catches_unknown_and_misplaced_fields() {
    // The check above passing means nothing unless this fails.
    let doc = |value: Value| Doc {
        file: "test.yaml".into(),
        value,
    };
    let misspelt = doc(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "x" },
        "spec": { "selector": { "a": "b" }, "port": [] },
    }));
    assert_eq!(check_document(&misspelt), vec![".spec.port: unknown field"]);
    let nested = doc(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "x" },
        "spec": {
            "selector": { "matchLabels": { "a": "b" } },
            "template": { "spec": { "containers": [{ "name": "c", "imagePullPolicy": "Always", "readOnly": true }] } },
        },
    }));
    assert_eq!(
        check_document(&nested),
        vec![".spec.template.spec.containers[0].readOnly: unknown field"]
    );
    let unknown = doc(serde_json::json!({ "apiVersion": "example.com/v1", "kind": "Widget" }));
    assert_eq!(check_document(&unknown).len(), 1);
    let monitor = doc(serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": { "name": "x" },
        "spec": { "selector": {}, "endpoints": [{ "port": "http", "intervall": "15s" }] },
    }));
    assert_eq!(check_document(&monitor).len(), 1);
}

fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let labels = labels.cloned().unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod templates of the Deployments and StatefulSets, by namespace.
fn workloads(docs: &[Doc]) -> Vec<(String, String, PodTemplateSpec, LabelSelector)> {
    let mut out = Vec::new();
    for d in of_kind::<Deployment>(docs) {
        let spec = d.spec.expect("spec");
        out.push((
            d.metadata.namespace.expect("namespaced"),
            d.metadata.name.expect("named"),
            spec.template,
            spec.selector,
        ));
    }
    for s in of_kind::<StatefulSet>(docs) {
        let spec = s.spec.expect("spec");
        out.push((
            s.metadata.namespace.expect("namespaced"),
            s.metadata.name.expect("named"),
            spec.template,
            spec.selector,
        ));
    }
    out
}

fn template_labels(t: &PodTemplateSpec) -> Option<&BTreeMap<String, String>> {
    t.metadata.as_ref().and_then(|m| m.labels.as_ref())
}

fn container_port_names(t: &PodTemplateSpec) -> BTreeSet<String> {
    t.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect()
}

#[test]
fn workloads_select_their_own_pods_and_services_find_them() {
    let docs = manifests();
    let workloads = workloads(&docs);
    assert!(!workloads.is_empty());
    for (ns, name, template, selector) in &workloads {
        let match_labels = selector.match_labels.clone().unwrap_or_default();
        assert!(
            labels_match(&match_labels, template_labels(template)),
            "{ns}/{name}: the selector does not select its own pod template"
        );
    }
    for service in of_kind::<Service>(&docs) {
        let ns = service.metadata.namespace.clone().expect("namespaced");
        let name = service.metadata.name.clone().expect("named");
        let spec = service.spec.expect("spec");
        let selector = spec.selector.expect("a selector");
        let targets: Vec<_> = workloads
            .iter()
            .filter(|(wns, _, t, _)| *wns == ns && labels_match(&selector, template_labels(t)))
            .collect();
        assert!(
            !targets.is_empty(),
            "Service {ns}/{name} selects no workload"
        );
        for port in spec.ports.iter().flatten() {
            if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(target)) =
                &port.target_port
            {
                for (_, workload, template, _) in &targets {
                    assert!(
                        container_port_names(template).contains(target),
                        "Service {ns}/{name}: port {target} is not a container port of {workload}"
                    );
                }
            }
        }
    }
}

#[test]
fn namespaces_and_service_accounts_referred_to_exist() {
    let docs = manifests();
    let namespaces: BTreeSet<String> = of_kind::<Namespace>(&docs)
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["openfaas".to_string(), "openfaas-fn".to_string()])
    );
    for doc in &docs {
        if let Some(ns) = doc
            .value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            assert!(
                namespaces.contains(ns),
                "{}: namespace {ns} is not defined",
                doc.what()
            );
        }
    }
    let accounts: BTreeSet<(String, String)> = of_kind::<ServiceAccount>(&docs)
        .into_iter()
        .map(|a| {
            (
                a.metadata.namespace.expect("ns"),
                a.metadata.name.expect("name"),
            )
        })
        .collect();
    for (ns, name, template, _) in workloads(&docs) {
        if let Some(account) = template.spec.and_then(|s| s.service_account_name) {
            assert!(
                accounts.contains(&(ns.clone(), account.clone())),
                "{ns}/{name}: no ServiceAccount {account}"
            );
        }
    }
    let subjects = of_kind::<RoleBinding>(&docs)
        .into_iter()
        .flat_map(|b| b.subjects.unwrap_or_default())
        .chain(
            of_kind::<ClusterRoleBinding>(&docs)
                .into_iter()
                .flat_map(|b| b.subjects.unwrap_or_default()),
        );
    for s in subjects {
        assert_eq!(s.kind, "ServiceAccount");
        let ns = s.namespace.expect("a subject's namespace");
        assert!(
            accounts.contains(&(ns.clone(), s.name.clone())),
            "binding to a missing {ns}/{}",
            s.name
        );
    }
}

#[test]
fn only_the_function_namespace_is_marked_for_functions() {
    let docs = manifests();
    for ns in of_kind::<Namespace>(&docs) {
        let name = ns.metadata.name.clone().expect("name");
        let marked = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("openfaas"))
            .map(String::as_str);
        let expected = (name == "openfaas-fn").then_some("1");
        assert_eq!(marked, expected, "namespace {name}");
    }
}

#[test]
fn rbac_is_least_privilege() {
    let docs = manifests();
    let roles = of_kind::<Role>(&docs);
    assert_eq!(roles.len(), 1);
    let role = &roles[0];
    assert_eq!(role.metadata.namespace.as_deref(), Some("openfaas-fn"));
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let key = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                granted
                    .entry(key)
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
        assert!(
            !rule.verbs.iter().any(|v| v == "*")
                && !rule.resources.iter().flatten().any(|r| r == "*")
                && !rule.api_groups.iter().flatten().any(|g| g == "*"),
            "wildcard in {rule:?}"
        );
    }
    let verbs = |list: &[&str]| list.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    let write = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let expected = BTreeMap::from([
        ("deployments.apps".to_string(), verbs(&write)),
        (
            "deployments/scale.apps".to_string(),
            verbs(&["get", "update", "patch"]),
        ),
        ("services".to_string(), verbs(&write)),
        // No watch: it would stream every secret's value to the gateway.
        (
            "secrets".to_string(),
            verbs(&["get", "list", "create", "update", "patch", "delete"]),
        ),
        ("pods".to_string(), verbs(&["get", "list", "watch"])),
        ("pods/log".to_string(), verbs(&["get"])),
        (
            "endpointslices.discovery.k8s.io".to_string(),
            verbs(&["list", "watch"]),
        ),
        (
            "functions.openfaas.com".to_string(),
            verbs(&["get", "list", "watch"]),
        ),
        (
            "functions/status.openfaas.com".to_string(),
            verbs(&["update", "patch"]),
        ),
    ]);
    assert_eq!(granted, expected);

    // The only cluster-wide grant reads namespaces.
    let cluster_roles = of_kind::<ClusterRole>(&docs);
    assert_eq!(cluster_roles.len(), 1);
    for rule in cluster_roles[0].rules.iter().flatten() {
        assert_eq!(
            rule.resources.as_deref(),
            Some(&["namespaces".to_string()][..])
        );
        assert!(
            rule.verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        );
    }
    for binding in of_kind::<ClusterRoleBinding>(&docs) {
        assert_eq!(binding.role_ref.name, "fjord-namespaces-read");
    }
    for binding in of_kind::<RoleBinding>(&docs) {
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("Role", "fjord-functions")
        );
    }
}

#[test]
fn the_gateway_runs_the_kubernetes_runtime_as_a_non_root_user() {
    let docs = manifests();
    let gateway = of_kind::<Deployment>(&docs)
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("gateway"))
        .expect("the gateway Deployment");
    let spec = gateway.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default().join(" ");
    assert!(args.starts_with("serve "), "{args}");
    assert!(args.contains("--runtime kubernetes"), "{args}");
    assert!(args.contains("--queue nats://nats:4222"), "{args}");
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let path = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref());
        assert_eq!(path, Some("/healthz"));
    }
    let resources = container.resources.clone().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|u| u != 0));
    let security = container
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("fjord"));
}

#[test]
fn nats_runs_jetstream_on_the_queue_address() {
    let docs = manifests();
    let nats = of_kind::<StatefulSet>(&docs)
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some("nats"))
        .expect("the nats StatefulSet");
    let spec = nats.spec.expect("spec");
    let container = &spec.template.spec.expect("pod spec").containers[0];
    assert!(container.args.iter().flatten().any(|a| a == "--jetstream"));
    assert!(
        spec.volume_claim_templates.is_some(),
        "JetStream's store must persist"
    );
    let service = of_kind::<Service>(&docs)
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some("nats"))
        .expect("the nats Service");
    let ports: Vec<i32> = service
        .spec
        .expect("spec")
        .ports
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    assert!(ports.contains(&4222), "{ports:?}");
}

#[test]
fn the_service_monitor_scrapes_the_gateways_metrics() {
    let docs = manifests();
    let monitors: Vec<ServiceMonitor> = docs
        .iter()
        .filter(|d| d.str_at("/kind") == "ServiceMonitor")
        .map(typed)
        .collect();
    assert_eq!(monitors.len(), 1);
    let monitor = &monitors[0];
    assert_eq!(monitor.metadata.namespace.as_deref(), Some("openfaas"));
    let selector = monitor
        .spec
        .selector
        .match_labels
        .clone()
        .expect("matchLabels");
    let gateway = of_kind::<Service>(&docs)
        .into_iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some("openfaas")
                && labels_match(&selector, s.metadata.labels.as_ref())
        })
        .expect("the ServiceMonitor selects a Service");
    assert_eq!(gateway.metadata.name.as_deref(), Some("gateway"));
    let port_names: BTreeSet<String> = gateway
        .spec
        .expect("spec")
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let seconds = |d: &Option<String>| -> u64 {
        let d = d.as_deref().expect("a duration");
        d.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{d:?} is not whole seconds"))
    };
    for endpoint in &monitor.spec.endpoints {
        assert!(
            port_names.contains(&endpoint.port),
            "no Service port {}",
            endpoint.port
        );
        assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
        // Prometheus refuses a timeout longer than the interval.
        assert!(seconds(&endpoint.scrape_timeout) <= seconds(&endpoint.interval));
    }
}

fn property_names(schema: &JSONSchemaProps) -> BTreeSet<String> {
    schema
        .properties
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect()
}

fn json_keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[test]
fn the_crd_describes_the_function_type() {
    use fjord_kube::crd;
    let docs = manifests();
    let crds = of_kind::<CustomResourceDefinition>(&docs);
    assert_eq!(crds.len(), 1);
    let crd_doc = &crds[0];
    assert_eq!(
        crd_doc.metadata.name.as_deref(),
        Some("functions.openfaas.com")
    );
    assert_eq!(crd_doc.spec.group, crd::GROUP);
    assert_eq!(crd_doc.spec.names.kind, crd::KIND);
    assert_eq!(crd_doc.spec.names.plural, crd::PLURAL);
    assert_eq!(crd_doc.spec.scope, "Namespaced");
    let version = crd_doc
        .spec
        .versions
        .iter()
        .find(|v| v.name == crd::VERSION)
        .expect("version v1");
    assert!(version.served && version.storage);
    let root = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("an openAPIV3Schema");
    let props = root.properties.as_ref().expect("properties");

    // Every field of the Rust type, filled in, against the schema's properties.
    let full_spec = crd::FunctionCrSpec {
        name: "a".into(),
        image: "a".into(),
        handler: Some("a".into()),
        environment: Some(BTreeMap::new()),
        labels: Some(BTreeMap::new()),
        annotations: Some(BTreeMap::new()),
        constraints: Some(vec![]),
        secrets: Some(vec![]),
        limits: Some(crd::FunctionCrResources {
            memory: Some("1".into()),
            cpu: Some("1".into()),
        }),
        requests: Some(crd::FunctionCrResources {
            memory: Some("1".into()),
            cpu: Some("1".into()),
        }),
        read_only_root_filesystem: true,
    };
    let spec_json = serde_json::to_value(&full_spec).expect("serialise");
    let spec_schema = &props["spec"];
    assert_eq!(property_names(spec_schema), json_keys(&spec_json));
    assert_eq!(
        spec_schema.required.clone().unwrap_or_default(),
        vec!["name".to_string(), "image".to_string()]
    );
    for resources in ["limits", "requests"] {
        let schema = &spec_schema.properties.as_ref().expect("properties")[resources];
        assert_eq!(
            property_names(schema),
            json_keys(&spec_json[resources]),
            "{resources}"
        );
    }

    let full_status = crd::FunctionCrStatus {
        conditions: Some(vec![crd::FunctionCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("a".into()),
            message: Some("a".into()),
            last_update_time: Some("2026-05-01T00:00:00Z".into()),
            last_transition_time: Some("2026-05-01T00:00:00Z".into()),
        }]),
        replicas: Some(1),
        available_replicas: Some(1),
        unavailable_replicas: Some(0),
        observed_generation: Some(1),
    };
    let status_json = serde_json::to_value(&full_status).expect("serialise");
    let status_schema = &props["status"];
    assert_eq!(property_names(status_schema), json_keys(&status_json));
    let condition_schema = status_schema.properties.as_ref().expect("properties")["conditions"]
        .items
        .as_ref()
        .expect("items");
    let condition_schema = match condition_schema {
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => s,
        other => panic!("conditions items: {other:?}"),
    };
    assert_eq!(
        property_names(condition_schema),
        json_keys(&status_json["conditions"][0])
    );
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
}

#[test]
fn the_readme_describes_every_manifest() {
    let readme =
        fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/kubernetes/README.md");
    for file in yaml_files(&deploy_dir()) {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not describe {name}"
        );
    }
}
