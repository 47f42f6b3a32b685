//! The image store against a real `docker-registry`, with images made by umoci and skopeo.

mod common;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{Registry, layout, layout_manifest, run, wait_for};
use fjord_oci::{
    Credentials, DockerConfig, ImageStore, LayerState, Limits, OciError, Progress, PullPolicy,
    Reference, StoreConfig,
};

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(dir, StoreConfig::default()).unwrap()
}

fn reference(reg: &Registry, name: &str) -> Reference {
    Reference::parse(&format!("{}/{name}", reg.host())).unwrap()
}

/// Pulls with the default policy, collecting progress reports.
async fn pull(
    store: &ImageStore,
    r: &Reference,
) -> (
    Result<fjord_runtime_api::ImageRootfs, OciError>,
    Vec<Progress>,
) {
    let seen = Mutex::new(Vec::new());
    let res = store
        .pull(r, PullPolicy::default_for(r), None, &|p: &Progress| {
            seen.lock().unwrap().push(p.clone())
        })
        .await;
    (res, seen.into_inner().unwrap())
}

fn layer_dirs(store: &ImageStore) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tmp_is_empty(store: &ImageStore) -> bool {
    std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

fn nothing() -> impl Fn(&Progress) + Send + Sync {
    |_: &Progress| {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_unpacks_and_shares_layers_between_images() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "base", "fn/base", "1.0");
    reg.push(layout, "wh", "fn/wh", "1.0");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());

    let (base, progress) = pull(&store, &reference(&reg, "fn/base:1.0")).await;
    let base = base.unwrap();
    assert!(base.digest.starts_with("sha256:"), "{}", base.digest);
    assert_eq!(base.layers.len(), 1);
    assert!(progress.iter().any(|p| p.state == LayerState::Downloading));
    let done = progress
        .iter()
        .find(|p| p.state == LayerState::Done)
        .expect("a layer finished");
    assert_eq!(done.bytes, done.total);
    assert!(done.total > 500_000, "busybox is in the layer: {done:?}");

    let c = &base.config;
    assert_eq!(c.entrypoint, ["/bin/sh"]);
    assert_eq!(c.cmd, ["-c", "echo hi"]);
    assert!(c.env.contains(&"FOO=bar".to_string()), "{:?}", c.env);
    assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.exposed_ports, ["8080/tcp"]);

    let root = &base.layers[0];
    assert!(root.starts_with(dir.path().join("layers")));
    assert_eq!(
        std::fs::read(root.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    // The absolute symlink is stored as it is, not followed.
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
    let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
    let hl = std::fs::metadata(root.join("bin/busybox-hl")).unwrap();
    assert_eq!(bb.ino(), hl.ino(), "the hard link is one file");
    assert_eq!(bb.mode() & 0o7777, 0o755);
    assert_eq!(bb.mtime(), 1_000_000_000, "mtimes kept");
    let suid = std::fs::metadata(root.join("bin/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o755, "setuid is stripped");
    let owned = std::fs::metadata(root.join("etc/owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
    let tmp = std::fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777, "sticky bit kept");

    // A second image with the same base layer shares its directory.
    let (wh, progress) = pull(&store, &reference(&reg, "fn/wh:1.0")).await;
    let wh = wh.unwrap();
    assert_eq!(wh.layers.len(), 2);
    assert_eq!(wh.layers[0], base.layers[0]);
    assert!(
        progress
            .iter()
            .any(|p| p.index == 0 && p.state == LayerState::Present),
        "{progress:?}"
    );
    assert_eq!(layer_dirs(&store).len(), 2);

    // Local only, as after a restart.
    let reopened = ImageStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(reopened.get(&wh.digest).unwrap().as_ref(), Some(&wh));
    let list = reopened.list().unwrap();
    assert_eq!(list.len(), 2);
    let names: Vec<&String> = list.iter().flat_map(|i| &i.references).collect();
    assert!(
        names.contains(&&format!("{}/fn/wh:1.0", reg.host())),
        "{names:?}"
    );
    assert!(tmp_is_empty(&reopened));
}

/// Unmounts on drop, so a failed assertion does not leave the mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn opaque_xattr(dir: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(dir, "trusted.overlay.opaque", &mut buf).ok()?;
    Some(buf[..n].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_dirs_stack_as_overlay_lower_dirs() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "wh", "fn/wh", "1");
    reg.push(layout, "opq", "fn/opq", "1");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let wh = pull(&store, &reference(&reg, "fn/wh:1")).await.0.unwrap();
    let opq = pull(&store, &reference(&reg, "fn/opq:1")).await.0.unwrap();

    // The layers as unpacked: a 0/0 character device, and the opaque xattr.
    let removed = std::fs::symlink_metadata(wh.layers[1].join("etc/removed")).unwrap();
    assert!(removed.file_type().is_char_device());
    assert_eq!(removed.rdev(), 0);
    assert!(!wh.layers[1].join("etc/owned").exists());
    assert_eq!(
        opaque_xattr(&opq.layers[1].join("opq")),
        Some(b"y".to_vec())
    );
    assert_eq!(opaque_xattr(&opq.layers[0].join("opq")), None);
    assert_eq!(
        std::fs::read_to_string(opq.layers[1].join("opq/new")).unwrap(),
        "fresh"
    );

    // And what a container sees: an overlay of the layers, uppermost first.
    for (img, gone, kept) in [
        (&wh, "etc/removed", "etc/owned"),
        (&opq, "opq/old", "opq/new"),
    ] {
        let mnt = tempfile::tempdir().unwrap();
        let lower: Vec<String> = img
            .layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lower.join(":")))
            .arg(mnt.path()));
        let _m = Mounted(mnt.path().to_path_buf());
        assert!(
            !mnt.path().join(gone).exists(),
            "{gone} is hidden by the upper layer"
        );
        assert!(mnt.path().join(kept).exists(), "{kept} is visible");
        assert!(mnt.path().join("bin/busybox").is_file());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_without_linux_amd64_is_wrong_platform() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "multi", "fn/multi", "1");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    match pull(&store, &reference(&reg, "fn/multi:1")).await.0 {
        Err(OciError::WrongPlatform { available, .. }) => {
            assert_eq!(available, ["linux/arm64"]);
        }
        other => panic!("expected WrongPlatform, got {other:?}"),
    }
    let e = pull(&store, &reference(&reg, "fn/multi:1"))
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux/amd64") && e.contains("linux/arm64"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_and_repositories_are_not_found() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "base", "fn/base", "1.0");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    for name in ["fn/base:2.0", "fn/nosuch:1.0", "fn/base:latest"] {
        match pull(&store, &reference(&reg, name)).await.0 {
            Err(OciError::NotFound { reference, .. }) => assert!(reference.contains(name)),
            other => panic!("{name}: expected NotFound, got {other:?}"),
        }
    }
    // Policy Never: not present locally is NotFound without a registry.
    let r = reference(&reg, "fn/base:1.0");
    let never = store.pull(&r, PullPolicy::Never, None, &nothing()).await;
    assert!(matches!(never, Err(OciError::NotFound { .. })), "{never:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registries_need_credentials() {
    let layout = layout();
    let reg = Registry::start(Some(("alice", "s3cret")));
    reg.push(layout, "base", "team/private", "1.0");
    let r = reference(&reg, "team/private:1.0");

    let dir = tempfile::tempdir().unwrap();
    let anon = store(dir.path());
    match anon.pull(&r, PullPolicy::Always, None, &nothing()).await {
        Err(
            e @ OciError::Unauthorized {
                credentials_given: false,
                ..
            },
        ) => {
            let m = e.to_string();
            assert!(
                m.contains(&reg.host()) && m.contains("none were given"),
                "{m}"
            );
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let wrong = Credentials::Basic {
        username: "alice".into(),
        password: "nope".into(),
    };
    match anon
        .pull(&r, PullPolicy::Always, Some(&wrong), &nothing())
        .await
    {
        Err(OciError::Unauthorized {
            credentials_given: true,
            ..
        }) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(anon.list().unwrap().is_empty());

    // Per pull, from a registry-auth secret's `.dockerconfigjson`.
    let secret = format!(
        r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
        reg.host()
    );
    let creds = DockerConfig::parse(&secret).unwrap();
    let creds = creds.credentials_for(reg.host().as_str()).unwrap();
    let img = anon
        .pull(&r, PullPolicy::Always, Some(creds), &nothing())
        .await
        .unwrap();
    assert_eq!(img.layers.len(), 1);

    // From a Docker config.json the store is pointed at.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://{}":{{"username":"alice","password":"s3cret"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let with_config = ImageStore::open(
        dir2.path(),
        StoreConfig {
            docker_config: Some(cfg),
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let img2 = with_config
        .pull(&r, PullPolicy::Always, None, &nothing())
        .await
        .unwrap();
    assert_eq!(img2.digest, img.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_unreachable() {
    let port = common::free_port();
    let r = Reference::parse(&format!("127.0.0.1:{port}/fn/x:1")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    match store.pull(&r, PullPolicy::Always, None, &nothing()).await {
        Err(e @ OciError::Unreachable { .. }) => {
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

fn last_layer_digest(tag: &str) -> String {
    let m = layout_manifest(tag);
    let layers = m["layers"].as_array().unwrap();
    layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_never_stored() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "unique", "fn/unique", "1");
    let digest = last_layer_digest("unique");
    let data = reg.blob_data(&digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    match pull(&store, &reference(&reg, "fn/unique:1")).await.0 {
        Err(OciError::DigestMismatch { expected, .. }) => assert_eq!(expected, digest),
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    // Only the base layer (verified) is there; nothing of the tampered one.
    assert_eq!(layer_dirs(&store).len(), 1);
    assert!(store.list().unwrap().is_empty());
    assert!(tmp_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_that_escape_are_bad_layers() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "dotdot", "fn/dotdot", "1");
    reg.push(layout, "escape", "fn/escape", "1");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    for (name, entry, why) in [
        ("fn/dotdot:1", "../x", "`..`"),
        ("fn/escape:1", "evil/pwned", "symlink"),
    ] {
        match pull(&store, &reference(&reg, name)).await.0 {
            Err(e @ OciError::BadLayer { .. }) => {
                let m = e.to_string();
                assert!(m.contains(entry) && m.contains(why), "{name}: {m}");
            }
            other => panic!("{name}: expected BadLayer, got {other:?}"),
        }
    }
    // Nothing escaped and nothing half-made is kept.
    assert!(!dir.path().join("x").exists() && !dir.path().join("tmp/x").exists());
    assert!(!Path::new("/etc/pwned").exists());
    assert_eq!(layer_dirs(&store).len(), 1, "only the shared base layer");
    assert!(tmp_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_above_the_limits_are_refused() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "big", "fn/big", "1");
    let (dir, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let limited = |dir: &Path, max_compressed, max_unpacked| {
        ImageStore::open(
            dir,
            StoreConfig {
                limits: Limits {
                    max_compressed,
                    max_unpacked,
                    ..Limits::default()
                },
                ..StoreConfig::default()
            },
        )
        .unwrap()
    };
    // 3 MiB of zeros compress to almost nothing: only the unpacked limit catches them.
    let store = limited(dir.path(), 64 << 20, 5 << 19);
    match pull(&store, &reference(&reg, "fn/big:1")).await.0 {
        Err(OciError::LayerTooLarge {
            which: "unpacked",
            digest,
            ..
        }) => assert_eq!(digest, last_layer_digest("big")),
        other => panic!("expected LayerTooLarge, got {other:?}"),
    }
    assert_eq!(layer_dirs(&store).len(), 1, "the base layer fits");
    assert!(tmp_is_empty(&store));
    // The base layer's 1 MiB of gzip is over a 64 KiB limit (checked before downloading).
    let store = limited(dir2.path(), 64 << 10, 64 << 20);
    match pull(&store, &reference(&reg, "fn/big:1")).await.0 {
        Err(OciError::LayerTooLarge {
            which: "compressed",
            digest,
            ..
        }) => assert_eq!(digest, layout_manifest("big")["layers"][0]["digest"]),
        other => panic!("expected LayerTooLarge, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_contacts_the_registry_only_as_needed() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "base", "fn/p", "1.0");
    reg.push(layout, "base", "fn/p", "latest");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let v1 = reference(&reg, "fn/p:1.0");
    let img = pull(&store, &v1).await.0.unwrap();
    let first = reg.client_requests("a").len();
    assert!(first >= 3, "manifest, config and layer were fetched");

    // A fixed tag that is present: no request at all.
    assert_eq!(pull(&store, &v1).await.0.unwrap(), img);
    assert_eq!(reg.client_requests("b").len(), first);

    // `latest` (or no tag): the digest is resolved again, one HEAD, nothing downloaded.
    let latest = Reference::parse(&format!("{}/fn/p", reg.host())).unwrap();
    assert_eq!(PullPolicy::default_for(&latest), PullPolicy::Always);
    assert_eq!(pull(&store, &latest).await.0.unwrap(), img);
    // (oci-client also probes `GET /v2/` for an auth challenge before each request to a
    // registry that sends none.)
    let requests = reg.client_requests("c");
    let new: Vec<&String> = requests[first..]
        .iter()
        .filter(|l| !l.contains("\"GET /v2/ HTTP"))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(
        new[0].contains("\"HEAD /v2/fn/p/manifests/latest"),
        "{new:?}"
    );

    // A digest that is present works with the registry gone.
    let pinned = Reference::parse(&format!("{}/fn/p@{}", reg.host(), img.digest)).unwrap();
    let port = reg.port;
    reg.stop();
    wait_for("the registry to stop", 10, || {
        common::http_get(port, "/v2/").is_none()
    });
    assert_eq!(
        store
            .pull(&pinned, PullPolicy::Always, None, &nothing())
            .await
            .unwrap(),
        img
    );
    // … while a moving tag cannot be resolved.
    assert!(matches!(
        pull(&store, &latest).await.0,
        Err(OciError::Unreachable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_an_interrupted_pull_are_removed_and_pulled_again() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "wh", "fn/wh", "1");
    let dir = tempfile::tempdir().unwrap();
    let img = {
        let store = store(dir.path());
        pull(&store, &reference(&reg, "fn/wh:1")).await.0.unwrap()
    };
    // As a kill -9 would leave them: a layer renamed into place but not marked, a half
    // unpacked layer and a half downloaded blob in tmp/.
    let unmarked = img.layers[1].parent().unwrap().to_path_buf();
    std::fs::remove_file(unmarked.join("ok")).unwrap();
    std::fs::create_dir_all(dir.path().join("tmp/layer-x/rootfs/etc")).unwrap();
    std::fs::write(dir.path().join("tmp/layer-x/rootfs/etc/half"), "x").unwrap();
    std::fs::write(dir.path().join("tmp/blob-x"), "partial").unwrap();

    let store = store(dir.path());
    assert!(!unmarked.exists(), "an unmarked layer is removed at open");
    assert!(tmp_is_empty(&store));
    assert!(img.layers[0].exists(), "complete layers stay");
    assert_eq!(store.get(&img.digest).unwrap(), None, "never trusted");

    let pinned = Reference::parse(&format!("{}/fn/wh@{}", reg.host(), img.digest)).unwrap();
    let (again, progress) = pull(&store, &pinned).await;
    assert_eq!(again.unwrap(), img);
    assert!(
        progress
            .iter()
            .any(|p| p.index == 1 && p.state == LayerState::Downloading),
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .any(|p| p.index == 0 && p.state == LayerState::Present)
    );
    assert!(unmarked.join("ok").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_what_no_kept_image_uses_and_keeps_shared_layers() {
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "base", "fn/base", "1");
    reg.push(layout, "wh", "fn/wh", "1");
    reg.push(layout, "other", "fn/other", "1");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let base = pull(&store, &reference(&reg, "fn/base:1")).await.0.unwrap();
    let wh = pull(&store, &reference(&reg, "fn/wh:1")).await.0.unwrap();
    let other = pull(&store, &reference(&reg, "fn/other:1"))
        .await
        .0
        .unwrap();
    assert_eq!(layer_dirs(&store).len(), 3);

    let report = store.gc(std::slice::from_ref(&wh.digest)).await.unwrap();
    let mut removed = report.images.clone();
    removed.sort();
    let mut want = vec![base.digest.clone(), other.digest.clone()];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(report.layers.len(), 1, "only other's own layer: {report:?}");
    assert!(report.bytes > 0);
    assert!(!other.layers[1].exists());
    assert!(
        wh.layers.iter().all(|l| l.exists()),
        "shared base layer kept"
    );
    assert_eq!(store.get(&wh.digest).unwrap(), Some(wh.clone()));
    assert_eq!(store.get(&base.digest).unwrap(), None);
    assert_eq!(store.list().unwrap().len(), 1);
    // The removed tag is pulled again, not trusted from a stale record.
    let (again, progress) = pull(&store, &reference(&reg, "fn/other:1")).await;
    assert_eq!(again.unwrap(), other);
    assert!(progress.iter().any(|p| p.state == LayerState::Downloading));

    let report = store.gc(&[]).await.unwrap();
    assert_eq!(report.images.len(), 2);
    assert!(layer_dirs(&store).is_empty());
    assert!(store.list().unwrap().is_empty());
    assert!(
        std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// Set in the child process of the kill -9 tests: `<store root>\n<reference>\n<stuck file>\n<when>`.
const CHILD_ENV: &str = "FJORD_OCI_TEST_KILL_CHILD";

/// In a kill -9 test's child: pulls, and hangs in the progress callback (the pull's own task)
/// once the second layer reaches `when` (`unpacking`: all of it downloaded; `downloading`:
/// its first MiB downloaded, the rest not), until killed.
async fn child_pull_until_stuck(spec: &str) -> ! {
    let mut parts = spec.lines();
    let (root, r, stuck, when) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let store = ImageStore::open(&root, StoreConfig::default()).unwrap();
    let r = Reference::parse(&r).unwrap();
    let hang = move |p: &Progress| {
        let reached = p.index == 1
            && match when.as_str() {
                "unpacking" => p.state == LayerState::Unpacking,
                "downloading" => p.state == LayerState::Downloading && p.bytes > 0,
                other => panic!("unknown stage {other}"),
            };
        if reached {
            std::fs::write(&stuck, "").unwrap();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    };
    let _ = store.pull(&r, PullPolicy::Always, None, &hang).await;
    panic!("the child was meant to be killed");
}

/// Runs `test` (this very test) in a child process that pulls `r` into `root` and hangs as
/// [`child_pull_until_stuck`] says; returns once it hangs there.
fn spawn_stuck_child(
    test: &str,
    root: &Path,
    r: &Reference,
    stuck: &Path,
    when: &str,
) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{}\n{r}\n{}\n{when}", root.display(), stuck.display()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the child to reach the second layer", 60, || {
        stuck.exists() || child.try_wait().unwrap().is_some()
    });
    assert!(stuck.exists(), "the child exited early");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_pull_leaves_nothing_trusted() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        // The child: pull until the second layer is downloaded (and unpacked, or nearly, in
        // tmp/), then hang there, before it is checked and renamed into place.
        child_pull_until_stuck(&spec).await;
    }
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "big", "fn/big", "1");
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join("stuck");
    let root = dir.path().join("store");
    let r = reference(&reg, "fn/big:1");
    let mut child = spawn_stuck_child(
        "kill_9_in_the_middle_of_a_pull_leaves_nothing_trusted",
        &root,
        &r,
        &stuck,
        "unpacking",
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let leftovers = std::fs::read_dir(root.join("tmp")).unwrap().count();
    assert!(leftovers > 0, "the layer was being unpacked in tmp/");

    let store = store(&root);
    assert!(tmp_is_empty(&store));
    assert!(store.list().unwrap().is_empty(), "no image recorded");
    // Layers unpack in parallel: the base layer may or may not have finished; the big one,
    // not yet checked, is not there.
    let kept = layer_dirs(&store);
    assert!(kept.len() <= 1, "{kept:?}");
    for l in &kept {
        assert!(!root.join("layers").join(l).join("rootfs/big").exists());
    }
    let (img, progress) = pull(&store, &r).await;
    let img = img.unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(
        std::fs::metadata(img.layers[1].join("big")).unwrap().len(),
        3 << 20
    );
    assert!(
        progress
            .iter()
            .any(|p| p.index == 1 && p.state == LayerState::Done)
    );
}

/// Files (not directories) anywhere beneath `dir`, with their sizes.
fn files_beneath(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), md.len()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_layer_streams_in_leaves_its_half_unpacked_files_unused() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        // The child: hang once the second layer's first MiB came, its unpack still going.
        child_pull_until_stuck(&spec).await;
    }
    let layout = layout();
    let reg = Registry::start(None);
    reg.push(layout, "noise", "fn/noise", "1");
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join("stuck");
    let root = dir.path().join("store");
    let r = reference(&reg, "fn/noise:1");
    let mut child = spawn_stuck_child(
        "kill_9_while_a_layer_streams_in_leaves_its_half_unpacked_files_unused",
        &root,
        &r,
        &stuck,
        "downloading",
    );
    // Layers unpack as they download: the file is being written in tmp/, but only as far as
    // the bytes that came (the download waits in the hung callback).
    let noise = || {
        files_beneath(&root.join("tmp"))
            .into_iter()
            .find(|(p, _)| p.ends_with("rootfs/noise"))
    };
    wait_for("the unpack to write part of the file", 60, || {
        noise().is_some_and(|(_, len)| len > 0)
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (_, len) = noise().unwrap();
    assert!(len < 4 << 20, "half written: {len} bytes");

    let store = store(&root);
    assert!(
        tmp_is_empty(&store),
        "the half-unpacked layer is removed at open"
    );
    assert!(store.list().unwrap().is_empty(), "no image recorded");
    let kept = layer_dirs(&store);
    assert!(kept.len() <= 1, "at most the base layer: {kept:?}");
    assert!(
        files_beneath(&root.join("layers"))
            .iter()
            .all(|(p, _)| !p.ends_with("rootfs/noise")),
        "nothing of the half-made layer is in layers/"
    );
    let (img, progress) = pull(&store, &r).await;
    let img = img.unwrap();
    assert_eq!(
        std::fs::metadata(img.layers[1].join("noise"))
            .unwrap()
            .len(),
        4 << 20
    );
    assert!(
        progress
            .iter()
            .any(|p| p.index == 1 && p.state == LayerState::Done)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_layers_are_unpacked_too() {
    let layout = layout();
    let reg = Registry::start(None);
    run(Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-compress-format=zstd",
            "--dest-compress",
        ])
        .arg(format!("oci:{}:wh", layout.display()))
        .arg(format!("docker://{}/fn/zstd:1", reg.host())));
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let img = pull(&store, &reference(&reg, "fn/zstd:1")).await.0.unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(
        std::fs::read(img.layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    let removed = std::fs::symlink_metadata(img.layers[1].join("etc/removed")).unwrap();
    assert!(removed.file_type().is_char_device());
    // The manifest pulled (kept in the store) really names zstd layers.
    let hex = img.digest.strip_prefix("sha256:").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
}
