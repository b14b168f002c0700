//! [`ListingClient`]: the master server's HTTP API over `reqwest` (rustls).
//!
//! Steps of every call:
//! 1. Build the URL from the base URL (path segments and query pairs are encoded by the
//!    `url` crate, never by hand).
//! 2. Send, with the owner token as `Authorization: Bearer` for writes; the whole call is
//!    bounded by the client's request timeout.
//! 3. Read the body, rejecting answers over [`MAX_RESPONSE_BYTES`].
//! 4. A 2xx body decodes as the expected type; any other status becomes
//!    [`ListingError::Api`] with the server's `error.code` and `error.message`.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{
    Attributes, CreateSession, Created, ErrorBody, HeartbeatAck, ListingId, PatchSession,
    SessionList, SessionRow,
};

/// Largest response body accepted.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a call to the master server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    /// The server answered with an error status.
    #[error("master server answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error body's stable code (`not_found`, `unauthorized`, ...), or `http_STATUS`.
        code: String,
        /// The error body's message.
        message: String,
    },
    /// The request could not be sent or the answer not read.
    #[error("master server unreachable: {0}")]
    Transport(String),
    /// The call took longer than the request timeout.
    #[error("master server did not answer in time")]
    Timeout,
    /// The answer was not the expected JSON (or too large).
    #[error("bad answer from master server: {0}")]
    Decode(String),
    /// The base URL is not an http(s) URL.
    #[error("invalid master server URL: {0}")]
    InvalidUrl(String),
}

impl ListingError {
    /// A short stable name of the error's kind: `api`, `transport`, `timeout`, `decode`,
    /// `invalid_url`; for API errors the server's code (e.g. `not_found`).
    pub fn kind(&self) -> &'static str {
        match self {
            ListingError::Api { status, .. } => match status {
                400 => "bad_request",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                413 => "payload_too_large",
                429 => "rate_limited",
                500..=599 => "server_error",
                _ => "api",
            },
            ListingError::Transport(_) => "transport",
            ListingError::Timeout => "timeout",
            ListingError::Decode(_) => "decode",
            ListingError::InvalidUrl(_) => "invalid_url",
        }
    }

    /// Whether trying again later may succeed: transport failures, timeouts, 5xx and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            ListingError::Transport(_) | ListingError::Timeout => true,
            ListingError::Api { status, .. } => *status == 429 || *status >= 500,
            ListingError::Decode(_) | ListingError::InvalidUrl(_) => false,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ListingError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            ListingError::Timeout
        } else {
            ListingError::Transport(err.to_string())
        }
    }
}

/// Filters of [`ListingClient::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only rows with all of these attributes (`attr.KEY=VALUE`).
    pub attributes: Attributes,
    /// Only rows with a free slot.
    pub has_space: bool,
    /// Page size (server default 50, at most 200).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A client of one master server. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct ListingClient {
    http: reqwest::Client,
    base: Url,
}

