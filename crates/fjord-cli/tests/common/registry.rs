//! A real OCI registry (Debian's `docker-registry`) on a free loopback port, and test images
//! assembled by independent tools (`umoci`, `skopeo`) from `busybox-static` — images fjord
//! did not write.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, panicking with its output when it fails; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    creds: Option<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry; with `auth`, it wants that user and password (htpasswd, bcrypt).
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = super::free_port();
        Self::start_at(dir, port, auth)
    }

    fn start_at(dir: tempfile::TempDir, port: u16, auth: Option<(&str, &str)>) -> Registry {
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = auth {
            let hash = bcrypt::hash(pass, 5).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: fjord-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: fjord-test-secret\n{auth_yaml}",
                storage.display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry; scripts/test installs it)");
        let reg = Registry {
            port,
            dir,
            creds: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`.
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// Pushes `layout:tag` (an OCI layout) as `repo:dest_tag` with skopeo; returns the
    /// manifest digest the registry has.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, dest_tag: &str) -> String {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.host()));
        run(&mut cmd);
        let mut inspect = Command::new("skopeo");
        inspect.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
        if let Some((u, p)) = &self.creds {
            inspect.arg(format!("--creds={u}:{p}"));
        }
        inspect.arg(format!("docker://{}/{repo}:{dest_tag}", self.host()));
        run(&mut inspect).trim().to_string()
    }

    /// Stops the registry.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes image `tag` in the OCI layout `layout` (made with `umoci init` if missing) with
/// umoci: `populate` fills its root filesystem, which becomes one layer, then `config`
/// (umoci `--config.*` flags) is applied.
pub fn umoci_image(layout: &Path, tag: &str, populate: impl FnOnce(&Path), config: &[String]) {
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let img = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = layout.with_file_name(format!("bundle-{tag}"));
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    populate(&bundle.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    run(Command::new("umoci")
        .args(["config", "--image", &img])
        .args(config));
}

/// Copies `binary` into `root` at the same path, with every library `ldd` lists for it
/// (those already there are kept).
pub fn copy_with_libs(root: &Path, binary: &Path) {
    let dest = root.join(binary.strip_prefix("/").unwrap_or(binary));
    std::fs::create_dir_all(dest.parent().expect("a parent")).expect("dir");
    std::fs::copy(binary, &dest).expect("copy the binary");
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = root.join(lib.trim_start_matches('/'));
        if !dest.exists() {
            std::fs::create_dir_all(dest.parent().expect("a parent")).expect("dir");
            std::fs::copy(lib, &dest).expect("copy a library");
        }
    }
}

/// The CGI every test image serves on 8080 (busybox httpd): `?secret=NAME` prints the
/// secret's file, `?id` the uid, `?write=PATH` tries to create PATH, `?net` lists the network
/// interfaces (`/proc/net/dev`); anything else answers
/// `hello $MARKER <body>`.
const CGI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ncase \"$QUERY_STRING\" in\n  secret=*) cat \"/var/openfaas/secrets/${QUERY_STRING#secret=}\" ;;\n  id) id -u ;;\n  net) cat /proc/net/dev ;;\n  write=*) if touch \"${QUERY_STRING#write=}\" 2>/dev/null; then echo wrote; else echo refused; fi ;;\n  *) printf 'hello %s ' \"$MARKER\"; cat ;;\nesac\n";

/// An OCI layout of test images, made with umoci from `/bin/busybox`.
pub struct Images {
    work: tempfile::TempDir,
}

impl Images {
    pub fn new() -> Images {
        let work = tempfile::Builder::new()
            .prefix("fjord-images-")
            .tempdir_in("/var/tmp")
            .expect("work dir");
        Images { work }
    }

    pub fn layout(&self) -> PathBuf {
        self.work.path().join("oci")
    }

    /// An image `tag` whose busybox httpd answers `hello <marker> <body>` on 8080. With
    /// `entrypoint` empty, the image has no Entrypoint and no Cmd.
    pub fn httpd(&self, tag: &str, marker: &str, entrypoint: &[&str]) -> &Self {
        self.httpd_with(tag, marker, entrypoint, &[], |_| {})
    }

    /// [`Self::httpd`] with more umoci `--config.*` flags and a last touch to the root
    /// filesystem.
    pub fn httpd_with(
        &self,
        tag: &str,
        marker: &str,
        entrypoint: &[&str],
        more_config: &[&str],
        finish: impl FnOnce(&Path),
    ) -> &Self {
        let mut config: Vec<String> = [
            "--config.env=PATH=/bin".to_string(),
            format!("--config.env=MARKER={marker}"),
            "--config.exposedports=8080/tcp".to_string(),
            "--config.workingdir=/".to_string(),
        ]
        .into();
        if let Some((first, rest)) = entrypoint.split_first() {
            config.push(format!("--config.entrypoint={first}"));
            config.extend(rest.iter().map(|a| format!("--config.cmd={a}")));
        }
        config.extend(more_config.iter().map(|c| c.to_string()));
        umoci_image(
            &self.layout(),
            tag,
            |root| {
                for d in ["bin", "etc", "tmp", "proc", "dev", "www/cgi-bin"] {
                    std::fs::create_dir_all(root.join(d)).expect("dir");
                }
                std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
                for applet in ["sh", "cat", "id", "touch", "httpd", "printf", "false"] {
                    std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                        .expect("applet");
                }
                std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
                    .expect("passwd");
                let cgi = root.join("www/cgi-bin/index.cgi");
                std::fs::write(&cgi, CGI).expect("cgi");
                run(Command::new("chmod").arg("0755").arg(&cgi));
                finish(root);
            },
            &config,
        );
        self
    }
}

/// The busybox httpd command line of the test images.
pub const HTTPD: [&str; 7] = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];
