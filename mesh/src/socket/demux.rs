//! Sans-IO classification of datagrams arriving on the one shared UDP socket.
//!
//! Flow (RFC 7983 section 7, extended for QUIC by RFC 9443 section 2):
//! 1. Look at the first byte of the datagram.
//! 2. 0-3: STUN (RFC 8489), accepted only if the datagram is at least a STUN header (20 bytes)
//!    long and carries the magic cookie `0x2112A442` at bytes 4..8.
//! 3. 64-127 (QUIC short header, fixed bit set) and 192-255 (QUIC long header, RFC 9000
//!    section 17): QUIC, handed to quinn.
//! 4. Anything else (ZRTP 16-19, DTLS 20-63, RTP/RTCP 128-191, an empty datagram, or a
//!    would-be STUN datagram without cookie): unknown, dropped and counted by the caller.
//!
//! [`retain_quic`] applies this to a GRO batch in place, so mixed batches need no copy of
//! the QUIC part.
//!
//! TURN ChannelData (64-79) overlaps QUIC short headers; RFC 9443 resolves this by the source
//! address (only a TURN server sends ChannelData), which the path layer will do when relays
//! come. This module only looks at bytes.

use crate::stun::looks_like_stun;

/// What a datagram on the shared socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A QUIC packet (RFC 9000): goes to quinn.
    Quic,
    /// A STUN message (RFC 8489): goes to the STUN queue.
    Stun,
    /// Anything else: dropped and counted.
    Unknown,
}

/// Classifies one datagram by its first byte (and the STUN magic cookie).
///
/// Allocation-free and constant time; `datagram` is the whole UDP payload.
#[inline]
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) if looks_like_stun(datagram) => DatagramKind::Stun,
        Some(64..=127) | Some(192..=255) => DatagramKind::Quic,
        _ => DatagramKind::Unknown,
    }
}

/// Keeps the QUIC segments of a received buffer, in place.
///
/// `buf` holds one datagram, or a GRO batch of segments of `stride` bytes (the last may be
/// shorter). QUIC segments are moved together at the start, preserving their order, so the
/// result is again a valid batch of `stride`-sized segments; every other segment is passed to
/// `other` with its kind. Returns the number of QUIC bytes and QUIC segments kept.
pub fn retain_quic(
    buf: &mut [u8],
    stride: usize,
    mut other: impl FnMut(DatagramKind, &[u8]),
) -> (usize, usize) {
    let len = buf.len();
    let stride = if stride == 0 { len.max(1) } else { stride };
    // Fast path: every segment is QUIC (the common case); nothing moves.
    if buf
        .chunks(stride)
        .all(|seg| classify(seg) == DatagramKind::Quic)
    {
        return (len, len.div_ceil(stride));
    }
    let (mut write, mut read, mut segments) = (0, 0, 0);
    while read < len {
        let end = (read + stride).min(len);
        match classify(&buf[read..end]) {
            DatagramKind::Quic => {
                buf.copy_within(read..end, write);
                write += end - read;
                segments += 1;
            }
            kind => other(kind, &buf[read..end]),
        }
        read = end;
    }
    (write, segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_quic_compacts_a_mixed_gro_batch() {
        let stun = stun_binding_request();
        let stride = stun.len();
        let mut batch = Vec::new();
        batch.extend_from_slice(&[0x41; 20]); // QUIC
        batch.extend_from_slice(&stun); // STUN
        batch.extend_from_slice(&[0x80; 20]); // RTP: unknown
        batch.extend_from_slice(&[0x42; 20]); // QUIC
        batch.extend_from_slice(&[0xc3; 7]); // QUIC, short last segment
        let mut seen = Vec::new();
        let (kept, segments) = retain_quic(&mut batch, stride, |k, d| seen.push((k, d.to_vec())));
        assert_eq!((kept, segments), (47, 3));
        assert_eq!(&batch[..20], &[0x41; 20]);
        assert_eq!(&batch[20..40], &[0x42; 20]);
        assert_eq!(&batch[40..47], &[0xc3; 7]);
        assert_eq!(
            seen,
            vec![
                (DatagramKind::Stun, stun),
                (DatagramKind::Unknown, vec![0x80; 20])
            ]
        );
    }

    #[test]
    fn retain_quic_fast_path_and_empty() {
        let mut all_quic = vec![0x40u8; 25];
        assert_eq!(
            retain_quic(&mut all_quic, 10, |_, _| panic!("no other")),
            (25, 3)
        );
        assert_eq!(
            retain_quic(&mut all_quic, 0, |_, _| panic!("no other")),
            (25, 1)
        );
        let mut junk = vec![0x90u8; 5];
        let mut n = 0;
        assert_eq!(retain_quic(&mut junk, 0, |_, _| n += 1), (0, 0));
        assert_eq!(n, 1);
        assert_eq!(retain_quic(&mut [], 0, |_, _| panic!("no segment")), (0, 0));
    }

    fn stun_binding_request() -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00];
        m.extend_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7u8; 12]);
        m
    }

    #[test]
    fn every_first_byte_has_the_rfc_class() {
        for b in 0..=255u8 {
            let mut d = stun_binding_request();
            d[0] = b;
            let expected = match b {
                0..=3 => DatagramKind::Stun,
                64..=127 | 192..=255 => DatagramKind::Quic,
                _ => DatagramKind::Unknown,
            };
            assert_eq!(classify(&d), expected, "first byte {b}");
        }
    }

    #[test]
    fn stun_needs_cookie_and_header() {
        let good = stun_binding_request();
        assert_eq!(classify(&good), DatagramKind::Stun);
        let mut no_cookie = good.clone();
        no_cookie[5] ^= 0xff;
        assert_eq!(classify(&no_cookie), DatagramKind::Unknown);
        assert_eq!(classify(&good[..19]), DatagramKind::Unknown);
        assert_eq!(classify(&good[..1]), DatagramKind::Unknown);
    }

    #[test]
    fn empty_and_short_quic() {
        assert_eq!(classify(&[]), DatagramKind::Unknown);
        assert_eq!(classify(&[0xc0]), DatagramKind::Quic);
        assert_eq!(classify(&[0x40]), DatagramKind::Quic);
        // RTP/RTCP and DTLS ranges.
        assert_eq!(classify(&[0x80, 0, 0, 0]), DatagramKind::Unknown);
        assert_eq!(classify(&[0x16, 0xfe, 0xfd]), DatagramKind::Unknown);
    }
}
