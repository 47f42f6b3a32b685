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

pub async fn runtime(data_dir: &Path) -> ContainerRuntime {
    ContainerRuntime::new(config(data_dir), ContainerConfig::default())
        .await
        .expect("the container runtime starts")
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
