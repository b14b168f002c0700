//! Cheap structural checks on a STUN message before the codec sees it (RFC 8489 §5, §14.7).
//!
//! `stun-rs` does the real decoding and encoding; this module only rejects what must never
//! reach it and checks what `stun-rs` does not check without credentials. Steps:
//!
//! 1. Length: at least the 20-byte header, at most the configured maximum.
//! 2. Header: the two top bits are zero, the magic cookie is present, the message length is
//!    a multiple of 4 and equals the datagram length minus the header (RFC 8489 §6.3).
//! 3. Attributes: walk the TLVs; every attribute (with its padding to 4 bytes) must fit.
//! 4. FINGERPRINT (RFC 8489 §14.7), if present, must be the last attribute, be 4 bytes long,
//!    and equal CRC-32 of the message before it XOR `0x5354554e`
//!    ([`mesh::stun::fingerprint_value`], the workspace's one STUN stack).
//!
//! Nothing here allocates; the result is the message class and method.

use mesh::stun::{fingerprint_value, MAGIC_COOKIE};
pub use mesh::stun::{ATTR_FINGERPRINT, HEADER_LEN};
use thiserror::Error;

/// The Binding method (RFC 8489 §18.2).
pub const METHOD_BINDING: u16 = 0x001;

/// The class of a STUN message (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request, which gets a response.
    Request,
    /// An indication, which never gets a response.
    Indication,
    /// A success response.
    SuccessResponse,
    /// An error response.
    ErrorResponse,
}

/// What [`precheck`] learned about a structurally valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precheck {
    /// Message class.
    pub class: Class,
    /// Message method (12 bits).
    pub method: u16,
    /// Whether a valid FINGERPRINT ended the message.
    pub has_fingerprint: bool,
}

/// Why a message failed the structural checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Shorter than a STUN header.
    #[error("shorter than a STUN header")]
    TooShort,
    /// Longer than the configured maximum.
    #[error("longer than the configured maximum")]
    TooLong,
    /// The two most significant bits of the message type are not zero.
    #[error("top two header bits are not zero")]
    HeaderBits,
    /// The magic cookie is missing.
    #[error("magic cookie missing")]
    BadCookie,
    /// The message length is not a multiple of 4.
    #[error("message length not a multiple of 4")]
    UnalignedLength,
    /// The message length does not match the datagram length.
    #[error("message length does not match the datagram")]
    LengthMismatch,
    /// An attribute runs past the end of the message.
    #[error("attribute runs past the end of the message")]
    AttributeOverrun,
    /// An attribute follows FINGERPRINT.
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    /// FINGERPRINT has a length other than 4.
    #[error("FINGERPRINT has a bad length")]
    FingerprintLength,
    /// FINGERPRINT does not match the message.
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// Checks the structure of a STUN message; see the module docs for the steps.
pub fn precheck(msg: &[u8], max_len: usize) -> Result<Precheck, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::TooShort);
    }
    if msg.len() > max_len {
        return Err(WireError::TooLong);
    }
    let msg_type = read_u16(msg, 0);
    if msg_type & 0xc000 != 0 {
        return Err(WireError::HeaderBits);
    }
    if msg[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(WireError::BadCookie);
    }
    let body_len = usize::from(read_u16(msg, 2));
    if body_len % 4 != 0 {
        return Err(WireError::UnalignedLength);
    }
    if HEADER_LEN + body_len != msg.len() {
        return Err(WireError::LengthMismatch);
    }
    let has_fingerprint = walk_attributes(msg)?;
    let (class, method) = split_type(msg_type);
    Ok(Precheck {
        class,
        method,
        has_fingerprint,
    })
}

/// Splits a 14-bit message type into class and method (RFC 8489 §5, figure 3).
pub fn split_type(msg_type: u16) -> (Class, u16) {
    let class = match ((msg_type >> 7) & 0x2) | ((msg_type >> 4) & 0x1) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::SuccessResponse,
        _ => Class::ErrorResponse,
    };
    let method = (msg_type & 0x000f) | ((msg_type & 0x00e0) >> 1) | ((msg_type & 0x3e00) >> 2);
    (class, method)
}

