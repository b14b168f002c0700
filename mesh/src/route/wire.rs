//! The outer datagrams of a link between members: what their first byte says.
//!
//! ```text
//! +------+----------------------+-----------------------------------+
//! | 0x00 | game datagram ...                                         |
//! | 0x01 | target peer id (32)  | inner QUIC datagram (end -> router) |
//! | 0x02 | source peer id (32)  | inner QUIC datagram (router -> end) |
//! +------+----------------------+-----------------------------------+
//! ```
//!
//! The inner datagram is a whole QUIC packet of the two ends' own connection: the router
//! reads only the header. [`ROUTE_OVERHEAD`] bytes per datagram, so an outer connection
//! must carry [`MIN_OUTER_DATAGRAM`] bytes for QUIC's 1200-byte minimum to pass.

use bytes::{BufMut, Bytes, BytesMut};

use crate::identity::{PeerId, PEER_ID_LEN};

/// Tag of a game datagram.
pub const TAG_GAME: u8 = 0x00;
/// Tag of an inner datagram on its way to the router.
pub const TAG_TO: u8 = 0x01;
/// Tag of an inner datagram the router forwards.
pub const TAG_FROM: u8 = 0x02;
/// Bytes a routed datagram adds: the tag and a peer id.
pub const ROUTE_OVERHEAD: usize = 1 + PEER_ID_LEN;
/// Smallest QUIC datagram the inner connection sends (RFC 9000 section 14).
pub const INNER_MIN: usize = 1200;
/// The outer connections' datagrams must carry at least this much for a route.
pub const MIN_OUTER_DATAGRAM: usize = INNER_MIN + ROUTE_OVERHEAD;

/// An outer datagram, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outer {
    /// For the game.
    Game(Bytes),
    /// From an end to the router, for `target`.
    To {
        /// The other end.
        target: PeerId,
        /// The inner datagram.
        inner: Bytes,
    },
    /// From the router to an end, from `source`.
    From {
        /// The other end.
        source: PeerId,
        /// The inner datagram.
        inner: Bytes,
    },
}

impl Outer {
    /// Parses a received outer datagram; `None` for an unknown tag or a short header.
    pub fn parse(mut datagram: Bytes) -> Option<Self> {
        let tag = *datagram.first()?;
        let body = datagram.split_off(1);
        let peer = |body: &Bytes| -> Option<PeerId> {
            let id: [u8; PEER_ID_LEN] = body.get(..PEER_ID_LEN)?.try_into().ok()?;
            Some(PeerId::from_bytes(id))
        };
        match tag {
            TAG_GAME => Some(Outer::Game(body)),
            TAG_TO => Some(Outer::To {
                target: peer(&body)?,
                inner: body.slice(PEER_ID_LEN..),
            }),
            TAG_FROM => Some(Outer::From {
                source: peer(&body)?,
                inner: body.slice(PEER_ID_LEN..),
            }),
            _ => None,
        }
    }
}

fn with_header(tag: u8, peer: Option<&PeerId>, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(ROUTE_OVERHEAD + payload.len());
    out.put_u8(tag);
    if let Some(p) = peer {
        out.put_slice(p.as_bytes());
    }
    out.put_slice(payload);
    out.freeze()
}

/// A game datagram.
pub fn game(payload: &[u8]) -> Bytes {
    with_header(TAG_GAME, None, payload)
}

/// An inner datagram for `target`, to the router.
pub fn to(target: &PeerId, inner: &[u8]) -> Bytes {
    with_header(TAG_TO, Some(target), inner)
}

/// An inner datagram from `source`, from the router.
pub fn from(source: &PeerId, inner: &[u8]) -> Bytes {
    with_header(TAG_FROM, Some(source), inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_junk_is_refused() {
        let a = PeerId::from_bytes([7; 32]);
        let inner = vec![0x40u8; 1200];
        assert_eq!(
            Outer::parse(to(&a, &inner)),
            Some(Outer::To {
                target: a,
                inner: Bytes::from(inner.clone())
            })
        );
        assert_eq!(
            Outer::parse(from(&a, &inner)),
            Some(Outer::From {
                source: a,
                inner: Bytes::from(inner.clone())
            })
        );
        assert_eq!(to(&a, &inner).len(), inner.len() + ROUTE_OVERHEAD);
        assert_eq!(
            Outer::parse(game(b"hi")),
            Some(Outer::Game(Bytes::from_static(b"hi")))
        );
        assert_eq!(Outer::parse(Bytes::new()), None);
        assert_eq!(Outer::parse(Bytes::from_static(&[0x01, 1, 2])), None);
        assert_eq!(Outer::parse(Bytes::from_static(&[0x7f, 0])), None);
    }
}
