//! Test fixtures: a real `docker-registry` on a free loopback port, and OCI images built by
//! independent tools (umoci, skopeo, Python's tarfile) from `busybox-static`.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `cond` holds (polling), failing after `secs`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One plain HTTP/1.0 GET on loopback: the status code, or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// A `docker-registry` with filesystem storage in a temp dir, stopped on drop.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub auth: Option<(String, String)>,
    child: Child,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = auth {
            let hash = bcrypt::hash(pass, 5).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: fjord-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: fjord-test-secret\n{auth_yaml}",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let reg = Registry {
            port,
            dir,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            child,
        };
        wait_for("the registry to answer /v2/", 30, || {
            matches!(http_get(port, "/v2/"), Some(200 | 401))
        });
        reg
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `layout:tag` (an OCI layout) to `repo:dest_tag` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, dest_tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.host()));
        run(&mut cmd);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests the registry served to oci-client (access log lines), after making sure the
    /// log caught up: a marker request is sent and waited for.
    pub fn client_requests(&self, marker: &str) -> Vec<String> {
        let path = format!("/v2/?marker={marker}");
        http_get(self.port, &path);
        wait_for("the registry's access log", 10, || {
            self.log().contains(&path)
        });
        self.log()
            .lines()
            .filter(|l| l.contains("\"oci-client/") && l.contains(" /v2/"))
            .map(str::to_string)
            .collect()
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an uncompressed tar with Python's tarfile from a list of entries:
/// `(kind, name, arg)` with kind `dir`, `file` (arg: content), `zeros` or `random` (arg:
/// size), `symlink` (arg: target).
pub fn craft_tar(path: &Path, entries: &[(&str, &str, &str)]) {
    let spec = serde_json::to_string(entries).unwrap();
    let script = r#"
import io, json, os, sys, tarfile
entries = json.loads(sys.argv[2])
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    for kind, name, arg in entries:
        ti = tarfile.TarInfo(name)
        ti.mtime = 0
        if kind == "dir":
            ti.type = tarfile.DIRTYPE; ti.mode = 0o755; t.addfile(ti)
        elif kind == "symlink":
            ti.type = tarfile.SYMTYPE; ti.linkname = arg; t.addfile(ti)
        elif kind == "zeros":
            ti.size = int(arg); ti.mode = 0o644; t.addfile(ti, io.BytesIO(bytes(ti.size)))
        elif kind == "random":
            ti.size = int(arg); ti.mode = 0o644; t.addfile(ti, io.BytesIO(os.urandom(ti.size)))
        else:
            data = arg.encode(); ti.size = len(data); ti.mode = 0o644; t.addfile(ti, io.BytesIO(data))
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(spec));
}

