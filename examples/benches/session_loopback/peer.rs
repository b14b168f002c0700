//! The in-process peers of the bench: one task per `Session` that records every message
//! it receives (latency, order) and obeys the bench's commands (broadcast load, leave).

use super::*;

/// What one peer's task records.
pub(crate) struct Rec {
    pub(crate) unreliable: Histogram<u64>,
    pub(crate) reliable: Histogram<u64>,
    pub(crate) unreliable_received: u64,
    pub(crate) reliable_received: u64,
    pub(crate) reliable_out_of_order: u64,
    pub(crate) last_reliable: HashMap<u8, u32>,
    pub(crate) saturate_received: u64,
    pub(crate) saturate_out_of_order: u64,
    pub(crate) saturate_last_seq: Option<u32>,
    pub(crate) saturate_last_at: Option<Instant>,
    pub(crate) unreliable_broadcasts: u64,
    pub(crate) reliable_broadcasts: u64,
    pub(crate) send_errors: HashMap<&'static str, u64>,
    pub(crate) host_changed: Option<(Instant, PeerId)>,
    pub(crate) ended: Option<String>,
}

impl Rec {
    pub(crate) fn new() -> Self {
        let hist = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
        Self {
            unreliable: hist(),
            reliable: hist(),
            unreliable_received: 0,
            reliable_received: 0,
            reliable_out_of_order: 0,
            last_reliable: HashMap::new(),
            saturate_received: 0,
            saturate_out_of_order: 0,
            saturate_last_seq: None,
            saturate_last_at: None,
            unreliable_broadcasts: 0,
            reliable_broadcasts: 0,
            send_errors: HashMap::new(),
            host_changed: None,
            ended: None,
        }
    }

    pub(crate) fn on_message(&mut self, bytes: &[u8], reliability: Reliability) {
        let now = Instant::now();
        if bytes.len() != MSG_LEN {
            *self.send_errors.entry("bad message received").or_default() += 1;
            return;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[..8]);
        let latency = micros_since_epoch(now).saturating_sub(u64::from_le_bytes(ts));
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&bytes[9..13]);
        let seq = u32::from_le_bytes(seq);
        let sender = bytes[13];
        match (bytes[8], reliability) {
            (KIND_UNRELIABLE, Reliability::Unreliable) => {
                self.unreliable_received += 1;
                let _ = self.unreliable.record(latency.max(1));
            }
            (KIND_RELIABLE, Reliability::ReliableOrdered) => {
                self.reliable_received += 1;
                let _ = self.reliable.record(latency.max(1));
                if let Some(prev) = self.last_reliable.insert(sender, seq) {
                    if seq != prev + 1 {
                        self.reliable_out_of_order += 1;
                    }
                }
            }
            (KIND_SATURATE, Reliability::ReliableOrdered) => {
                self.saturate_received += 1;
                if self.saturate_last_seq.is_some_and(|p| seq <= p) {
                    self.saturate_out_of_order += 1;
                }
                self.saturate_last_seq = Some(seq);
                self.saturate_last_at = Some(now);
            }
            _ => {
                *self
                    .send_errors
                    .entry("unexpected message kind")
                    .or_default() += 1
            }
        }
    }
}

type Shared = Arc<Mutex<Rec>>;

pub(crate) fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Rec> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of `Session::stats`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Drops {
    pub(crate) events: u64,
    pub(crate) frames: u64,
    pub(crate) datagrams: u64,
    pub(crate) violations: u64,
}

/// What the bench asks of a peer's task.
pub(crate) enum Ctl {
    /// Broadcast at 60 Hz (unreliable) and 10 Hz (reliable) until then.
    Traffic(Instant),
    /// Broadcast reliable messages as fast as accepted until then; answers (accepted,
    /// queue full, elapsed).
    Saturate(Instant, oneshot::Sender<(u64, u64, Duration)>),
    Stats(oneshot::Sender<Drops>),
    Leave(oneshot::Sender<()>),
    /// Drop the session without leaving.
    Abort(oneshot::Sender<Instant>),
}

/// One in-process peer: its session runs in a task that takes every event (and accepts
/// every join request).
pub(crate) struct Peer {
    pub(crate) id: PeerId,
    pub(crate) ctl: mpsc::Sender<Ctl>,
    pub(crate) rec: Shared,
    pub(crate) task: JoinHandle<()>,
}

impl Peer {
    pub(crate) fn start(index: u8, session: Session) -> Self {
        let id = session.local_id();
        let rec = Arc::new(Mutex::new(Rec::new()));
        let (ctl, rx) = mpsc::channel(8);
        let task = tokio::spawn(peer_loop(index, session, rx, rec.clone()));
        Self { id, ctl, rec, task }
    }

