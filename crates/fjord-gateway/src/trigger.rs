//! Triggers: what makes functions run besides a direct HTTP call. Each trigger gets an
//! [`Invoker`] and calls functions through it with a typed key, never a synthetic URL; the
//! server starts the configured triggers and stops them at shutdown.
//!
//! The async queue worker is one ([`crate::async_calls::Dispatcher`]); a cron or topic
//! connector is one more implementation and a line where the server lists its triggers.

use tokio_util::sync::CancellationToken;

use crate::invoke::Invoker;

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Something that invokes functions on its own schedule (a queue, a clock, a broker).
pub trait Trigger: Send + 'static {
    /// For logs: `async-queue`, `cron`, …
    fn name(&self) -> &'static str;

    /// Runs until `shutdown` is cancelled, then finishes or hands back its work (a queue
    /// re-queues what was running) and returns.
    fn run(
        self: Box<Self>,
        invoker: Invoker,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// Starts each trigger on the current runtime; await the handles after cancelling `shutdown`.
pub fn start(
    triggers: Vec<Box<dyn Trigger>>,
    invoker: &Invoker,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    triggers
        .into_iter()
        .map(|t| {
            tracing::debug!(trigger = t.name(), "trigger started");
            tokio::spawn(t.run(invoker.clone(), shutdown.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use fjord_core::FunctionKey;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::invoke::Caller;
    use crate::testing::TestApp;

    /// The smallest trigger: calls one function once and reports the answer. A connector
    /// (cron, topic) is this plus its schedule or subscription.
    struct Once {
        function: FunctionKey,
        answers: mpsc::UnboundedSender<(u16, String)>,
    }

    impl Trigger for Once {
        fn name(&self) -> &'static str {
            "once"
        }

        fn run(
            self: Box<Self>,
            invoker: Invoker,
            shutdown: CancellationToken,
        ) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let route = invoker.lookup(&self.function).expect("deployed");
                let req = axum::http::Request::builder()
                    .method("POST")
                    .uri("/from-trigger?x=1")
                    .body(axum::body::Body::from("ping"))
                    .expect("request");
                let resp = invoker.call(&route, Caller::Trigger, req).await;
                let status = resp.status().as_u16();
                assert!(resp.headers().contains_key("x-call-id"), "calls get an id");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                let _ = self
                    .answers
                    .send((status, String::from_utf8_lossy(&body).into_owned()));
                shutdown.cancelled().await;
            })
        }
    }

    #[tokio::test]
    async fn a_trigger_invokes_a_function_through_the_invoker() {
        let t = TestApp::new().await;
        t.deploy("echo", "fake/echo:1", "from-fake").await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let invoker = Invoker::new(t.app.clone());
        let handles = start(
            vec![Box::new(Once {
                function: FunctionKey::new("echo", None).expect("key"),
                answers: tx,
            })],
            &invoker,
            &shutdown,
        );
        let (status, body) = rx.recv().await.expect("the trigger answered");
        assert_eq!(status, 200);
        assert_eq!(body, "fake/echo:1 from-fake");
        // It counted like any call.
        let route = invoker
            .lookup(&FunctionKey::new("echo", None).expect("key"))
            .expect("route");
        assert_eq!(route.metrics.invocations(), 1);
        shutdown.cancel();
        for h in handles {
            h.await.expect("the trigger stopped");
        }
    }
}
