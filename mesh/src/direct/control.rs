//! The control connection to the punch server: one QUIC connection from the node's one
//! socket, one bidirectional stream of `mesh::coord` frames (see [`crate::coord`]).
//!
//! Steps:
//! 1. [`Control::start`] dials the server (its key checked unless insecure), opens the
//!    stream, sends `Register` with the node's candidates (and `Policy { accept_all }` for
//!    [`IncomingPolicy::AcceptAll`], so connects to it skip the `Incoming` round trip) and
//!    waits (bounded) for `Registered`, which carries the reflexive address the server
//!    observes. A timed-out attempt is retried on a fresh connection (see [`establish`]);
//!    a server that completes no handshake within the connect timeout is unreachable.
//! 2. A task then owns the stream ([`super::control_task`]). It answers server `Ping`s,
//!    answers `Incoming` requests by the node's [`IncomingPolicy`], hands the `Go` of an
//!    accepted request (role controlled) to the node as an [`AcceptedGo`], and resolves the
//!    node's own requests: `Connect` gets its `Go` (role controlling) or an `Error` with the
//!    same request id; each request has a deadline.
//! 3. `Register` may be sent again (a UPnP mapping appeared); each `Registered` updates the
//!    [`Registration`] watch. Each `Relays` (TURN relays with fresh credentials, sent after
//!    the first `Registered` and again before they expire) replaces the relays watch.
//! 4. Parking: with [`ControlSettings::park`] the node sends `Capabilities { park: true }`
//!    after `Register`. A server that parks the idle connection sends `Park` and closes
//!    it; the task then runs the sans-IO [`crate::coord::ParkKeeper`] on the node's
//!    socket (keep-alives to the server, the server's answers and wake-ups routed to it by
//!    the engine) and dials again at once when woken, when the keep-alives fail, when the
//!    candidates or the allowlist's openness change, or when the node connects itself
//!    (that request is sent once the new session is registered). The status stays `None`
//!    while parked: the node is registered and reachable.
//! 5. When the stream or the connection ends, every waiting request fails with
//!    [`ControlError`] and the status watch ([`Control::status`]) turns to `Some(reason)`.
//!    Unless the loss is final (the server closed with a final [`crate::coord::CloseCode`],
//!    e.g. another connection with our key took over), the task dials again with
//!    exponential backoff and jitter, registers the latest candidates, and sets the status
//!    back to `None`. Requests made while offline fail at once.
//!
//! Every queue is bounded: commands, accepted `Go`s, pending requests. The status is a
//! watch, so no loss or restoration is ever dropped for want of room.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::client::{ClientSettings, ControlClient};
use super::config::IncomingPolicy;
use super::control_task::ControlTask;
use super::error::{ControlError, DialError, StartError};
use crate::coord::{encode, Candidate, ClientMsg, Go, NatMapping, RelayCredential};
use crate::identity::PeerId;
use crate::socket::{ConnectError, Endpoint, PeerConnection, StunDatagram};

/// Largest read from the control stream at once.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Longest time one write to the control stream may take before the connection counts as
/// lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the command and accepted-`Go` queues.
const QUEUE: usize = 64;
/// Attempts at reaching and registering with the punch server when one times out.
const REGISTER_ATTEMPTS: usize = 3;

/// The node's registration as the punch server confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// This node's address as the server sees it (its server-reflexive candidate).
    pub observed_addr: SocketAddr,
    /// The candidates sent with the registration (host, UPnP).
    pub candidates: Vec<Candidate>,
    /// How many `Registered` answers arrived so far (1 after start; re-registrations and
    /// reconnections add one each).
    pub generation: u64,
}

/// The `Go` of a request this node accepted: the node starts probing for it.
#[derive(Debug)]
pub(crate) struct AcceptedGo {
    /// The server's instruction.
    pub go: Go,
    /// When it arrived.
    pub received: Instant,
}

pub(super) type ConnectReply = oneshot::Sender<Result<(Go, Instant), DialError>>;

/// What the node asks of the control task.
pub(super) enum Command {
    Connect { target: PeerId, reply: ConnectReply },
    Register { candidates: Vec<Candidate> },
    Mapping(NatMapping),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Connect { target, .. } => write!(f, "Connect({})", target.short()),
            Command::Register { candidates } => write!(f, "Register({candidates:?})"),
            Command::Mapping(m) => write!(f, "Mapping({m:?})"),
        }
    }
}

/// Settings of the control task (from [`super::DirectConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct ControlSettings {
    pub incoming: IncomingPolicy,
    /// Who may connect, under [`IncomingPolicy::Allowlist`].
    pub allow: Arc<super::allow::Allowlist>,
    pub register_timeout: Duration,
    /// How long the first start waits for the server's answer (reported in errors).
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_pending: usize,
    /// First wait before dialing the server again after a loss (doubles per failure).
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// Announce that the server may park us (`Capabilities { park: true }`).
    pub park: bool,
    /// Ask the server to keep our address from peers (`HideAddress`, relay-only).
    pub hide_address: bool,
}

