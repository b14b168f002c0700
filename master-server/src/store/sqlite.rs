//! SQLite backend: one file, WAL journal, one writer.
//!
//! `synchronous=NORMAL` in WAL mode: a crash of the server loses nothing committed; only an
//! operating-system crash can lose the last batches (rows that would expire soon anyway).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::fmt::Write as _;

use sqlx::{Acquire, Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{attributes_json, Batch, BatchResult, RawRow, StoreError, COLUMNS, FROM};
use crate::model::{Liveness, Session, SessionId};
use crate::time::Millis;

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
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE l.expires_at_ms > ? ORDER BY s.seq");
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
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE s.id = ? AND l.expires_at_ms > ?");
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

pub(super) async fn apply(pool: &SqlitePool, batch: &Batch) -> Result<BatchResult, StoreError> {
    let mut conn = pool.acquire().await?;
    // One statement is atomic on its own: skip BEGIN/COMMIT round trips then.
    if statements(batch) <= 1 {
        return run(&mut conn, batch).await;
    }
    let mut tx = conn.begin().await?;
    let result = run(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(result)
}

fn statements(batch: &Batch) -> usize {
    2 * usize::from(!batch.creates.is_empty())
        + 2 * batch.updates.len()
        + usize::from(!batch.heartbeats.is_empty())
        + 2 * usize::from(!batch.deletes.is_empty())
        + 2 * usize::from(batch.reap_limit > 0)
}

/// A JSON array of integers, e.g. `[1,2,3]`.
fn int_array(values: impl Iterator<Item = i64>) -> String {
    let mut json = String::from("[");
    for (i, value) in values.enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "{value}");
    }
    json.push(']');
    json
}

/// Runs a batch's statements. Each kind of write is one static statement per table over a
/// JSON array (`json_each`), so SQLite prepares it once per connection whatever the batch
/// size.
async fn run(conn: &mut SqliteConnection, batch: &Batch) -> Result<BatchResult, StoreError> {
    let mut result = BatchResult::default();

    if !batch.creates.is_empty() {
        let rows: Vec<_> = batch
            .creates
            .iter()
            .map(|(body, _)| {
                (
                    body.id.0.to_string(),
                    &body.game,
                    &body.name,
                    body.max_players,
                    body.players,
                    attributes_json(body),
                    body.connect.get(),
                    body.addr.to_string(),
                    hex::encode(body.token_hash.0),
                    body.timeout_secs,
                    body.created_at.0,
                )
            })
            .collect();
        let json = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let returned = sqlx::query(
            "INSERT INTO sessions (id, game, name, max_players, players, attributes, connect, \
             addr, token_hash, timeout_secs, created_at_ms) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
             value ->> 5, value ->> 6, value ->> 7, unhex(value ->> 8), value ->> 9, \
             value ->> 10 FROM json_each(?1) RETURNING id, seq",
        )
        .bind(json)
        .fetch_all(&mut *conn)
        .await?;
        let mut seqs = HashMap::with_capacity(returned.len());
        for row in returned {
            seqs.insert(
                row.try_get::<String, _>("id")?,
                row.try_get::<i64, _>("seq")?,
            );
        }
        let mut liveness = String::from("[");
        for (i, ((id, ..), (_, expires))) in rows.iter().zip(&batch.creates).enumerate() {
            let seq = seqs.get(id).copied().ok_or(sqlx::Error::RowNotFound)?;
            result.created_seqs.push(seq);
            if i > 0 {
                liveness.push(',');
            }
            let _ = write!(liveness, "[{seq},{}]", expires.0);
        }
        liveness.push(']');
        sqlx::query(
            "INSERT INTO session_liveness (seq, expires_at_ms, version) \
             SELECT value ->> 0, value ->> 1, 1 FROM json_each(?1)",
        )
        .bind(liveness)
        .execute(&mut *conn)
        .await?;
    }

    for (body, expires) in &batch.updates {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE session_liveness SET expires_at_ms = ?, version = version + 1 \
             WHERE seq = ? RETURNING version",
        )
        .bind(expires.0)
        .bind(body.seq)
        .fetch_optional(&mut *conn)
        .await?;
        if version.is_some() {
            sqlx::query(
                "UPDATE sessions SET name = ?, max_players = ?, players = ?, attributes = ?, \
                 connect = ?, timeout_secs = ? WHERE seq = ?",
            )
            .bind(&body.name)
            .bind(i64::from(body.max_players))
            .bind(i64::from(body.players))
            .bind(attributes_json(body))
            .bind(body.connect.get())
            .bind(i64::from(body.timeout_secs))
            .bind(body.seq)
            .execute(&mut *conn)
            .await?;
        }
        result.updated.push(version);
    }

    if !batch.heartbeats.is_empty() {
        let mut ids = HashMap::with_capacity(batch.heartbeats.len());
        let mut json = String::with_capacity(batch.heartbeats.len() * 24 + 2);
        json.push('[');
        for (i, (id, seq, expires)) in batch.heartbeats.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            let _ = write!(json, "[{seq},{}]", expires.0);
            ids.insert(*seq, *id);
        }
        json.push(']');
        let rows = sqlx::query(
            "UPDATE session_liveness SET expires_at_ms = hb.e, version = version + 1 \
             FROM (SELECT value ->> 0 AS seq, value ->> 1 AS e FROM json_each(?1)) AS hb \
             WHERE session_liveness.seq = hb.seq RETURNING seq, version, expires_at_ms",
        )
        .bind(json)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            if let Some(id) = ids.get(&row.try_get::<i64, _>("seq")?) {
                let live = Liveness {
                    expires_at: Millis(row.try_get("expires_at_ms")?),
                    version: row.try_get("version")?,
                };
                result.heartbeats.insert(*id, live);
            }
        }
    }

    if !batch.deletes.is_empty() {
        let ids: Vec<String> = batch.deletes.iter().map(|id| id.0.to_string()).collect();
        let json = serde_json::to_string(&ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let rows = sqlx::query(
            "DELETE FROM sessions WHERE id IN (SELECT value FROM json_each(?1)) \
             RETURNING id, seq",
        )
        .bind(json)
        .fetch_all(&mut *conn)
        .await?;
        let mut seqs = Vec::with_capacity(rows.len());
        for row in rows {
            seqs.push(row.try_get::<i64, _>("seq")?);
            if let Ok(id) = Uuid::try_parse(&row.try_get::<String, _>("id")?) {
                result.deleted.insert(SessionId(id));
            }
        }
        sqlx::query("DELETE FROM session_liveness WHERE seq IN (SELECT value FROM json_each(?1))")
            .bind(int_array(seqs.into_iter()))
            .execute(&mut *conn)
            .await?;
    }

    if batch.reap_limit > 0 {
        let expired: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM session_liveness WHERE seq IN \
             (SELECT seq FROM session_liveness WHERE expires_at_ms <= ? LIMIT ?) RETURNING seq",
        )
        .bind(batch.reap_before.0)
        .bind(i64::try_from(batch.reap_limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
        if !expired.is_empty() {
            let rows: Vec<String> = sqlx::query_scalar(
                "DELETE FROM sessions WHERE seq IN (SELECT value FROM json_each(?1)) RETURNING id",
            )
            .bind(int_array(expired.into_iter()))
            .fetch_all(&mut *conn)
            .await?;
            for id in rows {
                if let Ok(id) = Uuid::try_parse(&id) {
                    result.reaped.push(SessionId(id));
                }
            }
        }
    }
    Ok(result)
}
