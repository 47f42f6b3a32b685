//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/`), as `skopeo`, `umoci`
//! and registries' tools read them, and reproducible layers to put in them: what
//! `fjord build --image` writes and `fjord push` sends.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{OciError, io_at};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation skopeo's and umoci's `oci:DIR:NAME` look an image up by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

/// Layer media types as the OCI spec names them (a Docker manifest's layers are the same
/// bytes under another name).
pub fn oci_layer_media_type(media_type: &str) -> Option<&'static str> {
    match media_type {
        MT_OCI_LAYER_GZIP
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(MT_OCI_LAYER_GZIP),
        MT_OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Some(MT_OCI_LAYER_ZSTD)
        }
        MT_OCI_LAYER | "application/vnd.docker.image.rootfs.diff.tar" => Some(MT_OCI_LAYER),
        _ => None,
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens the layout at `root`, creating it (and `oci-layout`) when missing.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, OciError> {
        let root = root.into();
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io_at(&marker))?;
        }
        Ok(Self { root })
    }

    /// Opens an existing layout.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, OciError> {
        let root = root.into();
        let marker = root.join("oci-layout");
        std::fs::metadata(&marker).map_err(io_at(&marker))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// Whether the blob is present and hashes to its name (a half-written or damaged one is
    /// not).
    pub fn has_blob(&self, digest: &str) -> bool {
        std::fs::read(self.blob_path(digest)).is_ok_and(|b| sha256_hex(&b) == digest)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(OciError::DigestMismatch {
                what: path.display().to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` (through a temp file and a rename) and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, OciError> {
        let digest = sha256_hex(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            let dir = self.root.join("blobs/sha256");
            let mut f = tempfile::NamedTempFile::new_in(&dir).map_err(io_at(&dir))?;
            f.write_all(bytes).map_err(io_at(f.path()))?;
            // Readable as other tools' layouts are (the temp file is 0600).
            std::fs::set_permissions(
                f.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .map_err(io_at(f.path()))?;
            f.persist(&path).map_err(|e| OciError::Io {
                path: path.clone(),
                source: e.error,
            })?;
        }
        Ok(digest)
    }

    /// Makes `manifest` the layout's only image, named `name` (what `oci:DIR:NAME` selects).
    pub fn set_image(&self, manifest: &Descriptor, name: &str) -> Result<(), OciError> {
        let mut d = manifest.clone();
        d.annotations = Some([(REF_NAME.to_string(), name.to_string())].into());
        let index = Index {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests: vec![d],
        };
        let path = self.root.join("index.json");
        let tmp = self.root.join("index.json.tmp");
        let bytes = serde_json::to_vec(&index).expect("serialisable");
        std::fs::write(&tmp, bytes).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
        Ok(())
    }

    /// The layout's image: its manifest's descriptor and the manifest.
    pub fn image(&self) -> Result<(Descriptor, Manifest), OciError> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        let bad = |m: String| OciError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, m),
        };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let d = match index.manifests.as_slice() {
            [d] => d.clone(),
            other => return Err(bad(format!("{} images, expected one", other.len()))),
        };
        let mbytes = self.read_blob(&d.digest)?;
        let m: Manifest = serde_json::from_slice(&mbytes).map_err(|e| bad(e.to_string()))?;
        Ok((d, m))
    }

    /// Removes every blob the layout's image does not use (older builds' layers).
    pub fn prune(&self) -> Result<usize, OciError> {
        let (d, m) = self.image()?;
        let mut keep: BTreeSet<String> = m.layers.iter().map(|l| l.digest.clone()).collect();
        keep.insert(m.config.digest);
        keep.insert(d.digest);
        let dir = self.root.join("blobs/sha256");
        let mut removed = 0;
        for e in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
            let e = e.map_err(io_at(&dir))?;
            let name = format!("sha256:{}", e.file_name().to_string_lossy());
            if !keep.contains(&name) {
                std::fs::remove_file(e.path()).map_err(io_at(e.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// One file of a layer being built.
enum Entry {
    Dir,
    File { source: PathBuf, exec: bool },
    Bytes { bytes: Vec<u8>, exec: bool },
    Symlink(PathBuf),
}

/// A reproducible layer: entries sorted by path, owned by root, mtime 0, modes 0755 (dirs
/// and executables) or 0644, parent directories implied; gzip at a fixed level. The same
/// files give the same diff_id and digest on any machine.
#[derive(Default)]
pub struct LayerBuilder {
    entries: std::collections::BTreeMap<PathBuf, Entry>,
}

/// A built layer: the compressed blob and its identities.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub gzip: Vec<u8>,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// sha256 of `gzip` (the manifest's layer digest).
    pub digest: String,
}

impl LayerBuilder {
    fn add_parents(&mut self, path: &Path) {
        let mut p = path.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            self.entries.entry(d.to_path_buf()).or_insert(Entry::Dir);
            p = d.parent();
        }
    }

    /// Adds a file from disk at `path` (relative, e.g. `fjord/bin/fjord`).
    pub fn file(&mut self, path: impl Into<PathBuf>, source: &Path, exec: bool) {
        let path = path.into();
        self.add_parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                source: source.to_path_buf(),
                exec,
            },
        );
    }

    pub fn bytes(&mut self, path: impl Into<PathBuf>, bytes: Vec<u8>, exec: bool) {
        let path = path.into();
        self.add_parents(&path);
        self.entries.insert(path, Entry::Bytes { bytes, exec });
    }

    pub fn dir(&mut self, path: impl Into<PathBuf>) {
        let path = path.into();
        self.add_parents(&path);
        self.entries.insert(path, Entry::Dir);
    }

    /// Adds the tree under `source` at `prefix`: directories, regular files (their exec bit
    /// kept) and symlinks; anything else (sockets, fifos, devices) is skipped.
    pub fn tree(&mut self, prefix: &Path, source: &Path) -> Result<(), OciError> {
        self.dir(prefix);
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = source.join(&rel);
            for e in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
                let e = e.map_err(io_at(&dir))?;
                let r = rel.join(e.file_name());
                let full = e.path();
                let meta = std::fs::symlink_metadata(&full).map_err(io_at(&full))?;
                let at = prefix.join(&r);
                if meta.is_dir() {
                    self.entries.insert(at, Entry::Dir);
                    stack.push(r);
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&full).map_err(io_at(&full))?;
                    self.entries.insert(at, Entry::Symlink(target));
                } else if meta.is_file() {
                    use std::os::unix::fs::PermissionsExt as _;
                    let exec = meta.permissions().mode() & 0o111 != 0;
                    self.entries.insert(at, Entry::File { source: full, exec });
                }
            }
        }
        Ok(())
    }

    /// Writes the tar, then gzips it.
    pub fn build(self) -> Result<BuiltLayer, OciError> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| OciError::Io { path: p, source: e }
        };
        for (path, entry) in self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match entry {
                Entry::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_cksum();
                    tar.append_data(&mut h, &path, std::io::empty())
                        .map_err(io(&path))?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, &path, &target).map_err(io(&path))?;
                }
                Entry::File { source, exec } => {
                    let f = std::fs::File::open(&source).map_err(io_at(&source))?;
                    let len = f.metadata().map_err(io_at(&source))?.len();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(if exec { 0o755 } else { 0o644 });
                    h.set_size(len);
                    h.set_cksum();
                    tar.append_data(&mut h, &path, f).map_err(io(&source))?;
                }
                Entry::Bytes { bytes, exec } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(if exec { 0o755 } else { 0o644 });
                    h.set_size(bytes.len() as u64);
                    h.set_cksum();
                    tar.append_data(&mut h, &path, bytes.as_slice())
                        .map_err(io(&path))?;
                }
            }
        }
        let raw = tar.into_inner().map_err(io(Path::new("layer")))?;
        let diff_id = sha256_hex(&raw);
        // No file name or mtime in the gzip header: the same tar gives the same blob.
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&raw).map_err(io(Path::new("layer")))?;
        let gzip = gz.finish().map_err(io(Path::new("layer")))?;
        let digest = sha256_hex(&gzip);
        Ok(BuiltLayer {
            gzip,
            diff_id,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_reproducible_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/x"), "x").unwrap();
        std::fs::write(dir.path().join("a"), "a").unwrap();
        let build = || {
            let mut l = LayerBuilder::default();
            l.tree(Path::new("home/app"), dir.path()).unwrap();
            l.bytes("etc/motd", b"hi".to_vec(), false);
            l.build().unwrap()
        };
        let one = build();
        // Another mtime changes nothing.
        std::fs::write(dir.path().join("a"), "a").unwrap();
        let two = build();
        assert_eq!(one.digest, two.digest);
        assert_eq!(one.diff_id, two.diff_id);
        let mut names = Vec::new();
        let gz = flate2::read::GzDecoder::new(one.gzip.as_slice());
        for e in tar::Archive::new(gz).entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            names.push(e.path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                "etc",
                "etc/motd",
                "home",
                "home/app",
                "home/app/a",
                "home/app/b",
                "home/app/b/c",
                "home/app/b/c/x"
            ]
        );
    }

    #[test]
    fn layout_round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let old = l.put_blob(b"old").unwrap();
        let cfg = l.put_blob(b"{}").unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: MT_OCI_CONFIG.into(),
                digest: cfg.clone(),
                size: 2,
                annotations: None,
            },
            layers: vec![],
        };
        let mb = serde_json::to_vec(&m).unwrap();
        let md = l.put_blob(&mb).unwrap();
        let desc = Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: md.clone(),
            size: mb.len() as u64,
            annotations: None,
        };
        l.set_image(&desc, "latest").unwrap();
        let (d, got) = l.image().unwrap();
        assert_eq!(d.digest, md);
        assert_eq!(got, m);
        assert_eq!(l.prune().unwrap(), 1);
        assert!(!l.has_blob(&old));
        assert!(l.has_blob(&cfg));
    }
}
