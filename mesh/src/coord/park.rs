//! The datagrams of a parked peer (RFC 8489 STUN messages, encoded and checked by the
//! workspace's one STUN codec, [`crate::stun`]): how a
//! peer without a control connection keeps its registration alive and how the punch
//! server wakes it.
//!
//! Flow:
//! 1. The server sends [`super::ServerMsg::Park`] with a random 32-byte [`ParkKey`] and
//!    closes the control connection ([`super::CloseCode::Parked`]).
//! 2. Every keep-alive interval the peer sends, from its one socket to the server's port,
//!    a Binding request ([`keepalive_request`]) with USERNAME `park:<peer id>`,
//!    MESSAGE-INTEGRITY (RFC 8489 §14.5, HMAC-SHA1, short-term credential whose password
//!    is the key in hex) and FINGERPRINT. The MAC covers the whole message, the random
//!    transaction id included.
//! 3. The server checks the MAC with the peer's key, takes the request's source as the
//!    peer's new address (NAT rebinding), and answers a Binding success
//!    ([`keepalive_success`]: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY with the same key), or
//!    a 401 ([`unauthorized`]) when it does not know the peer (any more) or the MAC is
//!    wrong: the peer then dials the control connection again.
//! 4. To wake the peer (a connect request for it arrived), the server sends a Binding
//!    indication ([`wake`]) with the same USERNAME and MESSAGE-INTEGRITY to the peer's
//!    latest address; the peer checks the MAC and dials the control connection again.
//!
//! 5. A parked peer that stops sends [`leave`] (a keep-alive whose USERNAME is
//!    `park-leave:<peer id>`): the server forgets it at once, so dials to it fail at once.
//!
//! [`parse`] reads any of these without a key (to learn whose key to check), and
//! [`verify`] checks the MESSAGE-INTEGRITY with one.

use std::fmt;
use std::net::SocketAddr;

use stun_rs::attributes::stun::{ErrorCode, UserName, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{HMACKey, MessageClass, StunAttribute, TransactionId};
use thiserror::Error;

use crate::identity::PeerId;
use crate::stun::{decode_stun, encode_stun, integrity_ok};

/// Prefix of the USERNAME of every park message but the leave; the peer id follows.
pub const PARK_USERNAME_PREFIX: &str = "park:";
/// Prefix of the USERNAME of a parked peer's leave ([`leave`]); the peer id follows.
pub const LEAVE_USERNAME_PREFIX: &str = "park-leave:";

/// Whether a USERNAME marks a parked peer's message to the server (keep-alive or leave).
pub fn is_park_username(username: &str) -> bool {
    username.starts_with(PARK_USERNAME_PREFIX) || username.starts_with(LEAVE_USERNAME_PREFIX)
}

/// Largest park message (they are about 100 bytes).
const MAX_LEN: usize = 256;

/// The per-peer key of a parked registration (32 random bytes from the server).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParkKey(pub [u8; 32]);

impl fmt::Debug for ParkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ParkKey(..)")
    }
}

impl ParkKey {
    /// The STUN short-term credential of this key (password = the key in lowercase hex).
    fn hmac_key(&self) -> Result<HMACKey, ParkCodecError> {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        HMACKey::new_short_term(hex).map_err(|e| ParkCodecError(format!("{e:?}")))
    }
}

/// A park message could not be encoded (never expected: every field is fixed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot encode a park message: {0}")]
pub struct ParkCodecError(String);

/// A park message, read without checking its MESSAGE-INTEGRITY (see [`verify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkMessage {
    /// A parked peer's keep-alive (Binding request).
    Keepalive {
        /// The peer it claims to come from.
        peer: PeerId,
        /// Its transaction id.
        transaction: [u8; 12],
    },
    /// A parked peer that stops (Binding request, `park-leave:` USERNAME): the server
    /// forgets it at once.
    Leave {
        /// The peer it claims to come from.
        peer: PeerId,
        /// Its transaction id.
        transaction: [u8; 12],
    },
    /// The server's wake-up call (Binding indication).
    Wake {
        /// The peer it is for.
        peer: PeerId,
        /// Its transaction id.
        transaction: [u8; 12],
    },
    /// The server's answer to a keep-alive (Binding success).
    Success {
        /// The keep-alive's transaction id.
        transaction: [u8; 12],
        /// The peer's address as the server saw it.
        mapped: Option<SocketAddr>,
    },
    /// The server does not know the peer or the MAC was wrong (Binding error, 401).
    Unauthorized {
        /// The keep-alive's transaction id.
        transaction: [u8; 12],
    },
}

