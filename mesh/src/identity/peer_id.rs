//! [`PeerId`]: who a peer is, derived from its Ed25519 public key.
//!
//! Flow:
//! 1. A peer makes an Ed25519 key pair ([`super::Identity`]).
//! 2. Its `PeerId` is the 32-byte public key itself (RFC 8032 encoding). Using the key rather
//!    than a hash of it means a verifier compares the key in a TLS certificate (RFC 8446,
//!    RFC 8410 SubjectPublicKeyInfo) with the id directly, with no lookup.
//! 3. The text form is RFC 4648 base32, lower case, without padding: 52 characters from
//!    `a-z2-7`. It is a valid DNS label (at most 63 characters), so it can also stand as a TLS
//!    server name. Parsing accepts upper case too and rejects non-canonical trailing bits, so
//!    every id has exactly one text form. [`PeerId::short`] gives the first 10 characters for
//!    logs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a [`PeerId`] in bytes (an Ed25519 public key).
pub const PEER_ID_LEN: usize = 32;

/// Length of the text form of a [`PeerId`] (base32 of 32 bytes without padding).
pub const PEER_ID_TEXT_LEN: usize = 52;

/// Length of [`PeerId::short`].
const SHORT_LEN: usize = 10;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The identity of a peer: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; PEER_ID_LEN]);

/// Why a text could not be read as a [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePeerIdError {
    /// The text does not have exactly [`PEER_ID_TEXT_LEN`] characters.
    #[error("a peer id has {PEER_ID_TEXT_LEN} characters, got {0}")]
    Length(usize),
    /// A character outside the base32 alphabet `a-z2-7`.
    #[error("invalid character {0:?} in peer id (expected a-z, 2-7)")]
    Character(char),
    /// The last character carries bits that a canonical encoding leaves zero.
    #[error("peer id is not in canonical form (non-zero trailing bits)")]
    NonCanonical,
}

impl PeerId {
    /// Wraps a raw Ed25519 public key.
    pub const fn from_bytes(bytes: [u8; PEER_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw Ed25519 public key.
    pub const fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }

    /// The first 10 characters of the text form, for logs and user interfaces.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(SHORT_LEN);
        s
    }

    fn encode(&self) -> [u8; PEER_ID_TEXT_LEN] {
        let mut out = [0u8; PEER_ID_TEXT_LEN];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut i = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out[i] = ALPHABET[((acc >> bits) & 31) as usize];
                i += 1;
            }
        }
        if bits > 0 {
            out[i] = ALPHABET[((acc << (5 - bits)) & 31) as usize];
        }
        out
    }
}

fn decode_char(c: u8) -> Option<u32> {
    match c {
        b'a'..=b'z' => Some(u32::from(c - b'a')),
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'2'..=b'7' => Some(u32::from(c - b'2') + 26),
        _ => None,
    }
}

impl FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.chars().count();
        if n != PEER_ID_TEXT_LEN || s.len() != PEER_ID_TEXT_LEN {
            return Err(ParsePeerIdError::Length(n));
        }
        let mut out = [0u8; PEER_ID_LEN];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut i = 0;
        for c in s.bytes() {
            let v = decode_char(c).ok_or(ParsePeerIdError::Character(char::from(c)))?;
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[i] = (acc >> bits) as u8;
                i += 1;
            }
            acc &= (1 << bits) - 1;
        }
        if acc != 0 {
            return Err(ParsePeerIdError::NonCanonical);
        }
        Ok(Self(out))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        // The alphabet is ASCII, so this never fails; fall back to an error rather than panic.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u8) -> PeerId {
        let mut b = [0u8; PEER_ID_LEN];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37).wrapping_add(seed);
        }
        PeerId::from_bytes(b)
    }

    #[test]
    fn text_round_trip() {
        for seed in 0..=255u8 {
            let id = sample(seed);
            let text = id.to_string();
            assert_eq!(text.len(), PEER_ID_TEXT_LEN);
            assert!(text.bytes().all(|c| ALPHABET.contains(&c)));
            assert_eq!(text.parse::<PeerId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<PeerId>().unwrap(), id);
        }
    }

    #[test]
    fn known_vector() {
        // RFC 4648 test vector "foobar" -> "MZXW6YTBOI", extended with zeros to 32 bytes.
        let mut b = [0u8; PEER_ID_LEN];
        b[..6].copy_from_slice(b"foobar");
        let text = PeerId::from_bytes(b).to_string();
        assert!(text.starts_with("mzxw6ytboi"), "{text}");
        assert_eq!(PeerId::from_bytes([0; 32]).to_string(), "a".repeat(52));
        assert_eq!(sample(1).short().len(), 10);
    }

    #[test]
    fn parse_errors() {
        assert_eq!("abc".parse::<PeerId>(), Err(ParsePeerIdError::Length(3)));
        let mut bad = "a".repeat(51);
        bad.push('1');
        assert_eq!(bad.parse::<PeerId>(), Err(ParsePeerIdError::Character('1')));
        // The last character carries 4 bits, its low bit must be zero.
        let mut noncanon = "a".repeat(51);
        noncanon.push('b');
        assert_eq!(
            noncanon.parse::<PeerId>(),
            Err(ParsePeerIdError::NonCanonical)
        );
        let mut multibyte = "a".repeat(50);
        multibyte.push('é');
        assert!(matches!(
            multibyte.parse::<PeerId>(),
            Err(ParsePeerIdError::Length(_))
        ));
    }

    #[test]
    fn serde_as_string() {
        let id = sample(7);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<PeerId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<PeerId>("\"nope\"").is_err());
    }
}
