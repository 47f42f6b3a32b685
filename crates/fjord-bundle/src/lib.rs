//! Bundles: what `fjord build` produces and the process runtime runs, instead of a container
//! image. A bundle is a directory tree — the template's runtime shim, the user's handler in
//! `function/`, installed dependencies and `manifest.json` — packed as a deterministic
//! tar.gz (sorted entries, zero times and owners) and addressed by the sha256 of the packed
//! bytes, so unchanged inputs give the same digest and uploads can be skipped.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[cfg(test)]
mod escape_tests;
mod extract;
#[cfg(test)]
mod oci_layer_tests;
pub mod raw;

pub use extract::{Existing, Extractor, Symlinks};

/// The file at a bundle's root that says how to run it.
pub const MANIFEST: &str = "manifest.json";
/// Unpacking stops beyond this many bytes of content (a bundle is code, not data).
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;
/// ... or this many entries.
pub const MAX_ENTRIES: u64 = 500_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    /// The archive holds an entry that cannot be unpacked safely (a bad request, not a failure).
    #[error("entry {entry} {reason}")]
    Entry { entry: String, reason: String },
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lower-case hex digits")]
    Digest(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to run a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The function's name when it was built.
    pub name: String,
    /// The template it was built from (`python3-http`, `node`, ...).
    pub language: String,
    /// The command to run, relative to the bundle root (its working directory).
    pub fprocess: String,
    /// `http` or `fork`.
    pub mode: String,
    /// Default environment, under the function's own `envVars`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The fjord version that built it.
    #[serde(default)]
    pub fjord_version: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`, which must be a regular file (a symlink is not followed).
    pub fn read_dir(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        let fd = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_at(&path)(e.into()))?;
        Self::read_from(File::from(fd), &path)
    }

    fn read_from(f: File, path: &Path) -> Result<Self, BundleError> {
        if !f.metadata().map_err(io_at(path))?.is_file() {
            return Err(BundleError::Invalid(format!(
                "{MANIFEST} is not a regular file"
            )));
        }
        let mut text = String::new();
        f.take(1 << 20)
            .read_to_string(&mut text)
            .map_err(io_at(path))?;
        serde_json::from_str(&text)
            .map_err(|e| BundleError::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn write_dir(&self, dir: &Path) -> Result<(), BundleError> {
        let path = dir.join(MANIFEST);
        let text =
            serde_json::to_string_pretty(self).map_err(|e| BundleError::Invalid(e.to_string()))?;
        fs::write(&path, text + "\n").map_err(io_at(&path))
    }
}

/// `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, BundleError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| BundleError::Digest(s.chars().take(80).collect()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(BundleError::Digest(s.chars().take(80).collect()));
        }
        Ok(Self(s.to_string()))
    }

    fn from_hasher(h: Sha256) -> Self {
        let bytes = h.finalize();
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, safe as a file name.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = BundleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Incremental sha256, for checking uploads as they stream in.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.0)
    }
}

/// The digest of a packed bundle file.
pub fn digest_file(path: &Path) -> Result<Digest, BundleError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(h))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BundleError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let ft = e.file_type().map_err(io_at(&path))?;
        out.push(rel);
        if ft.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// Packs `dir` (which must hold a `manifest.json`) into `out` and returns its digest.
/// The same tree always packs to the same bytes.
pub fn pack(dir: &Path, out: &Path) -> Result<Digest, BundleError> {
    Manifest::read_dir(dir)?;
    let mut paths = Vec::new();
    walk(dir, dir, &mut paths)?;
    let file = File::create(out).map_err(io_at(out))?;
    let hashing = HashingWriter::new(io::BufWriter::new(file));
    let gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for rel in &paths {
        let full = dir.join(rel);
        let meta = fs::symlink_metadata(&full).map_err(io_at(&full))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let exec = meta.permissions().mode() & 0o111 != 0;
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_cksum();
            tar.append_data(&mut header, rel, io::empty())
                .map_err(io_at(&full))?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(io_at(&full))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, rel, &target)
                .map_err(io_at(&full))?;
        } else if meta.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if exec { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            header.set_cksum();
            let f = File::open(&full).map_err(io_at(&full))?;
            tar.append_data(&mut header, rel, f).map_err(io_at(&full))?;
        }
        // Sockets, fifos and devices have no place in a bundle: skipped.
    }
    let gz = tar.into_inner().map_err(io_at(out))?;
    let hashing = gz.finish().map_err(io_at(out))?;
    let (mut w, digest, _) = hashing.finish();
    w.flush().map_err(io_at(out))?;
    Ok(digest)
}

