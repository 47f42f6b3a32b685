//! Attacks on shared resources, through the real `fjord serve` as root: function uids shared
//! between instances or reused after a delete (issue 11, item 6), and connection and
//! slow-body floods (item 9).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ServeOpts, Server, TestDir, fork_fn, send_text, text, wait_until};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The uid a fork-mode function runs as (it prints `id -u`).
async fn function_uid(s: &Server, name: &str) -> u32 {
    let (st, body) = s.call(name).await;
    assert_eq!(st, StatusCode::OK, "{name}: {body}");
    body.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} printed {body:?}, not a uid: {e}"))
}

fn uid_fn(name: &str) -> serde_json::Value {
    fork_fn(name, "id -u")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_host_never_share_function_uids_and_uids_are_not_reused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (function uids)"
    );
    let dir_a = TestDir::new();
    let a = Server::start_in(dir_a.clone(), ServeOpts::default()).await;
    let b = Server::start().await;
    a.deploy_ready(&uid_fn("who")).await;
    b.deploy_ready(&uid_fn("who")).await;
    let (ua, ub) = (function_uid(&a, "who").await, function_uid(&b, "who").await);
    assert!(ua >= 2_000_000 && ub >= 2_000_000, "{ua} {ub}");
    assert_ne!(
        ua, ub,
        "two instances gave their functions the same uid: one can read the other's /proc/<pid>/root, environment and secrets"
    );
    // Whole blocks apart, not just different uids: the next functions must not meet either.
    assert!(ua.abs_diff(ub) >= 65_536, "{ua} {ub}");

    // What the function's uid left in shared writable directories goes with it (planted
    // here by the test, as the function could have: only its own entries).
    let tag = format!("attack-limits-{}", std::process::id());
    let left_file = std::path::PathBuf::from(format!("/dev/shm/{tag}-file"));
    let left_dir = std::path::PathBuf::from(format!("/var/tmp/{tag}-dir"));
    let not_its = std::path::PathBuf::from(format!("/var/tmp/{tag}-other"));
    std::fs::write(&left_file, "left behind").unwrap();
    std::fs::create_dir_all(left_dir.join("sub")).unwrap();
    std::fs::write(left_dir.join("sub/f"), "x").unwrap();
    std::fs::write(&not_its, "someone else's").unwrap();
    for p in [
        &left_file,
        &left_dir,
        &left_dir.join("sub"),
        &left_dir.join("sub/f"),
    ] {
        std::os::unix::fs::lchown(p, Some(ua), Some(ua)).unwrap();
    }
    std::os::unix::fs::lchown(&not_its, Some(ua + 1), Some(ua + 1)).unwrap();

    // A deleted function's uid is never handed to a new one (it could read what the old
    // one left in /dev/shm or /var/tmp).
    let (st, body) = a
        .sys_json(
            Method::DELETE,
            "/system/functions",
            &serde_json::json!({"functionName": "who"}),
        )
        .await;
    assert!(st.is_success(), "delete: {st} {body}");
    let other_stays = not_its.exists();
    let _ = std::fs::remove_file(&not_its);
    assert!(
        !left_file.exists() && !left_dir.exists(),
        "the deleted function's files in /dev/shm and /var/tmp are still there"
    );
    assert!(other_stays, "a file of another uid was removed");
    a.deploy_ready(&uid_fn("who")).await;
    let ua2 = function_uid(&a, "who").await;
    assert_ne!(ua2, ua, "the recreated function got the deleted one's uid");
    assert!(
        ua2.abs_diff(ua) < 65_536,
        "same instance, same block: {ua} {ua2}"
    );

    // A restart keeps the instance's block (and the function its uid); the next new
    // function continues in the block, above every uid handed out before.
    drop(a);
    let a = Server::start_in(dir_a, ServeOpts::default()).await;
    a.wait_ready("who", common::READY_TIMEOUT).await;
    assert_eq!(function_uid(&a, "who").await, ua2, "uid changed on restart");
    a.deploy_ready(&uid_fn("other")).await;
    let ua3 = function_uid(&a, "other").await;
    assert!(
        ua3 > ua2 && ua3.abs_diff(ua) < 65_536,
        "{ua} {ua2} {ua3}: not the next uid of the instance's block"
    );
    assert_ne!(ua3, ub);
}

