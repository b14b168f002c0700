//! Relayed QUIC on the one socket: TURN ChannelData (RFC 8656 section 12) wrapped around
//! each QUIC datagram sent on a [`super::Path::Relay`], and unwrapped from what a relay
//! server sends.
//!
//! Steps:
//! 1. Send: [`wrap`] puts a 4-byte ChannelData header in front of every segment of a
//!    (possibly GSO) transmit and returns the new segment size, so a batch stays one
//!    `sendmsg` (over UDP the padding to 4 bytes is optional and left out).
//! 2. Receive, decided by source before the first byte (RFC 9443 section 2): a datagram
//!    from an address [`super::PathTable::is_relay_server`] knows is TURN. [`split`] walks
//!    its segments (GRO may batch several), handing STUN ones (the TURN client's answers,
//!    Data indications) and each ChannelData payload with its channel to the caller, and
//!    counting anything else as malformed.
//! 3. The socket maps (server, channel) to the peer's synthetic address and queues the
//!    payload in a bounded [`RelayedQueue`]; its next `poll_recv` hands queued datagrams to
//!    quinn before reading the socket again. One copy per relayed datagram keeps GRO
//!    batches from different channels (different peers behind one relay) apart.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::turn::wire::{ChannelData, CHANNEL_HEADER_LEN};

/// Default bound of the relayed-datagram queue.
pub const DEFAULT_RELAYED_QUEUE: usize = 1024;

/// Wraps every segment of `contents` (segments of `segment_size`, the last one possibly
/// shorter; one segment if `None`) in a ChannelData header of `channel`, into `out`.
/// Returns the segment size of the wrapped batch, or `None` if a segment is too long.
pub fn wrap(
    channel: u16,
    contents: &[u8],
    segment_size: Option<usize>,
    out: &mut Vec<u8>,
) -> Option<Option<usize>> {
    out.clear();
    let size = segment_size.unwrap_or(contents.len()).max(1);
    out.reserve(contents.len() + contents.len().div_ceil(size) * CHANNEL_HEADER_LEN);
    for segment in contents.chunks(size) {
        out.extend_from_slice(&ChannelData::header(channel, segment.len())?);
        out.extend_from_slice(segment);
    }
    Some(segment_size.map(|s| s + CHANNEL_HEADER_LEN))
}

/// One segment of a datagram from a relay server.
#[derive(Debug, PartialEq, Eq)]
pub enum RelaySegment<'a> {
    /// A STUN message (first byte 0-3): for the TURN client.
    Stun(&'a [u8]),
    /// A ChannelData message: `payload` came from the peer bound to `channel`.
    Channel {
        /// The channel number.
        channel: u16,
        /// The relayed datagram.
        payload: &'a [u8],
    },
    /// Neither, or a ChannelData message that does not parse.
    Malformed,
}

/// Splits a received buffer from a relay server (one datagram, or a GRO batch of
/// `stride`-sized segments) into its segments.
pub fn split(buf: &[u8], stride: usize, mut each: impl FnMut(RelaySegment<'_>)) {
    let stride = if stride == 0 {
        buf.len().max(1)
    } else {
        stride
    };
    for segment in buf.chunks(stride) {
        let kind = match segment.first() {
            Some(0..=3) => RelaySegment::Stun(segment),
            Some(_) => match ChannelData::parse(segment) {
                Some(cd) => RelaySegment::Channel {
                    channel: cd.number,
                    payload: cd.payload,
                },
                None => RelaySegment::Malformed,
            },
            None => RelaySegment::Malformed,
        };
        each(kind);
    }
}

/// Bounded queue of unwrapped relayed datagrams waiting for quinn: (synthetic source,
/// payload).
#[derive(Debug)]
pub struct RelayedQueue {
    queue: VecDeque<(SocketAddr, Bytes)>,
    capacity: usize,
}

impl RelayedQueue {
    /// An empty queue of at most `capacity` datagrams (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a datagram; `false` (dropped) if the queue is full.
    pub fn push(&mut self, from: SocketAddr, payload: &[u8]) -> bool {
        if self.queue.len() >= self.capacity {
            return false;
        }
        self.queue
            .push_back((from, Bytes::copy_from_slice(payload)));
        true
    }

    /// The oldest queued datagram.
    pub fn pop(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.queue.pop_front()
    }

    /// Puts a datagram back at the front (it did not fit the caller's buffer).
    pub fn push_front(&mut self, item: (SocketAddr, Bytes)) {
        self.queue.push_front(item);
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_adds_a_header_per_segment_and_split_undoes_it() {
        let contents: Vec<u8> = (0..250u8).collect();
        let mut out = Vec::new();
        let size = wrap(0x4001, &contents, Some(100), &mut out).expect("fits");
        assert_eq!(size, Some(104));
        assert_eq!(out.len(), 250 + 3 * 4);
        let mut seen = Vec::new();
        split(&out, 104, |s| match s {
            RelaySegment::Channel { channel, payload } => {
                assert_eq!(channel, 0x4001);
                seen.extend_from_slice(payload);
            }
            other => panic!("{other:?}"),
        });
        assert_eq!(seen, contents);
        // One datagram without GSO.
        assert_eq!(wrap(0x4002, b"abc", None, &mut out), Some(None));
        assert_eq!(out, [0x40, 0x02, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn split_sorts_stun_channel_data_and_garbage() {
        let stun = [0u8; 20];
        let mut kinds = Vec::new();
        for datagram in [
            &stun[..],
            &[0x40, 0x00, 0, 1, 7][..],
            &[0x40, 0x00, 0, 9, 7][..],
            &[0x99][..],
        ] {
            split(datagram, 0, |s| kinds.push(format!("{s:?}")));
        }
        assert!(kinds[0].starts_with("Stun"));
        assert!(kinds[1].starts_with("Channel { channel: 16384"));
        assert_eq!(kinds[2], "Malformed", "length beyond the datagram");
        assert_eq!(kinds[3], "Malformed");
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = RelayedQueue::new(2);
        let a: SocketAddr = "[::1]:1".parse().expect("addr");
        assert!(q.push(a, b"1") && q.push(a, b"2"));
        assert!(!q.push(a, b"3"));
        assert_eq!(q.pop().map(|(_, b)| b), Some(Bytes::from_static(b"1")));
    }
}
