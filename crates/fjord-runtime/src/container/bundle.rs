//! A container replica's runc bundle: its directory, mounts and `config.json`, and the OCI
//! runtime commands that run, kill and delete it.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{Host, Plan};
use crate::netns::NetNs;

/// The mount points of a bundle, unmounted in this order.
const MOUNTS: [&str; 3] = ["rootfs", "secrets", "netns"];

/// Detaches whatever is mounted in a bundle directory (also one a killed fjord left).
pub(crate) fn unmount_all(dir: &Path) {
    for m in MOUNTS {
        let _ = umount2(&dir.join(m), MntFlags::MNT_DETACH);
    }
}

/// The overlay's lower layers of one version of a function, made by its first replica and
/// shared by the others (a replica's start then mounts only its overlay): fjord's top layer
/// of mount points, and the image's layers, each seen through the function's idmapping
/// when it has a range. The idmapped clones are detached trees held open here, reached as
/// `/proc/self/fd/N`: never attached anywhere, so nothing stays mounted if fjord is killed,
/// and containers' mount namespaces do not copy them.
#[derive(Debug)]
pub(crate) struct Lowers {
    /// The overlay's `lowerdir=` value, top layer first.
    lowerdir: String,
    /// What `lowerdir` names by descriptor.
    _trees: Vec<OwnedFd>,
    /// fjord's top layer (on disk), removed with the version.
    points: PathBuf,
}

impl Lowers {
    pub(crate) fn new(plan: &Plan) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Dot-named: never a replica's (DNS names); a restart removes it with the rest.
        let points = plan
            .host
            .disk
            .join(format!(".lower-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let made = Self::make(plan, &points);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&points);
        }
        made
    }

    fn make(plan: &Plan, points: &Path) -> std::io::Result<Self> {
        // A small top layer of fjord's with the mount points the image lacks: runc cannot
        // create them from the container's user namespace (the image's directories are
        // the host root's), and a read-only rootfs has no upper dir to make them in.
        mount_points(&plan.image.layers, points)?;
        // overlayfs wants the top layer first, and refuses one directory twice: an image
        // whose layers repeat one (the same digest twice) keeps its top-most place only,
        // which shadows all the lower one would add or hide.
        let mut seen = std::collections::HashSet::new();
        let layers = std::iter::once(points).chain(
            plan.image
                .layers
                .iter()
                .rev()
                .map(PathBuf::as_path)
                .filter(|l| seen.insert(*l)),
        );
        let mut lower = Vec::with_capacity(plan.image.layers.len() + 1);
        let mut trees = Vec::new();
        for layer in layers {
            match &plan.ids {
                None => lower.push(overlay_path(layer)?),
                // Through the function's idmapping (its files' owners shifted into the
                // function's range, read-only).
                Some(ids) => {
                    let tree = ids.tree(layer)?;
                    lower.push(format!("/proc/self/fd/{}", tree.as_raw_fd()));
                    trees.push(tree);
                }
            }
        }
        Ok(Self {
            lowerdir: lower.join(":"),
            _trees: trees,
            points: points.to_path_buf(),
        })
    }
}

impl Drop for Lowers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.points);
    }
}

/// One replica's bundle, made by [`Bundle::create`] and gone after [`Bundle::destroy`].
#[derive(Debug)]
pub(crate) struct Bundle {
    /// Config and mount points (reachable from the container's user namespace).
    dir: PathBuf,
    /// The overlay's upper and work dirs (private, on disk).
    disk: PathBuf,
    /// The container id (the replica id): unique in this instance's runc state directory.
    id: String,
    host: Arc<Host>,
}

fn io(e: nix::Error) -> std::io::Error {
    std::io::Error::from(e)
}

