//! Which runtime runs a deployment (process or container), image pulls and pins, registry
//! credentials, and updates that move a function between runtimes — over two fake runtimes
//! and a fake image source (no registry, no runc).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use fjord_runtime_api::fake::{FakeRuntime, Recorded};
use fjord_runtime_api::{BoxFuture, ImageRootfs};
use fjord_store::Pin;

use crate::bundles::Bundles;
use crate::images::{GcReport, ImageError, ImageSource, PullWatch, RegistryAuth};
use crate::secrets::SecretKey;
use crate::{Containers, ControlError, ControlPlane, DeployMode, Parts, Runtimes};

/// What the fake image source was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Pull {
        reference: String,
        auth: Option<String>,
    },
    Pinned {
        reference: String,
        digest: String,
    },
}

/// Images named `missing/…` do not exist, `down/…` live on a registry that is down, `slow/…`
/// report one of two layers and wait for `release`; any other reference pulls, with a digest
/// derived from the reference.
#[derive(Default)]
struct FakeImages {
    asked: Mutex<Vec<Asked>>,
    /// The `keep` list of every garbage collection.
    collected: Mutex<Vec<Vec<String>>>,
    release: tokio::sync::Notify,
}

fn digest_of(reference: &str) -> String {
    let mut hex: String = reference
        .bytes()
        .map(|b| format!("{:02x}", b % 16))
        .collect();
    hex.truncate(64);
    format!("sha256:{hex:0<64}")
}

impl ImageSource for FakeImages {
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        auth: Option<&'a RegistryAuth>,
        watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>> {
        Box::pin(async move {
            if reference.starts_with("slow/") {
                watch.layer(0, 2, 100, 100, true);
                watch.layer(1, 2, 30, 300, false);
                self.release.notified().await;
            }
            self.asked.lock().unwrap().push(Asked::Pull {
                reference: reference.into(),
                auth: auth.map(|a| String::from_utf8_lossy(&a.0).into_owned()),
            });
            if reference.starts_with("missing/") {
                return Err(ImageError::Invalid(format!(
                    "image {reference}: not found in the registry"
                )));
            }
            if reference.starts_with("down/") {
                return Err(ImageError::Unreachable(format!(
                    "image {reference}: registry down: connection refused"
                )));
            }
            Ok(Arc::new(ImageRootfs {
                digest: digest_of(reference),
                ..ImageRootfs::default()
            }))
        })
    }

    fn pinned<'a>(
        &'a self,
        reference: &'a str,
        digest: &'a str,
        _auth: Option<&'a RegistryAuth>,
        _watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(Asked::Pinned {
                reference: reference.into(),
                digest: digest.into(),
            });
            Ok(Arc::new(ImageRootfs {
                digest: digest.into(),
                ..ImageRootfs::default()
            }))
        })
    }

    fn gc<'a>(&'a self, keep: &'a [String]) -> BoxFuture<'a, Result<GcReport, ImageError>> {
        self.collected.lock().unwrap().push(keep.to_vec());
        Box::pin(async { Ok(GcReport::default()) })
    }
}

struct Setup {
    control: Arc<ControlPlane>,
    process: Arc<FakeRuntime>,
    container: Arc<FakeRuntime>,
    images: Arc<FakeImages>,
}

fn control_in(dir: &std::path::Path, with_containers: bool) -> Setup {
    let store = fjord_store::Store::open(&dir.join("state.db")).expect("store");
    let process = FakeRuntime::named("process");
    let container = FakeRuntime::named("container");
    let images = Arc::new(FakeImages::default());
    let (secret_key, _) = SecretKey::load_or_create(dir).expect("secrets key");
    let control = ControlPlane::from_parts(Parts {
        store,
        runtimes: Runtimes::Local {
            process: process.clone(),
            containers: with_containers.then(|| Containers {
                runtime: container.clone(),
                images: images.clone(),
            }),
        },
        bundles: Bundles::new(dir, false).expect("bundles"),
        secret_key,
        uids: fjord_store::uid_registry::UidBlock::unrestricted(),
        switch_timeout: Duration::from_secs(10),
    });
    Setup {
        control,
        process,
        container,
        images,
    }
}

fn setup(with_containers: bool) -> (Setup, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = control_in(dir.path(), with_containers);
    (s, dir)
}

fn deployment(json: serde_json::Value) -> FunctionDeployment {
    serde_json::from_value(json).expect("a deployment")
}

