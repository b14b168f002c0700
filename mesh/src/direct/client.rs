//! The client side of the punch coordinator protocol ([`crate::coord`]) as a sans-IO state
//! machine: [`ControlClient`] takes the time and the control stream's bytes as arguments
//! and returns the messages to send, what happened, and when to wake it. The node's
//! control task ([`super::control_task`]) drives it over a QUIC stream; the punch server's
//! `connect_sim` benchmark drives the same code over a simulated pipe.
//!
//! Flow of one session:
//! 1. [`ControlClient::start_session`] queues the hello: `HideAddress` (relay-only, before
//!    anything that could be introduced), `Register` with the latest candidates,
//!    `Policy { accept_all: true }` under [`IncomingPolicy::AcceptAll`] (connects to us skip
//!    the `Incoming` round trip), and `Capabilities { park: true }` when parking is
//!    offered, then `NatMapping` once this node's own probe found how its NAT maps.
//! 2. Until `Registered` arrives, `Ping` is answered and an `Error` ends the session
//!    (fatal); other messages are ignored. `Registered` reports
//!    [`ClientEvent::SessionUp`], sends the allowlist's openness if it differs from what the
//!    server holds, and sends the requests made meanwhile (or kept from a parked session).
//! 3. Registered: `Ping` gets `Pong`; `Relays` and later `Registered` are reported;
//!    `Incoming` is answered by the policy (allowlisted peers at once, others held for
//!    [`super::allow::HOLD`] in case they are allowed, then refused); a controlling `Go`
//!    answers one of our requests ([`ClientEvent::Answered`]), a controlled one is an
//!    accepted request ([`ClientEvent::Accepted`]); a `PeerMapping` just before a `Go` is
//!    put into it ([`Go::peer_mapping`], for birthday probing); an `Error` with one of our request ids
//!    fails it; `Park` is remembered for [`ControlClient::session_lost`].
//! 4. Every request has a deadline (`request_timeout`) that runs across sessions;
//!    [`ControlClient::poll_timeout`] names the next one.
//! 5. [`ControlClient::session_lost`]: after the server's `Park` the requests stay (they are
//!    sent again on the next session, and requests made while parked wait for it); any
//!    other loss fails them, and requests made before the next session fail at once.
//! 6. Reconnects: [`ControlClient::next_dial`] says when to dial the server again: at once
//!    after a park (the node is needed), else after `reconnect_min`, doubling per failed
//!    attempt ([`ControlClient::registration_failed`]) up to `reconnect_max`, with ±25 %
//!    jitter ([`crate::backoff::Backoff`]) so a restarted server is not hit by every peer
//!    at once; a registered session starts the backoff over.
//!
//! Bounded: at most `max_pending` requests, [`super::allow::MAX_HELD`] held incoming
//! requests; the outbox holds at most one message per input message or command.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::allow::{Allowlist, HOLD, MAX_HELD};
use super::config::IncomingPolicy;
use super::deadline_from;
use super::error::{ControlError, DialError};
use crate::backoff::Backoff;
use crate::coord::{
    Candidate, ClientMsg, ErrorKind, FrameDecoder, Go, NatMapping, ParkKey, RelayCredential, Role,
    ServerMsg,
};
use crate::identity::PeerId;

/// Settings of a [`ControlClient`].
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// How incoming requests are answered.
    pub incoming: IncomingPolicy,
    /// Who may connect under [`IncomingPolicy::Allowlist`].
    pub allow: Arc<Allowlist>,
    /// How long a request may wait for its `Go`.
    pub request_timeout: Duration,
    /// Most requests waiting at once.
    pub max_pending: usize,
    /// Offer to be parked (`Capabilities { park: true }`).
    pub park: bool,
    /// Ask the server to withhold our reflexive address (`HideAddress`, relay-only).
    pub hide_address: bool,
    /// First wait before dialing the server again after a loss (doubles per failure).
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

