//! Issue 11, items 7 and 8: what a function's own code could do to the host and to other
//! functions through the process sandbox, through the real `fjord serve` as root. Each test
//! is an attack that worked before the sandbox was hardened: privilege through setuid
//! binaries, dangerous system calls, other processes' command lines, files left in the host's
//! world-writable directories, an unbounded `/tmp`, no memory limit by default, and file
//! descriptors inherited from fjord.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{ServeOpts, Server, fork_fn, text};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The lines of `/proc/self/status` named `keys`, as `key: value` with tabs collapsed.
fn status_lines(body: &str, keys: &[&str]) -> Vec<String> {
    body.lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k}:"))))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setuid_binary_gives_no_privilege_and_no_capability_is_left() {
    // A setuid-root program the function can run, outside the directories the sandbox
    // mounts nosuid, as `su` or `passwd` are.
    let dir = tempfile::Builder::new()
        .prefix("fjord-suid-")
        .tempdir_in("/opt")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cat = dir.path().join("cat");
    std::fs::copy("/bin/cat", &cat).unwrap();
    std::fs::set_permissions(&cat, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let s = Server::start().await;
    let script = format!(
        "sh -c 'cat /proc/self/status; echo ===; {} /proc/self/status'",
        cat.display()
    );
    s.deploy_ready(&fork_fn("suid", &script)).await;
    let (st, body) = s.call("suid").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (plain, setuid) = body.split_once("===").expect("both outputs");
    let keys = [
        "NoNewPrivs",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
    ];
    let zero = "0000000000000000";
    // In the order /proc/self/status lists them.
    let expected: Vec<String> = [
        format!("CapInh: {zero}"),
        format!("CapPrm: {zero}"),
        format!("CapEff: {zero}"),
        format!("CapBnd: {zero}"),
        format!("CapAmb: {zero}"),
        "NoNewPrivs: 1".to_string(),
    ]
    .into();
    assert_eq!(status_lines(plain, &keys), expected, "{plain}");
    // The setuid program runs with the function's uid, not root's, and no capability.
    assert_eq!(status_lines(setuid, &keys), expected, "{setuid}");
    let uids = status_lines(setuid, &["Uid"]);
    let uid = uids[0].split(' ').nth(1).unwrap().to_string();
    assert_ne!(uid, "0", "{setuid}");
    assert_eq!(uids[0], format!("Uid: {uid} {uid} {uid} {uid}"), "{setuid}");
}

/// Python: each system call the seccomp filter denies, with harmless arguments, printing
/// `name=<return value>/<errno>`.
const SYSCALLS: &str = r#"
import ctypes, platform
libc = ctypes.CDLL(None, use_errno=True)
arm = platform.machine() == "aarch64"
nr = {"unshare": 97 if arm else 272, "keyctl": 219 if arm else 250,
      "personality": 92 if arm else 135, "io_uring_setup": 425, "clone3": 435,
      "bpf": 280 if arm else 321, "userfaultfd": 282 if arm else 323}
params = ctypes.create_string_buffer(256)
calls = [("unshare", [0x10000000]), ("keyctl", [0, -3, 0]), ("personality", [0x0400000]),
         ("io_uring_setup", [1, params]), ("clone3", [params, 88]),
         ("bpf", [0, params, 72]), ("userfaultfd", [1])]
if not arm:
    # The x32 ABI: same call, number | 0x40000000, past a deny-list by number.
    nr["x32_unshare"] = 0x40000000 | 272
    calls.append(("x32_unshare", [0x10000000]))
