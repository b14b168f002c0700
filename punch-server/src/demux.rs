//! Demultiplexing of datagrams that share the STUN port (RFC 7983, RFC 9443).
//!
//! The punch server's UDP port carries STUN today and the QUIC punchthrough coordinator
//! later. Every datagram is classified before any parsing:
//!
//! 1. An empty datagram is nothing at all and is dropped by the caller.
//! 2. First byte 0..=3 is the STUN range of RFC 7983 §7. Such a datagram is treated as STUN
//!    only if it is at least a STUN header long and carries the RFC 8489 magic cookie
//!    (`0x2112A442` at offset 4); otherwise it is a legacy RFC 3489 message or garbage and is
//!    dropped (never handed to the coordinator, which cannot use bytes in the STUN range).
//! 3. Every other first byte (QUIC long and short headers are 64..=191 per RFC 9443) goes to
//!    the non-STUN hook, which belongs to the coordinator.

use crate::wire::{HEADER_LEN, MAGIC_COOKIE};

/// What a datagram received on the STUN port is, judged from its first bytes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// Zero-length datagram.
    Empty,
    /// First byte in the STUN range and the magic cookie present: parse as STUN.
    Stun,
    /// First byte in the STUN range but no magic cookie (RFC 3489 or garbage): drop.
    StunRangeWithoutCookie,
    /// Anything else: the coordinator's business (QUIC, RFC 9443).
    NotStun,
}

/// Classifies a datagram by RFC 7983 first-byte ranges plus the RFC 8489 magic cookie.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        None => DatagramKind::Empty,
        Some(0..=3) => {
            if datagram.len() >= HEADER_LEN && datagram[4..8] == MAGIC_COOKIE {
                DatagramKind::Stun
            } else {
                DatagramKind::StunRangeWithoutCookie
            }
        }
        Some(_) => DatagramKind::NotStun,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(first: u8, cookie: [u8; 4]) -> Vec<u8> {
        let mut d = vec![first, 0x01, 0, 0];
        d.extend_from_slice(&cookie);
        d.extend_from_slice(&[7; 12]);
        d
    }

    #[test]
    fn empty_is_empty() {
        assert_eq!(classify(&[]), DatagramKind::Empty);
    }

    #[test]
    fn stun_range_with_cookie_is_stun() {
        for first in 0..=3 {
            assert_eq!(classify(&header(first, MAGIC_COOKIE)), DatagramKind::Stun);
        }
    }

    #[test]
    fn stun_range_without_cookie_is_not_passed_on() {
        assert_eq!(
            classify(&header(0, [1, 2, 3, 4])),
            DatagramKind::StunRangeWithoutCookie
        );
        // Too short to hold a cookie.
        assert_eq!(classify(&[0, 1, 0]), DatagramKind::StunRangeWithoutCookie);
        // Cookie present but shorter than a header.
        assert_eq!(
            classify(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]),
            DatagramKind::StunRangeWithoutCookie
        );
    }

    #[test]
    fn quic_and_others_go_to_the_hook() {
        // QUIC long header (0xc0..), short header (0x40..), DTLS (20..63), RTP (128..191).
        for first in [4u8, 20, 63, 64, 0x40, 0x7f, 0x80, 0xc3, 0xff] {
            assert_eq!(
                classify(&header(first, MAGIC_COOKIE)),
                DatagramKind::NotStun,
                "{first}"
            );
        }
    }
}
