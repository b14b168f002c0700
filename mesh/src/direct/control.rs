//! The control connection to the punch server: one QUIC connection from the node's one
//! socket, one bidirectional stream of `mesh::coord` frames (see [`crate::coord`]).
//!
//! Steps:
//! 1. [`Control::open`] dials the server (its key checked unless insecure), opens the
//!    stream, sends `Register` with the node's candidates (and `Policy { accept_all }` for
//!    [`IncomingPolicy::AcceptAll`], so connects to it skip the `Incoming` round trip) and
//!    waits (bounded) for `Registered`, which carries the reflexive address the server
//!    observes.
//! 2. A task then owns the stream. It answers server `Ping`s with `Pong`, answers
//!    `Incoming` requests by the node's [`IncomingPolicy`], hands the `Go` of an accepted
//!    request (role controlled) to the node as a [`ControlEvent`], and resolves the node's
//!    own requests: `Connect` gets its `Go` (role controlling) or an `Error` with the same
//!    request id; each request has a deadline.
//! 3. `Register` may be sent again (a UPnP mapping appeared); each `Registered` updates the
//!    [`Registration`] watch.
//! 4. When the stream or the connection ends, or the server sends an invalid frame, every
//!    waiting request fails with [`ControlError`] and the event channel reports the loss.
//!
//! Every queue is bounded: commands, events, pending requests, remembered incoming requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::sleep_until_opt;
use tokio::sync::{mpsc, oneshot, watch};

use super::config::IncomingPolicy;
use super::error::{ControlError, DialError, StartError};
use crate::coord::{encode, Candidate, ClientMsg, ErrorKind, FrameDecoder, Go, Role, ServerMsg};
use crate::identity::PeerId;
use crate::socket::PeerConnection;

/// Largest read from the control stream at once.
const READ_CHUNK: usize = 16 * 1024;
/// Longest time one write to the control stream may take before the connection counts as
/// lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the command and event queues.
const QUEUE: usize = 64;

/// The node's registration as the punch server confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// This node's address as the server sees it (its server-reflexive candidate).
    pub observed_addr: SocketAddr,
    /// The candidates sent with the registration (host, UPnP).
    pub candidates: Vec<Candidate>,
    /// How many `Registered` answers arrived so far (1 after start).
    pub generation: u64,
}

/// What the control task reports to the node.
#[derive(Debug)]
pub(crate) enum ControlEvent {
    /// Start probing for a request this node accepted.
    Go {
        /// The server's instruction.
        go: Go,
        /// When it arrived.
        received: Instant,
    },
    /// The control connection is gone.
    Lost(ControlError),
}

type ConnectReply = oneshot::Sender<Result<(Go, Instant), DialError>>;

enum Command {
    Connect { target: PeerId, reply: ConnectReply },
    Register { candidates: Vec<Candidate> },
}

/// The node's handle on the control task.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    commands: mpsc::Sender<Command>,
    registration: watch::Receiver<Registration>,
    connection: quinn::Connection,
    request_timeout: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Connect { target, .. } => write!(f, "Connect({})", target.short()),
            Command::Register { candidates } => write!(f, "Register({candidates:?})"),
        }
    }
}

/// Settings of the control task (from [`super::DirectConfig`]).
pub(crate) struct ControlSettings {
    pub incoming: IncomingPolicy,
    pub register_timeout: Duration,
    pub request_timeout: Duration,
    pub max_pending: usize,
}

