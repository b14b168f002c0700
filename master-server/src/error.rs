//! API errors: every failure becomes a status code and a JSON body
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! Client mistakes are 4xx with a message that says what to fix. Server-side failures
//! (database down, writer overloaded) are logged with their cause and shown only as a
//! generic 503, never with database details.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::model::{ErrorBody, ErrorDetail};

/// An API error with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a limit (400).
    #[error("{message}")]
    BadRequest {
        /// Stable error code.
        code: &'static str,
        /// What to fix.
        message: Cow<'static, str>,
    },
    /// Missing or wrong owner token (401).
    #[error("missing or wrong owner token")]
    Unauthorized,
    /// Unknown or expired session, or unknown route (404).
    #[error("{0}")]
    NotFound(&'static str),
    /// Route exists but not for this method (405).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The body did not arrive within the body read timeout (408).
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Body over the size limit (413).
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// Body is not JSON (415).
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// Too many requests from this client (429).
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request will be admitted again.
        retry_after_secs: u64,
    },
    /// The client's address holds its maximum number of live sessions (429).
    #[error(
        "this address holds {limit} live sessions, the most allowed; delete or let one expire"
    )]
    TooManySessionsForAddress {
        /// The per-address cap.
        limit: usize,
    },
    /// The server cannot take more sessions (503).
    #[error("the server holds its maximum number of sessions")]
    Full,
    /// A server-side failure; the cause was logged (503).
    #[error("service temporarily unavailable")]
    Unavailable,
}

impl ApiError {
    /// A 400 with a code and message.
    pub fn bad(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } | ApiError::TooManySessionsForAddress { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Full | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManySessionsForAddress { .. } => "too_many_sessions_for_address",
            ApiError::Full => "full",
            ApiError::Unavailable => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_secs.into());
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
