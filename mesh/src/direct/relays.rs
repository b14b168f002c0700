//! The node's allocations on the TURN relays the punch server offers: a thin tokio driver
//! of one sans-IO [`Allocation`] per relay, on the node's one socket.
//!
//! Steps:
//! 1. Watch the relay offers ([`super::DirectNode::relays`]). A relay offered for the first
//!    time is resolved (bounded by [`RESOLVE_TIMEOUT`]) to an address the socket reaches,
//!    and an [`Allocation`] starts on it; a renewed offer gives the allocation the fresh
//!    credentials; a relay no longer offered is released. At most
//!    [`crate::coord::MAX_RELAYS`] allocations.
//! 2. Every datagram the allocations queue goes out from the node's socket as
//!    [`StunOwner::Turn`], so the socket's router brings the relay's answers back here by
//!    transaction id; each answer goes to the allocation of the relay it came from.
//! 3. Each [`AllocationEvent`] updates the published list of relayed addresses
//!    ([`RelayedAddr`]; a loss removes the address until the next allocation succeeds).
//! 4. [`Relays::bind`] (from [`super::DirectNode::relay_path`]) binds a channel to a peer's
//!    address on the first relay allocated (by URI order) and answers with the
//!    [`Path::Relay`] to use once the relay confirmed it; the allocation keeps the channel
//!    bound. At most [`MAX_WAITING_BINDS`] binds wait at once.
//! 5. On shutdown every allocation is released (Refresh with lifetime 0) and the task
//!    waits for the relays' answers, at most [`RELEASE_WAIT`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::sleep_until_opt;
use crate::coord::MAX_RELAYS;
use crate::socket::{MeshSocket, Path, StunDatagram};
use crate::stun::StunOwner;
use crate::turn::allocation::{Allocation, AllocationConfig, AllocationEvent, ChannelError};
use crate::turn::{RelayCredential, TurnUri};

/// Longest wait for a relay's host name to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the relays to confirm the release on shutdown.
pub const RELEASE_WAIT: Duration = Duration::from_millis(500);
/// Bound of the queue of the relays' STUN answers.
const TURN_QUEUE: usize = 64;
/// Most channel binds waiting for the relay's answer at once.
pub const MAX_WAITING_BINDS: usize = 64;
/// Longest wait for a channel bind (the TURN client's own exchange timeout is 5 s).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(6);

/// Why no relayed path to a peer could be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No relay is allocated (none offered, or none works).
    #[error("no relay allocation")]
    NoRelay,
    /// The channel could not be bound.
    #[error("channel bind failed: {0}")]
    Channel(#[from] ChannelError),
    /// Too many binds are waiting already.
    #[error("too many channel binds waiting")]
    Busy,
    /// The relay did not confirm in time.
    #[error("no answer from the relay within {0:?}")]
    Timeout(Duration),
    /// The node is shutting down.
    #[error("the node is closing")]
    Closed,
}

type BindReply = oneshot::Sender<Result<Path, RelayError>>;

/// A request to the task.
struct Bind {
    peer: SocketAddr,
    reply: BindReply,
}

/// A relayed address this node holds on a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedAddr {
    /// The relay, as offered.
    pub relay: TurnUri,
    /// The relay's address this node talks to.
    pub server: SocketAddr,
    /// The relayed transport address peers can send to (once permitted).
    pub relayed: SocketAddr,
}

/// What the node knows of its allocation on one offered relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    /// Allocating (the first try, or again after a failure).
    Allocating,
    /// Allocated.
    Allocated {
        /// The relayed transport address.
        relayed: SocketAddr,
        /// From the start of this try to the relay's success answer.
        took: Duration,
    },
    /// The last try failed; another follows with backoff.
    Failed {
        /// The relay's STUN error code, when it refused (401: the punch server's secret is
        /// not the relay's).
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// Released on shutdown.
    Released {
        /// Whether the relay confirmed the release.
        confirmed: bool,
    },
}

/// The state of the allocation on one offered relay ([`super::DirectNode::relay_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// The relay, as offered.
    pub relay: TurnUri,
    /// Where its allocation stands.
    pub state: RelayState,
}