/// Reads the manifest of a packed bundle without unpacking it, and checks the whole archive
/// the way [`Extractor::check`] does (readable tar.gz, names, types, links, limits), so that
/// an upload that could not be unpacked is refused at once.
pub fn read_manifest(archive: &Path) -> Result<Manifest, BundleError> {
    let f = File::open(archive).map_err(io_at(archive))?;
    let mut manifest = None;
    Extractor::default().check(
        flate2::read::GzDecoder::new(io::BufReader::new(f)),
        |comps, content| {
            if comps != [std::ffi::OsStr::new(MANIFEST)] {
                return Ok(());
            }
            let mut text = String::new();
            content
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(extract::bad_archive)?;
            manifest = Some(serde_json::from_str::<Manifest>(&text).map_err(|e| {
                BundleError::Invalid(format!("{MANIFEST} in the bundle is invalid: {e}"))
            })?);
            Ok(())
        },
    )?;
    manifest.ok_or_else(|| {
        BundleError::Invalid(format!("not a fjord bundle: no {MANIFEST} at its root"))
    })
}

/// Unpacks a bundle into `dest` (which must not exist yet) with [`Extractor::default`]; see
/// [`Extractor::unpack`]. With `owner = (uid, gid)` the tree is owned by `uid` and readable
/// only by that group: directories 0750, files 0640 (0750 when executable), so one function
/// cannot read another's code.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Manifest, BundleError> {
    Extractor::default().owner(owner).unpack(archive, dest)
}

