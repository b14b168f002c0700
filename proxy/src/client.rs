//! The client side of TURN over UDP, as far as tests, benchmarks and tools need it.
//!
//! Steps:
//!
//! 1. [`encode_request`] builds a request with stun-rs; with a [`ClientAuth`] it carries
//!    USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (long-term credentials), and always a
//!    FINGERPRINT.
//! 2. [`Response::parse`] reads an answer: error code, REALM and NONCE of a challenge,
//!    the relayed and mapped addresses, LIFETIME, RESERVATION-TOKEN, and whether its
//!    MESSAGE-INTEGRITY matches the key.
//! 3. [`Session`] does it over a blocking std socket: Allocate with the 401 challenge,
//!    then CreatePermission, ChannelBind and Refresh (a 438 Stale Nonce is retried once
//!    with the new nonce). Every exchange retransmits every 500 ms and gives up after
//!    its timeout.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{
    ErrorCode, MessageIntegrity, Nonce, Realm, UnknownAttributes, UserName, XorMappedAddress,
};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedTrasport, ReservationToken, XorPeerAddress,
    XorRelayedAddress,
};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, DATA, REFRESH, SEND};
use stun_rs::{HMACKey, MessageClass, MessageMethod, StunAttribute, TransactionId};
use thiserror::Error;

use crate::credentials::{CredentialError, Credentials};
use crate::wire;

/// Long-term credentials as a client sends them.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// USERNAME.
    pub username: String,
    /// REALM (from the challenge).
    pub realm: String,
    /// NONCE (from the challenge).
    pub nonce: String,
    /// The key of MESSAGE-INTEGRITY.
    pub key: HMACKey,
}

impl ClientAuth {
    /// Credentials for `realm` with `nonce`.
    pub fn new(creds: &Credentials, realm: &str, nonce: &str) -> Result<Self, CredentialError> {
        Ok(Self {
            username: creds.username.clone(),
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            key: creds.key(realm)?,
        })
    }
}

/// A fresh random transaction id.
pub fn new_txn() -> TransactionId {
    TransactionId::from(rand::random::<[u8; 12]>())
}

/// Encodes a request (or indication, with `class`) with `attrs`, signed with `auth`.
pub fn encode(
    method: MessageMethod,
    class: MessageClass,
    txn: TransactionId,
    mut attrs: Vec<StunAttribute>,
    auth: Option<&ClientAuth>,
) -> Vec<u8> {
    if let Some(auth) = auth {
        if let Ok(u) = UserName::new(&auth.username) {
            attrs.push(u.into());
        }
        if let Ok(r) = Realm::new(&auth.realm) {
            attrs.push(r.into());
        }
        if let Ok(n) = Nonce::new(&auth.nonce) {
            attrs.push(n.into());
        }
    }
    let extra = attrs
        .iter()
        .filter_map(|a| a.as_data().ok())
        .map(|d| d.as_bytes().len())
        .sum();
    wire::encode_stun(method, class, txn, attrs, auth.map(|a| &a.key), true, extra)
        .unwrap_or_default()
}

/// Encodes a request with `attrs`, signed with `auth`.
pub fn encode_request(
    method: MessageMethod,
    txn: TransactionId,
    attrs: Vec<StunAttribute>,
    auth: Option<&ClientAuth>,
) -> Vec<u8> {
    encode(method, MessageClass::Request, txn, attrs, auth)
}

/// The attributes of an Allocate for a UDP relay with an optional LIFETIME.
pub fn allocate_attrs(lifetime: Option<u32>) -> Vec<StunAttribute> {
    let mut attrs: Vec<StunAttribute> =
        vec![RequestedTrasport::new(stun_rs::protocols::UDP).into()];
    if let Some(l) = lifetime {
        attrs.push(LifeTime::new(l).into());
    }
    attrs
}

/// A Binding request.
pub fn binding_request(txn: TransactionId) -> Vec<u8> {
    encode_request(BINDING, txn, Vec::new(), None)
}

/// A Send indication carrying `data` to `peer`.
pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let attrs = vec![XorPeerAddress::from(peer).into(), Data::new(data).into()];
    encode(SEND, MessageClass::Indication, new_txn(), attrs, None)
}

