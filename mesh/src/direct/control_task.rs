//! The task that owns the control stream (see [`super::control`] for the protocol steps).
//!
//! Steps of [`ControlTask::run`]:
//! 1. Serve the session: decode server messages, run the node's commands, expire requests.
//! 2. When the session ends, fail every waiting request with the [`ControlError`] and set
//!    the status watch to its text. Stop if the node closed the connection, dropped its
//!    handles, or the error is final ([`ControlError::is_final`]).
//! 3. Otherwise dial again after `reconnect_min` (doubling up to `reconnect_max` per
//!    failure, with ±25 % jitter so a restarted server is not hit by every peer at once; see
//!    [`crate::backoff`]).
//!    While offline, `Connect` fails at once and `Register` only updates the candidates.
//! 4. On success, publish the new connection and registration, set the status back to
//!    `None`, run the commands queued while parked, and serve again.
//!
//! A session that ended after the server's `Park` goes through [`ControlTask::parked`]
//! instead of step 2 (see [`super::control`], step 4): keep-alives until woken or needed,
//! then step 3 without the first backoff wait. If a `Connect` of ours crossed the
//! `Park` (the server parks only connections without requests, so it never saw it), the
//! task goes to step 3 at once and sends that request again on the new session.
//!
//! Durations from the configuration may be huge (`Duration::MAX` for "never"): backoff
//! and deadlines saturate ([`super::deadline_after`]) instead of overflowing.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::control::{
    establish, read_error, write_msg, AcceptedGo, Command, ConnectReply, Connector,
    ControlSettings, Registration, Session, READ_CHUNK,
};
use super::control_park::Unpark;
use super::error::{ControlError, DialError, StartError};
use super::IncomingPolicy;
use super::{deadline_after, sleep_until_opt};
use crate::backoff::Backoff;
use crate::coord::{
    Candidate, ClientMsg, CloseCode, ErrorKind, ParkKey, RelayCredential, Role, ServerMsg,
};
use crate::identity::PeerId;
use crate::socket::StunDatagram;

/// How long to wait for the server's close code after it finished the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A request of ours waiting for the server's `Go` or `Error`.
pub(super) struct PendingRequest {
    target: PeerId,
    reply: ConnectReply,
    deadline: Instant,
}

type Establishing = Pin<Box<dyn Future<Output = Result<Session, StartError>> + Send>>;

/// The control task's state (built by [`super::control::Control::start`]).
pub(super) struct ControlTask {
    pub session: Session,
    pub connector: Connector,
    pub commands: mpsc::Receiver<Command>,
    /// The `Go`s of incoming requests this node accepted.
    pub accepted: mpsc::Sender<AcceptedGo>,
    pub registration: watch::Sender<Registration>,
    /// The relays of the latest `Relays` message.
    pub relays: watch::Sender<Vec<RelayCredential>>,
    /// Why the control connection is down (`None` while registered).
    pub status: watch::Sender<Option<String>>,
    pub connection: watch::Sender<quinn::Connection>,
    /// The candidates of the latest `Register` (sent again on reconnection).
    pub sent_candidates: Vec<Candidate>,
    pub pending: HashMap<u64, PendingRequest>,
    /// Incoming requests from peers not (yet) on the allowlist: request id to (peer,
    /// deadline). See [`super::allow`].
    pub held: HashMap<u64, (PeerId, Instant)>,
    /// Changes of the allowlist (held requests are checked again).
    pub allow_changes: watch::Receiver<u64>,
    /// Whether this connection's server-side policy is accept-all (allowlist open).
    pub policy_open: bool,
    pub next_request: u64,
    pub settings: ControlSettings,
    /// Set by [`super::control::Control::close`]: never reconnect.
    pub closed: Arc<AtomicBool>,
    /// Notified by [`super::control::Control::close`] (a parked task sends its leave).
    pub close_signal: Arc<tokio::sync::Notify>,
    /// STUN datagrams from the punch server's address (keep-alive answers, wake-ups),
    /// routed here by the engine.
    pub server_stun: mpsc::Receiver<StunDatagram>,
    /// The server's `Park` on this session: key and keep-alive interval.
    pub park: Option<(ParkKey, Duration)>,
    /// Commands taken while parked or unparking, run once the new session is registered
    /// (at most `max_pending`).
    pub queued: Vec<Command>,
}

