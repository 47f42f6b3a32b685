//! The container runtime beyond the contract: real runc, images assembled from busybox.
//! Needs root (as every container does).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fjord_runtime::{ContainerRuntime, EndpointKind, FunctionHandle, Runtime, RuntimeError};
use fjord_runtime_api::ImageRootfs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(60);

/// A CGI that runs `$PROBE` (set per function in envVars) and answers with its output.
const PROBE_CGI: (&str, &str, u32) = (
    "www/cgi-bin/index.cgi",
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\neval \"$PROBE\" 2>&1\n",
    0o755,
);

/// A file only host root may read (layers are unpacked as root).
const ROOT_ONLY: (&str, &str, u32) = ("root-only", "host root's eyes only\n", 0o600);

/// Dropped in this order: the data dir's cleanup (after a failed test) before the layers.
struct Fixture {
    rt: Arc<ContainerRuntime>,
    /// The runtime's block of id ranges: `(first, ranges)`.
    ids: (u32, u32),
    dir: common::DataDir,
    layers: common::Layers,
}

async fn fixture() -> Fixture {
    let dir = common::data_dir();
    let (rt, ids) = common::runtime_with_ids(dir.path()).await;
    Fixture {
        rt: Arc::new(rt),
        ids,
        layers: common::Layers::busybox(&[PROBE_CGI, ROOT_ONLY]),
        dir,
    }
}

impl Fixture {
    fn httpd(&self) -> Arc<ImageRootfs> {
        self.layers.image(&common::HTTPD, &[])
    }

    /// A function whose answer is the output of `probe`, run inside its container.
    fn probe(
        &self,
        name: &str,
        probe: &str,
        extra: serde_json::Value,
    ) -> (fjord_core::FunctionSpec, fjord_runtime::Source) {
        let mut d = serde_json::json!({
            "service": name, "image": "fjord-test/probe:1",
            "envVars": {"PROBE": probe},
        });
        if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                d.insert(k.clone(), v.clone());
            }
        }
        common::spec(d, self.httpd())
    }

    async fn deploy(
        &self,
        (spec, source): (fjord_core::FunctionSpec, fjord_runtime::Source),
        replicas: u64,
    ) -> Arc<FunctionHandle> {
        self.rt.validate(&spec, &source).expect("valid");
        let applied = self
            .rt
            .apply(Arc::new(spec), source, replicas)
            .expect("apply");
        let h = applied.handle;
        assert!(
            h.wait_ready(PATIENCE).await,
            "no replica became ready: {:?}",
            h.status()
        );
        h
    }

    /// Mounts, runc containers and bundle directories of this runtime's replicas.
    fn leftovers(&self) -> Vec<String> {
        let data = std::fs::canonicalize(self.dir.path()).unwrap();
        let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&*data.join("containers").to_string_lossy()))
            .map(|l| format!("mount: {l}"))
            .collect();
        for d in ["runc", "containers"] {
            if let Ok(entries) = std::fs::read_dir(data.join(d)) {
                out.extend(
                    entries
                        .flatten()
                        .map(|e| format!("{d}: {:?}", e.file_name())),
                );
            }
        }
        out
    }
}

