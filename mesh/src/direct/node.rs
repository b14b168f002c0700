//! [`DirectNode`]: one socket, a control connection to the punch server, punching, QUIC.
//!
//! Steps of [`DirectNode::start`]:
//! 1. Bind the one UDP socket ([`Endpoint`]; dual-stack by default) and resolve the punch
//!    server (`ID@HOST:PORT`; a bare `HOST:PORT` only when insecure) asynchronously to an
//!    address the socket reaches ([`crate::coord::PunchAddr::resolve`]).
//! 2. Find the host candidates: the bound IP, or for a wildcard bind the local IP the
//!    kernel routes toward the punch server and, on a dual-stack socket, the one it routes
//!    toward the other family's internet (no packet is sent to find them).
//! 3. Dial the punch server from the socket, check its key, register the candidates
//!    ([`super::control`]), and start the punch engine ([`super::engine`]). Both steps 1
//!    and 3 are bounded by [`DirectConfig::connect_timeout`] from the start: a name not
//!    resolved by then is [`StartError::Resolve`], a server that completed no QUIC
//!    handshake by then [`StartError::Unreachable`].
//! 4. Start UPnP in the background; when a mapping appears, register again with the
//!    mapped candidate added ([`DirectNode::registration`] shows each confirmation).
//! 5. If the control connection is lost, the control task dials the server again with
//!    backoff and re-registers ([`DirectNode::control_lost`] says why while it is down).
//! 6. A punch server configured with TURN relays sends them with credentials after the
//!    registration and refreshes them before expiry ([`DirectNode::relays`]). The node
//!    allocates on each from its socket and keeps the allocations alive
//!    ([`super::relays`], [`DirectNode::relayed`]); shutdown releases them.
//!
//! [`DirectNode::shutdown`] closes the endpoint (every connection), waits briefly for the
//! peers to hear it and removes the UPnP mapping. Dropping the node without it closes the
//! control connection and aborts the node's tasks (control, dispatch, accept, UPnP
//! registration), which releases the socket once no handed-out connection uses it; the
//! mapper's own drop stops UPnP.
//!
//! [`DirectNode::connect`]: `Connect` to the server, wait for its `Go`, then probe and set
//! up the relayed path at once ([`super::race`]); the QUIC handshake (the target's key
//! pinned) runs on whichever is ready first, a relayed connection moves to a direct pair
//! when one validates, and back when it dies (the connection's path core, driven by
//! [`super::supervise`]).
//! [`DirectNode::accept`]: incoming requests are answered by the node's policy and raced
//! the same way in the background; the dialer's handshake arrives on the relayed path or
//! the pair its prober nominated. [`DirectConnection::path`] tells which, as it changes.
//! With [`DirectConfig::relay_only`] the node offers no address of its own and only the
//! relay carries its connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::allow::Allowlist;
use super::birthdays::{BirthdaySnapshot, BirthdayStats};
use super::candidates::{
    host_addrs, probe_candidates, publish_candidates, registered_relay, Sources,
};
use super::config::DirectConfig;
use super::conn_slots::ConnSlots;
use super::control::{AcceptedGo, Connector, Control, ControlSettings, Registration};
use super::engine::{Engine, EngineSettings};
use super::error::{DialError, StartError};
use super::predicted;
use super::queue_bound;
use super::race::{self, RaceCtx};
use super::rebind;
use super::relays::{RelayError, RelayStatus, RelayedAddr, Relays};
use super::route::{ActivePath, How, HowFinder, PathWatches};
use super::supervise;
use crate::coord::{Candidate as WireCandidate, CandidateKind as WireKind, RelayCredential};
use crate::identity::{Identity, PeerId};
use crate::route::RouteHub;
use crate::socket::{ConnectError, Endpoint, Path, PeerConnection, INITIAL_RTT};
use crate::upnp::{PortMapper, UpnpState};

