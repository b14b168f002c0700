//! The operator HTTP endpoint: `/metrics` (Prometheus text) and `/healthz`.
//!
//! It lives on its own TCP address (`--metrics-listen`), never on the STUN UDP port. Steps:
//!
//! 1. The driver binds the listener and spawns [`serve`] with the shared [`Stats`].
//! 2. `GET /metrics` sums the workers' counters and renders them in the Prometheus text
//!    exposition format 0.0.4; `GET /healthz` answers `ok`.
//! 3. The server stops gracefully when the driver's shutdown signal flips.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::driver::Stats;

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The router, for embedding or testing.
pub fn router(stats: Stats) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let stats = stats.clone();
                async move {
                    let mut body = String::with_capacity(4096);
                    stats.total().render_prometheus(&mut body);
                    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves the router on `listener` until `shutdown` becomes true.
pub async fn serve(listener: TcpListener, stats: Stats, mut shutdown: watch::Receiver<bool>) {
    let signal = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router(stats))
        .with_graceful_shutdown(signal)
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
