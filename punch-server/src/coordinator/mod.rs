//! The sans-IO punch coordinator: registrations, connect requests and the common start of
//! each punch attempt. Wire messages are [`mesh::coord`]'s.
//!
//! The coordinator owns no socket and reads no clock. A driver (QUIC over the server's UDP
//! socket, a later step) feeds it events with the time and drains its outputs:
//!
//! 1. [`Coordinator::handle_connected`] when a peer's QUIC handshake completes (its id proved
//!    by its TLS key, its address as observed), [`Coordinator::handle_disconnected`] when the
//!    connection ends, [`Coordinator::handle_observed_addr`] when it migrates, and
//!    [`Coordinator::handle_rtt`] with the QUIC connection's RTT estimate if it likes.
//!    A peer's connect and attempt rate limits outlast its connection: when it goes
//!    (disconnect, close, or superseded), they are kept in a bounded table of departed
//!    peers (at most `max_connections`, each only until its buckets would be full again)
//!    and a new connection of the peer gets them back (`limits`).
//! 2. [`Coordinator::handle_bytes`] with bytes read from the control stream (or
//!    [`Coordinator::handle_message`] with decoded messages). Malformed frames are dropped,
//!    counted and answered with `Error { Malformed }`; a wrong protocol version or an
//!    oversized frame closes the connection.
//! 3. After every call: [`Coordinator::poll_send`] until `None`, encoding each message with
//!    [`mesh::coord::encode`] onto the connection's stream; then [`Coordinator::poll_close`]
//!    until `None`, closing each named connection once its queued messages are sent.
//! 4. [`Coordinator::poll_timeout`] gives the next deadline (request timeouts, pings, relay
//!    credential renewals); call [`Coordinator::handle_timeout`] when it passes.
//! 5. With relays configured ([`RelayConfig`]), the driver gives the wall-clock time once
//!    ([`Coordinator::set_wall_clock`]); registered peers then get `Relays` (see `relays`).
//!
//! 5. Parking (`park`): an idle connection of a peer that offered it is closed after
//!    `Park`, and the peer stays registered while it sends keep-alives: feed them to
//!    [`Coordinator::handle_keepalive`] and send every [`Coordinator::poll_transmit`]
//!    datagram (keep-alive answers, wake-ups) from the server's port.
//!
//! The request flow itself (connect, accept or refuse, timeout, `Go`) is in `requests`; the
//! start-time formula in [`timing`].

mod config;
mod conn;
mod limits;
mod park;
mod relays;
mod requests;
pub mod timing;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_park;
#[cfg(test)]
mod tests_props;
#[cfg(test)]
mod tests_relays;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh::coord::{ClientMsg, ErrorKind, ServerMsg};
use mesh::identity::PeerId;
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use config::{CloseReason, ConnId, CoordConfig, CoordStats, Rate};
use conn::Conn;
use limits::{Departed, PeerLimits};
use park::Parked;
pub use relays::{RelayConfig, TurnSecret, DEFAULT_TURN_TTL, MAX_TURN_TTL, MIN_TURN_TTL};
use requests::Pending;

/// A timer entry; the entry's owner records the deadline, so entries are removed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A pending request's deadline (server request id).
    Request(u64),
    /// A connection's next ping.
    Ping(ConnId),
    /// A connection's next relay credentials.
    Relays(ConnId),
    /// A connection's idle check: park it if it is still idle.
    Park(ConnId),
    /// A parked peer's keep-alive deadline (keyed by its parked connection's id).
    ParkExpiry(ConnId),
    /// The next wake datagram to a parked peer.
    Wake(ConnId),
}

/// The punch coordinator state machine (see the module docs for how to drive it).
#[derive(Debug)]
pub struct Coordinator {
    config: CoordConfig,
    /// Origin of ping stamps.
    epoch: Instant,
    /// The latest `now` of any call: the time of events that come without one
    /// (disconnects).
    latest: Instant,
    rng: StdRng,
    /// Time since the UNIX epoch at `epoch`, once the driver told it
    /// ([`Coordinator::set_wall_clock`]).
    unix_at_epoch: Option<Duration>,
    conns: HashMap<ConnId, Conn>,
    /// Parked peers, by the id of the connection they were parked from.
    parked: HashMap<ConnId, Parked>,
    /// The connection of each peer: live (in `conns`) or parked (in `parked`).
    by_peer: HashMap<PeerId, ConnId>,
    /// Rate limits of peers whose connection went, for when they come back.
    departed: Departed,
    /// Connections that have registered.
    registered: usize,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    timers: BTreeSet<(Instant, Timer)>,
    out: VecDeque<(ConnId, ServerMsg)>,
    closes: VecDeque<(ConnId, CloseReason)>,
    /// Datagrams for parked peers (keep-alive answers, wake-ups).
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    stats: CoordStats,
}

