//! The writer: the one task that writes the database, in batches (group commit).
//!
//! 1. Handlers send a [`WriteOp`] on a bounded queue (waiting at most `enqueue_timeout`
//!    when it is full, then answering 503) and await the reply.
//! 2. The writer takes the first op, then everything already queued (up to `max_batch`),
//!    and commits them in one transaction; once per `reap_interval` the batch also deletes
//!    rows expired for longer than `reap_grace`.
//! 3. After the commit it applies the changes to the in-memory [`Index`] and only then
//!    answers, so a client that got its answer reads its own write.
//! 4. On [`WriterStop::stop`] (or when every handle is dropped) the writer closes the
//!    queue, commits what is already in it, and stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::index::Index;
use crate::model::{Liveness, Session, SessionBody, SessionId};
use crate::store::{Batch, BatchResult, Store};
use crate::time::Millis;

/// The write failed for a server-side reason (logged by the writer).
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum WriteError {
    /// The queue stayed full for the whole enqueue timeout.
    #[error("write queue is full")]
    Overloaded,
    /// The database failed or timed out, or the writer stopped.
    #[error("database unavailable")]
    Unavailable,
}

type Reply<T> = oneshot::Sender<Result<T, WriteError>>;

/// The rows a heartbeat flush reached, with their new liveness.
pub type Confirmed = HashMap<SessionId, Liveness>;

/// One write, with where to send its outcome.
pub enum WriteOp {
    /// Insert a new row (its `seq` is filled in by the database).
    Create(SessionBody, Millis, Reply<Session>),
    /// Replace a row's body and expiry; `None` when the row is gone.
    Update(Arc<SessionBody>, Millis, Reply<Option<Session>>),
    /// Extend a row's life (id, `seq`, expiry); `None` when the row is gone.
    Heartbeat(SessionId, i64, Millis, Reply<Option<Liveness>>),
    /// Delete a row; `false` when it was already gone.
    Delete(SessionId, Reply<bool>),
    /// Write buffered heartbeats; answers the rows reached with their new liveness.
    FlushHeartbeats(Vec<(SessionId, i64, Millis)>, Reply<Confirmed>),
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Capacity of the queue (default 16,384 ops).
    pub queue: usize,
    /// Most ops per transaction (default 1,024).
    pub max_batch: usize,
    /// How long a handler waits for room in a full queue (default 2 s).
    pub enqueue_timeout: Duration,
    /// Longest a batch may take before its ops fail with 503 (default 10 s).
    pub batch_timeout: Duration,
    /// How often expired rows are deleted (default 1 s).
    pub reap_interval: Duration,
    /// Most expired rows deleted per batch (default 2,000).
    pub reap_limit: usize,
    /// How long after expiry a row is deleted (default 10 s). Reads hide a row the moment
    /// it expires; the grace only keeps the reaper from racing a heartbeat that was
    /// acknowledged just before expiry and is still waiting in the write-behind buffer.
    pub reap_grace: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue: 16_384,
            max_batch: 1024,
            enqueue_timeout: Duration::from_secs(2),
            batch_timeout: Duration::from_secs(10),
            reap_interval: Duration::from_secs(1),
            reap_limit: 2000,
            reap_grace: Duration::from_secs(10),
        }
    }
}

/// The handlers' side of the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteOp>,
    enqueue_timeout: Duration,
}

impl WriterHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send_timeout(make(reply), self.enqueue_timeout)
            .await
            .map_err(|err| match err {
                mpsc::error::SendTimeoutError::Timeout(_) => WriteError::Overloaded,
                mpsc::error::SendTimeoutError::Closed(_) => WriteError::Unavailable,
            })?;
        answer.await.map_err(|_| WriteError::Unavailable)?
    }

    /// Inserts a row; returns it with its `seq`.
    pub async fn create(&self, body: SessionBody, expires: Millis) -> Result<Session, WriteError> {
        self.call(|r| WriteOp::Create(body, expires, r)).await
    }

    /// Replaces a row's body and expiry.
    pub async fn update(
        &self,
        body: Arc<SessionBody>,
        expires: Millis,
    ) -> Result<Option<Session>, WriteError> {
        self.call(|r| WriteOp::Update(body, expires, r)).await
    }

    /// Extends a row's life.
    pub async fn heartbeat(
        &self,
        id: SessionId,
        seq: i64,
        expires: Millis,
    ) -> Result<Option<Liveness>, WriteError> {
        self.call(|r| WriteOp::Heartbeat(id, seq, expires, r)).await
    }

    /// Deletes a row.
    pub async fn delete(&self, id: SessionId) -> Result<bool, WriteError> {
        self.call(|r| WriteOp::Delete(id, r)).await
    }

    /// Writes buffered heartbeats (see [`crate::heartbeats`]).
    pub async fn flush_heartbeats(
        &self,
        entries: Vec<(SessionId, i64, Millis)>,
    ) -> Result<Confirmed, WriteError> {
        self.call(|r| WriteOp::FlushHeartbeats(entries, r)).await
    }

    /// Whether the writer is still running.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Tells the writer to finish the queued ops and stop.
pub struct WriterStop(oneshot::Sender<()>);

impl WriterStop {
    /// Closes the queue; ops already queued are still committed.
    pub fn stop(self) {
        let _ = self.0.send(());
    }
}

/// The writer task's state.
pub struct Writer {
    rx: mpsc::Receiver<WriteOp>,
    stop: oneshot::Receiver<()>,
    store: Store,
    index: Arc<Index>,
    config: WriterConfig,
}

