//! Durable storage of session rows in SQLite (embedded default) or PostgreSQL.
//!
//! A row is split over two tables: `sessions` holds what the host sets, the narrow
//! `session_liveness` (keyed by `seq`) holds `expires_at_ms` and `version`, so the bulk of
//! writes (heartbeats) rewrite ~20-byte rows packed many to a page.
//!
//! The store is written only by the [writer](crate::writer), in batches: one transaction
//! per batch (skipped when the batch is a single statement, e.g. only heartbeats), with
//! the creates as one insert per table, heartbeats as one `UPDATE ... FROM` and deletes as
//! one `DELETE ... RETURNING` per table, whatever the batch size. Reads happen at start (load every live row)
//! and, with PostgreSQL, when another instance announces a change.
//!
//! Migrations from `migrations/sqlite/` or `migrations/postgres/` run at connect.

mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::value::RawValue;
use uuid::Uuid;

use crate::model::{JsonCache, Liveness, Session, SessionBody, SessionId};
use crate::time::Millis;
use crate::token::TokenHash;

pub use postgres::{PgChangeFeed, NOTIFY_CHANNEL};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is neither `sqlite:` nor `postgres://`.
    #[error("unsupported database URL (use sqlite:PATH or postgres://...): {0}")]
    UnsupportedUrl(String),
    /// A database error.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Running migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A connected database.
#[derive(Clone)]
pub enum Store {
    /// Embedded SQLite (one instance).
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL (many instances may share it).
    Postgres(postgres::PgStore),
}

/// The writes of one batch, each answered by the same position in [`BatchResult`].
#[derive(Default)]
pub struct Batch {
    /// New rows (their `seq` is assigned by the database).
    pub creates: Vec<(SessionBody, Millis)>,
    /// Replaced bodies with their new expiry (patches).
    pub updates: Vec<(Arc<SessionBody>, Millis)>,
    /// Heartbeats: id, `seq` and new expiry.
    pub heartbeats: Vec<(SessionId, i64, Millis)>,
    /// Deletes.
    pub deletes: Vec<SessionId>,
    /// Also delete rows that expired at or before `reap_before` (at most this many).
    pub reap_limit: usize,
    /// The reaper's cut-off: `now` minus the reap grace (see [`crate::writer::WriterConfig`]).
    pub reap_before: Millis,
}

impl Batch {
    /// Whether the batch has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty()
            && self.updates.is_empty()
            && self.heartbeats.is_empty()
            && self.deletes.is_empty()
            && self.reap_limit == 0
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// `seq` of each create, in order.
    pub created_seqs: Vec<i64>,
    /// New version of each update, or `None` when the row was gone or expired.
    pub updated: Vec<Option<i64>>,
    /// New liveness of each row a heartbeat reached.
    pub heartbeats: HashMap<SessionId, Liveness>,
    /// Rows the deletes removed.
    pub deleted: HashSet<SessionId>,
    /// Expired rows the reaper removed.
    pub reaped: Vec<SessionId>,
}

impl Store {
    /// Connects (creating an SQLite file if missing) and runs the migrations.
    /// `instance` names this server in PostgreSQL change notifications.
    pub async fn connect(url: &str, instance: Uuid) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(
                postgres::PgStore::connect(url, instance).await?,
            ))
        } else {
            Err(StoreError::UnsupportedUrl(redact(url)))
        }
    }

    /// Every row live at `now`.
    pub async fn load_live(&self, now: Millis) -> Result<Vec<Session>, StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::load_live(pool, now).await,
            Store::Postgres(pg) => pg.load_live(now).await,
        }
    }

    /// One row by id, if live at `now`.
    pub async fn load_one(
        &self,
        id: SessionId,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::load_one(pool, id, now).await,
            Store::Postgres(pg) => pg.load_one(id, now).await,
        }
    }

    /// Commits a batch in one transaction.
    pub async fn apply(&self, batch: &Batch) -> Result<BatchResult, StoreError> {
        match self {
            Store::Sqlite(pool) => sqlite::apply(pool, batch).await,
            Store::Postgres(pg) => pg.apply(batch).await,
        }
    }

    /// Whether another instance may write the same database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pg) => pg.pool().close().await,
        }
    }
}

/// A row as read from either database, before checking it.
struct RawRow {
    seq: i64,
    id: Uuid,
    game: String,
    name: String,
    max_players: i64,
    players: i64,
    attributes: String,
    connect: String,
    addr: String,
    token_hash: Vec<u8>,
    timeout_secs: i64,
    created_at_ms: i64,
    expires_at_ms: i64,
    version: i64,
}

/// The columns every query reads, in [`RawRow`] order.
const COLUMNS: &str = "s.seq, s.id, s.game, s.name, s.max_players, s.players, s.attributes, \
                       s.connect, s.addr, s.token_hash, s.timeout_secs, s.created_at_ms, \
                       l.expires_at_ms, l.version";

/// The tables every row read joins.
const FROM: &str = "sessions s JOIN session_liveness l ON l.seq = s.seq";

impl RawRow {
    /// Checks and converts a stored row; a corrupt row is logged and skipped.
    fn into_session(self) -> Option<Session> {
        let id = self.id;
        let parsed = (|| {
            Some(Session {
                body: Arc::new(SessionBody {
                    id: SessionId(self.id),
                    seq: self.seq,
                    game: self.game,
                    name: self.name,
                    max_players: u32::try_from(self.max_players).ok()?,
                    players: u32::try_from(self.players).ok()?,
                    attributes: serde_json::from_str(&self.attributes).ok()?,
                    connect: RawValue::from_string(self.connect).ok()?,
                    addr: self.addr.parse::<IpAddr>().ok()?,
                    token_hash: TokenHash::from_slice(&self.token_hash)?,
                    timeout_secs: u32::try_from(self.timeout_secs).ok()?,
                    created_at: Millis(self.created_at_ms),
                    json: JsonCache::default(),
                }),
                live: Liveness {
                    expires_at: Millis(self.expires_at_ms),
                    version: self.version,
                },
            })
        })();
        if parsed.is_none() {
            tracing::error!(session = %id, "skipping a corrupt session row");
        }
        parsed
    }
}

fn attributes_json(body: &SessionBody) -> String {
    // A map of strings always serializes.
    serde_json::to_string(&body.attributes).unwrap_or_else(|_| "{}".to_owned())
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}