    pub(crate) async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Ctl) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(make(tx))
            .await
            .map_err(|_| anyhow::anyhow!("peer task gone"))?;
        Ok(tokio::time::timeout(STEP_TIMEOUT, rx).await??)
    }

    pub(crate) async fn leave(self) -> Result<()> {
        self.ask(Ctl::Leave).await?;
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.task).await;
        Ok(())
    }
}

pub(crate) fn count_error(rec: &Shared, e: &SendError) {
    let kind = match e {
        SendError::NotMember(_) => "not member",
        SendError::TooLarge { .. } => "too large",
        SendError::QueueFull(_) => "queue full",
        SendError::Datagram(_) => "datagram",
        SendError::Closed => "closed",
        SendError::Partial { failed, .. } => {
            for (_, e) in failed {
                count_error(rec, e);
            }
            return;
        }
    };
    *lock(rec).send_errors.entry(kind).or_default() += 1;
}

pub(crate) async fn peer_loop(
    index: u8,
    mut session: Session,
    mut ctl: mpsc::Receiver<Ctl>,
    rec: Shared,
) {
    let mut traffic_until: Option<Instant> = None;
    let mut fast = tokio::time::interval(Duration::from_micros(16_667));
    let mut slow = tokio::time::interval(Duration::from_millis(100));
    let (mut fast_seq, mut slow_seq) = (0u32, 0u32);
    loop {
        let sending = traffic_until.is_some_and(|u| Instant::now() < u);
        tokio::select! {
            event = session.next_event() => match event {
                Some(SessionEvent::Message { bytes, reliability, .. }) => {
                    lock(&rec).on_message(&bytes, reliability);
                }
                Some(SessionEvent::JoinRequest { peer, .. }) => session.accept_join(peer),
                Some(SessionEvent::HostChanged { new, .. }) => {
                    lock(&rec).host_changed = Some((Instant::now(), new));
                }
                Some(SessionEvent::Ended(end)) => lock(&rec).ended = Some(format!("{end:?}")),
                Some(_) => {}
                None => {
                    // Over: keep answering commands so the bench never waits in vain.
                    let _ = ctl.recv().await;
                    return;
                }
            },
            _ = fast.tick(), if sending => {
                let m = message(KIND_UNRELIABLE, fast_seq, index);
                fast_seq += 1;
                lock(&rec).unreliable_broadcasts += 1;
                if let Err(e) = session.broadcast(m, Reliability::Unreliable) {
                    count_error(&rec, &e);
                }
            }
            _ = slow.tick(), if sending => {
                let m = message(KIND_RELIABLE, slow_seq, index);
                match session.broadcast(m, Reliability::ReliableOrdered) {
                    Ok(()) => {
                        slow_seq += 1;
                        lock(&rec).reliable_broadcasts += 1;
                    }
                    Err(e) => count_error(&rec, &e),
                }
            }
            c = ctl.recv() => match c {
                Some(Ctl::Traffic(until)) => {
                    traffic_until = Some(until);
                    fast.reset();
                    slow.reset();
                }
                Some(Ctl::Saturate(until, reply)) => {
                    let _ = reply.send(saturate(&session, index, until).await);
                }
                Some(Ctl::Stats(reply)) => {
                    let s = session.stats();
                    let r = std::sync::atomic::Ordering::Relaxed;
                    let _ = reply.send(Drops {
                        events: s.events_dropped.load(r),
                        frames: s.frames_dropped.load(r),
                        datagrams: s.links.datagrams_dropped.load(r),
                        violations: s.violations.load(r),
                    });
                }
                Some(Ctl::Leave(reply)) => {
                    session.leave().await;
                    let _ = reply.send(());
                    return;
                }
                Some(Ctl::Abort(reply)) => {
                    drop(session);
                    let _ = reply.send(Instant::now());
                    return;
                }
                None => return,
            },
        }
    }
}

/// Broadcasts reliable messages as fast as they are taken until `until` (phase 3).
pub(crate) async fn saturate(session: &Session, index: u8, until: Instant) -> (u64, u64, Duration) {
    let start = Instant::now();
    let (mut accepted, mut full) = (0u64, 0u64);
    let mut seq = 0u32;
    while Instant::now() < until && u64::from(seq) < SATURATE_MAX {
        let m = message(KIND_SATURATE, seq, index);
        seq += 1;
        match session.broadcast(m, Reliability::ReliableOrdered) {
            Ok(()) => accepted += 1,
            // Some members' queues are full (the others got it): not retried, so those
            // members miss this one.
            Err(SendError::Partial { failed, .. })
                if failed
                    .iter()
                    .all(|(_, e)| matches!(e, SendError::QueueFull(_))) =>
            {
                full += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => break,
        }
        if seq % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    (accepted, full, start.elapsed())
}
