//! [`DirectNode`]: one socket, a control connection to the punch server, punching, QUIC.
//!
//! Steps of [`DirectNode::start`]:
//! 1. Resolve the punch server (`ID@HOST:PORT`; a bare `HOST:PORT` only when insecure)
//!    asynchronously ([`crate::coord::PunchAddr::resolve`]) and bind the one UDP socket
//!    ([`Endpoint`]).
//! 2. Find the host candidate: the bound IP, or for a wildcard bind the local IP the
//!    kernel routes toward the punch server (no packet is sent to find it).
//! 3. Dial the punch server from the socket, check its key, register the candidates
//!    ([`super::control`]), and start the punch engine ([`super::engine`]). Both steps 1
//!    and 3 are bounded by [`DirectConfig::connect_timeout`] from the start: a name not
//!    resolved by then is [`StartError::Resolve`], a server that completed no QUIC
//!    handshake by then [`StartError::Unreachable`].
//! 4. Start UPnP in the background; when a mapping appears, register again with the
//!    mapped candidate added ([`DirectNode::registration`] shows each confirmation).
//! 5. If the control connection is lost, the control task dials the server again with
//!    backoff and re-registers ([`DirectNode::control_lost`] says why while it is down).
//!
//! [`DirectNode::shutdown`] closes the endpoint (every connection), waits briefly for the
//! peers to hear it and removes the UPnP mapping. Dropping the node without it closes the
//! control connection and aborts the node's tasks (control, dispatch, accept, UPnP
//! registration), which releases the socket once no handed-out connection uses it; the
//! mapper's own drop stops UPnP.
//!
//! [`DirectNode::connect`]: `Connect` to the server, wait for its `Go`, probe, then the
//! QUIC handshake on the nominated path with the target's key pinned. [`DirectNode::accept`]:
//! incoming requests are answered by the node's policy and probed in the background; the
//! dialer's QUIC handshake arrives on the path its prober nominated.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::allow::Allowlist;
use super::config::DirectConfig;
use super::control::{AcceptedGo, Connector, Control, ControlSettings, Registration};
use super::engine::{AttemptOutcome, Engine, EngineSettings};
use super::error::{DialError, StartError};
use super::queue_bound;
use crate::coord::{Candidate as WireCandidate, CandidateKind as WireKind};
use crate::identity::{Identity, PeerId};
use crate::punch::{self, Candidate};
use crate::socket::{ConnectError, Endpoint, Path, PeerConnection, INITIAL_RTT};
use crate::upnp::{PortMapper, UpnpState};

/// Most remembered start times of accepted requests (for the `elapsed` of accepts).
const MAX_GO_TIMES: usize = 256;

/// An established direct connection to a peer.
#[derive(Debug, Clone)]
pub struct DirectConnection {
    /// The QUIC connection and the peer's verified id.
    pub peer: PeerConnection,
    /// The peer's address on the direct path (relayed paths come in a later layer).
    pub remote: SocketAddr,
    /// For a dial: from the call to `connect` to the established connection. For an
    /// accept: from the server's `Go` to the established connection (if it was seen).
    pub elapsed: Option<Duration>,
}

