//! The ICE connectivity-check messages (RFC 8445 section 7) on the wire: STUN Binding
//! requests and success responses (RFC 8489) with the short-term credential mechanism,
//! encoded and decoded by the workspace's one STUN codec ([`crate::stun::codec`], stun-rs).
//!
//! 1. A request carries USERNAME (`"<receiver ufrag>:<sender ufrag>"`), PRIORITY,
//!    ICE-CONTROLLING or ICE-CONTROLLED (with the tie-breaker), optionally USE-CANDIDATE,
//!    then MESSAGE-INTEGRITY (HMAC-SHA1 keyed with the *receiver's* password) and
//!    FINGERPRINT.
//! 2. A success response carries XOR-MAPPED-ADDRESS (the request's source as seen by the
//!    responder), MESSAGE-INTEGRITY keyed with the responder's own password (the same key as
//!    the request), and FINGERPRINT.
//! 3. Parsing rejects foreign datagrams on the header alone (first byte, magic cookie,
//!    method), then decodes and requires a correct FINGERPRINT; MESSAGE-INTEGRITY is verified once the
//!    caller knows the key ([`Parsed::verify`]). Attributes after MESSAGE-INTEGRITY other
//!    than FINGERPRINT are ignored (RFC 8489 section 14.5, done by stun-rs).

use std::net::SocketAddr;

use stun_rs::attributes::ice::{IceControlled, IceControlling, Priority, UseCandidate};
use stun_rs::attributes::stun::{UserName, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{HMACKey, MessageClass, StunAttribute, StunMessage, TransactionId};

use crate::stun::{decode_stun, encode_stun, integrity_ok, looks_like_stun};

/// Binding request and success response message types (RFC 8489 section 5).
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;

/// Longest USERNAME accepted (RFC 8489 section 14.3: under 509 bytes).
const MAX_USERNAME: usize = 508;

/// Which role attribute a request carries, with its tie-breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleAttr {
    Controlling(u64),
    Controlled(u64),
}

/// The fields of a connectivity check the prober needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub username: String,
    pub priority: Option<u32>,
    pub role: Option<RoleAttr>,
    pub use_candidate: bool,
}

/// A parsed Binding message: class, transaction id and fields, plus what is needed to verify
/// its MESSAGE-INTEGRITY once the caller knows the key.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub transaction: [u8; 12],
    pub kind: Kind,
    msg: StunMessage,
    data: &'a [u8],
}

/// Request or success response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Request(Request),
    Success { mapped: Option<SocketAddr> },
}

/// Why a datagram was not accepted as a check message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not a STUN Binding request / success response at all (first byte, cookie, method).
    Foreign,
    /// Looked like STUN but is malformed (lengths, attributes, FINGERPRINT).
    Malformed,
}

/// The short-term key of a password; `None` if the password is not a valid OpaqueString
/// (RFC 8265; the coordinator's passwords always are).
fn short_term_key(password: &[u8]) -> Option<HMACKey> {
    let password = std::str::from_utf8(password).ok()?;
    HMACKey::new_short_term(password).ok()
}

impl<'a> Parsed<'a> {
    /// Parses a Binding request or success response; anything else is rejected.
    pub(crate) fn parse(data: &'a [u8]) -> Result<Parsed<'a>, Reject> {
        if !looks_like_stun(data) {
            return Err(Reject::Foreign);
        }
        let msg_type = u16::from_be_bytes([data[0], data[1]]);
        if msg_type != BINDING_REQUEST && msg_type != BINDING_SUCCESS {
            return Err(Reject::Foreign);
        }
        let decoded = decode_stun(data).ok_or(Reject::Malformed)?;
        // Connectivity checks always carry FINGERPRINT (RFC 8445 section 7.3 requires it).
        if !decoded.fingerprint {
            return Err(Reject::Malformed);
        }
        let msg = decoded.msg;
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(msg.transaction_id().as_bytes());
        let kind = if msg.class() == MessageClass::Request {
            let username = match msg.get::<UserName>() {
                Some(attr) => attr
                    .as_user_name()
                    .map_err(|_| Reject::Malformed)?
                    .as_str()
                    .to_string(),
                None => String::new(),
            };
            if username.len() > MAX_USERNAME {
                return Err(Reject::Malformed);
            }
            let priority = msg
                .get::<Priority>()
                .and_then(|a| a.as_priority().ok())
                .map(|p| p.as_u32());
            let controlling = msg
                .get::<IceControlling>()
                .and_then(|a| a.as_ice_controlling().ok())
                .map(|t| RoleAttr::Controlling(t.as_u64()));
            let controlled = msg
                .get::<IceControlled>()
                .and_then(|a| a.as_ice_controlled().ok())
                .map(|t| RoleAttr::Controlled(t.as_u64()));
            Kind::Request(Request {
                username,
                priority,
                role: controlling.or(controlled),
                use_candidate: msg.get::<UseCandidate>().is_some(),
            })
        } else {
            let mapped = msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address());
            Kind::Success { mapped }
        };
        Ok(Parsed {
            transaction,
            kind,
            msg,
            data,
        })
    }

