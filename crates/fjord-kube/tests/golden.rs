//! Golden files for a function's objects: each case's objects as YAML, compared byte for byte
//! with `tests/golden/<case>.yaml`, so any change to what fjord sends the cluster shows up
//! here and in review.
//!
//! To accept intended changes, regenerate and review the diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p fjord-kube --test golden
//! git diff crates/fjord-kube/tests/golden
//! ```

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use fjord_core::openfaas::{FunctionDeployment, FunctionNamespace, FunctionResources};
use fjord_kube::objects;
use serde_json::Value;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A deployment using every field of the REST API (and the annotations fjord reads).
fn full_deployment() -> FunctionDeployment {
    FunctionDeployment {
        service: "hello".into(),
        image: "ghcr.io/acme/hello:1.2.0".into(),
        namespace: Some("team-a".into()),
        env_process: Some("python3 index.py".into()),
        env_vars: Some(map(&[
            ("write_timeout", "1m"),
            ("healthcheck_interval", "5s"),
            ("LOG_LEVEL", "debug"),
            // Loses to envProcess.
            ("fprocess", "cat"),
        ])),
        constraints: Some(vec![
            "kubernetes.io/arch=arm64".into(),
            "node.kubernetes.io/instance-type == m5.large".into(),
        ]),
        // Out of order and repeated: the pod template lists each once, sorted.
        secrets: Some(vec![
            "registry-creds".into(),
            "db-password".into(),
            "api-key".into(),
            "db-password".into(),
        ]),
        labels: Some(map(&[
            ("com.openfaas.scale.min", "2"),
            ("com.openfaas.scale.max", "10"),
            ("team", "payments"),
        ])),
        annotations: Some(map(&[
            ("com.openfaas.ready.http.path", "/ready"),
            ("com.openfaas.health.http.path", "/healthz"),
            ("com.fjord.tmp-size", "64Mi"),
            ("topic", "orders"),
        ])),
        limits: Some(FunctionResources {
            memory: Some("256Mi".into()),
            cpu: Some("500m".into()),
            nvidia_gpu: Some("1".into()),
            ..FunctionResources::default()
        }),
        requests: Some(FunctionResources {
            memory: Some("128Mi".into()),
            cpu: Some("100m".into()),
            ..FunctionResources::default()
        }),
        read_only_root_filesystem: true,
        registry_auth: Some("ignored".into()),
        network: Some("ignored".into()),
    }
}

fn full_secret_types() -> BTreeMap<String, String> {
    map(&[
        ("registry-creds", "kubernetes.io/dockerconfigjson"),
        ("db-password", "Opaque"),
        ("api-key", "Opaque"),
    ])
}

/// OpenFaaS's minimal request: `{"service":"figlet","image":"alexellis2/figlet"}`.
fn minimal_deployment() -> FunctionDeployment {
    FunctionDeployment {
        service: "figlet".into(),
        image: "alexellis2/figlet".into(),
        ..FunctionDeployment::default()
    }
}

/// Every golden case: its file name and its objects as JSON.
fn cases() -> Vec<(&'static str, Value)> {
    let full = objects::function_objects(&full_deployment(), "team-a", &full_secret_types())
        .expect("the full deployment is valid");
    let minimal = objects::function_objects(&minimal_deployment(), "openfaas-fn", &BTreeMap::new())
        .expect("the minimal deployment is valid");
    let secret = objects::secret("db-password", "team-a", b"s3cr3t\n").expect("a valid secret");
    let namespace = objects::namespace(&FunctionNamespace {
        name: "team-a".into(),
        labels: Some(map(&[("team", "payments")])),
        annotations: Some(map(&[("owner", "payments@example.com")])),
    })
    .expect("a valid namespace");
    vec![
        ("full-deployment", json(&full.deployment)),
        ("full-service", json(&full.service)),
        ("minimal-deployment", json(&minimal.deployment)),
        ("minimal-service", json(&minimal.service)),
        ("secret", json(&secret)),
        ("namespace", json(&namespace)),
    ]
}

fn json<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("k8s-openapi objects serialise")
}

fn golden_path(case: &str) -> PathBuf {
    common::golden_dir().join(format!("{case}.yaml"))
}

#[test]
fn objects_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for (case, object) in cases() {
        let yaml = serde_saphyr::to_string(&object).expect("serialise as YAML");
        let path = golden_path(case);
        if update {
            fs::write(&path, &yaml).expect("write golden file");
            continue;
        }
        let expected = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        if yaml != expected {
            failures.push(format!(
                "{case}: differs from {}\n--- expected\n{expected}\n--- got\n{yaml}",
                path.display()
            ));
        }
        // The file is the object, not just the same text from the same writer.
        let parsed: Value = serde_saphyr::from_str(&expected).expect("golden file is YAML");
        if parsed != object {
            failures.push(format!(
                "{case}: {} parses to another object",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_golden_file_is_a_case() {
    let mut files: Vec<String> = fs::read_dir(common::golden_dir())
        .expect("tests/golden exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = cases().iter().map(|(c, _)| format!("{c}.yaml")).collect();
    names.sort();
    assert_eq!(files, names, "a stale or missing golden file");
}
