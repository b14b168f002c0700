//! SQLite backend: one file, WAL journal, one writer.
//!
//! `synchronous=NORMAL` in WAL mode: a crash of the server loses nothing committed; only an
//! operating-system crash can lose the last batches (rows that would expire soon anyway).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

use super::{attributes_json, Batch, BatchResult, RawRow, StoreError, COLUMNS};
use crate::model::{Liveness, Session, SessionId};
use crate::time::Millis;

/// Rows per multi-row insert (13 binds each, far below SQLite's bind limit).
const INSERT_CHUNK: usize = 64;
/// Ids per heartbeat update or delete statement.
const ID_CHUNK: usize = 400;

pub(super) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let in_memory = url.contains(":memory:");
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        // An in-memory database exists once per connection: keep exactly one.
        .max_connections(if in_memory { 1 } else { 4 })
        .min_connections(if in_memory { 1 } else { 0 })
        .idle_timeout(if in_memory {
            None
        } else {
            Some(Duration::from_secs(600))
        })
        .max_lifetime(if in_memory {
            None
        } else {
            Some(Duration::from_secs(3600))
        })
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

fn raw_row(row: &sqlx::sqlite::SqliteRow) -> Result<Option<RawRow>, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let Ok(id) = Uuid::try_parse(&id) else {
        tracing::error!(id, "skipping a session row with a malformed id");
        return Ok(None);
    };
    Ok(Some(RawRow {
        seq: row.try_get("seq")?,
        id,
        game: row.try_get("game")?,
        name: row.try_get("name")?,
        max_players: row.try_get("max_players")?,
        players: row.try_get("players")?,
        attributes: row.try_get("attributes")?,
        connect: row.try_get("connect")?,
        addr: row.try_get("addr")?,
        token_hash: row.try_get("token_hash")?,
        timeout_secs: row.try_get("timeout_secs")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        version: row.try_get("version")?,
    }))
}

pub(super) async fn load_live(pool: &SqlitePool, now: Millis) -> Result<Vec<Session>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE expires_at_ms > ? ORDER BY seq");
    let rows = sqlx::query(&sql).bind(now.0).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(session) = raw_row(row)?.and_then(RawRow::into_session) {
            out.push(session);
        }
    }
    Ok(out)
}

pub(super) async fn load_one(
    pool: &SqlitePool,
    id: SessionId,
    now: Millis,
) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM sessions WHERE id = ? AND expires_at_ms > ?");
    let row = sqlx::query(&sql)
        .bind(id.0.to_string())
        .bind(now.0)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => raw_row(&row)?.and_then(RawRow::into_session),
        None => None,
    })
}

pub(super) async fn apply(
    pool: &SqlitePool,
    batch: &Batch,
    now: Millis,
) -> Result<BatchResult, StoreError> {
    let mut tx = pool.begin().await?;
    let mut result = BatchResult::default();

    for chunk in batch.creates.chunks(INSERT_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO sessions (id, game, name, max_players, players, attributes, connect, \
             addr, token_hash, timeout_secs, created_at_ms, expires_at_ms, version) ",
        );
        qb.push_values(chunk, |mut b, (body, expires)| {
            b.push_bind(body.id.0.to_string())
                .push_bind(body.game.clone())
                .push_bind(body.name.clone())
                .push_bind(i64::from(body.max_players))
                .push_bind(i64::from(body.players))
                .push_bind(attributes_json(body))
                .push_bind(body.connect.get().to_owned())
                .push_bind(body.addr.to_string())
                .push_bind(body.token_hash.0.to_vec())
                .push_bind(i64::from(body.timeout_secs))
                .push_bind(body.created_at.0)
                .push_bind(expires.0)
                .push_bind(1_i64);
        });
        qb.push(" RETURNING id, seq");
        let rows = qb.build().persistent(false).fetch_all(&mut *tx).await?;
        let mut seqs = HashMap::with_capacity(rows.len());
        for row in rows {
            seqs.insert(
                row.try_get::<String, _>("id")?,
                row.try_get::<i64, _>("seq")?,
            );
        }
        for (body, _) in chunk {
            let seq = seqs.get(&body.id.0.to_string()).copied();
            result
                .created_seqs
                .push(seq.ok_or(sqlx::Error::RowNotFound)?);
        }
    }

    for (body, expires) in &batch.updates {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE sessions SET name = ?, max_players = ?, players = ?, attributes = ?, \
             connect = ?, timeout_secs = ?, expires_at_ms = ?, version = version + 1 \
             WHERE id = ? AND expires_at_ms > ? RETURNING version",
        )
        .bind(&body.name)
        .bind(i64::from(body.max_players))
        .bind(i64::from(body.players))
        .bind(attributes_json(body))
        .bind(body.connect.get())
        .bind(i64::from(body.timeout_secs))
        .bind(expires.0)
        .bind(body.id.0.to_string())
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await?;
        result.updated.push(version);
    }

    for chunk in batch.heartbeats.chunks(ID_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE sessions SET expires_at_ms = v.column2, version = version + 1 FROM (",
        );
        qb.push_values(chunk, |mut b, (id, expires)| {
            b.push_bind(id.0.to_string()).push_bind(expires.0);
        });
        qb.push(") AS v WHERE sessions.id = v.column1 AND sessions.expires_at_ms > ");
        qb.push_bind(now.0);
        qb.push(" RETURNING id, version, expires_at_ms");
        for row in qb.build().persistent(false).fetch_all(&mut *tx).await? {
            let id: String = row.try_get("id")?;
            if let Ok(id) = Uuid::try_parse(&id) {
                let live = Liveness {
                    expires_at: Millis(row.try_get("expires_at_ms")?),
                    version: row.try_get("version")?,
                };
                result.heartbeats.insert(SessionId(id), live);
            }
        }
    }

    for chunk in batch.deletes.chunks(ID_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("DELETE FROM sessions WHERE id IN (");
        let mut ids = qb.separated(", ");
        for id in chunk {
            ids.push_bind(id.0.to_string());
        }
        qb.push(") RETURNING id");
        for row in qb.build().persistent(false).fetch_all(&mut *tx).await? {
            if let Ok(id) = Uuid::try_parse(&row.try_get::<String, _>("id")?) {
                result.deleted.insert(SessionId(id));
            }
        }
    }

    if batch.reap_limit > 0 {
        let rows = sqlx::query(
            "DELETE FROM sessions WHERE seq IN \
             (SELECT seq FROM sessions WHERE expires_at_ms <= ? LIMIT ?) RETURNING id",
        )
        .bind(now.0)
        .bind(i64::try_from(batch.reap_limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            if let Ok(id) = Uuid::try_parse(&row.try_get::<String, _>("id")?) {
                result.reaped.push(SessionId(id));
            }
        }
    }

    tx.commit().await?;
    Ok(result)
}
