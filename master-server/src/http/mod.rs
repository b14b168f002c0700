//! The HTTP API: routes, shared state and middleware order.
//!
//! Layers, outermost first: `Connection: close` after an unread body ([`early`]), request
//! counting, body size limit, admission (client IP and
//! rate limit), then the handler. Unknown routes and wrong methods answer JSON errors too.

pub mod admit;
pub mod early;
pub mod extract;
mod handlers;
pub mod list_query;
pub mod openapi;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::error::ApiError;
use crate::heartbeats::HeartbeatBuffer;
use crate::index::Index;
use crate::quota::SessionQuota;
use crate::store::Store;
use crate::writer::WriterHandle;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Runtime configuration.
    pub config: Arc<Config>,
    /// The in-memory index of live rows.
    pub index: Arc<Index>,
    /// The database writer.
    pub writer: WriterHandle,
    /// The database (for read fallbacks when instances share PostgreSQL).
    pub store: Store,
    /// Per-IP rate limiter (`None` when off).
    pub limiter: Option<Arc<admit::IpLimiter>>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Buffered heartbeats (`None` when every heartbeat commits synchronously).
    pub heartbeats: Option<Arc<HeartbeatBuffer>>,
    /// Creates in flight per address, for the per-address session cap.
    pub quota: Arc<SessionQuota>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/sessions", get(handlers::list).post(handlers::create))
        .route(
            "/v1/sessions/{id}",
            get(handlers::get_one)
                .patch(handlers::patch)
                .delete(handlers::delete),
        )
        .route("/v1/sessions/{id}/heartbeat", post(handlers::heartbeat))
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), admit::admit))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(admit::count))
        .layer(middleware::from_fn(early::close_if_unread))
        .with_state(state)
}