impl Coordinator {
    /// A coordinator starting at `now`. `seed` seeds the generator of the probe credentials:
    /// give it 32 random bytes from the OS in production, a constant in tests.
    pub fn new(config: CoordConfig, now: Instant, seed: [u8; 32]) -> Self {
        Self {
            departed: Departed::new(&config),
            config,
            epoch: now,
            latest: now,
            rng: StdRng::from_seed(seed),
            unix_at_epoch: None,
            conns: HashMap::new(),
            parked: HashMap::new(),
            by_peer: HashMap::new(),
            registered: 0,
            pending: HashMap::new(),
            next_request: 1,
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            closes: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: CoordStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &CoordConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &CoordStats {
        &self.stats
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Registered peers, parked ones included.
    pub fn registered(&self) -> usize {
        self.registered + self.parked.len()
    }

    /// Parked peers (registered without a connection).
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Pending connect requests.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// The connection of a peer, if it is connected.
    pub fn conn_of(&self, peer: &PeerId) -> Option<ConnId> {
        self.by_peer
            .get(peer)
            .copied()
            .filter(|c| self.conns.contains_key(c))
    }

    /// The smoothed RTT to the peer on `conn`, once sampled.
    pub fn rtt(&self, conn: ConnId) -> Option<Duration> {
        self.conns.get(&conn).and_then(|c| c.rtt.srtt())
    }

    /// Whether `conn` is the id of a parked peer's old connection (the driver never reuses
    /// ids, so tests that do must skip these).
    #[cfg(test)]
    pub(crate) fn is_parked_id(&self, conn: ConnId) -> bool {
        self.parked.contains_key(&conn)
    }

    /// Peers in the departed table, and its queue items (stale ones included).
    #[cfg(test)]
    pub(crate) fn departed_sizes(&self) -> (usize, usize) {
        self.departed.sizes()
    }

    /// Notes the time of a call.
    fn tick(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
    }

    /// A peer's control connection is up: `peer` is the id its TLS key proved, `observed`
    /// its address as the server sees it. A connection of the same peer that was already
    /// there is closed ([`CloseReason::Superseded`]); a full server closes the new one. A
    /// peer that left recently (or is superseding its old connection) keeps its rate
    /// limits.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: PeerId,
        observed: SocketAddr,
    ) {
        self.tick(now);
        if self.conns.contains_key(&conn) {
            // The driver reused a live id: forget the old state first.
            self.remove_conn(conn);
        }
        let unparked = self.unpark(&peer);
        if let Some(old) = self.by_peer.get(&peer).copied() {
            tracing::debug!(%old, new = %conn, peer = %peer.short(), "superseded");
            self.stats.superseded += 1;
            self.close(old, CloseReason::Superseded);
        }
        if self.conns.len() + self.parked.len() >= self.config.max_connections {
            self.stats.limit_reached += 1;
            self.error(conn, None, ErrorKind::LimitReached, "server full");
            self.closes.push_back((conn, CloseReason::ServerFull));
            if let Some(p) = unparked {
                self.fail_held(p.incoming);
            }
            return;
        }
        let limits = self
            .departed
            .take(&peer, now)
            .unwrap_or_else(|| PeerLimits::new(&self.config, now));
        self.conns
            .insert(conn, Conn::new(peer, observed, now, &self.config, limits));
        self.by_peer.insert(peer, conn);
        if let Some(p) = unparked {
            self.adopt_held(conn, p.incoming);
        }
        self.ping(now, conn);
    }

    /// The connection ended (closed by either side or timed out). Its pending requests
    /// fail: the other side gets `Cancelled` or `Error { TargetGone }`. The peer's rate
    /// limits are remembered as of the latest `now` passed to any call.
    pub fn handle_disconnected(&mut self, conn: ConnId) {
        self.remove_conn(conn);
    }

    /// The connection migrated: the peer's reflexive address is now `observed`.
    pub fn handle_observed_addr(&mut self, conn: ConnId, observed: SocketAddr) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.observed = conn::canonical(observed);
        }
    }

