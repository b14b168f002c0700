//! Framing on a TURN port, for the relay and its clients alike: the first-byte demux,
//! ChannelData, and the glue to stun-rs.
//!
//! Steps, for a datagram arriving on the listening port (RFC 8656 section 12, RFC 7983):
//!
//! 1. [`classify`] looks at the first byte: 0-3 is STUN, 64-79 is ChannelData (64-127
//!    with RFC 5766's channel range), anything else is not for a TURN server.
//! 2. STUN goes through [`decode_stun`]: stun-rs decodes it, the message must fill the
//!    datagram exactly, and a FINGERPRINT, if present, must match (stun-rs computes it).
//!    MESSAGE-INTEGRITY is checked later, once the key is known ([`integrity_ok`]).
//! 3. ChannelData goes through [`ChannelData::parse`]: a channel number in
//!    0x4000-0x4FFF, a length that fits the datagram, and at most the 0-3 padding bytes
//!    RFC 8656 section 12.5 allows after it.
//! 4. Answers are built as stun-rs messages and encoded by [`encode_stun`], which adds
//!    MESSAGE-INTEGRITY and FINGERPRINT when asked; ChannelData towards a client gets
//!    the 4-byte [`ChannelData::header`] and no padding (optional over UDP).
//!
//! The STUN glue lives in [`crate::stun::codec`] (re-exported here for the relay); this
//! module only adds ChannelData, which is not a STUN message.

pub use crate::stun::codec::{decode_stun, encode_stun, integrity_ok, Decoded};

/// Lowest TURN channel number (RFC 8656 section 12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest TURN channel number of RFC 8656.
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// Highest TURN channel number of RFC 5766 (0x4000-0x7FFF), which coturn's clients still
/// pick from; accepted only with the relay's `rfc5766_channels` setting.
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;
/// ChannelData header length.
pub const CHANNEL_HEADER_LEN: usize = 4;
/// Largest UDP payload over IPv4 (65535 - 8 - 20).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// What a datagram on the TURN port is, by its first byte (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First byte 0-3.
    Stun,
    /// First byte 64-79.
    ChannelData,
    /// Anything else (including an empty datagram).
    Other,
}

/// Classifies a datagram by its first byte; channel numbers go up to `channel_max`
/// ([`CHANNEL_MAX`], or [`CHANNEL_MAX_RFC5766`] for first bytes up to 127).
pub fn classify(datagram: &[u8], channel_max: u16) -> Kind {
    let last = channel_max.to_be_bytes()[0];
    match datagram.first() {
        Some(0..=3) => Kind::Stun,
        Some(b) if (0x40..=last).contains(b) => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// A ChannelData message (RFC 8656 section 12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number, 0x4000-0x4FFF.
    pub number: u16,
    /// The application data.
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses one ChannelData message filling a UDP datagram; `None` if it is malformed:
    /// shorter than its header, a channel number outside 0x4000-0x4FFF, a length field
    /// longer than the datagram, or more than 3 bytes after the data (more than padding).
    pub fn parse(datagram: &'a [u8]) -> Option<Self> {
        Self::parse_up_to(datagram, CHANNEL_MAX)
    }

    /// [`ChannelData::parse`] with channel numbers up to `channel_max`.
    pub fn parse_up_to(datagram: &'a [u8], channel_max: u16) -> Option<Self> {
        let header = datagram.get(..CHANNEL_HEADER_LEN)?;
        let number = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if !(CHANNEL_MIN..=channel_max).contains(&number) {
            return None;
        }
        let rest = &datagram[CHANNEL_HEADER_LEN..];
        let payload = rest.get(..len)?;
        if rest.len() - len > 3 {
            return None;
        }
        Some(Self { number, payload })
    }

    /// The 4-byte header of a ChannelData message with `len` bytes of data; `None` if
    /// `len` does not fit the 16-bit length field.
    pub fn header(number: u16, len: usize) -> Option<[u8; CHANNEL_HEADER_LEN]> {
        let len = u16::try_from(len).ok()?;
        let [n0, n1] = number.to_be_bytes();
        let [l0, l1] = len.to_be_bytes();
        Some([n0, n1, l0, l1])
    }

    /// The whole message, unpadded (as sent over UDP); `None` if the payload is too long.
    pub fn encode(number: u16, payload: &[u8]) -> Option<Vec<u8>> {
        let header = Self::header(number, payload.len())?;
        let mut out = Vec::with_capacity(CHANNEL_HEADER_LEN + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_first_byte() {
        let c = |b: &[u8]| classify(b, CHANNEL_MAX);
        assert_eq!(c(&[]), Kind::Other);
        assert_eq!(c(&[0x00, 1]), Kind::Stun);
        assert_eq!(c(&[0x03]), Kind::Stun);
        assert_eq!(c(&[0x40]), Kind::ChannelData);
        assert_eq!(c(&[0x4F]), Kind::ChannelData);
        assert_eq!(c(&[0x50]), Kind::Other);
        assert_eq!(c(&[0x16]), Kind::Other, "DTLS");
        assert_eq!(classify(&[0x7F], CHANNEL_MAX_RFC5766), Kind::ChannelData);
        assert_eq!(classify(&[0x80], CHANNEL_MAX_RFC5766), Kind::Other);
    }

    #[test]
    fn channel_data_round_trip_and_padding() {
        let msg = ChannelData::encode(0x4001, b"hello").expect("encode");
        assert_eq!(&msg[..4], &[0x40, 0x01, 0, 5]);
        let parsed = ChannelData::parse(&msg).expect("parse");
        assert_eq!((parsed.number, parsed.payload), (0x4001, &b"hello"[..]));
        // Up to 3 bytes of padding are accepted (RFC 8656 section 12.5), more are not.
        let mut padded = msg.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            ChannelData::parse(&padded).map(|c| c.payload),
            Some(&b"hello"[..])
        );
        padded.push(0);
        assert_eq!(ChannelData::parse(&padded), None);
        // Truncated, wrong numbers, empty.
        assert_eq!(ChannelData::parse(&msg[..msg.len() - 1]), None);
        assert_eq!(ChannelData::parse(&msg[..3]), None);
        assert_eq!(ChannelData::parse(&[0x50, 0, 0, 0]), None);
        let legacy = ChannelData::parse_up_to(&[0x7F, 0xFF, 0, 0], CHANNEL_MAX_RFC5766);
        assert_eq!(legacy.map(|c| c.number), Some(0x7FFF));
        assert_eq!(ChannelData::parse(&[0x3F, 0xFF, 0, 0]), None);
        assert_eq!(
            ChannelData::parse(&[0x4F, 0xFF, 0, 0]).map(|c| c.payload.len()),
            Some(0)
        );
        assert_eq!(ChannelData::header(0x4000, 70_000), None);
    }
}
