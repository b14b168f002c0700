//! Answers given before a request body was read close the connection (RFC 9112 section
//! 9.6), so a keep-alive client sees the answer and opens a new connection instead of
//! writing its next request into a socket the server is about to close.
//!
//! 1. The outermost middleware notes whether the request carries a body and hands the
//!    handlers a [`BodyRead`] flag.
//! 2. The body reader ([`super::extract::JsonBody`]) sets the flag once the whole body is
//!    in (within the body read timeout).
//! 3. When a request had a body and the flag is still clear at the answer (429 from the
//!    rate limit, 413 from the announced length, 408 from a body that stalled, or a
//!    handler that never reads a body), the answer gets `Connection: close`, and hyper
//!    closes the connection after writing it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// Set once the request's body was read to its end.
#[derive(Debug, Clone, Default)]
pub struct BodyRead(Arc<AtomicBool>);

impl BodyRead {
    /// Notes that the whole body was read.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Adds `Connection: close` to answers that left a request body unread.
pub async fn close_if_unread(mut req: Request, next: Next) -> Response {
    let has_body = !req.body().is_end_stream();
    let read = BodyRead::default();
    req.extensions_mut().insert(read.clone());
    let mut response = next.run(req).await;
    if has_body && !read.is_set() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
