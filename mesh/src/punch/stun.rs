//! The ICE connectivity-check messages (RFC 8445 section 7) on the wire: STUN Binding
//! requests and success responses (RFC 8489) with the short-term credential mechanism.
//!
//! Encoded and verified by hand because the attribute set is small and fixed:
//!
//! 1. A request carries USERNAME (`"<receiver ufrag>:<sender ufrag>"`), PRIORITY,
//!    ICE-CONTROLLING or ICE-CONTROLLED (with the tie-breaker), optionally USE-CANDIDATE,
//!    then MESSAGE-INTEGRITY (HMAC-SHA1 keyed with the *receiver's* password) and
//!    FINGERPRINT (CRC-32 XOR `0x5354554e`).
//! 2. A success response carries XOR-MAPPED-ADDRESS (the request's source as seen by the
//!    responder), MESSAGE-INTEGRITY keyed with the responder's own password (the same key as
//!    the request), and FINGERPRINT.
//! 3. Parsing checks the header, every attribute bound, FINGERPRINT, and (when a key is
//!    given) MESSAGE-INTEGRITY in constant time. Attributes after MESSAGE-INTEGRITY other
//!    than FINGERPRINT are ignored (RFC 8489 section 14.5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// STUN magic cookie (RFC 8489 section 5).
pub(crate) const MAGIC_COOKIE: u32 = 0x2112_a442;
const HEADER: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
const ATTR_ICE_CONTROLLING: u16 = 0x802a;

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
pub(crate) struct Request<'a> {
    pub username: &'a [u8],
    pub priority: Option<u32>,
    pub role: Option<RoleAttr>,
    pub use_candidate: bool,
}

/// A parsed Binding message: class, transaction id and fields, plus where its
/// MESSAGE-INTEGRITY sits so the caller can verify it once it knows the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub transaction: [u8; 12],
    pub kind: Kind<'a>,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
    data: &'a [u8],
}

/// Request or success response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    Request(Request<'a>),
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

/// Quick header check: STUN first byte 0..=3 (RFC 7983), magic cookie, 4-byte aligned length
/// that matches the datagram.
fn header_ok(data: &[u8]) -> bool {
    data.len() >= HEADER
        && data[0] <= 3
        && data[4..8] == MAGIC_COOKIE.to_be_bytes()
        && usize::from(u16::from_be_bytes([data[2], data[3]])) + HEADER == data.len()
        && data.len() % 4 == 0
}

impl<'a> Parsed<'a> {
    /// Parses a Binding request or success response; anything else is rejected.
    pub(crate) fn parse(data: &'a [u8]) -> Result<Parsed<'a>, Reject> {
        if data.len() < HEADER || data[0] > 3 || data[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(Reject::Foreign);
        }
        let msg_type = u16::from_be_bytes([data[0], data[1]]);
        if msg_type != BINDING_REQUEST && msg_type != BINDING_SUCCESS {
            return Err(Reject::Foreign);
        }
        if !header_ok(data) {
            return Err(Reject::Malformed);
        }
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&data[8..20]);
        let mut request = Request {
            username: &[],
            priority: None,
            role: None,
            use_candidate: false,
        };
        let mut mapped = None;
        let mut integrity_at = None;
        let mut fingerprint_seen = false;
        let mut pos = HEADER;
        while pos < data.len() {
            if fingerprint_seen {
                return Err(Reject::Malformed); // FINGERPRINT must be last
            }
            let header = data.get(pos..pos + 4).ok_or(Reject::Malformed)?;
            let typ = u16::from_be_bytes([header[0], header[1]]);
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let value = data.get(pos + 4..pos + 4 + len).ok_or(Reject::Malformed)?;
            let padded = (len + 3) & !3;
            if pos + 4 + padded > data.len() {
                return Err(Reject::Malformed);
            }
            if typ == ATTR_FINGERPRINT {
                let got = u32::from_be_bytes(value.try_into().map_err(|_| Reject::Malformed)?);
                if got != fingerprint(data, pos) {
                    return Err(Reject::Malformed);
                }
                fingerprint_seen = true;
            } else if integrity_at.is_none() {
                match typ {
                    ATTR_MESSAGE_INTEGRITY => {
                        if len != 20 {
                            return Err(Reject::Malformed);
                        }
                        integrity_at = Some(pos);
                    }
                    ATTR_USERNAME if len <= MAX_USERNAME => request.username = value,
                    ATTR_USERNAME => return Err(Reject::Malformed),
                    ATTR_PRIORITY => {
                        request.priority = Some(u32::from_be_bytes(
                            value.try_into().map_err(|_| Reject::Malformed)?,
                        ))
                    }
                    ATTR_USE_CANDIDATE => request.use_candidate = true,
                    ATTR_ICE_CONTROLLING | ATTR_ICE_CONTROLLED => {
                        let tie =
                            u64::from_be_bytes(value.try_into().map_err(|_| Reject::Malformed)?);
                        request.role = Some(if typ == ATTR_ICE_CONTROLLING {
                            RoleAttr::Controlling(tie)
                        } else {
                            RoleAttr::Controlled(tie)
                        });
                    }
                    ATTR_XOR_MAPPED_ADDRESS => mapped = decode_xor_address(value, &transaction),
                    // Unknown comprehension-optional attributes are ignored; ICE checks never
                    // carry comprehension-required ones we do not know, so ignore those too
                    // (the message still has to authenticate).
                    _ => {}
                }
            }
            pos += 4 + padded;
        }
        if !fingerprint_seen {
            return Err(Reject::Malformed); // ICE requires FINGERPRINT (RFC 8445 section 7.1)
        }
        let kind = if msg_type == BINDING_REQUEST {
            Kind::Request(request)
        } else {
            Kind::Success { mapped }
        };
        Ok(Parsed {
            transaction,
            kind,
            integrity_at,
            data,
        })
    }