for name, args in calls:
    ctypes.set_errno(0)
    r = libc.syscall(nr[name], *args)
    print(name + "=" + str(r) + "/" + str(ctypes.get_errno()), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_system_calls_fail_with_eperm() {
    assert!(!SYSCALLS.contains('\''));
    let s = Server::start().await;
    let process = format!("/usr/bin/python3 -c '{SYSCALLS}'");
    s.deploy_ready(&fork_fn("syscalls", &process)).await;
    let (st, body) = s.call("syscalls").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let eperm = nix::errno::Errno::EPERM as i32;
    for name in [
        "unshare",
        "keyctl",
        "personality",
        "io_uring_setup",
        "bpf",
        "userfaultfd",
    ] {
        assert!(
            body.contains(&format!("{name}=-1/{eperm}\n")),
            "{name} must fail with EPERM: {body}"
        );
    }
    // clone3 cannot be inspected: ENOSYS makes libc fall back to clone, which is.
    assert!(
        body.contains(&format!("clone3=-1/{}\n", nix::errno::Errno::ENOSYS as i32)),
        "{body}"
    );
    if cfg!(target_arch = "x86_64") {
        assert!(
            body.contains(&format!(
                "x32_unshare=-1/{}\n",
                nix::errno::Errno::ENOSYS as i32
            )),
            "{body}"
        );
    }
    // The util-linux tools hit the same wall (user and mount namespaces).
    s.deploy_ready(&fork_fn(
        "tools",
        "sh -c 'unshare -U true 2>&1; echo rc=$?; unshare -m true 2>&1; echo rc=$?'",
    ))
    .await;
    let (_, body) = s.call("tools").await;
    assert_eq!(body.matches("Operation not permitted").count(), 2, "{body}");
    assert!(!body.contains("rc=0"), "{body}");
    // Ordinary work still runs (threads through clone, files, pipes).
    s.deploy_ready(&fork_fn(
        "ordinary",
        "/usr/bin/python3 -c 'import threading, subprocess; t = threading.Thread(target=print, args=(\"thread\",)); t.start(); t.join(); print(subprocess.run([\"echo\", \"child\"], capture_output=True).stdout.decode().strip())'",
    ))
    .await;
    assert_eq!(
        s.call("ordinary").await,
        (StatusCode::OK, "thread\nchild\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_processes_are_invisible() {
    let s = Server::start().await;
    let gw = s.pid();
    let script = format!(
        "sh -c 'cat /proc/{gw}/cmdline 2>&1; echo; cat /proc/1/environ >/dev/null 2>&1 && echo init-visible; for p in /proc/[0-9]*; do echo pid $p; done'"
    );
    s.deploy_ready(&fork_fn("peek", &script)).await;
    let (st, body) = s.call("peek").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(
        !body.contains("serve") && !body.contains("--data-dir"),
        "the gateway's command line leaked: {body}"
    );
    assert!(body.contains("No such file"), "{body}");
    assert!(!body.contains("init-visible"), "{body}");
    // Its own processes are listed (the sandbox's procfs works), not root's. (Other test
    // servers' functions may share its uid: issue 11 item 6, not this test's concern.)
    assert!(body.contains("pid /proc/"), "{body}");
    for pid in [gw, 1] {
        assert!(
            !body.contains(&format!("pid /proc/{pid}\n")),
            "process {pid} listed in /proc: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_writable_host_directories_are_private_or_read_only() {
    let marker = format!("fjord-attack-{}", std::process::id());
    let dirs = ["/var/tmp", "/dev/shm", "/run/lock"];
    let mut script = String::from("sh -c '");
    for d in dirs {
        script.push_str(&format!(
            "if echo x > {d}/{marker} 2>/dev/null; then echo {d}=written; else echo {d}=refused; fi; "
        ));
    }
    script.push('\'');
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("litter", &script)).await;
    let mut ro = fork_fn("litter-ro", &script);
    ro["readOnlyRootFilesystem"] = json!(true);
    s.deploy_ready(&ro).await;

    let (st, body) = s.call("litter").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, ro_body) = s.call("litter-ro").await;
    assert_eq!(st, StatusCode::OK, "{ro_body}");
    for d in dirs {
        let host = std::path::Path::new(d).join(&marker);
        let leaked = host.exists();
        let _ = std::fs::remove_file(&host);
        assert!(!leaked, "{} reached the host: {body}", host.display());
        // Read-only root: nothing but /tmp is writable, not even privately.
        assert!(ro_body.contains(&format!("{d}=refused")), "{ro_body}");
    }
    // Without it the scratch dirs are usable, just private (the test's data dir is under
    // /var/tmp, which therefore is read-only rather than hidden).
    assert!(body.contains("/dev/shm=written"), "{body}");
    assert!(body.contains("/run/lock=written"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_a_bounded_tmpfs_that_lasts_the_replica() {
    let s = Server::start_opts(ServeOpts::args(&["--tmp-size", "16Mi"])).await;
    let fill = "sh -c 'dd if=/dev/zero of=/tmp/fill bs=1M count=32 2>&1; echo rc=$?; rm -f /tmp/fill; df -k /tmp | tail -1'";
    s.deploy_ready(&fork_fn("filler", fill)).await;
    let (st, body) = s.call("filler").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    assert!(body.contains("tmpfs"), "/tmp must be a tmpfs: {body}");
    assert!(!body.contains("rc=0"), "{body}");

    // A function may ask for more.
    let mut big = fork_fn("big-tmp", fill);
    big["annotations"] = json!({"com.fjord.tmp-size": "48Mi"});
    s.deploy_ready(&big).await;
    let (_, body) = s.call("big-tmp").await;
    assert!(body.contains("rc=0"), "{body}");

    // Fork mode: a process per request, one /tmp per replica.
    s.deploy_ready(&fork_fn(
        "counter",
        "sh -c 'echo x >> /tmp/count; wc -l < /tmp/count'",
    ))
    .await;
    for n in 1..=3 {
        assert_eq!(s.call("counter").await, (StatusCode::OK, format!("{n}\n")));
    }

    // The replica's tmpfs lives in fjord's own mount namespace (never the host's) and goes
    // with the replica: its memory is not kept.
    let mounts = || {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", s.pid()))
            .unwrap()
            .lines()
            .filter(|l| l.contains("/replicas/counter-") && l.contains(" - tmpfs "))
            .count()
    };
    assert_eq!(mounts(), 1);
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains("/replicas/"), "{host}");
    s.remove("counter").await;
    assert_eq!(mounts(), 0);

    // A bad size is a 400 naming the annotation.
    let mut bad = fork_fn("bad-tmp", "cat");
    bad["annotations"] = json!({"com.fjord.tmp-size": "lots"});
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &bad,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("com.fjord.tmp-size"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_without_limits_get_the_default_memory_limit() {
    let s = Server::start().await;
    let hog = "python3 -c 'import sys; b = bytearray(int(sys.stdin.read() or 0) << 20); b[::4096] = b\"x\" * len(b[::4096]); print(\"allocated\", len(b))'";
    s.deploy_ready(&fork_fn("hog", hog)).await;
    let status = s.get_function("hog").await.unwrap();
    assert_eq!(status["fjord"]["memoryLimit"], "256Mi", "{status}");
    assert!(status["limits"].is_null(), "{status}");
    let (st, body) = s.call_text(Method::POST, "hog", "400").await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("out of memory"), "{body}");
    let r = s
        .invoke(Method::POST, "hog")
        .body("16")
        .send()
        .await
        .unwrap();
    assert_eq!(
        text(r).await,
        (StatusCode::OK, format!("allocated {}\n", 16 << 20))
    );

    // A function's own limit wins and is shown as given.
    let mut own = fork_fn("own", "cat");
    own["limits"] = json!({"memory": "512M"});
    s.deploy_ready(&own).await;
    let status = s.get_function("own").await.unwrap();
    assert_eq!(status["fjord"]["memoryLimit"], "512M", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_memory_limit_can_be_changed_or_turned_off() {
    let s = Server::start_opts(ServeOpts::args(&["--default-memory-limit", "0"])).await;
    s.deploy_ready(&fork_fn("free", "cat")).await;
    let status = s.get_function("free").await.unwrap();
    assert!(status["fjord"]["memoryLimit"].is_null(), "{status}");
    drop(s);
    let s = Server::start_opts(ServeOpts::args(&["--default-memory-limit", "64Mi"])).await;
    s.deploy_ready(&fork_fn("small", "cat")).await;
    let status = s.get_function("small").await.unwrap();
    assert_eq!(status["fjord"]["memoryLimit"], "64Mi", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_of_fjord_reaches_a_function() {
    // Whatever started fjord may leave descriptors without close-on-exec (the attacker saw
    // fds 10 and 251): give the server one.
    use std::os::fd::AsRawFd;
    let leak = std::fs::File::open("/dev/null").unwrap();
    nix::fcntl::fcntl(
        &leak,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("fds", "ls -l /proc/self/fd")).await;
    let (st, body) = s.call("fds").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    for line in body.lines().filter(|l| l.contains(" -> ")) {
        let fd: i32 = line
            .split(" -> ")
            .next()
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        // 0-2, and the directory ls itself is reading.
        assert!(
            fd <= 2 || line.ends_with("/fd"),
            "fd {fd} leaked into the function (the test's was {}): {body}",
            leak.as_raw_fd()
        );
    }
    drop(leak);
}

/// An http-mode function answering with its sandbox as it sees it: its status lines, the
/// filesystem type of `/tmp`, and a count kept in `/tmp` across requests.
const PY_SELF: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        with open("/tmp/count", "a") as f:
            f.write("x")
        lines = [l for l in open("/proc/self/status") if l.startswith(("NoNewPrivs", "CapEff", "CapBnd", "Seccomp:"))]
        tmp = [l.split(" - ")[1].split()[0] for l in open("/proc/self/mountinfo") if l.split()[4] == "/tmp"]
        body = ("".join(lines) + "tmp " + tmp[-1] + "\ncount " + str(len(open("/tmp/count").read())) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_replicas_get_the_same_sandbox() {
    assert!(!PY_SELF.contains('\''));
    let s = Server::start().await;
    s.deploy_ready(&json!({
        "service": "self",
        "image": "fjord-test/python-http:latest",
        "envProcess": format!("/usr/bin/python3 -c '{PY_SELF}'"),
        "envVars": {"mode": "http"},
    }))
    .await;
    for n in 1..=2 {
        let (st, body) = s.call("self").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let lines: Vec<String> = body
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for want in [
            "NoNewPrivs: 1",
            "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000",
            "Seccomp: 2",
            "tmp tmpfs",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want}: {body}");
        }
        assert!(lines.contains(&format!("count {n}")), "{body}");
    }
}
