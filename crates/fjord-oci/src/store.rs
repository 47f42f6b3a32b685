//! The content-addressed image store and pulling into it.
//!
//! Layout under the root (the server passes `<data-dir>/images`):
//!
//! ```text
//! tmp/                         unpacks in progress (as layers download); emptied at open
//! blobs/sha256/<hex>           verified manifests, indexes and image configs
//! layers/<hex>/rootfs/         a layer unpacked for overlayfs, keyed by its diff_id
//! layers/<hex>/ok              written last: a layer without it is never used (removed at open)
//! images/<hex>.json            an image (keyed by the digest a reference resolved to)
//! tags/<sha256(ref)>.json      `registry/repo:tag` → digest, for the pull policy
//! ```
//!
//! Every step writes beneath `tmp/` and renames into place, so a kill -9 at any point leaves
//! either the old state or the new one, plus leftovers in `tmp/` that the next open removes.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fjord_runtime_api::{ImageConfig, ImageRootfs};
use futures_util::StreamExt as _;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::auth::{Credentials, DockerConfig};
use crate::client::{Failure, classify, registry_client};
use crate::error::{OciError, chain, io_at};
use crate::layer;
use crate::reference::{Reference, check_digest};

/// Size limits per layer (a decompression bomb stops at `max_unpacked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one layer as the registry sends it.
    pub max_compressed: u64,
    /// Bytes of one layer's uncompressed tar stream.
    pub max_unpacked: u64,
    /// Entries (files, directories, links) in one layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed: 4 << 30,
            max_unpacked: 16 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// How the store reaches registries.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP besides loopback ones
    /// (`--insecure-registry`). Every other registry is HTTPS.
    pub insecure: Vec<String>,
    /// A Docker `config.json` whose `auths` are used when a pull gets no credentials of its
    /// own; read again at each pull, so a `docker login` needs no restart.
    pub docker_config: Option<PathBuf>,
    pub limits: Limits,
}

/// When a pull contacts the registry (as Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the tag's digest again each time; download only what is missing.
    Always,
    /// Use the local image when the tag (or digest) is present.
    IfNotPresent,
    /// Never contact the registry: the image must be present.
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `:latest` (or no tag) → `Always`, anything else → `IfNotPresent`.
    /// A digest reference never contacts the registry when present, whatever the policy.
    pub fn default_for(r: &Reference) -> Self {
        if r.digest().is_none() && r.tag() == Some("latest") {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        }
    }
}

/// What a layer's pull is doing, for the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// Already unpacked in the store (shared with another image or an earlier pull).
    Present,
    /// Bytes arriving (`bytes` of `total`); they are unpacked as they come.
    Downloading,
    /// All bytes came; the unpack finishes, then both digests are checked.
    Unpacking,
    /// Verified and in the store.
    Done,
}

/// One progress report of a pull: bytes downloaded of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The layer's digest (as the manifest names it).
    pub layer: String,
    /// Position of the layer in the image (0 = lowest) and how many it has.
    pub index: usize,
    pub count: usize,
    pub state: LayerState,
    pub bytes: u64,
    pub total: u64,
}

/// An image present in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The digest the references resolved to (an index's or a manifest's).
    pub digest: String,
    /// References it was pulled as (`registry/repo:tag`, `registry/repo@digest`).
    pub references: Vec<String>,
    /// Layer diff_ids, lowest first.
    pub layers: Vec<String>,
    /// Sum of the layers' compressed sizes.
    pub size: u64,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images: Vec<String>,
    pub layers: Vec<String>,
    pub blobs: usize,
    pub tags: usize,
    pub bytes: u64,
}

const ACCEPT: &[&str] = &[
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
];
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Layers fetched at once by one pull.
const PARALLEL_LAYERS: usize = 3;
/// Chunks of a layer's body in flight between its download and its unpack (the chunks are
/// what the connection read at once: tens to hundreds of KiB), so a slow disk holds the
/// download back instead of filling memory.
const BODY_CHUNKS: usize = 32;
/// Manifests and configs are small; anything bigger is not one.
const MAX_JSON: u64 = 8 << 20;

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnyManifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawContainerConfig>,
    rootfs: RawRootfs,
}