fn key(name: &str) -> FunctionKey {
    FunctionKey::new(name, None).expect("a key")
}

fn applied(rt: &FakeRuntime, name: &str) -> bool {
    rt.recorded().iter().any(
        |r| matches!(r, Recorded::Apply { function, .. } if function == &format!("{name}.openfaas-fn")),
    )
}

fn runtime_of(c: &ControlPlane, name: &str) -> String {
    c.status(&key(name))
        .expect("status")
        .fjord
        .and_then(|f| f.runtime)
        .expect("runtime")
}

#[tokio::test]
async fn a_command_runs_as_a_process_and_an_image_alone_as_a_container() {
    let (s, _dir) = setup(true);
    let c = &s.control;
    c.deploy(
        deployment(serde_json::json!({"service": "cmd", "image": "label", "envProcess": "cat"})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("process deploy");
    assert!(applied(&s.process, "cmd") && !applied(&s.container, "cmd"));
    assert_eq!(runtime_of(c, "cmd"), "process");

    c.deploy(
        deployment(serde_json::json!({"service": "img", "image": "ghcr.io/acme/figlet:1.0"})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("container deploy");
    assert!(applied(&s.container, "img") && !applied(&s.process, "img"));
    assert_eq!(runtime_of(c, "img"), "container");
    // Pinned to the digest the pull resolved, in the status and the store.
    let want = digest_of("ghcr.io/acme/figlet:1.0");
    let status = c.status(&key("img")).expect("status");
    assert_eq!(status.fjord.and_then(|f| f.digest), Some(want.clone()));
    let stored = c.store().get("openfaas-fn", "img").unwrap().unwrap();
    assert_eq!(stored.pin, Pin::Image(want));

    // The annotation wins both ways.
    c.deploy(
        deployment(serde_json::json!({"service": "forced", "image": "acme/w:2", "envProcess": "python3 index.py",
            "annotations": {"com.fjord.runtime": "container"}})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("forced container");
    assert_eq!(runtime_of(c, "forced"), "container");
    let e = c
        .deploy(
            deployment(
                serde_json::json!({"service": "bad", "image": "x", "envProcess": "cat",
            "annotations": {"com.fjord.runtime": "vm"}}),
            ),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::BadRequest(m) if m.contains("com.fjord.runtime") && m.contains("process or container")),
        "{e}"
    );
}

#[tokio::test]
async fn without_a_container_runtime_an_image_needs_a_command_and_says_so() {
    let (s, _dir) = setup(false);
    let c = &s.control;
    let e = c
        .deploy(
            deployment(serde_json::json!({"service": "img", "image": "acme/figlet"})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::BadRequest(m) if m.contains("envProcess")),
        "{e}"
    );
    let e = c
        .deploy(
            deployment(serde_json::json!({"service": "img", "image": "acme/figlet",
            "annotations": {"com.fjord.runtime": "container"}})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::BadRequest(m) if m.contains("cannot run containers")),
        "{e}"
    );
    assert!(c.store().list().unwrap().is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_pull_in_progress_shows_in_the_status_of_a_new_function_and_of_an_update() {
    let (s, _dir) = setup(true);
    let c = s.control.clone();
    let deploy = |image: &str| {
        let c = c.clone();
        let d = deployment(serde_json::json!({"service": "big", "image": image}));
        tokio::spawn(async move { c.deploy(d, DeployMode::CreateOrUpdate).await })
    };
    // A new function: listed while its image is pulled, rollout `pulling`, no replicas.
    let first = deploy("slow/big:1");
    let (st, p) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(st) = c.status(&key("big"))
                && let Some(p) = st.fjord.as_ref().and_then(|f| f.pull.clone())
            {
                break (st, p);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the pull shows in the status");
    assert_eq!(st.available_replicas, 0);
    assert_eq!(
        st.fjord.as_ref().unwrap().rollout.as_ref().unwrap().state,
        "pulling"
    );
    assert_eq!(
        (
            p.image.as_str(),
            p.layers,
            p.layers_done,
            p.bytes,
            p.total_bytes
        ),
        ("slow/big:1", 2, 1, 130, 400)
    );
    assert_eq!(c.list(None).len(), 1, "listed while pulling");
    s.images.release.notify_one();
    first.await.unwrap().expect("deployed");
    let st = c.status(&key("big")).expect("status");
    assert!(
        st.fjord.as_ref().unwrap().pull.is_none(),
        "no pull once done"
    );
    // An update: the serving version's status gains the pull.
    let second = deploy("slow/big:2");
    let (st, p) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::task::yield_now().await;
            if let Ok(st) = c.status(&key("big"))
                && let Some(p) = st.fjord.as_ref().and_then(|f| f.pull.clone())
            {
                break (st, p);
            }
        }
    })
    .await
    .expect("the update's pull shows");
    assert_eq!(st.image, "slow/big:1", "the old version serves meanwhile");
    assert_eq!(p.image, "slow/big:2");
    s.images.release.notify_one();
    second.await.unwrap().expect("updated");
}

#[tokio::test]
async fn pull_failures_are_clear_and_store_nothing() {
    let (s, _dir) = setup(true);
    let c = &s.control;
    let e = c
        .deploy(
            deployment(serde_json::json!({"service": "m", "image": "missing/x:1"})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::BadRequest(m) if m.contains("not found")),
        "{e}"
    );
    let e = c
        .deploy(
            deployment(serde_json::json!({"service": "d", "image": "down/x:1"})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(matches!(&e, ControlError::Upstream(_)), "{e}");
    assert!(c.store().list().unwrap().is_empty());
    assert!(s.container.recorded().is_empty(), "nothing started");
}

#[tokio::test]
async fn registry_credentials_come_from_the_named_secret() {
    let (s, _dir) = setup(true);
    let c = &s.control;
    let auth = r#"{"auths":{"registry.acme:5000":{"auth":"dTpw"}}}"#;
    let e = c
        .deploy(
            deployment(
                serde_json::json!({"service": "p", "image": "registry.acme:5000/p:1",
            "annotations": {"com.fjord.registry-auth": "acme-pull"}}),
            ),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::BadRequest(m) if m.contains("acme-pull") && m.contains("not found")),
        "{e}"
    );
    c.create_secret("openfaas-fn", "acme-pull", auth.as_bytes())
        .await
        .expect("secret");
    c.deploy(
        deployment(
            serde_json::json!({"service": "p", "image": "registry.acme:5000/p:1",
            "annotations": {"com.fjord.registry-auth": "acme-pull"}}),
        ),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("deploy with credentials");
    assert!(s.images.asked.lock().unwrap().contains(&Asked::Pull {
        reference: "registry.acme:5000/p:1".into(),
        auth: Some(auth.into()),
    }));
}

#[tokio::test]
async fn a_restart_runs_the_pinned_image_digest_not_the_tag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let digest = {
        let s = control_in(dir.path(), true);
        s.control
            .deploy(
                deployment(serde_json::json!({"service": "img", "image": "acme/app:latest"})),
                DeployMode::CreateOrUpdate,
            )
            .await
            .expect("deploy");
        s.control.shutdown().await;
        digest_of("acme/app:latest")
    };
    let s = control_in(dir.path(), true);
    assert_eq!(s.control.restore().await.expect("restore"), 1);
    let asked = s.images.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![Asked::Pinned {
            reference: "acme/app:latest".into(),
            digest
        }],
        "no pull of the tag on restart"
    );
    assert_eq!(runtime_of(&s.control, "img"), "container");
}

#[tokio::test]
async fn moving_to_another_runtime_keeps_the_old_version_until_the_new_is_ready() {
    let (s, _dir) = setup(true);
    let c = &s.control;
    c.deploy(
        deployment(serde_json::json!({"service": "mv", "image": "label", "envProcess": "cat"})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("v1 as a process");
    // A version that never becomes ready: the process version keeps serving, the store
    // goes back to it, the container runtime forgets the function.
    c.deploy(
        deployment(serde_json::json!({"service": "mv", "image": "broken/img:2"})),
        DeployMode::Update,
    )
    .await
    .expect("update accepted");
    let stored_is_v1 = || async {
        c.store()
            .get("openfaas-fn", "mv")
            .unwrap()
            .is_some_and(|f| f.deployment.image == "label")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(stored_is_v1().await
        && s.container.recorded().contains(&Recorded::Remove {
            function: "mv.openfaas-fn".into(),
        }))
    {
        assert!(tokio::time::Instant::now() < deadline, "never rolled back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runtime_of(c, "mv"), "process");
    assert!(
        !s.process
            .recorded()
            .iter()
            .any(|r| matches!(r, Recorded::Remove { .. }))
    );
    // The status shows the failed switch (what `fjord up` waits for).
    let rollout = c
        .status(&key("mv"))
        .expect("status")
        .fjord
        .and_then(|f| f.rollout)
        .expect("rollout");
    assert_eq!(rollout.state, "failed", "{rollout:?}");

    // A good image: the route moves to the container, then the process replicas stop.
    c.deploy(
        deployment(serde_json::json!({"service": "mv", "image": "acme/mv:3"})),
        DeployMode::Update,
    )
    .await
    .expect("update to a container");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runtime_of(c, "mv") != "container" {
        assert!(tokio::time::Instant::now() < deadline, "never switched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !s.process.recorded().contains(&Recorded::Remove {
        function: "mv.openfaas-fn".into(),
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old replicas never stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = c.store().get("openfaas-fn", "mv").unwrap().unwrap();
    assert_eq!(stored.deployment.image, "acme/mv:3");
    assert_eq!(stored.pin, Pin::Image(digest_of("acme/mv:3")));
}

#[tokio::test]
async fn images_no_version_uses_are_collected_after_updates_and_deletes() {
    let (s, _dir) = setup(true);
    let c = &s.control;
    for (name, image) in [("a", "acme/a:1"), ("b", "acme/b:1")] {
        c.deploy(
            deployment(serde_json::json!({"service": name, "image": image})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .expect("deploy");
    }
    c.deploy(
        deployment(serde_json::json!({"service": "a", "image": "acme/a:2"})),
        DeployMode::Update,
    )
    .await
    .expect("update");
    // After the update's rollout: a:1 is no longer kept, a:2 and b:1 are.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = s.images.collected.lock().unwrap().last().cloned();
        if let Some(keep) = last {
            let mut want = vec![digest_of("acme/a:2"), digest_of("acme/b:1")];
            want.sort();
            assert_eq!(keep, want);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no collection after the update"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.delete(&key("b")).await.expect("delete");
    let keep = s.images.collected.lock().unwrap().last().cloned().unwrap();
    assert_eq!(keep, vec![digest_of("acme/a:2")]);
    // On demand too.
    let n = s.images.collected.lock().unwrap().len();
    c.gc_images().await.expect("gc");
    assert_eq!(s.images.collected.lock().unwrap().len(), n + 1);
}

#[tokio::test]
async fn a_failed_switch_does_not_undo_a_newer_deploy_to_the_same_runtime() {
    let (s, _dir) = setup(true);
    let c = &s.control;
    c.deploy(
        deployment(serde_json::json!({"service": "mv", "image": "label", "envProcess": "cat"})),
        DeployMode::CreateOrUpdate,
    )
    .await
    .expect("v1 as a process");
    // A broken image, then at once a good one: the second reuses the container runtime's
    // handle of the first before the first's outcome is handled.
    c.deploy(
        deployment(serde_json::json!({"service": "mv", "image": "broken/img:2"})),
        DeployMode::Update,
    )
    .await
    .expect("broken accepted");
    c.deploy(
        deployment(serde_json::json!({"service": "mv", "image": "acme/mv:3"})),
        DeployMode::Update,
    )
    .await
    .expect("good accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runtime_of(c, "mv") != "container" {
        assert!(tokio::time::Instant::now() < deadline, "never switched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !s.container.recorded().contains(&Recorded::Remove {
            function: "mv.openfaas-fn".into()
        }),
        "the newer deploy was removed: {:?}",
        s.container.recorded()
    );
}

// ------------------------------------------------- one runtime runs everything (Kubernetes)

/// A runtime that pulls its own images, as Kubernetes does: a fake that also records the
/// image reference and the source each apply was given.
struct PullsItself {
    fake: Arc<FakeRuntime>,
    given: Mutex<Vec<(String, fjord_runtime_api::Source)>>,
}

impl fjord_runtime_api::Runtime for PullsItself {
    fn name(&self) -> &'static str {
        self.fake.name()
    }

    fn isolates(&self) -> bool {
        self.fake.isolates()
    }

    fn validate(
        &self,
        spec: &fjord_core::FunctionSpec,
        source: &fjord_runtime_api::Source,
    ) -> Result<(), fjord_runtime_api::RuntimeError> {
        self.fake.validate(spec, source)
    }

    fn apply(
        &self,
        spec: Arc<fjord_core::FunctionSpec>,
        source: fjord_runtime_api::Source,
        replicas: u64,
    ) -> Result<fjord_runtime_api::Applied, fjord_runtime_api::RuntimeError> {
        self.given
            .lock()
            .unwrap()
            .push((spec.deployment.image.clone(), source.clone()));
        self.fake.apply(spec, source, replicas)
    }

    fn scale(
        &self,
        key: &FunctionKey,
        replicas: u64,
    ) -> Result<(), fjord_runtime_api::RuntimeError> {
        self.fake.scale(key, replicas)
    }

    fn remove<'a>(
        &'a self,
        key: &'a FunctionKey,
    ) -> BoxFuture<'a, Result<(), fjord_runtime_api::RuntimeError>> {
        self.fake.remove(key)
    }

    fn get(&self, key: &FunctionKey) -> Option<Arc<fjord_runtime_api::FunctionHandle>> {
        self.fake.get(key)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.fake.shutdown()
    }
}

fn only_in(dir: &std::path::Path) -> (Arc<ControlPlane>, Arc<PullsItself>) {
    let runtime = Arc::new(PullsItself {
        fake: FakeRuntime::named("kubernetes"),
        given: Mutex::default(),
    });
    let (secret_key, _) = SecretKey::load_or_create(dir).expect("secrets key");
    let control = ControlPlane::from_parts(Parts {
        store: fjord_store::Store::open(&dir.join("state.db")).expect("store"),
        runtimes: Runtimes::Only(runtime.clone()),
        bundles: Bundles::new(dir, false).expect("bundles"),
        secret_key,
        uids: fjord_store::uid_registry::UidBlock::unrestricted(),
        switch_timeout: Duration::from_secs(10),
    });
    (control, runtime)
}

#[tokio::test]
async fn with_one_runtime_every_image_goes_to_it_as_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, rt) = only_in(dir.path());
    // With envProcess or without (locally: a process, or a container), and naming a secret
    // this server's vault does not hold (the runtime's own secrets are used).
    for (name, extra) in [
        ("cat", serde_json::json!({"envProcess": "cat"})),
        ("plain", serde_json::json!({})),
        (
            "withsecret",
            serde_json::json!({"secrets": ["db-password"]}),
        ),
    ] {
        let mut d = serde_json::json!({"service": name, "image": "ghcr.io/openfaas/alpine:latest"});
        d.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c.deploy(deployment(d), DeployMode::CreateOrUpdate)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(runtime_of(&c, name), "kubernetes");
        let stored = c.store().get("openfaas-fn", name).unwrap().unwrap();
        assert_eq!(
            stored.pin,
            Pin::NoBundle,
            "{name}: nothing pulled, no digest"
        );
    }
    let given = rt.given.lock().unwrap().clone();
    assert_eq!(given.len(), 3);
    for (image, source) in &given {
        assert_eq!(image, "ghcr.io/openfaas/alpine:latest");
        assert!(
            source.bundle.is_none() && source.image.is_none() && source.secrets.is_empty(),
            "nothing resolved here: {source:?}"
        );
    }
    let status = c.status(&key("plain")).expect("status");
    assert_eq!(status.image, "ghcr.io/openfaas/alpine:latest");
    assert_eq!(status.fjord.and_then(|f| f.digest), None);

    // A restart applies the stored functions to the same runtime, images as given.
    c.shutdown().await;
    let (c, rt) = only_in(dir.path());
    assert_eq!(c.restore().await.expect("restore"), 3);
    let given = rt.given.lock().unwrap().clone();
    assert!(
        given.len() == 3
            && given
                .iter()
                .all(|(image, _)| image == "ghcr.io/openfaas/alpine:latest"),
        "{given:?}"
    );
}

#[tokio::test]
async fn with_one_runtime_a_function_without_an_image_is_refused_naming_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, rt) = only_in(dir.path());
    for image in ["", "  "] {
        let e = c
            .deploy(
                deployment(
                    serde_json::json!({"service": "noimg", "image": image, "envProcess": "cat"}),
                ),
                DeployMode::CreateOrUpdate,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::BadRequest(m) if m.starts_with("image: required") && m.contains("kubernetes")),
            "{e}"
        );
    }
    // Asking for the process runtime cannot be honoured here.
    let e = c
        .deploy(
            deployment(serde_json::json!({"service": "proc", "image": "acme/x:1",
                "annotations": {"com.fjord.runtime": "process"}})),
            DeployMode::CreateOrUpdate,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::BadRequest(m) if m.contains("com.fjord.runtime")),
        "{e}"
    );
    assert!(c.store().list().unwrap().is_empty(), "nothing stored");
    assert!(rt.given.lock().unwrap().is_empty(), "nothing applied");
}
