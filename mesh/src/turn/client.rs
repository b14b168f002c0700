//! A sans-IO TURN client (RFC 8656 over UDP) with long-term credentials (RFC 8489 section
//! 9.2): the one client of the workspace; the relay's tests and benchmark drive it over a
//! blocking socket, `peer doctor` over tokio ([`super::check`]).
//!
//! The client owns no socket and reads no clock. Steps:
//!
//! 1. [`TurnClient::request`] (or [`TurnClient::allocate`], [`TurnClient::refresh`],
//!    [`TurnClient::free`], ...) starts a transaction and returns its [`RequestId`]; the
//!    request goes out unsigned until the server's first 401 gave REALM and NONCE, then
//!    signed with the credentials.
//! 2. The driver sends every [`TurnClient::poll_transmit`] to the server, feeds every
//!    datagram from it to [`TurnClient::handle_input`], and calls
//!    [`TurnClient::handle_timeout`] at [`TurnClient::poll_timeout`].
//! 3. A 401 to an unsigned request is answered by the same request signed (once); a 438
//!    Stale Nonce by the request signed with the new nonce (once). A request is sent again
//!    every `rto` until its `timeout` passes (RFC 8489 section 6.2.1 retransmits over UDP;
//!    a fixed interval keeps the bound simple).
//! 4. Each transaction ends with one [`TurnEvent::Done`] from [`TurnClient::poll_event`]:
//!    the success [`Response`] (whose MESSAGE-INTEGRITY must match once signed), or a
//!    [`TurnError`] (refused with an error code, timed out, or a protocol violation).
//!
//! At most [`MAX_PENDING`] transactions are in flight; events and transmits are bounded by
//! them.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::Nonce;
use stun_rs::attributes::turn::{ChannelNumber, LifeTime, XorPeerAddress};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH};
use stun_rs::{MessageMethod, StunAttribute, TransactionId};
use thiserror::Error;

use super::credentials::{CredentialError, Credentials};
use super::msg::{allocate_attrs, encode_request, new_txn, ClientAuth, Response};

/// Most transactions in flight at once.
pub const MAX_PENDING: usize = 8;

