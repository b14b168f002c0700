//! PostgreSQL backend: many master-server instances share one database.
//!
//! Every batch also announces its changes with `pg_notify` on [`NOTIFY_CHANNEL`], in the
//! same transaction, so they are delivered exactly when the change commits:
//! - `INSTANCE|u|ID` — row created or patched: reload it;
//! - `INSTANCE|h|ID|VERSION|EXPIRES_MS` — heartbeat: new liveness;
//! - `INSTANCE|d|ID` — row deleted or reaped.
//!
//! [`PgChangeFeed`] listens on every instance and applies other instances' changes to the
//! local index; when its connection drops it reloads every live row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{attributes_json, Batch, BatchResult, RawRow, StoreError, COLUMNS};
use crate::index::Index;
use crate::model::{Liveness, Session, SessionId};
use crate::time::Millis;

/// The `LISTEN`/`NOTIFY` channel of row changes.
pub const NOTIFY_CHANNEL: &str = "master_server_sessions";
/// Rows per multi-row insert.
const INSERT_CHUNK: usize = 256;

/// A PostgreSQL pool plus this instance's id (to skip its own notifications).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    instance: Uuid,
}

impl PgStore {
    pub(super) async fn connect(url: &str, instance: Uuid) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        // The migrator takes an advisory lock, so instances starting together are safe.
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool, instance })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) async fn load_live(&self, now: Millis) -> Result<Vec<Session>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM sessions WHERE expires_at_ms > $1 ORDER BY seq");
        let rows = sqlx::query(&sql).bind(now.0).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(session) = raw_row(row)?.into_session() {
                out.push(session);
            }
        }
        Ok(out)
    }

    pub(super) async fn load_one(
        &self,
        id: SessionId,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = $1 AND expires_at_ms > $2");
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(now.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => raw_row(&row)?.into_session(),
            None => None,
        })
    }

    pub(super) async fn apply(
        &self,
        batch: &Batch,
        now: Millis,
    ) -> Result<BatchResult, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut result = BatchResult::default();
        let mut notes: Vec<String> = Vec::new();
        let me = self.instance;

        for chunk in batch.creates.chunks(INSERT_CHUNK) {
            let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO sessions (id, game, name, max_players, players, attributes, \
                 connect, addr, token_hash, timeout_secs, created_at_ms, expires_at_ms, version) ",
            );
            qb.push_values(chunk, |mut b, (body, expires)| {
                b.push_bind(body.id.0)
                    .push_bind(body.game.clone())
                    .push_bind(body.name.clone())
                    .push_bind(int(body.max_players))
                    .push_bind(int(body.players))
                    .push_bind(attributes_json(body))
                    .push_bind(body.connect.get().to_owned())
                    .push_bind(body.addr.to_string())
                    .push_bind(body.token_hash.0.to_vec())
                    .push_bind(int(body.timeout_secs))
                    .push_bind(body.created_at.0)
                    .push_bind(expires.0)
                    .push_bind(1_i64);
            });
            qb.push(" RETURNING id, seq");
            let rows = qb.build().persistent(false).fetch_all(&mut *tx).await?;
            let mut seqs = HashMap::with_capacity(rows.len());
            for row in rows {
                seqs.insert(row.try_get::<Uuid, _>("id")?, row.try_get::<i64, _>("seq")?);
            }
            for (body, _) in chunk {
                let seq = seqs
                    .get(&body.id.0)
                    .copied()
                    .ok_or(sqlx::Error::RowNotFound)?;
                result.created_seqs.push(seq);
                notes.push(format!("{me}|u|{}", body.id));
            }
        }

        for (body, expires) in &batch.updates {
            let version: Option<i64> = sqlx::query_scalar(
                "UPDATE sessions SET name = $1, max_players = $2, players = $3, attributes = $4, \
                 connect = $5, timeout_secs = $6, expires_at_ms = $7, version = version + 1 \
                 WHERE id = $8 AND expires_at_ms > $9 RETURNING version",
            )
            .bind(&body.name)
            .bind(int(body.max_players))
            .bind(int(body.players))
            .bind(attributes_json(body))
            .bind(body.connect.get())
            .bind(int(body.timeout_secs))
            .bind(expires.0)
            .bind(body.id.0)
            .bind(now.0)
            .fetch_optional(&mut *tx)
            .await?;
            if version.is_some() {
                notes.push(format!("{me}|u|{}", body.id));
            }
            result.updated.push(version);
        }

        if !batch.heartbeats.is_empty() {
            let ids: Vec<Uuid> = batch.heartbeats.iter().map(|(id, _)| id.0).collect();
            let expiries: Vec<i64> = batch.heartbeats.iter().map(|(_, e)| e.0).collect();
            let rows = sqlx::query(
                "UPDATE sessions AS s SET expires_at_ms = v.e, version = s.version + 1 \
                 FROM UNNEST($1::uuid[], $2::int8[]) AS v(id, e) \
                 WHERE s.id = v.id AND s.expires_at_ms > $3 \
                 RETURNING s.id, s.version, s.expires_at_ms",
            )
            .bind(ids)
            .bind(expiries)
            .bind(now.0)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let id = SessionId(row.try_get("id")?);
                let live = Liveness {
                    expires_at: Millis(row.try_get("expires_at_ms")?),
                    version: row.try_get("version")?,
                };
                notes.push(format!(
                    "{me}|h|{id}|{}|{}",
                    live.version, live.expires_at.0
                ));
                result.heartbeats.insert(id, live);
            }
        }

        if !batch.deletes.is_empty() {
            let ids: Vec<Uuid> = batch.deletes.iter().map(|id| id.0).collect();
            let rows = sqlx::query("DELETE FROM sessions WHERE id = ANY($1) RETURNING id")
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                let id = SessionId(row.try_get("id")?);
                notes.push(format!("{me}|d|{id}"));
                result.deleted.insert(id);
            }
        }

        if batch.reap_limit > 0 {
            let rows = sqlx::query(
                "DELETE FROM sessions WHERE seq IN (SELECT seq FROM sessions \
                 WHERE expires_at_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
            )
            .bind(now.0)
            .bind(i64::try_from(batch.reap_limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let id = SessionId(row.try_get("id")?);
                notes.push(format!("{me}|d|{id}"));
                result.reaped.push(id);
            }
        }

        if !notes.is_empty() {
            sqlx::query("SELECT pg_notify($1, note) FROM UNNEST($2::text[]) AS note")
                .bind(NOTIFY_CHANNEL)
                .bind(notes)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(result)
    }
}

