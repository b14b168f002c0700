//! Property tests of the coordinator, on the harness of `tests`: arbitrary bytes and
//! arbitrary message sequences (connects, registrations, requests, answers, disconnects,
//! parking and keep-alives, time passing) never panic, every message it sends encodes,
//! and the bounds hold (pending requests, connections, registrations, the departed table).

use std::net::SocketAddr;
use std::time::Duration;

use mesh::coord::{encode, ClientMsg, ServerMsg, PROTOCOL_VERSION};
use proptest::prelude::*;

use super::tests::{ms, peer, two_peers, Harness};
use super::{ConnId, CoordConfig};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let mut h = two_peers();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut chunk = chunk.clone();
            // Mostly a valid version, so bodies get decoded.
            if chunk.len() > 2 && i % 4 != 3 {
                chunk[0] = 0;
                chunk[2] = PROTOCOL_VERSION;
            }
            h.bytes(1 + (i as u64 % 2), &chunk);
            h.drain();
            h.closes();
        }
    }

    #[test]
    fn arbitrary_message_sequences_keep_bounds(
        ops in proptest::collection::vec((0u8..10, 1u64..5, 1u8..5, 0u64..6, 0u64..300), 0..80)
    ) {
        let config = CoordConfig {
            max_pending_total: 5,
            max_pending_per_peer: 2,
            max_incoming_per_peer: 2,
            max_connections: 3,
            park_after: Some(Duration::from_secs(1)),
            park_keepalive: Duration::from_secs(1),
            ..CoordConfig::default()
        };
        let mut h = Harness::new(config);
        let mut keys = std::collections::HashMap::new();
        let mut peer_of = std::collections::HashMap::new();
        for (op, conn, target, id, dt) in ops {
            h.now += ms(dt);
            match op {
                // The driver never reuses an id the coordinator may still know.
                0 if h.c.is_parked_id(ConnId(conn)) => {}
                0 => {
                    peer_of.insert(conn, target);
                    h.c.handle_connected(
                        h.now,
                        ConnId(conn),
                        peer(target),
                        SocketAddr::from(([198, 18, 0, target], 1)),
                    );
                }
                1 => h.msg(conn, ClientMsg::Register { candidates: vec![] }),
                2 => h.msg(conn, ClientMsg::Connect { request_id: id, target: peer(target) }),
                3 => h.msg(conn, ClientMsg::Accept { request_id: id }),
                4 => h.msg(conn, ClientMsg::Refuse { request_id: id }),
                5 => h.c.handle_disconnected(ConnId(conn)),
                6 => h.advance(Duration::from_secs(id * 3)),
                7 if id % 3 == 0 => h.msg(conn, ClientMsg::HideAddress),
                7 => h.msg(conn, ClientMsg::Capabilities { park: id % 2 == 0 }),
                8 => {
                    // A keep-alive of `target` with its key if it was parked, else a guess.
                    let key = keys.get(&target).copied().unwrap_or(mesh::coord::ParkKey([0; 32]));
                    let ka = mesh::coord::park::keepalive_request(&peer(target), &key, [id as u8; 12]);
                    let from = SocketAddr::from(([198, 18, 1, target], 2));
                    h.c.handle_keepalive(h.now, from, &ka.unwrap());
                }
                _ => h.msg(conn, ClientMsg::Pong { ts: id }),
            }
            for (c, m) in h.drain() {
                let mut buf = Vec::new();
                prop_assert!(encode(&m, &mut buf).is_ok(), "{m:?}");
                if let (ServerMsg::Park { key, .. }, Some(n)) = (&m, peer_of.get(&c)) {
                    keys.insert(*n, *key);
                }
            }
            while h.c.poll_transmit().is_some() {}
            h.closes();
            prop_assert!(h.c.pending_requests() <= 5);
            prop_assert!(h.c.connections() + h.c.parked() <= 3);
            prop_assert!(h.c.registered() <= h.c.connections() + h.c.parked());
            let (departed, queued) = h.c.departed_sizes();
            prop_assert!(departed <= 3 && queued <= 6, "{departed} {queued}");
        }
    }
}
