//! Admission middleware: client address, per-IP rate limit, and request metrics.
//!
//! 1. The client IP is the TCP peer, or with `trust_forwarded_for` the last entry of
//!    `X-Forwarded-For` (the one the trusted load balancer appended); see [`ClientIp`].
//! 2. Every API request draws from the client's token bucket (`rate` per second, burst
//!    `2 x rate`); an empty bucket answers 429 with `Retry-After`. `/healthz` and `/metrics`
//!    are exempt so monitoring never gets throttled.
//! 3. Every response is counted by route template, method and status.
//!
//! The limiter's table holds only clients seen recently: a background task prunes it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::extract::ClientIp;
use super::AppState;
use crate::error::ApiError;

/// Per-IP token buckets.
pub type IpLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// Builds the limiter for `per_sec` requests per second per IP (`None` when 0 = off).
pub fn limiter(per_sec: u32) -> Option<Arc<IpLimiter>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(per_sec.saturating_mul(2)).unwrap_or(rate);
    Some(Arc::new(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    )))
}

/// Prunes idle clients from the limiter's table every `every` (runs until dropped).
pub async fn prune(limiter: Arc<IpLimiter>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// Applies the per-IP rate limit (when on) to every route but `/healthz` and `/metrics`.
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(limiter) = &state.limiter {
        let exempt = matches!(req.uri().path(), "/healthz" | "/metrics");
        let ClientIp(ip) = ClientIp::of(
            req.headers(),
            req.extensions(),
            state.config.trust_forwarded_for,
        );
        if let (false, Err(not_until)) = (exempt, limiter.check_key(&ip)) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return ApiError::RateLimited {
                retry_after_secs: retry_after_secs.max(1),
            }
            .into_response();
        }
    }
    next.run(req).await
}

/// Route templates as static label values (no allocation per request).
const ROUTES: [&str; 6] = [
    "/v1/sessions",
    "/v1/sessions/{id}",
    "/v1/sessions/{id}/heartbeat",
    "/healthz",
    "/metrics",
    "/v1/openapi.json",
];

/// Counts every response by route template, method and status.
pub async fn count(req: Request, next: Next) -> Response {
    let route: &'static str = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()))
        .copied()
        .unwrap_or("unmatched");
    let method: &'static str = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}