#[derive(Debug, Default, Deserialize)]
struct RawContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    exposed_ports: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// An image record (`images/<hex>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    digest: String,
    /// The linux/amd64 manifest (the same as `digest` unless that is an index).
    manifest: String,
    config: String,
    layers: Vec<String>,
    size: u64,
    references: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TagRecord {
    reference: String,
    digest: String,
}

/// The image store. Cheap to clone; pulls run concurrently (a layer two pulls need is
/// downloaded once), [`ImageStore::gc`] waits for them.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    config: StoreConfig,
    /// Pulls hold it shared, GC exclusively: GC never removes what a pull is writing.
    /// (Owned guards: an unpack on a blocking thread keeps it even if its pull is dropped.)
    gc: Arc<tokio::sync::RwLock<()>>,
    /// One lock per layer being fetched, so two pulls of the same layer do it once.
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Only sha256 digests are stored (the store's names are sha256 hex).
fn check_sha256(d: &str, reference: &Reference) -> Result<(), OciError> {
    if check_digest(d).is_err() || !d.starts_with("sha256:") {
        return Err(OciError::Unsupported {
            reference: reference.to_string(),
            detail: format!("digest {d:?} is not a sha256 digest"),
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` through a synced temp file in `tmp` and a rename.
fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let mut f = tempfile::NamedTempFile::new_in(tmp).map_err(io_at(tmp))?;
    f.write_all(bytes).map_err(io_at(f.path()))?;
    f.as_file().sync_all().map_err(io_at(path))?;
    f.persist(path).map_err(|e| OciError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += md.len();
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl ImageStore {
    /// Opens (creating) the store at `root`: removes leftovers of interrupted pulls and
    /// layer directories that were never marked complete.
    pub fn open(root: impl Into<PathBuf>, config: StoreConfig) -> Result<Self, OciError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_at(&root))?;
        // Others may traverse (a runtime in a user namespace reaches layers by their path) but
        // not list which images this host has.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .map_err(io_at(&root))?;
        for d in ["tmp", "blobs/sha256", "layers", "images", "tags"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let p = e.map_err(io_at(&tmp))?.path();
            remove_any(&p).map_err(io_at(&p))?;
        }
        let layers = root.join("layers");
        for e in std::fs::read_dir(&layers).map_err(io_at(&layers))? {
            let e = e.map_err(io_at(&layers))?;
            let p = e.path();
            let name = e.file_name();
            let trusted = name.to_str().is_some_and(is_hex64) && p.join("ok").is_file();
            if !trusted {
                tracing::warn!(path = %p.display(), "removing an unfinished layer");
                remove_any(&p).map_err(io_at(&p))?;
            }
        }
        if let Some(path) = &config.docker_config {
            DockerConfig::load(path)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                config,
                gc: Arc::new(tokio::sync::RwLock::new(())),
                layer_locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn tmp(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.inner.root.join("layers").join(hex_of(diff_id))
    }

    fn image_path(&self, digest: &str) -> PathBuf {
        self.inner
            .root
            .join("images")
            .join(format!("{}.json", hex_of(digest)))
    }

    fn tag_path(&self, key: &str) -> PathBuf {
        self.inner
            .root
            .join("tags")
            .join(format!("{:x}.json", Sha256::digest(key.as_bytes())))
    }

    fn layer_trusted(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).join("ok").is_file()
    }

    fn read_record(&self, digest: &str) -> Result<Option<ImageRecord>, OciError> {
        if check_digest(digest).is_err() {
            return Ok(None);
        }
        let path = self.image_path(digest);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let rec: ImageRecord = serde_json::from_slice(&text).map_err(|e| OciError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        Ok(Some(rec))
    }

    /// A locally present image by the digest it was pinned to, without contacting any
    /// registry (for restarts). `None` unless every layer is present and complete.
    pub fn get(&self, digest: &str) -> Result<Option<ImageRootfs>, OciError> {
        let Some(rec) = self.read_record(digest)? else {
            return Ok(None);
        };
        if !rec.layers.iter().all(|l| self.layer_trusted(l)) {
            return Ok(None);
        }
        let path = self.blob_path(&rec.config);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let raw: RawImageConfig = serde_json::from_slice(&bytes).map_err(|e| OciError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        Ok(Some(ImageRootfs {
            digest: rec.digest.clone(),
            layers: rec
                .layers
                .iter()
                .map(|l| self.layer_dir(l).join("rootfs"))
                .collect(),
            config: image_config(raw.config.unwrap_or_default()),
        }))
    }

    /// Every image in the store.
    pub fn list(&self) -> Result<Vec<ImageInfo>, OciError> {
        let dir = self.inner.root.join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
            let e = e.map_err(io_at(&dir))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(rec) = self.read_record(&format!("sha256:{hex}"))? {
                out.push(ImageInfo {
                    digest: rec.digest,
                    references: rec.references,
                    layers: rec.layers,
                    size: rec.size,
                });
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    fn tag_digest(&self, r: &Reference) -> Option<String> {
        let key = r.tag_key()?;
        let text = std::fs::read(self.tag_path(&key)).ok()?;
        let rec: TagRecord = serde_json::from_slice(&text).ok()?;
        (rec.reference == key).then_some(rec.digest)
    }

    /// Remembers that `r` resolved to `digest` (tag record, and the image's references).
    fn remember(&self, r: &Reference, digest: &str) -> Result<(), OciError> {
        let tmp = self.tmp();
        // `repo:tag@digest` pulls the digest; it says nothing about where the tag is now.
        if let Some(key) = r.tag_key().filter(|_| r.digest().is_none()) {
            let rec = TagRecord {
                reference: key.clone(),
                digest: digest.to_string(),
            };
            let bytes = serde_json::to_vec(&rec).expect("serialisable");
            write_atomic(&tmp, &self.tag_path(&key), &bytes)?;
        }
        if let Some(mut rec) = self.read_record(digest)? {
            let name = r.to_string();
            if !rec.references.contains(&name) {
                rec.references.push(name);
                rec.references.sort();
                let bytes = serde_json::to_vec_pretty(&rec).expect("serialisable");
                write_atomic(&tmp, &self.image_path(digest), &bytes)?;
            }
        }
        Ok(())
    }

    /// Pulls `reference` (as `policy` says) and returns it ready to run, pinned to the
    /// digest the reference resolved to. `credentials` are for the reference's registry (the
    /// function's registry-auth secret); without them the Docker config's entry is used, if
    /// any, else the pull is anonymous. `progress` sees each layer's bytes.
    pub async fn pull(
        &self,
        reference: &Reference,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
        progress: &(dyn Fn(&Progress) + Send + Sync),
    ) -> Result<ImageRootfs, OciError> {
        let shared = Arc::new(self.inner.gc.clone().read_owned().await);
        if let Some(d) = reference.digest() {
            if let Some(img) = self.get(d)? {
                self.remember(reference, d)?;
                return Ok(img);
            }
        } else if policy != PullPolicy::Always
            && let Some(d) = self.tag_digest(reference)
            && let Some(img) = self.get(&d)?
        {
            return Ok(img);
        }
        if policy == PullPolicy::Never {
            return Err(OciError::NotFound {
                reference: reference.to_string(),
                detail: "not present locally and the pull policy is Never".into(),
            });
        }
        let docker_config;
        let creds = match credentials {
            Some(c) => Some(c),
            None => match &self.inner.config.docker_config {
                Some(path) => {
                    docker_config = DockerConfig::load(path)?;
                    docker_config.credentials_for(reference.registry())
                }
                None => None,
            },
        };
        let puller = Puller {
            store: self,
            reference,
            client: self.client(reference),
            cref: reference.to_client(),
            auth: creds.map_or(RegistryAuth::Anonymous, Credentials::to_client),
            credentials_given: creds.is_some(),
            progress,
            shared,
        };
        puller.pull().await
    }

    /// The settings the store was opened with (signature fetches use the same registries).
    pub(crate) fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn client(&self, r: &Reference) -> oci_client::Client {
        registry_client(r.registry(), &self.inner.config.insecure, Some(4))
    }

    fn layer_lock(&self, diff_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.layer_locks.lock().expect("not poisoned");
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(diff_id.to_string()).or_default().clone()
    }

    /// Removes every image whose digest is not in `keep`, and every blob, tag and layer that
    /// no kept image uses (a layer shared with a kept image stays). Waits for running pulls.
    pub async fn gc(&self, keep: &[String]) -> Result<GcReport, OciError> {
        let _excl = self.inner.gc.write().await;
        let this = self.clone();
        let keep = keep.to_vec();
        tokio::task::spawn_blocking(move || this.gc_blocking(&keep))
            .await
            .map_err(|e| OciError::Io {
                path: PathBuf::from("gc"),
                source: std::io::Error::other(e),
            })?
    }

    fn gc_blocking(&self, keep: &[String]) -> Result<GcReport, OciError> {
        let mut report = GcReport::default();
        // No pull runs (GC holds the lock exclusively): anything in tmp/ is a leftover.
        let tmp = self.tmp();
        for e in std::fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let p = e.map_err(io_at(&tmp))?.path();
            report.bytes += du(&p);
            remove_any(&p).map_err(io_at(&p))?;
        }
        let (mut blobs, mut layers, mut images) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for info in self.list()? {
            if keep.contains(&info.digest) {
                let rec = self.read_record(&info.digest)?.expect("listed");
                images.insert(hex_of(&rec.digest).to_string());
                blobs.insert(hex_of(&rec.digest).to_string());
                blobs.insert(hex_of(&rec.manifest).to_string());
                blobs.insert(hex_of(&rec.config).to_string());
                layers.extend(rec.layers.iter().map(|l| hex_of(l).to_string()));
            } else {
                let p = self.image_path(&info.digest);
                std::fs::remove_file(&p).map_err(io_at(&p))?;
                report.images.push(info.digest);
            }
        }
        let tags = self.inner.root.join("tags");
        for e in std::fs::read_dir(&tags).map_err(io_at(&tags))? {
            let p = e.map_err(io_at(&tags))?.path();
            let rec: Option<TagRecord> = std::fs::read(&p)
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok());
            if !rec.is_some_and(|r| images.contains(hex_of(&r.digest))) {
                remove_any(&p).map_err(io_at(&p))?;
                report.tags += 1;
            }
        }
        let bdir = self.inner.root.join("blobs/sha256");
        for e in std::fs::read_dir(&bdir).map_err(io_at(&bdir))? {
            let e = e.map_err(io_at(&bdir))?;
            if !e.file_name().to_str().is_some_and(|n| blobs.contains(n)) {
                let p = e.path();
                report.bytes += du(&p);
                remove_any(&p).map_err(io_at(&p))?;
                report.blobs += 1;
            }
        }
        let ldir = self.inner.root.join("layers");
        for e in std::fs::read_dir(&ldir).map_err(io_at(&ldir))? {
            let e = e.map_err(io_at(&ldir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !layers.contains(&name) {
                let p = e.path();
                report.bytes += du(&p);
                remove_any(&p).map_err(io_at(&p))?;
                report.layers.push(format!("sha256:{name}"));
            }
        }
        Ok(report)
    }
}

/// Whether a registry is reached over plain HTTP: only loopback ones (`localhost`,
/// 127.0.0.0/8, ::1) and those named in `insecure` (`host` for every port, or `host:port`).
fn image_config(c: RawContainerConfig) -> ImageConfig {
    let mut exposed_ports: Vec<String> = c
        .exposed_ports
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    exposed_ports.sort();
    ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        exposed_ports,
    }
}

/// One pull in progress.
/// What a registry's failure about `reference` means to the store.
pub(crate) fn classify_for(
    reference: &Reference,
    credentials_given: bool,
    e: OciDistributionError,
) -> OciError {
    let registry = reference.registry().to_string();
    let reference = reference.to_string();
    match classify(e) {
        Failure::Unauthorized => OciError::Unauthorized {
            registry,
            reference,
            credentials_given,
        },
        Failure::NotFound(detail) => OciError::NotFound { reference, detail },
        Failure::DigestMismatch { expected, actual } => OciError::DigestMismatch {
            what: format!("content served for {reference}"),
            expected,
            actual,
        },
        Failure::Unreachable(detail) => OciError::Unreachable { registry, detail },
        Failure::NameRefused(detail) | Failure::Registry(detail) => {
            OciError::Registry { registry, detail }
        }
    }
}

struct Puller<'a> {
    store: &'a ImageStore,
    reference: &'a Reference,
    client: oci_client::Client,
    cref: oci_client::Reference,
    auth: RegistryAuth,
    credentials_given: bool,
    progress: &'a (dyn Fn(&Progress) + Send + Sync),
    /// This pull's share of the GC lock, also held by its unpacks.
    shared: Arc<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl Puller<'_> {
    /// Maps the client's errors to the store's.
    fn err(&self, e: OciDistributionError) -> OciError {
        classify_for(self.reference, self.credentials_given, e)
    }

    async fn pull(&self) -> Result<ImageRootfs, OciError> {
        let store = self.store;
        let r = self.reference;
        if r.digest().is_none() {
            // Tags move: ask which digest this one names now; nothing more if it is here.
            let d = self
                .client
                .fetch_manifest_digest(&self.cref, &self.auth)
                .await
                .map_err(|e| self.err(e))?;
            check_sha256(&d, r)?;
            if let Some(img) = store.get(&d)? {
                store.remember(r, &d)?;
                return Ok(img);
            }
        }
        let (bytes, top) = self.manifest(&self.cref, r.digest()).await?;
        let top_json: AnyManifest = self.parse_json(&bytes, "manifest")?;
        let (manifest_digest, manifest) = if top_json.manifests.is_some()
            || matches!(
                top_json.media_type.as_deref(),
                Some(MT_OCI_INDEX | MT_DOCKER_LIST)
            ) {
            let entry = self.pick_platform(top_json.manifests.as_deref().unwrap_or(&[]))?;
            check_sha256(&entry.digest, r)?;
            let pref = r.with_digest(&entry.digest).to_client();
            let (mbytes, mdigest) = self.manifest(&pref, Some(&entry.digest)).await?;
            let m: AnyManifest = self.parse_json(&mbytes, "manifest")?;
            if m.manifests.is_some() {
                return Err(self.unsupported("an index inside an index"));
            }
            self.save_blob(&mdigest, &mbytes)?;
            (mdigest, m)
        } else {
            (top.clone(), top_json)
        };
        self.save_blob(&top, &bytes)?;
        if manifest.schema_version != 2 {
            return Err(self.unsupported(&format!(
                "schema version {} manifests are not supported (only Docker v2 schema 2 and OCI)",
                manifest.schema_version
            )));
        }
        let (Some(config_desc), Some(layers)) = (manifest.config, manifest.layers) else {
            return Err(self.unsupported("the manifest has no config or no layers"));
        };
        check_sha256(&config_desc.digest, r)?;
        // Artifacts (Helm charts, Wasm modules, signatures) share the registry protocol.
        let mt = &config_desc.media_type;
        if !(mt.is_empty() || mt == MT_OCI_CONFIG || mt == MT_DOCKER_CONFIG) {
            return Err(self.unsupported(&format!(
                "its config is {mt}, not a container image config: is it an artifact?"
            )));
        }
        if let Some(l) = layers
            .iter()
            .find(|l| !(l.media_type.is_empty() || l.media_type.contains(".tar")))
        {
            return Err(self.unsupported(&format!(
                "layer {} is {}, not a tar layer",
                l.digest, l.media_type
            )));
        }
        let config_bytes = self.config_blob(&config_desc).await?;
        let config: RawImageConfig = self.parse_json(&config_bytes, "image config")?;
        if (!config.os.is_empty() && config.os != "linux")
            || (!config.architecture.is_empty() && config.architecture != "amd64")
        {
            return Err(OciError::WrongPlatform {
                reference: r.to_string(),
                available: vec![format!("{}/{}", config.os, config.architecture)],
            });
        }
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(self.unsupported(&format!(
                "the manifest has {} layers but the config lists {} diff_ids",
                layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        self.store
            .save_blob_file(&config_desc.digest, &config_bytes)?;
        let count = layers.len();
        let mut size = 0u64;
        for (desc, diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
            check_sha256(&desc.digest, r)?;
            check_sha256(diff_id, r)?;
            size += u64::try_from(desc.size).unwrap_or(0);
        }
        // A few layers at once: downloads overlap each other's unpacking (on blocking
        // threads). After an error no new layer starts, those running finish (and stay, for
        // the next try), then the pull fails.
        let mut todo = Vec::with_capacity(count);
        // (The futures are made first: a closure inside a stream makes the pull not Send.)
        for (index, (desc, diff_id)) in layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            todo.push(self.layer(desc, diff_id, index, count));
        }
        let mut todo = todo.into_iter();
        let mut running = futures_util::stream::FuturesUnordered::new();
        running.extend(todo.by_ref().take(PARALLEL_LAYERS));
        let mut failed = None;
        while let Some(done) = running.next().await {
            match done {
                Ok(()) if failed.is_none() => running.extend(todo.next()),
                Ok(()) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let rec = ImageRecord {
            digest: top.clone(),
            manifest: manifest_digest,
            config: config_desc.digest.clone(),
            layers: config.rootfs.diff_ids.clone(),
            size,
            references: Vec::new(),
        };
        let bytes = serde_json::to_vec_pretty(&rec).expect("serialisable");
        write_atomic(&store.tmp(), &store.image_path(&top), &bytes)?;
        store.remember(r, &top)?;
        tracing::info!(image = %r, digest = %top, layers = count, "image pulled");
        store.get(&top)?.ok_or_else(|| OciError::Io {
            path: store.image_path(&top),
            source: std::io::Error::other("the image vanished right after its pull"),
        })
    }

    fn unsupported(&self, detail: &str) -> OciError {
        OciError::Unsupported {
            reference: self.reference.to_string(),
            detail: detail.to_string(),
        }
    }

    fn parse_json<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, OciError> {
        serde_json::from_slice(bytes).map_err(|e| OciError::Registry {
            registry: self.reference.registry().to_string(),
            detail: format!("invalid {what} for {}: {e}", self.reference),
        })
    }

    /// A manifest by tag or digest, checked against its digest (ours, not the registry's
    /// word for it).
    async fn manifest(
        &self,
        cref: &oci_client::Reference,
        want: Option<&str>,
    ) -> Result<(Vec<u8>, String), OciError> {
        let (bytes, served) = self
            .client
            .pull_manifest_raw(cref, &self.auth, ACCEPT)
            .await
            .map_err(|e| self.err(e))?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(self.unsupported("the manifest is larger than 8 MiB"));
        }
        let actual = sha256(&bytes);
        let expected = want.unwrap_or(&served);
        if actual != expected {
            return Err(OciError::DigestMismatch {
                what: format!("the manifest of {}", self.reference),
                expected: expected.to_string(),
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }

    fn pick_platform<'d>(&self, entries: &'d [Descriptor]) -> Result<&'d Descriptor, OciError> {
        let linux_amd64 = |e: &&Descriptor| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        };
        entries.iter().find(linux_amd64).ok_or_else(|| {
            let available = entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            OciError::WrongPlatform {
                reference: self.reference.to_string(),
                available,
            }
        })
    }

    fn save_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), OciError> {
        self.store.save_blob_file(digest, bytes)
    }

    async fn config_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        let path = self.store.blob_path(&desc.digest);
        if let Ok(b) = std::fs::read(&path)
            && sha256(&b) == desc.digest
        {
            return Ok(b);
        }
        if u64::try_from(desc.size).is_ok_and(|s| s > MAX_JSON) {
            return Err(self.unsupported("the image config is larger than 8 MiB"));
        }
        let mut out = Vec::new();
        self.client
            .pull_blob(&self.cref, desc.digest.as_str(), &mut out)
            .await
            .map_err(|e| self.err(e))?;
        let actual = sha256(&out);
        if actual != desc.digest {
            return Err(OciError::DigestMismatch {
                what: format!("the image config of {}", self.reference),
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(out)
    }

    /// Makes one layer present in one pass over its bytes: the download is unpacked into a
    /// fresh directory under `tmp/` as it arrives (hashing the compressed bytes and the tar
    /// stream on the way), and renamed into `layers/` and marked only once the whole body
    /// matched its digest and the tar its diff_id.
    async fn layer(
        &self,
        desc: &Descriptor,
        diff_id: &str,
        index: usize,
        count: usize,
    ) -> Result<(), OciError> {
        let store = self.store;
        let limits = store.inner.config.limits;
        let total = u64::try_from(desc.size).unwrap_or(0);
        let report = |state, bytes| {
            (self.progress)(&Progress {
                layer: desc.digest.clone(),
                index,
                count,
                state,
                bytes,
                total,
            })
        };
        // Shared with the blocking threads below: they keep both locks until they end, even
        // if this pull is dropped.
        let held = Arc::new(store.layer_lock(diff_id).lock_owned().await);
        if store.layer_trusted(diff_id) {
            report(LayerState::Present, total);
            return Ok(());
        }
        let too_large = || OciError::LayerTooLarge {
            digest: desc.digest.clone(),
            which: "compressed",
            limit: limits.max_compressed,
        };
        if total > limits.max_compressed {
            return Err(too_large());
        }
        report(LayerState::Downloading, 0);
        // `Range: bytes=0-` gets the whole blob without oci-client's own digest check: every
        // byte is hashed below anyway, and SHA-256 is already most of a pull's CPU time (the
        // body and the tar stream each need a pass). A registry that ignores the range answers
        // 200 and the client checks as well.
        let response = self
            .client
            .pull_blob_stream_partial(&self.cref, desc.digest.as_str(), 0, None)
            .await
            .map_err(|e| self.err(e))?;
        let mut stream = match response {
            BlobResponse::Full(s) | BlobResponse::Partial(s) => s,
        };
        // Every chunk goes to two blocking threads: one hashes the body, the other unpacks it
        // (hashing the tar stream); each holds both locks until it ends, even if this pull is
        // dropped.
        let locks = || (held.clone(), self.shared.clone());
        let (hash_tx, hash_rx) = tokio::sync::mpsc::channel(BODY_CHUNKS);
        let hashed = {
            let locks = locks();
            tokio::task::spawn_blocking(move || {
                let _locks = locks;
                layer::digest_of(hash_rx)
            })
        };
        let (unpack_tx, unpack_rx) = tokio::sync::mpsc::channel(BODY_CHUNKS);
        let mut unpack_tx = Some(unpack_tx);
        let tmp = store.tmp();
        let unpacked = {
            let (tmp, digest, diff) = (tmp.clone(), desc.digest.clone(), diff_id.to_string());
            let locks = locks();
            tokio::task::spawn_blocking(move || {
                let _locks = locks;
                let u = layer::Unpack {
                    digest: &digest,
                    diff_id: &diff,
                    max_unpacked: limits.max_unpacked,
                    max_entries: limits.max_entries,
                };
                unpack_layer(&tmp, layer::Body::new(unpack_rx), &u)
            })
        };
        let mut got = 0u64;
        let mut last_report = 0u64;
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(OciError::Unreachable {
                        registry: self.reference.registry().to_string(),
                        detail: format!("while downloading layer {}: {}", desc.digest, chain(&e)),
                    });
                    break;
                }
            };
            got += chunk.len() as u64;
            if got > limits.max_compressed {
                failed = Some(too_large());
                break;
            }
            if let Some(tx) = &unpack_tx
                && tx.send(chunk.clone()).await.is_err()
            {
                // The unpack failed already. The rest is still hashed: a blob altered on the
                // way fails as a digest mismatch (what it is), not as whatever its altered
                // bytes made the unpack trip on.
                unpack_tx = None;
            }
            if hash_tx.send(chunk).await.is_err() {
                break; // The hashing thread panicked: its join says so.
            }
            if got - last_report >= 1 << 20 {
                last_report = got;
                report(LayerState::Downloading, got);
            }
        }
        // The end of the body (or, after an error, a truncated one the unpack fails on).
        drop((hash_tx, unpack_tx));
        if failed.is_none() {
            report(LayerState::Unpacking, got);
        }
        let joined = |e: tokio::task::JoinError| OciError::Io {
            path: store.layer_dir(diff_id),
            source: std::io::Error::other(e),
        };
        let actual = hashed.await.map_err(joined)?;
        let unpacked = unpacked.await.map_err(joined)?;
        let mismatch = (actual != desc.digest).then(|| OciError::DigestMismatch {
            what: format!("layer {} of {}", desc.digest, self.reference),
            expected: desc.digest.clone(),
            actual,
        });
        let failed = match (failed, mismatch) {
            // The client's own check (a registry that ignored the range) fails after the last
            // byte: the mismatch with the manifest's digest says more.
            (Some(_), Some(m)) if got == total => Some(m),
            (Some(e), _) | (None, Some(e)) => Some(e),
            (None, None) => None,
        };
        let dest = store.layer_dir(diff_id);
        let digest = desc.digest.clone();
        let locks = locks();
        tokio::task::spawn_blocking(move || {
            let _locks = locks;
            match failed {
                // Whatever was unpacked is removed here, off the async threads, before the
                // pull returns.
                Some(e) => Err(e),
                None => install_layer(&tmp, unpacked?, &dest, &digest),
            }
        })
        .await
        .map_err(joined)??;
        report(LayerState::Done, got);
        Ok(())
    }
}

impl ImageStore {
    fn save_blob_file(&self, digest: &str, bytes: &[u8]) -> Result<(), OciError> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(());
        }
        write_atomic(&self.tmp(), &path, bytes)
    }
}

/// Unpacks `body` into a fresh directory under `tmp`, checking the tar stream against the
/// diff_id; on failure the directory is removed (after a crash, by the next open, as all of
/// `tmp/`).
fn unpack_layer(
    tmp: &Path,
    mut body: layer::Body,
    u: &layer::Unpack<'_>,
) -> Result<tempfile::TempDir, OciError> {
    let work = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(tmp)
        .map_err(io_at(tmp))?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).map_err(io_at(&rootfs))?;
    std::fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_at(&rootfs))?;
    layer::unpack(u, &mut body, &rootfs)?;
    Ok(work)
}

/// Moves a verified layer directory to `dest`: synced first, renamed, then `dest/ok` written
/// last, so a crash at any point leaves a directory the next open removes.
fn install_layer(
    tmp: &Path,
    work: tempfile::TempDir,
    dest: &Path,
    digest: &str,
) -> Result<(), OciError> {
    // One syncfs for the whole layer, not an fsync per file (as containerd's
    // `image_pull_with_sync_fs`): everything unpacked is on disk before the layer can be marked
    // complete, so not even a power loss leaves a trusted layer with holes. (A kill -9 alone
    // would need no sync: the page cache outlives the process.)
    let dir = std::fs::File::open(work.path()).map_err(io_at(work.path()))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_at(work.path())(e.into()))?;
    if dest.join("ok").is_file() {
        // Made meanwhile by another pull (the layer lock makes that rare): keep that one, in
        // use perhaps, and drop this copy.
        return Ok(());
    }
    remove_any(dest).map_err(io_at(dest))?;
    let work = work.keep();
    std::fs::rename(&work, dest).map_err(io_at(dest))?;
    write_atomic(tmp, &dest.join("ok"), format!("{digest}\n").as_bytes())?;
    if let Some(parent) = dest.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_at(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server awaits pulls in spawned tasks.
    #[test]
    fn pull_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), StoreConfig::default()).unwrap();
        let r = Reference::parse("127.0.0.1:1/x:1").unwrap();
        let fut = store.pull(&r, PullPolicy::Never, None, &|_: &Progress| {});
        send(&fut);
        let gc = store.gc(&[]);
        send(&gc);
    }

    #[test]
    fn default_pull_policy_is_kubernetes() {
        let p = |s: &str| PullPolicy::default_for(&Reference::parse(s).unwrap());
        assert_eq!(p("busybox"), PullPolicy::Always);
        assert_eq!(p("busybox:latest"), PullPolicy::Always);
        assert_eq!(p("busybox:1.36"), PullPolicy::IfNotPresent);
        let d = "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582";
        assert_eq!(p(&format!("busybox@{d}")), PullPolicy::IfNotPresent);
        assert_eq!(p(&format!("busybox:latest@{d}")), PullPolicy::IfNotPresent);
    }
}