/// Most remembered start times of accepted requests (for the `elapsed` of accepts).
const MAX_GO_TIMES: usize = 256;
/// Longest wait of a dial for the punch server's relay offer (it comes right after the
/// registration, or never).
pub const RELAY_OFFER_WAIT: Duration = Duration::from_millis(300);
/// The server sends its relay offer in the same flight as `Registered` (it is usually
/// read with it): after twice the RTT to the server (at least this long, in case the
/// control task has not handed it on yet) from the start, none is coming.
pub const RELAY_OFFER_MIN_WAIT: Duration = Duration::from_millis(5);
/// Longest time from the start a dial waits for the first observation of the NAT's
/// mappings and the predicted candidates' registration (port prediction).
pub const PREDICT_WAIT: Duration = Duration::from_secs(1);
/// Longest wait of a dial for an offered relay's address to be registered.
pub const RELAY_READY_WAIT: Duration = Duration::from_secs(3);
/// Bound of the queue of STUN datagrams from the punch server to the control task.
const SERVER_STUN_QUEUE: usize = 16;

/// An established direct connection to a peer.
#[derive(Debug, Clone)]
pub struct DirectConnection {
    /// The QUIC connection and the peer's verified id.
    pub peer: PeerConnection,
    /// The peer's address on the path the connection started on (for a relayed path, the
    /// address the relay forwards to: the peer's relayed or reflexive address).
    pub remote: SocketAddr,
    /// The path the connection runs on now: it starts on whichever path is ready first
    /// (the relay, or a punched pair) and moves to a direct pair when one validates.
    pub path: watch::Receiver<ActivePath>,
    /// For a dial: from the call to `connect` to the established connection. For an
    /// accept: from the server's `Go` to the established connection (if it was seen).
    pub elapsed: Option<Duration>,
    /// Tells how a direct path was found ([`DirectConnection::how`]).
    pub how: HowFinder,
}

impl DirectConnection {
    /// How the current direct path was found (`punch`, `predicted`, `upnp`, from the peer's
    /// candidates in its latest introduction); `None` on a relayed path.
    pub fn how(&self) -> Option<How> {
        self.how.how(&self.path.borrow())
    }
}

