//! cgroups for replicas: memory, cpu and pids limits, OOM-kill counts, and killing every
//! process of a replica. cgroup v2 is used when the unified hierarchy is mounted at
//! `/sys/fs/cgroup`; otherwise the v1 `memory`, `cpu` and `pids` controllers.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
// cpuacct: CPU usage, for autoscaling on cpu (co-mounted with cpu on some systems: fine).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no writable cgroup hierarchy at {CGROUP_MOUNT} (need v2, or v1 memory/cpu/pids)")]
    Unavailable,
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io_err(path))
}

/// Limits applied to one replica's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids_max: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// fjord's part of the hierarchy for one `fjord serve` instance:
/// `<mount>[/<controller>]/fjord/<instance>`.
#[derive(Debug)]
pub struct CgroupRoot {
    version: Version,
    /// One directory per controller (v1) or the single unified directory (v2).
    dirs: Vec<PathBuf>,
    instance: String,
}

impl CgroupRoot {
    /// A replica cgroup's path below each controller's mount, as an OCI runtime's
    /// `linux.cgroupsPath` names it (the container runtime lets runc join it).
    pub fn oci_path(&self, name: &str) -> String {
        format!("/fjord/{}/{name}", self.instance)
    }

    /// Detects the hierarchy and creates this instance's directories.
    pub fn new(instance: &str) -> Result<Self, CgroupError> {
        let mount = Path::new(CGROUP_MOUNT);
        let (version, bases) = if mount.join("cgroup.controllers").exists() {
            (Version::V2, vec![mount.to_path_buf()])
        } else {
            let bases: Vec<PathBuf> = V1_CONTROLLERS
                .iter()
                .map(|c| mount.join(c))
                .filter(|p| p.join("cgroup.procs").exists())
                .collect();
            if bases.is_empty() {
                return Err(CgroupError::Unavailable);
            }
            (Version::V1, bases)
        };
        let mut dirs = Vec::new();
        for base in bases {
            let dir = base.join("fjord").join(instance);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            if version == Version::V2 {
                // Controllers must be enabled on every ancestor for the leaves to use them.
                for d in [base.clone(), base.join("fjord"), dir.clone()] {
                    for c in ["+memory", "+cpu", "+pids"] {
                        let _ = write_file(&d.join("cgroup.subtree_control"), c);
                    }
                }
            }
            dirs.push(dir);
        }
        Ok(Self {
            version,
            dirs,
            instance: instance.to_string(),
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Kills and removes replica cgroups left behind by an earlier run that did not stop
    /// cleanly (e.g. `kill -9`). Returns how many were removed.
    pub async fn clean_stale(&self) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for dir in &self.dirs {
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        names.insert(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        for name in &names {
            let cg = Cgroup {
                version: self.version,
                dirs: self.dirs.iter().map(|d| d.join(name)).collect(),
                procs: Vec::new(),
            };
            cg.remove().await;
        }
        names.len()
    }

    /// Removes this instance's (empty) directories, at shutdown.
    pub fn remove_if_empty(&self) {
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }

    /// Creates a replica's cgroup with its limits and opens its `cgroup.procs` files, which
    /// the child writes `0` into before exec to join.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|d| d.join(name)).collect();
        for d in &dirs {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(d)(e)),
            }
        }
        let find = |file: &str| dirs.iter().map(|d| d.join(file)).find(|p| p.exists());
        match self.version {
            Version::V1 => {
                if let (Some(m), Some(p)) = (limits.memory_bytes, find("memory.limit_in_bytes")) {
                    write_file(&p, &m.to_string())?;
                    if let Some(sw) = find("memory.memsw.limit_in_bytes") {
                        let _ = write_file(&sw, &m.to_string());
                    }
                }
                if let (Some(c), Some(q), Some(p)) = (
                    limits.cpu_millis,
                    find("cpu.cfs_quota_us"),
                    find("cpu.cfs_period_us"),
                ) {
                    write_file(&p, &CFS_PERIOD_US.to_string())?;
                    write_file(&q, &(c * CFS_PERIOD_US / 1000).max(1000).to_string())?;
                }
            }
            Version::V2 => {
                if let (Some(m), Some(p)) = (limits.memory_bytes, find("memory.max")) {
                    write_file(&p, &m.to_string())?;
                    if let Some(sw) = find("memory.swap.max") {
                        let _ = write_file(&sw, "0");
                    }
                }
                if let (Some(c), Some(p)) = (limits.cpu_millis, find("cpu.max")) {
                    let quota = (c * CFS_PERIOD_US / 1000).max(1000);
                    write_file(&p, &format!("{quota} {CFS_PERIOD_US}"))?;
                }
            }
        }
        if let (Some(n), Some(p)) = (limits.pids_max, find("pids.max")) {
            write_file(&p, &n.to_string())?;
        }
        let mut procs = Vec::new();
        for d in &dirs {
            let p = d.join("cgroup.procs");
            procs.push(
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(io_err(&p))?,
            );
        }
        Ok(Cgroup {
            version: self.version,
            dirs,
            procs,
        })
    }
}

/// One replica's cgroup (one directory per v1 controller).
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<PathBuf>,
    procs: Vec<fs::File>,
}

