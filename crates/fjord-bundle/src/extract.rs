//! Unpacking a tar archive so that nothing outside the target directory is ever created,
//! written or followed, whatever the archive holds.
//!
//! Every path is resolved by the kernel beneath an open directory: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so a parent that is a symlink (made by an earlier
//! entry: `d → .`, `up → ../../..`) fails the open instead of being followed, and `..` or an
//! absolute name cannot leave the root. Files are created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, symlinks with `symlinkat` (which never follows), hard links with `linkat`
//! between directories opened the same way and only to regular files. Devices, fifos and
//! sparse files are refused. Modes are normalised (no setuid, setgid, sticky or world bits);
//! ownership is set by a last pass ([`Extractor::finish`]).
//!
//! Image layers use the same extractor with [`Extractor::oci_layer`]: [`Existing::Replace`],
//! [`Symlinks::Any`] (absolute targets stored, never followed), OCI whiteouts turned into
//! overlayfs ones, and the tar's own modes (without setuid/setgid) and numeric owners.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::hash::{BuildHasher, Hasher as _, RandomState};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::{BundleError, MAX_ENTRIES, MAX_UNPACKED_BYTES};

/// How every path is resolved: beneath the directory it starts from, through no symlink (nor
/// /proc magic link) and no mount point.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Which symlink targets an archive may hold. Symlinks are never followed while extracting,
/// whatever the policy: it is about what the tree is safe for afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Relative targets with `..` only at their start, no more of them than the link is deep
    /// (`node_modules/.bin/x → ../x/cli.js`). Then every symlink of the tree resolves inside
    /// it, whoever follows it later and through whichever other links: `..` only ever climbs
    /// real directories. Absolute targets and `a/../..` are refused. What bundles get.
    Contained,
    /// Any target, absolute ones included, as image layers have (`/bin → usr/bin`): only
    /// for trees that are later used from inside a chroot or mount namespace.
    Any,
}

/// What an entry whose name an earlier entry already made does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// An error, except a directory repeated. What bundles get: `fjord build` never writes a
    /// name twice, so a repeat is someone trying to swap a directory for a link.
    Refuse,
    /// A file, symlink or hard link replaces an earlier non-directory of the same name, as in
    /// stacked image layers; a directory in the way is still an error.
    Replace,
}

/// Unpacks tar archives beneath a directory. `Extractor::default()` is what bundles get.
#[derive(Debug, Clone)]
pub struct Extractor {
    owner: Option<(u32, u32)>,
    extract_as: Option<(u32, u32)>,
    symlinks: Symlinks,
    existing: Existing,
    max_bytes: u64,
    max_entries: u64,
    oci_layer: bool,
}

impl Default for Extractor {
    fn default() -> Self {
        Self {
            owner: None,
            extract_as: None,
            symlinks: Symlinks::Contained,
            existing: Existing::Refuse,
            max_bytes: MAX_UNPACKED_BYTES,
            max_entries: MAX_ENTRIES,
            oci_layer: false,
        }
    }
}

/// Why extraction failed: the archive's fault (an [`BundleError::Entry`]) or the host's.
enum Fail {
    Entry(String),
    Io(io::Error),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

/// Errors a hostile archive cannot cause by itself: the disk, limits, our own permissions,
/// a kernel without openat2 (before Linux 5.6).
fn host_errno(e: Errno) -> bool {
    [
        Errno::NOSYS,
        Errno::NOSPC,
        Errno::DQUOT,
        Errno::IO,
        Errno::ROFS,
        Errno::NOMEM,
        Errno::MFILE,
        Errno::NFILE,
        Errno::ACCESS,
        Errno::PERM,
    ]
    .contains(&e)
}

fn classify(e: Errno, what: impl FnOnce() -> String) -> Fail {
    if host_errno(e) {
        Fail::Io(io::Error::from(e))
    } else {
        Fail::Entry(format!("{}: {}", what(), io::Error::from(e)))
    }
}

/// An entry name as components, `.` and empty ones dropped; `..` and absolute names refused.
pub(crate) fn components(name: &Path) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) if n.as_bytes().contains(&0) => {
                return Err("has a NUL byte in its name".into());
            }
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("is an absolute path".into());
            }
        }
    }
    Ok(out)
}