impl ControlSettings {
    /// The protocol client's part of the settings.
    pub(crate) fn client(&self) -> ClientSettings {
        ClientSettings {
            incoming: self.incoming,
            allow: self.allow.clone(),
            request_timeout: self.request_timeout,
            max_pending: self.max_pending,
            park: self.park,
            hide_address: self.hide_address,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
        }
    }
}

/// How to reach the punch server: the node's endpoint, the server's address and key.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub endpoint: Arc<Endpoint>,
    /// The server's id; `None` accepts any key (insecure, development only).
    pub expected: Option<PeerId>,
    pub server: SocketAddr,
}

/// One registered control connection.
pub(super) struct Session {
    pub connection: quinn::Connection,
    pub server: PeerId,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub observed_addr: SocketAddr,
}

/// The node's handle on the control task.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    commands: mpsc::Sender<Command>,
    registration: watch::Receiver<Registration>,
    relays: watch::Receiver<Vec<RelayCredential>>,
    status: watch::Receiver<Option<String>>,
    connection: watch::Receiver<quinn::Connection>,
    closed: Arc<AtomicBool>,
    /// Wakes a parked control task when the node closes (it then sends its leave).
    close_signal: Arc<Notify>,
    request_timeout: Duration,
}

impl Control {
    /// Connects and registers (see [`establish`]; the server must answer by `deadline`),
    /// then starts the control task.
    pub(crate) async fn start(
        connector: Connector,
        candidates: Vec<Candidate>,
        settings: ControlSettings,
        deadline: Instant,
        server_stun: mpsc::Receiver<StunDatagram>,
    ) -> Result<(Self, mpsc::Receiver<AcceptedGo>, JoinHandle<()>), StartError> {
        let mut client = ControlClient::new(settings.client(), candidates.clone());
        let session = establish(&connector, &mut client, &settings, Some(deadline)).await?;
        tracing::info!(observed_addr = %session.observed_addr, server = %session.server.short(), "registered");
        let (registration_tx, registration) = watch::channel(Registration {
            observed_addr: session.observed_addr,
            candidates: candidates.clone(),
            generation: 1,
        });
        let (relays_tx, relays) = watch::channel(Vec::new());
        let (status_tx, status) = watch::channel(None);
        let (connection_tx, connection) = watch::channel(session.connection.clone());
        let (commands, command_rx) = mpsc::channel(QUEUE);
        let (accepted_tx, accepted) = mpsc::channel(QUEUE);
        let closed = Arc::new(AtomicBool::new(false));
        let close_signal = Arc::new(Notify::new());
        let request_timeout = settings.request_timeout;
        let span = tracing::info_span!("control", server = %session.server.short());
        let task = ControlTask {
            session,
            connector,
            commands: command_rx,
            accepted: accepted_tx,
            registration: registration_tx,
            relays: relays_tx,
            status: status_tx,
            connection: connection_tx,
            client,
            replies: HashMap::new(),
            allow_changes: settings.allow.watch(),
            settings,
            closed: closed.clone(),
            close_signal: close_signal.clone(),
            server_stun,
        };
        let handle = tokio::spawn(tracing::Instrument::instrument(task.run(), span));
        let control = Self {
            commands,
            registration,
            relays,
            status,
            connection,
            closed,
            close_signal,
            request_timeout,
        };
        Ok((control, accepted, handle))
    }

    /// The latest confirmed registration.
    pub(crate) fn registration(&self) -> watch::Receiver<Registration> {
        self.registration.clone()
    }

    /// The TURN relays the punch server offers, with their latest credentials (empty
    /// until a `Relays` message arrives; a server without relays never sends one).
    pub(crate) fn relays(&self) -> watch::Receiver<Vec<RelayCredential>> {
        self.relays.clone()
    }

    /// Why the control connection is down (`Some`), or `None` while it is registered.
    pub(crate) fn status(&self) -> watch::Receiver<Option<String>> {
        self.status.clone()
    }

    /// How long a request to the punch server may take.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The current control connection's RTT estimate to the punch server.
    pub(crate) fn rtt(&self) -> Duration {
        self.connection.borrow().rtt()
    }

    /// Replaces the registration's candidates (a new `Registered` follows; while offline
    /// they are registered on reconnection).
    pub(crate) async fn register(&self, candidates: Vec<Candidate>) -> Result<(), ControlError> {
        self.commands
            .send(Command::Register { candidates })
            .await
            .map_err(|_| ControlError::Lost("control task ended".into()))
    }

    /// Tells the server how this node's NAT maps (kept for later sessions).
    pub(crate) async fn set_mapping(&self, mapping: NatMapping) {
        if self.commands.send(Command::Mapping(mapping)).await.is_err() {
            tracing::debug!("control task ended");
        }
    }

    /// Asks the server to introduce us to `target`; resolves with its `Go` and when it
    /// arrived.
    pub(crate) async fn connect(&self, target: PeerId) -> Result<(Go, Instant), DialError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Connect { target, reply })
            .await
            .map_err(|_| ControlError::Lost("control task ended".into()))?;
        // The task enforces the request deadline; this is the backstop.
        let backstop = self.request_timeout.saturating_add(Duration::from_secs(1));
        match tokio::time::timeout(backstop, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ControlError::Lost("control task ended".into()).into()),
            Err(_) => Err(DialError::Timeout {
                peer: target,
                waited: self.request_timeout,
            }),
        }
    }

    /// Closes the control connection for good (no reconnection).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.close_signal.notify_one();
        self.connection.borrow().close(0u32.into(), b"shutdown");
    }
}

