//! Per-peer rate limits across connections, on the harness of `tests`.
//!
//! 1. A peer that spent its connect or attempt tokens is still limited after a reconnect,
//!    and after a new connection superseding the old one; its tokens come back with time.
//! 2. The defaults let a joiner reach every member of a full session at once.
//! 3. The departed table stays bounded, stale queue items included.
//! 4. Config validation: a limiting rate needs a burst.

use std::time::Duration;

use mesh::coord::{ClientMsg, ErrorKind, ServerMsg};

use super::tests::{error_of, ms, peer, Harness};
use super::{CloseReason, ConnId, CoordConfig, Rate};

/// No limit.
const NONE: Rate = Rate {
    per_sec: 0,
    burst: 0,
};

fn rate(per_sec: u32, burst: u32) -> Rate {
    Rate { per_sec, burst }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A harness with these connect and attempt rates, other settings default.
fn with_rates(connect_rate: Rate, attempt_rate: Rate) -> Harness {
    Harness::new(CoordConfig {
        connect_rate,
        attempt_rate,
        ..CoordConfig::default()
    })
}

/// `conn` asks for peer `target`; returns what the coordinator sends.
fn connect(h: &mut Harness, conn: u64, request_id: u64, target: u8) -> Vec<(u64, ServerMsg)> {
    h.msg(
        conn,
        ClientMsg::Connect {
            request_id,
            target: peer(target),
        },
    );
    h.drain()
}

/// The server request id of the `Incoming` to `conn` in `out`.
fn incoming(out: &[(u64, ServerMsg)], conn: u64) -> u64 {
    out.iter()
        .find_map(|(c, m)| match m {
            ServerMsg::Incoming { request_id, .. } if *c == conn => Some(*request_id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Incoming to conn {conn} in {out:?}"))
}

/// The request ids `out` cancels for `conn`; a target over its rate sees no `Error`.
fn cancelled(out: &[(u64, ServerMsg)], conn: u64) -> Vec<u64> {
    assert!(
        !out.iter()
            .any(|(c, m)| *c == conn && matches!(m, ServerMsg::Error { .. })),
        "{out:?}"
    );
    out.iter()
        .filter_map(|(c, m)| match m {
            ServerMsg::Cancelled { request_id } if *c == conn => Some(*request_id),
            _ => None,
        })
        .collect()
}

/// How many `Go` messages `out` holds.
fn go_count(out: &[(u64, ServerMsg)]) -> usize {
    out.iter()
        .filter(|(_, m)| matches!(m, ServerMsg::Go(_)))
        .count()
}

#[test]
fn connect_limit_survives_a_reconnect() {
    let mut h = with_rates(rate(1, 2), NONE);
    h.join(1, 1, ms(10));
    h.join(2, 2, ms(10));
    incoming(&connect(&mut h, 1, 1, 2), 2);
    incoming(&connect(&mut h, 1, 2, 2), 2);
    assert_eq!(
        error_of(&connect(&mut h, 1, 3, 2), 1),
        (Some(3), ErrorKind::RateLimited)
    );
    // Reconnecting at once does not refill the bucket.
    h.c.handle_disconnected(ConnId(1));
    h.drain();
    assert_eq!(h.c.departed_sizes().0, 1);
    h.join(3, 1, ms(10));
    assert_eq!(
        h.c.departed_sizes().0,
        0,
        "taken back by the new connection"
    );
    assert_eq!(
        error_of(&connect(&mut h, 3, 4, 2), 3),
        (Some(4), ErrorKind::RateLimited)
    );
    // Tokens come back with time: one a second.
    h.advance(secs(1));
    h.drain();
    incoming(&connect(&mut h, 3, 5, 2), 2);
    assert_eq!(
        error_of(&connect(&mut h, 3, 6, 2), 3),
        (Some(6), ErrorKind::RateLimited)
    );
    // Away until the bucket is full again (burst / rate = 2 s): the whole burst is back
    // and the table has forgotten the peer.
    h.c.handle_disconnected(ConnId(3));
    h.drain();
    h.advance(secs(2));
    h.drain();
    h.join(4, 1, ms(10));
    assert_eq!(h.c.departed_sizes().0, 0);
    incoming(&connect(&mut h, 4, 7, 2), 2);
    incoming(&connect(&mut h, 4, 8, 2), 2);
    assert_eq!(
        error_of(&connect(&mut h, 4, 9, 2), 4),
        (Some(9), ErrorKind::RateLimited)
    );
}

#[test]
fn attempt_limit_survives_a_reconnect() {
    let mut h = with_rates(NONE, rate(1, 1));
    for n in 1..=3 {
        h.join(u64::from(n), n, ms(10));
    }
    let id = h.request(1);
    h.msg(2, ClientMsg::Accept { request_id: id });
    assert_eq!(go_count(&h.drain()), 2);
    h.c.handle_disconnected(ConnId(1));
    h.join(10, 1, ms(10));
    // Peer 3 has its token, reconnected peer 1 has not: no punch.
    let id = incoming(&connect(&mut h, 10, 2, 3), 3);
    h.msg(3, ClientMsg::Accept { request_id: id });
    let out = h.drain();
    assert_eq!(go_count(&out), 0);
    assert_eq!(error_of(&out, 10), (Some(2), ErrorKind::RateLimited));
    assert_eq!(
        cancelled(&out, 3),
        vec![id],
        "the target's accepted request is gone"
    );
    // A second later it has one again.
    h.advance(secs(1));
    h.drain();
    let id = incoming(&connect(&mut h, 10, 3, 3), 3);
    h.msg(3, ClientMsg::Accept { request_id: id });
    assert_eq!(go_count(&h.drain()), 2);
}

#[test]
fn limits_survive_a_superseding_connection() {
    let mut h = with_rates(rate(1, 1), rate(1, 1));
    for n in 1..=3 {
        h.join(u64::from(n), n, ms(10));
    }
    // Peer 1 spends its connect token, peers 1 and 2 their attempt tokens.
    let id = h.request(1);
    h.msg(2, ClientMsg::Accept { request_id: id });
    assert_eq!(go_count(&h.drain()), 2);
    // Peer 2 connects again without disconnecting: the new connection supersedes the old
    // one and inherits its spent attempt bucket.
    h.join(20, 2, ms(10));
    assert_eq!(h.closes(), vec![(2, CloseReason::Superseded)]);
    let id = incoming(&connect(&mut h, 3, 1, 2), 20);
    h.msg(20, ClientMsg::Accept { request_id: id });
    let out = h.drain();
    assert_eq!(go_count(&out), 0);
    assert_eq!(
        cancelled(&out, 20),
        vec![id],
        "the target's accepted request is gone"
    );
    // Peer 1 likewise keeps its spent connect bucket.
    h.join(10, 1, ms(10));
    assert_eq!(h.closes(), vec![(1, CloseReason::Superseded)]);
    assert_eq!(
        error_of(&connect(&mut h, 10, 2, 3), 10),
        (Some(2), ErrorKind::RateLimited)
    );
    assert_eq!(h.c.stats().superseded, 2);
    assert_eq!(h.c.departed_sizes().0, 0, "both taken back");
    // A second later both have their tokens again.
    h.advance(secs(1));
    h.drain();
    let id = incoming(&connect(&mut h, 10, 3, 2), 20);
    h.msg(20, ClientMsg::Accept { request_id: id });
    assert_eq!(go_count(&h.drain()), 2);
}

#[test]
fn default_bursts_let_a_joiner_reach_a_full_session() {
    let mut h = Harness::new(CoordConfig::default());
    for n in 1..=32 {
        h.join(u64::from(n), n, ms(10));
    }
    // Session members accept in advance; the joiner connects to all 31 at once.
    for n in 2..=32u8 {
        h.msg(u64::from(n), ClientMsg::Policy { accept_all: true });
    }
    for n in 2..=32 {
        assert_eq!(
            go_count(&connect(&mut h, 1, u64::from(n), n)),
            2,
            "peer {n}"
        );
    }
    assert_eq!(h.c.stats().rate_limited, 0);
    assert_eq!(h.c.stats().accepted, 31);
}

#[test]
fn departed_table_stays_bounded() {
    let mut h = Harness::new(CoordConfig {
        max_connections: 2,
        ..CoordConfig::default()
    });
    // Each visit spends a connect token (only spent limits are remembered).
    let visit = |h: &mut Harness, conn: u64, n: u8| {
        h.join(conn, n, ms(10));
        let request = ClientMsg::Connect {
            request_id: 1,
            target: peer(200),
        };
        h.msg(conn, request);
        h.drain();
        h.c.handle_disconnected(ConnId(conn));
    };
    for n in 1..=50 {
        visit(&mut h, u64::from(n), n);
        assert!(h.c.departed_sizes().0 <= 2);
    }
    assert_eq!(h.c.departed_sizes(), (2, 2));
    // One peer coming and going behind the others leaves stale queue items behind a live
    // entry; the queue stays bounded all the same.
    for i in 100..300 {
        visit(&mut h, i, 1);
        let (departed, queued) = h.c.departed_sizes();
        assert!(departed <= 2 && queued <= 4, "{departed} {queued}");
    }
    h.drain();
    assert_eq!(h.c.connections(), 0);
}

#[test]
fn a_limiting_rate_needs_a_burst() {
    assert!(CoordConfig::default().validate().is_ok());
    let free = CoordConfig {
        connect_rate: NONE,
        attempt_rate: NONE,
        message_rate: NONE,
        ..CoordConfig::default()
    };
    assert!(free.validate().is_ok());
    for (connect_rate, attempt_rate) in [(rate(1, 0), NONE), (NONE, rate(4, 0))] {
        let bad = CoordConfig {
            connect_rate,
            attempt_rate,
            ..CoordConfig::default()
        };
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}
