//! The trust policy in the control plane, over fake runtimes and a fake image source that
//! holds signatures (no registry, no root): verified before the pull, refusals are 403 and
//! change nothing, restarts verify again, the status and the report show the verdicts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_core::FunctionKey;
use fjord_core::openfaas::FunctionDeployment;
use fjord_runtime_api::fake::FakeRuntime;
use fjord_runtime_api::{BoxFuture, ImageRootfs};
use fjord_trust::{KeyPair, Policy, PrivateKey, Signature, SimpleSigning};

use crate::bundles::Bundles;
use crate::images::{GcReport, ImageError, ImageSource, PullWatch, RegistryAuth};
use crate::secrets::SecretKey;
use crate::{Containers, ControlError, ControlPlane, DeployMode, Parts, Runtimes};

/// Each reference names the digest `digest_of(reference)`; signatures by digest; what was
/// pulled is recorded.
#[derive(Default)]
struct SignedImages {
    signatures: Mutex<HashMap<String, Vec<Signature>>>,
    pulled: Mutex<Vec<String>>,
}

fn digest_of(reference: &str) -> String {
    let hex: String = reference
        .bytes()
        .map(|b| format!("{:02x}", b))
        .collect::<String>()
        .chars()
        .chain(std::iter::repeat('0'))
        .take(64)
        .collect();
    format!("sha256:{hex}")
}

impl ImageSource for SignedImages {
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        _auth: Option<&'a RegistryAuth>,
        _watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>> {
        Box::pin(async move {
            self.pulled.lock().unwrap().push(digest_of(reference));
            Ok(Arc::new(ImageRootfs {
                digest: digest_of(reference),
                ..ImageRootfs::default()
            }))
        })
    }

    fn pinned<'a>(
        &'a self,
        _reference: &'a str,
        digest: &'a str,
        _auth: Option<&'a RegistryAuth>,
        _watch: &'a PullWatch,
    ) -> BoxFuture<'a, Result<Arc<ImageRootfs>, ImageError>> {
        Box::pin(async move {
            self.pulled.lock().unwrap().push(digest.to_string());
            Ok(Arc::new(ImageRootfs {
                digest: digest.into(),
                ..ImageRootfs::default()
            }))
        })
    }

    fn resolve<'a>(
        &'a self,
        reference: &'a str,
        _auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<Option<String>, ImageError>> {
        Box::pin(async move { Ok(Some(digest_of(reference))) })
    }

    fn signatures<'a>(
        &'a self,
        _reference: &'a str,
        digest: &'a str,
        _auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<Vec<Signature>, ImageError>> {
        Box::pin(async move {
            Ok(self
                .signatures
                .lock()
                .unwrap()
                .get(digest)
                .cloned()
                .unwrap_or_default())
        })
    }

    fn gc<'a>(&'a self, _keep: &'a [String]) -> BoxFuture<'a, Result<GcReport, ImageError>> {
        Box::pin(async { Ok(GcReport::default()) })
    }
}

fn control_in(dir: &std::path::Path, images: Arc<SignedImages>) -> Arc<ControlPlane> {
    let (secret_key, _) = SecretKey::load_or_create(dir).expect("secrets key");
    ControlPlane::from_parts(Parts {
        store: fjord_store::Store::open(&dir.join("state.db")).expect("store"),
        runtimes: Runtimes::Local {
            process: FakeRuntime::named("process"),
            containers: Some(Containers {
                runtime: FakeRuntime::named("container"),
                images,
            }),
        },
        bundles: Bundles::new(dir, false).expect("bundles"),
        secret_key,
        uids: fjord_store::uid_registry::UidBlock::unrestricted(),
        switch_timeout: Duration::from_secs(10),
    })
}

fn key_pair() -> (PrivateKey, KeyPair) {
    let pair = KeyPair::generate(b"").expect("generate");
    let private = PrivateKey::from_encrypted_pem(&pair.private_pem, b"").expect("open");
    (private, pair)
}