impl ControlTask {
    pub(super) async fn run(mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let Some(error) = self.serve(&mut buf).await else {
                tracing::debug!("control connection closed");
                return;
            };
            let parked = self.park.take();
            if parked.is_none() {
                for (_, p) in self.pending.drain() {
                    let _ = p.reply.send(Err(error.clone().into()));
                }
            }
            self.session
                .connection
                .close(0u32.into(), b"control connection lost");
            let first_wait = match parked {
                // Our `Connect` crossed the server's `Park`: the server never saw it (it
                // parks only connections without requests). Dial again and send it anew.
                Some(_) if !self.pending.is_empty() => {
                    tracing::debug!(
                        requests = self.pending.len(),
                        "parked with requests in flight"
                    );
                    false
                }
                Some((key, interval)) => {
                    tracing::info!(keepalive = ?interval, "parked by the punch server");
                    match self.parked(key, interval).await {
                        None => return,
                        Some(Unpark::Lost(why)) => {
                            tracing::info!(?why, "parked registration lost, dialing again");
                            self.status
                                .send_replace(Some(format!("parked registration lost: {why:?}")));
                        }
                        Some(Unpark::Woken) => tracing::info!("woken, dialing again"),
                        Some(Unpark::Needed) => tracing::debug!("unparking"),
                        Some(Unpark::RenewRelays) => {
                            tracing::debug!("unparking to renew the relay credentials");
                        }
                    }
                    false
                }
                None => {
                    tracing::warn!(error = %error, "control connection lost");
                    self.status.send_replace(Some(error.to_string()));
                    if error.is_final() || self.closed.load(Ordering::Relaxed) {
                        return;
                    }
                    true
                }
            };
            let Some(session) = self.reconnect(first_wait).await else {
                return;
            };
            tracing::info!(observed_addr = %session.observed_addr, "control connection restored");
            let _ = self.connection.send(session.connection.clone());
            self.publish_registration(session.observed_addr);
            self.session = session;
            // A new connection starts without our policy: it is sent again.
            self.policy_open = false;
            self.status.send_replace(None);
            let resend: Vec<ClientMsg> = self
                .pending
                .iter()
                .map(|(&request_id, p)| ClientMsg::Connect {
                    request_id,
                    target: p.target,
                })
                .collect();
            for connect in resend {
                if let Err(e) = write_msg(&mut self.session.send, &connect).await {
                    tracing::debug!(error = %e, "request not sent again");
                }
            }
            for command in std::mem::take(&mut self.queued) {
                if let Err(e) = self.on_command(command).await {
                    tracing::debug!(error = %e, "queued command failed");
                }
            }
        }
    }

    /// Publishes a registration the server confirmed: `observed_addr` with the candidates
    /// of the latest `Register`, one generation on.
    fn publish_registration(&self, observed_addr: SocketAddr) {
        let candidates = self.sent_candidates.clone();
        self.registration.send_modify(|r| {
            r.observed_addr = observed_addr;
            r.candidates = candidates;
            r.generation += 1;
        });
    }

    /// Serves the session until it ends: `None` when this side closed it or the node
    /// dropped its handles, the error otherwise.
    async fn serve(&mut self, buf: &mut [u8]) -> Option<ControlError> {
        loop {
            // Messages that arrived with the registration are still in the decoder.
            if let Err(e) = self.drain().await {
                return Some(e);
            }
            if let Err(e) = self.sync_policy().await {
                return Some(e);
            }
            let deadline = self
                .pending
                .values()
                .map(|p| p.deadline)
                .chain(self.held.values().map(|h| h.1))
                .min();
            tokio::select! {
                changed = self.allow_changes.changed() => {
                    if changed.is_ok() {
                        if let Err(e) = self.answer_held(Instant::now()).await {
                            return Some(e);
                        }
                    }
                }
                read = self.session.recv.read(buf) => match read {
                    Ok(Some(n)) => self.session.decoder.push(buf.get(..n).unwrap_or_default()),
                    Ok(None) => return Some(self.finished().await),
                    Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
                        return None;
                    }
                    Err(e) => return Some(read_error(e)),
                },
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if let Err(e) = self.on_command(command).await {
                            return Some(e);
                        }
                    }
                    None => return None,
                },
                _ = sleep_until_opt(deadline) => {
                    let now = Instant::now();
                    self.expire(now);
                    if let Err(e) = self.answer_held(now).await {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// The server finished the stream: it closes the connection right after, with the
    /// reason (a close code) that tells whether to reconnect. Wait for it, briefly.
    async fn finished(&self) -> ControlError {
        let closed = self.session.connection.closed();
        match tokio::time::timeout(CLOSE_WAIT, closed).await {
            Ok(e) if CloseCode::from_quic(&e).is_some() => ControlError::from_connection(&e),
            _ => ControlError::Lost("server finished the stream".into()),
        }
    }

    /// Dials until a session is registered; `None` if the node closed or went away, or
    /// the server's answer makes retrying pointless.
    /// Without `first_wait` (unparking) the first attempt starts at once, and connect
    /// requests made meanwhile wait for the session (at most `max_pending`).
    async fn reconnect(&mut self, first_wait: bool) -> Option<Session> {
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        let mut next_try = if first_wait {
            deadline_after(backoff.next(&mut rand::thread_rng()))
        } else {
            Instant::now()
        };
        let unparking = !first_wait;
        let mut attempt: Option<Establishing> = None;
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command_offline(command, unparking),
                    None => return None,
                },
                _ = sleep_until_opt(Some(next_try)), if attempt.is_none() => {
                    let (connector, settings) = (self.connector.clone(), self.settings.clone());
                    let candidates = self.sent_candidates.clone();
                    attempt = Some(Box::pin(async move {
                        establish(&connector, &candidates, &settings, None).await
                    }));
                }
                result = poll_some(&mut attempt), if attempt.is_some() => {
                    attempt = None;
                    match result {
                        Ok(session) => return Some(session),
                        Err(StartError::Control(e)) if e.is_final() => {
                            tracing::warn!(error = %e, "punch server refuses us for good");
                            self.status.send_replace(Some(e.to_string()));
                            return None;
                        }
                        Err(e) => {
                            let retry_in = backoff.next(&mut rand::thread_rng());
                            tracing::info!(error = %e, ?retry_in, "reconnection failed");
                            next_try = deadline_after(retry_in);
                        }
                    }
                }
            }
        }
    }

    /// A command while no session is up (`unparking`: connects wait for the session).
    fn on_command_offline(&mut self, command: Command, unparking: bool) {
        match command {
            Command::Register { candidates } => self.sent_candidates = candidates,
            command @ Command::Connect { .. }
                if unparking && self.queued.len() < self.settings.max_pending =>
            {
                self.queued.push(command);
            }
            Command::Connect { reply, .. } => {
                let offline = ControlError::Lost("reconnecting to the punch server".into());
                let _ = reply.send(Err(offline.into()));
            }
        }
    }

    async fn drain(&mut self) -> Result<(), ControlError> {
        while let Some(msg) = self.session.decoder.pop() {
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
                write_msg(&mut self.session.send, &ClientMsg::Register { candidates }).await
            }
            Command::Connect { target, reply } => {
                if self.pending.len() >= self.settings.max_pending {
                    let _ = reply.send(Err(DialError::Busy(self.pending.len())));
                    return Ok(());
                }
                let request_id = self.next_request;
                self.next_request += 1;
                let deadline = deadline_after(self.settings.request_timeout);
                self.pending.insert(
                    request_id,
                    PendingRequest {
                        target,
                        reply,
                        deadline,
                    },
                );
                tracing::debug!(request_id, target = %target.short(), "connect request");
                let connect = ClientMsg::Connect { request_id, target };
                write_msg(&mut self.session.send, &connect).await
            }
        }
    }

    async fn on_message(&mut self, msg: ServerMsg) -> Result<(), ControlError> {
        let received = Instant::now();
        let send = &mut self.session.send;
        match msg {
            ServerMsg::Ping { ts } => write_msg(send, &ClientMsg::Pong { ts }).await?,
            ServerMsg::Pong { .. } => {}
            ServerMsg::Relays { relays } => {
                tracing::debug!(relays = relays.len(), "relay credentials received");
                self.relays.send_replace(relays);
            }
            ServerMsg::Park { key, keepalive } if self.settings.park => {
                // The server closes the connection next (`CloseCode::Parked`).
                self.park = Some((key, keepalive));
            }
            ServerMsg::Park { .. } => tracing::warn!("Park from the server although not offered"),
            ServerMsg::Registered { observed_addr, .. } => {
                self.publish_registration(observed_addr);
                tracing::debug!(%observed_addr, "registration updated");
            }
            ServerMsg::Incoming { request_id, from } => {
                let answer = match self.settings.incoming {
                    IncomingPolicy::AcceptAll => ClientMsg::Accept { request_id },
                    IncomingPolicy::RefuseAll => ClientMsg::Refuse { request_id },
                    IncomingPolicy::Allowlist if self.settings.allow.allows(&from) => {
                        ClientMsg::Accept { request_id }
                    }
                    IncomingPolicy::Allowlist if self.held.len() < super::allow::MAX_HELD => {
                        tracing::debug!(request_id, from = %from.short(), "incoming request held");
                        let deadline = deadline_after(super::allow::HOLD);
                        self.held.insert(request_id, (from, deadline));
                        return Ok(());
                    }
                    IncomingPolicy::Allowlist => ClientMsg::Refuse { request_id },
                };
                tracing::info!(request_id, from = %from.short(), ?answer, "incoming request");
                write_msg(send, &answer).await?;
            }
            ServerMsg::Cancelled { request_id } => {
                self.held.remove(&request_id);
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
                if self.accepted.try_send(AcceptedGo { go, received }).is_err() {
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

    /// Under [`IncomingPolicy::Allowlist`], mirrors whether the list is open to the punch
    /// server's accept-all policy for this connection.
    async fn sync_policy(&mut self) -> Result<(), ControlError> {
        if self.settings.incoming != IncomingPolicy::Allowlist {
            return Ok(());
        }
        let open = self.settings.allow.is_open();
        if self.policy_open != open {
            write_msg(
                &mut self.session.send,
                &ClientMsg::Policy { accept_all: open },
            )
            .await?;
            self.policy_open = open;
        }
        Ok(())
    }

    /// Answers held incoming requests: accepted once allowed, refused when their hold ends.
    async fn answer_held(&mut self, now: Instant) -> Result<(), ControlError> {
        let allow = self.settings.allow.clone();
        let decided: Vec<(u64, bool)> = self
            .held
            .iter()
            .filter_map(|(&id, (from, deadline))| {
                if allow.allows(from) {
                    Some((id, true))
                } else if *deadline <= now {
                    Some((id, false))
                } else {
                    None
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
                write_msg(&mut self.session.send, &answer).await?;
            }
        }
        Ok(())
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

/// Awaits the future in `slot` (the caller's `select!` guard makes sure there is one).
async fn poll_some(slot: &mut Option<Establishing>) -> Result<Session, StartError> {
    match slot {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_backoff_still_gives_a_deadline() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX);
        let _ = deadline_after(backoff.next(&mut rand::thread_rng()));
        let _ = deadline_after(backoff.next(&mut rand::thread_rng()));
    }
}
