//! The body of `POST`/`PUT /system/functions`: JSON decoded into the OpenAPI
//! `FunctionDeployment` as the gateway does it (`serde_path_to_error` over `serde_json`), then
//! validated into the internal `FunctionSpec`, both plainly and with a bundle's defaults.
//!
//! Property: nothing panics. A decoded deployment survives a JSON round trip (less the
//! deprecated fields fjord drops), and an accepted spec holds what validation promises.

#![no_main]

use std::collections::BTreeMap;

use fjord_core::names::validate_label;
use fjord_core::openfaas::FunctionDeployment;
use fjord_core::spec::REPLICAS_CEILING;
use fjord_core::{FunctionSpec, ProcessDefaults};
use libfuzzer_sys::fuzz_target;

fn check_spec(spec: &FunctionSpec, d: &FunctionDeployment) {
    assert_eq!(spec.key.name, d.service);
    validate_label("function name", &spec.key.name).expect("valid name");
    validate_label("namespace", &spec.key.namespace).expect("valid namespace");
    assert_eq!(
        spec.deployment.namespace.as_deref(),
        Some(spec.key.namespace.as_str())
    );
    assert!(!spec.argv.is_empty());
    assert!(spec.memory_limit_bytes.is_none_or(|m| m >= 4 << 20));
    assert!(spec.cpu_limit_millis.is_none_or(|c| c >= 1));
    assert!(spec.min_replicas <= spec.max_replicas);
    assert!(spec.max_replicas <= REPLICAS_CEILING);
    assert!(spec.scale.target > 0.0 && spec.scale.proportion <= 1.0);
    if let Some(p) = &spec.ready_path {
        assert!(p.starts_with('/'));
    }
}

fn check(data: &[u8]) {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let Ok(d): Result<FunctionDeployment, _> = serde_path_to_error::deserialize(de) else {
        return;
    };
    // What the API stores and returns is the same deployment (registryAuth and network are
    // accepted and never returned).
    let json = serde_json::to_vec(&d).expect("a deployment serializes");
    let back: FunctionDeployment = serde_json::from_slice(&json).expect("and decodes again");
    assert_eq!(
        back,
        FunctionDeployment {
            registry_auth: None,
            network: None,
            ..d.clone()
        }
    );

    if let Ok(spec) = FunctionSpec::from_deployment(d.clone()) {
        check_spec(&spec, &d);
    }
    // A bundle's manifest: a command and `mode=http`, which the deployment's env overrides.
    let defaults = ProcessDefaults {
        fprocess: String::from("python3 index.py"),
        env: BTreeMap::from([(String::from("mode"), String::from("http"))]),
    };
    if let Ok(spec) = FunctionSpec::from_deployment_with(d.clone(), Some(&defaults)) {
        check_spec(&spec, &d);
    }
}

fuzz_target!(|data: &[u8]| check(data));
