//! The bundle store: packed bundles by digest (`<data>/bundles/<hex>.tar.gz`), tags in the
//! state store, and per-function unpacked copies (`<data>/run/<uid>/<hex>/`, owned by root
//! and readable only by the function's group) that replicas run from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjord_bundle::{BundleError, Digest, Extractor, Manifest};
use fjord_core::ProcessDefaults;
use fjord_store::Store;

use crate::ControlError;

/// Largest bundle accepted by `PUT /system/bundles/{digest}`.
pub const MAX_BUNDLE_BYTES: u64 = 2 << 30;

pub struct Bundles {
    dir: PathBuf,
    run: PathBuf,
    /// Functions run under their own uid: unpack for their group only.
    isolate: bool,
}

/// `resize` means `resize:latest`, as in Docker.
pub fn normalize_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

pub fn validate_tag(tag: &str) -> Result<(), ControlError> {
    let ok = !tag.is_empty()
        && tag.len() <= 255
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "tag {:?} is not a valid image name: use letters, digits and . _ - : / (e.g. resize-image:latest)",
            tag.chars().take(80).collect::<String>()
        )))
    }
}

impl Bundles {
    pub fn new(data_dir: &Path, isolate: bool) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = data_dir.join("bundles");
        let run = data_dir.join("run");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        std::fs::create_dir_all(&run)?;
        // Private: a sandboxed function sees only its own bundle, bound at /home/app.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir, run, isolate })
    }

    pub fn archive(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("{}.tar.gz", d.hex()))
    }

    /// The signature document stored beside bundle `d` (content trust).
    pub fn signature_path(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("{}.sig.json", d.hex()))
    }

    /// The signatures stored for bundle `d` (none: an empty document).
    pub fn signatures(&self, d: &Digest) -> Result<fjord_trust::BundleSignatures, ControlError> {
        match std::fs::read(self.signature_path(d)) {
            Ok(b) => fjord_trust::BundleSignatures::parse(&b)
                .map_err(|e| ControlError::Internal(format!("bundle {d}: stored {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(ControlError::Internal(format!(
                "bundle {d} signatures: {e}"
            ))),
        }
    }

    /// Adds the signatures of `doc` to those stored for bundle `d`, which must be here.
    /// They are not checked against any key: the trust policy does that at each deploy.
    pub fn add_signatures(
        &self,
        d: &Digest,
        doc: fjord_trust::BundleSignatures,
    ) -> Result<(), ControlError> {
        if !self.archive(d).exists() {
            return Err(ControlError::NotFound(format!(
                "bundle {d} is not on this gateway: upload it first (fjord push)"
            )));
        }
        let mut all = self.signatures(d)?;
        all.merge(doc);
        let tmp = self.upload_path(d);
        let bytes = serde_json::to_vec(&all).map_err(|e| ControlError::Internal(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, self.signature_path(d)))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                ControlError::Internal(format!("storing the signature of bundle {d}: {e}"))
            })
    }

    /// Hashes the archive of `d` again: what runs must be what was signed, even if the file
    /// changed on disk since it was uploaded (upload checked it once).
    pub async fn archive_matches(&self, d: &Digest) -> Result<bool, ControlError> {
        let path = self.archive(d);
        let want = d.clone();
        tokio::task::spawn_blocking(move || {
            use sha2::{Digest as _, Sha256};
            let mut f = std::fs::File::open(&path)
                .map_err(|e| ControlError::Internal(format!("{}: {e}", path.display())))?;
            let mut h = Sha256::new();
            std::io::copy(&mut f, &mut h)
                .map_err(|e| ControlError::Internal(format!("{}: {e}", path.display())))?;
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Ok(hex == want.hex())
        })
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?
    }

    /// Where an upload of `d` is written before [`admit`](Self::admit) checks it (a name no
    /// other upload uses, beside the archives so the rename is atomic).
    pub fn upload_path(&self, d: &Digest) -> PathBuf {
        let nonce: u64 = rand::random();
        self.dir.join(format!(".upload-{}-{nonce:016x}", d.hex()))
    }

    /// Takes an upload whose digest was checked: it must be a bundle (a manifest, entries
    /// that unpack safely); then it is stored under its digest. The upload is removed if not.
    pub async fn admit(&self, d: &Digest, upload: PathBuf) -> Result<(), ControlError> {
        let check = upload.clone();
        let manifest = tokio::task::spawn_blocking(move || fjord_bundle::read_manifest(&check))
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        if let Err(e) = manifest {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(bundle_error(d, e));
        }
        tokio::fs::rename(&upload, self.archive(d))
            .await
            .map_err(|e| ControlError::Internal(format!("storing the bundle: {e}")))?;
        tracing::info!(digest = %d, "bundle stored");
        Ok(())
    }

    /// The bundle an image names: a digest (`sha256:…`) or a tag set by `fjord push`.
    pub fn resolve(&self, store: &Store, image: &str) -> Result<Option<Digest>, ControlError> {
        let digest = if image.starts_with("sha256:") {
            Some(
                Digest::parse(image)
                    .map_err(|e| ControlError::BadRequest(format!("image: {e}")))?,
            )
        } else {
            store
                .tag(&normalize_tag(image))?
                .and_then(|d| Digest::parse(&d).ok())
        };
        Ok(digest.filter(|d| self.archive(d).exists()))
    }

    /// The bundle a stored version was pinned to. Its archive must still be here: falling
    /// back to the tag would run code that was never deployed.
    pub fn pinned(&self, digest: &str) -> Result<Digest, ControlError> {
        let d = Digest::parse(digest)
            .map_err(|e| ControlError::Internal(format!("pinned bundle {digest:?}: {e}")))?;
        if !self.archive(&d).exists() {
            return Err(ControlError::Internal(format!(
                "the bundle this version was deployed with ({d}) is missing from {}: deploy the function again",
                self.dir.display()
            )));
        }
        Ok(d)
    }

    /// Unpacks a bundle for one function (once per function and digest) and returns where it
    /// is and how to run it.
    pub async fn unpack_for(
        self: &Arc<Self>,
        digest: &Digest,
        uid: u32,
    ) -> Result<(PathBuf, ProcessDefaults), ControlError> {
        let this = self.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            let base = this.run.join(uid.to_string());
            let dest = base.join(digest.hex());
            // Also for directories made by an older fjord.
            std::fs::create_dir_all(&base)
                .and_then(|()| this.protect_uid_dir(&base, uid))
                .map_err(|e| ControlError::Internal(format!("{}: {e}", base.display())))?;
            let manifest = if dest.join(fjord_bundle::MANIFEST).exists() {
                Manifest::read_dir(&dest)
            } else {
                // Owned by root, readable by the function's group only; extracted by a thread
                // running as the function's uid, so even a flaw in the extractor could write
                // only where that uid may.
                Extractor::default()
                    .owner(this.isolate.then_some((0, uid)))
                    .extract_as(this.isolate.then_some((uid, uid)))
                    .unpack(&this.archive(&digest), &dest)
            }
            .map_err(|e| bundle_error(&digest, e))?;
            let mut env = manifest.env.clone();
            if manifest.mode == "http" {
                env.entry("mode".into()).or_insert_with(|| "http".into());
            }
            Ok((
                dest,
                ProcessDefaults {
                    fprocess: manifest.fprocess,
                    env,
                },
            ))
        })
        .await
        .map_err(|e| ControlError::Internal(format!("unpacking failed: {e}")))?
    }

    /// `run/<uid>/` is the function's own: root:<gid> 0750, so no other function can list
    /// which bundles it runs (found by the isolation tests: it was 0755).
    fn protect_uid_dir(&self, base: &Path, uid: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if self.isolate {
            std::os::unix::fs::chown(base, Some(0), Some(uid))?;
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o750))
        } else {
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700))
        }
    }

    /// Removes a function's unpacked bundles (when it is deleted), keeping `keep` if given.
    pub fn remove_for(&self, uid: u32, keep: Option<&Path>) {
        let base = self.run.join(uid.to_string());
        match keep {
            None => {
                let _ = std::fs::remove_dir_all(&base);
            }
            Some(k) => {
                if let Ok(entries) = std::fs::read_dir(&base) {
                    for e in entries.flatten() {
                        if e.path() != k {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
            }
        }
    }
}

/// What the archive holds is the client's fault (400, naming the entry); the disk failing is
/// ours (500).
fn bundle_error(digest: &Digest, e: BundleError) -> ControlError {
    match e {
        BundleError::Io { .. } => ControlError::Internal(format!("bundle {digest}: {e}")),
        e => ControlError::BadRequest(format!("bundle {digest}: {e}")),
    }
}
