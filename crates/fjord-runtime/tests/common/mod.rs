//! Test images for the container runtime, assembled from the static busybox of the
//! distribution (busybox-static): no registry, no image builder.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fjord_core::FunctionSpec;
use fjord_core::openfaas::FunctionDeployment;
use fjord_runtime::{ContainerConfig, ContainerRuntime, RuntimeConfig, Source};
use fjord_runtime_api::{ImageConfig, ImageRootfs};

/// A uid no user of this machine has: container root is mapped to it.
pub const UID: u32 = 61_235;

pub const BUSYBOX: &str = "/bin/busybox";

/// busybox httpd on 8080: `POST /` runs `/www/cgi-bin/index.cgi`, which prints
/// `hello $MARKER`.
pub const HTTPD: [&str; 7] = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Unpacked layers of a busybox image, as the layer store would hold them.
pub struct Layers {
    dir: tempfile::TempDir,
    pub layers: Vec<PathBuf>,
}

impl Layers {
    /// Layer 1: busybox and its applets, `/etc/passwd`; layer 2: the httpd's CGI, and
    /// `extra` files (path inside the image, content, mode).
    pub fn busybox(extra: &[(&str, &str, u32)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fjord-layers-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let base = dir.path().join("base");
        let app = dir.path().join("app");
        for d in [&base, &app] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(base.join("bin")).unwrap();
        std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "cat", "id", "ls", "touch", "echo", "sleep", "httpd", "false", "head", "dd",
            "grep", "test",
        ] {
            std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
        }
        for d in ["proc", "dev", "tmp", "etc", "var", "sys"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        write(
            &base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:100:101::/home/app:/bin/sh\n",
            0o644,
        );
        write(
            &app.join("www/cgi-bin/index.cgi"),
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello %s\\n' \"$MARKER\"\n",
            0o755,
        );
        for (path, text, mode) in extra {
            write(&app.join(path.trim_start_matches('/')), text, *mode);
        }
        Self {
            layers: vec![base, app],
            dir,
        }
    }

    pub fn image(&self, entrypoint: &[&str], cmd: &[&str]) -> Arc<ImageRootfs> {
        Arc::new(ImageRootfs {
            digest: format!("sha256:{:064x}", entrypoint.len() * 31 + cmd.len()),
            layers: self.layers.clone(),
            config: ImageConfig {
                entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                working_dir: Some("/".into()),
                user: None,
                exposed_ports: vec!["8080/tcp".into()],
            },
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn spec(json: serde_json::Value, image: Arc<ImageRootfs>) -> (FunctionSpec, Source) {
    let d: FunctionDeployment = serde_json::from_value(json).expect("a deployment");
    let source = Source {
        uid: UID,
        image: Some(image),
        ..Source::default()
    };
    (
        FunctionSpec::from_deployment_for_image(d).expect("a spec"),
        source,
    )
}

pub fn config(data_dir: &Path) -> RuntimeConfig {
    RuntimeConfig {
        data_dir: data_dir.to_path_buf(),
        rollout_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(2),
        pids_max: 256,
        tune_kernel: false,
        network: Default::default(),
        tmp_size_bytes: 16 << 20,
        default_memory_bytes: Some(fjord_runtime::DEFAULT_MEMORY_LIMIT),
    }
}

pub fn data_dir() -> DataDir {
    DataDir(
        tempfile::Builder::new()
            .prefix("fjord-container-")
            .tempdir_in("/var/tmp")
            .expect("temp dir"),
    )
}

/// Where the tests' id blocks start: far above the uids of this machine's users.
pub const ID_BASE: u32 = 3_000_000_000;
/// Ranges per test runtime.
pub const RANGES: u32 = 16;

/// A block of id ranges of its own for each runtime of this test process, as the gateway
/// reserves one from the uid registry: `(first, ranges)`.
pub fn id_block() -> (u32, u32) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        ID_BASE + n * RANGES * fjord_runtime::container::IDS_PER_FUNCTION,
        RANGES,
    )
}

/// A container runtime as a server makes it: its functions get id ranges (the block is
/// in `ids`).
pub async fn runtime_with_ids(data_dir: &Path) -> (ContainerRuntime, (u32, u32)) {
    let block = id_block();
    let rt = ContainerRuntime::new(
        config(data_dir),
        ContainerConfig {
            id_block: Some(Arc::new(move || Ok(block))),
            ..ContainerConfig::default()
        },
    )
    .await
    .expect("the container runtime starts");
    (rt, block)
}

pub async fn runtime(data_dir: &Path) -> ContainerRuntime {
    runtime_with_ids(data_dir).await.0
}

/// The host id a replica's container root maps to, from its bundle's config.json.
pub fn container_root_host_id(replica: &str) -> u32 {
    let config = std::fs::read_dir("/run/fjord")
        .unwrap()
        .flatten()
        .map(|d| d.path().join(replica).join("config.json"))
        .find(|p| p.exists())
        .expect("the replica's config.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let m = &spec["linux"]["uidMappings"][0];
    assert_eq!(m["containerID"], 0);
    m["hostID"].as_u64().expect("hostID") as u32
}

/// Removes what a runtime on `data_dir` left when a test failed before its shutdown (its
/// containers would keep running after the test process): runc's containers, the bundles'
/// mounts. Nothing to do after a clean shutdown.
pub fn cleanup(data_dir: &Path) {
    let state = data_dir.join("runc");
    for e in std::fs::read_dir(&state).into_iter().flatten().flatten() {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force"])
            .arg(e.file_name())
            .status();
    }
    let ids: Vec<String> = std::fs::read_dir(data_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| {
            p.starts_with("/run/fjord/c-") && ids.iter().any(|id| p.contains(&format!("/{id}/")))
                || p.starts_with(&*data_dir.to_string_lossy())
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
    for instance in std::fs::read_dir("/run/fjord")
        .into_iter()
        .flatten()
        .flatten()
    {
        // The replicas' bundles only: another test's runtime may be using its instance dir.
        for id in &ids {
            let _ = std::fs::remove_dir_all(instance.path().join(id));
        }
    }
}

/// A data dir that cleans up after a failed test when dropped.
pub struct DataDir(pub tempfile::TempDir);

impl DataDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        cleanup(self.0.path());
    }
}