impl ListingClient {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8080`); every call
    /// fails with [`ListingError::Timeout`] after `request_timeout`.
    pub fn new(base_url: &str, request_timeout: Duration) -> Result<Self, ListingError> {
        let mut base = Url::parse(base_url)
            .map_err(|e| ListingError::InvalidUrl(format!("{base_url}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ListingError::InvalidUrl(format!(
                "{base_url}: not an http(s) URL"
            )));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mesh-listing/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ListingError::Transport(e.to_string()))?;
        Ok(ListingClient { http, base })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `POST /v1/sessions`: lists a session; the answer holds its id and owner token.
    pub async fn create(&self, body: &CreateSession) -> Result<Created, ListingError> {
        let url = self.url(&["v1", "sessions"])?;
        let bytes = self.send(Method::POST, url, None, Some(body)).await?;
        decode(&bytes)
    }

    /// `GET /v1/sessions/{id}`: one live session.
    pub async fn get(&self, id: ListingId) -> Result<SessionRow, ListingError> {
        let url = self.url(&["v1", "sessions", &id.to_string()])?;
        let bytes = self.send::<()>(Method::GET, url, None, None).await?;
        decode(&bytes)
    }

    /// `GET /v1/sessions?game=...`: one page of a game's live sessions.
    pub async fn list(&self, game: &str, filter: &Filter) -> Result<SessionList, ListingError> {
        let mut url = self.url(&["v1", "sessions"])?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("game", game);
            for (key, value) in &filter.attributes {
                query.append_pair(&format!("attr.{key}"), value);
            }
            if filter.has_space {
                query.append_pair("has_space", "true");
            }
            if let Some(limit) = filter.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = &filter.cursor {
                query.append_pair("cursor", cursor);
            }
        }
        let bytes = self.send::<()>(Method::GET, url, None, None).await?;
        decode(&bytes)
    }

    /// `PATCH /v1/sessions/{id}`: changes the given fields (and refreshes the expiry).
    pub async fn patch(
        &self,
        id: ListingId,
        token: &str,
        patch: &PatchSession,
    ) -> Result<SessionRow, ListingError> {
        let url = self.url(&["v1", "sessions", &id.to_string()])?;
        let bytes = self
            .send(Method::PATCH, url, Some(token), Some(patch))
            .await?;
        decode(&bytes)
    }

    /// `POST /v1/sessions/{id}/heartbeat`: the row lives `timeout_secs` from now.
    pub async fn heartbeat(
        &self,
        id: ListingId,
        token: &str,
    ) -> Result<HeartbeatAck, ListingError> {
        let url = self.url(&["v1", "sessions", &id.to_string(), "heartbeat"])?;
        let bytes = self
            .send::<()>(Method::POST, url, Some(token), None)
            .await?;
        decode(&bytes)
    }

    /// `DELETE /v1/sessions/{id}`: delists the session.
    pub async fn delete(&self, id: ListingId, token: &str) -> Result<(), ListingError> {
        let url = self.url(&["v1", "sessions", &id.to_string()])?;
        self.send::<()>(Method::DELETE, url, Some(token), None)
            .await
            .map(drop)
    }

    /// The base URL with `segments` appended (each one percent-encoded).
    fn url(&self, segments: &[&str]) -> Result<Url, ListingError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ListingError::InvalidUrl(self.base.to_string()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one request; the body of a 2xx answer, or the error.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ListingError> {
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(ListingError::from_reqwest)?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ListingError::from_reqwest)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

fn too_large() -> ListingError {
    ListingError::Decode(format!("answer exceeds {MAX_RESPONSE_BYTES} bytes"))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ListingError> {
    serde_json::from_slice(bytes).map_err(|e| ListingError::Decode(e.to_string()))
}

/// An error answer: the JSON error body if there is one, else the status alone.
fn api_error(status: StatusCode, bytes: &[u8]) -> ListingError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            format!("http_{}", status.as_u16()),
            status.canonical_reason().unwrap_or("error").to_owned(),
        ),
    };
    ListingError::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_base_urls() {
        for bad in ["", "not a url", "ftp://127.0.0.1/", "mailto:a@b"] {
            let err = ListingClient::new(bad, Duration::from_secs(1)).expect_err(bad);
            assert_eq!(err.kind(), "invalid_url", "{bad}");
        }
    }

    #[test]
    fn builds_encoded_urls() {
        let client =
            ListingClient::new("http://127.0.0.1:1/base/", Duration::from_secs(1)).expect("url");
        let url = client.url(&["v1", "sessions", "a b/c"]).expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/base/v1/sessions/a%20b%2Fc"
        );
    }

    #[test]
    fn classifies_errors() {
        let api = |status| ListingError::Api {
            status,
            code: "x".into(),
            message: "y".into(),
        };
        assert!(api(503).is_retryable());
        assert!(api(429).is_retryable());
        assert!(!api(404).is_retryable());
        assert_eq!(api(401).kind(), "unauthorized");
        assert!(ListingError::Timeout.is_retryable());
        assert!(!ListingError::Decode("x".into()).is_retryable());
        let from_body = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"not_found","message":"gone"}}"#,
        );
        assert_eq!(
            from_body,
            ListingError::Api {
                status: 404,
                code: "not_found".into(),
                message: "gone".into()
            }
        );
        assert_eq!(
            api_error(StatusCode::BAD_GATEWAY, b"<html>").kind(),
            "server_error"
        );
    }
}
