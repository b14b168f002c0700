//! The task that owns the control stream (see [`super::control`] for the protocol steps).
//!
//! Steps of [`ControlTask::run`]:
//! 1. Serve the session: decode server messages, run the node's commands, expire requests.
//! 2. When the session ends, fail every waiting request with the [`ControlError`] and set
//!    the status watch to its text. Stop if the node closed the connection, dropped its
//!    handles, or the error is final ([`ControlError::is_final`]).
//! 3. Otherwise dial again when the client says ([`ControlClient::next_dial`]: after
//!    `reconnect_min`, doubling up to `reconnect_max` per failure, with ±25 % jitter so a
//!    restarted server is not hit by every peer at once).
//!    While offline, `Connect` fails at once and `Register` only updates the candidates.
//! 4. On success, publish the new connection and registration, set the status back to
//!    `None` (requests made while parked were sent with the hello), and serve again.
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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::client::{ClientEvent, ControlClient};
use super::control::{
    dial, read_error, register_within, write_msg, AcceptedGo, Command, ConnectReply, Connector,
    ControlSettings, Registration, Session, READ_CHUNK,
};
use super::control_park::Unpark;
use super::error::{ControlError, StartError};
use super::sleep_until_opt;
use crate::coord::{CloseCode, RelayCredential};
use crate::socket::{PeerConnection, StunDatagram};

/// How long to wait for the server's close code after it finished the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Dialing = Pin<Box<dyn Future<Output = Result<PeerConnection, StartError>> + Send>>;

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
    /// The protocol's client side: requests, incoming requests, registration.
    pub client: ControlClient,
    /// Who waits for each of the client's requests (as many as the client's pending).
    pub replies: HashMap<u64, ConnectReply>,
    /// Changes of the allowlist (held requests are checked again).
    pub allow_changes: watch::Receiver<u64>,
    pub settings: ControlSettings,
    /// Set by [`super::control::Control::close`]: never reconnect.
    pub closed: Arc<AtomicBool>,
    /// Notified by [`super::control::Control::close`] (a parked task sends its leave).
    pub close_signal: Arc<tokio::sync::Notify>,
    /// STUN datagrams from the punch server's address (keep-alive answers, wake-ups),
    /// routed here by the engine.
    pub server_stun: mpsc::Receiver<StunDatagram>,
}

