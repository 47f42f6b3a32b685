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

/// Python, fork or http mode: the function's view of process ids. Reports its own pid, the
/// pids its `/proc` lists, and for each pid in `targets` what `kill(pid, 0)` says. In http
/// mode (`serve`) it also answers `/orphan` (starts `sleep <query>` in a new session and
/// leaves it behind), `/orphan-exit` (a grandchild that outlives its parent and exits
/// soon), `/zombies` (how many processes it sees as zombies) and `/crash` (exits).
const PY_PIDS: &str = r#"
import errno, os, subprocess, sys
def report(targets):
    out = ["pid " + str(os.getpid())]
    out.append("procs " + " ".join(sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)))
    for t in targets:
        try:
            os.kill(t, 0)
            r = "ok"
        except OSError as e:
            r = errno.errorcode[e.errno]
        out.append("kill " + str(t) + " " + r)
    return "\n".join(out) + "\n"
def zombies():
    n = 0
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and open("/proc/" + p + "/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                n += 1
        except OSError:
            pass
    return str(n) + "\n"
if sys.argv[1:] != ["serve"]:
    sys.stdout.write(report([int(t) for t in sys.stdin.read().split()]))
    sys.exit(0)
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/crash":
            os._exit(3)
        if path == "/orphan":
            body = str(subprocess.Popen(["sleep", query], start_new_session=True).pid) + "\n"
        elif path == "/orphan-exit":
            subprocess.run(["sh", "-c", "sleep 0.2 &"])
            body = "started\n"
        elif path == "/zombies":
            body = zombies()
        else:
            body = report([int(t) for t in query.split("+") if t])
        b = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Host pids (as fjord and the test see them) of processes whose command line contains
/// `needle` and whose environment holds `env`.
fn host_pids(needle: &str, env: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let environ = String::from_utf8_lossy(&read("environ")).into_owned();
        if cmdline.contains(needle) && environ.split('\0').any(|v| v == env) {
            found.push(pid);
        }
    }
    found
}

/// The `kill <pid> <result>` lines of a [`PY_PIDS`] report, and its own pid and listing.
fn parse_pids(body: &str) -> (i32, Vec<i32>, Vec<(i32, String)>) {
    let mut pid = 0;
    let mut procs = Vec::new();
    let mut kills = Vec::new();
    for line in body.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pid", p] => pid = p.parse().unwrap(),
            ["procs", rest @ ..] => procs = rest.iter().map(|p| p.parse().unwrap()).collect(),
            ["kill", p, r] => kills.push((p.parse().unwrap(), r.to_string())),
            _ => panic!("unexpected line {line:?} in {body}"),
        }
    }
    (pid, procs, kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_has_its_own_pid_namespace() {
    assert!(!PY_PIDS.contains('\''));
    let s = Server::start().await;
    // An http-mode function (the attacker's neighbour) and the fork-mode attacker.
    let victim = json!({
        "service": "pid-victim",
        "image": "fjord-test/python-http:latest",
        "envProcess": format!("/usr/bin/python3 -c '{PY_PIDS}' serve"),
        "envVars": {"mode": "http", "PIDNS_TEST": "victim"},
    });
    s.deploy_ready(&victim).await;
    let victims = host_pids("serve", "PIDNS_TEST=victim");
    assert_eq!(victims.len(), 1, "{victims:?}");
    let victim_pid = victims[0];
    let gateway = s.pid();
    let me = std::process::id() as i32;
    let targets = format!("{gateway} {victim_pid} {me}");

    s.deploy_ready(&fork_fn(
        "pid-peek",
        &format!("/usr/bin/python3 -c '{PY_PIDS}'"),
    ))
    .await;
    for call in 1..=2 {
        let r = s
            .invoke(Method::POST, "pid-peek")
            .body(targets.clone())
            .send()
            .await
            .unwrap();
        let (st, body) = text(r).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let (pid, procs, kills) = parse_pids(&body);
        // A small number in the replica's namespace (its init is 1, calls follow), not the
        // host's: fjord and the test run with host pids far above.
        assert!(pid > 1 && pid < 16, "call {call}: pid {pid}: {body}");
        assert!(gateway > 16 && me > 16, "{gateway} {me}");
        // Its /proc is the namespace's: it lists only itself (the init is root's, hidden).
        assert_eq!(procs, vec![pid], "{body}");
        // Host pids name nothing it can reach: no such process, whatever the uid.
        for (target, result) in &kills {
            assert_eq!(result, "ESRCH", "kill({target}, 0): {body}");
        }
        assert_eq!(kills.len(), 3, "{body}");
    }

    // http mode: the same from a long-running replica, which sees the fork-mode one's
    // neighbours no better.
    let body = s
        .call_until_ok(
            &format!("pid-victim/?{gateway}+{me}"),
            std::time::Duration::from_secs(10),
        )
        .await;
    let (pid, procs, kills) = parse_pids(&body);
    assert!(pid > 1 && pid < 16, "pid {pid}: {body}");
    assert_eq!(procs, vec![pid], "{body}");
    assert_eq!(kills.len(), 2, "{body}");
    assert!(kills.iter().all(|(_, r)| r == "ESRCH"), "{body}");

    // The victim keeps running, and a second replica of it lives in a namespace of its own.
    let (st, body) = s
        .sys_json(
            Method::POST,
            "/system/scale-function/pid-victim",
            &json!({"serviceName": "pid-victim", "replicas": 2}),
        )
        .await;
    assert!(st.is_success(), "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host_pids("serve", "PIDNS_TEST=victim").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second replica");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pidns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let replicas = host_pids("serve", "PIDNS_TEST=victim");
    assert_ne!(pidns(replicas[0]), pidns(replicas[1]), "{replicas:?}");
    assert_ne!(pidns(replicas[0]), pidns(gateway));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_and_die_with_their_replica_process() {
    assert!(!PY_PIDS.contains('\''));
    let s = Server::start().await;
    s.deploy_ready(&json!({
        "service": "orphans",
        "image": "fjord-test/python-http:latest",
        "envProcess": format!("/usr/bin/python3 -c '{PY_PIDS}' serve"),
        "envVars": {"mode": "http", "PIDNS_TEST": "orphans"},
    }))
    .await;
    let wait = std::time::Duration::from_secs(10);
    // A grandchild that outlives its parent is reparented to the namespace's init, which
    // reaps it when it exits: no zombie stays behind to count against the pids limit.
    let (st, body) = s.call("orphans/orphan-exit").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "started\n"));
    let deadline = std::time::Instant::now() + wait;
    loop {
        let (_, zombies) = s.call("orphans/zombies").await;
        if zombies == "0\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "zombies: {zombies}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A daemon left in its own session (out of reach of the process group's signals)
    // dies when the replica's process does, instead of outliving it into the next start
    // (where it could, say, hold the port or the replica's files).
    let secs = format!("{}", 86_000 + std::process::id() % 1000);
    let (st, body) = s.call(&format!("orphans/orphan?{secs}")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let daemon = host_pids(&format!("sleep {secs}"), "PIDNS_TEST=orphans");
    assert_eq!(daemon.len(), 1, "{daemon:?}");
    let _ = s.call("orphans/crash").await;
    let deadline = std::time::Instant::now() + wait;
    while std::path::Path::new(&format!("/proc/{}", daemon[0])).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan {} outlived its replica process",
            daemon[0]
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The replica restarts and serves again.
    s.call_until_ok("orphans/", std::time::Duration::from_secs(20))
        .await;
}