impl Cgroup {
    /// Open `cgroup.procs` descriptors; valid while `self` lives.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    fn read(&self, file: &str) -> Option<String> {
        self.dirs
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .and_then(|p| fs::read_to_string(p).ok())
    }

    /// How many processes the kernel OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        self.read(file)
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|v| v.trim().parse().ok()))
                    .flatten()
            })
            .unwrap_or(0)
    }

    /// CPU time used by the cgroup's processes so far, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match self.version {
            Version::V1 => self
                .read("cpuacct.usage")
                .and_then(|s| s.trim().parse().ok()),
            Version::V2 => self.read("cpu.stat").and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us * 1000)
            }),
        }
    }

    /// Memory the cgroup's processes use now (bytes, page cache included, as the limit counts
    /// it).
    pub fn memory_bytes(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        self.read(file).and_then(|s| s.trim().parse().ok())
    }

    /// Process ids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the cgroup until it is empty (bounded to ~2 s).
    pub async fn kill_all(&self) {
        if self.version == Version::V2
            && let Some(d) = self.dirs.first()
            && d.join("cgroup.kill").exists()
        {
            let _ = write_file(&d.join("cgroup.kill"), "1");
        }
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = ?self.dirs.first(), "processes survived SIGKILL for 2 s");
    }

    /// Kills what is left and removes the directories.
    pub async fn remove(&self) {
        self.kill_all().await;
        for d in &self.dirs {
            for attempt in 0..50 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if attempt == 49 {
                            tracing::warn!(dir = %d.display(), error = %e, "cannot remove cgroup");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These need root and a writable hierarchy, which this project's machines and CI have.
    #[tokio::test]
    async fn limits_are_written_and_cgroup_removed() {
        let root = CgroupRoot::new("unit-test-limits").expect("cgroups need root");
        let cg = root
            .create(
                "r1",
                &Limits {
                    memory_bytes: Some(64 << 20),
                    cpu_millis: Some(250),
                    pids_max: Some(32),
                },
            )
            .unwrap();
        match root.version() {
            Version::V1 => {
                let mem = cg.read("memory.limit_in_bytes").unwrap();
                assert_eq!(mem.trim(), (64u64 << 20).to_string());
                assert_eq!(cg.read("cpu.cfs_quota_us").unwrap().trim(), "25000");
            }
            Version::V2 => {
                assert_eq!(
                    cg.read("memory.max").unwrap().trim(),
                    (64u64 << 20).to_string()
                );
            }
        }
        assert_eq!(cg.read("pids.max").unwrap().trim(), "32");
        assert_eq!(cg.oom_kills(), 0);
        assert!(cg.pids().is_empty());
        cg.remove().await;
        assert!(cg.dirs.iter().all(|d| !d.exists()));
        assert_eq!(root.clean_stale().await, 0);
        root.remove_if_empty();
        assert!(root.dirs.iter().all(|d| !d.exists()));
    }
}
