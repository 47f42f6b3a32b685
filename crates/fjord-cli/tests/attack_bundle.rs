//! Issue 11, item 1: a bundle whose symlinks climb out of its directory. The archive holds
//! `d → .`, then `d/d/d/d/up → ../../../..` (made through `d`, so `up` lands at the bundle's
//! root, pointing four levels up: the test's temp dir, outside the data dir), then regular
//! files `up/secret` and `up/created`. Unpacked by the old, lexical check as root, it
//! overwrote a root-only 0600 file and created another outside the data dir. Now the upload
//! is refused, and so is a deploy of such a bundle already in the store, both with 400 naming
//! the entry, and nothing outside is touched.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Server, send_text};
use fjord_bundle::raw::{Entry, tar_gz};
use reqwest::{Method, StatusCode};
use serde_json::json;

const MANIFEST: &str = r#"{"name":"evil","language":"bash","fprocess":"./run.sh","mode":"fork"}"#;

fn evil_bundle() -> Vec<u8> {
    tar_gz(&[
        Entry::file("manifest.json", MANIFEST.as_bytes()),
        Entry::file("run.sh", b"#!/bin/sh\necho hi\n").mode(0o755),
        Entry::symlink("d", "."),
        Entry::symlink("d/d/d/d/up", "../../../.."),
        Entry::file("up/secret", b"pwned\n"),
        Entry::file("up/created", b"pwned\n"),
    ])
}

fn sha256(data: &[u8]) -> String {
    let mut h = fjord_bundle::Hasher::default();
    h.update(data);
    h.finish().as_str().to_string()
}

/// The attack's targets, in the test's temp dir (the data dir's parent): a root-only 0600
/// file, and a name that must not come to exist.
struct Targets {
    secret: PathBuf,
    created: PathBuf,
}

impl Targets {
    fn plant(s: &Server) -> Self {
        let dir = s.dir.tmp.path();
        let secret = dir.join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            secret,
            created: dir.join("created"),
        }
    }

    fn assert_untouched(&self) {
        let m = std::fs::metadata(&self.secret).unwrap();
        assert_eq!(
            (
                std::fs::read_to_string(&self.secret).unwrap().as_str(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
            ("root only\n", 0o600, 0, 0),
            "the bundle overwrote {}",
            self.secret.display()
        );
        assert!(
            !self.created.exists(),
            "the bundle created {}",
            self.created.display()
        );
    }
}

/// Every path under `dir` (not following symlinks).
fn tree(dir: &Path) -> BTreeMap<PathBuf, bool> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let is_dir = e.file_type().unwrap().is_dir();
            if is_dir {
                stack.push(p.clone());
            }
            out.insert(p, is_dir);
        }
    }
    out
}

fn assert_refusal(st: StatusCode, body: &str, what: &str) {
    assert_eq!(st, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert!(
        body.contains("\"d/d/d/d/up\"") && body.contains("symlink"),
        "{what}: the answer should name the entry and why: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_whose_symlinks_climb_out_is_refused_at_upload() {
    let s = Server::start().await;
    let targets = Targets::plant(&s);
    let bundle = evil_bundle();
    let digest = sha256(&bundle);
    let (st, body) = send_text(
        s.sys(Method::PUT, &format!("/system/bundles/{digest}?tag=evil:1"))
            .body(bundle),
    )
    .await;
    assert_refusal(st, &body, "upload");
    // Not stored, not tagged: nothing can deploy it.
    let r = s
        .sys(Method::HEAD, &format!("/system/bundles/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/functions",
            &json!({"service": "evil", "image": "evil:1"}),
        )
        .await;
    // Not a bundle here: fjord tries it as a container image (from Docker Hub, unreachable
    // from the test machine), and says that no bundle has that name either.
    assert!(
        !st.is_success() && body.contains("nor is \"evil:1\" a bundle"),
        "deploying the refused bundle's tag: {st} {body}"
    );
    assert!(s.get_function("evil").await.is_none(), "nothing deployed");
    targets.assert_untouched();
}

/// The extractor itself, at deploy: a bundle that is in the store without the upload's
/// check (stored by an older fjord, or copied in) is refused too, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_bundle_whose_symlinks_climb_out_is_refused_at_deploy() {
    let s = Server::start().await;
    let targets = Targets::plant(&s);
    let bundle = evil_bundle();
    let digest = sha256(&bundle);
    let data = s.data_dir();
    std::fs::write(
        data.join("bundles")
            .join(format!("{}.tar.gz", digest.trim_start_matches("sha256:"))),
        &bundle,
    )
    .unwrap();
    let before = tree(s.dir.tmp.path());
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/functions",
            &json!({"service": "evil", "image": digest}),
        )
        .await;
    targets.assert_untouched();
    assert_refusal(st, &body, "deploy");
    assert!(s.get_function("evil").await.is_none());
    // Nothing new anywhere around the data dir, and no half-unpacked bundle inside it: at
    // most the function's empty run/<uid>/ directory.
    let after = tree(s.dir.tmp.path());
    let new: Vec<_> = after
        .keys()
        .filter(|p| !before.contains_key(*p))
        .filter(|p| !p.starts_with(data.join("logs")) && !p.starts_with(data.join("replicas")))
        .collect();
    for p in &new {
        assert!(
            p.parent() == Some(&data.join("run")) && after[*p],
            "left behind by the refused deploy: {}",
            p.display()
        );
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0, "{}", p.display());
    }
}