fn username(prefix: &str, peer: &PeerId) -> Result<UserName, ParkCodecError> {
    UserName::new(format!("{prefix}{peer}")).map_err(|e| ParkCodecError(format!("{e:?}")))
}

/// The peer id named by a park USERNAME, if it is one.
pub fn claimed_peer(username: &str) -> Option<PeerId> {
    username.strip_prefix(PARK_USERNAME_PREFIX)?.parse().ok()
}

fn signed(
    class: MessageClass,
    transaction: [u8; 12],
    peer: Option<(&str, &PeerId)>,
    mapped: Option<SocketAddr>,
    key: &ParkKey,
) -> Result<Vec<u8>, ParkCodecError> {
    let mut attrs = Vec::with_capacity(2);
    if let Some((prefix, peer)) = peer {
        attrs.push(StunAttribute::from(username(prefix, peer)?));
    }
    if let Some(mapped) = mapped {
        attrs.push(StunAttribute::from(XorMappedAddress::from(mapped)));
    }
    let key = key.hmac_key()?;
    let txn = TransactionId::from(transaction);
    encode_stun(BINDING, class, txn, attrs, Some(&key), true, 0)
        .ok_or_else(|| ParkCodecError("stun-rs refused the message".into()))
}

/// A parked peer's keep-alive: Binding request, USERNAME, MESSAGE-INTEGRITY, FINGERPRINT.
pub fn keepalive_request(
    peer: &PeerId,
    key: &ParkKey,
    transaction: [u8; 12],
) -> Result<Vec<u8>, ParkCodecError> {
    let peer = Some((PARK_USERNAME_PREFIX, peer));
    signed(MessageClass::Request, transaction, peer, None, key)
}

/// A parked peer's goodbye: a keep-alive with the `park-leave:` USERNAME. The server drops
/// the entry (dials to the peer fail at once) and answers as to a keep-alive.
pub fn leave(
    peer: &PeerId,
    key: &ParkKey,
    transaction: [u8; 12],
) -> Result<Vec<u8>, ParkCodecError> {
    let peer = Some((LEAVE_USERNAME_PREFIX, peer));
    signed(MessageClass::Request, transaction, peer, None, key)
}

/// The server's wake-up call: Binding indication, USERNAME, MESSAGE-INTEGRITY, FINGERPRINT.
pub fn wake(
    peer: &PeerId,
    key: &ParkKey,
    transaction: [u8; 12],
) -> Result<Vec<u8>, ParkCodecError> {
    let peer = Some((PARK_USERNAME_PREFIX, peer));
    signed(MessageClass::Indication, transaction, peer, None, key)
}

/// The server's answer to a good keep-alive: Binding success with XOR-MAPPED-ADDRESS,
/// MESSAGE-INTEGRITY (the peer's key) and FINGERPRINT.
pub fn keepalive_success(
    key: &ParkKey,
    transaction: [u8; 12],
    mapped: SocketAddr,
) -> Result<Vec<u8>, ParkCodecError> {
    signed(
        MessageClass::SuccessResponse,
        transaction,
        None,
        Some(mapped),
        key,
    )
}

/// The server's answer to a keep-alive it cannot accept: Binding error 401 (RFC 8489
/// §9.1.3), with FINGERPRINT and without MESSAGE-INTEGRITY.
pub fn unauthorized(transaction: [u8; 12]) -> Result<Vec<u8>, ParkCodecError> {
    let code = stun_rs::ErrorCode::new(401, "Unauthorized")
        .map_err(|e| ParkCodecError(format!("{e:?}")))?;
    let attrs = vec![StunAttribute::from(ErrorCode::from(code))];
    let txn = TransactionId::from(transaction);
    encode_stun(
        BINDING,
        MessageClass::ErrorResponse,
        txn,
        attrs,
        None,
        true,
        0,
    )
    .ok_or_else(|| ParkCodecError("stun-rs refused the message".into()))
}