async fn wait_for(what: &str, h: &FunctionHandle, cond: impl Fn(&FunctionHandle) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond(h) {
        assert!(Instant::now() < deadline, "{what}: status {:?}", h.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn authorities(h: &FunctionHandle) -> Vec<String> {
    h.serving()
        .endpoints
        .iter()
        .map(|e| match &e.kind {
            EndpointKind::Http { authority } => authority.to_string(),
            EndpointKind::InProcess(_) => panic!("a container replica is an HTTP endpoint"),
        })
        .collect()
}

/// `POST /` to one replica; the body of its answer.
async fn call(authority: &str) -> String {
    let (host, port) = authority.rsplit_once(':').unwrap();
    let mut s = fjord_runtime::netns::connect(host, port.parse().unwrap())
        .await
        .expect("connect to the replica");
    s.write_all(b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        text.starts_with("HTTP/1.") && text[9..].starts_with("200"),
        "{text}"
    );
    text.split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string()
}

async fn call_any(h: &FunctionHandle) -> String {
    let a = authorities(h);
    call(a.first().expect("a ready replica")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_one_image_listen_on_the_same_port() {
    let f = fixture().await;
    let h = f
        .deploy(
            f.probe("same-port", "echo \"$HOSTNAME\"", serde_json::json!({})),
            2,
        )
        .await;
    wait_for("2 ready replicas", &h, |h| h.serving().endpoints.len() == 2).await;
    let a = authorities(&h);
    assert!(a.iter().all(|a| a.ends_with(":8080")), "{a:?}");
    assert_ne!(a[0], a[1], "each replica has its own network namespace");
    let (one, two) = (call(&a[0]).await, call(&a[1]).await);
    assert_ne!(
        one.trim(),
        two.trim(),
        "two replicas answered: {one:?} {two:?}"
    );
    assert!(one.starts_with("same-port-") && two.starts_with("same-port-"));
    f.rt.remove(&h.key).await.unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_then_rollback() {
    let f = fixture().await;
    let version = |marker: &str| {
        f.probe(
            "upd",
            &format!("echo hello {marker}"),
            serde_json::json!({}),
        )
    };
    let h = f.deploy(version("v1"), 1).await;
    assert_eq!(call_any(&h).await, "hello v1\n");
    for marker in ["v2", "v1"] {
        let (spec, source) = version(marker);
        let applied = f.rt.apply(Arc::new(spec), source, 1).unwrap();
        let outcome = tokio::time::timeout(PATIENCE, applied.done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, Ok(()));
        assert_eq!(call_any(&h).await, format!("hello {marker}\n"));
    }
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_and_back_and_remove_leave_nothing() {
    let f = fixture().await;
    let h = f
        .deploy(f.probe("zero", "echo up", serde_json::json!({})), 1)
        .await;
    assert!(
        !f.leftovers().is_empty(),
        "a running replica has a bundle and a container"
    );
    f.rt.scale(&h.key, 0).unwrap();
    wait_for("no replica", &h, |h| h.serving().endpoints.is_empty()).await;
    // At zero only the version's shared lower layers stay (one small directory of mount
    // points, for the next start): no replica's mount, directory or container.
    let of_replicas = || {
        f.leftovers()
            .into_iter()
            .filter(|l| !l.starts_with("containers: \".lower-"))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + PATIENCE;
    while !of_replicas().is_empty() {
        assert!(Instant::now() < deadline, "{:?}", of_replicas());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        f.leftovers().len(),
        1,
        "the version's lower layers: {:?}",
        f.leftovers()
    );
    f.rt.scale(&h.key, 1).unwrap();
    assert!(h.wait_ready(PATIENCE).await, "{:?}", h.status());
    assert_eq!(call_any(&h).await, "up\n");
    f.rt.remove(&h.key).await.unwrap();
    assert!(
        f.leftovers().is_empty(),
        "after remove: {:?}",
        f.leftovers()
    );
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_and_is_counted() {
    let f = fixture().await;
    // Touches 64 MiB in a 16 MiB cgroup as the container's main process.
    let image = f.layers.image(
        &[
            "/bin/sh",
            "-c",
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
        ],
        &[],
    );
    let (spec, source) = common::spec(
        serde_json::json!({"service": "oom", "image": "fjord-test/oom:1", "limits": {"memory": "16Mi"}}),
        image,
    );
    let applied = f.rt.apply(Arc::new(spec), source, 1).unwrap();
    let h = applied.handle;
    wait_for("an OOM kill counted", &h, |h| h.status().oom_kills >= 1).await;
    let err = h.status().last_error.unwrap_or_default();
    assert!(err.contains("OOMKilled"), "{err}");
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_visible_inside_only() {
    let f = fixture().await;
    let (spec, mut source) = f.probe(
        "with-secret",
        "cat /var/openfaas/secrets/api-key; echo; touch /var/openfaas/secrets/new 2>&1",
        serde_json::json!({}),
    );
    source.secrets.push(
        "api-key".into(),
        zeroize::Zeroizing::new(b"s3cr3t-value".to_vec()),
    );
    let h = f.deploy((spec, source), 1).await;
    let inside = call_any(&h).await;
    assert!(inside.starts_with("s3cr3t-value\n"), "{inside}");
    assert!(
        inside.contains("Read-only file system"),
        "secrets are read-only: {inside}"
    );
    let other = f
        .deploy(
            f.probe(
                "no-secret",
                "ls /var/openfaas/secrets/; cat /var/openfaas/secrets/api-key",
                serde_json::json!({}),
            ),
            1,
        )
        .await;
    let seen = call_any(&other).await;
    assert!(!seen.contains("s3cr3t"), "another function sees {seen:?}");
    // The bundle (secrets, rootfs) is closed to every other uid on the host.
    let id = h.serving().endpoints[0].replica.clone();
    let bundle = std::fs::read_dir("/run/fjord")
        .unwrap()
        .flatten()
        .map(|d| d.path().join(&*id))
        .find(|p| p.exists())
        .expect("the replica's bundle");
    let meta = std::fs::metadata(&bundle).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o710,
        "{}",
        bundle.display()
    );
    let root = common::container_root_host_id(&id);
    assert_eq!(meta.gid(), root, "group: the function's container root");
    let (first, ranges) = f.ids;
    assert!(
        (first..first + ranges * fjord_runtime::container::IDS_PER_FUNCTION).contains(&root),
        "container root {root} is in the runtime's block"
    );
    let config = std::fs::metadata(bundle.join("config.json")).unwrap();
    assert_eq!(config.permissions().mode() & 0o777, 0o600);
    // Never written to the data dir's disk.
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "s3cr3t-value"])
        .arg(f.dir.path())
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_root_filesystem_keeps_tmp_writable() {
    let f = fixture().await;
    let probe = "touch /x 2>&1 && echo root-written; touch /tmp/y && echo tmp-written";
    let ro = f
        .deploy(
            f.probe(
                "ro",
                probe,
                serde_json::json!({"readOnlyRootFilesystem": true}),
            ),
            1,
        )
        .await;
    let out = call_any(&ro).await;
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("root-written"), "{out}");
    assert!(out.contains("tmp-written"), "{out}");
    let rw = f
        .deploy(f.probe("rw", probe, serde_json::json!({})), 1)
        .await;
    let out = call_any(&rw).await;
    assert!(
        out.contains("root-written") && out.contains("tmp-written"),
        "{out}"
    );
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_at_once_shows_its_stderr_in_the_reason() {
    let f = fixture().await;
    let image = f.layers.image(
        &[
            "/bin/sh",
            "-c",
            "echo 'config file /etc/app.toml missing' >&2; exit 3",
        ],
        &[],
    );
    let (spec, source) = common::spec(
        serde_json::json!({"service": "dies", "image": "fjord-test/dies:1"}),
        image,
    );
    let h = f.rt.apply(Arc::new(spec), source, 1).unwrap().handle;
    wait_for("the replica's failure reported", &h, |h| {
        h.status()
            .last_error
            .is_some_and(|e| e.contains("config file /etc/app.toml missing"))
    })
    .await;
    let err = h.status().last_error.unwrap();
    assert!(err.contains("exited with status 3"), "{err}");
    f.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_entrypoint_or_cmd_needs_envprocess() {
    let f = fixture().await;
    let empty = f.layers.image(&[], &[]);
    let (spec, source) = common::spec(
        serde_json::json!({"service": "empty", "image": "fjord-test/empty:1"}),
        empty.clone(),
    );
    match f.rt.validate(&spec, &source) {
        Err(RuntimeError::Invalid(msg)) => {
            assert!(msg.contains("fjord-test/empty:1"), "{msg}");
            assert!(
                msg.contains("no Entrypoint or Cmd") && msg.contains("envProcess"),
                "{msg}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // envProcess is what runs then.
    let h = f
        .deploy(
            common::spec(
                serde_json::json!({
                    "service": "empty", "image": "fjord-test/empty:1",
                    "envProcess": "/bin/busybox httpd -f -p 8080 -h /www",
                    "envVars": {"PROBE": "echo from-envprocess"},
                }),
                empty,
            ),
            1,
        )
        .await;
    assert_eq!(call_any(&h).await, "from-envprocess\n");
    // Without the image (not pulled), nothing runs either.
    let (spec, mut source) = f.probe("unpulled", "true", serde_json::json!({}));
    source.image = None;
    assert!(matches!(
        f.rt.validate(&spec, &source),
        Err(RuntimeError::Invalid(_))
    ));
    f.rt.shutdown().await;
}

/// What container root tries, for [`confined_root`] and the tests' own checks: reads the
/// image's root-only file, writes `/etc/passwd` and `/`, and what only host root could do.
const ROOT_PROBE: &str = "id -u; cat /proc/self/uid_map; cat /root-only; touch /etc/passwd && echo passwd=ours; touch /made-inside; cat /proc/net/route; busybox unshare -n true; echo unshare=$?; busybox mount -t tmpfs x /mnt; echo mount=$?; echo 1 > /proc/sys/kernel/ns_last_pid; echo sysctl=$?; cat /proc/self/status";

/// Checks the output of [`ROOT_PROBE`]: uid 0 inside, with no namespaces, mounts or
/// sysctls (no CAP_SYS_ADMIN; the seccomp deny-list, installed as `Seccomp: 2` shows,
/// refuses them too), no new privileges, fewer capabilities than Docker's defaults, and
/// outbound network through its own eth0. Returns the fields of its `uid_map` line.
fn confined_root(out: &str) -> Vec<String> {
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "root inside: {out}");
    let map = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(
        out.contains("unshare=1") && out.contains("mount=1") && !out.contains("sysctl=0"),
        "{out}"
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    let status = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status("NoNewPrivs:"), "1", "{out}");
    assert_eq!(status("Seccomp:"), "2", "{out}");
    // No CAP_SYS_ADMIN (21), CAP_NET_RAW (13), CAP_MKNOD (27).
    let eff = u64::from_str_radix(&status("CapEff:"), 16).expect("CapEff");
    assert_eq!(eff & (1 << 21 | 1 << 13 | 1 << 27), 0, "{out}");
    assert_ne!(eff, 0, "container root keeps some capabilities: {out}");
    // The replica's own eth0 (a veth to the host, NAT'd and filtered by the network pool)
    // is its default route.
    assert!(
        out.lines().any(|l| l.starts_with("eth0\t00000000\t")),
        "no default route through eth0: {out}"
    );
    map
}

/// Container root is host id `first` of the function's range: the image's files are its
/// own (seen through idmapped layers), what it writes lands on the host as `first`, and it
/// has no power beyond its namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_root_is_not_host_root() {
    let f = fixture().await;
    let h = f
        .deploy(f.probe("whoami", ROOT_PROBE, serde_json::json!({})), 1)
        .await;
    let out = call_any(&h).await;
    let map = confined_root(&out);
    let id = h.serving().endpoints[0].replica.clone();
    let root = common::container_root_host_id(&id);
    assert_eq!(map, ["0", &root.to_string(), "65536"], "{out}");
    assert_ne!(root, 0);
    // The image's root-owned files are container root's own.
    assert!(out.contains("host root's eyes only"), "{out}");
    assert!(out.contains("passwd=ours"), "{out}");
    // What it wrote is the function's id on the host, in the replica's upper dir only.
    let upper = f.dir.path().join("containers").join(&*id).join("upper");
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(upper.join("made-inside")).expect("written to the upper dir");
    assert_eq!((made.uid(), made.gid()), (root, root));
    assert_eq!(
        std::fs::metadata(upper.join("etc/passwd")).unwrap().uid(),
        root,
        "copied up as the function's"
    );
    for layer in &f.layers.layers {
        assert!(!layer.join("made-inside").exists());
        let passwd = layer.join("etc/passwd");
        if passwd.exists() {
            assert_eq!(
                std::fs::metadata(passwd).unwrap().uid(),
                0,
                "layers never change"
            );
        }
    }
    f.rt.shutdown().await;
}

/// An image whose `User` is not root (as most OpenFaaS templates' images: `USER app`) runs
/// as that user, with its groups, owns its home (the layer's files keep their owners), reads
/// its secrets, has no capabilities and cannot write root's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_user_runs_as_itself_and_owns_its_home() {
    let f = fixture().await;
    let layers = common::Layers::busybox(&[
        PROBE_CGI,
        ("home/app/.profile", "export HELLO=1\n", 0o644),
        (
            "etc/group",
            "root:x:0:\napp:x:1000:\nwww-data:x:33:app\n",
            0o644,
        ),
    ]);
    let app = layers.path().join("app");
    std::fs::write(
        app.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    for p in ["home/app", "home/app/.profile"] {
        std::os::unix::fs::chown(app.join(p), Some(1000), Some(1000)).unwrap();
    }
    let mut image = (*layers.image(&common::HTTPD, &[])).clone();
    image.config.user = Some("app".into());
    let (spec, mut source) = common::spec(
        serde_json::json!({
            "service": "as-app", "image": "fjord-test/app:1",
            "envVars": {"PROBE": "id; echo hi > /home/app/note && cat /home/app/note; ls -ln /home/app/.profile; touch /etc/motd; echo etc=$?; cat /var/openfaas/secrets/token; echo; grep CapEff /proc/self/status"},
        }),
        Arc::new(image),
    );
    source
        .secrets
        .push("token".into(), zeroize::Zeroizing::new(b"t0k3n".to_vec()));
    let h = f.deploy((spec, source), 1).await;
    let out = call_any(&h).await;
    let id_line = out.lines().next().unwrap_or_default();
    assert!(
        id_line.starts_with("uid=1000(app) gid=1000(app) groups=")
            && id_line.contains("1000(app)")
            && id_line.contains("33(www-data)"),
        "{out}"
    );
    assert!(out.contains("\nhi\n"), "writes its home: {out}");
    assert!(
        out.contains(" 1000     1000 ") || out.contains(" 1000 1000 "),
        "its files keep their owner: {out}"
    );
    assert!(
        out.contains("Permission denied") && out.contains("etc=1"),
        "{out}"
    );
    assert!(out.contains("t0k3n"), "reads its secrets: {out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    // On the host: the note is the function's id for container uid 1000, in the upper dir.
    let id = h.serving().endpoints[0].replica.clone();
    let root = common::container_root_host_id(&id);
    let note = f
        .dir
        .path()
        .join("containers")
        .join(&*id)
        .join("upper/home/app/note");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&note).expect("the note in the upper dir");
    assert_eq!((meta.uid(), meta.gid()), (root + 1000, root + 1000));
    assert!(!app.join("home/app/note").exists(), "layers never change");
    f.rt.shutdown().await;
}

/// Two functions never share a range; a removed function's range goes to another only
/// after the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_has_its_own_range() {
    let f = fixture().await;
    let a = f
        .deploy(f.probe("range-a", "id -u", serde_json::json!({})), 1)
        .await;
    let b = f
        .deploy(f.probe("range-b", "id -u", serde_json::json!({})), 2)
        .await;
    wait_for("both replicas of range-b", &b, |h| {
        h.serving().endpoints.len() == 2
    })
    .await;
    let host = |h: &FunctionHandle| -> Vec<u32> {
        h.serving()
            .endpoints
            .iter()
            .map(|e| common::container_root_host_id(&e.replica))
            .collect()
    };
    let (ra, rb) = (host(&a), host(&b));
    assert_eq!(rb.len(), 2);
    assert_eq!(rb[0], rb[1], "replicas of one function share its range");
    let size = fjord_runtime::container::IDS_PER_FUNCTION;
    assert!(ra[0].abs_diff(rb[0]) >= size, "{ra:?} {rb:?}");
    f.rt.remove(&a.key).await.unwrap();
    let c = f
        .deploy(f.probe("range-c", "id -u", serde_json::json!({})), 1)
        .await;
    let rc = host(&c);
    assert!(
        !rc.contains(&ra[0]) && !rc.contains(&rb[0]),
        "{ra:?} {rb:?} {rc:?}"
    );
    f.rt.shutdown().await;
}

/// A runtime given no id block (or on a filesystem without idmapped mounts): container
/// root is the function's uid, the image's files are the host root's, out of its reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_id_ranges_container_root_alone_maps_to_the_function_uid() {
    let dir = common::data_dir();
    let f = Fixture {
        rt: Arc::new(
            ContainerRuntime::new(
                common::config(dir.path()),
                fjord_runtime::ContainerConfig::default(),
            )
            .await
            .unwrap(),
        ),
        ids: (0, 0),
        layers: common::Layers::busybox(&[PROBE_CGI, ROOT_ONLY]),
        dir,
    };
    let h = f
        .deploy(f.probe("whoami", ROOT_PROBE, serde_json::json!({})), 1)
        .await;
    let out = call_any(&h).await;
    let map = confined_root(&out);
    assert_eq!(map, ["0", &common::UID.to_string(), "1"], "{out}");
    assert!(!out.contains("host root's eyes only"), "{out}");
    assert_eq!(
        out.matches("Permission denied").count(),
        2,
        "a host-root file is neither readable nor writable: {out}"
    );
    assert!(!out.contains("passwd=ours"), "{out}");
    f.rt.shutdown().await;
}

/// Cold start, apply → ready, p50 over 20 runs, next to `runc run` of the same bundle
/// alone (until its port accepts). Printed, not asserted (the machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_figures() {
    const RUNS: usize = 20;
    let f = fixture().await;
    let mut fjord = Vec::new();
    let mut config = None;
    for i in 0..RUNS {
        let (spec, source) = f.probe(&format!("cold{i}"), "echo ok", serde_json::json!({}));
        let t = Instant::now();
        let applied = f.rt.apply(Arc::new(spec), source, 1).unwrap();
        assert!(
            applied.handle.wait_ready(PATIENCE).await,
            "{:?}",
            applied.handle.status()
        );
        fjord.push(t.elapsed());
        if config.is_none() {
            let id = applied.handle.serving().endpoints[0].replica.clone();
            let bundles = std::fs::read_dir("/run/fjord").unwrap().flatten();
            config = bundles
                .map(|b| b.path().join(&*id).join("config.json"))
                .find(|p| p.exists())
                .map(|p| std::fs::read_to_string(p).unwrap());
        }
        f.rt.remove(&applied.handle.key).await.unwrap();
    }
    let runc = runc_alone(&f, &config.expect("the replica's config.json"), RUNS).await;
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (a, b) = (p50(&mut fjord), p50(&mut runc.clone()));
    println!(
        "cold start p50 over {RUNS}: fjord apply->ready {:.1} ms, runc run alone {:.1} ms, ratio {:.2}",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        a.as_secs_f64() / b.as_secs_f64()
    );
    f.rt.shutdown().await;
}

/// `runc run` of the replica's own config (same layers, overlay, user namespace, seccomp)
/// in a network namespace of the test, until port 8080 accepts.
async fn runc_alone(f: &Fixture, config: &str, runs: usize) -> Vec<Duration> {
    let work = tempfile::Builder::new()
        .prefix("fjord-container-bench-")
        .tempdir_in("/run/fjord")
        .unwrap();
    let dir = work.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let upper = tempfile::tempdir_in(f.dir.path()).unwrap();
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir(if d == "rootfs" {
            dir.join(d)
        } else {
            upper.path().join(d)
        })
        .unwrap();
    }
    let spec: serde_json::Value = serde_json::from_str(config).unwrap();
    let root = spec["linux"]["uidMappings"][0]["hostID"].as_u64().unwrap() as u32;
    std::os::unix::fs::chown(upper.path().join("upper"), Some(root), Some(root)).unwrap();
    let lower: Vec<String> = f
        .layers
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let ns_name = format!("fjord-bench-{}", std::process::id());
    let sh = |cmd: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cmd}");
    };
    sh(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={u}/upper,workdir={u}/work {}",
        lower.join(":"),
        dir.join("rootfs").display(),
        u = upper.path().display()
    ));
    sh(&format!(
        "ip netns add {ns_name} && ip -n {ns_name} link set lo up"
    ));
    let mut spec: serde_json::Value = serde_json::from_str(config).unwrap();
    spec["root"]["path"] = dir.join("rootfs").display().to_string().into();
    spec["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = format!("/run/netns/{ns_name}").into();
        }
    }
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/var/openfaas/secrets");
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    let ns_fd: std::os::fd::OwnedFd = std::fs::File::open(format!("/run/netns/{ns_name}"))
        .unwrap()
        .into();
    let state = dir.join("state");
    let mut times = Vec::new();
    for i in 0..runs {
        let id = format!("bench-{i}");
        let t = Instant::now();
        let mut child = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(dir)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while fjord_runtime::netns::connect_in(&ns_fd, 8080)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "runc alone: never listening");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t.elapsed());
        let _ = tokio::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["kill", &id, "KILL"])
            .status()
            .await;
        let _ = child.wait().await;
    }
    sh(&format!("umount {}", dir.join("rootfs").display()));
    sh(&format!("ip netns del {ns_name}"));
    times
}

