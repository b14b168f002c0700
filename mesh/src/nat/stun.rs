//! The STUN messages behaviour discovery needs, on top of the `stun-rs` codec (RFC 8489
//! messages, RFC 5780 attributes).
//!
//! 1. Requests: a Binding request with our transaction id and, for the filtering tests, a
//!    CHANGE-REQUEST attribute (change IP and/or port).
//! 2. Responses: the 20-byte header is checked first (STUN first byte 0..=3, magic cookie),
//!    so foreign datagrams cost nothing; then the message is decoded and reduced to the
//!    fields the tests use: XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS), OTHER-ADDRESS,
//!    RESPONSE-ORIGIN, or an ERROR-CODE.

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::{ErrorCode, MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};

use super::NatError;
use crate::stun::looks_like_stun;

/// Which CHANGE-REQUEST flags a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub ip: bool,
    pub port: bool,
}

impl Change {
    pub const NONE: Change = Change {
        ip: false,
        port: false,
    };
}

/// A decoded Binding response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    Success {
        mapped: Option<SocketAddr>,
        other: Option<SocketAddr>,
    },
    Error {
        code: u16,
        reason: String,
    },
}

/// The transaction id of a datagram that looks like a STUN response, else `None`.
pub(crate) fn response_transaction_id(data: &[u8]) -> Option<[u8; 12]> {
    if !looks_like_stun(data) {
        return None;
    }
    // Class bit C1 (0x0100 of the message type) is set for success and error responses.
    if data[0] & 0x01 == 0 {
        return None;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&data[8..20]);
    Some(id)
}

/// Encodes a Binding request.
pub(crate) fn binding_request(id: [u8; 12], change: Change) -> Result<Vec<u8>, NatError> {
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(id));
    if change != Change::NONE {
        let flags = match (change.ip, change.port) {
            (true, true) => ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            (true, false) => ChangeRequestFlags::ChangeIp.into(),
            _ => ChangeRequestFlags::ChangePort.into(),
        };
        builder = builder.with_attribute(ChangeRequest::new(Some(flags)));
    }
    let msg = builder.build();
    let mut buf = vec![0u8; 64];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .map_err(|e| NatError::Encode(format!("{e:?}")))?;
    buf.truncate(n);
    Ok(buf)
}

/// Decodes a Binding response; `None` for anything else or a malformed message.
pub(crate) fn parse_response(data: &[u8]) -> Option<Response> {
    let (msg, _) = MessageDecoderBuilder::default().build().decode(data).ok()?;
    if msg.method() != BINDING {
        return None;
    }
    match msg.class() {
        MessageClass::SuccessResponse => {
            let xor = msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address());
            let plain = msg
                .get::<MappedAddress>()
                .and_then(|a| a.as_mapped_address().ok())
                .map(|a| *a.socket_address());
            let other = msg
                .get::<OtherAddress>()
                .and_then(|a| a.as_other_address().ok())
                .map(|a| *a.socket_address());
            Some(Response::Success {
                mapped: xor.or(plain),
                other,
            })
        }
        MessageClass::ErrorResponse => {
            let (code, reason) = msg
                .get::<ErrorCode>()
                .and_then(|a| a.as_error_code().ok())
                .map(|e| {
                    (
                        e.error_code().error_code(),
                        e.error_code().reason().to_string(),
                    )
                })
                .unwrap_or((0, "error response without ERROR-CODE".into()));
            Some(Response::Error { code, reason })
        }
        _ => None,
    }
}

/// Server side, for the simulation tests: a Binding request's id and CHANGE-REQUEST.
#[cfg(test)]
pub(crate) fn parse_request(data: &[u8]) -> Option<([u8; 12], Change)> {
    let (msg, _) = MessageDecoderBuilder::default().build().decode(data).ok()?;
    if msg.method() != BINDING || msg.class() != MessageClass::Request {
        return None;
    }
    let flags = msg
        .get::<ChangeRequest>()
        .and_then(|a| a.as_change_request().ok())
        .map(|c| c.flags());
    let change = flags.map_or(Change::NONE, |f| Change {
        ip: f.contains(ChangeRequestFlags::ChangeIp),
        port: f.contains(ChangeRequestFlags::ChangePort),
    });
    let mut id = [0u8; 12];
    id.copy_from_slice(msg.transaction_id().as_bytes());
    Some((id, change))
}

/// Server side, for the simulation tests: a Binding success response.
#[cfg(test)]
pub(crate) fn binding_response(
    id: [u8; 12],
    mapped: SocketAddr,
    other: Option<SocketAddr>,
    origin: SocketAddr,
) -> Vec<u8> {
    use stun_rs::attributes::discovery::ResponseOrigin;
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(TransactionId::from(id))
        .with_attribute(XorMappedAddress::from(mapped));
    if let Some(other) = other {
        builder = builder.with_attribute(OtherAddress::from(other));
    }
    let msg = builder.with_attribute(ResponseOrigin::from(origin)).build();
    let mut buf = vec![0u8; 128];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .expect("encode");
    buf.truncate(n);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip() {
        let id = [7u8; 12];
        let req = binding_request(
            id,
            Change {
                ip: true,
                port: false,
            },
        )
        .expect("encode");
        assert_eq!(
            response_transaction_id(&req),
            None,
            "a request is not a response"
        );
        assert_eq!(
            parse_request(&req),
            Some((
                id,
                Change {
                    ip: true,
                    port: false
                }
            ))
        );
        let mapped: SocketAddr = "198.18.0.10:40000".parse().expect("addr");
        let other: SocketAddr = "198.18.0.2:3479".parse().expect("addr");
        let origin: SocketAddr = "198.18.0.1:3478".parse().expect("addr");
        let resp = binding_response(id, mapped, Some(other), origin);
        assert_eq!(response_transaction_id(&resp), Some(id));
        assert_eq!(
            parse_response(&resp),
            Some(Response::Success {
                mapped: Some(mapped),
                other: Some(other)
            })
        );
        assert_eq!(parse_response(b"not stun at all, not stun at all"), None);
    }
}