impl Extractor {
    /// Unpacks a bundle (tar.gz) into `dest`, which must not exist yet. Extracts into a
    /// private staging directory next to it (`.unpack-*/`, root-only: not even the function
    /// can reach it while it is being written), gives it its final owner and modes, checks
    /// that `manifest.json` is a regular file at its root, and only then renames it into
    /// place, so a half-unpacked or refused bundle is never seen at `dest`.
    pub fn unpack(&self, archive: &Path, dest: &Path) -> Result<Manifest, BundleError> {
        let parent = dest
            .parent()
            .ok_or_else(|| BundleError::Invalid(format!("{} has no parent", dest.display())))?;
        fs::create_dir_all(parent).map_err(io_at(parent))?;
        // Removed with everything in it when dropped (on every error).
        let staging = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(parent)
            .map_err(io_at(parent))?;
        let tree = staging.path().join("tree");
        fs::create_dir(&tree).map_err(io_at(&tree))?;
        if let Some((uid, gid)) = self.extract_as_creds() {
            std::os::unix::fs::chown(&tree, Some(uid), Some(gid)).map_err(io_at(&tree))?;
        }
        let root = rustix::fs::open(
            &tree,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_at(&tree)(e.into()))?;
        let f = File::open(archive).map_err(io_at(archive))?;
        self.extract(
            flate2::read::GzDecoder::new(io::BufReader::new(f)),
            root.as_fd(),
        )?;
        self.finish(root.as_fd())?;
        let manifest = match rustix::fs::openat2(
            &root,
            MANIFEST,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
            rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(fd) => Manifest::read_from(File::from(fd), Path::new(MANIFEST))?,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => {
                return Err(BundleError::Invalid(format!(
                    "not a fjord bundle: no {MANIFEST} (a regular file) at its root"
                )));
            }
            Err(e) => return Err(io_at(&tree)(e.into())),
        };
        match fs::rename(&tree, dest) {
            Ok(()) => {}
            // Someone unpacked the same bundle first: theirs is as good as ours.
            Err(_) if dest.join(MANIFEST).exists() => {}
            Err(e) => return Err(io_at(dest)(e)),
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) {
        fs::create_dir_all(dir.join("function/sub")).unwrap();
        fs::write(dir.join("index.py"), "print('hi')\n").unwrap();
        fs::write(dir.join("function/handler.py"), "def handle(e, c): pass\n").unwrap();
        fs::write(dir.join("function/sub/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            dir.join("function/sub/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("../index.py", dir.join("function/link.py")).unwrap();
        Manifest {
            name: "f".into(),
            language: "python3-http".into(),
            fprocess: "python3 index.py".into(),
            mode: "http".into(),
            env: BTreeMap::new(),
            fjord_version: "0.1.0".into(),
        }
        .write_dir(dir)
        .unwrap();
    }

    #[test]
    fn pack_is_deterministic_and_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        sample(&a);
        sample(&b);
        // Different mtimes must not change the digest.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(b.join("index.py"), "print('hi')\n").unwrap();
        let da = pack(&a, &t.path().join("a.tgz")).unwrap();
        let db = pack(&b, &t.path().join("b.tgz")).unwrap();
        assert_eq!(da, db);
        assert_eq!(digest_file(&t.path().join("a.tgz")).unwrap(), da);
        fs::write(b.join("index.py"), "print('changed')\n").unwrap();
        assert_ne!(pack(&b, &t.path().join("b2.tgz")).unwrap(), da);

        assert_eq!(
            read_manifest(&t.path().join("a.tgz")).unwrap().language,
            "python3-http"
        );
        let dest = t.path().join("out/x");
        let m = unpack(&t.path().join("a.tgz"), &dest, None).unwrap();
        assert_eq!(m.fprocess, "python3 index.py");
        assert_eq!(
            fs::read_to_string(dest.join("function/handler.py")).unwrap(),
            "def handle(e, c): pass\n"
        );
        let mode = fs::metadata(dest.join("function/sub/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dest.join("function/link.py")).unwrap(),
            Path::new("../index.py")
        );
    }

    #[test]
    fn owner_mode_is_private_to_the_group() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        sample(&a);
        pack(&a, &t.path().join("a.tgz")).unwrap();
        let dest = t.path().join("out");
        unpack(&t.path().join("a.tgz"), &dest, Some((0, 0))).unwrap();
        let m = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m("index.py"), 0o640);
        assert_eq!(m("function/sub/run.sh"), 0o750);
        assert_eq!(m("function"), 0o750);
        assert_eq!(m(""), 0o750);
    }

    #[test]
    fn hostile_archives_are_refused() {
        let t = tempfile::tempdir().unwrap();
        // A symlink pointing out of the bundle.
        let a = t.path().join("a");
        sample(&a);
        std::os::unix::fs::symlink("../../etc/passwd", a.join("function/evil")).unwrap();
        pack(&a, &t.path().join("a.tgz")).unwrap();
        let e = unpack(&t.path().join("a.tgz"), &t.path().join("o1"), None).unwrap_err();
        assert!(e.to_string().contains("outside the bundle"), "{e}");
        assert!(!t.path().join("o1").exists());
        // No manifest.
        let b = t.path().join("b");
        fs::create_dir_all(&b).unwrap();
        assert!(pack(&b, &t.path().join("b.tgz")).is_err());
        // Garbage.
        fs::write(t.path().join("g.tgz"), b"not a tarball").unwrap();
        assert!(unpack(&t.path().join("g.tgz"), &t.path().join("o2"), None).is_err());
    }

    #[test]
    fn digests_parse() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok).unwrap().hex(), "a".repeat(64));
        for bad in [
            "",
            "sha256:",
            "md5:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/..", "a".repeat(61)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
