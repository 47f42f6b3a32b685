//! The control plane's rules over the fake runtime: rollback of a failed update, nothing
//! stored for what cannot run, scale limits, waking from zero, and the autoscaler/idler
//! ticks driven with a fake clock (no processes, no sleeps).

use std::time::Duration;

use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use fjord_runtime_api::fake::Recorded;

use crate::ControlError;
use crate::plane::DeployMode;
use std::sync::Arc;

use fjord_runtime_api::fake::FakeRuntime;

use crate::ControlPlane;
use crate::bundles::Bundles;
use crate::secrets::SecretKey;

/// A control plane over a fake runtime and a state store in a temp dir.
struct TestApp {
    control: Arc<ControlPlane>,
    runtime: Arc<FakeRuntime>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path();
        let store = fjord_store::Store::open(&data.join("state.db")).expect("store");
        let runtime = FakeRuntime::new();
        let bundles = Bundles::new(data, false).expect("bundles");
        let (key, _) = SecretKey::load_or_create(data).expect("secrets key");
        let control = ControlPlane::new(store, runtime.clone(), bundles, key);
        Self {
            control,
            runtime,
            _dir: dir,
        }
    }
}

fn deployment(name: &str, image: &str, labels: serde_json::Value) -> FunctionDeployment {
    serde_json::from_value(serde_json::json!({
        "service": name, "image": image, "envProcess": "fake",
        "envVars": {"MARKER": image}, "labels": labels,
    }))
    .expect("a deployment")
}

fn key(name: &str) -> FunctionKey {
    FunctionKey::new(name, None).expect("a key")
}

