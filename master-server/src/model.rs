//! Session rows, and the JSON shapes of the HTTP API (re-exported from
//! `mesh::listing::wire`, where they are shared with the client).
//!
//! A row is split in two: the [`SessionBody`] (what a host sets on create or patch, shared
//! behind an `Arc`) and its liveness (`expires_at`, `version`), which heartbeats change
//! without copying the body.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The API's JSON types, defined once in `mesh` (shared with its client).
pub use mesh::listing::wire::{
    Attributes, CreateSession, Created, ErrorBody, ErrorDetail, HeartbeatAck, PatchSession,
    SessionList, SessionRow,
};
use serde_json::value::RawValue;
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
