//! The openfaas.com/v1 Function resource: reading OpenFaaS's own Function YAML, and the
//! conversions to and from the REST API's FunctionDeployment.

use std::collections::BTreeMap;

use fjord_core::openfaas::{FunctionDeployment, FunctionResources};
use fjord_kube::crd::{CrdError, Function, FunctionCrSpec};

/// A Function as `faas-cli generate` writes it, with every spec field.
const GENERATED: &str = r#"
apiVersion: openfaas.com/v1
kind: Function
metadata:
  name: nodeinfo
  namespace: openfaas-fn
spec:
  name: nodeinfo
  image: ghcr.io/openfaas/nodeinfo:latest
  handler: node index.js
  environment:
    write_timeout: 10s
  labels:
    com.openfaas.scale.min: "2"
  annotations:
    topic: orders
  constraints:
    - kubernetes.io/arch=arm64
  secrets:
    - api-key
  limits:
    memory: 128Mi
    cpu: 200m
  requests:
    memory: 64Mi
    cpu: 50m
  readOnlyRootFilesystem: true
"#;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn generated_deployment() -> FunctionDeployment {
    FunctionDeployment {
        service: "nodeinfo".into(),
        image: "ghcr.io/openfaas/nodeinfo:latest".into(),
        namespace: Some("openfaas-fn".into()),
        env_process: Some("node index.js".into()),
        env_vars: Some(map(&[("write_timeout", "10s")])),
        constraints: Some(vec!["kubernetes.io/arch=arm64".into()]),
        secrets: Some(vec!["api-key".into()]),
        labels: Some(map(&[("com.openfaas.scale.min", "2")])),
        annotations: Some(map(&[("topic", "orders")])),
        limits: Some(FunctionResources {
            memory: Some("128Mi".into()),
            cpu: Some("200m".into()),
            ..FunctionResources::default()
        }),
        requests: Some(FunctionResources {
            memory: Some("64Mi".into()),
            cpu: Some("50m".into()),
            ..FunctionResources::default()
        }),
        read_only_root_filesystem: true,
        registry_auth: None,
        network: None,
    }
}

#[test]
fn an_openfaas_function_becomes_the_same_deployment() {
    let f: Function = serde_saphyr::from_str(GENERATED).expect("an OpenFaaS Function parses");
    assert_eq!(f.to_deployment(), Ok(generated_deployment()));
}

#[test]
fn deployment_to_function_and_back_is_lossless() {
    let d = generated_deployment();
    let f = Function::from_deployment(&d, "openfaas-fn").expect("representable");
    assert_eq!(f.metadata.name.as_deref(), Some("nodeinfo"));
    assert_eq!(f.metadata.namespace.as_deref(), Some("openfaas-fn"));
    assert_eq!(f.to_deployment(), Ok(d));
}

#[test]
fn a_function_serialises_with_its_type_and_reads_back() {
    let f = Function::from_deployment(&generated_deployment(), "openfaas-fn").expect("ok");
    let json = serde_json::to_value(&f).expect("serialise");
    assert_eq!(json["apiVersion"], "openfaas.com/v1");
    assert_eq!(json["kind"], "Function");
    // The Go type always writes readOnlyRootFilesystem; absent options are left out.
    assert_eq!(json["spec"]["readOnlyRootFilesystem"], true);
    assert!(json.get("status").is_none());
    let back: Function = serde_json::from_value(json).expect("read back");
    assert_eq!(back, f);
}

#[test]
fn other_kinds_are_not_functions() {
    let other = GENERATED.replace("kind: Function", "kind: Profile");
    let e = serde_saphyr::from_str::<Function>(&other).expect_err("not a Function");
    assert!(
        e.to_string().contains("found openfaas.com/v1 Profile"),
        "{e}"
    );
    let old = GENERATED.replace("openfaas.com/v1", "openfaas.com/v1alpha2");
    assert!(serde_saphyr::from_str::<Function>(&old).is_err());
}

#[test]
fn spec_name_must_match_metadata_name() {
    let f: Function = serde_saphyr::from_str(
        &GENERATED.replace("  name: nodeinfo\n  image", "  name: other\n  image"),
    )
    .expect("parses");
    assert_eq!(
        f.to_deployment(),
        Err(CrdError::NameMismatch {
            metadata_name: "nodeinfo".into(),
            spec_name: "other".into()
        })
    );
}

#[test]
fn gpus_cannot_be_carried() {
    let d = FunctionDeployment {
        limits: Some(FunctionResources {
            nvidia_gpu: Some("1".into()),
            ..FunctionResources::default()
        }),
        ..generated_deployment()
    };
    assert_eq!(
        Function::from_deployment(&d, "openfaas-fn"),
        Err(CrdError::NotRepresentable {
            field: "limits.nvidia.com/gpu"
        })
    );
}

#[test]
fn a_function_without_namespace_uses_the_default() {
    let f = Function {
        spec: FunctionCrSpec {
            name: "hello".into(),
            image: "hello:1".into(),
            ..FunctionCrSpec::default()
        },
        ..Function::default()
    };
    let d = f.to_deployment().expect("valid");
    assert_eq!(d.namespace, None);
    assert_eq!(d.service, "hello");
}
