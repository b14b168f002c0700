//! The master server's HTTP API JSON types, defined once: the server (`master-server`)
//! serializes them and [`super::ListingClient`] deserializes them (and the other way round
//! for the create and patch bodies).
//!
//! With the `openapi` feature the types also derive `utoipa::ToSchema`, which the server
//! uses for its OpenAPI document.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A row's free-form string attributes (filterable with `attr.KEY=VALUE`).
pub type Attributes = BTreeMap<String, String>;

/// The id of a listed session, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListingId(pub Uuid);

impl fmt::Display for ListingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ListingId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(ListingId)
    }
}

impl From<Uuid> for ListingId {
    fn from(id: Uuid) -> Self {
        ListingId(id)
    }
}

/// What a mesh host puts in a row's `connect` object: how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectInfo {
    /// The host's peer id.
    pub peer: String,
    /// The host's punch server as `ID@HOST:PORT`.
    pub punch: String,
}

impl ConnectInfo {
    /// The object as raw JSON, for [`CreateSession::connect`] and [`PatchSession::connect`].
    pub fn to_raw(&self) -> Result<Box<RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(self)
    }
}

/// A listed session, as the API returns it (never with the token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub connect: serde_json::Value,
    /// The host's IP as the master server saw it.
    pub addr: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 expiry time.
    pub expires_at: String,
}

impl SessionRow {
    /// The row's `connect` object read as a mesh host's [`ConnectInfo`], if it is one.
    pub fn connect_info(&self) -> Option<ConnectInfo> {
        ConnectInfo::deserialize(&self.connect).ok()
    }
}

/// `POST /v1/sessions` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Game name (1..=64 characters).
    pub game: String,
    /// Display name (1..=128 characters).
    pub name: String,
    /// Capacity (1..=65535).
    pub max_players: u32,
    /// Current players (at most `max_players`).
    #[serde(default)]
    pub players: u32,
    /// Seconds a heartbeat keeps the row alive (default 60).
    pub timeout_secs: Option<u32>,
    /// Up to 32 attributes; keys 1..=64 characters, values up to 256 characters.
    #[serde(default)]
    pub attributes: Attributes,
    /// Opaque JSON object (at most 2 KiB), e.g. host peer id and punch server.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub connect: Option<Box<RawValue>>,
}

/// `POST /v1/sessions` answer: the token is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub connect: Option<Box<RawValue>>,
    /// New heartbeat timeout; the row then lives this long from now.
    pub timeout_secs: Option<u32>,
}

/// `POST /v1/sessions/{id}/heartbeat` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAck {
    /// RFC 3339 expiry time after this heartbeat.
    pub expires_at: String,
}

/// `GET /v1/sessions` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionList {
    /// Live rows in creation order.
    pub sessions: Vec<SessionRow>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The JSON error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine-readable code and human-readable message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable code, e.g. `invalid_body`, `not_found`, `unauthorized`, `rate_limited`.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_round_trips_and_rejects_unknown_fields() {
        let create = CreateSession {
            game: "g".into(),
            name: "n".into(),
            max_players: 4,
            players: 1,
            timeout_secs: Some(30),
            attributes: Attributes::from([("mode".into(), "ctf".into())]),
            connect: ConnectInfo {
                peer: "p".into(),
                punch: "id@127.0.0.1:3478".into(),
            }
            .to_raw()
            .ok(),
        };
        let text = serde_json::to_string(&create).expect("serialize");
        let back: CreateSession = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back.game, "g");
        assert_eq!(back.attributes["mode"], "ctf");
        assert_eq!(
            back.connect.map(|c| c.get().to_owned()).as_deref(),
            Some(r#"{"peer":"p","punch":"id@127.0.0.1:3478"}"#)
        );
        let bad = r#"{"game":"g","name":"n","max_players":1,"colour":"red"}"#;
        assert!(serde_json::from_str::<CreateSession>(bad).is_err());
        assert!(serde_json::from_str::<PatchSession>(r#"{"colour":"red"}"#).is_err());
    }

    #[test]
    fn listing_id_parses_and_displays() {
        let id: ListingId = "67e55044-10b1-426f-9247-bb680e5fe0c8"
            .parse()
            .expect("uuid");
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert!("nope".parse::<ListingId>().is_err());
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, "\"67e55044-10b1-426f-9247-bb680e5fe0c8\"");
    }
}