/// Creates a writer, its handle and its stop switch; spawn [`Writer::run`].
pub fn writer(
    store: Store,
    index: Arc<Index>,
    config: WriterConfig,
) -> (Writer, WriterHandle, WriterStop) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let (stop_tx, stop) = oneshot::channel();
    let handle = WriterHandle {
        tx,
        enqueue_timeout: config.enqueue_timeout,
    };
    (
        Writer {
            rx,
            stop,
            store,
            index,
            config,
        },
        handle,
        WriterStop(stop_tx),
    )
}

/// Replies of one batch, in the order of the batch's vectors.
#[derive(Default)]
struct Replies {
    creates: Vec<Reply<Session>>,
    updates: Vec<Reply<Option<Session>>>,
    heartbeats: Vec<(SessionId, Reply<Option<Liveness>>)>,
    deletes: Vec<(SessionId, Reply<bool>)>,
    flushes: Vec<(Vec<SessionId>, Reply<Confirmed>)>,
}

impl Writer {
    /// Runs until every handle is dropped and the queue is drained.
    pub async fn run(mut self) {
        let mut reap = tokio::time::interval(self.config.reap_interval);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ops = Vec::with_capacity(self.config.max_batch);
        let mut stopping = false;
        loop {
            let mut reap_now = false;
            tokio::select! {
                op = self.rx.recv() => match op {
                    Some(op) => ops.push(op),
                    None => break,
                },
                _ = &mut self.stop, if !stopping => {
                    // Refuse new ops; recv() yields what is queued, then None.
                    self.rx.close();
                    stopping = true;
                    continue;
                }
                _ = reap.tick(), if !stopping => reap_now = true,
            }
            while ops.len() < self.config.max_batch {
                match self.rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.commit(&mut ops, reap_now).await;
        }
        tracing::debug!("writer stopped");
    }

    async fn commit(&mut self, ops: &mut Vec<WriteOp>, reap: bool) {
        let now = Millis::now();
        let grace = i64::try_from(self.config.reap_grace.as_millis()).unwrap_or(i64::MAX);
        let mut batch = Batch {
            reap_limit: if reap { self.config.reap_limit } else { 0 },
            reap_before: Millis(now.0.saturating_sub(grace)),
            ..Batch::default()
        };
        let mut replies = Replies::default();
        for op in ops.drain(..) {
            match op {
                WriteOp::Create(body, expires, reply) => {
                    batch.creates.push((body, expires));
                    replies.creates.push(reply);
                }
                WriteOp::Update(body, expires, reply) => {
                    batch.updates.push((body, expires));
                    replies.updates.push(reply);
                }
                WriteOp::Heartbeat(id, seq, expires, reply) => {
                    batch.heartbeats.push((id, seq, expires));
                    replies.heartbeats.push((id, reply));
                }
                WriteOp::Delete(id, reply) => {
                    batch.deletes.push(id);
                    replies.deletes.push((id, reply));
                }
                WriteOp::FlushHeartbeats(entries, reply) => {
                    let ids = entries.iter().map(|(id, ..)| *id).collect();
                    batch.heartbeats.extend(entries);
                    replies.flushes.push((ids, reply));
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let outcome = tokio::time::timeout(self.config.batch_timeout, self.store.apply(&batch))
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut.into()));
        match outcome {
            Ok(result) => self.finish(batch, result, replies),
            Err(err) => {
                tracing::error!(%err, "write batch failed");
                metrics::counter!("master_write_errors_total").increment(1);
                fail_all(replies);
            }
        }
    }

    /// Applies a committed batch to the index, then answers every op.
    fn finish(&self, batch: Batch, result: BatchResult, replies: Replies) {
        let index = &self.index;
        for (((mut body, expires), seq), reply) in batch
            .creates
            .into_iter()
            .zip(result.created_seqs)
            .zip(replies.creates)
        {
            body.seq = seq;
            let row = Session {
                body: Arc::new(body),
                live: Liveness {
                    expires_at: expires,
                    version: 1,
                },
            };
            index.upsert(row.body.clone(), row.live);
            let _ = reply.send(Ok(row));
        }
        for (((body, expires), version), reply) in batch
            .updates
            .into_iter()
            .zip(result.updated)
            .zip(replies.updates)
        {
            let row = version.map(|version| Session {
                body,
                live: Liveness {
                    expires_at: expires,
                    version,
                },
            });
            if let Some(row) = &row {
                index.upsert(row.body.clone(), row.live);
            }
            let _ = reply.send(Ok(row));
        }
        for (id, reply) in replies.heartbeats {
            let live = result.heartbeats.get(&id).copied();
            if let Some(live) = live {
                index.set_liveness(id, live);
            }
            let _ = reply.send(Ok(live));
        }
        for (ids, reply) in replies.flushes {
            let confirmed = ids
                .into_iter()
                .filter_map(|id| result.heartbeats.get(&id).map(|live| (id, *live)))
                .collect();
            let _ = reply.send(Ok(confirmed));
        }
        for (id, reply) in replies.deletes {
            let deleted = result.deleted.contains(&id);
            index.remove(id);
            let _ = reply.send(Ok(deleted));
        }
        for id in &result.reaped {
            index.remove(*id);
        }
        if !result.reaped.is_empty() {
            metrics::counter!("master_sessions_expired_total")
                .increment(result.reaped.len() as u64);
            tracing::debug!(count = result.reaped.len(), "reaped expired sessions");
        }
    }
}

fn fail_all(replies: Replies) {
    let err = WriteError::Unavailable;
    for reply in replies.creates {
        let _ = reply.send(Err(err));
    }
    for reply in replies.updates {
        let _ = reply.send(Err(err));
    }
    for (_, reply) in replies.heartbeats {
        let _ = reply.send(Err(err));
    }
    for (_, reply) in replies.deletes {
        let _ = reply.send(Err(err));
    }
    for (_, reply) in replies.flushes {
        let _ = reply.send(Err(err));
    }
}
