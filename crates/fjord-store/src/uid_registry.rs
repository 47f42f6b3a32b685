//! The host-wide reservation of function uids: every fjord instance on a host (one data dir
//! each) gets its own block of uids, so a function of one instance never shares a uid with
//! a function of another (which would let it read the other's `/proc/<pid>/root`, environment
//! and secrets, and signal it).
//!
//! The registry is one JSON file, `/var/lib/fjord/uids/registry.json` (dir root-only 0700,
//! file 0600), changed only under an exclusive `flock` of `lock` next to it and replaced
//! atomically (write, fsync, rename). Each entry maps an instance (the random id kept in
//! `<data-dir>/instance-id`, and its canonical data dir) to a block. Blocks are handed out
//! upwards from [`FIRST_UID`] and never handed out twice while unused ones remain, so a
//! retired block (its data dir gone) is reused only when the uid space above is exhausted.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the registry lives: a persistent path (not `/run`), so a reboot does not hand an
/// instance's block to another.
pub const DEFAULT_REGISTRY_DIR: &str = "/var/lib/fjord/uids";
/// The first uid handed to functions, far above ordinary users' uids (and where fjord
/// before the registry started, so the first instance upgraded keeps its uids).
pub const FIRST_UID: u32 = 2_000_000;
/// Uids per instance: a function gets a new uid on every create, never reused.
pub const BLOCK_SIZE: u32 = 65_536;
/// Ids a container function maps its image's users to (container 0..65535, as Docker's
/// and Kubernetes' user namespaces).
pub const CONTAINER_RANGE: u32 = 65_536;
/// Container functions an instance runs at once: its container block holds this many
/// ranges, reserved on its first container (a server without containers takes none).
pub const CONTAINER_RANGES: u32 = 1_024;
/// The highest usable uid: `(uid_t)-1` means "unchanged" to setuid(2) and friends.
const LAST_UID: u32 = u32::MAX - 1;
/// The instance's id inside its data dir.
pub const INSTANCE_ID_FILE: &str = "instance-id";
const REGISTRY_FILE: &str = "registry.json";
const LOCK_FILE: &str = "lock";

/// A range of uids reserved for one instance: `first ..= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UidBlock {
    pub first: u32,
    pub last: u32,
}