/// A server running both runtimes makes the container one from the process one: one
/// network pool (one nftables table, one address range), one cgroup root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_the_process_runtime() {
    let dir = common::data_dir();
    let process = fjord_runtime::ProcessRuntime::new(common::config(dir.path()))
        .await
        .unwrap();
    let containers = process
        .container(fjord_runtime::ContainerConfig::default())
        .await
        .unwrap();
    let layers = common::Layers::busybox(&[PROBE_CGI]);
    let (spec, source) = common::spec(
        serde_json::json!({"service": "boxed", "image": "fjord-test/probe:1", "envVars": {"PROBE": "echo boxed"}}),
        layers.image(&common::HTTPD, &[]),
    );
    let c = containers.apply(Arc::new(spec), source, 1).unwrap().handle;
    let d: fjord_core::openfaas::FunctionDeployment = serde_json::from_value(serde_json::json!({
        "service": "plain", "image": "sh", "envProcess": "/bin/sh -c 'exec busybox httpd -f -p $PORT -h /'",
        "envVars": {"mode": "http"},
    }))
    .unwrap();
    let source = fjord_runtime::Source {
        uid: common::UID + 1,
        ..Default::default()
    };
    let p = process
        .apply(
            Arc::new(fjord_core::FunctionSpec::from_deployment(d).unwrap()),
            source,
            1,
        )
        .unwrap()
        .handle;
    assert!(c.wait_ready(PATIENCE).await, "{:?}", c.status());
    assert!(p.wait_ready(PATIENCE).await, "{:?}", p.status());
    assert_eq!(c.runtime, "container");
    assert_eq!(p.runtime, "process");
    assert_eq!(call_any(&c).await, "boxed\n");
    let (ca, pa) = (authorities(&c), authorities(&p));
    assert_ne!(
        ca[0].split(':').next(),
        pa[0].split(':').next(),
        "each has its own namespace"
    );
    containers.shutdown().await;
    process.shutdown().await;
}