/// Our id for one of our connect requests (unique for the client's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What the client reports.
#[derive(Debug)]
pub enum ClientEvent {
    /// The session's `Registered`: this node's address as the server sees it.
    SessionUp {
        /// The reflexive address.
        observed_addr: SocketAddr,
    },
    /// A later `Registered` (new candidates were registered).
    Registered {
        /// The reflexive address.
        observed_addr: SocketAddr,
    },
    /// The relays with fresh credentials.
    Relays(Vec<RelayCredential>),
    /// One of our requests ended: its `Go`, or why not.
    Answered {
        /// Which request.
        request: RequestId,
        /// The `Go` (role controlling) or the error.
        result: Result<Go, DialError>,
        /// When the answer arrived.
        received: Instant,
    },
    /// An incoming request was accepted: probe with this `Go` (role controlled).
    Accepted {
        /// The server's instruction.
        go: Go,
        /// When it arrived.
        received: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offline,
    Registering,
    Registered,
}

#[derive(Debug)]
struct Pending {
    target: PeerId,
    deadline: Instant,
    /// Sent on the current session.
    sent: bool,
}

/// The client core (see the module docs).
#[derive(Debug)]
pub struct ControlClient {
    settings: ClientSettings,
    phase: Phase,
    decoder: FrameDecoder<ServerMsg>,
    candidates: Vec<Candidate>,
    /// This node's NAT mapping, once its probe found it (sent after `Register`).
    mapping: Option<NatMapping>,
    /// Peers' mappings by request id, from `PeerMapping`, until the request's `Go`.
    peer_mappings: VecDeque<(u64, NatMapping)>,
    observed_addr: Option<SocketAddr>,
    pending: BTreeMap<u64, Pending>,
    /// Incoming requests from peers not (yet) allowed: server request id to (peer, until).
    held: BTreeMap<u64, (PeerId, Instant)>,
    next_request: u64,
    /// The accept-all policy the server holds for this session.
    policy_open: bool,
    park: Option<(ParkKey, Duration)>,
    /// Requests made while offline wait for the next session (after a `Park`).
    queue_offline: bool,
    outbox: VecDeque<ClientMsg>,
    events: VecDeque<ClientEvent>,
    reconnect: Backoff,
    /// When to dial the server next, while offline.
    dial_at: Option<Instant>,
    rng: StdRng,
}

impl ControlClient {
    /// A client that will register `candidates`; offline until [`Self::start_session`].
    pub fn new(settings: ClientSettings, candidates: Vec<Candidate>) -> Self {
        let settings_reconnect = (
            settings.reconnect_min,
            settings.reconnect_max.max(settings.reconnect_min),
        );
        Self {
            settings,
            phase: Phase::Offline,
            decoder: FrameDecoder::new(),
            candidates,
            mapping: None,
            peer_mappings: VecDeque::new(),
            observed_addr: None,
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            next_request: 1,
            policy_open: false,
            park: None,
            queue_offline: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            reconnect: Backoff::new(settings_reconnect.0, settings_reconnect.1),
            dial_at: None,
            rng: StdRng::from_entropy(),
        }
    }

    /// When to dial the server again (step 6); `None` while a session is up or being
    /// registered.
    pub fn next_dial(&self) -> Option<Instant> {
        (self.phase == Phase::Offline)
            .then_some(self.dial_at)
            .flatten()
    }

    /// The settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The candidates of the latest `Register`.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The reflexive address of this session's `Registered` (`None` before it).
    pub fn session_observed(&self) -> Option<SocketAddr> {
        (self.phase == Phase::Registered)
            .then_some(self.observed_addr)
            .flatten()
    }

    /// Whether requests are waiting (sent or not).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A new stream to the server is open: queue the hello (step 1).
    pub fn start_session(&mut self) {
        self.phase = Phase::Registering;
        self.decoder = FrameDecoder::new();
        self.park = None;
        self.held.clear();
        for p in self.pending.values_mut() {
            p.sent = false;
        }
        if self.settings.hide_address {
            self.outbox.push_back(ClientMsg::HideAddress);
        }
        self.outbox.push_back(ClientMsg::Register {
            candidates: self.candidates.clone(),
        });
        self.peer_mappings.clear();
        if let Some(mapping) = self.mapping {
            self.outbox.push_back(ClientMsg::NatMapping { mapping });
        }
        self.policy_open = self.settings.incoming == IncomingPolicy::AcceptAll;
        if self.policy_open {
            self.outbox
                .push_back(ClientMsg::Policy { accept_all: true });
        }
        if self.settings.park {
            self.outbox
                .push_back(ClientMsg::Capabilities { park: true });
        }
    }