fn policy(public_pem: &str) -> Policy {
    let pem = public_pem.to_string();
    Policy::parse(
        "namespaces:\n  openfaas-fn:\n    keys: [k.pub]\n  dev:\n    allow-unsigned: true\n",
        &move |_| Ok(pem.clone()),
    )
    .expect("policy")
}

fn sign(images: &SignedImages, k: &PrivateKey, reference: &str, signed_digest: &str) {
    let payload = SimpleSigning::image("reg/web", signed_digest).to_bytes();
    images
        .signatures
        .lock()
        .unwrap()
        .entry(digest_of(reference))
        .or_default()
        .push(Signature {
            signature: k.sign(&payload),
            payload,
        });
}

fn web(image: &str, ns: Option<&str>) -> FunctionDeployment {
    serde_json::from_value(serde_json::json!({"service": "web", "image": image, "namespace": ns}))
        .expect("deployment")
}

fn forbidden(r: Result<u64, ControlError>, needle: &str) {
    match r {
        Err(ControlError::Forbidden(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected 403 ({needle}), got {other:?}"),
    }
}

fn trust_state(c: &ControlPlane, ns: &str) -> (String, Option<String>) {
    let t = c
        .status(&FunctionKey::new("web", Some(ns)).unwrap())
        .expect("status")
        .fjord
        .and_then(|f| f.trust)
        .expect("a verdict");
    (t.state, t.key_id)
}

#[tokio::test]
async fn images_are_verified_before_the_pull_and_again_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(SignedImages::default());
    let (trusted, trusted_pair) = key_pair();
    let (other, other_pair) = key_pair();
    let c = control_in(dir.path(), images.clone());
    c.set_trust_policy(Some(policy(&trusted_pair.public_pem)));

    sign(&images, &trusted, "web:1", &digest_of("web:1"));
    c.deploy(web("web:1", None), DeployMode::CreateOrUpdate)
        .await
        .expect("signed by the trusted key");
    assert_eq!(
        trust_state(&c, "openfaas-fn"),
        (
            "verified".into(),
            Some(trusted_pair.public.id().to_string())
        )
    );

    // Unsigned, signed by another key, a signature moved from web:1: 403 before any pull.
    forbidden(
        c.deploy(web("web:2", None), DeployMode::Update).await,
        "unsigned",
    );
    sign(&images, &other, "web:3", &digest_of("web:3"));
    forbidden(
        c.deploy(web("web:3", None), DeployMode::Update).await,
        "untrusted key",
    );
    sign(&images, &trusted, "web:4", &digest_of("web:1"));
    forbidden(
        c.deploy(web("web:4", None), DeployMode::Update).await,
        "another digest",
    );
    assert_eq!(
        *images.pulled.lock().unwrap(),
        vec![digest_of("web:1")],
        "only the verified digest was pulled"
    );
    let stored = c.store().get("openfaas-fn", "web").unwrap().unwrap();
    assert_eq!(stored.deployment.image, "web:1", "nothing changed");

    // Another namespace allows unsigned images.
    c.deploy(web("web:2", Some("dev")), DeployMode::CreateOrUpdate)
        .await
        .expect("allow-unsigned");
    assert_eq!(trust_state(&c, "dev"), ("unsigned-allowed".into(), None));
    let report = c.trust_report().await.expect("report");
    assert!(
        report.iter().all(|r| r.trust.state != "refused"),
        "{report:?}"
    );

    // A restart under a policy trusting only the other key: web is not started, and the
    // report says why; dev still runs.
    c.shutdown().await;
    drop(c);
    let c = control_in(dir.path(), images.clone());
    c.set_trust_policy(Some(policy(&other_pair.public_pem)));
    assert_eq!(
        c.restore().await.expect("restore"),
        1,
        "only dev/web started"
    );
    let report = c.trust_report().await.expect("report");
    let web_report = report
        .iter()
        .find(|r| r.namespace == "openfaas-fn")
        .expect("listed");
    assert!(!web_report.running);
    assert_eq!(web_report.trust.state, "refused");
    assert!(
        web_report
            .trust
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("untrusted key")),
        "{web_report:?}"
    );
}