/// Walks the attributes; returns whether a valid FINGERPRINT ends the message.
fn walk_attributes(msg: &[u8]) -> Result<bool, WireError> {
    let end = msg.len();
    let mut pos = HEADER_LEN;
    // Each step advances by at least 4 bytes, so this ends after at most len/4 steps.
    while pos < end {
        if pos + 4 > end {
            return Err(WireError::AttributeOverrun);
        }
        let attr_type = read_u16(msg, pos);
        let attr_len = usize::from(read_u16(msg, pos + 2));
        let padded = (attr_len + 3) & !3;
        let next = pos + 4 + padded;
        if next > end {
            return Err(WireError::AttributeOverrun);
        }
        if attr_type == ATTR_FINGERPRINT {
            if attr_len != 4 {
                return Err(WireError::FingerprintLength);
            }
            if next != end {
                return Err(WireError::FingerprintNotLast);
            }
            let expected = fingerprint_value(&msg[..pos]);
            let found =
                u32::from_be_bytes([msg[pos + 4], msg[pos + 5], msg[pos + 6], msg[pos + 7]]);
            return if expected == found {
                Ok(true)
            } else {
                Err(WireError::BadFingerprint)
            };
        }
        pos = next;
    }
    Ok(false)
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Appends a FINGERPRINT attribute to an encoded message and fixes its length field.
///
/// Used by tests and the benchmark to build requests; `msg` must hold a whole message.
pub fn append_fingerprint(msg: &mut Vec<u8>) {
    let body_len = msg.len().saturating_sub(HEADER_LEN) + 8;
    let len_bytes = u16::try_from(body_len).unwrap_or(u16::MAX).to_be_bytes();
    if msg.len() >= 4 {
        msg[2] = len_bytes[0];
        msg[3] = len_bytes[1];
    }
    let crc = fingerprint_value(msg);
    msg.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    msg.extend_from_slice(&4u16.to_be_bytes());
    msg.extend_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request() -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00];
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[1; 12]);
        m
    }

    #[test]
    fn fingerprint_is_the_iso_hdlc_crc32_xored() {
        assert_eq!(fingerprint_value(b"123456789"), 0xcbf4_3926 ^ 0x5354_554e);
    }

    #[test]
    fn minimal_binding_request_passes() {
        let p = precheck(&binding_request(), 548).expect("valid");
        assert_eq!(p.class, Class::Request);
        assert_eq!(p.method, METHOD_BINDING);
        assert!(!p.has_fingerprint);
    }

    #[test]
    fn class_and_method_split() {
        assert_eq!(split_type(0x0001), (Class::Request, 1));
        assert_eq!(split_type(0x0011), (Class::Indication, 1));
        assert_eq!(split_type(0x0101), (Class::SuccessResponse, 1));
        assert_eq!(split_type(0x0111), (Class::ErrorResponse, 1));
        assert_eq!(split_type(0x0003), (Class::Request, 3));
        assert_eq!(split_type(0x3fff), (Class::ErrorResponse, 0xfff));
    }

    #[test]
    fn header_errors() {
        let ok = binding_request();
        assert_eq!(precheck(&ok[..19], 548), Err(WireError::TooShort));
        assert_eq!(precheck(&ok, 19), Err(WireError::TooLong));
        let mut m = ok.clone();
        m[0] = 0xc0;
        assert_eq!(precheck(&m, 548), Err(WireError::HeaderBits));
        let mut m = ok.clone();
        m[5] = 0;
        assert_eq!(precheck(&m, 548), Err(WireError::BadCookie));
        let mut m = ok.clone();
        m[3] = 2;
        m.extend_from_slice(&[0, 0]);
        assert_eq!(precheck(&m, 548), Err(WireError::UnalignedLength));
        let mut m = ok.clone();
        m[3] = 8;
        assert_eq!(precheck(&m, 548), Err(WireError::LengthMismatch));
        let mut m = ok;
        m.extend_from_slice(&[0; 4]);
        assert_eq!(precheck(&m, 548), Err(WireError::LengthMismatch));
    }

    #[test]
    fn attribute_overrun() {
        let mut m = binding_request();
        m[3] = 8;
        // SOFTWARE claiming 9 bytes (12 with padding) in an 8-byte body.
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x09, b'a', b'b', b'c', b'd']);
        assert_eq!(precheck(&m, 548), Err(WireError::AttributeOverrun));
    }

    #[test]
    fn fingerprint_checked() {
        let mut m = binding_request();
        append_fingerprint(&mut m);
        assert!(precheck(&m, 548).expect("valid").has_fingerprint);
        let last = m.len() - 1;
        m[last] ^= 1;
        assert_eq!(precheck(&m, 548), Err(WireError::BadFingerprint));
    }

    #[test]
    fn fingerprint_must_be_last_and_four_bytes() {
        let mut m = binding_request();
        append_fingerprint(&mut m);
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        m[3] += 4;
        assert_eq!(precheck(&m, 548), Err(WireError::FingerprintNotLast));
        let mut m = binding_request();
        m[3] = 12;
        m.extend_from_slice(&[0x80, 0x28, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(precheck(&m, 548), Err(WireError::FingerprintLength));
    }
}