/// Uploads a fork-mode bundle whose `run.sh` prints its uid; returns its digest.
async fn upload_uid_bundle(s: &Server) -> String {
    s.upload_script_bundle("bun", "#!/bin/sh\nid -u\n").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_data_dir_moves_its_functions_to_uids_of_its_own() {
    let dir_a = TestDir::new();
    let a = Server::start_in(dir_a.clone(), ServeOpts::default()).await;
    let digest = upload_uid_bundle(&a).await;
    a.deploy_ready(&serde_json::json!({"service": "bun", "image": digest}))
        .await;
    a.deploy_ready(&uid_fn("who")).await;
    let (bun_a, who_a) = (function_uid(&a, "bun").await, function_uid(&a, "who").await);
    drop(a);

    // A copy (a backup restored next to the original, a test instance...) is another
    // instance: its stored uids belong to the original's block.
    let dir_b = TestDir::new();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir_a.data_dir().display()))
        .arg(dir_b.data_dir())
        .status()
        .unwrap();
    assert!(st.success());
    let b = Server::start_in(dir_b.clone(), ServeOpts::default()).await;
    b.wait_ready("bun", common::READY_TIMEOUT).await;
    b.wait_ready("who", common::READY_TIMEOUT).await;
    // The bundle was unpacked again for the new uid's group: the function still runs.
    let (bun_b, who_b) = (function_uid(&b, "bun").await, function_uid(&b, "who").await);
    assert!(
        bun_b.abs_diff(bun_a) >= 65_536 && who_b.abs_diff(who_a) >= 65_536,
        "the copy kept the original's uids: bun {bun_a}/{bun_b}, who {who_a}/{who_b}"
    );
    assert_ne!(bun_b, who_b);
    let run: Vec<String> = std::fs::read_dir(dir_b.data_dir().join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        run,
        vec![bun_b.to_string()],
        "the old uid's unpacked bundle is left"
    );
    drop(b);

    // The original keeps its block and its functions their uids.
    let a = Server::start_in(dir_a, ServeOpts::default()).await;
    a.wait_ready("bun", common::READY_TIMEOUT).await;
    assert_eq!(function_uid(&a, "bun").await, bun_a);
    assert_eq!(function_uid(&a, "who").await, who_a);
}

/// A connection from `source` (any 127/8 address: the kernel routes them all to loopback).
async fn connect_from(source: &str, to: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to.parse().unwrap()).await.unwrap()
}

/// Reads until the peer closes or `limit` passes; what was read, and whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// One keep-alive `GET /healthz` on `s`; its status line.
async fn healthz_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: fjord\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The answer is small: read until the end of its body (`ok` or similar, with a length).
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no answer to GET /healthz within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn healthz_and_system_answer(s: &Server) {
    // A new connection for each request, as a monitoring probe would open.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = fresh
        .get(s.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz from a fresh connection");
    assert_eq!(r.status(), StatusCode::OK);
    let r = fresh
        .get(s.url("/system/info"))
        .basic_auth("admin", s.password.as_deref())
        .send()
        .await
        .expect("GET /system/info from a fresh connection");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    // The default cap: 1,000 connections per client address.
    const CAP: usize = 1000;
    let s = Server::start().await;
    let mut held = Vec::with_capacity(CAP);
    for i in 0..CAP {
        let mut c = connect_from("127.0.0.2", &s.addr).await;
        // A request on each proves the gateway accepted and counted it; it stays open idle.
        let status = healthz_on(&mut c).await;
        assert!(status.contains(" 200 "), "connection {i}: {status}");
        held.push(c);
    }
    for _ in 0..5 {
        let mut extra = connect_from("127.0.0.2", &s.addr).await;
        let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with("HTTP/1.1 429 "),
            "connection {} from one address was not refused with 429: {answer:?}",
            CAP + 1
        );
        assert!(answer.contains("--max-connections-per-ip"), "{answer}");
        assert!(closed, "the refused connection stays open");
    }
    // Other clients are served.
    healthz_and_system_answer(&s).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_the_server() {
    const MAX: usize = 20;
    let s = Server::start_opts(ServeOpts::args(&[
        "--max-connections",
        "20",
        "--max-connections-per-ip",
        "0",
    ]))
    .await;
    // Three times the limit, idle (not a byte sent), as the 19,950 of the attack.
    let mut idle = Vec::new();
    for _ in 0..3 * MAX {
        idle.push(connect_from("127.0.0.2", &s.addr).await);
    }
    healthz_and_system_answer(&s).await;
    // The oldest idle connections were closed to make room, not the new ones refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = vec![false; idle.len()];
    while closed.iter().filter(|c| **c).count() < MAX && Instant::now() < deadline {
        for (i, c) in idle.iter_mut().enumerate() {
            if !closed[i] {
                closed[i] = read_until_closed(c, Duration::from_millis(5)).await.1;
            }
        }
    }
    let n = closed.iter().filter(|c| **c).count();
    assert!(
        n >= MAX,
        "only {n} of {} idle connections were closed with --max-connections {MAX}",
        idle.len()
    );
    assert!(closed[0], "the oldest idle connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_timeout() {
    let s = Server::start_opts(ServeOpts::args(&["--header-timeout", "1s"])).await;
    let mut c = connect_from("127.0.0.1", &s.addr).await;
    let (got, closed) = read_until_closed(&mut c, Duration::from_secs(15)).await;
    assert!(
        closed,
        "a silent connection was still open after 15 s with --header-timeout 1s"
    );
    assert!(got.is_empty(), "{got}");
}

/// Processes whose parent is the server: fork-mode calls running now (not the init of a
/// replica's PID namespace, nor the container runtime's reaper).
fn children_of(pid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c != "fjord-pidns\n")
        })
        .filter(|p| {
            !std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(22).any(|w| w == b"fjord-container-reaper"))
        })
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .count()
}