/// How an entry is shown in errors: quoted and escaped, at most 200 characters.
pub(crate) fn show(p: &Path) -> String {
    let s = p.to_string_lossy();
    let short: String = s.chars().take(200).collect();
    if short.len() < s.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

fn join(comps: &[&OsStr]) -> PathBuf {
    comps.iter().collect()
}

/// Checks a symlink target under [`Symlinks::Contained`]; `depth` is how many directories
/// deep the link is (0 at the root).
pub(crate) fn check_link_target(
    policy: Symlinks,
    depth: usize,
    target: &Path,
) -> Result<(), String> {
    let bytes = target.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("is a symlink with an empty target".into());
    }
    if bytes.contains(&0) {
        return Err("is a symlink whose target has a NUL byte".into());
    }
    if policy == Symlinks::Any {
        return Ok(());
    }
    let (mut ups, mut named) = (0usize, false);
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "is a symlink to the absolute path {}: bundles may hold only relative links",
                    show(target)
                ));
            }
            Component::CurDir => {}
            Component::ParentDir if named => {
                return Err(format!(
                    "is a symlink to {}, with `..` after a name: only leading `../` is allowed (a name may itself be a link)",
                    show(target)
                ));
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
        }
    }
    if ups > depth {
        return Err(format!(
            "is a symlink to {}, which points outside the bundle",
            show(target)
        ));
    }
    Ok(())
}

/// The kinds of entries an archive may hold, and what `check` remembers of each name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a file",
            Kind::Symlink => "a symlink",
        }
    }

    fn of(ft: FileType) -> &'static str {
        match ft {
            FileType::Directory => "a directory",
            FileType::RegularFile => "a file",
            FileType::Symlink => "a symlink",
            _ => "a special file",
        }
    }
}

fn refused_type(t: tar::EntryType) -> String {
    let what = match t {
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Fifo => "a fifo",
        tar::EntryType::GNUSparse => "a sparse file",
        _ => "an entry of an unsupported type",
    };
    format!("is {what}: only files, directories, symlinks and hard links are allowed")
}

/// The entries of an archive, as far as the checks need them.
enum Item<'a> {
    Skip,
    Dir,
    File {
        size: u64,
    },
    Symlink(PathBuf),
    HardLink(Vec<&'a OsStr>, PathBuf),
    /// OCI `.wh.NAME` (the name without its prefix is the last component).
    Whiteout,
    /// OCI `.wh..wh..opq`: the parent directory hides what lower layers have in it.
    Opaque,
}

/// OCI whiteout names (image-spec layer.md).
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Mode bits kept from a layer's tar headers: permissions and sticky, never setuid/setgid.
const LAYER_MODE_MASK: u32 = 0o1777;

impl Extractor {
    /// After extraction, chown everything to `uid:gid` (fjord: root and the function's group)
    /// and make it readable by that group only: directories 0750, files 0640 or 0750. Without
    /// an owner: 0755, 0644 or 0755, owned by whoever extracted.
    pub fn owner(mut self, owner: Option<(u32, u32)>) -> Self {
        self.owner = owner;
        self
    }

    /// Extract in a thread that has dropped to effective `uid:gid` with no supplementary
    /// groups and no capabilities, so that even a bug here could write only where that user
    /// may (needs root; the target directory must belong to `uid`). Real and saved uid stay
    /// root, so processes of `uid` cannot signal or trace that thread.
    pub fn extract_as(mut self, creds: Option<(u32, u32)>) -> Self {
        self.extract_as = creds;
        self
    }

