//! Container images end to end through the real binary, as root with the defaults
//! (`--containers auto`): a real `docker-registry` on loopback, images assembled by umoci and
//! pushed by skopeo, replicas run by runc.

mod common;

use std::time::Duration;

use common::registry::{HTTPD, Images, Registry};
use common::{READY_TIMEOUT, ServeOpts, Server, TestDir, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the container tests need root (runc, user and network namespaces)"
    );
}

fn fjord_status(st: &serde_json::Value) -> &serde_json::Value {
    &st["fjord"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_from_a_registry_serves_updates_rolls_back_scales_and_is_collected() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    images
        .httpd("v1", "v1", &HTTPD)
        .httpd("v2", "v2", &HTTPD)
        .httpd("broken", "x", &["/bin/false"]);
    let d1 = reg.push(&images.layout(), "v1", "web", "1");
    reg.push(&images.layout(), "v2", "web", "2");
    reg.push(&images.layout(), "broken", "web", "broken");

    let s = Server::start().await;
    // No envProcess: the image's own entry point runs, in containers.
    s.deploy(&json!({
        "service": "web", "image": reg.image("web", "1"),
        "labels": {"com.openfaas.scale.min": "2"},
    }))
    .await;
    let st = s.wait_ready("web", READY_TIMEOUT).await;
    assert_eq!(st["availableReplicas"], 2, "{st}");
    assert_eq!(fjord_status(&st)["runtime"], "container", "{st}");
    assert_eq!(
        fjord_status(&st)["digest"],
        d1.as_str(),
        "pinned to the pulled digest: {st}"
    );
    assert_eq!(st["image"], reg.image("web", "1"), "image as given");
    let password = std::fs::read_to_string(s.password_file()).expect("password");
    let config = s.data_dir().with_extension("cli.json");
    let cli = async |args: &[&str]| {
        let mut all = args.to_vec();
        let url = s.url("");
        all.extend(["-g", url.as_str()]);
        let out = common::run_cli(&all, &[("FJORD_PASSWORD", password.trim())], &config).await;
        assert_eq!(
            out.code,
            Some(0),
            "fjord {args:?}: {}{}",
            out.stdout,
            out.stderr
        );
        out.stdout
    };
    let described = cli(&["describe", "web"]).await;
    assert!(
        described.contains("Runtime:") && described.contains("container"),
        "{described}"
    );
    assert!(described.contains(&d1), "the digest: {described}");
    // Both replicas listen on 8080, each in its own network namespace: a handful of calls
    // all succeed whichever replica takes them.
    for i in 0..6 {
        let (code, body) = s.call_text(Method::POST, "web", format!("Ada{i}")).await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::OK, format!("hello v1 Ada{i}").as_str())
        );
    }

    // Update: v2 serves once ready.
    s.update(&json!({"service": "web", "image": reg.image("web", "2"),
        "labels": {"com.openfaas.scale.min": "2"}}))
        .await;
    wait_until(READY_TIMEOUT, "v2 serves", async || {
        let (code, body) = s.call_text(Method::POST, "web", "Bo").await;
        if (code, body.as_str()) == (StatusCode::OK, "hello v2 Bo") {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;

    // An image whose process exits at once: the rollout fails, v2 keeps serving.
    s.update(
        &json!({"service": "web", "image": reg.image("web", "broken"),
        "labels": {"com.openfaas.scale.min": "2"}}),
    )
    .await;
    let st = s
        .wait_status(
            "web",
            READY_TIMEOUT * 2,
            "the broken update rolled back",
            |st| st["fjord"]["rollout"]["state"] == "failed",
        )
        .await;
    assert!(
        st["fjord"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("exit")),
        "the reason names the exit: {st}"
    );
    let (code, body) = s.call_text(Method::POST, "web", "Cy").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "hello v2 Cy"));
    let stored = s.get_function("web").await.expect("status");
    assert_eq!(
        stored["image"],
        reg.image("web", "2"),
        "store rolled back: {stored}"
    );

    // Scale to zero, then a request wakes a container again.
    s.sys_expect(
        Method::POST,
        "/system/scale-function/web",
        &json!({"serviceName": "web", "replicas": 0}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.wait_status("web", READY_TIMEOUT, "at zero", |st| {
        st["availableReplicas"] == 0
    })
    .await;
    let (code, body) = s.call_text(Method::POST, "web", "Di").await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::OK, "hello v2 Di"),
        "woken from zero"
    );

    // Delete: its layers no longer used by any function are collected.
    let layers = s.data_dir().join("images/layers");
    let count = || std::fs::read_dir(&layers).map_or(0, |d| d.count());
    assert!(count() > 0, "layers unpacked in {}", layers.display());
    s.remove("web").await;
    wait_until(
        Duration::from_secs(30),
        "layers collected after the delete",
        async || match count() {
            0 => Ok(()),
            n => Err(format!("{n} layer dirs left")),
        },
    )
    .await;
    // `fjord images gc` finds nothing left to collect.
    let out = cli(&["images", "gc"]).await;
    assert!(out.contains("Removed 0 image(s) and 0 layer(s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registries_take_credentials_from_a_registry_auth_secret() {
    root();
    let reg = Registry::start(Some(("puller", "s3cret")));
    let images = Images::new();
    images.httpd("v1", "private", &HTTPD);
    reg.push(&images.layout(), "v1", "priv", "1");
    let s = Server::start().await;
    let function = json!({"service": "priv", "image": reg.image("priv", "1"),
        "annotations": {"com.fjord.registry-auth": "pull-creds"}});

    // The secret does not exist yet: 400 naming it, nothing deployed.
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &function,
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("pull-creds"), "{body}");
    // Without the annotation the registry refuses: 400 saying credentials are needed.
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &json!({"service": "priv", "image": reg.image("priv", "1")}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("credentials"), "{body}");
    assert!(s.get_function("priv").await.is_none());

    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("puller:s3cret");
    let config = json!({"auths": {reg.host(): {"auth": auth}}}).to_string();
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": "pull-creds", "value": config}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.deploy(&function).await;
    s.wait_ready("priv", READY_TIMEOUT).await;
    let (code, body) = s.call_text(Method::POST, "priv", "x").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "hello private x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_files_inside_and_container_root_is_not_host_root() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    images.httpd("v1", "s", &HTTPD);
    reg.push(&images.layout(), "v1", "sec", "1");
    let s = Server::start().await;
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": "api-key", "value": "k-123"}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.deploy(
        &json!({"service": "sec", "image": reg.image("sec", "1"), "secrets": ["api-key"],
        "readOnlyRootFilesystem": true}),
    )
    .await;
    s.wait_ready("sec", READY_TIMEOUT).await;
    let (code, body) = s.call_text(Method::GET, "sec?secret=api-key", "").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "k-123"));
    // Root inside (uid 0) is the function's own unprivileged uid outside: the image's
    // files are not writable, and with readOnlyRootFilesystem nothing in / is; /tmp is.
    let (_, uid) = s.call_text(Method::GET, "sec?id", "").await;
    assert_eq!(uid.trim(), "0");
    let (_, wrote) = s.call_text(Method::GET, "sec?write=/www/new", "").await;
    assert_eq!(wrote.trim(), "refused", "read-only root filesystem");
    let (_, wrote) = s.call_text(Method::GET, "sec?write=/tmp/new", "").await;
    assert_eq!(wrote.trim(), "wrote", "/tmp stays writable");
    // Outbound network by default (an eth0 behind NAT); `com.fjord.network: none` gives a
    // replica loopback only.
    let (_, net) = s.call_text(Method::GET, "sec?net", "").await;
    assert!(net.contains("eth0:") && net.contains("lo:"), "{net}");
    s.deploy(&json!({"service": "sealed", "image": reg.image("sec", "1"),
        "annotations": {"com.fjord.network": "none"}}))
        .await;
    s.wait_ready("sealed", READY_TIMEOUT).await;
    let (code, net) = s.call_text(Method::GET, "sealed?net", "").await;
    assert_eq!(code, StatusCode::OK, "{net}");
    assert!(net.contains("lo:") && !net.contains("eth0"), "{net}");
}