    /// The session ended (step 5). Returns the server's `Park` if it parked us: the
    /// requests then wait for the next session; otherwise they fail with `error`.
    pub fn session_lost(
        &mut self,
        now: Instant,
        error: &ControlError,
    ) -> Option<(ParkKey, Duration)> {
        self.phase = Phase::Offline;
        self.outbox.clear();
        self.held.clear();
        let park = self.park.take();
        self.queue_offline = park.is_some();
        // Parked: dialed again when needed (at once then); lost: after the first backoff.
        self.dial_at = match park {
            Some(_) => Some(now),
            None => Some(deadline_from(now, self.reconnect.next(&mut self.rng))),
        };
        if park.is_none() {
            for (id, _) in std::mem::take(&mut self.pending) {
                self.answer(id, Err(error.clone().into()), now);
            }
        }
        park
    }

    /// A dial or registration attempt failed before `Registered` (the stream is gone):
    /// offline again, requests kept as they were, the next dial after the backoff.
    pub fn registration_failed(&mut self, now: Instant) {
        self.phase = Phase::Offline;
        self.outbox.clear();
        self.dial_at = Some(deadline_from(now, self.reconnect.next(&mut self.rng)));
    }

    /// New candidates: registered at once when a session is up, else with the next one.
    pub fn register(&mut self, candidates: Vec<Candidate>) {
        self.candidates = candidates;
        if self.phase != Phase::Offline {
            self.outbox.push_back(ClientMsg::Register {
                candidates: self.candidates.clone(),
            });
        }
    }

    /// This node's NAT mapping (from its own probe): sent at once when a session is up and
    /// it changed, else with the next session's hello.
    pub fn set_mapping(&mut self, mapping: NatMapping) {
        if self.mapping == Some(mapping) {
            return;
        }
        self.mapping = Some(mapping);
        if self.phase != Phase::Offline {
            self.outbox.push_back(ClientMsg::NatMapping { mapping });
        }
    }

    /// Asks the server to introduce us to `target`. Sent at once when registered;
    /// otherwise on the next session if one is expected (after a `Park`), else refused.
    pub fn connect(&mut self, now: Instant, target: PeerId) -> Result<RequestId, DialError> {
        if self.phase == Phase::Offline && !self.queue_offline {
            return Err(ControlError::Lost("reconnecting to the punch server".into()).into());
        }
        if self.pending.len() >= self.settings.max_pending {
            return Err(DialError::Busy(self.pending.len()));
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let sent = self.phase == Phase::Registered;
        if sent {
            self.outbox
                .push_back(ClientMsg::Connect { request_id, target });
        }
        tracing::debug!(request_id, target = %target.short(), sent, "connect request");
        let deadline = deadline_from(now, self.settings.request_timeout);
        self.pending.insert(
            request_id,
            Pending {
                target,
                deadline,
                sent,
            },
        );
        Ok(RequestId(request_id))
    }

    /// Bytes from the control stream. An error ends the session.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ControlError> {
        self.decoder.push(bytes);
        while let Some(msg) = self.decoder.pop() {
            match msg {
                Ok(msg) if self.phase == Phase::Registered => self.on_message(now, msg)?,
                Ok(msg) => self.before_registered(now, msg)?,
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => tracing::debug!(error = %e, "malformed frame from server dropped"),
            }
        }
        Ok(())
    }

    /// The allowlist changed: answer held requests, send the policy if it changed.
    pub fn allow_changed(&mut self, now: Instant) {
        self.answer_held(now);
        self.sync_policy();
    }

