//! Per-connection state of the coordinator, registration, and the RTT ping exchange.
//!
//! Steps:
//! 1. [`Coordinator::handle_connected`](super::Coordinator::handle_connected) creates a
//!    [`Conn`] (one per peer id: a newer connection supersedes an older one) and pings it.
//!    The connection gets the peer's [`PeerLimits`] back if it left recently (see
//!    [`super::limits`]), so reconnecting does not refill them.
//! 2. `Register` stores the peer's sanitised candidates and answers `Registered` with the
//!    observed address; a second `Register` replaces the first.
//!    The first `Registered` is followed by the relay offer (see `relays`).
//! 3. `Pong` echoing the outstanding ping's stamp gives an RTT sample; other stamps are
//!    ignored, so a peer cannot make up samples. Pings repeat every `ping_interval`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mesh::coord::{
    Candidate, CandidateKind, ClientMsg, FrameDecoder, NatMapping, ServerMsg, MAX_CANDIDATES,
};
use mesh::identity::PeerId;

use super::config::CoordConfig;
use super::limits::{bucket, PeerLimits, TokenBucket};
use super::timing::RttEstimator;
use super::{ConnId, Coordinator, Timer};

/// One control connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) peer: PeerId,
    /// The peer's address as the server sees it.
    pub(crate) observed: SocketAddr,
    /// Registered candidates; `None` until `Register`.
    pub(crate) candidates: Option<Vec<Candidate>>,
    /// The peer accepts every request in advance (`Policy`): `Connect` goes straight to
    /// `Go`.
    pub(crate) accept_all: bool,
    pub(crate) rtt: RttEstimator,
    /// Stamp of the ping awaiting its pong.
    pub(crate) ping_ts: Option<u64>,
    /// When the next ping is due (its timer entry).
    pub(crate) next_ping: Instant,
    /// When fresh relay credentials are due (its timer entry), once offered.
    pub(crate) next_relays: Option<Instant>,
    /// Messages of any kind on this connection (`message_rate`).
    pub(crate) messages: TokenBucket,
    /// The peer's connect and attempt buckets, kept across its connections.
    pub(crate) limits: PeerLimits,
    pub(crate) malformed: u32,
    pub(crate) decoder: FrameDecoder<ClientMsg>,
    /// Server ids of pending requests this peer made (at most `max_pending_per_peer`).
    pub(crate) outgoing: Vec<u64>,
    /// Server ids of pending requests waiting for this peer (at most
    /// `max_incoming_per_peer`).
    pub(crate) incoming: Vec<u64>,
    /// The peer offered parking (`Capabilities { park: true }`).
    pub(crate) parkable: bool,
    /// The peer asked to keep its address from other peers (`HideAddress`): its observed
    /// address is not handed out as a reflexive candidate.
    pub(crate) hide_observed: bool,
    /// How the peer's NAT maps (`NatMapping`): passed on before each `Go` of its peers, and
    /// the peer is sent its peers' mappings (it understands `PeerMapping`).
    pub(crate) mapping: Option<NatMapping>,
    /// The last message other than a ping or pong (or the connect).
    pub(crate) last_active: Instant,
    /// The connection's park timer entry, if one is set.
    pub(crate) park_at: Option<Instant>,
    /// Requests held while the peer was parked: their `Incoming` (or `Go`) goes out once
    /// this connection registers.
    pub(crate) deferred: Vec<u64>,
}

impl Conn {
    /// A new connection of `peer` at `now`, with the peer's `limits` (remembered or new).
    pub(crate) fn new(
        peer: PeerId,
        observed: SocketAddr,
        now: Instant,
        c: &CoordConfig,
        limits: PeerLimits,
    ) -> Self {
        Self {
            peer,
            observed: canonical(observed),
            candidates: None,
            accept_all: false,
            rtt: RttEstimator::default(),
            ping_ts: None,
            next_ping: now,
            next_relays: None,
            messages: bucket(c.message_rate, now),
            limits,
            malformed: 0,
            decoder: FrameDecoder::new(),
            outgoing: Vec::new(),
            incoming: Vec::new(),
            parkable: false,
            hide_observed: false,
            mapping: None,
            last_active: now,
            park_at: None,
            deferred: Vec::new(),
        }
    }

    /// The candidates to give the other side: registered ones plus the observed address
    /// (unless the peer asked to hide it).
    pub(crate) fn candidates_for_peer(&self) -> Vec<Candidate> {
        let mut out = self.candidates.clone().unwrap_or_default();
        if !self.hide_observed && !out.iter().any(|c| c.addr == self.observed) {
            out.push(Candidate::new(
                CandidateKind::ServerReflexive,
                self.observed,
            ));
        }
        out.truncate(MAX_CANDIDATES);
        out
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Whether an address can be probed at all: no port 0, wildcard, multicast or broadcast.
fn usable(a: &SocketAddr) -> bool {
    let ip = a.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    a.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Drops unusable and duplicate candidates and keeps room for the reflexive one.
pub(crate) fn sanitize(candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .map(|c| Candidate::new(c.kind, canonical(c.addr)))
        .filter(|c| usable(&c.addr) && seen.insert(c.addr))
        .take(MAX_CANDIDATES - 1)
        .collect()
}

impl Coordinator {
    /// Microseconds since the coordinator's epoch: the stamp of server pings.
    fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Sends a ping to `conn` now and schedules the next one.
    pub(crate) fn ping(&mut self, now: Instant, conn: ConnId) {
        let ts = self.stamp(now);
        let interval = self.config.ping_interval;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        self.timers.remove(&(c.next_ping, Timer::Ping(conn)));
        c.ping_ts = Some(ts);
        c.next_ping = now + interval;
        self.timers.insert((c.next_ping, Timer::Ping(conn)));
        self.send(conn, ServerMsg::Ping { ts });
    }

    /// A `Pong`: an RTT sample if it echoes the outstanding ping.
    pub(crate) fn on_pong(&mut self, now: Instant, conn: ConnId, ts: u64) {
        let epoch = self.epoch;
        let max = self.config.max_rtt;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Only the outstanding stamp counts: it is one the server made, so `sent` is sane.
        if c.ping_ts != Some(ts) {
            return;
        }
        c.ping_ts = None;
        let Some(sent) = epoch.checked_add(std::time::Duration::from_micros(ts)) else {
            return;
        };
        c.rtt.sample(now.saturating_duration_since(sent), max);
        self.stats.rtt_samples += 1;
    }

    /// A `Register`: store (or replace) the candidates and confirm; the first one is
    /// followed by the relay offer (if relays are configured); then the requests held
    /// while the peer was parked go out.
    pub(crate) fn on_register(&mut self, now: Instant, conn: ConnId, candidates: Vec<Candidate>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let first = c.candidates.is_none();
        if first {
            self.registered += 1;
        }
        c.candidates = Some(sanitize(candidates));
        let reply = ServerMsg::Registered {
            observed_addr: c.observed,
            rtt: c.rtt.srtt(),
        };
        tracing::debug!(%conn, peer = %c.peer.short(), observed = %c.observed, "registered");
        self.stats.registrations += 1;
        self.send(conn, reply);
        if first {
            self.offer_relays(now, conn);
        }
        self.deliver_deferred(now, conn);
    }
}
