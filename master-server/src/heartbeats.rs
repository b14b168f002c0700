//! Write-behind heartbeats: acknowledged from memory, written in coalesced batches.
//!
//! Heartbeats are the bulk of a listing service's writes and carry one fact: "row R lives
//! until T". Committing each before answering would cap them at the database's commit
//! rate, so:
//! 1. The handler checks the token against the index, extends the row in the index (reads
//!    see it at once) and records `R -> T` here; a later heartbeat of R overwrites T.
//!    Liveness is decided here, at acknowledgement: the flush writes the new expiry even
//!    if the stored one has passed meanwhile, and the reaper's grace period keeps such a
//!    row in the database until its flush lands.
//! 2. Every `flush_interval` the flusher hands all pending entries to the
//!    [writer](crate::writer) as one batch; the database answers each row's new version,
//!    which is confirmed in the index (and, with PostgreSQL, announced to other instances).
//! 3. A failed flush puts its entries back (unless newer ones arrived) and retries.
//! 4. Shutdown flushes what is pending before the writer stops.
//!
//! What a crash can lose: at most one flush interval of heartbeats; those rows keep their
//! previous expiry. Creates, patches and deletes are still answered only after commit.
//! A patch or delete drops the row's pending entry, so an older heartbeat never overrides
//! a newer expiry the patch set. The table is bounded: when it is full, heartbeats fall back
//! to a synchronous commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::index::Index;
use crate::model::SessionId;
use crate::time::Millis;
use crate::writer::WriterHandle;

/// Pending heartbeats, one entry per row.
pub struct HeartbeatBuffer {
    /// id -> (seq, expiry).
    pending: Mutex<HashMap<SessionId, (i64, Millis)>>,
    capacity: usize,
}

impl HeartbeatBuffer {
    /// A buffer holding at most `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        HeartbeatBuffer {
            pending: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, (i64, Millis)>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a heartbeat; `false` when the buffer is full (commit it synchronously).
    pub fn put(&self, id: SessionId, seq: i64, expires: Millis) -> bool {
        let mut pending = self.lock();
        if pending.len() >= self.capacity && !pending.contains_key(&id) {
            return false;
        }
        pending.insert(id, (seq, expires));
        true
    }

    /// Forgets a row's pending heartbeat (after a patch or delete).
    pub fn forget(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    /// Takes everything pending.
    fn take(&self) -> HashMap<SessionId, (i64, Millis)> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back entries of a failed flush unless a newer heartbeat replaced them.
    fn restore(&self, entries: Vec<(SessionId, i64, Millis)>) {
        let mut pending = self.lock();
        for (id, seq, expires) in entries {
            pending.entry(id).or_insert((seq, expires));
        }
    }

    /// Number of rows with a pending heartbeat.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes one flush; returns whether it committed.
async fn flush(buffer: &HeartbeatBuffer, writer: &WriterHandle, index: &Index) -> bool {
    let entries: Vec<(SessionId, i64, Millis)> = buffer
        .take()
        .into_iter()
        .map(|(id, (seq, expires))| (id, seq, expires))
        .collect();
    if entries.is_empty() {
        return true;
    }
    match writer.flush_heartbeats(entries.clone()).await {
        Ok(confirmed) => {
            for (id, live) in confirmed {
                index.confirm(id, live);
            }
            metrics::counter!("master_heartbeats_flushed_total").increment(entries.len() as u64);
            true
        }
        Err(err) => {
            tracing::warn!(%err, rows = entries.len(), "heartbeat flush failed; will retry");
            buffer.restore(entries);
            false
        }
    }
}

/// Flushes every `every` until `stop` fires, then flushes once more.
pub async fn run_flusher(
    buffer: Arc<HeartbeatBuffer>,
    writer: WriterHandle,
    index: Arc<Index>,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                flush(&buffer, &writer, &index).await;
            }
            _ = &mut stop => break,
        }
    }
    // Final flush on shutdown: a few tries, the writer is still running.
    for _ in 0..3 {
        if flush(&buffer, &writer, &index).await {
            return;
        }
    }
    tracing::error!(
        rows = buffer.len(),
        "pending heartbeats could not be written at shutdown"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_bounds_and_restores() {
        let buffer = HeartbeatBuffer::new(2);
        let (a, b, c) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        assert!(buffer.put(a, 1, Millis(1)));
        assert!(
            buffer.put(a, 1, Millis(2)),
            "a row's newer heartbeat replaces the older"
        );
        assert!(buffer.put(b, 2, Millis(1)));
        assert!(
            !buffer.put(c, 3, Millis(1)),
            "full: the caller commits synchronously"
        );
        assert_eq!(buffer.len(), 2);
        let taken = buffer.take();
        assert_eq!(taken.get(&a), Some(&(1, Millis(2))));
        assert!(buffer.is_empty());
        buffer.put(a, 1, Millis(5));
        buffer.restore(
            taken
                .into_iter()
                .map(|(id, (seq, e))| (id, seq, e))
                .collect(),
        );
        assert_eq!(
            buffer.take().get(&a),
            Some(&(1, Millis(5))),
            "restore keeps newer entries"
        );
        buffer.put(b, 2, Millis(3));
        buffer.forget(b);
        assert!(buffer.is_empty());
    }
}