/// The peer and data of a Data indication; `None` if `bytes` is not one.
pub fn parse_data_indication(bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let d = wire::decode_stun(bytes)?;
    if d.msg.method() != DATA || d.msg.class() != MessageClass::Indication {
        return None;
    }
    let peer = *d
        .msg
        .get::<XorPeerAddress>()?
        .as_xor_peer_address()
        .ok()?
        .socket_address();
    let data = d.msg.get::<Data>()?.as_data().ok()?.as_bytes().to_vec();
    Some((peer, data))
}

/// What a client reads from an answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Method.
    pub method: MessageMethod,
    /// Class (success or error response).
    pub class: MessageClass,
    /// Transaction id.
    pub txn: TransactionId,
    /// ERROR-CODE, if an error.
    pub error: Option<u16>,
    /// REALM.
    pub realm: Option<String>,
    /// NONCE.
    pub nonce: Option<String>,
    /// XOR-RELAYED-ADDRESS.
    pub relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// LIFETIME.
    pub lifetime: Option<u32>,
    /// RESERVATION-TOKEN.
    pub reservation_token: Option<Vec<u8>>,
    /// UNKNOWN-ATTRIBUTES.
    pub unknown: Vec<u16>,
    /// Whether it carried MESSAGE-INTEGRITY.
    pub signed: bool,
    /// Whether MESSAGE-INTEGRITY matched the key given to [`Response::parse`].
    pub integrity_ok: bool,
    /// Whether it carried a (valid) FINGERPRINT.
    pub fingerprint: bool,
}

impl Response {
    /// Parses an answer; `key` checks its MESSAGE-INTEGRITY. `None` if not a response.
    pub fn parse(bytes: &[u8], key: Option<&HMACKey>) -> Option<Self> {
        let d = wire::decode_stun(bytes)?;
        let m = &d.msg;
        if !matches!(
            m.class(),
            MessageClass::SuccessResponse | MessageClass::ErrorResponse
        ) {
            return None;
        }
        let get_addr = |a: Option<&StunAttribute>| a.cloned();
        Some(Self {
            method: m.method(),
            class: m.class(),
            txn: *m.transaction_id(),
            error: m
                .get::<ErrorCode>()
                .and_then(|a| a.as_error_code().ok())
                .map(|e| e.error_code().error_code()),
            realm: m
                .get::<Realm>()
                .and_then(|a| a.as_realm().ok())
                .map(|r| r.as_str().to_owned()),
            nonce: m
                .get::<Nonce>()
                .and_then(|a| a.as_nonce().ok())
                .map(|n| n.as_str().to_owned()),
            relayed: get_addr(m.get::<XorRelayedAddress>())
                .and_then(|a| a.as_xor_relayed_address().ok().map(|x| *x.socket_address())),
            mapped: get_addr(m.get::<XorMappedAddress>())
                .and_then(|a| a.as_xor_mapped_address().ok().map(|x| *x.socket_address())),
            lifetime: m
                .get::<LifeTime>()
                .and_then(|a| a.as_life_time().ok())
                .map(|l| l.as_u32()),
            reservation_token: m
                .get::<ReservationToken>()
                .and_then(|a| a.as_reservation_token().ok())
                .map(|t| t.token().to_vec()),
            unknown: m
                .get::<UnknownAttributes>()
                .and_then(|a| a.as_unknown_attributes().ok())
                .map(|u| u.attributes().to_vec())
                .unwrap_or_default(),
            signed: m.get::<MessageIntegrity>().is_some(),
            integrity_ok: key.is_some_and(|k| wire::integrity_ok(bytes, m, k)),
            fingerprint: d.fingerprint,
        })
    }

    /// Whether it is a success response.
    pub fn is_success(&self) -> bool {
        self.class == MessageClass::SuccessResponse
    }
}

/// Why a client exchange failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server refused with this error code.
    #[error("refused with {0}")]
    Refused(u16),
    /// The answer was not what the protocol prescribes (e.g. a 401 without a NONCE).
    #[error("unexpected answer: {0}")]
    Protocol(&'static str),
    /// The credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

/// Sends `bytes` and waits for the response to `txn`, retransmitting every 500 ms.
pub fn transact(
    sock: &UdpSocket,
    server: SocketAddr,
    bytes: &[u8],
    txn: TransactionId,
    key: Option<&HMACKey>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        sock.send_to(bytes, server)?;
        let resend = Instant::now() + Duration::from_millis(500);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(timeout));
            }
            if now >= resend {
                break;
            }
            sock.set_read_timeout(Some(resend.min(deadline) - now))?;
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            if from != server {
                continue;
            }
            if let Some(r) = Response::parse(&buf[..n], key).filter(|r| r.txn == txn) {
                return Ok(r);
            }
        }
    }
}