    pub fn symlinks(mut self, policy: Symlinks) -> Self {
        self.symlinks = policy;
        self
    }

    pub fn existing(mut self, policy: Existing) -> Self {
        self.existing = policy;
        self
    }

    /// At most `bytes` of file content and `entries` entries (defaults: [`MAX_UNPACKED_BYTES`],
    /// [`MAX_ENTRIES`]).
    pub fn limits(mut self, bytes: u64, entries: u64) -> Self {
        self.max_bytes = bytes;
        self.max_entries = entries;
        self
    }

    /// Extract an OCI image layer for overlayfs: `.wh.NAME` becomes a 0/0 character device
    /// NAME, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory (both need
    /// root); modes come from the tar without setuid/setgid, owners are the tar's numeric
    /// uid/gid, directories the archive does not list are made 0755. Implies
    /// [`Symlinks::Any`] and [`Existing::Replace`]; [`Extractor::finish`] is not needed.
    pub fn oci_layer(mut self, on: bool) -> Self {
        self.oci_layer = on;
        if on {
            self.symlinks = Symlinks::Any;
            self.existing = Existing::Replace;
        }
        self
    }

    pub(crate) fn extract_as_creds(&self) -> Option<(u32, u32)> {
        self.extract_as
    }

    fn too_large(&self) -> String {
        format!(
            "the archive is too large: more than {} entries or {} bytes unpacked",
            self.max_entries, self.max_bytes
        )
    }