    /// Expires requests and holds due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let waited = self.settings.request_timeout;
                let error = DialError::Timeout {
                    peer: p.target,
                    waited,
                };
                self.answer(id, Err(error), now);
            }
        }
        self.answer_held(now);
    }

    /// The next message to write to the control stream.
    pub fn poll_transmit(&mut self) -> Option<ClientMsg> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.pending.values().map(|p| p.deadline);
        requests.chain(self.held.values().map(|h| h.1)).min()
    }

    fn answer(&mut self, id: u64, result: Result<Go, DialError>, received: Instant) {
        self.events.push_back(ClientEvent::Answered {
            request: RequestId(id),
            result,
            received,
        });
    }

    /// Step 2: before `Registered`.
    fn before_registered(&mut self, now: Instant, msg: ServerMsg) -> Result<(), ControlError> {
        match msg {
            ServerMsg::Registered { observed_addr, .. } => {
                self.phase = Phase::Registered;
                self.reconnect.reset();
                self.dial_at = None;
                self.observed_addr = Some(observed_addr);
                self.events
                    .push_back(ClientEvent::SessionUp { observed_addr });
                self.sync_policy();
                for (&request_id, p) in self.pending.iter_mut().filter(|(_, p)| !p.sent) {
                    p.sent = true;
                    let target = p.target;
                    self.outbox
                        .push_back(ClientMsg::Connect { request_id, target });
                }
                self.answer_held(now);
                Ok(())
            }
            ServerMsg::Ping { ts } => {
                self.outbox.push_back(ClientMsg::Pong { ts });
                Ok(())
            }
            ServerMsg::Error { kind, detail, .. } if self.settings.hide_address => {
                Err(ControlError::Server {
                    kind,
                    detail: format!(
                        "{detail} (relay-only needs a punch server that can hide addresses)"
                    ),
                })
            }
            ServerMsg::Error { kind, detail, .. } => Err(ControlError::Server { kind, detail }),
            other => {
                tracing::debug!(?other, "ignored before registration");
                Ok(())
            }
        }
    }

    /// Step 3: a registered session.
    fn on_message(&mut self, now: Instant, msg: ServerMsg) -> Result<(), ControlError> {
        match msg {
            ServerMsg::Ping { ts } => self.outbox.push_back(ClientMsg::Pong { ts }),
            ServerMsg::Pong { .. } => {}
            ServerMsg::Relays { relays } => {
                tracing::debug!(relays = relays.len(), "relay credentials received");
                self.events.push_back(ClientEvent::Relays(relays));
            }
            // The server closes the connection next (`CloseCode::Parked`).
            ServerMsg::Park { key, keepalive } if self.settings.park => {
                self.park = Some((key, keepalive));
            }
            ServerMsg::Park { .. } => tracing::warn!("Park from the server although not offered"),
            ServerMsg::Registered { observed_addr, .. } => {
                self.observed_addr = Some(observed_addr);
                self.events
                    .push_back(ClientEvent::Registered { observed_addr });
            }
            ServerMsg::Incoming { request_id, from } => self.on_incoming(now, request_id, from),
            ServerMsg::Cancelled { request_id } => {
                self.held.remove(&request_id);
                tracing::debug!(request_id, "incoming request cancelled");
            }
            // The requester is controlling: a controlling Go answers one of our requests.
            ServerMsg::PeerMapping {
                request_id,
                mapping,
            } => {
                self.peer_mappings.push_back((request_id, mapping));
                while self.peer_mappings.len() > MAX_PEER_MAPPINGS {
                    self.peer_mappings.pop_front();
                }
            }
            ServerMsg::Go(mut go) if go.role == Role::Controlling => {
                go.peer_mapping = self.take_peer_mapping(go.request_id);
                let id = go.request_id;
                match self.pending.remove(&id) {
                    Some(p) if p.target == go.peer => self.answer(id, Ok(go), now),
                    Some(_) => {
                        tracing::warn!(request_id = id, "Go names another peer");
                        let error = DialError::Server {
                            kind: ErrorKind::InvalidRequest,
                            detail: "server introduced another peer".into(),
                        };
                        self.answer(id, Err(error), now);
                    }
                    None => tracing::debug!(request_id = id, "Go for no request"),
                }
            }
            ServerMsg::Go(mut go) => {
                go.peer_mapping = self.take_peer_mapping(go.request_id);
                self.events
                    .push_back(ClientEvent::Accepted { go, received: now })
            }
            ServerMsg::Error {
                request_id,
                kind,
                detail,
            } => self.on_error(now, request_id, kind, detail)?,
        }
        Ok(())
    }

    /// The mapping the server sent for request `id` just before its `Go`.
    fn take_peer_mapping(&mut self, id: u64) -> Option<NatMapping> {
        let i = self.peer_mappings.iter().position(|(r, _)| *r == id)?;
        self.peer_mappings.remove(i).map(|(_, m)| m)
    }

    fn on_incoming(&mut self, now: Instant, request_id: u64, from: PeerId) {
        let allow = &self.settings.allow;
        let answer = match self.settings.incoming {
            IncomingPolicy::AcceptAll => ClientMsg::Accept { request_id },
            IncomingPolicy::RefuseAll => ClientMsg::Refuse { request_id },
            IncomingPolicy::Allowlist if allow.allows(&from) => ClientMsg::Accept { request_id },
            IncomingPolicy::Allowlist if self.held.len() < MAX_HELD => {
                tracing::debug!(request_id, from = %from.short(), "incoming request held");
                self.held
                    .insert(request_id, (from, deadline_from(now, HOLD)));
                return;
            }
            IncomingPolicy::Allowlist => ClientMsg::Refuse { request_id },
        };
        tracing::info!(request_id, from = %from.short(), ?answer, "incoming request");
        self.outbox.push_back(answer);
    }

    fn on_error(
        &mut self,
        now: Instant,
        request_id: Option<u64>,
        kind: ErrorKind,
        detail: String,
    ) -> Result<(), ControlError> {
        // `UnknownRequest` concerns our answer to an incoming request, not our requests.
        let ours = request_id
            .filter(|_| kind != ErrorKind::UnknownRequest)
            .and_then(|id| self.pending.remove(&id).map(|p| (id, p)));
        match ours {
            Some((id, p)) => {
                let error = match kind {
                    ErrorKind::UnknownTarget => DialError::UnknownTarget(p.target),
                    ErrorKind::Refused => DialError::Refused(p.target),
                    ErrorKind::Timeout => DialError::Timeout {
                        peer: p.target,
                        waited: self.settings.request_timeout,
                    },
                    kind => DialError::Server { kind, detail },
                };
                self.answer(id, Err(error), now);
                Ok(())
            }
            None if kind == ErrorKind::VersionMismatch => {
                Err(ControlError::Server { kind, detail })
            }
            None => {
                tracing::debug!(?request_id, %kind, detail, "server error");
                Ok(())
            }
        }
    }

    /// Under [`IncomingPolicy::Allowlist`], mirrors the allowlist's openness to the
    /// server's accept-all policy for this session.
    fn sync_policy(&mut self) {
        if self.settings.incoming != IncomingPolicy::Allowlist || self.phase != Phase::Registered {
            return;
        }
        let open = self.settings.allow.is_open();
        if self.policy_open != open {
            self.outbox
                .push_back(ClientMsg::Policy { accept_all: open });
            self.policy_open = open;
        }
    }

    /// Answers held incoming requests: accepted once allowed, refused when their hold ends.
    fn answer_held(&mut self, now: Instant) {
        if self.phase != Phase::Registered {
            return;
        }
        let allow = self.settings.allow.clone();
        let decided: Vec<(u64, bool)> = self
            .held
            .iter()
            .filter_map(|(&id, (from, until))| {
                if allow.allows(from) {
                    Some((id, true))
                } else {
                    (*until <= now).then_some((id, false))
                }
            })
            .collect();
        for (request_id, accept) in decided {
            if let Some((from, _)) = self.held.remove(&request_id) {
                let answer = if accept {
                    ClientMsg::Accept { request_id }
                } else {
                    ClientMsg::Refuse { request_id }
                };
                tracing::info!(request_id, from = %from.short(), ?answer, "held request answered");
                self.outbox.push_back(answer);
            }
        }
    }
}

/// Most peer mappings held for `Go`s still to come (the server sends each right before its
/// `Go`, so one or two are ever waiting).
const MAX_PEER_MAPPINGS: usize = 16;

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