/// Why a TURN exchange failed.
#[derive(Debug, Error)]
pub enum TurnError {
    /// The socket failed (drivers only).
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server refused with this error code (401 Unauthorized, 403 Forbidden, 437
    /// Allocation Mismatch, 438 Stale Nonce, 486 Allocation Quota Reached, ...).
    #[error("refused with {0}")]
    Refused(u16),
    /// The answer was not what the protocol prescribes (e.g. a 401 without a NONCE).
    #[error("unexpected answer: {0}")]
    Protocol(&'static str),
    /// The credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// [`MAX_PENDING`] transactions are already in flight.
    #[error("too many requests in flight")]
    Busy,
}

/// Timing of the client's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnClientConfig {
    /// Interval of retransmissions (default 500 ms, RFC 8489's initial RTO).
    pub rto: Duration,
    /// How long one exchange (one request and its retransmissions) may take (default 5 s).
    pub timeout: Duration,
}

impl Default for TurnClientConfig {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Names one transaction of a [`TurnClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// A datagram to send to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The server.
    pub dst: SocketAddr,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// What the client reports.
#[derive(Debug)]
pub enum TurnEvent {
    /// A transaction ended.
    Done {
        /// Which one.
        id: RequestId,
        /// The success response, or why there is none.
        result: Result<Response, TurnError>,
    },
}

#[derive(Debug)]
struct Transaction {
    id: RequestId,
    method: MessageMethod,
    attrs: Vec<StunAttribute>,
    txn: TransactionId,
    payload: Vec<u8>,
    signed: bool,
    /// Whether a 401 or 438 was already answered (each is answered once).
    reauthed: bool,
    resend_at: Instant,
    deadline: Instant,
}

/// A sans-IO TURN client of one server (see the module docs for how to drive it).
#[derive(Debug)]
pub struct TurnClient {
    server: SocketAddr,
    creds: Credentials,
    config: TurnClientConfig,
    auth: Option<ClientAuth>,
    next_id: u64,
    pending: Vec<Transaction>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TurnEvent>,
}

impl TurnClient {
    /// A client of `server` with `creds` (e.g. [`super::RelayCredential::credentials`]).
    pub fn new(server: SocketAddr, creds: Credentials, config: TurnClientConfig) -> Self {
        Self {
            server,
            creds,
            config,
            auth: None,
            next_id: 1,
            pending: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The long-term credentials in use, once the server's challenge gave realm and nonce.
    pub fn auth(&self) -> Option<&ClientAuth> {
        self.auth.as_ref()
    }

    /// Starts a request of `method` with `attrs` (credentials are added as needed).
    pub fn request(
        &mut self,
        now: Instant,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> Result<RequestId, TurnError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(TurnError::Busy);
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let mut t = Transaction {
            id,
            method,
            attrs,
            txn: new_txn(),
            payload: Vec::new(),
            signed: false,
            reauthed: false,
            resend_at: now,
            deadline: now,
        };
        self.send(now, &mut t);
        self.pending.push(t);
        Ok(id)
    }

    /// Allocate a UDP relay, with an optional LIFETIME in seconds.
    pub fn allocate(
        &mut self,
        now: Instant,
        lifetime: Option<u32>,
    ) -> Result<RequestId, TurnError> {
        self.request(now, ALLOCATE, allocate_attrs(lifetime))
    }

    /// Refresh the allocation with `lifetime` seconds (0 frees it).
    pub fn refresh(&mut self, now: Instant, lifetime: u32) -> Result<RequestId, TurnError> {
        self.request(now, REFRESH, vec![LifeTime::new(lifetime).into()])
    }

    /// Free the allocation (Refresh with lifetime 0).
    pub fn free(&mut self, now: Instant) -> Result<RequestId, TurnError> {
        self.refresh(now, 0)
    }

    /// CreatePermission for `peers`.
    pub fn create_permission(
        &mut self,
        now: Instant,
        peers: &[SocketAddr],
    ) -> Result<RequestId, TurnError> {
        let attrs = peers
            .iter()
            .map(|p| XorPeerAddress::from(*p).into())
            .collect();
        self.request(now, CREATE_PERMMISSION, attrs)
    }

    /// ChannelBind `number` to `peer`.
    pub fn channel_bind(
        &mut self,
        now: Instant,
        number: u16,
        peer: SocketAddr,
    ) -> Result<RequestId, TurnError> {
        let attrs = vec![
            ChannelNumber::new(number).into(),
            XorPeerAddress::from(peer).into(),
        ];
        self.request(now, CHANNEL_BIND, attrs)
    }

    /// (Re)encodes `t` with a fresh transaction id, signed if credentials are known, and
    /// queues it; its retransmission and timeout clocks start over.
    fn send(&mut self, now: Instant, t: &mut Transaction) {
        t.txn = new_txn();
        t.signed = self.auth.is_some();
        t.payload = encode_request(t.method, t.txn, t.attrs.clone(), self.auth.as_ref());
        t.resend_at = now + self.config.rto;
        t.deadline = now + self.config.timeout;
        self.transmits.push_back(Transmit {
            dst: self.server,
            payload: t.payload.clone(),
        });
    }

    /// A datagram from `from`. Returns whether it was the answer to one of our requests
    /// (anything else, e.g. ChannelData or a Data indication, is the driver's).
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        if from != self.server {
            return false;
        }
        let key = self.auth.as_ref().map(|a| &a.key);
        let Some(r) = Response::parse(bytes, key) else {
            return false;
        };
        let Some(pos) = self.pending.iter().position(|t| t.txn == r.txn) else {
            return false;
        };
        let t = self.pending.swap_remove(pos);
        let result = match (r.error, t.signed) {
            (None, true) if !r.integrity_ok => Err(TurnError::Protocol(
                "success response without valid MESSAGE-INTEGRITY",
            )),
            (None, _) => Ok(r),
            (Some(401), false) if !t.reauthed => match (r.realm.as_deref(), r.nonce.as_deref()) {
                (Some(realm), Some(nonce)) => match ClientAuth::new(&self.creds, realm, nonce) {
                    Ok(auth) => {
                        self.auth = Some(auth);
                        return self.resend(now, t);
                    }
                    Err(e) => Err(e.into()),
                },
                _ => Err(TurnError::Protocol("401 without REALM and NONCE")),
            },
            (Some(438), true) if !t.reauthed => match (r.nonce, self.auth.as_mut()) {
                (Some(nonce), Some(auth)) if Nonce::new(&nonce).is_ok() => {
                    auth.nonce = nonce;
                    return self.resend(now, t);
                }
                _ => Err(TurnError::Protocol("438 without a usable NONCE")),
            },
            (Some(code), _) => Err(TurnError::Refused(code)),
        };
        self.events.push_back(TurnEvent::Done { id: t.id, result });
        true
    }

    fn resend(&mut self, now: Instant, mut t: Transaction) -> bool {
        t.reauthed = true;
        self.send(now, &mut t);
        self.pending.push(t);
        true
    }

    /// Retransmits what is due and fails what timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        let mut i = 0;
        while let Some(t) = self.pending.get_mut(i) {
            if t.deadline <= now {
                let t = self.pending.swap_remove(i);
                self.events.push_back(TurnEvent::Done {
                    id: t.id,
                    result: Err(TurnError::Timeout(timeout)),
                });
                continue;
            }
            if t.resend_at <= now {
                t.resend_at = now + self.config.rto;
                let payload = t.payload.clone();
                self.transmits.push_back(Transmit {
                    dst: self.server,
                    payload,
                });
            }
            i += 1;
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// When [`TurnClient::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|t| t.resend_at.min(t.deadline))
            .min()
    }

    /// Transactions in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