    /// Reads an entry's header: its kind and what the checks need, or why it is refused.
    fn item<'a>(
        &self,
        entry: &tar::Entry<'_, impl Read>,
        comps: &[&'a OsStr],
        link: Option<&'a Path>,
    ) -> Result<Item<'a>, String> {
        let t = entry.header().entry_type();
        if t == tar::EntryType::XGlobalHeader {
            return Ok(Item::Skip);
        }
        if comps.is_empty() {
            // `./`, as `tar -C dir .` writes first: the root itself.
            return if t.is_dir() {
                Ok(Item::Skip)
            } else {
                Err("has no name".into())
            };
        }
        let last = comps[comps.len() - 1].as_bytes();
        if self.oci_layer && last.starts_with(WHITEOUT_PREFIX) && !t.is_dir() {
            if last == OPAQUE {
                return Ok(Item::Opaque);
            }
            if last.starts_with(b".wh..wh.") {
                // aufs bookkeeping (`.wh..wh.plnk`, …), meaningless to overlayfs.
                return Ok(Item::Skip);
            }
            if last.len() == WHITEOUT_PREFIX.len() {
                return Err("is a whiteout without a name".into());
            }
            return Ok(Item::Whiteout);
        }
        match t {
            tar::EntryType::Directory => Ok(Item::Dir),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                Ok(Item::File { size: entry.size() })
            }
            tar::EntryType::Symlink => {
                let target = link.ok_or("is a symlink without a target")?;
                check_link_target(self.symlinks, comps.len() - 1, target)?;
                Ok(Item::Symlink(target.to_path_buf()))
            }
            tar::EntryType::Link => {
                let target = link.ok_or("is a hard link without a target")?;
                let tc = components(target)
                    .map_err(|why| format!("is a hard link to {}, which {why}", show(target)))?;
                if tc.is_empty() {
                    return Err("is a hard link to the root directory".into());
                }
                Ok(Item::HardLink(tc, target.to_path_buf()))
            }
            other => Err(refused_type(other)),
        }
    }

    /// Reads a whole archive without writing anything and refuses what [`Extractor::extract`]
    /// would: bad names, types and link targets, a name used twice, an entry beneath a
    /// symlink or file of the archive, a hard link to anything but an earlier file, the
    /// limits. `visit` sees each regular file's name and content reader (for the manifest).
    pub fn check<R: Read>(
        &self,
        archive: R,
        mut visit: impl FnMut(&[&OsStr], &mut dyn Read) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        let mut tar = tar::Archive::new(archive);
        // Names seen, as keyed 64-bit hashes: bounded memory whatever the names' length. A
        // collision (about once in 10^8 archives at the entry limit) could refuse a good
        // archive or pass one that extraction then refuses: the extractor, not this check,
        // is what keeps archives inside their root.
        let keys = RandomState::new();
        let key = |comps: &[&OsStr]| {
            let mut h = keys.build_hasher();
            for c in comps {
                h.write(c.as_bytes());
                h.write_u8(b'/');
            }
            h.finish()
        };
        let mut seen: HashMap<u64, Kind> = HashMap::new();
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in tar.entries().map_err(bad_archive)? {
            let mut entry = entry.map_err(bad_archive)?;
            count += 1;
            if count > self.max_entries {
                return Err(BundleError::Invalid(self.too_large()));
            }
            let name = entry.path().map_err(bad_archive)?.into_owned();
            let link = entry
                .link_name()
                .map_err(bad_archive)?
                .map(|l| l.into_owned());
            let fail = |reason: String| BundleError::Entry {
                entry: show(&name),
                reason,
            };
            let comps = components(&name).map_err(fail)?;
            let item = self.item(&entry, &comps, link.as_deref()).map_err(fail)?;
            let kind = match &item {
                Item::Skip | Item::Whiteout | Item::Opaque => continue,
                Item::Dir => Kind::Dir,
                Item::File { size } => {
                    bytes = bytes.saturating_add(*size);
                    if bytes > self.max_bytes {
                        return Err(BundleError::Invalid(self.too_large()));
                    }
                    Kind::File
                }
                Item::Symlink(_) => Kind::Symlink,
                Item::HardLink(target, shown) => {
                    if seen.get(&key(target)) != Some(&Kind::File) {
                        return Err(fail(format!(
                            "is a hard link to {}, which is not a regular file earlier in the archive",
                            show(shown)
                        )));
                    }
                    Kind::File
                }
            };
            for i in 1..comps.len() {
                // Parents are made as needed: remembered as directories.
                match *seen.entry(key(&comps[..i])).or_insert(Kind::Dir) {
                    Kind::Dir => {}
                    k => {
                        return Err(fail(format!(
                            "is beneath {}, which is {} (an earlier entry), not a directory",
                            show(&join(&comps[..i])),
                            k.noun()
                        )));
                    }
                }
            }
            match seen.insert(key(&comps), kind) {
                None => {}
                Some(Kind::Dir) if kind == Kind::Dir => {}
                Some(old) if old != Kind::Dir && self.existing == Existing::Replace => {}
                Some(old) => {
                    return Err(fail(format!(
                        "clashes with {} of the same name earlier in the archive",
                        old.noun()
                    )));
                }
            }
            if kind == Kind::File && matches!(item, Item::File { .. }) {
                visit(&comps, &mut entry)?;
                io::copy(&mut entry, &mut io::sink()).map_err(bad_archive)?;
            }
        }
        Ok(())
    }

    /// Extracts a tar stream beneath `root` (an open directory; it must be empty or hold only
    /// what earlier archives extracted by this extractor made). Leaves files private (0600 or
    /// 0700, directories 0700) until [`Extractor::finish`].
    pub fn extract<R: Read + Send>(
        &self,
        archive: R,
        root: BorrowedFd<'_>,
    ) -> Result<(), BundleError> {
        let Some((uid, gid)) = self.extract_as else {
            return self.extract_here(archive, root);
        };
        let dumpable = rustix::process::dumpable_behavior().ok();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                drop_thread_privileges(uid, gid).map_err(|source| BundleError::Io {
                    path: PathBuf::from(format!("dropping to uid {uid} gid {gid}")),
                    source,
                })?;
                self.extract_here(archive, root)
            })
            .join()
            .unwrap_or_else(|_| Err(BundleError::Invalid("the extractor panicked".into())))
        });
        // Changing a thread's uid makes the whole process undumpable; restore what it was.
        if let Some(d) = dumpable {
            let _ = rustix::process::set_dumpable_behavior(d);
        }
        result
    }

    fn extract_here(&self, archive: impl Read, root: BorrowedFd<'_>) -> Result<(), BundleError> {
        let mut tar = tar::Archive::new(archive);
        let mut w = Writer {
            root,
            existing: self.existing,
            cache: None,
            dir_mode: if self.oci_layer { 0o755 } else { 0o700 },
        };
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut buf = vec![0u8; 64 << 10];
        for entry in tar.entries().map_err(bad_archive)? {
            let mut entry = entry.map_err(bad_archive)?;
            count += 1;
            if count > self.max_entries {
                return Err(BundleError::Invalid(self.too_large()));
            }
            let name = entry.path().map_err(bad_archive)?.into_owned();
            let link = entry
                .link_name()
                .map_err(bad_archive)?
                .map(|l| l.into_owned());
            let fail = |f: Fail| match f {
                Fail::Entry(reason) => BundleError::Entry {
                    entry: show(&name),
                    reason,
                },
                Fail::Io(source) => BundleError::Io {
                    path: name.clone(),
                    source,
                },
            };
            let comps = components(&name).map_err(|r| fail(Fail::Entry(r)))?;
            let item = self
                .item(&entry, &comps, link.as_deref())
                .map_err(|r| fail(Fail::Entry(r)))?;
            let owner = |h: &tar::Header| {
                let mode = h.mode().unwrap_or(0o644) & LAYER_MODE_MASK;
                let uid = h
                    .uid()
                    .ok()
                    .and_then(|u| u32::try_from(u).ok())
                    .unwrap_or(0);
                let gid = h
                    .gid()
                    .ok()
                    .and_then(|g| u32::try_from(g).ok())
                    .unwrap_or(0);
                (mode, uid, gid)
            };
            match item {
                Item::Skip => {}
                Item::Dir => {
                    w.dir(&comps).map_err(fail)?;
                    if self.oci_layer {
                        w.set_dir_attrs(&comps, owner(entry.header()))
                            .map_err(fail)?;
                    }
                }
                Item::Whiteout => {
                    let mut hidden = comps.clone();
                    let last = hidden.len() - 1;
                    hidden[last] =
                        OsStr::from_bytes(&comps[last].as_bytes()[WHITEOUT_PREFIX.len()..]);
                    w.whiteout(&hidden).map_err(fail)?;
                }
                Item::Opaque => w.opaque(&comps).map_err(fail)?,
                Item::File { size } => {
                    bytes = bytes.saturating_add(size);
                    if bytes > self.max_bytes {
                        return Err(BundleError::Invalid(self.too_large()));
                    }
                    let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
                    let mut file = w.file(&comps, exec).map_err(fail)?;
                    loop {
                        let n = entry.read(&mut buf).map_err(bad_archive)?;
                        if n == 0 {
                            break;
                        }
                        file.write_all(&buf[..n]).map_err(|e| fail(Fail::Io(e)))?;
                    }
                    if self.oci_layer {
                        // chown first: it clears setuid bits, and the mode is set after it.
                        let (mode, uid, gid) = owner(entry.header());
                        set_attrs(file.as_fd(), mode, uid, gid).map_err(|e| fail(Fail::Io(e)))?;
                        // Kept so that caches keyed by mtime (Python's .pyc) stay valid.
                        let mtime = entry.header().mtime().unwrap_or(0);
                        file.set_modified(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime),
                        )
                        .map_err(|e| fail(Fail::Io(e)))?;
                    }
                }
                Item::Symlink(target) => {
                    w.symlink(&comps, &target).map_err(fail)?;
                    if self.oci_layer {
                        let (_, uid, gid) = owner(entry.header());
                        let mtime = entry.header().mtime().unwrap_or(0);
                        w.chown_link(&comps, uid, gid, mtime).map_err(fail)?;
                    }
                }
                Item::HardLink(target, _) => w.hard_link(&comps, &target).map_err(fail)?,
            }
        }
        Ok(())
    }

    /// Gives the tree beneath `root` its final owner and modes (see [`Extractor::owner`]),
    /// walking it without following symlinks. Refuses anything but directories, files and
    /// symlinks.
    pub fn finish(&self, root: BorrowedFd<'_>) -> Result<(), BundleError> {
        let (dir_mode, exec_mode, file_mode) = match self.owner {
            Some(_) => (0o750, 0o750, 0o640),
            None => (0o755, 0o755, 0o644),
        };
        let owner = self
            .owner
            .map(|(u, g)| (rustix::fs::Uid::from_raw(u), rustix::fs::Gid::from_raw(g)));
        let set = |fd: BorrowedFd<'_>, mode: u32, at: &Path| -> Result<(), BundleError> {
            if let Some((u, g)) = owner {
                rustix::fs::fchown(fd, Some(u), Some(g)).map_err(io_err(at))?;
            }
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io_err(at))
        };
        // Paths, not open directories, so that a deep tree needs one descriptor at a time.
        let mut dirs = vec![PathBuf::from(".")];
        while let Some(rel) = dirs.pop() {
            let dir = rustix::fs::openat2(
                root,
                &rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(io_err(&rel))?;
            set(dir.as_fd(), dir_mode, &rel)?;
            for e in rustix::fs::Dir::read_from(&dir).map_err(io_err(&rel))? {
                let e = e.map_err(io_err(&rel))?;
                let name = e.file_name();
                if matches!(name.to_bytes(), b"." | b"..") {
                    continue;
                }
                let path = rel.join(OsStr::from_bytes(name.to_bytes()));
                let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err(&path))?;
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => dirs.push(path),
                    FileType::RegularFile => {
                        let f = rustix::fs::openat2(
                            &dir,
                            name,
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                            Mode::empty(),
                            RESOLVE,
                        )
                        .map_err(io_err(&path))?;
                        let exec = st.st_mode & 0o100 != 0;
                        set(f.as_fd(), if exec { exec_mode } else { file_mode }, &path)?;
                    }
                    FileType::Symlink => {
                        if let Some((u, g)) = owner {
                            rustix::fs::chownat(
                                &dir,
                                name,
                                Some(u),
                                Some(g),
                                AtFlags::SYMLINK_NOFOLLOW,
                            )
                            .map_err(io_err(&path))?;
                        }
                    }
                    other => {
                        return Err(BundleError::Entry {
                            entry: show(&path),
                            reason: format!("is {} in the unpacked tree", Kind::of(other)),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Owner, then mode (a chown clears setuid/setgid, which layers never keep anyway).
fn set_attrs(fd: BorrowedFd<'_>, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(Errno) -> BundleError + '_ {
    move |e| BundleError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

pub(crate) fn bad_archive(e: io::Error) -> BundleError {
    BundleError::Invalid(format!("not a valid tar.gz archive: {e}"))
}

/// Drops this thread (only: raw per-thread system calls, unlike libc's, which change every
/// thread of the process) to effective `uid:gid` with no supplementary groups. A non-zero
/// effective uid clears the effective capabilities, so file access is checked as `uid`.
fn drop_thread_privileges(uid: u32, gid: u32) -> io::Result<()> {
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    set_thread_groups(&[])?;
    set_thread_res_gid(None, Some(rustix::fs::Gid::from_raw(gid)), None)?;
    set_thread_res_uid(None, Some(rustix::fs::Uid::from_raw(uid)), None)?;
    Ok(())
}

/// Creates entries beneath `root`, remembering the last parent directory it opened.
struct Writer<'a> {
    root: BorrowedFd<'a>,
    existing: Existing,
    cache: Option<(PathBuf, OwnedFd)>,
    /// The mode of directories the archive does not list but its entries need.
    dir_mode: u32,
}

fn open_dir(at: BorrowedFd<'_>, path: impl rustix::path::Arg) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        at,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
}

impl Writer<'_> {
    /// The directory an entry goes into, made (0700) where missing. A parent that is a
    /// symlink or a file fails the open (`RESOLVE_NO_SYMLINKS`, `O_DIRECTORY`).
    fn parent(&mut self, comps: &[&OsStr]) -> Result<BorrowedFd<'_>, Fail> {
        let dirs = &comps[..comps.len() - 1];
        let path = join(dirs);
        if self.cache.as_ref().is_none_or(|(p, _)| *p != path) {
            let fd = match open_dir(
                self.root,
                if dirs.is_empty() {
                    Path::new(".")
                } else {
                    &path
                },
            ) {
                Ok(fd) => fd,
                // Missing, or something in the way: component by component, for the message.
                Err(_) => self.make_dirs(dirs)?,
            };
            self.cache = Some((path, fd));
        }
        Ok(self
            .cache
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("just set"))
    }

    fn make_dirs(&self, dirs: &[&OsStr]) -> Result<OwnedFd, Fail> {
        let mut cur = open_dir(self.root, ".")
            .map_err(|e| classify(e, || "cannot be created: the root cannot be opened".into()))?;
        for (i, c) in dirs.iter().enumerate() {
            let why = |e: Errno| {
                let prefix = show(&join(&dirs[..=i]));
                match e {
                    Errno::LOOP | Errno::NOTDIR => {
                        let what = rustix::fs::statat(&cur, *c, AtFlags::SYMLINK_NOFOLLOW)
                            .map_or("not a directory", |st| {
                                Kind::of(FileType::from_raw_mode(st.st_mode))
                            });
                        Fail::Entry(format!(
                            "is beneath {prefix}, which is {what} (an earlier entry), not a directory"
                        ))
                    }
                    e => classify(e, || format!("cannot be created beneath {prefix}")),
                }
            };
            cur = match open_dir(cur.as_fd(), *c) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(self.dir_mode)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(why(e)),
                    }
                    open_dir(cur.as_fd(), *c).map_err(why)?
                }
                Err(e) => return Err(why(e)),
            };
        }
        Ok(cur)
    }

    /// Runs `make` (which must fail with EEXIST, never follow, when the name exists); on
    /// EEXIST, refuses or, with [`Existing::Replace`], removes a non-directory and retries.
    fn create<T>(
        &mut self,
        comps: &[&OsStr],
        make: impl Fn(BorrowedFd<'_>, &OsStr) -> Result<T, Errno>,
    ) -> Result<T, Fail> {
        let name = comps[comps.len() - 1];
        let existing = self.existing;
        let parent = self.parent(comps)?;
        let err = match make(parent, name) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        if err != Errno::EXIST {
            return Err(classify(err, || "cannot be created".into()));
        }
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| classify(e, || "cannot be checked against the earlier entry".into()))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if existing == Existing::Refuse || ft == FileType::Directory {
            return Err(Fail::Entry(format!(
                "clashes with {} of the same name made by an earlier entry",
                Kind::of(ft)
            )));
        }
        rustix::fs::unlinkat(parent, name, AtFlags::empty())
            .map_err(|e| classify(e, || "cannot replace the earlier entry of that name".into()))?;
        make(parent, name).map_err(|e| classify(e, || "cannot be created".into()))
    }

    fn dir(&mut self, comps: &[&OsStr]) -> Result<(), Fail> {
        let name = comps[comps.len() - 1];
        let parent = self.parent(comps)?;
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(classify(e, || "cannot be created".into())),
        }
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| classify(e, || "cannot be checked against the earlier entry".into()))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Ok(());
        }
        // Not a directory: replace it (or refuse) the way files are.
        self.create(comps, |p, n| {
            rustix::fs::mkdirat(p, n, Mode::from_raw_mode(0o700))
        })
    }

    /// Opens a directory the archive made, for its attributes (never through a symlink).
    fn open_made_dir(&mut self, comps: &[&OsStr]) -> Result<OwnedFd, Fail> {
        let name = comps[comps.len() - 1];
        let parent = self.parent(comps)?;
        rustix::fs::openat2(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| classify(e, || "cannot be opened".into()))
    }

    fn set_dir_attrs(&mut self, comps: &[&OsStr], attrs: (u32, u32, u32)) -> Result<(), Fail> {
        let fd = self.open_made_dir(comps)?;
        let (mode, uid, gid) = attrs;
        set_attrs(fd.as_fd(), mode, uid, gid).map_err(Fail::Io)
    }

    /// An overlayfs whiteout (a 0/0 character device) for a name of the layers below. An
    /// entry of this same layer with that name wins: whiteouts hide only lower layers.
    fn whiteout(&mut self, comps: &[&OsStr]) -> Result<(), Fail> {
        let name = comps[comps.len() - 1];
        let parent = self.parent(comps)?;
        match rustix::fs::mknodat(
            parent,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        ) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(classify(e, || "cannot be made a whiteout".into())),
        }
    }

    /// Marks the entry's directory opaque for overlayfs.
    fn opaque(&mut self, comps: &[&OsStr]) -> Result<(), Fail> {
        let parent = self.parent(comps)?;
        let dir = rustix::fs::openat2(
            parent,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| classify(e, || "cannot open its directory".into()))?;
        rustix::fs::fsetxattr(
            &dir,
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| Fail::Io(e.into()))
    }

    fn chown_link(&mut self, comps: &[&OsStr], uid: u32, gid: u32, mtime: u64) -> Result<(), Fail> {
        let name = comps[comps.len() - 1];
        let parent = self.parent(comps)?;
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Fail::Io(e.into()))?;
        let t = rustix::fs::Timespec {
            tv_sec: i64::try_from(mtime).unwrap_or(0),
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Fail::Io(e.into()))
    }

    fn file(&mut self, comps: &[&OsStr], exec: bool) -> Result<File, Fail> {
        let mode = Mode::from_raw_mode(if exec { 0o700 } else { 0o600 });
        let fd = self.create(comps, |p, n| {
            rustix::fs::openat2(
                p,
                n,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
                RESOLVE,
            )
        })?;
        Ok(File::from(fd))
    }

    fn symlink(&mut self, comps: &[&OsStr], target: &Path) -> Result<(), Fail> {
        self.create(comps, |p, n| rustix::fs::symlinkat(target, p, n))
    }

    fn hard_link(&mut self, comps: &[&OsStr], target: &[&OsStr]) -> Result<(), Fail> {
        let shown = || show(&join(target));
        let tdir = &target[..target.len() - 1];
        let tname = target[target.len() - 1];
        let tparent = open_dir(
            self.root,
            if tdir.is_empty() {
                PathBuf::from(".")
            } else {
                join(tdir)
            },
        )
        .map_err(|e| {
            classify(e, || {
                format!("is a hard link to {}, which cannot be reached", shown())
            })
        })?;
        let st = rustix::fs::statat(&tparent, tname, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
            classify(e, || {
                format!("is a hard link to {}, which cannot be reached", shown())
            })
        })?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::RegularFile {
            return Err(Fail::Entry(format!(
                "is a hard link to {}, which is {}: only links to files are allowed",
                shown(),
                Kind::of(ft)
            )));
        }
        if comps == target && self.existing == Existing::Replace {
            // Replacing a file with itself (unlinking it first would lose it).
            return Ok(());
        }
        // No AT_SYMLINK_FOLLOW: the target name itself is never followed either.
        self.create(comps, |p, n| {
            rustix::fs::linkat(&tparent, tname, p, n, AtFlags::empty())
        })
    }
}