/// An allocation held over a blocking socket.
#[derive(Debug)]
pub struct Session {
    sock: UdpSocket,
    server: SocketAddr,
    auth: ClientAuth,
    timeout: Duration,
    /// The relayed transport address.
    pub relayed: SocketAddr,
    /// The client's address as the server sees it.
    pub mapped: Option<SocketAddr>,
    /// The lifetime granted.
    pub lifetime: u32,
}

impl Session {
    /// Allocates a UDP relay on `server` (401 challenge, then the signed request).
    pub fn allocate(
        sock: UdpSocket,
        server: SocketAddr,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let txn = new_txn();
        let first = transact(
            &sock,
            server,
            &encode_request(ALLOCATE, txn, allocate_attrs(None), None),
            txn,
            None,
            timeout,
        )?;
        if first.error != Some(401) {
            return Err(first.error.map_or(
                ClientError::Protocol("allocate without credentials succeeded"),
                ClientError::Refused,
            ));
        }
        let (Some(realm), Some(nonce)) = (first.realm, first.nonce) else {
            return Err(ClientError::Protocol("401 without REALM and NONCE"));
        };
        let auth = ClientAuth::new(creds, &realm, &nonce)?;
        let txn = new_txn();
        let bytes = encode_request(ALLOCATE, txn, allocate_attrs(None), Some(&auth));
        let r = transact(&sock, server, &bytes, txn, Some(&auth.key), timeout)?;
        if let Some(code) = r.error {
            return Err(ClientError::Refused(code));
        }
        if !r.integrity_ok {
            return Err(ClientError::Protocol(
                "allocate success without valid MESSAGE-INTEGRITY",
            ));
        }
        let relayed = r
            .relayed
            .ok_or(ClientError::Protocol("no XOR-RELAYED-ADDRESS"))?;
        Ok(Self {
            sock,
            server,
            auth,
            timeout,
            relayed,
            mapped: r.mapped,
            lifetime: r.lifetime.unwrap_or(0),
        })
    }

    /// The socket (for sending ChannelData and receiving relayed data).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends a signed request and returns the success answer; a 438 is retried once
    /// with the new nonce, other errors are [`ClientError::Refused`].
    pub fn request(
        &mut self,
        method: MessageMethod,
        attrs: Vec<StunAttribute>,
    ) -> Result<Response, ClientError> {
        for _ in 0..2 {
            let txn = new_txn();
            let bytes = encode_request(method, txn, attrs.clone(), Some(&self.auth));
            let r = transact(
                &self.sock,
                self.server,
                &bytes,
                txn,
                Some(&self.auth.key),
                self.timeout,
            )?;
            match (r.error, r.nonce.clone()) {
                (None, _) => return Ok(r),
                (Some(438), Some(nonce)) => self.auth.nonce = nonce,
                (Some(code), _) => return Err(ClientError::Refused(code)),
            }
        }
        Err(ClientError::Refused(438))
    }

    /// CreatePermission for `peers`.
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), ClientError> {
        let attrs = peers
            .iter()
            .map(|p| XorPeerAddress::from(*p).into())
            .collect();
        self.request(CREATE_PERMMISSION, attrs).map(|_| ())
    }

    /// ChannelBind `number` to `peer`.
    pub fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), ClientError> {
        let attrs = vec![
            ChannelNumber::new(number).into(),
            XorPeerAddress::from(peer).into(),
        ];
        self.request(CHANNEL_BIND, attrs).map(|_| ())
    }

    /// Frees the allocation (Refresh with lifetime 0), so the client's address can
    /// allocate again; waits at most the session's timeout.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.refresh(0).map(|_| ())
    }

    /// Refresh with `lifetime` (0 frees the allocation); returns the granted lifetime.
    pub fn refresh(&mut self, lifetime: u32) -> Result<u32, ClientError> {
        let r = self.request(REFRESH, vec![LifeTime::new(lifetime).into()])?;
        Ok(r.lifetime.unwrap_or(0))
    }
}