/// A validated count as a PostgreSQL `INTEGER` (validation keeps counts far below 2^31).
fn int(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn raw_row(row: &PgRow) -> Result<RawRow, sqlx::Error> {
    Ok(RawRow {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        game: row.try_get("game")?,
        name: row.try_get("name")?,
        max_players: i64::from(row.try_get::<i32, _>("max_players")?),
        players: i64::from(row.try_get::<i32, _>("players")?),
        attributes: row.try_get("attributes")?,
        connect: row.try_get("connect")?,
        addr: row.try_get("addr")?,
        token_hash: row.try_get("token_hash")?,
        timeout_secs: i64::from(row.try_get::<i32, _>("timeout_secs")?),
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        version: row.try_get("version")?,
    })
}

/// A change announced by another instance.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Reload(SessionId),
    Liveness(SessionId, Liveness),
    Deleted(SessionId),
}

/// Parses a notification; `None` for our own, or for malformed ones.
fn parse_note(payload: &str, me: Uuid) -> Option<Change> {
    let mut parts = payload.split('|');
    let instance = Uuid::try_parse(parts.next()?).ok()?;
    if instance == me {
        return None;
    }
    let kind = parts.next()?;
    let id = SessionId(Uuid::try_parse(parts.next()?).ok()?);
    match kind {
        "u" => Some(Change::Reload(id)),
        "d" => Some(Change::Deleted(id)),
        "h" => {
            let version = parts.next()?.parse().ok()?;
            let expires_at = Millis(parts.next()?.parse().ok()?);
            Some(Change::Liveness(
                id,
                Liveness {
                    expires_at,
                    version,
                },
            ))
        }
        _ => None,
    }
}

/// Keeps the local index coherent with changes other instances make.
pub struct PgChangeFeed {
    listener: PgListener,
    store: PgStore,
}

impl PgChangeFeed {
    /// Starts listening; call before loading the index so no change falls in between.
    pub async fn listen(store: &PgStore) -> Result<Self, StoreError> {
        let mut listener = PgListener::connect_with(&store.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(PgChangeFeed {
            listener,
            store: store.clone(),
        })
    }

    /// Applies changes until the task is dropped. On a lost connection (notifications
    /// may have been missed) it reloads every live row.
    pub async fn run(mut self, index: Arc<Index>) {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(note)) => self.apply(&index, note.payload()).await,
                Ok(None) => {
                    tracing::warn!("change feed connection lost; reloading every live row");
                    self.resync(&index).await;
                }
                Err(err) => {
                    tracing::warn!(%err, "change feed error; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn apply(&self, index: &Index, payload: &str) {
        let now = Millis::now();
        let reload = match parse_note(payload, self.store.instance) {
            None => return,
            Some(Change::Deleted(id)) => {
                index.remove(id);
                return;
            }
            Some(Change::Liveness(id, live)) => {
                if index.set_liveness(id, live) {
                    return;
                }
                id
            }
            Some(Change::Reload(id)) => id,
        };
        match self.store.load_one(reload, now).await {
            Ok(Some(row)) => index.upsert(row.body, row.live),
            Ok(None) => {
                index.remove(reload);
            }
            Err(err) => tracing::warn!(%err, session = %reload, "could not reload a changed row"),
        }
    }

    async fn resync(&self, index: &Index) {
        loop {
            match self.store.load_live(Millis::now()).await {
                Ok(rows) => {
                    index.replace_all(rows);
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "reload failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_parse_and_own_notes_are_skipped() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        let id = SessionId::random();
        assert_eq!(parse_note(&format!("{me}|u|{id}"), me), None);
        assert_eq!(
            parse_note(&format!("{other}|u|{id}"), me),
            Some(Change::Reload(id))
        );
        assert_eq!(
            parse_note(&format!("{other}|d|{id}"), me),
            Some(Change::Deleted(id))
        );
        assert_eq!(
            parse_note(&format!("{other}|h|{id}|7|1234"), me),
            Some(Change::Liveness(
                id,
                Liveness {
                    expires_at: Millis(1234),
                    version: 7
                }
            ))
        );
        assert_eq!(parse_note("garbage", me), None);
        assert_eq!(parse_note(&format!("{other}|h|{id}|x|1"), me), None);
    }
}