impl ControlTask {
    pub(super) async fn run(mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let Some(error) = self.serve(&mut buf).await else {
                tracing::debug!("control connection closed");
                return;
            };
            let parked = self.client.session_lost(Instant::now(), &error);
            self.dispatch_events();
            self.session
                .connection
                .close(0u32.into(), b"control connection lost");
            // When to dial again is the client's (at once after a park, else backoff).
            match parked {
                // Our `Connect` crossed the server's `Park`: the server never saw it (it
                // parks only connections without requests). Dial again and send it anew.
                Some(_) if self.client.has_pending() => {
                    tracing::debug!("parked with requests in flight");
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
                }
                None => {
                    tracing::warn!(error = %error, "control connection lost");
                    self.status.send_replace(Some(error.to_string()));
                    if error.is_final() || self.closed.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
            let Some(session) = self.reconnect().await else {
                return;
            };
            tracing::info!(observed_addr = %session.observed_addr, "control connection restored");
            let _ = self.connection.send(session.connection.clone());
            self.publish_registration(session.observed_addr);
            self.session = session;
            self.status.send_replace(None);
        }
    }

    /// Publishes a registration the server confirmed: `observed_addr` with the candidates
    /// of the latest `Register`, one generation on.
    fn publish_registration(&self, observed_addr: std::net::SocketAddr) {
        let candidates = self.client.candidates().to_vec();
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
            if let Err(e) = self.flush().await {
                return Some(e);
            }
            let deadline = self.client.poll_timeout();
            tokio::select! {
                changed = self.allow_changes.changed() => {
                    if changed.is_ok() {
                        self.client.allow_changed(Instant::now());
                    }
                }
                read = self.session.recv.read(buf) => match read {
                    Ok(Some(n)) => {
                        let bytes = buf.get(..n).unwrap_or_default();
                        if let Err(e) = self.client.handle_input(Instant::now(), bytes) {
                            return Some(e);
                        }
                    }
                    Ok(None) => return Some(self.finished().await),
                    Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
                        return None;
                    }
                    Err(e) => return Some(read_error(e)),
                },
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return None,
                },
                _ = sleep_until_opt(deadline) => self.client.handle_timeout(Instant::now()),
            }
        }
    }

    /// Writes what the client queued and hands its events on.
    async fn flush(&mut self) -> Result<(), ControlError> {
        while let Some(msg) = self.client.poll_transmit() {
            write_msg(&mut self.session.send, &msg).await?;
        }
        self.dispatch_events();
        Ok(())
    }

    /// Hands the client's events to the node: registrations, relays, answers, `Go`s.
    pub(super) fn dispatch_events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                // Published by whoever registered the session.
                ClientEvent::SessionUp { .. } => {}
                ClientEvent::Registered { observed_addr } => {
                    self.publish_registration(observed_addr);
                    tracing::debug!(%observed_addr, "registration updated");
                }
                ClientEvent::Relays(relays) => {
                    self.relays.send_replace(relays);
                }
                ClientEvent::Answered {
                    request,
                    result,
                    received,
                } => {
                    if let Some(reply) = self.replies.remove(&request.0) {
                        let _ = reply.send(result.map(|go| (go, received)));
                    }
                }
                ClientEvent::Accepted { go, received } => {
                    if self.accepted.try_send(AcceptedGo { go, received }).is_err() {
                        tracing::warn!("punch attempt dropped: node is not keeping up");
                    }
                }
            }
        }
    }

    /// A command of the node, online or not (the client decides what it means).
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Register { candidates } => self.client.register(candidates),
            Command::Mapping(mapping) => self.client.set_mapping(mapping),
            Command::Connect { target, reply } => {
                match self.client.connect(Instant::now(), target) {
                    Ok(id) => {
                        self.replies.insert(id.0, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
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
    /// the server's answer makes retrying pointless. The client says when to dial
    /// ([`ControlClient::next_dial`]: at once when unparking, else with backoff), and
    /// whether connect requests made meanwhile wait for the session (after a park) or fail
    /// at once.
    async fn reconnect(&mut self) -> Option<Session> {
        let mut attempt: Option<Dialing> = None;
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            self.dispatch_events();
            let timer = self.client.poll_timeout();
            let next_try = self.client.next_dial();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return None,
                },
                _ = sleep_until_opt(timer) => self.client.handle_timeout(Instant::now()),
                _ = sleep_until_opt(next_try), if attempt.is_none() => {
                    let (connector, settings) = (self.connector.clone(), self.settings.clone());
                    attempt = Some(Box::pin(async move {
                        dial(&connector, &settings, &mut None).await
                    }));
                }
                result = poll_some(&mut attempt), if attempt.is_some() => {
                    attempt = None;
                    let result = match result {
                        Ok(server) => register_within(&server, &mut self.client, &self.settings).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(session) => return Some(session),
                        Err(StartError::Control(e)) if e.is_final() => {
                            tracing::warn!(error = %e, "punch server refuses us for good");
                            self.status.send_replace(Some(e.to_string()));
                            return None;
                        }
                        Err(e) => {
                            let now = Instant::now();
                            self.client.registration_failed(now);
                            let retry_in = self.client.next_dial().map(|t| t.saturating_duration_since(now));
                            tracing::info!(error = %e, ?retry_in, "reconnection failed");
                        }
                    }
                }
            }
        }
    }
}

/// Awaits the future in `slot` (the caller's `select!` guard makes sure there is one).
async fn poll_some(slot: &mut Option<Dialing>) -> Result<PeerConnection, StartError> {
    match slot {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}
