//! `KubeRuntime::connect`: a kubeconfig that cannot be read, an API server that does not
//! answer or refuses the credentials, each a one-line error naming the cause. Only loopback
//! is contacted.

use std::time::Duration;

use bytes::Bytes;
use fjord_kube::connect::probe;
use fjord_kube::{ClusterConfig, KubeError, KubeRuntime, KubeRuntimeConfig};
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// A kubeconfig in `dir` whose cluster is `server`.
fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: v1
kind: Config
clusters: [{{ name: c, cluster: {{ server: "{server}", insecure-skip-tls-verify: true }} }}]
users: [{{ name: u, user: {{ token: not-a-secret }} }}]
contexts: [{{ name: x, context: {{ cluster: c, user: u }} }}]
current-context: x
"#
        ),
    )
    .expect("write the kubeconfig");
    path
}

async fn connect(from: ClusterConfig) -> KubeError {
    match KubeRuntime::connect(&from, KubeRuntimeConfig::default(), Duration::from_secs(10)).await {
        Ok(_) => panic!("connected to {from:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named() {
    let e = connect(ClusterConfig::Kubeconfig("/nonexistent/kubeconfig".into())).await;
    assert!(matches!(e, KubeError::Kubeconfig { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with("kubeconfig /nonexistent/kubeconfig: cannot read it: ")
            && text.contains("No such file"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[tokio::test]
async fn a_kubeconfig_that_is_not_one_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "clusters: 7\n").unwrap();
    let e = connect(ClusterConfig::Kubeconfig(path.clone())).await;
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("kubeconfig {}: ", path.display())),
        "{text}"
    );
}

#[tokio::test]
async fn an_api_server_where_nothing_listens_fails_at_once_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = kubeconfig(dir.path(), &format!("https://127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    let e = connect(ClusterConfig::Kubeconfig(path)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection is not waited on"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "the Kubernetes API server at https://127.0.0.1:{port} cannot be used: "
        )) && text.contains("refused"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[tokio::test]
async fn refused_credentials_are_said_to_be_the_kubeconfigs() {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.uri().path(), "/version");
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401
        });
        let body = Full::new(Bytes::from(status.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync();
        send.send_response(
            Response::builder()
                .status(401)
                .header("content-type", "application/json")
                .body(body)
                .unwrap(),
        );
    });
    let client = kube::Client::new(service, "default");
    let e = probe(&client, "https://cluster.test", Duration::from_secs(10))
        .await
        .expect_err("refused");
    server.await.unwrap();
    let text = e.to_string();
    assert!(
        text.contains("https://cluster.test")
            && text.contains("401")
            && text.contains("credentials were refused"),
        "{text}"
    );
}

#[tokio::test]
async fn an_api_server_that_never_answers_is_given_up_on() {
    let (service, _handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let client = kube::Client::new(service, "default");
    let e = probe(&client, "https://cluster.test", Duration::from_millis(200))
        .await
        .expect_err("no answer");
    assert!(e.to_string().contains("no answer within 200ms"), "{e}");
}