#[tokio::test]
async fn a_failed_update_is_rolled_back_in_the_store_and_the_old_version_serves() {
    let t = TestApp::new().await;
    let c = &t.control;
    c.deploy(
        deployment("f", "fake/v1", serde_json::json!({})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("v1");
    let generation = c
        .deploy(
            deployment("f", "broken/v2", serde_json::json!({})),
            DeployMode::Update,
        )
        .await
        .expect("the update is accepted; it fails while rolling out");
    // The rollback runs when the runtime reports the outcome: wait for the status to say so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status(&key("f")).expect("status");
        let r = s
            .fjord
            .as_ref()
            .and_then(|f| f.rollout.clone())
            .expect("rollout");
        if r.generation == generation && r.state == "failed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked failed: {r:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored = c
        .store()
        .get("openfaas-fn", "f")
        .expect("store")
        .expect("stored");
    assert_eq!(
        stored.deployment.image, "fake/v1",
        "the store holds the version that serves"
    );
    let route = c.lookup("openfaas-fn", "f").expect("route");
    assert_eq!(route.handle.spec().deployment.image, "fake/v1");
}

#[tokio::test]
async fn what_the_runtime_refuses_is_not_stored_and_update_of_nothing_is_404() {
    let t = TestApp::new().await;
    let c = &t.control;
    let e = c
        .deploy(
            deployment("bad", "invalid/x", serde_json::json!({})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .expect_err("refused");
    assert!(matches!(e, ControlError::BadRequest(_)), "{e:?}");
    assert!(
        c.store()
            .get("openfaas-fn", "bad")
            .expect("store")
            .is_none()
    );
    assert!(c.lookup("openfaas-fn", "bad").is_none());
    let e = c
        .deploy(
            deployment("ghost", "fake/x", serde_json::json!({})),
            DeployMode::Update,
        )
        .await
        .expect_err("no such function");
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    assert!(
        t.runtime.recorded().is_empty(),
        "the runtime was never asked: {:?}",
        t.runtime.recorded()
    );
}

#[tokio::test]
async fn scale_is_clamped_to_the_maximum_and_stored() {
    let t = TestApp::new().await;
    let c = &t.control;
    c.deploy(
        deployment(
            "s",
            "fake/s",
            serde_json::json!({"com.openfaas.scale.max": "4"}),
        ),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("deploy");
    assert_eq!(c.scale(&key("s"), 9).await.expect("scale"), 4);
    assert_eq!(
        c.store()
            .get("openfaas-fn", "s")
            .expect("store")
            .expect("f")
            .replicas,
        4
    );
    assert!(t.runtime.recorded().contains(&Recorded::Scale {
        function: "s.openfaas-fn".into(),
        replicas: 4
    }));
    assert_eq!(c.scale(&key("s"), 0).await.expect("to zero"), 0);
    assert!(matches!(
        c.scale(&key("nope"), 1).await,
        Err(ControlError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_request_wakes_a_function_at_zero() {
    let t = TestApp::new().await;
    let c = &t.control;
    c.deploy(
        deployment("w", "fake/w", serde_json::json!({})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("deploy");
    c.scale(&key("w"), 0).await.expect("to zero");
    let route = c.lookup("openfaas-fn", "w").expect("route");
    assert_eq!(route.handle.desired(), 0);
    c.demand(&route, crate::Demand::Cold);
    assert_eq!(route.handle.desired(), 1);
    assert!(route.handle.wait_ready(Duration::from_secs(5)).await);
    // Waking a running function changes nothing.
    let before = t.runtime.recorded().len();
    c.demand(&route, crate::Demand::Cold);
    assert_eq!(t.runtime.recorded().len(), before);
}

#[tokio::test]
async fn a_saturated_function_gets_one_more_replica_until_its_maximum() {
    let t = TestApp::new().await;
    let c = &t.control;
    c.deploy(
        deployment(
            "busy",
            "fake/b",
            serde_json::json!({"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "2"}),
        ),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("deploy");
    let route = c.lookup("openfaas-fn", "busy").expect("route");
    assert_eq!(route.handle.desired(), 1);
    assert!(c.demand(&route, crate::Demand::Saturated), "below max");
    assert_eq!(route.handle.desired(), 2);
    assert!(
        route
            .scaling
            .reason()
            .is_some_and(|r| r.contains("all replicas at max_inflight: 1 → 2")),
        "{:?}",
        route.scaling.reason()
    );
    let before = t.runtime.recorded().len();
    assert!(!c.demand(&route, crate::Demand::Saturated), "at max: 429");
    assert_eq!(route.handle.desired(), 2);
    assert_eq!(t.runtime.recorded().len(), before, "no scale at max");
}

#[tokio::test]
async fn the_idler_scales_an_idle_function_to_zero_on_the_clock_it_is_given() {
    let t = TestApp::new().await;
    let c = &t.control;
    c.deploy(
        deployment(
            "idle",
            "fake/i",
            serde_json::json!({"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "60s"}),
        ),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("deploy");
    let defaults = crate::autoscale::Defaults::default();
    let start = crate::metrics::now_ms();
    let route = c.lookup("openfaas-fn", "idle").expect("route");
    // Ticks every second of a fake clock: nothing before a minute of idleness, zero after.
    for s in 0..59 {
        c.autoscale_tick(start + s * 1000, &defaults);
        assert_eq!(route.handle.desired(), 1, "scaled down after {s}s");
    }
    for s in 59..65 {
        c.autoscale_tick(start + s * 1000, &defaults);
    }
    assert_eq!(
        route.handle.desired(),
        0,
        "not at zero after 65 idle seconds"
    );
    let reason = c
        .status(&key("idle"))
        .expect("status")
        .fjord
        .expect("fjord")
        .last_scale_reason;
    assert!(
        reason.is_some_and(|r| r.contains("zero")),
        "the reason is recorded"
    );
}

/// Refuses deployments carrying the annotation `refuse`.
struct RefuseAnnotated;

impl crate::DeployCheck for RefuseAnnotated {
    fn check(&self, d: &FunctionDeployment) -> Result<(), String> {
        match d.annotations.as_ref().and_then(|a| a.get("refuse")) {
            Some(why) => Err(format!("annotations.refuse: {why}")),
            None => Ok(()),
        }
    }
}

#[tokio::test]
async fn connectors_see_every_change_and_their_checks_refuse_before_anything_changes() {
    let t = TestApp::new().await;
    let c = &t.control;
    c.add_deploy_check(Arc::new(RefuseAnnotated));
    let mut watch = c.watch_routes();
    let seen = *watch.borrow_and_update();
    c.deploy(
        deployment("f", "fake/one:1", serde_json::json!({})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("deploy");
    assert!(watch.has_changed().expect("open"), "a deploy is a change");
    assert!(*watch.borrow_and_update() > seen);
    let listed = c.deployed().expect("deployed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key("f"));
    assert_eq!(listed[0].deployment.image, "fake/one:1");

    // A refused update: 400 naming the annotation; store, route and watch unchanged.
    let mut bad = deployment("f", "fake/two:1", serde_json::json!({}));
    bad.annotations = Some([("refuse".to_string(), "no".to_string())].into());
    match c.deploy(bad, DeployMode::Update).await {
        Err(ControlError::BadRequest(m)) => assert!(m.contains("annotations.refuse"), "{m}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(
        !watch.has_changed().expect("open"),
        "a refused deploy changes nothing"
    );
    assert_eq!(
        c.deployed().expect("deployed")[0].deployment.image,
        "fake/one:1"
    );

    c.delete(&key("f")).await.expect("delete");
    assert!(watch.has_changed().expect("open"), "a delete is a change");
    assert!(c.deployed().expect("deployed").is_empty());
}

#[tokio::test]
async fn a_function_from_a_function_object_is_changed_only_through_it() {
    let t = TestApp::new().await;
    let c = &t.control;
    let from_object = |image: &str| {
        let mut d = deployment("f", image, serde_json::json!({}));
        d.annotations = Some(
            [(
                fjord_core::policy::ANNOTATION_FUNCTION_OBJECT.to_string(),
                "uid-1".to_string(),
            )]
            .into(),
        );
        d
    };
    // Over the REST API, the annotation is refused: only the controller sets it.
    match c
        .deploy(from_object("fake/v1"), DeployMode::CreateOrUpdate)
        .await
    {
        Err(ControlError::BadRequest(m)) => {
            assert!(m.contains("annotations.com.fjord.function-object"), "{m}")
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    c.deploy(from_object("fake/v1"), DeployMode::FunctionObject)
        .await
        .expect("the controller deploys");

    // The REST API may neither change nor delete it: 409 naming the object.
    for mode in [DeployMode::CreateOrUpdate, DeployMode::Update] {
        match c
            .deploy(deployment("f", "fake/v2", serde_json::json!({})), mode)
            .await
        {
            Err(ControlError::Conflict(m)) => {
                assert!(m.contains("kubectl edit function f -n openfaas-fn"), "{m}")
            }
            other => panic!("expected a 409, got {other:?}"),
        }
    }
    assert!(matches!(
        c.delete(&key("f")).await,
        Err(ControlError::Conflict(_))
    ));
    assert_eq!(
        c.deployed().expect("deployed")[0].deployment.image,
        "fake/v1"
    );

    // Its object changes and goes: the controller's calls.
    c.deploy(from_object("fake/v2"), DeployMode::FunctionObject)
        .await
        .expect("the controller updates");
    assert_eq!(
        c.deployed().expect("deployed")[0].deployment.image,
        "fake/v2"
    );
    c.delete_function_object(&key("f"))
        .await
        .expect("the controller deletes");
    assert!(c.deployed().expect("deployed").is_empty());

    // A function deployed over the REST API can be taken over by an object of its name.
    c.deploy(
        deployment("g", "fake/v1", serde_json::json!({})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("rest");
    let mut g = from_object("fake/v1");
    g.service = "g".into();
    c.deploy(g, DeployMode::FunctionObject)
        .await
        .expect("taken over");
}
