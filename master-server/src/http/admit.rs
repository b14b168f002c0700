//! Admission middleware: client address, per-IP rate limit, and request metrics.
//!
//! 1. The client IP is the TCP peer, or with `trust_forwarded_for` the last entry of
//!    `X-Forwarded-For` (the one the trusted load balancer appended).
//! 2. Every API request draws from the client's token bucket (`rate` per second, burst
//!    `2 x rate`); an empty bucket answers 429 with `Retry-After`. `/healthz` and `/metrics`
//!    are exempt so monitoring never gets throttled.
//! 3. Every response is counted by route template, method and status.
//!
//! The limiter's table holds only clients seen recently: a background task prunes it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::extract::{BodyLimit, ClientIp};
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

fn client_ip(req: &Request, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| part.trim().parse::<IpAddr>().ok())
            .next_back();
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| {
            addr.ip()
        })
}

/// Sets [`ClientIp`] and [`BodyLimit`], and applies the rate limit.
pub async fn admit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = client_ip(&req, state.config.trust_forwarded_for);
    let exempt = matches!(req.uri().path(), "/healthz" | "/metrics");
    if let (Some(limiter), false) = (&state.limiter, exempt) {
        if let Err(not_until) = limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return ApiError::RateLimited {
                retry_after_secs: retry_after_secs.max(1),
            }
            .into_response();
        }
    }
    req.extensions_mut().insert(ClientIp(ip));
    req.extensions_mut()
        .insert(BodyLimit(state.config.max_body_bytes));
    next.run(req).await
}

/// Counts every response by route template, method and status.
pub async fn count(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}