    /// An RTT sample from outside (e.g. the QUIC connection's estimate).
    pub fn handle_rtt(&mut self, conn: ConnId, rtt: Duration) {
        let max = self.config.max_rtt;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rtt.sample(rtt, max);
            self.stats.rtt_samples += 1;
        }
    }

    /// Bytes read from the connection's control stream.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.tick(now);
        match self.conns.get_mut(&conn) {
            Some(c) => c.decoder.push(bytes),
            None => return,
        }
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(result) = c.decoder.pop() else {
                return;
            };
            match result {
                Ok(msg) => self.handle_message(now, conn, msg),
                Err(e) if e.is_fatal() => {
                    let (kind, reason) = match e {
                        mesh::coord::CodecError::VersionMismatch { .. } => {
                            self.stats.version_mismatch += 1;
                            (ErrorKind::VersionMismatch, CloseReason::VersionMismatch)
                        }
                        _ => {
                            self.stats.malformed += 1;
                            (ErrorKind::Malformed, CloseReason::Malformed)
                        }
                    };
                    tracing::debug!(%conn, error = %e, "closing control connection");
                    self.error(conn, None, kind, e.to_string());
                    self.close(conn, reason);
                    return;
                }
                Err(e) => {
                    self.stats.malformed += 1;
                    c.malformed += 1;
                    let too_many = c.malformed > self.config.max_malformed;
                    self.error(conn, None, ErrorKind::Malformed, e.to_string());
                    if too_many {
                        self.close(conn, CloseReason::TooManyMalformed);
                        return;
                    }
                }
            }
        }
    }

    /// One decoded message from the peer on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: ClientMsg) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.messages.take(now, 1) {
            self.stats.rate_limited += 1;
            return;
        }
        if !matches!(msg, ClientMsg::Ping { .. } | ClientMsg::Pong { .. }) {
            c.last_active = now;
        }
        match msg {
            ClientMsg::Register { candidates } => self.on_register(now, conn, candidates),
            ClientMsg::Connect { request_id, target } => {
                self.on_connect(now, conn, request_id, target)
            }
            ClientMsg::Accept { request_id } => self.on_accept(now, conn, request_id),
            ClientMsg::Refuse { request_id } => self.on_refuse(conn, request_id),
            ClientMsg::Ping { ts } => self.send(conn, ServerMsg::Pong { ts }),
            ClientMsg::Pong { ts } => self.on_pong(now, conn, ts),
            ClientMsg::Policy { accept_all } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.accept_all = accept_all;
                }
            }
            ClientMsg::Capabilities { park } => self.on_capabilities(now, conn, park),
            ClientMsg::HideAddress => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.hide_observed = true;
                }
            }
            ClientMsg::NatMapping { mapping } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.mapping = Some(mapping);
                }
            }
        }
    }

    /// Runs the timers due at `now`: request timeouts and pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Request(id) => self.expire(id),
                Timer::Ping(conn) => self.ping(now, conn),
                Timer::Relays(conn) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.next_relays = None;
                    }
                    self.offer_relays(now, conn);
                }
                Timer::Park(conn) => self.park_check(now, conn),
                Timer::ParkExpiry(id) => self.park_expiry(now, id),
                Timer::Wake(id) => self.send_wake(now, id),
            }
        }
    }

    /// The next deadline for [`Coordinator::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// The next message to send.
    pub fn poll_send(&mut self) -> Option<(ConnId, ServerMsg)> {
        self.out.pop_front()
    }

    /// The next connection to close (after sending what [`Coordinator::poll_send`] queued).
    pub fn poll_close(&mut self) -> Option<(ConnId, CloseReason)> {
        self.closes.pop_front()
    }

    /// The next datagram to send from the server's port (to a parked peer).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.out.push_back((conn, msg));
    }

    fn error(
        &mut self,
        conn: ConnId,
        request_id: Option<u64>,
        kind: ErrorKind,
        detail: impl Into<String>,
    ) {
        let detail = detail.into();
        self.send(
            conn,
            ServerMsg::Error {
                request_id,
                kind,
                detail,
            },
        );
    }

    /// Forgets `conn` and asks the driver to close it.
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        self.remove_conn(conn);
        self.closes.push_back((conn, reason));
    }

    /// Forgets `conn`: its registration, timers, and pending requests on either side. Its
    /// peer's rate limits go into the departed table.
    fn remove_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.departed.insert(c.peer, c.limits, self.latest);
        if self.by_peer.get(&c.peer) == Some(&conn) {
            self.by_peer.remove(&c.peer);
        }
        if c.candidates.is_some() {
            self.registered = self.registered.saturating_sub(1);
        }
        self.timers.remove(&(c.next_ping, Timer::Ping(conn)));
        if let Some(at) = c.next_relays {
            self.timers.remove(&(at, Timer::Relays(conn)));
        }
        if let Some(at) = c.park_at {
            self.timers.remove(&(at, Timer::Park(conn)));
        }
        for id in c.outgoing {
            if let Some(p) = self.take_pending(id) {
                self.stats.cancelled += 1;
                self.send(p.target, ServerMsg::Cancelled { request_id: id });
            }
        }
        for id in c.incoming {
            if let Some(p) = self.take_pending(id) {
                self.stats.cancelled += 1;
                self.error(
                    p.requester,
                    Some(p.requester_request),
                    ErrorKind::TargetGone,
                    "target disconnected",
                );
            }
        }
    }
}