impl UidBlock {
    /// Every uid from [`FIRST_UID`] up: for a server that is not root, whose functions run
    /// as its own user anyway (the uids are only labels there).
    pub const fn unrestricted() -> Self {
        Self {
            first: FIRST_UID,
            last: LAST_UID,
        }
    }

    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

impl std::fmt::Display for UidBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("uid registry {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("uid registry {path} is unreadable ({reason}): fix or remove it while no fjord runs")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "uid registry {path} must be owned by root and writable only by root (it is uid {owner}, mode {mode:o})"
    )]
    Unsafe {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error(
        "uid registry {path}: every uid block is reserved by another fjord instance; remove entries of data dirs no longer used"
    )]
    Full { path: PathBuf },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Registry {
    version: u32,
    /// First uid of the next block never handed out.
    next: u64,
    instances: Vec<Entry>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Entry {
    id: String,
    data_dir: String,
    first_uid: u32,
    last_uid: u32,
    /// The ranges its container functions' users map to ([`reserve_containers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    containers: Option<UidBlock>,
}

impl Entry {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        let hit = |first: u32, last: u32| u64::from(first) <= end && start <= u64::from(last);
        hit(self.first_uid, self.last_uid) || self.containers.is_some_and(|c| hit(c.first, c.last))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The instance's id, from `<data-dir>/instance-id` (made on first use: a random UUID,
/// 0600). A copy of a data dir carries the id along; [`reserve`] notices and gives the copy
/// a new one.
pub fn instance_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if valid_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    new_instance_id(data_dir)
}

fn new_instance_id(data_dir: &Path) -> std::io::Result<String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    write_atomic(
        &data_dir.join(INSTANCE_ID_FILE),
        format!("{id}\n").as_bytes(),
    )?;
    Ok(id)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Writes `path` (0600) through a temporary file, fsync and rename, so a crash leaves the
/// old or the new content, never a torn one.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates the registry dir if needed (0700) and checks that only its owner (root, when
/// it matters) can change it: a user who could edit it could make two instances share uids.
fn prepare_dir(dir: &Path) -> Result<(), RegistryError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    let mode = meta.mode() & 0o7777;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(RegistryError::Unsafe {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            mode,
        });
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// The registry, locked: other instances starting at the same moment wait (a few
/// milliseconds) until it drops.
struct Locked {
    _lock: std::fs::File,
    path: PathBuf,
    reg: Registry,
}

impl Locked {
    fn open(registry_dir: &Path) -> Result<Self, RegistryError> {
        prepare_dir(registry_dir)?;
        let lock_path = registry_dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let path = registry_dir.join(REGISTRY_FILE);
        let reg = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Registry>(&bytes).map_err(|e| RegistryError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry {
                version: 1,
                next: u64::from(FIRST_UID),
                instances: Vec::new(),
            },
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(Self {
            _lock: lock,
            path,
            reg,
        })
    }

    fn save(&self) -> Result<(), RegistryError> {
        save(&self.path, &self.reg)
    }

    fn full(&self) -> RegistryError {
        RegistryError::Full {
            path: self.path.clone(),
        }
    }
}

/// Reserves (or finds again) the uid block of the instance in `data_dir`, in the registry
/// at `registry_dir`. The same data dir gets the same block on every start; a data dir
/// that was moved keeps its block; a copy of a data dir gets a new id and a new block.
pub fn reserve(registry_dir: &Path, data_dir: &Path) -> Result<UidBlock, RegistryError> {
    let canonical = std::fs::canonicalize(data_dir).map_err(io_err(data_dir))?;
    let canonical_s = canonical.to_string_lossy().into_owned();
    let mut locked = Locked::open(registry_dir)?;
    let reg = &mut locked.reg;
    let mut id = instance_id(&canonical).map_err(io_err(&canonical))?;

    if let Some(i) = reg.instances.iter().position(|e| e.id == id) {
        let e = &reg.instances[i];
        if e.data_dir == canonical_s {
            return Ok(UidBlock {
                first: e.first_uid,
                last: e.last_uid,
            });
        }
        let other = Path::new(&e.data_dir);
        let still_there = instance_id_if_present(other).is_some_and(|other_id| other_id == id);
        if still_there {
            // A copy of another instance's data dir: it must not share that instance's uids.
            id = new_instance_id(&canonical).map_err(io_err(&canonical))?;
        } else {
            // The data dir moved: it keeps its block.
            reg.instances[i].data_dir = canonical_s.clone();
            let block = UidBlock {
                first: reg.instances[i].first_uid,
                last: reg.instances[i].last_uid,
            };
            locked.save()?;
            return Ok(block);
        }
    }
    // This path with another id: the old instance's data dir was replaced; its entry goes
    // (its block stays retired, see `allocate`). Entries of data dirs that no longer exist
    // go too, so the file stays small.
    reg.instances
        .retain(|e| e.data_dir != canonical_s && Path::new(&e.data_dir).exists());

    let block = allocate(reg, BLOCK_SIZE).ok_or_else(|| locked.full())?;
    locked.reg.instances.push(Entry {
        id,
        data_dir: canonical_s,
        first_uid: block.first,
        last_uid: block.last,
        containers: None,
    });
    locked.save()?;
    Ok(block)
}

/// Reserves (or finds again) the container block of the instance in `data_dir`
/// ([`CONTAINER_RANGES`] ranges of [`CONTAINER_RANGE`] ids), after [`reserve`] found or
/// made its entry. Kept with the entry, as its function uids are.
pub fn reserve_containers(registry_dir: &Path, data_dir: &Path) -> Result<UidBlock, RegistryError> {
    let canonical = std::fs::canonicalize(data_dir).map_err(io_err(data_dir))?;
    let canonical_s = canonical.to_string_lossy().into_owned();
    let id = instance_id(&canonical).map_err(io_err(&canonical))?;
    let mut locked = Locked::open(registry_dir)?;
    let Some(i) = locked
        .reg
        .instances
        .iter()
        .position(|e| e.id == id && e.data_dir == canonical_s)
    else {
        return Err(RegistryError::Corrupt {
            path: locked.path.clone(),
            reason: format!("no entry for {canonical_s} (its uid block is reserved first)"),
        });
    };
    if let Some(c) = locked.reg.instances[i].containers {
        return Ok(c);
    }
    let block = allocate(&mut locked.reg, CONTAINER_RANGE * CONTAINER_RANGES)
        .ok_or_else(|| locked.full())?;
    locked.reg.instances[i].containers = Some(block);
    locked.save()?;
    Ok(block)
}

fn instance_id_if_present(data_dir: &Path) -> Option<String> {
    let s = std::fs::read_to_string(data_dir.join(INSTANCE_ID_FILE)).ok()?;
    let s = s.trim();
    valid_id(s).then(|| s.to_string())
}

/// The next never-used block; when the uid space above is used up, the lowest block no
/// registered instance holds (one whose data dir is gone).
fn allocate(reg: &mut Registry, size: u32) -> Option<UidBlock> {
    let size = u64::from(size);
    let first = reg.next.max(u64::from(FIRST_UID));
    if first + size - 1 <= u64::from(LAST_UID) {
        reg.next = first + size;
        return Some(UidBlock {
            first: first as u32,
            last: (first + size - 1) as u32,
        });
    }
    let mut start = u64::from(FIRST_UID);
    while start + size - 1 <= u64::from(LAST_UID) {
        let end = start + size - 1;
        let taken = reg.instances.iter().any(|e| e.overlaps(start, end));
        if !taken {
            return Some(UidBlock {
                first: start as u32,
                last: end as u32,
            });
        }
        start += size;
    }
    None
}

fn save(path: &Path, reg: &Registry) -> Result<(), RegistryError> {
    let mut json = serde_json::to_vec_pretty(reg).map_err(|e| RegistryError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    write_atomic(path, &json).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let reg = t.path().join("reg").join("uids");
        (t, reg)
    }

    fn data(t: &tempfile::TempDir, name: &str) -> PathBuf {
        let d = t.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn disjoint(a: UidBlock, b: UidBlock) -> bool {
        a.last < b.first || b.last < a.first
    }

    #[test]
    fn instances_get_disjoint_blocks_and_keep_them() {
        let (t, reg) = dirs();
        let (a, b) = (data(&t, "a"), data(&t, "b"));
        let ba = reserve(&reg, &a).unwrap();
        let bb = reserve(&reg, &b).unwrap();
        assert_eq!(ba.first, FIRST_UID);
        assert_eq!(ba.last - ba.first + 1, BLOCK_SIZE);
        assert!(disjoint(ba, bb), "{ba} {bb}");
        assert_eq!(reserve(&reg, &a).unwrap(), ba, "same data dir, same block");
        assert_eq!(reserve(&reg, &b).unwrap(), bb);
        let mode = std::fs::metadata(&reg).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mode = std::fs::metadata(reg.join(REGISTRY_FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn copy_gets_a_new_block_move_keeps_it() {
        let (t, reg) = dirs();
        let a = data(&t, "a");
        let ba = reserve(&reg, &a).unwrap();
        // A copy (same instance-id file, original still there).
        let c = data(&t, "c");
        std::fs::copy(a.join(INSTANCE_ID_FILE), c.join(INSTANCE_ID_FILE)).unwrap();
        let bc = reserve(&reg, &c).unwrap();
        assert!(disjoint(ba, bc), "{ba} {bc}");
        assert_ne!(instance_id(&a).unwrap(), instance_id(&c).unwrap());
        // A move: the original is gone.
        let m = t.path().join("moved");
        std::fs::rename(&a, &m).unwrap();
        assert_eq!(reserve(&reg, &m).unwrap(), ba);
    }

    #[test]
    fn replaced_or_removed_data_dirs_retire_their_block() {
        let (t, reg) = dirs();
        let a = data(&t, "a");
        let first = reserve(&reg, &a).unwrap();
        // Wiped and recreated: new id, never the old block again.
        std::fs::remove_dir_all(&a).unwrap();
        let a = data(&t, "a");
        let second = reserve(&reg, &a).unwrap();
        assert!(disjoint(first, second));
        let text = std::fs::read_to_string(reg.join(REGISTRY_FILE)).unwrap();
        let r: Registry = serde_json::from_str(&text).unwrap();
        assert_eq!(r.instances.len(), 1, "{text}");
    }

    #[test]
    fn wraps_to_free_blocks_only_when_exhausted() {
        let mut r = Registry {
            version: 1,
            next: u64::from(LAST_UID) - 10,
            instances: vec![Entry {
                id: "x".into(),
                data_dir: "/nonexistent".into(),
                first_uid: FIRST_UID,
                last_uid: FIRST_UID + BLOCK_SIZE - 1,
                containers: Some(UidBlock {
                    first: FIRST_UID + 2 * BLOCK_SIZE,
                    last: FIRST_UID + 3 * BLOCK_SIZE - 1,
                }),
            }],
        };
        let b = allocate(&mut r, BLOCK_SIZE).unwrap();
        assert_eq!(b.first, FIRST_UID + BLOCK_SIZE);
        // The entry's container block is taken too.
        let b = allocate(&mut r, BLOCK_SIZE * 2).unwrap();
        assert_eq!(b.first, FIRST_UID + 4 * BLOCK_SIZE);
    }

    #[test]
    fn container_blocks_are_disjoint_from_every_block_and_kept() {
        let (t, reg) = dirs();
        let (a, b) = (data(&t, "a"), data(&t, "b"));
        assert!(
            matches!(
                reserve_containers(&reg, &a),
                Err(RegistryError::Corrupt { .. })
            ),
            "the instance's own block comes first"
        );
        let ua = reserve(&reg, &a).unwrap();
        let ca = reserve_containers(&reg, &a).unwrap();
        let ub = reserve(&reg, &b).unwrap();
        let cb = reserve_containers(&reg, &b).unwrap();
        assert_eq!(ca.last - ca.first + 1, CONTAINER_RANGE * CONTAINER_RANGES);
        for (x, y) in [(ua, ca), (ua, ub), (ua, cb), (ca, ub), (ca, cb), (ub, cb)] {
            assert!(disjoint(x, y), "{x} {y}");
        }
        assert_eq!(reserve_containers(&reg, &a).unwrap(), ca, "kept");
        assert_eq!(
            reserve(&reg, &a).unwrap(),
            ua,
            "the instance's block unchanged"
        );
        // A moved data dir keeps both.
        let m = t.path().join("moved");
        std::fs::rename(&a, &m).unwrap();
        assert_eq!(reserve(&reg, &m).unwrap(), ua);
        assert_eq!(reserve_containers(&reg, &m).unwrap(), ca);
    }

    #[test]
    fn a_registry_dir_others_own_is_refused() {
        let (t, reg) = dirs();
        let a = data(&t, "a");
        std::fs::create_dir_all(&reg).unwrap();
        if !nix::unistd::geteuid().is_root() {
            return; // cannot give the dir away
        }
        std::os::unix::fs::chown(&reg, Some(12_345), None).unwrap();
        let e = reserve(&reg, &a).unwrap_err();
        assert!(
            matches!(e, RegistryError::Unsafe { owner: 12_345, .. }),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn corrupt_registry_is_an_error() {
        let (t, reg) = dirs();
        let a = data(&t, "a");
        reserve(&reg, &a).unwrap();
        std::fs::write(reg.join(REGISTRY_FILE), "{not json").unwrap();
        assert!(matches!(
            reserve(&reg, &a),
            Err(RegistryError::Corrupt { .. })
        ));
    }
}
