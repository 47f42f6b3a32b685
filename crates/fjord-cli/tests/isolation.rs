//! What one function can do to others and to the gateway, through the real `fjord serve` as
//! root (sandbox on): files, processes, memory, the root filesystem. The http-mode OOM case
//! with a bystander is in lifecycle.rs (`memory_limit_oom_kills_and_restarts_only_that_replica`);
//! secret files per function are in secrets.rs.

mod common;

use std::time::Duration;

use common::{ServeOpts, Server, fjord_num, fork_fn, send_text, text};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_read_another_functions_files_or_the_gateway_state() {
    let s = Server::start().await;
    let data = s.data_dir();
    // Something in queue.db, and a log file for the victim.
    let digest = s
        .upload_script_bundle("victim", "#!/bin/sh\necho victim-code\n")
        .await;
    s.deploy_ready(&json!({"service": "victim", "image": digest}))
        .await;
    assert_eq!(
        s.call("victim").await,
        (StatusCode::OK, "victim-code\n".into())
    );
    let uid_dirs: Vec<_> = std::fs::read_dir(data.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(uid_dirs.len(), 1, "{uid_dirs:?}");
    let victim_run = &uid_dirs[0];
    let hex = digest.trim_start_matches("sha256:");
    let d = data.display().to_string();
    let targets = [
        format!("{d}/state.db"),
        format!("{d}/state.db-wal"),
        format!("{d}/queue.db"),
        format!("{d}/secrets/secrets.key"),
        format!("{d}/secrets/basic-auth-password"),
        format!("{d}/bundles/{hex}.tar.gz"),
        format!("{d}/logs/openfaas-fn/victim.log"),
        format!("{}/{hex}/run.sh", victim_run.display()),
        format!("{}/{hex}/manifest.json", victim_run.display()),
    ];
    for t in &targets {
        assert!(
            std::path::Path::new(t).exists(),
            "{t} must exist for the check to mean something"
        );
    }
    let listings = [
        d.clone(),
        format!("{d}/run"),
        victim_run.display().to_string(),
        format!("{d}/replicas"),
        format!("{d}/secrets"),
    ];
    let mut script = String::new();
    for t in &targets {
        script.push_str(&format!(
            "if cat {t} >/dev/null 2>&1; then echo READ {t}; else echo DENIED {t}; fi; "
        ));
    }
    for l in &listings {
        script.push_str(&format!(
            "if ls {l} >/dev/null 2>&1; then echo LISTED {l}; else echo DENIED {l}; fi; "
        ));
    }
    // The victim's code cannot be run either (its group only).
    script.push_str(&format!(
        "if {}/{hex}/run.sh >/dev/null 2>&1; then echo RAN; else echo DENIED run; fi",
        victim_run.display()
    ));
    s.deploy_ready(&fork_fn("intruder", &format!("sh -c '{script}'")))
        .await;
    let (st, body) = s.call("intruder").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), targets.len() + listings.len() + 1, "{body}");
    for l in &lines {
        assert!(
            l.starts_with("DENIED "),
            "a function got through: {l}\n{body}"
        );
    }
    // Sanity: the same checks pass as root, so DENIED above is the sandbox's doing.
    for t in &targets {
        std::fs::read(t).unwrap_or_else(|e| panic!("root cannot read {t}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit_and_others_keep_answering() {
    let s = Server::start_opts(ServeOpts::args(&["--pids-max", "40"])).await;
    s.deploy_ready(&fork_fn("steady", "cat")).await;
    let mut bomb = fork_fn(
        "bomb",
        "sh -c 'n=0; while [ $n -lt 300 ]; do sleep 60 >/dev/null 2>&1 & n=$((n+1)); done; echo started $n'",
    );
    bomb["envVars"] = json!({"exec_timeout": "10s"});
    s.deploy_ready(&bomb).await;
    let (st, body) = send_text(
        s.invoke(Method::GET, "bomb")
            .timeout(Duration::from_secs(30)),
    )
    .await;
    assert!(
        body.contains("fork") && !body.contains("started 300"),
        "300 processes started under a 40-process limit: {st} {body}"
    );
    // The bomb's cgroup is full, yet the gateway and the other function answer.
    for i in 0..5 {
        let r = s
            .invoke(Method::POST, "steady")
            .body(format!("ping-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(text(r).await, (StatusCode::OK, format!("ping-{i}")));
    }
    let r = s.open(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Deleting the function kills what is left of it.
    s.remove("bomb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_mode_memory_hog_is_oom_killed_and_others_keep_answering() {
    let s = Server::start().await;
    s.deploy_ready(&fork_fn("steady", "cat")).await;
    let mut hog = fork_fn(
        "hog",
        "python3 -c 'import sys; b = b\"x\" * (int(sys.stdin.read() or 0) << 20); print(\"allocated\", len(b))'",
    );
    hog["limits"] = json!({"memory": "32Mi"});
    s.deploy_ready(&hog).await;
    let (st, body) = s.call_text(Method::POST, "hog", "300").await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("out of memory"), "{body}");
    assert!(!body.contains("allocated"), "{body}");
    let status = s.get_function("hog").await.unwrap();
    assert!(fjord_num(&status, "oomKills") >= 1, "{status}");
    // The same function still works within its limit, and so does the other one.
    let r = s
        .invoke(Method::POST, "hog")
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        text(r).await,
        (StatusCode::OK, "allocated 1048576\n".into())
    );
    let r = s
        .invoke(Method::POST, "steady")
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(text(r).await, (StatusCode::OK, "ok".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_root_filesystem_allows_only_tmp() {
    let s = Server::start().await;
    let probe = "sh -c 'for p in /var/tmp/fjord-ro-probe /etc/fjord-ro-probe /tmp/probe; do if echo x > $p 2>/dev/null; then echo $p=ok; else echo $p=failed; fi; done; mkdir /etc/fjord-ro-dir 2>&1; true'";
    let mut ro = fork_fn("ro", probe);
    ro["readOnlyRootFilesystem"] = json!(true);
    s.deploy_ready(&ro).await;
    let (st, body) = s.call("ro").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("/var/tmp/fjord-ro-probe=failed"), "{body}");
    assert!(body.contains("/etc/fjord-ro-probe=failed"), "{body}");
    assert!(body.contains("/tmp/probe=ok"), "{body}");
    assert!(
        body.contains("Read-only file system"),
        "EROFS, not just a permission: {body}"
    );
    assert!(!std::path::Path::new("/var/tmp/fjord-ro-probe").exists());

    // Without it, /etc is refused by permissions, not by a read-only mount: the EROFS above
    // is the flag's doing. The host's /var/tmp is out of reach either way (private or
    // read-only: tests/attack_sandbox.rs).
    s.deploy_ready(&fork_fn("rw", probe)).await;
    let (_, body) = s.call("rw").await;
    assert!(body.contains("/tmp/probe=ok"), "{body}");
    let mkdir = body.lines().find(|l| l.starts_with("mkdir")).unwrap_or("");
    assert!(mkdir.contains("Permission denied"), "{body}");
    assert!(!std::path::Path::new("/var/tmp/fjord-ro-probe").exists());
}