/// overlayfs options separate layers with `:` and options with `,`.
fn overlay_path(p: &Path) -> std::io::Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| std::io::Error::other(format!("{} is not UTF-8", p.display())))?;
    if s.contains([':', ',']) {
        return Err(std::io::Error::other(format!(
            "{s}: a layer path with ':' or ',' cannot be an overlay layer"
        )));
    }
    Ok(s.to_string())
}

/// Directories the container's mounts need (`/proc`, `/dev`, `/tmp`, the secrets').
const MOUNT_POINTS: [&str; 4] = ["proc", "dev", "tmp", "var/openfaas/secrets"];

/// Makes, in `top`, each mount point (and parent) the image does not have as a directory;
/// a parent the image has keeps its mode. Never follows the image's symlinks.
fn mount_points(layers: &[PathBuf], top: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o755).create(top)?;
    // The top-most layer that has `rel`, as what (no whiteout handling: a deleted
    // directory only makes fjord add a mount point that would be needed anyway).
    let in_image = |rel: &Path| {
        layers
            .iter()
            .rev()
            .find_map(|l| std::fs::symlink_metadata(l.join(rel)).ok())
    };
    for point in MOUNT_POINTS {
        let mut rel = PathBuf::new();
        for part in Path::new(point).components() {
            rel.push(part);
            let target = top.join(&rel);
            if target.exists() {
                continue;
            }
            match in_image(&rel) {
                // The image has it: nothing to add unless a child must be made below.
                Some(m) if m.is_dir() && rel.as_path() == Path::new(point) => {}
                Some(m) if m.is_dir() => {
                    std::fs::DirBuilder::new().mode(0o755).create(&target)?;
                    std::fs::set_permissions(&target, m.permissions())?;
                }
                Some(_) => break,
                None => {
                    let mode = if part.as_os_str() == "tmp" {
                        0o1777
                    } else {
                        0o755
                    };
                    std::fs::DirBuilder::new().mode(mode).create(&target)?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
                }
            }
        }
    }
    Ok(())
}

impl Bundle {
    /// Makes the bundle (blocking): directory, overlay rootfs, secrets tmpfs, network
    /// namespace bind, `config.json`. On failure, undoes what it did.
    pub(crate) fn create(
        plan: &Plan,
        id: &str,
        netns: &NetNs,
        cgroups_path: Option<String>,
    ) -> std::io::Result<Self> {
        let dir = plan.host.bundles.join(id);
        // Searchable by the container's root only (runc reaches the rootfs by path from
        // inside the user namespace, as the function's gid): other functions' uids cannot
        // reach its rootfs (and what the container writes there), nor its secrets.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::os::unix::fs::chown(&dir, None, Some(plan.host_uid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o710))?;
        let bundle = Self {
            dir,
            disk: plan.host.disk.join(id),
            id: id.to_string(),
            host: plan.host.clone(),
        };
        match bundle.populate(plan, netns, cgroups_path) {
            Ok(()) => Ok(bundle),
            Err(e) => {
                unmount_all(&bundle.dir);
                let _ = std::fs::remove_dir_all(&bundle.dir);
                let _ = std::fs::remove_dir_all(&bundle.disk);
                Err(e)
            }
        }
    }

