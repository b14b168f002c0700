//! Keeper tests with simulated time: an `Instant` base plus offsets, responses made up.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use uuid::Uuid;

use super::Keeper;
use crate::listing::client::ListingError;
use crate::listing::keeper_io::{
    Desired, KeeperConfig, KeeperEvent, KeeperRequest, KeeperResponse, RequestId,
};
use crate::listing::wire::{Attributes, Created, HeartbeatAck, ListingId, SessionRow};

const TIMEOUT: Duration = Duration::from_secs(30);

fn desired() -> Desired {
    Desired {
        game: "g".into(),
        name: "host".into(),
        max_players: 8,
        players: 1,
        attributes: Attributes::from([("mode".into(), "ctf".into())]),
        connect: None,
    }
}

fn config() -> KeeperConfig {
    KeeperConfig {
        seed: 42,
        ..KeeperConfig::default()
    }
}

fn created(n: u128) -> KeeperResponse {
    KeeperResponse::Created(Created {
        id: Uuid::from_u128(n),
        token: format!("token{n}"),
        expires_at: "2030-01-01T00:00:00Z".into(),
        addr: "127.0.0.1".into(),
    })
}

fn beat() -> KeeperResponse {
    KeeperResponse::Heartbeat(HeartbeatAck {
        expires_at: "2030-01-01T00:00:00Z".into(),
    })
}

fn patched() -> KeeperResponse {
    KeeperResponse::Patched(SessionRow {
        id: Uuid::from_u128(1),
        game: "g".into(),
        name: "host".into(),
        max_players: 8,
        players: 1,
        attributes: Attributes::new(),
        connect: serde_json::json!({}),
        addr: "127.0.0.1".into(),
        created_at: "2030-01-01T00:00:00Z".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
    })
}

fn api(status: u16) -> ListingError {
    ListingError::Api {
        status,
        code: "x".into(),
        message: "y".into(),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A keeper that has listed row 1 at `t0`.
fn listed(t0: Instant) -> Keeper {
    let mut k = Keeper::create(t0, desired(), TIMEOUT, config());
    let (id, req) = k.poll_request().expect("create");
    assert!(matches!(req, KeeperRequest::Create(ref c) if c.timeout_secs == Some(30)));
    k.handle_response(t0, id, Ok(created(1)));
    assert_eq!(
        k.poll_event(),
        Some(KeeperEvent::Listed {
            id: ListingId(Uuid::from_u128(1)),
            token: "token1".into()
        })
    );
    k
}

fn events(k: &mut Keeper) -> Vec<KeeperEvent> {
    std::iter::from_fn(|| k.poll_event()).collect()
}

#[test]
fn heartbeats_every_third_of_the_timeout() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    assert!(k.poll_request().is_none(), "nothing due right after create");
    let mut now = t0;
    for _ in 0..5 {
        let due = k.poll_timeout().expect("timer");
        assert_eq!(due - now, ms(10_000), "interval is timeout / 3");
        k.handle_timeout(due - ms(1));
        assert!(k.poll_request().is_none(), "not before the interval");
        k.handle_timeout(due);
        let (id, req) = k.poll_request().expect("heartbeat");
        assert!(matches!(req, KeeperRequest::Heartbeat { ref token, .. } if token == "token1"));
        assert_eq!(k.poll_timeout(), None, "no timer while in flight");
        now = due + ms(50);
        k.handle_response(now, id, Ok(beat()));
        assert_eq!(k.last_success(), Some(now));
    }
}

#[test]
fn setters_coalesce_into_one_patch() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    k.set_players(3);
    k.set_name("renamed".into());
    k.set_attributes(Attributes::from([("map".into(), "dm4".into())]));
    k.set_players(4);
    k.set_max_players(8); // unchanged: not sent
    let (id, req) = k.poll_request().expect("patch at once");
    let KeeperRequest::Patch { patch, token, .. } = req else {
        panic!("expected a patch, got {req:?}");
    };
    assert_eq!(token, "token1");
    assert_eq!(patch.players, Some(4));
    assert_eq!(patch.name.as_deref(), Some("renamed"));
    assert_eq!(
        patch.attributes.as_ref().map(|a| a["map"].as_str()),
        Some("dm4")
    );
    assert_eq!((patch.max_players, patch.connect.is_none()), (None, true));
    k.set_players(5);
    assert!(k.poll_request().is_none(), "one request in flight");
    let t1 = t0 + ms(100);
    k.handle_response(t1, id, Ok(patched()));
    assert_eq!(events(&mut k), vec![KeeperEvent::Updated]);
    let (id, req) = k.poll_request().expect("second patch");
    let KeeperRequest::Patch { patch, .. } = req else {
        panic!("expected a patch, got {req:?}");
    };
    assert_eq!((patch.players, patch.name), (Some(5), None));
    k.handle_response(t1, id, Ok(patched()));
    assert!(k.poll_request().is_none());
    assert_eq!(
        k.poll_timeout(),
        Some(t1 + ms(10_000)),
        "a patch is a heartbeat"
    );
}