/// Dials the punch server and registers the client's candidates. A timed-out attempt (a
/// lossy path can back QUIC's retransmissions off for seconds) is retried with a fresh
/// connection, whose timers start over, up to [`REGISTER_ATTEMPTS`] times. Other failures
/// (wrong key, refused) are returned at once. With `deadline`, a server that has not
/// completed one QUIC handshake by then is [`StartError::Unreachable`]; once one handshake
/// completed, the deadline no longer applies (the server answers; registration has its
/// own timeout).
pub(super) async fn establish(
    connector: &Connector,
    client: &mut ControlClient,
    settings: &ControlSettings,
    mut deadline: Option<Instant>,
) -> Result<Session, StartError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match dial(connector, settings, &mut deadline).await {
            Ok(server) => register_within(&server, client, settings).await,
            Err(e) => Err(e),
        };
        match result {
            Err(
                e
                @ (StartError::RegisterTimeout(_) | StartError::Connect(ConnectError::Timeout(_))),
            ) if attempt < REGISTER_ATTEMPTS => {
                client.registration_failed(Instant::now());
                tracing::warn!(attempt, error = %e, "punch server registration timed out, retrying");
            }
            other => return other,
        }
    }
}

/// Dials the punch server (its key checked unless insecure); with `deadline`, a server
/// that completes no handshake by then is unreachable, and the deadline is cleared once
/// one did.
pub(super) async fn dial(
    connector: &Connector,
    settings: &ControlSettings,
    deadline: &mut Option<Instant>,
) -> Result<PeerConnection, StartError> {
    let endpoint = &connector.endpoint;
    let connect = async {
        match connector.expected {
            Some(id) => endpoint.connect(id, connector.server).await,
            None => endpoint.connect_insecure(connector.server).await,
        }
    };
    let connected = match *deadline {
        Some(d) => tokio::time::timeout_at(d.into(), connect)
            .await
            .map_err(|_| StartError::Unreachable {
                server: connector.server,
                waited: settings.connect_timeout,
            })?,
        None => connect.await,
    };
    let server = connected.map_err(StartError::Connect)?;
    *deadline = None;
    Ok(server)
}

/// Registers on a connection to the server within the register timeout; the connection
/// is closed if that fails.
pub(super) async fn register_within(
    server: &PeerConnection,
    client: &mut ControlClient,
    settings: &ControlSettings,
) -> Result<Session, StartError> {
    let registered =
        tokio::time::timeout(settings.register_timeout, register(server, client)).await;
    let result = match registered {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(StartError::Control(e)),
        Err(_) => Err(StartError::RegisterTimeout(settings.register_timeout)),
    };
    if result.is_err() {
        server.connection.close(0u32.into(), b"registration failed");
    }
    result
}

/// Opens the stream on the connection to `server`, sends the client's hello (see
/// [`super::client`], step 1) and runs the client until `Registered`: the session then
/// starts. What the client queued after it (requests sent again) is written too; its
/// events stay queued for the control task.
async fn register(
    server: &PeerConnection,
    client: &mut ControlClient,
) -> Result<Session, ControlError> {
    let (mut send, mut recv) = server
        .connection
        .open_bi()
        .await
        .map_err(|e| ControlError::from_connection(&e))?;
    client.start_session();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while let Some(msg) = client.poll_transmit() {
            write_msg(&mut send, &msg).await?;
        }
        if let Some(observed_addr) = client.session_observed() {
            return Ok(Session {
                connection: server.connection.clone(),
                server: server.peer_id,
                send,
                recv,
                observed_addr,
            });
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => client.handle_input(Instant::now(), buf.get(..n).unwrap_or_default())?,
            Ok(None) => return Err(ControlError::Lost("stream finished".into())),
            Err(e) => return Err(read_error(e)),
        }
    }
}

/// The [`ControlError`] of a failed read.
pub(super) fn read_error(e: quinn::ReadError) -> ControlError {
    match e {
        quinn::ReadError::ConnectionLost(e) => ControlError::from_connection(&e),
        e => ControlError::Lost(e.to_string()),
    }
}

/// Writes one frame, bounded by [`WRITE_TIMEOUT`].
pub(super) async fn write_msg(
    send: &mut quinn::SendStream,
    msg: &ClientMsg,
) -> Result<(), ControlError> {
    let mut buf = Vec::with_capacity(64);
    encode(msg, &mut buf)?;
    match tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::WriteError::ConnectionLost(e))) => Err(ControlError::from_connection(&e)),
        Ok(Err(e)) => Err(ControlError::Lost(e.to_string())),
        Err(_) => Err(ControlError::Lost(format!(
            "write blocked for {WRITE_TIMEOUT:?}"
        ))),
    }
}