/// Reads a park message without checking its MAC; `None` for anything else.
pub fn parse(data: &[u8]) -> Option<ParkMessage> {
    if data.len() > MAX_LEN {
        return None;
    }
    let msg = decode_stun(data)?.msg;
    if msg.method() != BINDING {
        return None;
    }
    let transaction = *msg.transaction_id().as_bytes();
    let name = msg
        .get::<UserName>()
        .and_then(|a| a.as_user_name().ok())
        .map(|u| u.as_str().to_owned());
    let peer = || claimed_peer(name.as_deref()?);
    let leaving = name
        .as_deref()
        .and_then(|n| n.strip_prefix(LEAVE_USERNAME_PREFIX))
        .and_then(|p| p.parse().ok());
    match msg.class() {
        MessageClass::Request => Some(match leaving {
            Some(peer) => ParkMessage::Leave { peer, transaction },
            None => ParkMessage::Keepalive {
                peer: peer()?,
                transaction,
            },
        }),
        MessageClass::Indication => Some(ParkMessage::Wake {
            peer: peer()?,
            transaction,
        }),
        MessageClass::SuccessResponse => Some(ParkMessage::Success {
            transaction,
            mapped: msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address()),
        }),
        MessageClass::ErrorResponse => {
            let code = msg.get::<ErrorCode>()?.as_error_code().ok()?;
            (code.error_code().error_code() == 401)
                .then_some(ParkMessage::Unauthorized { transaction })
        }
    }
}

/// Whether `data` carries a MESSAGE-INTEGRITY that is correct for `key`.
pub fn verify(data: &[u8], key: &ParkKey) -> bool {
    if data.len() > MAX_LEN {
        return false;
    }
    let (Ok(hmac), Some(decoded)) = (key.hmac_key(), decode_stun(data)) else {
        return false;
    };
    integrity_ok(data, &decoded.msg, &hmac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::from_bytes([7; 32])
    }

    #[test]
    fn keepalive_round_trips_and_verifies_only_with_its_key() {
        let key = ParkKey([1; 32]);
        let req = keepalive_request(&peer(), &key, [9; 12]).expect("encode");
        assert_eq!(
            parse(&req),
            Some(ParkMessage::Keepalive {
                peer: peer(),
                transaction: [9; 12]
            })
        );
        assert!(verify(&req, &key));
        assert!(!verify(&req, &ParkKey([2; 32])));
        let mut tampered = req.clone();
        tampered[10] ^= 1; // the transaction id
        assert!(!verify(&tampered, &key));
        let mut fingerprint_broken = req.clone();
        let last = fingerprint_broken.len() - 1;
        fingerprint_broken[last] ^= 1;
        assert_eq!(parse(&fingerprint_broken), None, "FINGERPRINT is checked");
    }

    #[test]
    fn wake_success_and_unauthorized_round_trip() {
        let key = ParkKey([3; 32]);
        let w = wake(&peer(), &key, [4; 12]).expect("encode");
        assert_eq!(
            parse(&w),
            Some(ParkMessage::Wake {
                peer: peer(),
                transaction: [4; 12]
            })
        );
        assert!(verify(&w, &key));
        let mapped: SocketAddr = "198.18.0.7:4000".parse().expect("addr");
        let ok = keepalive_success(&key, [5; 12], mapped).expect("encode");
        assert_eq!(
            parse(&ok),
            Some(ParkMessage::Success {
                transaction: [5; 12],
                mapped: Some(mapped)
            })
        );
        assert!(verify(&ok, &key));
        let no = unauthorized([6; 12]).expect("encode");
        assert_eq!(
            parse(&no),
            Some(ParkMessage::Unauthorized {
                transaction: [6; 12]
            })
        );
        assert!(!verify(&no, &key), "a 401 carries no MAC");
    }

    #[test]
    fn other_stun_is_not_a_park_message() {
        let txn = TransactionId::from([1; 12]);
        let plain = encode_stun(BINDING, MessageClass::Request, txn, vec![], None, false, 0)
            .expect("encode");
        assert_eq!(parse(&plain), None);
        assert_eq!(parse(&[0u8; 3]), None);
        let bye = leave(&peer(), &ParkKey([1; 32]), [2; 12]).expect("encode");
        assert_eq!(
            parse(&bye),
            Some(ParkMessage::Leave {
                peer: peer(),
                transaction: [2; 12]
            })
        );
        assert!(verify(&bye, &ParkKey([1; 32])));
        assert!(is_park_username(&format!("park-leave:{}", peer())));
        assert!(!is_park_username("alice"));
        assert_eq!(claimed_peer("alice:bob"), None);
        assert_eq!(claimed_peer(&format!("park:{}", peer())), Some(peer()));
    }
}