/// A node that reaches peers directly through a punch server (see the module docs).
#[derive(Debug)]
pub struct DirectNode {
    endpoint: Arc<Endpoint>,
    control: Control,
    upnp: Option<PortMapper>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    control_lost: watch::Receiver<Option<String>>,
    allow: Arc<Allowlist>,
    /// The allocations on the offered relays (`None` when turned off).
    relays: Option<Relays>,
    /// What dials need to race probing against the relay.
    race: RaceCtx,
    /// When the node was started (registered).
    started: Instant,
    /// The predicted candidates (`None` inside until the first observation ended; the
    /// watch is `None` with prediction off).
    predicted: Option<watch::Receiver<Option<Vec<WireCandidate>>>>,
    /// Counters of the birthday rounds.
    birthday_stats: Arc<BirthdayStats>,
    /// The control task, dispatch, accept loop and UPnP registration: each holds the
    /// endpoint or a control handle, so they are aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

#[path = "node_routes.rs"]
mod routes;

impl Drop for DirectNode {
    /// Closes the control connection (no reconnection) and aborts the node's tasks, so
    /// nothing of the node keeps running; [`DirectNode::shutdown`] also closes the peer
    /// connections and removes the UPnP mapping.
    fn drop(&mut self) {
        self.control.close();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

type Accepted = Result<DirectConnection, ConnectError>;

impl DirectNode {
    /// Binds, registers with the punch server and starts the background tasks.
    pub async fn start(
        identity: Arc<Identity>,
        mut config: DirectConfig,
    ) -> Result<Self, StartError> {
        if config.relay_only {
            config.upnp = None;
            config.relays.get_or_insert_with(Default::default);
        }
        let deadline = super::deadline_after(config.connect_timeout);
        let expected = config.punch.expected_id(config.insecure)?;
        let (endpoint, stun) = Endpoint::bind(config.bind, identity, config.endpoint.clone())?;
        let endpoint = Arc::new(endpoint);
        let family = endpoint.socket().family();
        let resolve = config.punch.resolve(family);
        let resolved = match tokio::time::timeout_at(deadline.into(), resolve).await {
            Ok(resolved) => resolved.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", config.connect_timeout)),
        };
        let server = resolved.map_err(|detail| StartError::Resolve {
            host: config.punch.host_port(),
            detail,
        })?;
        let local = endpoint
            .local_addr()
            .map_err(|e| StartError::Bind(e.into()))?;
        // Relay-only: no address of this node is offered, only relayed ones (later).
        let host_candidates: Vec<WireCandidate> = host_addrs(local, family, server)
            .into_iter()
            .filter(|_| !config.relay_only)
            .map(|host| WireCandidate::new(WireKind::Host, host))
            .collect();
        let connector = Connector {
            endpoint: endpoint.clone(),
            expected,
            server,
        };
        let allow = Arc::new(Allowlist::default());
        let settings = ControlSettings {
            incoming: config.incoming,
            allow: allow.clone(),
            register_timeout: config.register_timeout,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            max_pending: config.max_attempts,
            reconnect_min: config.reconnect_min,
            reconnect_max: config.reconnect_max.max(config.reconnect_min),
            park: config.park,
            hide_address: config.relay_only,
        };
        let (to_control, server_stun) = mpsc::channel(SERVER_STUN_QUEUE);
        // Answers to the parked node's keep-alives come straight from the socket's router.
        endpoint
            .socket()
            .route_stun(crate::stun::StunOwner::Control, to_control.clone());
        let (control, accepted_gos, control_task) = Control::start(
            connector,
            host_candidates.clone(),
            settings,
            deadline,
            server_stun,
        )
        .await?;
        let (local_tx, local_rx) = watch::channel(probe_candidates(&host_candidates));
        let (strays_tx, strays_rx) = mpsc::channel(rebind::STRAYS);
        let watches = Arc::new(PathWatches::default());
        let birthday_stats = Arc::new(BirthdayStats::default());
        let (mapping_tx, mapping_rx) = watch::channel(None);
        let birthday = config.birthday.clone().filter(|_| !config.relay_only);
        let engine = Engine::start(
            endpoint.socket().clone(),
            stun,
            local_rx,
            EngineSettings {
                probe: config.probe.clone(),
                max_attempts: config.max_attempts,
                linger: config.linger,
                server,
                to_control,
                conns: ConnSlots::config(),
                strays: config.relays.is_some().then_some(strays_tx),
                birthday: birthday.clone(),
                mapping: mapping_rx,
                watches: watches.clone(),
                birthday_stats: birthday_stats.clone(),
            },
        );
        let relays = config
            .relays
            .map(|c| Relays::start(endpoint.socket().clone(), control.relays(), c));
        let race = RaceCtx {
            endpoint: endpoint.clone(),
            engine,
            control: control.clone(),
            binder: relays.as_ref().map(Relays::binder),
            watches,
            relay_only: config.relay_only,
            predict_again: Arc::new(tokio::sync::Notify::new()),
            routes: RouteHub::start(endpoint.socket().clone(), config.router.clone()),
        };
        let go_times = Arc::new(Mutex::new(HashMap::new()));
        let control_lost = control.status();
        let (accepted_tx, accepted) = mpsc::channel(queue_bound(config.accept_queue));
        let mut tasks = vec![
            control_task,
            tokio::spawn(dispatch(
                accepted_gos,
                race.clone(),
                control.clone(),
                go_times.clone(),
            )),
            tokio::spawn(accept_loop(
                endpoint.clone(),
                control.clone(),
                go_times,
                race.clone(),
                accepted_tx,
                queue_bound(config.max_attempts),
            )),
        ];
        if race.binder.is_some() {
            tasks.push(tokio::spawn(rebind::run(strays_rx, race.clone())));
        }
        let mut upnp = None;
        // UPnP IGD maps IPv4 ports: the IPv4 host address is the internal client.
        let host_v4 = host_candidates
            .iter()
            .map(|c| c.addr)
            .find(SocketAddr::is_ipv4);
        let upnp_config = config.upnp.clone().zip(host_v4);
        if let Some((upnp_config, host)) = upnp_config {
            match PortMapper::start(host, upnp_config) {
                Ok(mapper) => upnp = Some(mapper),
                Err(e) => tracing::warn!(error = %e, "UPnP off"),
            }
        }
        // The mappings are observed for prediction and for birthday probing.
        let observe = (config.predict || birthday.is_some()) && !config.relay_only;
        let predicted = observe.then(|| {
            let (tx, rx) = watch::channel(None);
            let again = race.predict_again.clone();
            tasks.push(tokio::spawn(predicted::run(
                endpoint.clone(),
                server,
                again,
                tx,
                (mapping_tx, control.clone()),
            )));
            rx
        });
        let predicted = predicted.filter(|_| config.predict);
        let predicted_rx = predicted.clone();
        let sources = Sources {
            mapped: upnp.as_ref().map(PortMapper::subscribe),
            relayed: relays.as_ref().map(Relays::relayed),
            predicted,
        };
        if sources.any() {
            tasks.push(tokio::spawn(publish_candidates(
                sources,
                control.clone(),
                host_candidates,
                local_tx,
            )));
        }
        Ok(Self {
            endpoint,
            control,
            upnp,
            accepted: tokio::sync::Mutex::new(accepted),
            control_lost,
            allow,
            relays,
            race,
            started: Instant::now(),
            predicted: predicted_rx,
            birthday_stats,
            tasks,
        })
    }

    /// Who may connect under [`super::IncomingPolicy::Allowlist`] (members and announced
    /// joiners of a session; open while this node hosts).
    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
    }

    /// Counters of this node's birthday rounds (see [`DirectConfig::birthday`]).
    pub fn birthday_stats(&self) -> BirthdaySnapshot {
        self.birthday_stats.snapshot()
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.endpoint.peer_id()
    }

    /// The endpoint (socket, quinn endpoint, path table).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The registration as last confirmed by the punch server; changes when a UPnP
    /// mapping is registered.
    pub fn registration(&self) -> watch::Receiver<Registration> {
        self.control.registration()
    }

    /// The TURN relays the punch server offered, each with REST API credentials for this
    /// node (username `EXPIRY:PEER_ID`). Empty until the server's `Relays` message arrives
    /// (right after registration) and always for a server without relays; the server
    /// sends fresh credentials before these expire, and this returns the latest.
    pub fn relays(&self) -> Vec<RelayCredential> {
        self.control.relays().borrow().clone()
    }

    /// Waits up to `wait` for the first relay offer and returns [`DirectNode::relays`]
    /// (empty if none came: the server offers no relays or is slow).
    pub async fn wait_relays(&self, wait: Duration) -> Vec<RelayCredential> {
        let mut rx = self.control.relays();
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| !r.is_empty())).await;
        let relays = rx.borrow().clone();
        relays
    }