impl Control {
    /// Registers on the established connection `server` and starts the control task.
    pub(crate) async fn open(
        server: PeerConnection,
        candidates: Vec<Candidate>,
        settings: ControlSettings,
    ) -> Result<(Self, mpsc::Receiver<ControlEvent>), StartError> {
        let connection = server.connection.clone();
        let register = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| ControlError::Lost(format!("{e:?}")))?;
            write_msg(
                &mut send,
                &ClientMsg::Register {
                    candidates: candidates.clone(),
                },
            )
            .await?;
            // Accepting everyone anyway: say so in advance and save the server a round trip
            // per connect (it sends `Go` at once instead of `Incoming`).
            if settings.incoming == IncomingPolicy::AcceptAll {
                write_msg(&mut send, &ClientMsg::Policy { accept_all: true }).await?;
            }
            let mut decoder = FrameDecoder::<ServerMsg>::new();
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                while let Some(msg) = decoder.pop() {
                    match msg? {
                        ServerMsg::Registered { observed_addr, .. } => {
                            return Ok::<_, ControlError>((send, recv, decoder, observed_addr));
                        }
                        ServerMsg::Ping { ts } => {
                            write_msg(&mut send, &ClientMsg::Pong { ts }).await?
                        }
                        ServerMsg::Error { kind, detail, .. } => {
                            return Err(ControlError::Server { kind, detail })
                        }
                        other => tracing::debug!(?other, "ignored before registration"),
                    }
                }
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => decoder.push(buf.get(..n).unwrap_or_default()),
                    Ok(None) => return Err(ControlError::Lost("stream finished".into())),
                    Err(e) => return Err(ControlError::Lost(format!("{e:?}"))),
                }
            }
        };
        let (send, recv, decoder, observed_addr) =
            tokio::time::timeout(settings.register_timeout, register)
                .await
                .map_err(|_| StartError::RegisterTimeout(settings.register_timeout))??;
        tracing::info!(%observed_addr, server = %server.peer_id.short(), "registered");
        let (registration_tx, registration) = watch::channel(Registration {
            observed_addr,
            candidates: candidates.clone(),
            generation: 1,
        });
        let (commands, command_rx) = mpsc::channel(QUEUE);
        let (event_tx, events) = mpsc::channel(QUEUE);
        let request_timeout = settings.request_timeout;
        let task = ControlTask {
            send,
            decoder,
            commands: command_rx,
            events: event_tx,
            registration: registration_tx,
            sent_candidates: candidates,
            pending: HashMap::new(),
            next_request: 1,
            settings,
        };
        let span = tracing::info_span!("control", server = %server.peer_id.short());
        tokio::spawn(tracing::Instrument::instrument(task.run(recv), span));
        Ok((
            Self {
                commands,
                registration,
                connection,
                request_timeout,
            },
            events,
        ))
    }

    /// The latest confirmed registration.
    pub(crate) fn registration(&self) -> watch::Receiver<Registration> {
        self.registration.clone()
    }

    /// The QUIC connection's current RTT estimate to the punch server.
    pub(crate) fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// Replaces the registration's candidates (a new `Registered` follows).
    pub(crate) async fn register(&self, candidates: Vec<Candidate>) -> Result<(), ControlError> {
        self.commands
            .send(Command::Register { candidates })
            .await
            .map_err(|_| ControlError::Lost("control task ended".into()))
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
        match tokio::time::timeout(self.request_timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ControlError::Lost("control task ended".into()).into()),
            Err(_) => Err(DialError::Timeout {
                peer: target,
                waited: self.request_timeout,
            }),
        }
    }

    /// Closes the control connection.
    pub(crate) fn close(&self) {
        self.connection.close(0u32.into(), b"shutdown");
    }
}

struct PendingRequest {
    target: PeerId,
    reply: ConnectReply,
    deadline: Instant,
}

struct ControlTask {
    send: quinn::SendStream,
    decoder: FrameDecoder<ServerMsg>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<ControlEvent>,
    registration: watch::Sender<Registration>,
    sent_candidates: Vec<Candidate>,
    pending: HashMap<u64, PendingRequest>,
    next_request: u64,
    settings: ControlSettings,
}