    /// Whether MESSAGE-INTEGRITY is present and correct for `key` (constant-time compare).
    pub(crate) fn verify(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Some(expected) = self.data.get(at + 4..at + 24) else {
            return false;
        };
        integrity_mac(key, self.data, at)
            .verify_slice(expected)
            .is_ok()
    }
}

/// HMAC over the message up to `at`, with the header length covering MESSAGE-INTEGRITY.
fn integrity_mac(key: &[u8], data: &[u8], at: usize) -> Hmac<Sha1> {
    // HMAC accepts keys of any length, so `new_from_slice` never fails; the fallback (an
    // all-zero key) only exists to avoid a panic path.
    let mut mac = Hmac::<Sha1>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha1> as Mac>::new(&Default::default()));
    let len = u16::try_from(at + 24 - HEADER).unwrap_or(u16::MAX);
    mac.update(&data[0..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&data[4..at]);
    mac
}

/// CRC-32 of the message up to `at`, with the header length covering FINGERPRINT.
fn fingerprint(data: &[u8], at: usize) -> u32 {
    let len = u16::try_from(at + 8 - HEADER).unwrap_or(u16::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&data[0..2]);
    crc.update(&len.to_be_bytes());
    crc.update(&data[4..at]);
    crc.finalize() ^ FINGERPRINT_XOR
}

fn decode_xor_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (value[1], value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                let mask = if i < 4 { cookie[i] } else { transaction[i - 4] };
                *b = value[4 + i] ^ mask;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Builds one message attribute by attribute, then seals it with MESSAGE-INTEGRITY and
/// FINGERPRINT.
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn new(msg_type: u16, transaction: &[u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(transaction);
        Builder { buf }
    }

    fn attr(&mut self, typ: u16, value: &[u8]) {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn set_len(&mut self, extra: usize) {
        let len = u16::try_from(self.buf.len() + extra - HEADER).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    fn seal(mut self, key: &[u8]) -> Vec<u8> {
        let at = self.buf.len();
        let mac = integrity_mac(key, &self.buf, at).finalize().into_bytes();
        self.attr(ATTR_MESSAGE_INTEGRITY, &mac);
        let at = self.buf.len();
        let crc = fingerprint(&self.buf, at);
        self.attr(ATTR_FINGERPRINT, &crc.to_be_bytes());
        self.set_len(0);
        self.buf
    }
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
    let mut b = Builder::new(BINDING_REQUEST, transaction);
    b.attr(ATTR_USERNAME, username.as_bytes());
    b.attr(ATTR_PRIORITY, &priority.to_be_bytes());
    match role {
        RoleAttr::Controlling(tie) => b.attr(ATTR_ICE_CONTROLLING, &tie.to_be_bytes()),
        RoleAttr::Controlled(tie) => b.attr(ATTR_ICE_CONTROLLED, &tie.to_be_bytes()),
    }
    if use_candidate {
        b.attr(ATTR_USE_CANDIDATE, &[]);
    }
    b.seal(key)
}

/// Encodes a Binding success response telling the requester its address as `mapped`.
pub(crate) fn encode_success(transaction: &[u8; 12], mapped: SocketAddr, key: &[u8]) -> Vec<u8> {
    let mut b = Builder::new(BINDING_SUCCESS, transaction);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = mapped.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = Vec::with_capacity(20);
    match mapped.ip() {
        IpAddr::V4(ip) => {
            value.extend_from_slice(&[0, 0x01]);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend(ip.octets().iter().zip(cookie).map(|(a, m)| a ^ m));
        }
        IpAddr::V6(ip) => {
            value.extend_from_slice(&[0, 0x02]);
            value.extend_from_slice(&port.to_be_bytes());
            let mask = cookie.iter().chain(transaction.iter());
            value.extend(ip.octets().iter().zip(mask).map(|(a, m)| a ^ m));
        }
    }
    b.attr(ATTR_XOR_MAPPED_ADDRESS, &value);
    b.seal(key)
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
            Parsed::parse(&tampered),
            Err(Reject::Malformed),
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
                username: b"bob:alice",
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
            Parsed::parse(b"\x40hello world, this is not stun!!"),
            Err(Reject::Foreign)
        );
        assert_eq!(Parsed::parse(&msg[..msg.len() - 4]), Err(Reject::Malformed));
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