    fn populate(
        &self,
        plan: &Plan,
        netns: &NetNs,
        cgroups_path: Option<String>,
    ) -> std::io::Result<()> {
        let dir = &self.dir;
        let rootfs = dir.join("rootfs");
        std::fs::create_dir(&rootfs)?;
        std::fs::DirBuilder::new().mode(0o700).create(&self.disk)?;
        let lower = plan.lowers()?;
        let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        let options = if plan.read_only {
            flags |= MsFlags::MS_RDONLY;
            format!("lowerdir={}", lower.lowerdir)
        } else {
            let upper = self.disk.join("upper");
            let work = self.disk.join("work");
            std::fs::create_dir(&upper)?;
            std::fs::create_dir(&work)?;
            // The upper dir's root is the container's `/`, owned by container root (the
            // function's uid) so it may create files there. The image's own files stay the
            // host root's, which no container uid maps to: read-only for the container.
            std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::chown(&upper, Some(plan.host_uid), Some(plan.host_uid))?;
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.lowerdir,
                overlay_path(&upper)?,
                overlay_path(&work)?
            )
        };
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            flags,
            Some(options.as_str()),
        )
        .map_err(|e| std::io::Error::other(format!("cannot mount the overlay rootfs: {e}")))?;

        let secrets = if plan.secrets.is_empty() {
            None
        } else {
            let s = dir.join("secrets");
            std::fs::create_dir(&s)?;
            let size: usize = plan
                .secrets
                .iter()
                .map(|(_, v)| v.len().div_ceil(4096) * 4096 + 4096)
                .sum::<usize>()
                + (64 << 10);
            // In memory only, owned by the process's user (container root, or the image's
            // `User`, in the function's range), like the process runtime's secrets.
            let (uid, gid) = (plan.host_uid + plan.user.uid, plan.host_uid + plan.user.gid);
            mount(
                Some("tmpfs"),
                &s,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(format!("mode=0500,uid={uid},gid={gid},size={size}").as_str()),
            )
            .map_err(io)?;
            for (name, value) in plan.secrets.iter() {
                let p = s.join(name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o400)
                    .open(&p)?;
                f.write_all(value)?;
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
            Some(s)
        };

        // runc joins the namespace by path: bind the descriptor to a file.
        let ns_file = dir.join("netns");
        std::fs::File::create(&ns_file)?;
        mount(
            Some(Path::new(&format!(
                "/proc/self/fd/{}",
                netns.fd().as_raw_fd()
            ))),
            &ns_file,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| std::io::Error::other(format!("cannot bind the network namespace: {e}")))?;

        let spec = super::spec::build(
            plan,
            &super::spec::Replica {
                id: &self.id,
                rootfs: &rootfs,
                netns: &ns_file,
                secrets: secrets.as_deref(),
                cgroups_path: cgroups_path.as_deref(),
            },
        )
        .map_err(std::io::Error::other)?;
        // runc reads it as root; the environment may hold what envVars carry.
        let config = dir.join("config.json");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)?;
        spec.save(&config).map_err(std::io::Error::other)?;
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The command that runs the container in the foreground. `--keep`: the stopped
    /// container (and its cgroup, with the OOM count) stays until the next start or the
    /// replica's end deletes it.
    pub(crate) async fn command(&self) -> std::io::Result<tokio::process::Command> {
        if self.host.state.join(&self.id).exists() {
            // The previous start's container.
            self.host.run(&["delete", "--force", &self.id]).await?;
        }
        let mut cmd = tokio::process::Command::new(&self.host.oci_runtime);
        cmd.arg("--root")
            .arg(&self.host.state)
            .args(["run", "--keep", "--bundle"])
            .arg(&self.dir)
            .arg(&self.id)
            .env_clear()
            .env("PATH", crate::program::DEFAULT_PATH)
            .process_group(0);
        Ok(cmd)
    }

    /// SIGKILL to the container's processes.
    pub(crate) async fn kill(&self) {
        if let Err(e) = self.host.run(&["kill", "--all", &self.id, "KILL"]).await {
            tracing::debug!(container = %self.id, error = %e, "runc kill");
        }
    }

    /// Deletes the container (whatever its state) and detaches the bundle's mounts; the
    /// directory is removed by the replica.
    pub(crate) async fn destroy(&self) {
        if self.host.state.join(&self.id).exists()
            && let Err(e) = self.host.run(&["delete", "--force", &self.id]).await
        {
            tracing::warn!(container = %self.id, error = %e, "cannot delete the container");
        }
        let dir = self.dir.clone();
        let disk = self.disk.clone();
        let _ = tokio::task::spawn_blocking(move || {
            unmount_all(&dir);
            let _ = std::fs::remove_dir_all(disk);
        })
        .await;
    }
}
