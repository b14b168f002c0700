//! Prometheus metrics of a server, with the `metrics` crate and its Prometheus exporter,
//! and the operator endpoint that serves them.
//!
//! Steps:
//! 1. A server makes a [`Registry`] (its own recorder, not the global one, so several
//!    servers in one process keep apart) and registers its metrics in it
//!    ([`Registry::register`] runs `metrics::counter!`, `gauge!` and `describe_*!` against
//!    it), keeping the handles.
//! 2. It updates the handles: counters with `absolute` from its own plain counters (which
//!    stay free of atomics on hot paths), gauges with `set`.
//! 3. [`serve`] answers `GET /metrics` with the render function's text (Prometheus text
//!    exposition 0.0.4, [`PROMETHEUS_CONTENT_TYPE`]) and `GET /healthz` with `ok`, on the
//!    server's metrics TCP address, until the shutdown watch turns true. A server whose
//!    metrics live on its main router (the master server) uses [`prometheus_response`].

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A recorder of one server's metrics.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry with its own recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
        }
    }

    /// Runs `f` with this registry as the recorder: the `metrics::counter!`, `gauge!` and
    /// `describe_*!` calls in it register here. Keep the handles it returns.
    pub fn register<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&*self.recorder, f)
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Renders the current metrics text (called once per `GET /metrics`).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A `200` response carrying Prometheus text.
pub fn prometheus_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
}

/// `GET /metrics` (the text of `render`) and `GET /healthz` (`ok`).
pub fn router(render: Render) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = Arc::clone(&render);
                async move { prometheus_response(render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves [`router`] on `listener` until `shutdown` becomes true (or its sender goes).
pub async fn serve(listener: TcpListener, render: Render, mut shutdown: watch::Receiver<bool>) {
    let signal = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router(render))
        .with_graceful_shutdown(signal)
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn serves_the_registry_and_health() {
        let registry = Registry::new();
        let counter = registry.register(|| {
            metrics::describe_counter!("demo_total", "a demo counter");
            metrics::counter!("demo_total", "kind" => "a")
        });
        counter.absolute(3);
        let r = registry.clone();
        let app = router(Arc::new(move || r.render()));
        let get = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .expect("request");
                let resp = app.oneshot(req).await.expect("response");
                let ctype = resp.headers().get(header::CONTENT_TYPE).cloned();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (ctype, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (ctype, text) = get("/metrics").await;
        assert_eq!(
            ctype.as_ref().map(|v| v.as_bytes()),
            Some(PROMETHEUS_CONTENT_TYPE.as_bytes())
        );
        assert!(text.contains("# HELP demo_total a demo counter"), "{text}");
        assert!(text.contains("demo_total{kind=\"a\"} 3"), "{text}");
        assert_eq!(get("/healthz").await.1, "ok\n");
        // Another registry is separate.
        assert!(!Registry::new().render().contains("demo_total"));
    }
}
