//! The workspace's one STUN codec glue over stun-rs (RFC 8489): decode a datagram that must
//! be exactly one STUN message with a correct FINGERPRINT, check MESSAGE-INTEGRITY once the
//! caller knows the key, and encode messages with MESSAGE-INTEGRITY and FINGERPRINT.
//!
//! Steps:
//! 1. [`decode_stun`]: stun-rs decodes; the message must fill the datagram, and a
//!    FINGERPRINT, if present, must match (stun-rs computes the CRC-32).
//! 2. [`integrity_ok`]: MESSAGE-INTEGRITY (HMAC-SHA1) against a short-term or long-term
//!    key (stun-rs computes the HMAC over the message up to the attribute).
//! 3. [`encode_stun`]: attributes, then MESSAGE-INTEGRITY and FINGERPRINT when asked.
//!
//! Connectivity checks (`punch`), the TURN client and server (`turn`, `proxy`) use it; no
//! HMAC, CRC or FINGERPRINT is written by hand anywhere else.

use stun_rs::attributes::stun::{Fingerprint, MessageIntegrity};
use stun_rs::{
    HMACKey, MessageClass, MessageDecoder, MessageEncoder, MessageMethod, StunAttribute,
    StunMessage, StunMessageBuilder, TransactionId,
};

/// The STUN magic cookie (RFC 8489 section 5).
pub const MAGIC_COOKIE: u32 = 0x2112_a442;

/// Length of a STUN message header (RFC 8489 section 5).
pub const HEADER_LEN: usize = 20;

/// The FINGERPRINT attribute type (RFC 8489 section 14.7).
pub const ATTR_FINGERPRINT: u16 = 0x8028;

/// Value XORed into the CRC-32 to form FINGERPRINT (RFC 8489 section 14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// The FINGERPRINT value of a message whose bytes before the attribute are `before`
/// (their length field already counting the FINGERPRINT): CRC-32 (ISO-HDLC, by
/// `crc32fast`) XOR `0x5354554e`. For allocation-free checks before decoding; encoding
/// goes through [`encode_stun`].
pub fn fingerprint_value(before: &[u8]) -> u32 {
    crc32fast::hash(before) ^ FINGERPRINT_XOR
}

/// Whether `datagram` starts like a STUN message: at least a header, first byte 0-3 (RFC
/// 7983), and the magic cookie. Cheap, for rejecting foreign datagrams before decoding.
pub fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] <= 3 && datagram[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// A decoded STUN message and whether it carried a (valid) FINGERPRINT.
#[derive(Debug)]
pub struct Decoded {
    /// The message.
    pub msg: StunMessage,
    /// Whether it had a FINGERPRINT (answers then carry one too).
    pub fingerprint: bool,
}

/// Decodes a STUN message that fills `datagram`; `None` if it does not decode, has
/// trailing bytes, or has a FINGERPRINT that does not match.
pub fn decode_stun(datagram: &[u8]) -> Option<Decoded> {
    let (msg, size) = MessageDecoder::default().decode(datagram).ok()?;
    if size != datagram.len() {
        return None;
    }
    let fingerprint = match msg.get::<Fingerprint>() {
        None => false,
        Some(attr) => {
            let fp = attr.as_fingerprint().ok()?;
            let input = stun_rs::get_input_text::<Fingerprint>(datagram)?;
            if !fp.validate(&input) {
                return None;
            }
            true
        }
    };
    Some(Decoded { msg, fingerprint })
}

/// Whether `msg` (decoded from `datagram`) carries a MESSAGE-INTEGRITY that matches `key`.
pub fn integrity_ok(datagram: &[u8], msg: &StunMessage, key: &HMACKey) -> bool {
    let Some(attr) = msg.get::<MessageIntegrity>() else {
        return false;
    };
    let Ok(mi) = attr.as_message_integrity() else {
        return false;
    };
    match stun_rs::get_input_text::<MessageIntegrity>(datagram) {
        Some(input) => mi.validate(&input, key),
        None => false,
    }
}

/// Encodes a message with `attrs`, then MESSAGE-INTEGRITY with `key` and FINGERPRINT if
/// asked; `extra` is room for large attributes (DATA). `None` if stun-rs refuses it.
pub fn encode_stun(
    method: MessageMethod,
    class: MessageClass,
    txn: TransactionId,
    attrs: Vec<StunAttribute>,
    key: Option<&HMACKey>,
    fingerprint: bool,
    extra: usize,
) -> Option<Vec<u8>> {
    let mut builder = StunMessageBuilder::new(method, class).with_transaction_id(txn);
    for attr in attrs {
        builder = builder.with_attribute(attr);
    }
    if let Some(key) = key {
        builder = builder.with_attribute(MessageIntegrity::new(key.clone()));
    }
    if fingerprint {
        builder = builder.with_attribute(Fingerprint::default());
    }
    let msg = builder.build();
    let mut buf = vec![0u8; 1024 + extra];
    let n = MessageEncoder::default().encode(&mut buf, &msg).ok()?;
    buf.truncate(n);
    Some(buf)
}