    /// The relayed addresses this node holds on the offered relays (empty until an
    /// allocation succeeds, always with [`DirectConfig::relays`] `None`).
    pub fn relayed(&self) -> watch::Receiver<Vec<RelayedAddr>> {
        match &self.relays {
            Some(r) => r.relayed(),
            None => watch::channel(Vec::new()).1,
        }
    }

    /// The state of this node's allocation on each offered relay: allocating, allocated
    /// (with the relayed address and how long it took), failed (with the relay's error
    /// code when it refused) or released. Empty with [`DirectConfig::relays`] `None`.
    pub fn relay_status(&self) -> watch::Receiver<Vec<RelayStatus>> {
        match &self.relays {
            Some(r) => r.status(),
            None => watch::channel(Vec::new()).1,
        }
    }

    /// A relayed path to the peer at `peer` (its address as the relay will see it): a
    /// channel bound on the first relay this node holds an allocation on, confirmed by the
    /// relay; the allocation keeps it bound. Give it to
    /// [`Endpoint::connect_via`](crate::socket::Endpoint::connect_via); the peer reaches
    /// this node at the relayed address ([`DirectNode::relayed`]).
    pub async fn relay_path(&self, peer: SocketAddr) -> Result<Path, RelayError> {
        match &self.relays {
            Some(r) => r.bind(peer).await,
            None => Err(RelayError::NoRelay),
        }
    }

    /// The RTT of the control connection to the punch server.
    pub fn server_rtt(&self) -> Duration {
        self.control.rtt()
    }

    /// The UPnP mapper's state (`None` if UPnP is off).
    pub fn upnp_state(&self) -> Option<UpnpState> {
        self.upnp.as_ref().map(PortMapper::state)
    }

    /// Why the control connection is down, while it is: the node dials the punch server
    /// again in the background (unless the loss is final, e.g. another node with the same
    /// key took over) and this turns back to `None` once it is registered again.
    pub fn control_lost(&self) -> Option<String> {
        self.control_lost.borrow().clone()
    }

