//! Object generation: what is refused (with the field named) and the choices the golden
//! files only show for one input.

use std::collections::BTreeMap;

use fjord_core::openfaas::{FunctionDeployment, FunctionNamespace, FunctionResources};
use fjord_kube::names::NameProblem;
use fjord_kube::objects::{
    self, ObjectError, SecretUse, function_objects, image_pull_policy, termination_grace_seconds,
};

fn base() -> FunctionDeployment {
    FunctionDeployment {
        service: "hello".into(),
        image: "hello:1".into(),
        ..FunctionDeployment::default()
    }
}

fn with_labels(pairs: &[(&str, &str)]) -> FunctionDeployment {
    FunctionDeployment {
        labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..base()
    }
}

fn objects_of(d: &FunctionDeployment) -> Result<objects::FunctionObjects, ObjectError> {
    function_objects(d, "openfaas-fn", &BTreeMap::new())
}

fn err(d: &FunctionDeployment) -> ObjectError {
    objects_of(d).expect_err("must be refused")
}

fn pod_spec(d: &FunctionDeployment) -> k8s_openapi::api::core::v1::PodSpec {
    objects_of(d)
        .expect("valid")
        .deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
}

#[test]
fn a_bad_quantity_names_its_field() {
    let d = FunctionDeployment {
        limits: Some(FunctionResources {
            memory: Some("128MB".into()),
            ..FunctionResources::default()
        }),
        ..base()
    };
    let e = err(&d);
    assert!(
        matches!(&e, ObjectError::Quantity { field, value, .. } if field == "limits.memory" && value == "128MB"),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("limits.memory: \"128MB\""), "{e}");

    let d = FunctionDeployment {
        requests: Some(FunctionResources {
            cpu: Some(" 100m".into()),
            ..FunctionResources::default()
        }),
        ..base()
    };
    assert!(matches!(err(&d), ObjectError::Quantity { field, .. } if field == "requests.cpu"),);

    let d = FunctionDeployment {
        annotations: Some([("com.fjord.tmp-size".to_string(), "lots".to_string())].into()),
        ..base()
    };
    assert!(
        matches!(err(&d), ObjectError::Quantity { field, .. } if field == "annotations.com.fjord.tmp-size"),
    );
}

#[test]
fn a_request_above_its_limit_is_refused() {
    let d = FunctionDeployment {
        limits: Some(FunctionResources {
            memory: Some("128Mi".into()),
            ..FunctionResources::default()
        }),
        requests: Some(FunctionResources {
            memory: Some("1Gi".into()),
            ..FunctionResources::default()
        }),
        ..base()
    };
    assert_eq!(
        err(&d),
        ObjectError::RequestAboveLimit {
            resource: "memory",
            request: "1Gi".into(),
            limit: "128Mi".into()
        }
    );
    // Different units of the same amount are equal, not above.
    let d = FunctionDeployment {
        limits: Some(FunctionResources {
            cpu: Some("1".into()),
            ..FunctionResources::default()
        }),
        requests: Some(FunctionResources {
            cpu: Some("1000m".into()),
            ..FunctionResources::default()
        }),
        ..base()
    };
    assert!(objects_of(&d).is_ok());
}

#[test]
fn gpus_are_whole_devices_in_limits_only() {
    let gpu_request = FunctionDeployment {
        requests: Some(FunctionResources {
            nvidia_gpu: Some("1".into()),
            ..FunctionResources::default()
        }),
        ..base()
    };
    assert_eq!(
        err(&gpu_request),
        ObjectError::GpuRequest {
            resource: "nvidia.com/gpu"
        }
    );
    let half = FunctionDeployment {
        limits: Some(FunctionResources {
            amd_gpu: Some("0.5".into()),
            ..FunctionResources::default()
        }),
        ..base()
    };
    assert_eq!(
        err(&half),
        ObjectError::GpuCount {
            resource: "amd.com/gpu",
            value: "0.5".into()
        }
    );
}

#[test]
fn a_name_too_long_is_refused() {
    let d = FunctionDeployment {
        service: "f".repeat(64),
        ..base()
    };
    let e = err(&d);
    assert!(
        matches!(&e, ObjectError::Name { field, problem: NameProblem::TooLong { len: 64, max: 63 }, .. } if field == "service"),
        "{e:?}"
    );
    // 63 characters is fine, and with secrets too (faas-netes's limit there was 45).
    let d = FunctionDeployment {
        service: "f".repeat(63),
        secrets: Some(vec!["db".into()]),
        ..base()
    };
    let types = BTreeMap::from([("db".to_string(), "Opaque".to_string())]);
    assert!(function_objects(&d, "openfaas-fn", &types).is_ok());
}

#[test]
fn a_name_starting_with_a_digit_is_refused_before_any_object() {
    // A Service name must start with a letter; faas-netes created the Deployment first.
    let d = FunctionDeployment {
        service: "1fn".into(),
        ..base()
    };
    assert!(matches!(
        objects::deployment(&d, "openfaas-fn", &BTreeMap::new()),
        Err(ObjectError::Name { field, problem: NameProblem::Pattern { .. }, .. }) if field == "service"
    ));
}