/// The OCI layout every test pushes from, built once per test process:
/// - `base`: busybox-static at /bin/busybox, `/bin/sh -> /bin/busybox` (absolute), a hard
///   link, a setuid file, a file owned 1234:5678 mode 0640, `etc/removed`, `opq/old`.
/// - `wh`: base + a umoci layer deleting `etc/removed` (a whiteout).
/// - `opq`: base + a layer making `opq/` opaque and adding `opq/new`.
/// - `other`: base + a layer adding `other` (shares base's layer).
/// - `dotdot`, `escape`: base + a layer with `../x`, or writing through `evil -> /etc`.
/// - `big`: base + a layer holding 3 MiB of zeros.
/// - `noise`: base + a layer holding 4 MiB of random bytes (as large compressed).
/// - `multi`: an image index listing only a linux/arm64 image.
pub fn layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fjord-oci-layout");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let l = work.join("oci");
        let li = format!("{}", l.display());
        let img = |tag: &str| format!("{li}:{tag}");
        run(Command::new("umoci").args(["init", "--layout", &li]));
        run(Command::new("umoci").args(["new", "--image", &img("base")]));
        let b = work.join("bundle-base");
        run(Command::new("umoci")
            .args(["unpack", "--image", &img("base")])
            .arg(&b));
        let r = b.join("rootfs");
        for d in ["bin", "etc", "opq", "tmp"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        std::fs::hard_link(r.join("bin/busybox"), r.join("bin/busybox-hl")).unwrap();
        std::fs::write(r.join("bin/suid"), "x").unwrap();
        run(Command::new("chmod").arg("4755").arg(r.join("bin/suid")));
        std::fs::write(r.join("etc/owned"), "mine").unwrap();
        run(Command::new("chown")
            .arg("1234:5678")
            .arg(r.join("etc/owned")));
        run(Command::new("chmod").arg("0640").arg(r.join("etc/owned")));
        run(Command::new("chmod").arg("1777").arg(r.join("tmp")));
        std::fs::write(r.join("etc/removed"), "gone soon").unwrap();
        // An old, whole-second mtime, to check that unpacking keeps it.
        run(Command::new("touch")
            .arg("-d")
            .arg("@1000000000")
            .arg(r.join("bin/busybox")));
        std::fs::write(r.join("opq/old"), "hidden soon").unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &img("base")])
            .arg(&b));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &img("base"),
            "--config.entrypoint=/bin/sh",
            "--config.cmd=-c",
            "--config.cmd=echo hi",
            "--config.env=FOO=bar",
            "--config.workingdir=/tmp",
            "--config.user=1000:1000",
            "--config.exposedports=8080/tcp",
        ]));

        let w = work.join("bundle-wh");
        run(Command::new("umoci")
            .args(["unpack", "--image", &img("base")])
            .arg(&w));
        std::fs::remove_file(w.join("rootfs/etc/removed")).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &img("wh")])
            .arg(&w));

        let add = |tag: &str, entries: &[(&str, &str, &str)]| {
            let tar = work.join(format!("{tag}.tar"));
            craft_tar(&tar, entries);
            run(Command::new("umoci")
                .args(["raw", "add-layer", "--image", &img("base"), "--tag", tag])
                .arg(&tar));
        };
        add(
            "opq",
            &[
                ("dir", "opq", ""),
                ("file", "opq/.wh..wh..opq", ""),
                ("file", "opq/new", "fresh"),
            ],
        );
        add("other", &[("file", "other", "another image")]);
        add("dotdot", &[("file", "../x", "escaped")]);
        add(
            "escape",
            &[
                ("symlink", "evil", "/etc"),
                ("file", "evil/pwned", "escaped"),
            ],
        );
        add("big", &[("zeros", "big", &(3u64 << 20).to_string())]);
        add("noise", &[("random", "noise", &(4u64 << 20).to_string())]);
        add("unique", &[("file", "unique", "tamper with me")]);

        // An index listing only a linux/arm64 image.
        run(Command::new("umoci").args(["new", "--image", &img("arm")]));
        run(Command::new("umoci").args(["config", "--image", &img("arm"), "--architecture=arm64"]));
        let index_path = l.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let arm = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "arm")
            .unwrap()
            .clone();
        let mut entry = arm.clone();
        entry.as_object_mut().unwrap().remove("annotations");
        entry["platform"] = serde_json::json!({"architecture": "arm64", "os": "linux"});
        let multi = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        }))
        .unwrap();
        let hex = run(Command::new("sha256sum").arg("-").stdin(pipe_bytes(&multi)))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        std::fs::write(l.join("blobs/sha256").join(&hex), &multi).unwrap();
        index["manifests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": format!("sha256:{hex}"),
                "size": multi.len(),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }));
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        l
    })
}

fn pipe_bytes(bytes: &[u8]) -> Stdio {
    let f = tempfile::tempfile().unwrap();
    let mut f2 = f.try_clone().unwrap();
    f2.write_all(bytes).unwrap();
    use std::io::Seek as _;
    f2.seek(std::io::SeekFrom::Start(0)).unwrap();
    Stdio::from(f)
}

/// The manifest of `tag` in the layout (skopeo pushes it unchanged).
pub fn layout_manifest(tag: &str) -> serde_json::Value {
    let l = layout();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_slice(
        &std::fs::read(
            l.join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap()
}