/// `gateway_function_invocation_started` of one function.
async fn started(s: &Server, function: &str) -> u64 {
    let (_, body) = send_text(s.sys(Method::GET, "/metrics")).await;
    let key = format!("gateway_function_invocation_started{{function_name=\"{function}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_start_fork_processes() {
    const N: usize = 200;
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("slow", "cat")).await;
    let mut stalled = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = connect_from("127.0.0.3", &s.addr).await;
        c.write_all(
            b"POST /function/slow HTTP/1.1\r\nhost: fjord\r\ncontent-length: 100000\r\n\r\nfirst bytes, then nothing",
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    // Every request reached the function's invoke path...
    let what = "the stalled requests all reached the gateway";
    wait_until(Duration::from_secs(60), what, async || {
        started(&s, "slow.openfaas-fn").await >= N as u64
    })
    .await;
    // ...and none of them started a process: the body has not arrived.
    let running = children_of(s.pid());
    assert_eq!(
        running, 0,
        "{running} processes were started for requests whose body never came"
    );
    // The gateway stays responsive (a liveness bound, generous).
    let r = s
        .open(Method::GET, "/healthz")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("GET /healthz within 2 s during the slow-body flood");
    assert_eq!(r.status(), StatusCode::OK);
    // A normal call still works.
    let r = s
        .invoke(Method::POST, "slow")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(text(r).await, (StatusCode::OK, "hello".to_string()));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_processes_per_function_are_bounded() {
    const LIMIT: usize = 5;
    const CALLS: usize = 20;
    let s = Server::start_opts(ServeOpts::args(&["--max-forks-per-function", "5"])).await;
    s.deploy_ready(&fork_fn("hold", "cat")).await;
    // Bodies larger than what the gateway reads ahead, all but their last 10 bytes sent: each
    // call starts its process, which runs (cat waits for more) until the body is complete.
    let big = vec![b'x'; 70 * 1024];
    let mut pending = Vec::new();
    for _ in 0..CALLS {
        let mut c = connect_from("127.0.0.4", &s.addr).await;
        let head = format!(
            "POST /function/hold HTTP/1.1\r\nhost: fjord\r\ncontent-length: {}\r\n\r\n",
            big.len() + 10
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&big).await.unwrap();
        pending.push(c);
    }
    // The calls over the limit are answered 429, with Retry-After, without a process.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused < CALLS - LIMIT && Instant::now() < deadline {
        let mut still = Vec::new();
        for mut c in pending {
            let mut buf = [0u8; 2048];
            match tokio::time::timeout(Duration::from_millis(20), c.read(&mut buf)).await {
                Err(_) => still.push(c),
                Ok(r) => {
                    let n = r.unwrap();
                    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
                    assert!(got.starts_with("HTTP/1.1 429 "), "{got}");
                    assert!(got.to_ascii_lowercase().contains("retry-after:"), "{got}");
                    assert!(got.contains("--max-forks-per-function"), "{got}");
                    refused += 1;
                }
            }
        }
        pending = still;
    }
    assert_eq!(refused, CALLS - LIMIT, "calls refused with 429");
    let running = children_of(s.pid());
    assert!(
        running <= LIMIT,
        "{running} processes running with --max-forks-per-function {LIMIT}"
    );
    // Completing the bodies lets the running calls answer.
    for c in &mut pending {
        c.write_all(b"0123456789").await.unwrap();
    }
    for mut c in pending {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("a running call did not answer once its body was complete")
            .unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    }
}
