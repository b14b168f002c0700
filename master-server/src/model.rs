//! Session rows and the JSON shapes of the HTTP API.
//!
//! A row is split in two: the [`SessionBody`] (what a host sets on create or patch, shared
//! behind an `Arc`) and its liveness (`expires_at`, `version`), which heartbeats change
//! without copying the body.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::time::Millis;
use crate::token::TokenHash;

/// A session's id (a random UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// Draws a new random id.
    pub fn random() -> Self {
        SessionId(Uuid::new_v4())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(SessionId)
    }
}

/// A row's free-form string attributes (filterable with `attr.KEY=VALUE`).
pub type Attributes = BTreeMap<String, String>;

/// What a host sets on a session; replaced as a whole by a patch.
#[derive(Debug, Clone)]
pub struct SessionBody {
    /// The row's id.
    pub id: SessionId,
    /// Insertion order, assigned by the database; lists are ordered by it.
    pub seq: i64,
    /// Which game this session belongs to.
    pub game: String,
    /// Display name.
    pub name: String,
    /// Capacity.
    pub max_players: u32,
    /// Players currently in the session.
    pub players: u32,
    /// Filterable attributes.
    pub attributes: Attributes,
    /// Opaque connection info (a JSON object), kept as the text the host sent.
    pub connect: Box<RawValue>,
    /// The creating client's IP as the server saw it.
    pub addr: IpAddr,
    /// Hash of the owner token.
    pub token_hash: TokenHash,
    /// Seconds a heartbeat keeps the row alive.
    pub timeout_secs: u32,
    /// When the row was created.
    pub created_at: Millis,
    /// The row's JSON up to `expires_at`, rendered once on first read.
    pub json: JsonCache,
}

/// A body's rendered JSON (everything but `expires_at`), cached because every list
/// request renders up to 200 rows. Cloning a body gives an empty cache, so a patched copy
/// never shows the old body's JSON.
#[derive(Default)]
pub struct JsonCache(OnceLock<Box<str>>);

impl Clone for JsonCache {
    fn clone(&self) -> Self {
        JsonCache::default()
    }
}

impl fmt::Debug for JsonCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonCache")
    }
}

/// The fields of a row's JSON that a heartbeat does not change, in API order.
#[derive(Serialize)]
struct HeadJson<'a> {
    id: SessionId,
    game: &'a str,
    name: &'a str,
    max_players: u32,
    players: u32,
    attributes: &'a Attributes,
    connect: &'a RawValue,
    addr: IpAddr,
    created_at: Millis,
}

impl SessionBody {
    /// `{"id":...,"created_at":"...","expires_at":"` — the row's JSON before the expiry.
    fn json_head(&self) -> &str {
        self.json.0.get_or_init(|| {
            let head = HeadJson {
                id: self.id,
                game: &self.game,
                name: &self.name,
                max_players: self.max_players,
                players: self.players,
                attributes: &self.attributes,
                connect: &self.connect,
                addr: self.addr,
                created_at: self.created_at,
            };
            // Strings, numbers and a validated raw JSON object always serialize.
            let mut text = serde_json::to_string(&head).unwrap_or_else(|_| "{".to_owned());
            text.pop();
            text.push_str(",\"expires_at\":\"");
            text.into_boxed_str()
        })
    }
}

impl Session {
    /// Appends this row's API JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.body.json_head().as_bytes());
        out.extend_from_slice(self.live.expires_at.rfc3339().as_str().as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

/// A row's liveness: changed by every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// The row vanishes from reads at this instant.
    pub expires_at: Millis,
    /// Rises on every write to the row; caches apply only newer versions.
    pub version: i64,
}

/// A row as reads see it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The body.
    pub body: std::sync::Arc<SessionBody>,
    /// Its liveness.
    pub live: Liveness,
}

/// A listed session, as the API returns it (never with the token).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionRow {
    /// Session id.
    pub id: Uuid,
    /// Game name.
    pub game: String,
    /// Display name.
    pub name: String,
    /// Capacity.
    pub max_players: u32,
    /// Current players.
    pub players: u32,
    /// Filterable attributes.
    pub attributes: Attributes,
    /// Opaque connection info set by the host.
    #[schema(value_type = Object)]
    pub connect: serde_json::Value,
    /// The host's IP as the master server saw it.
    pub addr: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 expiry time.
    pub expires_at: String,
}

/// `POST /v1/sessions` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Game name (1..=64 bytes).
    pub game: String,
    /// Display name (1..=128 bytes).
    pub name: String,
    /// Capacity (1..=65535).
    pub max_players: u32,
    /// Current players (at most `max_players`).
    #[serde(default)]
    pub players: u32,
    /// Seconds a heartbeat keeps the row alive (default 60).
    pub timeout_secs: Option<u32>,
    /// Up to 32 attributes; keys 1..=64 bytes, values up to 256 bytes.
    #[serde(default)]
    pub attributes: Attributes,
    /// Opaque JSON object (at most 2 KiB), e.g. host peer id and punch server.
    #[schema(value_type = Object)]
    pub connect: Option<Box<RawValue>>,
}

/// `POST /v1/sessions` answer: the token is shown only here.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// Session id.
    pub id: Uuid,
    /// Owner token for `Authorization: Bearer`.
    pub token: String,
    /// RFC 3339 expiry time.
    pub expires_at: String,
    /// The client IP as the server saw it.
    pub addr: String,
}

/// `PATCH /v1/sessions/{id}` body: every field optional; `attributes` replaces the map.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSession {
    /// New display name.
    pub name: Option<String>,
    /// New capacity.
    pub max_players: Option<u32>,
    /// New player count.
    pub players: Option<u32>,
    /// New attributes (replace the old ones).
    pub attributes: Option<Attributes>,
    /// New connection info.
    #[schema(value_type = Object)]
    pub connect: Option<Box<RawValue>>,
    /// New heartbeat timeout; the row then lives this long from now.
    pub timeout_secs: Option<u32>,
}

/// `POST /v1/sessions/{id}/heartbeat` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// RFC 3339 expiry time after this heartbeat.
    pub expires_at: String,
}

/// `GET /v1/sessions` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// Live rows in creation order.
    pub sessions: Vec<SessionRow>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The JSON error body of every 4xx/5xx answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine-readable code and human-readable message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `invalid_body`, `not_found`, `unauthorized`, `rate_limited`.
    pub code: String,
    /// What went wrong.
    pub message: String,
}