#[test]
fn bad_labels_are_refused() {
    let e = err(&with_labels(&[("team", "pay ments")]));
    assert!(
        matches!(&e, ObjectError::Name { field, value, .. } if field == "labels.team" && value == "pay ments"),
        "{e:?}"
    );
    let e = err(&with_labels(&[("bad key!", "x")]));
    assert!(
        matches!(&e, ObjectError::Name { field, value, .. } if field == "labels" && value == "bad key!"),
        "{e:?}"
    );
    let e = err(&with_labels(&[("version", &"v".repeat(64))]));
    assert!(
        matches!(
            &e,
            ObjectError::Name {
                problem: NameProblem::TooLong { len: 64, .. },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn faas_function_must_be_the_functions_name() {
    assert_eq!(
        err(&with_labels(&[("faas_function", "other")])),
        ObjectError::FaasFunctionLabel {
            value: "other".into()
        }
    );
    assert!(objects_of(&with_labels(&[("faas_function", "hello")])).is_ok());
}

#[test]
fn scale_min_sets_replicas_and_zero_is_allowed() {
    let replicas = |d: &FunctionDeployment| {
        objects_of(d)
            .expect("valid")
            .deployment
            .spec
            .and_then(|s| s.replicas)
    };
    assert_eq!(replicas(&base()), Some(1));
    assert_eq!(
        replicas(&with_labels(&[("com.openfaas.scale.min", "0")])),
        Some(0)
    );
    assert_eq!(
        replicas(&with_labels(&[("com.openfaas.scale.min", "7")])),
        Some(7)
    );
    // Not even a label value: refused as a label before it is read as a number.
    assert!(matches!(
        err(&with_labels(&[("com.openfaas.scale.min", "-1")])),
        ObjectError::Name { .. }
    ));
    for bad in ["two", "1.5", "4294967296", "2147483648"] {
        assert_eq!(
            err(&with_labels(&[("com.openfaas.scale.min", bad)])),
            ObjectError::ScaleMin { value: bad.into() },
            "{bad}"
        );
    }
}

#[test]
fn namespaces_are_checked() {
    let types = BTreeMap::new();
    assert!(matches!(
        function_objects(&base(), "Team_A", &types),
        Err(ObjectError::Name { field, .. }) if field == "namespace"
    ));
    assert_eq!(
        function_objects(&base(), "kube-system", &types),
        Err(ObjectError::ReservedNamespace {
            namespace: "kube-system".into()
        })
    );
}

#[test]
fn missing_and_misnamed_secrets_are_refused() {
    let d = FunctionDeployment {
        secrets: Some(vec!["db".into()]),
        ..base()
    };
    assert_eq!(err(&d), ObjectError::SecretNotFound { name: "db".into() });
    let d = FunctionDeployment {
        secrets: Some(vec!["../etc".into()]),
        ..base()
    };
    assert!(matches!(err(&d), ObjectError::Name { field, .. } if field == "secrets"));
}

#[test]
fn secret_types_decide_their_use() {
    assert_eq!(SecretUse::of_type("Opaque"), SecretUse::Mounted);
    assert_eq!(
        SecretUse::of_type("kubernetes.io/basic-auth"),
        SecretUse::Mounted
    );
    assert_eq!(
        SecretUse::of_type("kubernetes.io/dockercfg"),
        SecretUse::ImagePull
    );
    assert_eq!(
        SecretUse::of_type("kubernetes.io/dockerconfigjson"),
        SecretUse::ImagePull
    );
}

#[test]
fn the_same_secrets_in_another_order_make_the_same_deployment() {
    let types = BTreeMap::from([
        ("a".to_string(), "Opaque".to_string()),
        ("b".to_string(), "Opaque".to_string()),
    ]);
    let one = FunctionDeployment {
        secrets: Some(vec!["a".into(), "b".into()]),
        ..base()
    };
    let other = FunctionDeployment {
        secrets: Some(vec!["b".into(), "a".into(), "b".into()]),
        ..base()
    };
    assert_eq!(
        objects::deployment(&one, "openfaas-fn", &types),
        objects::deployment(&other, "openfaas-fn", &types)
    );
}

#[test]
fn other_bad_fields_name_themselves() {
    let d = FunctionDeployment {
        env_vars: Some([("A=B".to_string(), "x".to_string())].into()),
        ..base()
    };
    assert!(matches!(err(&d), ObjectError::Name { field, .. } if field == "envVars"));

    let d = FunctionDeployment {
        env_vars: Some([("write_timeout".to_string(), "soon".to_string())].into()),
        ..base()
    };
    assert!(
        matches!(err(&d), ObjectError::Duration { field, .. } if field == "envVars.write_timeout")
    );

    let d = FunctionDeployment {
        annotations: Some(
            [(
                "com.openfaas.ready.http.path".to_string(),
                "ready".to_string(),
            )]
            .into(),
        ),
        ..base()
    };
    assert_eq!(
        err(&d),
        ObjectError::ProbePath {
            annotation: "com.openfaas.ready.http.path",
            value: "ready".into()
        }
    );

    let d = FunctionDeployment {
        constraints: Some(vec!["node.role == manager".into(), "arm64".into()]),
        ..base()
    };
    assert_eq!(
        err(&d),
        ObjectError::Constraint {
            index: 1,
            value: "arm64".into()
        }
    );

    let d = FunctionDeployment {
        image: "hello: 1".into(),
        ..base()
    };
    assert!(matches!(err(&d), ObjectError::Image { .. }));

    let d = FunctionDeployment {
        annotations: Some([("big".to_string(), "x".repeat(256 * 1024))].into()),
        ..base()
    };
    assert!(matches!(err(&d), ObjectError::AnnotationsTooLarge { .. }));
}

#[test]
fn pull_policy_is_always_only_for_moving_tags() {
    for (image, policy) in [
        ("hello", "Always"),
        ("hello:latest", "Always"),
        ("ghcr.io/acme/hello:latest", "Always"),
        ("registry.local:5000/hello", "Always"),
        ("hello:1.2", "IfNotPresent"),
        ("registry.local:5000/hello:1.2", "IfNotPresent"),
        ("hello@sha256:0123abcd", "IfNotPresent"),
        ("hello:latest@sha256:0123abcd", "IfNotPresent"),
    ] {
        assert_eq!(image_pull_policy(image), policy, "{image}");
    }
}

#[test]
fn grace_period_covers_the_watchdogs_drain() {
    let with_env = |pairs: &[(&str, &str)]| FunctionDeployment {
        env_vars: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..base()
    };
    // Defaults: 30 s interval + 30 s drain + 2 s to exit.
    assert_eq!(termination_grace_seconds(&base()), Ok(62));
    // The interval defaults to write_timeout.
    assert_eq!(
        termination_grace_seconds(&with_env(&[("write_timeout", "2m")])),
        Ok(242)
    );
    assert_eq!(
        termination_grace_seconds(&with_env(&[
            ("write_timeout", "10s"),
            ("healthcheck_interval", "1.5s")
        ])),
        Ok(14)
    );
}

#[test]
fn read_only_root_needs_tmp_and_no_tmp_otherwise() {
    let writable = pod_spec(&base());
    assert_eq!(writable.volumes, None);
    let read_only = pod_spec(&FunctionDeployment {
        read_only_root_filesystem: true,
        ..base()
    });
    let volumes = read_only.volumes.expect("a /tmp volume");
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "temp");
    // A plain emptyDir: the tmpfs only when the function sizes it.
    assert_eq!(volumes[0].empty_dir, Some(Default::default()));
    let mounts = read_only.containers[0]
        .volume_mounts
        .clone()
        .expect("mounts");
    assert_eq!(
        (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
        ("temp", "/tmp")
    );
}

#[test]
fn the_health_annotation_alone_sets_readiness_and_liveness() {
    let spec = pod_spec(&FunctionDeployment {
        annotations: Some(
            [(
                "com.openfaas.health.http.path".to_string(),
                "/live".to_string(),
            )]
            .into(),
        ),
        ..base()
    });
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        path(&spec.containers[0].readiness_probe).as_deref(),
        Some("/live")
    );
    assert_eq!(
        path(&spec.containers[0].liveness_probe).as_deref(),
        Some("/live")
    );
    assert_eq!(pod_spec(&base()).containers[0].liveness_probe, None);
}

#[test]
fn an_empty_env_process_sets_no_fprocess() {
    let spec = pod_spec(&FunctionDeployment {
        env_process: Some("  ".into()),
        ..base()
    });
    assert_eq!(spec.containers[0].env, None);
}

#[test]
fn secrets_and_namespaces_are_checked() {
    assert!(matches!(
        objects::secret("Bad_Name", "openfaas-fn", b"x"),
        Err(ObjectError::Name { field, .. }) if field == "name"
    ));
    assert!(matches!(
        objects::secret("big", "openfaas-fn", &vec![0; 1024 * 1024]),
        Err(ObjectError::SecretTooLarge { .. })
    ));
    let ns = |name: &str| FunctionNamespace {
        name: name.into(),
        ..FunctionNamespace::default()
    };
    assert!(matches!(
        objects::namespace(&ns("kube-public")),
        Err(ObjectError::ReservedNamespace { .. })
    ));
    // The caller cannot unmark it: openfaas=1 is what makes it a function namespace.
    let marked = objects::namespace(&FunctionNamespace {
        labels: Some([("openfaas".to_string(), "0".to_string())].into()),
        ..ns("team-b")
    })
    .expect("valid");
    assert_eq!(
        marked
            .metadata
            .labels
            .and_then(|l| l.get("openfaas").cloned())
            .as_deref(),
        Some("1")
    );
}
