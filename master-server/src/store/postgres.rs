//! PostgreSQL backend: many master-server instances share one database.
//!
//! Every batch also announces its changes with `pg_notify` on [`NOTIFY_CHANNEL`], in the
//! same transaction, so they are delivered exactly when the change commits. Items of one
//! kind are packed, `;`-separated, into notifications of at most 7,000 bytes:
//! - `INSTANCE|u|ID;ID...` — rows created or patched: reload them;
//! - `INSTANCE|h|ID,VERSION,EXPIRES_MS;...` — heartbeats: new liveness;
//! - `INSTANCE|d|ID;ID...` — rows deleted or reaped.
//!
//! [`PgChangeFeed`] listens on every instance and applies other instances' changes to the
//! local index; when its connection drops it reloads every live row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{attributes_json, Batch, BatchResult, RawRow, StoreError, COLUMNS, FROM};
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
        let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE l.expires_at_ms > $1 ORDER BY s.seq");
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
        let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE s.id = $1 AND l.expires_at_ms > $2");
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

    pub(super) async fn apply(&self, batch: &Batch) -> Result<BatchResult, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut result = BatchResult::default();
        let mut notes = Notes::new(self.instance);

        for chunk in batch.creates.chunks(INSERT_CHUNK) {
            let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO sessions (id, game, name, max_players, players, attributes, \
                 connect, addr, token_hash, timeout_secs, created_at_ms) ",
            );
            qb.push_values(chunk, |mut b, (body, _)| {
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
                    .push_bind(body.created_at.0);
            });
            qb.push(" RETURNING id, seq");
            let rows = qb.build().persistent(false).fetch_all(&mut *tx).await?;
            let mut seqs = HashMap::with_capacity(rows.len());
            for row in rows {
                seqs.insert(row.try_get::<Uuid, _>("id")?, row.try_get::<i64, _>("seq")?);
            }
            let mut chunk_seqs = Vec::with_capacity(chunk.len());
            for (body, _) in chunk {
                let seq = seqs
                    .get(&body.id.0)
                    .copied()
                    .ok_or(sqlx::Error::RowNotFound)?;
                chunk_seqs.push(seq);
                notes.push('u', &body.id.to_string());
            }
            let expiries: Vec<i64> = chunk.iter().map(|(_, e)| e.0).collect();
            sqlx::query(
                "INSERT INTO session_liveness (seq, expires_at_ms, version) \
                 SELECT seq, e, 1 FROM UNNEST($1::int8[], $2::int8[]) AS v(seq, e)",
            )
            .bind(&chunk_seqs)
            .bind(expiries)
            .execute(&mut *tx)
            .await?;
            result.created_seqs.extend(chunk_seqs);
        }

        for (body, expires) in &batch.updates {
            let version: Option<i64> = sqlx::query_scalar(
                "UPDATE session_liveness SET expires_at_ms = $1, version = version + 1 \
                 WHERE seq = $2 RETURNING version",
            )
            .bind(expires.0)
            .bind(body.seq)
            .fetch_optional(&mut *tx)
            .await?;
            if version.is_some() {
                sqlx::query(
                    "UPDATE sessions SET name = $1, max_players = $2, players = $3, \
                     attributes = $4, connect = $5, timeout_secs = $6 WHERE seq = $7",
                )
                .bind(&body.name)
                .bind(int(body.max_players))
                .bind(int(body.players))
                .bind(attributes_json(body))
                .bind(body.connect.get())
                .bind(int(body.timeout_secs))
                .bind(body.seq)
                .execute(&mut *tx)
                .await?;
                notes.push('u', &body.id.to_string());
            }
            result.updated.push(version);
        }

        if !batch.heartbeats.is_empty() {
            let ids: HashMap<i64, SessionId> = batch
                .heartbeats
                .iter()
                .map(|(id, seq, _)| (*seq, *id))
                .collect();
            let seqs: Vec<i64> = batch.heartbeats.iter().map(|(_, seq, _)| *seq).collect();
            let expiries: Vec<i64> = batch.heartbeats.iter().map(|(_, _, e)| e.0).collect();
            let rows = sqlx::query(
                "UPDATE session_liveness AS l SET expires_at_ms = v.e, version = l.version + 1 \
                 FROM UNNEST($1::int8[], $2::int8[]) AS v(seq, e) \
                 WHERE l.seq = v.seq RETURNING l.seq, l.version, l.expires_at_ms",
            )
            .bind(seqs)
            .bind(expiries)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let Some(id) = ids.get(&row.try_get::<i64, _>("seq")?).copied() else {
                    continue;
                };
                let live = Liveness {
                    expires_at: Millis(row.try_get("expires_at_ms")?),
                    version: row.try_get("version")?,
                };
                notes.push('h', &format!("{id},{},{}", live.version, live.expires_at.0));
                result.heartbeats.insert(id, live);
            }
        }

        if !batch.deletes.is_empty() {
            let ids: Vec<Uuid> = batch.deletes.iter().map(|id| id.0).collect();
            let rows = sqlx::query("DELETE FROM sessions WHERE id = ANY($1) RETURNING id, seq")
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
            let mut seqs = Vec::with_capacity(rows.len());
            for row in rows {
                let id = SessionId(row.try_get("id")?);
                seqs.push(row.try_get::<i64, _>("seq")?);
                notes.push('d', &id.to_string());
                result.deleted.insert(id);
            }
            sqlx::query("DELETE FROM session_liveness WHERE seq = ANY($1)")
                .bind(seqs)
                .execute(&mut *tx)
                .await?;
        }

        if batch.reap_limit > 0 {
            let rows = sqlx::query(
                "WITH expired AS (DELETE FROM session_liveness WHERE seq IN \
                 (SELECT seq FROM session_liveness WHERE expires_at_ms <= $1 LIMIT $2 \
                 FOR UPDATE SKIP LOCKED) RETURNING seq) \
                 DELETE FROM sessions WHERE seq IN (SELECT seq FROM expired) RETURNING id",
            )
            .bind(batch.reap_before.0)
            .bind(i64::try_from(batch.reap_limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let id = SessionId(row.try_get("id")?);
                notes.push('d', &id.to_string());
                result.reaped.push(id);
            }
        }

        let notes = notes.finish();
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

/// Change notifications of one batch, packed: `INSTANCE|KIND|ITEM;ITEM;...` with one kind
/// per notification and at most [`NOTE_BYTES`] bytes each (PostgreSQL's payload limit is
/// 8000), so a flush of thousands of heartbeats sends a few dozen notifications.
struct Notes {
    prefix: String,
    open: Vec<(char, String)>,
    done: Vec<String>,
}

/// Largest notification payload we build.
const NOTE_BYTES: usize = 7_000;

impl Notes {
    fn new(instance: Uuid) -> Self {
        Notes {
            prefix: instance.to_string(),
            open: Vec::new(),
            done: Vec::new(),
        }
    }

    fn push(&mut self, kind: char, item: &str) {
        let slot = match self.open.iter().position(|(k, _)| *k == kind) {
            Some(slot) => slot,
            None => {
                self.open.push((kind, String::new()));
                self.open.len() - 1
            }
        };
        let note = &mut self.open[slot].1;
        if note.len() + item.len() + 1 > NOTE_BYTES {
            self.done.push(std::mem::take(note));
        }
        if note.is_empty() {
            note.push_str(&self.prefix);
            note.push('|');
            note.push(kind);
            note.push('|');
        } else {
            note.push(';');
        }
        note.push_str(item);
    }

    fn finish(mut self) -> Vec<String> {
        self.done.extend(
            self.open
                .into_iter()
                .map(|(_, note)| note)
                .filter(|n| !n.is_empty()),
        );
        self.done
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

/// Parses a packed notification; nothing for our own, or for malformed items.
fn parse_note(payload: &str, me: Uuid) -> Vec<Change> {
    let mut parts = payload.splitn(3, '|');
    let (Some(instance), Some(kind), Some(items)) = (parts.next(), parts.next(), parts.next())
    else {
        return Vec::new();
    };
    if Uuid::try_parse(instance).map_or(true, |instance| instance == me) {
        return Vec::new();
    }
    items
        .split(';')
        .filter_map(|item| {
            let mut fields = item.split(',');
            let id = SessionId(Uuid::try_parse(fields.next()?).ok()?);
            match kind {
                "u" => Some(Change::Reload(id)),
                "d" => Some(Change::Deleted(id)),
                "h" => {
                    let version = fields.next()?.parse().ok()?;
                    let expires_at = Millis(fields.next()?.parse().ok()?);
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
        })
        .collect()
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
                Ok(Some(note)) => {
                    for change in parse_note(note.payload(), self.store.instance) {
                        self.apply(&index, change).await;
                    }
                }
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

    async fn apply(&self, index: &Index, change: Change) {
        let now = Millis::now();
        let reload = match change {
            Change::Deleted(id) => {
                index.remove(id);
                return;
            }
            Change::Liveness(id, live) => {
                if index.set_liveness(id, live) {
                    return;
                }
                id
            }
            Change::Reload(id) => id,
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
    fn notes_pack_and_parse_and_own_notes_are_skipped() {
        let me = Uuid::new_v4();
        let other = Uuid::new_v4();
        let (a, b) = (SessionId::random(), SessionId::random());
        let mut notes = Notes::new(other);
        notes.push('u', &a.to_string());
        notes.push('h', &format!("{b},7,1234"));
        notes.push('d', &b.to_string());
        notes.push('h', &format!("{a},2,99"));
        let packed = notes.finish();
        assert_eq!(packed.len(), 3, "one notification per kind: {packed:?}");
        let changes: Vec<Change> = packed.iter().flat_map(|p| parse_note(p, me)).collect();
        assert!(changes.contains(&Change::Reload(a)));
        assert!(changes.contains(&Change::Deleted(b)));
        assert!(changes.contains(&Change::Liveness(
            b,
            Liveness {
                expires_at: Millis(1234),
                version: 7
            }
        )));
        assert!(changes.contains(&Change::Liveness(
            a,
            Liveness {
                expires_at: Millis(99),
                version: 2
            }
        )));
        assert!(
            packed.iter().all(|p| parse_note(p, other).is_empty()),
            "own notes are skipped"
        );
        assert!(parse_note("garbage", me).is_empty());
        assert!(parse_note(&format!("{other}|h|{a},x,1"), me).is_empty());

        let mut many = Notes::new(other);
        for _ in 0..1000 {
            many.push('d', &SessionId::random().to_string());
        }
        let packed = many.finish();
        assert!(packed.len() > 1 && packed.iter().all(|p| p.len() <= NOTE_BYTES));
        assert_eq!(packed.iter().flat_map(|p| parse_note(p, me)).count(), 1000);
    }
}