#[test]
fn backs_off_to_the_max_while_down_and_resets_on_success() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    let mut now = k.poll_timeout().expect("timer");
    let mut base = ms(250);
    for i in 0..12 {
        k.handle_timeout(now);
        let (id, req) = k.poll_request().expect("request due");
        assert!(k.poll_request().is_none(), "never two in flight");
        if i == 3 {
            k.set_players(7);
            assert!(
                k.poll_request().is_none(),
                "a setter does not skip the wait"
            );
        }
        assert!(matches!(
            req,
            KeeperRequest::Heartbeat { .. } | KeeperRequest::Patch { .. }
        ));
        let error = if i % 2 == 0 {
            ListingError::Timeout
        } else {
            api(503)
        };
        k.handle_response(now, id, Err(error));
        let Some(KeeperEvent::Failed { retry_in, .. }) = k.poll_event() else {
            panic!("expected Failed");
        };
        assert!(
            retry_in >= base.mul_f64(0.75) && retry_in <= base.mul_f64(1.25),
            "retry {i}: {retry_in:?} around {base:?}"
        );
        assert_eq!(k.consecutive_failures(), i + 1);
        let at = k.poll_timeout().expect("retry timer");
        assert_eq!(at - now, retry_in, "the timer is the retry delay");
        now = at;
        base = (base * 2).min(ms(10_000));
    }
    assert_eq!(base, ms(10_000), "reached the max (timeout / 3)");
    k.handle_timeout(now);
    let (id, req) = k.poll_request().expect("patch after the wait");
    assert!(matches!(req, KeeperRequest::Patch { ref patch, .. } if patch.players == Some(7)));
    k.handle_response(now, id, Ok(patched()));
    assert_eq!(events(&mut k), vec![KeeperEvent::Updated]);
    assert_eq!(k.consecutive_failures(), 0);
    assert_eq!(k.last_error(), None);
    now = k.poll_timeout().expect("timer");
    k.handle_timeout(now);
    let (id, _) = k.poll_request().expect("heartbeat");
    k.handle_response(now, id, Err(ListingError::Transport("down".into())));
    let Some(KeeperEvent::Failed { retry_in, .. }) = k.poll_event() else {
        panic!("expected Failed");
    };
    assert!(retry_in <= ms(313), "backoff reset: {retry_in:?}");
}

#[test]
fn delist_waits_for_the_request_in_flight() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    let due = k.poll_timeout().expect("timer");
    k.handle_timeout(due);
    let (hb, _) = k.poll_request().expect("heartbeat");
    k.delist();
    k.set_players(3);
    assert!(k.poll_request().is_none(), "delete waits");
    k.handle_response(due, hb, Ok(beat()));
    let (id, req) = k.poll_request().expect("delete");
    assert!(matches!(req, KeeperRequest::Delete { ref token, .. } if token == "token1"));
    k.handle_response(due, id, Ok(KeeperResponse::Deleted));
    assert_eq!(events(&mut k), vec![KeeperEvent::Delisted]);
    assert!(k.is_stopped());
    k.handle_timeout(due + TIMEOUT * 10);
    assert!(k.poll_request().is_none());
    assert_eq!(k.poll_timeout(), None);

    // 404 on delete: gone already, done.
    let mut k = listed(t0);
    k.delist();
    let (id, _) = k.poll_request().expect("delete");
    k.handle_response(t0, id, Err(api(404)));
    assert_eq!(events(&mut k), vec![KeeperEvent::Delisted]);
}