/// Handle of the running task.
#[derive(Debug)]
pub(crate) struct Relays {
    relayed: watch::Receiver<Vec<RelayedAddr>>,
    status: watch::Receiver<Vec<RelayStatus>>,
    binds: mpsc::Sender<Bind>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relays {
    /// Starts the task on `socket`, following `offers`.
    pub(crate) fn start(
        socket: Arc<MeshSocket>,
        offers: watch::Receiver<Vec<RelayCredential>>,
        config: AllocationConfig,
    ) -> Self {
        let (answers_tx, answers) = mpsc::channel(TURN_QUEUE);
        socket.route_stun(StunOwner::Turn, answers_tx);
        let (published, relayed) = watch::channel(Vec::new());
        let (status_tx, status) = watch::channel(Vec::new());
        let (stop, stopped) = oneshot::channel();
        let (binds, bind_rx) = mpsc::channel(MAX_WAITING_BINDS);
        let task = RelayTask {
            socket,
            config,
            published,
            status: status_tx,
            states: HashMap::new(),
            allocations: HashMap::new(),
            waiting: Vec::new(),
        };
        let task = tokio::spawn(task.run(offers, answers, bind_rx, stopped));
        Self {
            relayed,
            status,
            binds,
            stop: Some(stop),
            task,
        }
    }

    /// A relayed path to `peer` (see the module docs, step 4).
    pub(crate) async fn bind(&self, peer: SocketAddr) -> Result<Path, RelayError> {
        self.binder().bind(peer).await
    }

    /// A handle that binds channels, for tasks that outlive a borrow of the node.
    pub(crate) fn binder(&self) -> RelayBinder {
        RelayBinder {
            binds: self.binds.clone(),
        }
    }

    /// The state of the allocation on each offered relay.
    pub(crate) fn status(&self) -> watch::Receiver<Vec<RelayStatus>> {
        self.status.clone()
    }

    /// The relayed addresses held now.
    pub(crate) fn relayed(&self) -> watch::Receiver<Vec<RelayedAddr>> {
        self.relayed.clone()
    }

    /// Releases every allocation (bounded, see [`RELEASE_WAIT`]) and ends the task.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let wait = RESOLVE_TIMEOUT + RELEASE_WAIT + Duration::from_millis(100);
        if tokio::time::timeout(wait, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// Binds channels on the node's allocations (a clone of the task's request queue).
#[derive(Debug, Clone)]
pub(crate) struct RelayBinder {
    binds: mpsc::Sender<Bind>,
}

impl RelayBinder {
    /// A relayed path to `peer` (see the module docs, step 4).
    pub(crate) async fn bind(&self, peer: SocketAddr) -> Result<Path, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.binds
            .try_send(Bind { peer, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RelayError::Busy,
                mpsc::error::TrySendError::Closed(_) => RelayError::Closed,
            })?;
        match tokio::time::timeout(BIND_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RelayError::Closed),
            Err(_) => Err(RelayError::Timeout(BIND_TIMEOUT)),
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Entry {
    uri: TurnUri,
    allocation: Allocation,
    /// When the current try started.
    started: Instant,
}

struct RelayTask {
    socket: Arc<MeshSocket>,
    config: AllocationConfig,
    published: watch::Sender<Vec<RelayedAddr>>,
    status: watch::Sender<Vec<RelayStatus>>,
    /// The state per offered relay, keyed like `allocations` (kept after a release, until
    /// the relay is no longer offered; at most [`MAX_RELAYS`] plus the released ones).
    states: HashMap<String, RelayStatus>,
    /// Keyed by the relay's `HOST:PORT`.
    allocations: HashMap<String, Entry>,
    /// Binds waiting for the relay: (relay server, peer, reply).
    waiting: Vec<(SocketAddr, SocketAddr, BindReply)>,
}

impl RelayTask {
    async fn run(
        mut self,
        mut offers: watch::Receiver<Vec<RelayCredential>>,
        mut answers: mpsc::Receiver<StunDatagram>,
        mut binds: mpsc::Receiver<Bind>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let initial = offers.borrow_and_update().clone();
        self.follow(&initial).await;
        loop {
            self.flush().await;
            let wake = self.next_wake();
            tokio::select! {
                _ = &mut stopped => break,
                changed = offers.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let latest = offers.borrow_and_update().clone();
                    self.follow(&latest).await;
                }
                answer = answers.recv() => {
                    let Some(d) = answer else { break };
                    self.on_answer(&d);
                }
                bind = binds.recv() => {
                    let Some(bind) = bind else { break };
                    self.on_bind(bind);
                }
                () = sleep_until_opt(wake) => self.on_timers(),
            }
        }
        for (_, _, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(RelayError::Closed));
        }
        self.release_all(&mut answers).await;
    }

    /// A relay's answer, to the allocation on that relay.
    fn on_answer(&mut self, d: &StunDatagram) {
        let now = Instant::now();
        let relay = self
            .allocations
            .values_mut()
            .find(|e| e.allocation.server() == d.from);
        match relay {
            Some(e) => {
                e.allocation.handle_input(now, d.from, &d.data);
            }
            None => tracing::trace!(from = %d.from, "TURN answer from no relay of ours"),
        }
    }

    /// Step 4: a channel on the first relay allocated, answered at once if bound.
    fn on_bind(&mut self, bind: Bind) {
        let now = Instant::now();
        let mut allocated: Vec<_> = self
            .allocations
            .iter_mut()
            .filter(|(_, e)| e.allocation.relayed().is_some())
            .collect();
        allocated.sort_by(|a, b| a.0.cmp(b.0));
        let Some((_, e)) = allocated.into_iter().next() else {
            let _ = bind.reply.send(Err(RelayError::NoRelay));
            return;
        };
        let server = e.allocation.server();
        if let Some(channel) = e.allocation.channel(bind.peer) {
            let _ = bind.reply.send(Ok(Path::Relay { server, channel }));
            return;
        }
        if self.waiting.len() >= MAX_WAITING_BINDS {
            let _ = bind.reply.send(Err(RelayError::Busy));
            return;
        }
        match e.allocation.bind_channel(now, bind.peer) {
            Ok(_) => self.waiting.push((server, bind.peer, bind.reply)),
            Err(err) => {
                let _ = bind.reply.send(Err(err.into()));
            }
        }
    }

    /// Answers the binds waiting for `peer` on `server`.
    fn answer_binds(&mut self, server: SocketAddr, peer: SocketAddr, result: Result<u16, String>) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].0 == server && self.waiting[i].1 == peer {
                let (_, _, reply) = self.waiting.swap_remove(i);
                let answer = match &result {
                    Ok(channel) => Ok(Path::Relay {
                        server,
                        channel: *channel,
                    }),
                    Err(e) => Err(RelayError::Channel(ChannelError::Refused(e.clone()))),
                };
                let _ = reply.send(answer);
            } else {
                i += 1;
            }
        }
    }

    /// Timers that are due.
    fn on_timers(&mut self) {
        let now = Instant::now();
        for e in self.allocations.values_mut() {
            if e.allocation.poll_timeout().is_some_and(|t| t <= now) {
                e.allocation.handle_timeout(now);
            }
        }
    }

    /// The earliest timer.
    fn next_wake(&self) -> Option<Instant> {
        self.allocations
            .values()
            .filter_map(|e| e.allocation.poll_timeout())
            .min()
    }

    /// Step 1: start, renew or release allocations to match `offers`.
    async fn follow(&mut self, offers: &[RelayCredential]) {
        let wanted: HashMap<String, &RelayCredential> = offers
            .iter()
            .take(MAX_RELAYS)
            .map(|r| (r.uri.host_port(), r))
            .collect();
        let now = Instant::now();
        for (key, e) in &mut self.allocations {
            if !wanted.contains_key(key) {
                e.allocation.release(now);
            }
        }
        self.states
            .retain(|key, _| wanted.contains_key(key) || self.allocations.contains_key(key));
        for (key, offer) in wanted {
            if let Some(e) = self.allocations.get_mut(&key) {
                e.allocation.set_credentials(offer.credentials());
                continue;
            }
            let Some(server) = self.resolve(&key).await else {
                let failed = RelayState::Failed {
                    code: None,
                    reason: format!("{key} not resolved to an address this socket reaches"),
                };
                self.set_state(&key, &offer.uri, failed);
                continue;
            };
            tracing::debug!(relay = %offer.uri, %server, "allocating on relay");
            let allocation = Allocation::new(
                Instant::now(),
                server,
                offer.credentials(),
                self.config,
                rand::random(),
            );
            self.set_state(&key, &offer.uri, RelayState::Allocating);
            self.allocations.insert(
                key,
                Entry {
                    uri: offer.uri.clone(),
                    allocation,
                    started: Instant::now(),
                },
            );
        }
        self.publish_status();
    }

    fn set_state(&mut self, key: &str, uri: &TurnUri, state: RelayState) {
        self.states.insert(
            key.to_string(),
            RelayStatus {
                relay: uri.clone(),
                state,
            },
        );
    }

    /// Publishes the states, ordered by relay, if they changed.
    fn publish_status(&mut self) {
        let mut now: Vec<(&String, &RelayStatus)> = self.states.iter().collect();
        now.sort_by(|a, b| a.0.cmp(b.0));
        let now: Vec<RelayStatus> = now.into_iter().map(|(_, s)| s.clone()).collect();
        self.status.send_if_modified(|held| {
            let differs = *held != now;
            if differs {
                *held = now;
            }
            differs
        });
    }

    /// The relay's first address the socket reaches.
    async fn resolve(&self, host_port: &str) -> Option<SocketAddr> {
        let family = self.socket.family();
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(host_port)).await {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<_> = addrs.filter(|a| family.reaches(*a)).collect();
                // IPv4 first: the relay's IPv6 may be unreachable where its IPv4 works.
                addrs.sort_by_key(|a| !a.is_ipv4());
                let found = addrs.first().copied();
                if found.is_none() {
                    tracing::warn!(
                        relay = host_port,
                        "relay has no address this socket reaches"
                    );
                }
                found
            }
            Ok(Err(e)) => {
                tracing::warn!(relay = host_port, error = %e, "relay not resolved");
                None
            }
            Err(_) => {
                tracing::warn!(relay = host_port, "relay not resolved in time");
                None
            }
        }
    }

    /// Steps 2 and 3: send what the allocations queued, apply their events.
    async fn flush(&mut self) {
        let mut changed = false;
        let mut answers = Vec::new();
        let mut states = Vec::new();
        for (key, e) in self.allocations.iter_mut() {
            while let Some(t) = e.allocation.poll_transmit() {
                if let Err(err) = self
                    .socket
                    .send_stun_as(StunOwner::Turn, t.dst, &t.payload)
                    .await
                {
                    tracing::debug!(relay = %e.uri, error = %err, "TURN send failed");
                }
            }
            while let Some(event) = e.allocation.poll_event() {
                changed = true;
                match event {
                    AllocationEvent::Allocated {
                        relayed, lifetime, ..
                    } => {
                        tracing::info!(relay = %e.uri, %relayed, lifetime_s = lifetime.as_secs(), "relay allocated");
                        let took = e.started.elapsed();
                        states.push((
                            key.clone(),
                            e.uri.clone(),
                            RelayState::Allocated { relayed, took },
                        ));
                    }
                    AllocationEvent::Lost(err) => {
                        tracing::warn!(relay = %e.uri, error = %err, "relay allocation lost, retrying");
                        let code = match err {
                            crate::turn::client::TurnError::Refused(code) => Some(code),
                            _ => None,
                        };
                        let reason = err.to_string();
                        states.push((
                            key.clone(),
                            e.uri.clone(),
                            RelayState::Failed { code, reason },
                        ));
                        e.started = Instant::now();
                    }
                    AllocationEvent::Released { confirmed } => {
                        tracing::debug!(relay = %e.uri, confirmed, "relay allocation released");
                        states.push((
                            key.clone(),
                            e.uri.clone(),
                            RelayState::Released { confirmed },
                        ));
                    }
                    AllocationEvent::ChannelBound { peer, number } => {
                        tracing::debug!(relay = %e.uri, %peer, channel = number, "channel bound");
                        answers.push((e.allocation.server(), peer, Ok(number)));
                    }
                    AllocationEvent::ChannelFailed { peer, error } => {
                        tracing::debug!(relay = %e.uri, %peer, %error, "channel gone");
                        answers.push((e.allocation.server(), peer, Err(error.to_string())));
                    }
                }
            }
        }
        self.allocations.retain(|_, e| !e.allocation.is_finished());
        if !states.is_empty() {
            for (key, uri, state) in states {
                self.set_state(&key, &uri, state);
            }
            self.publish_status();
        }
        for (server, peer, result) in answers {
            self.answer_binds(server, peer, result);
        }
        if changed {
            let now: Vec<RelayedAddr> = self
                .allocations
                .values()
                .filter_map(|e| {
                    e.allocation.relayed().map(|relayed| RelayedAddr {
                        relay: e.uri.clone(),
                        server: e.allocation.server(),
                        relayed,
                    })
                })
                .collect();
            // Only a real change wakes the watchers (a loss while not allocated is none).
            self.published.send_if_modified(|held| {
                let differs = *held != now;
                if differs {
                    *held = now;
                }
                differs
            });
        }
    }

    /// Step 4.
    async fn release_all(&mut self, answers: &mut mpsc::Receiver<StunDatagram>) {
        let now = Instant::now();
        for e in self.allocations.values_mut() {
            e.allocation.release(now);
        }
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            self.flush().await;
            if self.allocations.is_empty() {
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                answer = answers.recv() => {
                    let Some(d) = answer else { return };
                    self.on_answer(&d);
                }
                () = sleep_until_opt(wake) => self.on_timers(),
            }
        }
    }
}