/// An image whose `User` is not root (`USER app`, as OpenFaaS templates' images) runs as
/// that user through the whole server path (its ids from the uid registry): it owns and
/// writes its home, reads its secrets, and cannot write root's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_user_runs_as_itself_and_writes_its_home() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    images.httpd_with("v1", "u", &HTTPD, &["--config.user=app"], |root| {
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        let home = root.join("home/app");
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
    });
    reg.push(&images.layout(), "v1", "as-app", "1");
    let s = Server::start().await;
    s.sys_expect(
        Method::POST,
        "/system/secrets",
        &json!({"name": "app-key", "value": "k-app"}),
        StatusCode::ACCEPTED,
    )
    .await;
    s.deploy(
        &json!({"service": "as-app", "image": reg.image("as-app", "1"), "secrets": ["app-key"]}),
    )
    .await;
    s.wait_ready("as-app", READY_TIMEOUT).await;
    let (_, uid) = s.call_text(Method::GET, "as-app?id", "").await;
    assert_eq!(uid.trim(), "1000");
    let (_, wrote) = s
        .call_text(Method::GET, "as-app?write=/home/app/note", "")
        .await;
    assert_eq!(wrote.trim(), "wrote", "its home is its own");
    let (_, wrote) = s.call_text(Method::GET, "as-app?write=/www/new", "").await;
    assert_eq!(wrote.trim(), "refused", "root's files are not");
    let (code, key) = s.call_text(Method::GET, "as-app?secret=app-key", "").await;
    assert_eq!((code, key.as_str()), (StatusCode::OK, "k-app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_get_clear_errors_and_the_old_version_keeps_serving() {
    root();
    let mut reg = Registry::start(None);
    let images = Images::new();
    images.httpd("v1", "v1", &HTTPD).httpd("bare", "b", &[]);
    reg.push(&images.layout(), "v1", "app", "1");
    reg.push(&images.layout(), "bare", "app", "bare");
    let dir = TestDir::new();
    let mut s = Server::start_in(dir.clone(), ServeOpts::default()).await;
    s.deploy(&json!({"service": "app", "image": reg.image("app", "1")}))
        .await;
    s.wait_ready("app", READY_TIMEOUT).await;

    // An unknown tag: 400 naming it; the function is unchanged.
    let body = s
        .sys_expect(
            Method::PUT,
            "/system/functions",
            &json!({"service": "app", "image": reg.image("app", "nope")}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("not found"), "{body}");
    // No Entrypoint, no Cmd, no envProcess: 400 saying what to add.
    let body = s
        .sys_expect(
            Method::PUT,
            "/system/functions",
            &json!({"service": "app", "image": reg.image("app", "bare")}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        body.contains("envProcess") || body.contains("Entrypoint"),
        "{body}"
    );
    // A malformed reference: 400.
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &json!({"service": "other", "image": "UPPER/Case"}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(body.contains("UPPER/Case"), "{body}");
    let (code, body) = s.call_text(Method::POST, "app", "still").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "hello v1 still"));

    // The registry goes away: a deploy of a tag not pulled yet answers 502 naming it; a
    // restart runs the pinned digest from the local store without the registry.
    reg.stop();
    let body = s
        .sys_expect(
            Method::POST,
            "/system/functions",
            &json!({"service": "other", "image": reg.image("app", "2")}),
            StatusCode::BAD_GATEWAY,
        )
        .await;
    assert!(body.contains(&reg.host()), "{body}");
    s.terminate(Duration::from_secs(30)).await;
    let s = Server::start_in(dir, ServeOpts::default()).await;
    s.wait_ready("app", READY_TIMEOUT).await;
    let (code, body) = s.call_text(Method::POST, "app", "again").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "hello v1 again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_function_moves_to_a_container_without_downtime_and_back_on_failure() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    images
        .httpd("v1", "moved", &HTTPD)
        .httpd("broken", "x", &["/bin/false"]);
    reg.push(&images.layout(), "v1", "mv", "1");
    reg.push(&images.layout(), "broken", "mv", "broken");
    let s = Server::start().await;
    s.deploy(&json!({"service": "mv", "image": "label", "envProcess": "cat"}))
        .await;
    let st = s.wait_ready("mv", READY_TIMEOUT).await;
    assert_eq!(st["fjord"]["runtime"], "process", "{st}");

    // To an image that never starts: the process version answers throughout, and the
    // failed switch shows in the status.
    s.update(&json!({"service": "mv", "image": reg.image("mv", "broken")}))
        .await;
    let deadline = std::time::Instant::now() + READY_TIMEOUT * 2;
    loop {
        let (code, body) = s.call_text(Method::POST, "mv", "echo").await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::OK, "echo"),
            "served while switching"
        );
        let st = s.get_function("mv").await.expect("status");
        if st["fjord"]["rollout"]["state"] == "failed" {
            assert_eq!(st["fjord"]["runtime"], "process", "{st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the switch never failed: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // To a good image: calls keep succeeding, first from the process, then the container.
    s.update(&json!({"service": "mv", "image": reg.image("mv", "1")}))
        .await;
    let deadline = std::time::Instant::now() + READY_TIMEOUT * 2;
    loop {
        let (code, body) = s.call_text(Method::POST, "mv", "x").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        if body == "hello moved x" {
            break;
        }
        assert_eq!(body, "x", "the process version until the switch");
        assert!(std::time::Instant::now() < deadline, "never switched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = s.get_function("mv").await.expect("status");
    assert_eq!(st["fjord"]["runtime"], "container", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_serve_async_calls_and_their_output_reaches_the_logs() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    // The entry point says hello on stderr, then runs the usual httpd.
    images.httpd(
        "v1",
        "logged",
        &[
            "/bin/sh",
            "-c",
            "echo container-started $MARKER >&2; exec /bin/busybox httpd -f -p 8080 -h /www",
        ],
    );
    reg.push(&images.layout(), "v1", "alog", "1");
    let s = Server::start().await;
    s.deploy(&json!({"service": "alog", "image": reg.image("alog", "1")}))
        .await;
    s.wait_ready("alog", READY_TIMEOUT).await;
    // The replica's output, with its instance, in GET /system/logs.
    let lines = s
        .wait_log("name=alog", "container-started logged", READY_TIMEOUT)
        .await;
    let line = lines
        .iter()
        .find(|l| {
            l["text"]
                .as_str()
                .unwrap_or("")
                .contains("container-started")
        })
        .expect("the line");
    assert_eq!(line["name"], "alog", "{line}");
    assert!(
        line["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("alog-")),
        "{line}"
    );
    // An async call: accepted, run in the container, recorded as done with its status.
    let v = async_call_done(&s, "alog", "queued body", Duration::from_secs(30)).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    // Scaled to zero, an async call wakes the function like a sync one.
    s.sys_expect(
        Method::POST,
        "/system/scale-function/alog",
        &json!({"serviceName": "alog", "replicas": 0}),
        StatusCode::ACCEPTED,
    )
    .await;
    wait_until(Duration::from_secs(30), "zero replicas", async || {
        let st = s.get_function("alog").await.expect("status");
        if st["availableReplicas"] == 0 {
            Ok(())
        } else {
            Err(st.to_string())
        }
    })
    .await;
    let v = async_call_done(&s, "alog", "from zero", Duration::from_secs(60)).await;
    assert_eq!(v["status"], 200, "{v}");
}

/// Queues a call of `function` with `body` (202 and an `X-Call-Id`) and waits until its state
/// is `done`; returns that state.
async fn async_call_done(
    s: &Server,
    function: &str,
    body: &str,
    bound: Duration,
) -> serde_json::Value {
    let r = s
        .client
        .post(s.url(&format!("/async-function/{function}")))
        .body(body.to_string())
        .send()
        .await
        .expect("POST /async-function");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r
        .headers()
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .expect("X-Call-Id")
        .to_string();
    wait_until(bound, &format!("async call {id} done"), async || {
        let r = s
            .sys(Method::GET, &format!("/system/async-calls/{id}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if v["state"] == "done" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await
}

/// The container processes of the replicas runc runs for this data dir (`init_process_pid`
/// of each container in its state directory).
fn container_pids(data: &std::path::Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(data.join("runc")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("state.json")).ok())
        .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .filter_map(|v| v["init_process_pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_die_with_a_server_killed_by_sigkill() {
    root();
    let reg = Registry::start(None);
    let images = Images::new();
    images.httpd("v1", "k", &HTTPD);
    reg.push(&images.layout(), "v1", "orphan", "1");
    let mut s = Server::start().await;
    s.deploy(
        &json!({"service": "orphan", "image": reg.image("orphan", "1"),
        "labels": {"com.openfaas.scale.min": "2"}}),
    )
    .await;
    s.wait_ready("orphan", READY_TIMEOUT).await;
    let data = s.data_dir();
    let pids = container_pids(&data);
    assert_eq!(pids.len(), 2, "two containers running");
    for p in &pids {
        assert!(std::path::Path::new(&format!("/proc/{p}")).exists());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    // No fjord left to stop them: its reaper does.
    wait_until(Duration::from_secs(20), "the containers gone", async || {
        let alive: Vec<_> = pids
            .iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if alive.is_empty() && container_pids(&data).is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {alive:?}"))
        }
    })
    .await;
    let _ = s.terminate(Duration::from_secs(1)).await;
}