impl ControlTask {
    async fn run(mut self, mut recv: quinn::RecvStream) {
        let mut buf = vec![0u8; READ_CHUNK];
        let error = loop {
            // Messages that arrived with the registration are still in the decoder.
            if let Err(e) = self.drain().await {
                break e;
            }
            let deadline = self.pending.values().map(|p| p.deadline).min();
            tokio::select! {
                read = recv.read(&mut buf) => match read {
                    Ok(Some(n)) => {
                        self.decoder.push(buf.get(..n).unwrap_or_default());
                    }
                    Ok(None) => break ControlError::Lost("server finished the stream".into()),
                    Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
                        tracing::debug!("control connection closed");
                        return;
                    }
                    Err(e) => break ControlError::Lost(format!("{e:?}")),
                },
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if let Err(e) = self.on_command(command).await {
                            break e;
                        }
                    }
                    None => return,
                },
                _ = sleep_until_opt(deadline) => self.expire(Instant::now()),
            }
        };
        tracing::warn!(error = %error, "control connection lost");
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(error.clone().into()));
        }
        let _ = self.events.try_send(ControlEvent::Lost(error));
    }

    async fn drain(&mut self) -> Result<(), ControlError> {
        while let Some(msg) = self.decoder.pop() {
            match msg {
                Ok(msg) => self.on_message(msg).await?,
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => tracing::debug!(error = %e, "malformed frame from server dropped"),
            }
        }
        Ok(())
    }

    async fn on_command(&mut self, command: Command) -> Result<(), ControlError> {
        match command {
            Command::Register { candidates } => {
                self.sent_candidates = candidates.clone();
                write_msg(&mut self.send, &ClientMsg::Register { candidates }).await
            }
            Command::Connect { target, reply } => {
                if self.pending.len() >= self.settings.max_pending {
                    let _ = reply.send(Err(DialError::Busy(self.pending.len())));
                    return Ok(());
                }
                let request_id = self.next_request;
                self.next_request += 1;
                let deadline = Instant::now() + self.settings.request_timeout;
                self.pending.insert(
                    request_id,
                    PendingRequest {
                        target,
                        reply,
                        deadline,
                    },
                );
                tracing::debug!(request_id, target = %target.short(), "connect request");
                write_msg(&mut self.send, &ClientMsg::Connect { request_id, target }).await
            }
        }
    }

    async fn on_message(&mut self, msg: ServerMsg) -> Result<(), ControlError> {
        let received = Instant::now();
        match msg {
            ServerMsg::Ping { ts } => write_msg(&mut self.send, &ClientMsg::Pong { ts }).await?,
            ServerMsg::Pong { .. } => {}
            ServerMsg::Registered { observed_addr, .. } => {
                let candidates = self.sent_candidates.clone();
                self.registration.send_modify(|r| {
                    r.observed_addr = observed_addr;
                    r.candidates = candidates;
                    r.generation += 1;
                });
                tracing::debug!(%observed_addr, "registration updated");
            }
            ServerMsg::Incoming { request_id, from } => {
                let answer = match self.settings.incoming {
                    IncomingPolicy::AcceptAll => ClientMsg::Accept { request_id },
                    IncomingPolicy::RefuseAll => ClientMsg::Refuse { request_id },
                };
                tracing::info!(request_id, from = %from.short(), ?answer, "incoming request");
                write_msg(&mut self.send, &answer).await?;
            }
            ServerMsg::Cancelled { request_id } => {
                tracing::debug!(request_id, "incoming request cancelled");
            }
            // The requester is controlling: a controlling Go answers one of our requests.
            ServerMsg::Go(go) if go.role == Role::Controlling => {
                match self.pending.remove(&go.request_id) {
                    Some(p) if p.target == go.peer => {
                        let _ = p.reply.send(Ok((go, received)));
                    }
                    Some(p) => {
                        tracing::warn!(request_id = go.request_id, "Go names another peer");
                        let _ = p.reply.send(Err(DialError::Server {
                            kind: ErrorKind::InvalidRequest,
                            detail: "server introduced another peer".into(),
                        }));
                    }
                    None => tracing::debug!(request_id = go.request_id, "Go for no request"),
                }
            }
            ServerMsg::Go(go) => {
                if self
                    .events
                    .try_send(ControlEvent::Go { go, received })
                    .is_err()
                {
                    tracing::warn!("punch attempt dropped: node is not keeping up");
                }
            }
            ServerMsg::Error {
                request_id,
                kind,
                detail,
            } => self.on_error(request_id, kind, detail)?,
        }
        Ok(())
    }

    fn on_error(
        &mut self,
        request_id: Option<u64>,
        kind: ErrorKind,
        detail: String,
    ) -> Result<(), ControlError> {
        // `UnknownRequest` concerns our answer to an incoming request, not our requests.
        let ours = request_id
            .filter(|_| kind != ErrorKind::UnknownRequest)
            .and_then(|id| self.pending.remove(&id));
        match ours {
            Some(p) => {
                let err = match kind {
                    ErrorKind::UnknownTarget => DialError::UnknownTarget(p.target),
                    ErrorKind::Refused => DialError::Refused(p.target),
                    ErrorKind::Timeout => DialError::Timeout {
                        peer: p.target,
                        waited: self.settings.request_timeout,
                    },
                    kind => DialError::Server { kind, detail },
                };
                let _ = p.reply.send(Err(err));
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

    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(DialError::Timeout {
                    peer: p.target,
                    waited: self.settings.request_timeout,
                }));
            }
        }
    }
}

async fn write_msg(send: &mut quinn::SendStream, msg: &ClientMsg) -> Result<(), ControlError> {
    let mut buf = Vec::with_capacity(64);
    encode(msg, &mut buf)?;
    match tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ControlError::Lost(format!("{e:?}"))),
        Err(_) => Err(ControlError::Lost(format!(
            "write blocked for {WRITE_TIMEOUT:?}"
        ))),
    }
}
