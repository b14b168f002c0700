//! Property tests: no input panics the core, and nothing malformed is ever answered.
//!
//! "Malformed" is what [`crate::wire`] refuses: a datagram that is neither a STUN message
//! that decodes (with a valid FINGERPRINT, if any, and no trailing bytes) nor ChannelData.
//! Inputs are random bytes, and valid requests and ChannelData with random corruption
//! (bit flips, truncation, extension), fed to a core with a live allocation and channel.

use proptest::prelude::*;

use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH};

use super::*;
use crate::wire::{self, ChannelData};

/// Valid datagrams a client could send, as seeds for corruption.
fn seeds(auth: &ClientAuth) -> Vec<Vec<u8>> {
    let txn = client::new_txn;
    vec![
        client::binding_request(txn()),
        client::encode_request(ALLOCATE, txn(), client::allocate_attrs(Some(600)), None),
        client::encode_request(ALLOCATE, txn(), client::allocate_attrs(None), Some(auth)),
        client::encode_request(REFRESH, txn(), Vec::new(), Some(auth)),
        client::encode_request(
            CREATE_PERMMISSION,
            txn(),
            peer_attrs(&[peer_addr()]),
            Some(auth),
        ),
        client::encode_request(
            CHANNEL_BIND,
            txn(),
            channel_bind_attrs(0x4001, addr("198.51.100.9:1")),
            Some(auth),
        ),
        client::send_indication(peer_addr(), b"data"),
        ChannelData::encode(0x4000, b"channel data").expect("encode"),
        ChannelData::encode(0x4000, &[]).expect("encode"),
    ]
}

/// Whether the core may answer `bytes`: only a STUN request that decodes.
fn answerable(bytes: &[u8]) -> bool {
    wire::classify(bytes, wire::CHANNEL_MAX) == wire::Kind::Stun
        && wire::decode_stun(bytes).is_some_and(|d| d.msg.class() == stun_rs::MessageClass::Request)
}

#[derive(Debug, Clone)]
enum Corruption {
    Flip(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Overwrite(usize, Vec<u8>),
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Corruption::Flip(i, b)),
        any::<usize>().prop_map(Corruption::Truncate),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Corruption::Extend),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Corruption::Overwrite(i, v)),
    ]
}

fn corrupt(mut bytes: Vec<u8>, c: &Corruption) -> Vec<u8> {
    let len = bytes.len().max(1);
    match c {
        Corruption::Flip(i, b) => {
            if let Some(x) = bytes.get_mut(i % len) {
                *x ^= b;
            }
        }
        Corruption::Truncate(i) => bytes.truncate(i % len),
        Corruption::Extend(v) => bytes.extend_from_slice(v),
        Corruption::Overwrite(i, v) => {
            for (k, b) in v.iter().enumerate() {
                if let Some(x) = bytes.get_mut((i + k) % len) {
                    *x = *b;
                }
            }
        }
    }
    bytes
}

/// Feeds `inputs` and checks the two properties after each.
fn check(inputs: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    let (_, port) = h.bound_channel();
    let _ = h.sent_to(client_addr());
    for bytes in inputs {
        let out = h.input(client_addr(), bytes);
        let answers = h.sent_to(client_addr());
        prop_assert!(answers.len() <= 1, "at most one answer");
        if !answers.is_empty() {
            prop_assert!(
                answerable(bytes),
                "answered a malformed datagram: {:02x?}",
                bytes
            );
        }
        if !answerable(bytes)
            && wire::ChannelData::parse(bytes).is_none()
            && wire::decode_stun(bytes).is_none()
        {
            prop_assert_eq!(out, Out::Dropped(DropReason::Malformed));
        }
        // The same bytes from a peer never panic either.
        let _ = h.peer(port, peer_addr(), bytes);
        h.out.clear();
    }
    Ok(())
}

proptest! {
    // 256 cases each unless PROPTEST_CASES asks for more (a longer run).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic_and_are_never_answered(
        inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..16)
    ) {
        check(&inputs)?;
    }

    #[test]
    fn corrupted_messages_never_panic_and_malformed_ones_are_never_answered(
        picks in proptest::collection::vec((any::<prop::sample::Index>(), proptest::collection::vec(corruption(), 0..4)), 1..16)
    ) {
        let mut h = Harness::new();
        let auth = h.challenge(client_addr(), "alice");
        let seeds = seeds(&auth);
        let inputs: Vec<Vec<u8>> = picks
            .iter()
            .map(|(i, cs)| cs.iter().fold(i.get(&seeds).clone(), corrupt))
            .collect();
        check(&inputs)?;
    }

    #[test]
    fn stun_headers_with_random_bodies_never_panic(
        method in 0u16..0x1000, class in 0u16..4, body in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        // A valid header with the declared length, followed by random attribute bytes.
        let t = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((class & 1) << 4) | ((class & 2) << 7);
        let mut bytes = t.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        bytes.extend_from_slice(&[7; 12]);
        bytes.extend_from_slice(&body);
        check(&[bytes])?;
    }
}