/// A node that reaches peers directly through a punch server (see the module docs).
#[derive(Debug)]
pub struct DirectNode {
    endpoint: Arc<Endpoint>,
    control: Control,
    engine: Engine,
    upnp: Option<PortMapper>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    control_lost: watch::Receiver<Option<String>>,
    allow: Arc<Allowlist>,
    /// The control task, dispatch, accept loop and UPnP registration: each holds the
    /// endpoint or a control handle, so they are aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

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
    pub async fn start(identity: Arc<Identity>, config: DirectConfig) -> Result<Self, StartError> {
        let deadline = super::deadline_after(config.connect_timeout);
        let expected = config.punch.expected_id(config.insecure)?;
        let resolve = config.punch.resolve(config.bind);
        let resolved = match tokio::time::timeout_at(deadline.into(), resolve).await {
            Ok(resolved) => resolved.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", config.connect_timeout)),
        };
        let server = resolved.map_err(|detail| StartError::Resolve {
            host: config.punch.host_port(),
            detail,
        })?;
        let (endpoint, stun) = Endpoint::bind(config.bind, identity, config.endpoint.clone())?;
        let endpoint = Arc::new(endpoint);
        let local = endpoint
            .local_addr()
            .map_err(|e| StartError::Bind(e.into()))?;
        let host = SocketAddr::new(host_ip(config.bind.ip(), server), local.port());
        let host_candidates = vec![WireCandidate::new(WireKind::Host, host)];
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
        };
        let (control, accepted_gos, control_task) =
            Control::start(connector, host_candidates.clone(), settings, deadline).await?;
        let (local_tx, local_rx) = watch::channel(probe_candidates(&host_candidates));
        let engine = Engine::start(
            endpoint.socket().clone(),
            stun,
            local_rx,
            EngineSettings {
                probe: config.probe.clone(),
                max_attempts: config.max_attempts,
                linger: config.linger,
            },
        );
        let go_times = Arc::new(Mutex::new(HashMap::new()));
        let control_lost = control.status();
        let (accepted_tx, accepted) = mpsc::channel(queue_bound(config.accept_queue));
        let mut tasks = vec![
            control_task,
            tokio::spawn(dispatch(
                accepted_gos,
                engine.clone(),
                control.clone(),
                go_times.clone(),
            )),
            tokio::spawn(accept_loop(
                endpoint.clone(),
                control.clone(),
                go_times,
                accepted_tx,
                queue_bound(config.max_attempts),
            )),
        ];
        let mut upnp = None;
        if let Some(upnp_config) = config.upnp.clone() {
            match PortMapper::start(host, upnp_config) {
                Ok(mapper) => {
                    tasks.push(tokio::spawn(register_mapping(
                        mapper.subscribe(),
                        control.clone(),
                        host_candidates,
                        local_tx,
                    )));
                    upnp = Some(mapper);
                }
                Err(e) => tracing::warn!(error = %e, "UPnP off"),
            }
        }
        Ok(Self {
            endpoint,
            control,
            engine,
            upnp,
            accepted: tokio::sync::Mutex::new(accepted),
            control_lost,
            allow,
            tasks,
        })
    }

    /// Who may connect under [`super::IncomingPolicy::Allowlist`] (members and announced
    /// joiners of a session; open while this node hosts).
    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
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
        let (go, received) = self.control.connect(target).await?;
        let server_rtt = self.control.rtt();
        let (remote, rtt) = match self.engine.attempt(go, received, server_rtt).await {
            AttemptOutcome::Nominated { remote, rtt } => (remote, rtt),
            AttemptOutcome::NoDirectPath(detail) => {
                return Err(DialError::NoDirectPath {
                    peer: target,
                    detail,
                })
            }
            AttemptOutcome::Busy(n) => return Err(DialError::Busy(n)),
            AttemptOutcome::Closed => return Err(DialError::Closed),
        };
        let peer = self
            .endpoint
            .connect_with_rtt(target, remote, Some(rtt))
            .await
            .map_err(DialError::Handshake)?;
        Ok(DirectConnection {
            peer,
            remote,
            elapsed: Some(started.elapsed()),
        })
    }

    /// The next incoming connection (verified key); `None` once the node is closed. An
    /// `Err` concerns one failed handshake only. Handshakes run concurrently in the
    /// background (at most `max_attempts` at once), so a slow one delays no other.
    pub async fn accept(&self) -> Option<Result<DirectConnection, ConnectError>> {
        self.accepted.lock().await.recv().await
    }

    /// Closes every connection, removes the UPnP mapping and stops the tasks (the
    /// synchronous part, closing the control connection and aborting the tasks, is the
    /// node's `Drop`, which runs at the end).
    pub async fn shutdown(mut self) {
        self.control.close();
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
                        .unwrap_or(Path::Direct(peer.synthetic_addr));
                    let go = lock(&go_times).remove(&peer.peer_id);
                    DirectConnection {
                        remote: path.remote(),
                        elapsed: go.map(|t| t.elapsed()),
                        peer,
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

/// Feeds accepted requests' `Go`s to the engine (and remembers when each arrived).
async fn dispatch(
    mut gos: mpsc::Receiver<AcceptedGo>,
    engine: Engine,
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
        engine.spawn_attempt(go, received, control.rtt());
    }
}

/// Registers the UPnP-mapped address as a candidate whenever the mapping changes.
async fn register_mapping(
    mut state: watch::Receiver<UpnpState>,
    control: Control,
    host: Vec<WireCandidate>,
    local: watch::Sender<Vec<Candidate>>,
) {
    let mut registered: Option<SocketAddr> = None;
    loop {
        let mapped = state.borrow_and_update().mapped();
        if mapped != registered {
            let mut candidates = host.clone();
            if let Some(external) = mapped {
                candidates.push(WireCandidate::new(WireKind::Upnp, external));
            }
            tracing::info!(?mapped, "registering UPnP candidate");
            let _ = local.send(probe_candidates(&candidates));
            if control.register(candidates).await.is_err() {
                return;
            }
            registered = mapped;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

fn probe_candidates(candidates: &[WireCandidate]) -> Vec<Candidate> {
    candidates
        .iter()
        .filter_map(WireCandidate::to_probe)
        .collect::<Vec<punch::Candidate>>()
}

/// The host candidate's IP: the bound one, or the source the kernel picks toward `server`.
fn host_ip(bound: IpAddr, server: SocketAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    // connect() on a UDP socket only consults the routing table; nothing is sent.
    let unspecified = SocketAddr::new(bound, 0);
    std::net::UdpSocket::bind(unspecified)
        .and_then(|s| s.connect(server).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(bound)
}
