//! Building and encoding Binding responses with `stun-rs` (RFC 8489 §7.3, RFC 5780 §6).
//!
//! Steps:
//!
//! 1. The core decides the response: a success response with XOR-MAPPED-ADDRESS (plus, in
//!    RFC 5780 mode, MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS), or a 420 error
//!    response listing the unknown comprehension-required attributes.
//! 2. [`Response::wire_len`] computes the encoded size up front, so the amplification limit
//!    is applied before any encoding work: optional RFC 5780 attributes are shed first, and
//!    a response that still does not fit is not sent.
//! 3. [`Response::encode`] builds the `stun-rs` message and encodes it into the core's
//!    reused buffer; FINGERPRINT is added when the request carried one.

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{OtherAddress, ResponseOrigin};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MappedAddress, UnknownAttributes, XorMappedAddress,
};
use stun_rs::methods::BINDING;
use stun_rs::{
    ErrorCode as ErrorCodeType, MessageClass, MessageEncoder, StunMessageBuilder, TransactionId,
};

use crate::wire::HEADER_LEN;

/// Most unknown attributes listed in one 420 response (keeps the response small).
pub const MAX_UNKNOWN_LISTED: usize = 8;
/// Reason phrase of the 420 response.
const UNKNOWN_REASON: &str = "Unknown Attribute";

/// Bytes of an address attribute (header + family/port + address).
fn addr_attr_len(addr: &SocketAddr) -> usize {
    4 + if addr.is_ipv4() { 8 } else { 20 }
}

fn padded(n: usize) -> usize {
    (n + 3) & !3
}

/// A response the core has decided to send.
#[derive(Debug, Clone)]
pub enum Response {
    /// Binding success response.
    Success {
        /// The request's source, reported in XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS).
        mapped: SocketAddr,
        /// RFC 5780 extras: (RESPONSE-ORIGIN, OTHER-ADDRESS); also adds MAPPED-ADDRESS.
        discovery: Option<(SocketAddr, SocketAddr)>,
    },
    /// 420 Unknown Attribute error response.
    UnknownAttributes {
        /// The attribute types to list, without duplicates (`stun-rs` drops duplicates,
        /// which would make [`Response::wire_len`] overestimate).
        types: [u16; MAX_UNKNOWN_LISTED],
        /// How many entries of `types` are used.
        count: usize,
    },
}

impl Response {
    /// Encoded length in bytes, FINGERPRINT included when `fingerprint` is set.
    pub fn wire_len(&self, fingerprint: bool) -> usize {
        let body = match self {
            Response::Success { mapped, discovery } => {
                let mut n = addr_attr_len(mapped);
                if let Some((origin, other)) = discovery {
                    n += addr_attr_len(mapped) + addr_attr_len(origin) + addr_attr_len(other);
                }
                n
            }
            Response::UnknownAttributes { count, .. } => {
                let listed = (*count).min(MAX_UNKNOWN_LISTED);
                4 + 4 + padded(UNKNOWN_REASON.len()) + 4 + padded(2 * listed)
            }
        };
        HEADER_LEN + body + if fingerprint { 8 } else { 0 }
    }

    /// Drops the optional RFC 5780 attributes; returns whether anything was removed.
    pub fn shed_optional(&mut self) -> bool {
        match self {
            Response::Success { discovery, .. } => discovery.take().is_some(),
            Response::UnknownAttributes { .. } => false,
        }
    }

    /// Encodes the response to `transaction_id` into `buf`; returns the length written.
    pub fn encode(
        &self,
        encoder: &MessageEncoder,
        transaction_id: TransactionId,
        fingerprint: bool,
        buf: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let builder = match self {
            Response::Success { mapped, discovery } => {
                let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                    .with_transaction_id(transaction_id)
                    .with_attribute(XorMappedAddress::from(*mapped));
                if let Some((origin, other)) = discovery {
                    b = b
                        .with_attribute(MappedAddress::from(*mapped))
                        .with_attribute(ResponseOrigin::from(*origin))
                        .with_attribute(OtherAddress::from(*other));
                }
                b
            }
            Response::UnknownAttributes { types, count } => {
                let code = ErrorCodeType::new(420, UNKNOWN_REASON).map_err(|_| EncodeError)?;
                let mut unknown = UnknownAttributes::default();
                for t in types.iter().take((*count).min(MAX_UNKNOWN_LISTED)) {
                    unknown.add(*t);
                }
                StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
                    .with_transaction_id(transaction_id)
                    .with_attribute(ErrorCode::new(code))
                    .with_attribute(unknown)
            }
        };
        let builder = if fingerprint {
            builder.with_attribute(Fingerprint::default())
        } else {
            builder
        };
        encoder
            .encode(buf, &builder.build())
            .map_err(|_| EncodeError)
    }
}

/// `stun-rs` refused to encode a response (a bug, counted and dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("could not encode the STUN response")]
pub struct EncodeError;

#[cfg(test)]
mod tests {
    use super::*;
    use stun_rs::MessageEncoderBuilder;

    fn encode(r: &Response, fp: bool) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let enc = MessageEncoderBuilder::default().build();
        let n = r
            .encode(&enc, TransactionId::from([3u8; 12]), fp, &mut buf)
            .expect("encodes");
        buf[..n].to_vec()
    }

    #[test]
    fn wire_len_matches_encoding() {
        let v4: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().expect("addr");
        let mut cases = vec![];
        for mapped in [v4, v6] {
            cases.push(Response::Success {
                mapped,
                discovery: None,
            });
            cases.push(Response::Success {
                mapped,
                discovery: Some((mapped, mapped)),
            });
        }
        for count in [1, 2, 3, 8, 20] {
            cases.push(Response::UnknownAttributes {
                types: [
                    0x7001, 0x7002, 0x7003, 0x7004, 0x7005, 0x7006, 0x7007, 0x7008,
                ],
                count,
            });
        }
        for r in &cases {
            for fp in [false, true] {
                assert_eq!(encode(r, fp).len(), r.wire_len(fp), "{r:?} fp={fp}");
            }
        }
    }

    #[test]
    fn shedding_removes_discovery_only() {
        let a: SocketAddr = "192.0.2.1:1".parse().expect("addr");
        let mut r = Response::Success {
            mapped: a,
            discovery: Some((a, a)),
        };
        assert!(r.shed_optional());
        assert!(!r.shed_optional());
        assert_eq!(r.wire_len(false), 32);
    }
}