#[test]
fn not_found_recreates_and_continues_with_the_new_row() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    let due = k.poll_timeout().expect("timer");
    k.handle_timeout(due);
    let (id, _) = k.poll_request().expect("heartbeat");
    k.set_players(6);
    k.handle_response(due, id, Err(api(404)));
    let (id, req) = k.poll_request().expect("re-create at once");
    let KeeperRequest::Create(body) = req else {
        panic!("expected create, got {req:?}");
    };
    assert_eq!(
        (body.game.as_str(), body.name.as_str(), body.players),
        ("g", "host", 6)
    );
    assert_eq!(body.attributes["mode"], "ctf");
    k.handle_response(due, id, Ok(created(2)));
    let new_id = ListingId(Uuid::from_u128(2));
    assert_eq!(
        events(&mut k),
        vec![KeeperEvent::Recreated {
            id: new_id,
            token: "token2".into()
        }]
    );
    assert!(k.poll_request().is_none(), "the create carried the players");
    let next = k.poll_timeout().expect("timer");
    k.handle_timeout(next);
    let (_, req) = k.poll_request().expect("heartbeat");
    let KeeperRequest::Heartbeat { id, token } = req else {
        panic!("expected heartbeat, got {req:?}");
    };
    assert_eq!((id, token.as_str()), (new_id, "token2"));
}

#[test]
fn unauthorized_stops_everything() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    k.set_players(2);
    let (id, _) = k.poll_request().expect("patch");
    k.handle_response(t0, id, Err(api(401)));
    assert_eq!(events(&mut k), vec![KeeperEvent::Unauthorized]);
    k.set_players(3);
    k.delist();
    k.handle_timeout(t0 + TIMEOUT * 5);
    assert!(k.poll_request().is_none());
    assert_eq!(k.poll_timeout(), None);
    assert!(k.is_stopped());
}

#[test]
fn a_rejected_patch_does_not_stop_heartbeats() {
    let t0 = Instant::now();
    let mut k = listed(t0);
    k.set_players(99);
    let (id, _) = k.poll_request().expect("patch");
    k.handle_response(t0, id, Err(api(400)));
    let due = k.poll_timeout().expect("timer");
    k.handle_timeout(due);
    let (_, req) = k.poll_request().expect("next request");
    assert!(matches!(req, KeeperRequest::Heartbeat { .. }), "{req:?}");
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Respond(u8),
    Set(u32),
    Delist,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..40_000).prop_map(Op::Advance),
        6 => (0u8..9).prop_map(Op::Respond),
        2 => (0u32..10).prop_map(Op::Set),
        1 => Just(Op::Delist),
    ]
}

fn response(kind: u8, req: &KeeperRequest, n: u128) -> Result<KeeperResponse, ListingError> {
    match kind {
        0 | 1 => Ok(match req {
            KeeperRequest::Create(_) => created(n),
            KeeperRequest::Heartbeat { .. } => beat(),
            KeeperRequest::Patch { .. } => patched(),
            KeeperRequest::Delete { .. } => KeeperResponse::Deleted,
        }),
        2 => Err(ListingError::Transport("refused".into())),
        3 => Err(ListingError::Timeout),
        4 => Err(api(503)),
        5 => Err(api(404)),
        6 => Err(api(429)),
        7 => Err(api(401)),
        _ => Ok(beat()),
    }
}

proptest! {
    #[test]
    fn never_two_in_flight_nor_a_timer_in_the_past(ops in prop::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut k = Keeper::create(t0, desired(), Duration::from_secs(6), config());
        let mut outstanding: Option<(RequestId, KeeperRequest)> = None;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance(d) => {
                    now += ms(d);
                    k.handle_timeout(now);
                    if let Some(at) = k.poll_timeout() {
                        prop_assert!(at >= now, "timer in the past");
                    }
                }
                Op::Respond(kind) => {
                    if let Some((id, req)) = outstanding.take() {
                        k.handle_response(now, id, response(kind, &req, n as u128));
                    } else {
                        k.handle_response(now, RequestId(9999), Ok(beat()));
                    }
                }
                Op::Set(p) => k.set_players(p),
                Op::Delist => k.delist(),
            }
            if let Some(req) = k.poll_request() {
                prop_assert!(outstanding.is_none(), "two requests in flight");
                prop_assert_eq!(k.in_flight(), Some(req.0));
                outstanding = Some(req);
            }
            prop_assert!(k.poll_request().is_none());
            if outstanding.is_none() && !k.is_stopped() {
                prop_assert!(k.poll_timeout().is_some_and(|at| at >= now));
            }
            while k.poll_event().is_some() {}
        }
    }
}