    /// Whether MESSAGE-INTEGRITY is present and correct for the password `key`.
    pub(crate) fn verify(&self, key: &[u8]) -> bool {
        short_term_key(key).is_some_and(|key| integrity_ok(self.data, &self.msg, &key))
    }
}

/// Encodes a Binding message of `class` with `attrs`, MESSAGE-INTEGRITY keyed with the
/// password `key`, and FINGERPRINT; empty if the key or an attribute cannot be encoded.
fn seal(
    class: MessageClass,
    transaction: &[u8; 12],
    attrs: Vec<StunAttribute>,
    key: &[u8],
) -> Vec<u8> {
    let Some(key) = short_term_key(key) else {
        return Vec::new();
    };
    let txn = TransactionId::from(*transaction);
    encode_stun(BINDING, class, txn, attrs, Some(&key), true, 0).unwrap_or_default()
}

/// Encodes a connectivity check (Binding request).
pub(crate) fn encode_request(
    transaction: &[u8; 12],
    username: &str,
    key: &[u8],
    priority: u32,
    role: RoleAttr,
    use_candidate: bool,
) -> Vec<u8> {
    let Ok(user) = UserName::new(username) else {
        return Vec::new();
    };
    let mut attrs: Vec<StunAttribute> = vec![user.into(), Priority::new(priority).into()];
    attrs.push(match role {
        RoleAttr::Controlling(tie) => IceControlling::new(tie).into(),
        RoleAttr::Controlled(tie) => IceControlled::new(tie).into(),
    });
    if use_candidate {
        attrs.push(UseCandidate::default().into());
    }
    seal(MessageClass::Request, transaction, attrs, key)
}

/// Encodes a Binding success response telling the requester its address as `mapped`.
pub(crate) fn encode_success(transaction: &[u8; 12], mapped: SocketAddr, key: &[u8]) -> Vec<u8> {
    let attrs = vec![XorMappedAddress::from(mapped).into()];
    seal(MessageClass::SuccessResponse, transaction, attrs, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 section 2.2: sample IPv4 response, password "VOkJxbRl1RmTxUk/WvJxBt".
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    #[test]
    fn verifies_the_rfc5769_sample_response() {
        let parsed = Parsed::parse(&RFC5769_IPV4_RESPONSE).expect("parse");
        let mapped: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
        assert_eq!(
            parsed.kind,
            Kind::Success {
                mapped: Some(mapped)
            }
        );
        assert!(parsed.verify(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!parsed.verify(b"VOkJxbRl1RmTxUk/WvJxBT"));
        let mut tampered = RFC5769_IPV4_RESPONSE;
        tampered[45] ^= 1;
        assert_eq!(
            Parsed::parse(&tampered).err(),
            Some(Reject::Malformed),
            "FINGERPRINT catches it"
        );
    }

    #[test]
    fn request_round_trip_and_tamper_detection() {
        let tid = [9u8; 12];
        let msg = encode_request(
            &tid,
            "bob:alice",
            b"secret",
            0x6e00_01ff,
            RoleAttr::Controlling(42),
            true,
        );
        let parsed = Parsed::parse(&msg).expect("parse");
        assert_eq!(parsed.transaction, tid);
        assert_eq!(
            parsed.kind,
            Kind::Request(Request {
                username: "bob:alice".into(),
                priority: Some(0x6e00_01ff),
                role: Some(RoleAttr::Controlling(42)),
                use_candidate: true,
            })
        );
        assert!(parsed.verify(b"secret"));
        assert!(!parsed.verify(b"Secret"));
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x10;
            if let Ok(p) = Parsed::parse(&bad) {
                assert!(!p.verify(b"secret"), "flipped byte {i} still verified");
            }
        }
        assert_eq!(
            Parsed::parse(b"\x40hello world, this is not stun!!").err(),
            Some(Reject::Foreign)
        );
        assert_eq!(
            Parsed::parse(&msg[..msg.len() - 4]).err(),
            Some(Reject::Malformed)
        );
    }

    #[test]
    fn success_round_trip_v4_and_v6() {
        for mapped in ["198.18.0.7:40001", "[2001:db8::7]:40001"] {
            let mapped: SocketAddr = mapped.parse().expect("addr");
            let tid = [3u8; 12];
            let msg = encode_success(&tid, mapped, b"pw");
            let parsed = Parsed::parse(&msg).expect("parse");
            assert_eq!(
                parsed.kind,
                Kind::Success {
                    mapped: Some(mapped)
                }
            );
            assert!(parsed.verify(b"pw"));
        }
    }
}