    /// Watches [`DirectNode::control_lost`]: `Some(reason)` when the control connection
    /// goes down, `None` again once the node is registered anew.
    pub fn control_status(&self) -> watch::Receiver<Option<String>> {
        self.control_lost.clone()
    }

    /// Connects to `target` directly: request, probing, then QUIC with its key pinned.
    pub async fn connect(&self, target: PeerId) -> Result<DirectConnection, DialError> {
        let span = tracing::info_span!("dial", peer = %target.short());
        tracing::Instrument::instrument(self.dial(target), span).await
    }

    async fn dial(&self, target: PeerId) -> Result<DirectConnection, DialError> {
        let started = Instant::now();
        self.wait_relay_registered().await;
        self.wait_predicted_registered().await;
        let (go, received) = self.control.connect(target).await?;
        let server_rtt = self.control.rtt();
        let own_relayed = registered_relay(&self.control);
        let dialed = race::dial(&self.race, target, own_relayed, go, received, server_rtt).await?;
        let remote = dialed.path.borrow().remote;
        let how = HowFinder {
            peer: target,
            watches: self.race.watches.clone(),
        };
        Ok(DirectConnection {
            peer: dialed.peer,
            remote,
            path: dialed.path,
            elapsed: Some(started.elapsed()),
            how,
        })
    }

    /// A fresh node may not have registered its relayed address yet; the peer must see it
    /// in its `Go` to set up its half of the relayed path. With relays on: wait up to
    /// twice the RTT to the punch server (at least [`RELAY_OFFER_MIN_WAIT`], at most
    /// [`RELAY_OFFER_WAIT`]) from the node's start for the server's offer (it follows the
    /// registration at once, or never for a server without relays, whose dials therefore
    /// wait only right after the start), then, if relays were offered, up to
    /// [`RELAY_READY_WAIT`] (the request timeout for relay-only) for the relayed address
    /// to be registered.
    async fn wait_relay_registered(&self) {
        if self.relays.is_none() {
            return;
        }
        let has_relay = |r: &Registration| r.candidates.iter().any(|c| c.kind == WireKind::Relay);
        if has_relay(&self.control.registration().borrow()) {
            return;
        }
        let mut offers = self.control.relays();
        let offer_due = (self.control.rtt().saturating_mul(2))
            .max(RELAY_OFFER_MIN_WAIT)
            .min(RELAY_OFFER_WAIT);
        let offer_wait = offer_due.saturating_sub(self.started.elapsed());
        let offered = tokio::time::timeout(offer_wait, offers.wait_for(|o| !o.is_empty()));
        if !self.race.relay_only && !matches!(offered.await, Ok(Ok(_))) {
            return;
        }
        let wait = if self.race.relay_only {
            self.control.request_timeout()
        } else {
            RELAY_READY_WAIT
        };
        let mut registration = self.control.registration();
        let _ = tokio::time::timeout(wait, registration.wait_for(has_relay)).await;
    }

    /// A dial right after the start waits (at most [`PREDICT_WAIT`] from the node's
    /// start) for the first observation of the NAT's mappings and, when it predicted
    /// ports, for them to be registered, so the peer's `Go` carries them.
    async fn wait_predicted_registered(&self) {
        let Some(mut predicted) = self.predicted.clone() else {
            return;
        };
        let wait = PREDICT_WAIT.saturating_sub(self.started.elapsed());
        let wanted = match tokio::time::timeout(wait, predicted.wait_for(Option::is_some)).await {
            Ok(Ok(observed)) => observed.clone().unwrap_or_default(),
            _ => return,
        };
        if wanted.is_empty() {
            return;
        }
        let has_all = |r: &Registration| wanted.iter().all(|c| r.candidates.contains(c));
        let wait = PREDICT_WAIT.saturating_sub(self.started.elapsed());
        let mut registration = self.control.registration();
        let _ = tokio::time::timeout(wait, registration.wait_for(has_all)).await;
    }

    /// The next incoming connection (verified key); `None` once the node is closed. An
    /// `Err` concerns one failed handshake only. Handshakes run concurrently in the
    /// background (at most `max_attempts` at once), so a slow one delays no other.
    pub async fn accept(&self) -> Option<Result<DirectConnection, ConnectError>> {
        self.accepted.lock().await.recv().await
    }

