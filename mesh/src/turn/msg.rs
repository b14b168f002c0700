//! TURN client messages (RFC 8656 over UDP, RFC 8489 long-term credentials), built and
//! read with stun-rs; the state machine that sends them is [`super::client`].
//!
//! Steps:
//!
//! 1. [`encode_request`] builds a request with stun-rs; with a [`ClientAuth`] it carries
//!    USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (long-term credentials), and always a
//!    FINGERPRINT.
//! 2. [`Response::parse`] reads an answer: error code, REALM and NONCE of a challenge,
//!    the relayed and mapped addresses, LIFETIME, RESERVATION-TOKEN, and whether its
//!    MESSAGE-INTEGRITY matches the key.
//! 3. Indications: [`send_indication`] and [`parse_data_indication`].

use std::net::SocketAddr;

use super::credentials::{CredentialError, Credentials};
use super::wire;
use stun_rs::attributes::stun::{
    ErrorCode, MessageIntegrity, Nonce, Realm, UnknownAttributes, UserName, XorMappedAddress,
};
use stun_rs::attributes::turn::{
    Data, LifeTime, RequestedTrasport, ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use stun_rs::methods::{BINDING, DATA, SEND};
use stun_rs::{HMACKey, MessageClass, MessageMethod, StunAttribute, TransactionId};

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

/// A Binding indication (RFC 8489 section 6.3: no answer; used to open a NAT mapping).
pub fn binding_indication() -> Vec<u8> {
    encode(
        BINDING,
        MessageClass::Indication,
        new_txn(),
        Vec::new(),
        None,
    )
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
