//! Request extractors that turn every malformed input into a JSON [`ApiError`].
//!
//! axum's own rejections answer in plain text; these wrap them so that a bad body, a bad
//! id or a missing token gets the API's error shape.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::early::BodyRead;
use super::AppState;
use crate::error::ApiError;
use crate::model::SessionId;
use crate::token::MAX_TOKEN_LEN;

/// The client's IP: the TCP peer, or with `trust_forwarded_for` the last
/// `X-Forwarded-For` entry (the one the trusted load balancer appended).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Reads the client IP from a request's headers and connection info.
    pub fn of(headers: &HeaderMap, extensions: &Extensions, trust_forwarded_for: bool) -> Self {
        if trust_forwarded_for {
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|part| part.trim().parse::<IpAddr>().ok())
                .next_back();
            if let Some(ip) = forwarded {
                return ClientIp(ip);
            }
        }
        let peer = extensions.get::<ConnectInfo<SocketAddr>>();
        ClientIp(
            peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| {
                addr.ip()
            }),
        )
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(ClientIp::of(
            &parts.headers,
            &parts.extensions,
            state.config.trust_forwarded_for,
        ))
    }
}

/// A JSON body parsed into `T`; 400/408/413/415 as JSON errors. An announced length over
/// the limit is refused before reading; the body must arrive within the body read timeout.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("");
            let essence = essence.trim().to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let limit = state.config.max_body_bytes;
        let announced = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|len| len > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let read = req.extensions().get::<BodyRead>().cloned();
        let timeout = state.config.conn.body_read_timeout;
        let bytes = tokio::time::timeout(timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(timeout))?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::bad("invalid_body", rejection.body_text())
                }
            })?;
        if let Some(read) = read {
            read.set();
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|err| {
            let code = match err.classify() {
                serde_json::error::Category::Data => "invalid_body",
                _ => "invalid_json",
            };
            ApiError::bad(code, err.to_string())
        })
    }
}

/// The `{id}` path segment as a session id; 400 `invalid_id` when it is not a hyphenated
/// UUID.
pub struct IdParam(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad("invalid_id", "session id must be a UUID"))?;
        // Only the hyphenated form (RFC 9562 section 4), the one the API hands out.
        if raw.len() != 36 {
            return Err(ApiError::bad("invalid_id", "session id must be a UUID"));
        }
        raw.parse()
            .map(IdParam)
            .map_err(|_| ApiError::bad("invalid_id", "session id must be a UUID"))
    }
}

/// The owner token from `Authorization: Bearer TOKEN`; 401 when missing or malformed.
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized)?;
        let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN_LEN
        {
            return Err(ApiError::Unauthorized);
        }
        Ok(Bearer(token.to_owned()))
    }
}