    /// Releases the relay allocations, closes every connection, removes the UPnP mapping
    /// and stops the tasks (the
    /// synchronous part, closing the control connection and aborting the tasks, is the
    /// node's `Drop`, which runs at the end).
    pub async fn shutdown(mut self) {
        if let Some(relays) = self.relays.as_mut() {
            relays.shutdown().await;
        }
        self.control.close();
        // A parked control task sends its leave to the punch server now (bounded).
        if let Some(control_task) = self.tasks.first_mut() {
            let _ = tokio::time::timeout(Duration::from_millis(500), control_task).await;
        }
        self.endpoint.close(0, b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(mapper) = self.upnp.take() {
            if let Err(e) = mapper.shutdown().await {
                tracing::warn!(error = %e, "UPnP mapping not removed");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts incoming handshakes, each in its own task (at most `max_handshakes` at once),
/// and queues the established connections for [`DirectNode::accept`].
async fn accept_loop(
    endpoint: Arc<Endpoint>,
    control: Control,
    go_times: Arc<Mutex<HashMap<PeerId, Instant>>>,
    race: RaceCtx,
    accepted: mpsc::Sender<Accepted>,
    max_handshakes: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    while let Some(incoming) = endpoint.accept_incoming().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes, refused");
            incoming.refuse();
            continue;
        };
        let (endpoint, go_times, accepted) = (endpoint.clone(), go_times.clone(), accepted.clone());
        let race = race.clone();
        // The dialer just reached us through punched checks, so the path is about as short
        // as our way to the punch server and back twice: start the handshake's timers there
        // (never above the generic initial RTT).
        let rtt_hint = control.rtt().saturating_mul(2).min(INITIAL_RTT);
        tokio::spawn(async move {
            let result = endpoint
                .handshake_with_rtt(incoming, Some(rtt_hint))
                .await
                .map(|peer| {
                    let path = endpoint
                        .socket()
                        .paths()
                        .resolve(&peer.synthetic_addr)
                        .unwrap_or(Path::direct(peer.synthetic_addr));
                    let go = lock(&go_times).remove(&peer.peer_id);
                    // A relayed path was reported when the race set it up; a route
                    // through a member is named by its router; anything else is the
                    // direct path the dialer's handshake came from.
                    let active = match path {
                        Path::Router { route } => ActivePath::routed(race.routes.via(route)),
                        _ => ActivePath::direct(path.remote()),
                    };
                    let watch = race.watches.get_or_set(peer.peer_id, active);
                    if let Path::Router { .. } = path {
                        // The route is the connection's relayed path for its path core.
                        race.watches.set_relay(peer.peer_id, path, path.remote());
                    }
                    let path = watch;
                    if !race.relay_only {
                        supervise::spawn(&race, &peer, None);
                    }
                    let remote = path.borrow().remote;
                    let how = HowFinder {
                        peer: peer.peer_id,
                        watches: race.watches.clone(),
                    };
                    DirectConnection {
                        remote,
                        path,
                        elapsed: go.map(|t| t.elapsed()),
                        peer,
                        how,
                    }
                });
            drop(slot);
            // A full queue means the application does not accept: drop the connection.
            if let Err(mpsc::error::TrySendError::Full(Ok(c))) = accepted.try_send(result) {
                c.peer.connection.close(1u32.into(), b"accept queue full");
            }
        });
    }
}

/// Runs the accepting side of every accepted request's `Go` ([`race::accept`]), and
/// remembers when each arrived.
async fn dispatch(
    mut gos: mpsc::Receiver<AcceptedGo>,
    race: RaceCtx,
    control: Control,
    go_times: Arc<Mutex<HashMap<PeerId, Instant>>>,
) {
    while let Some(AcceptedGo { go, received }) = gos.recv().await {
        {
            let mut times = lock(&go_times);
            if times.len() >= MAX_GO_TIMES {
                times.clear();
            }
            times.insert(go.peer, received);
        }
        // Bounded: the engine refuses attempts beyond its maximum at once, and a relay
        // setup ends within the relay task's bind timeout.
        let own_relayed = registered_relay(&control);
        tokio::spawn(race::accept(
            race.clone(),
            own_relayed,
            go,
            received,
            control.rtt(),
        ));
    }
}
