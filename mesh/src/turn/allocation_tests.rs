//! The allocation keeper on a simulated clock against a small scripted relay: the
//! challenge, refreshes at half the lifetime for an hour, a refused refresh and the new
//! allocation after the backoff, release (confirmed or not), a silent relay.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_rs::attributes::stun::{ErrorCode, Nonce, Realm, UserName};
use stun_rs::attributes::turn::{LifeTime, XorRelayedAddress};
use stun_rs::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};
use stun_rs::{MessageClass, StunAttribute};

use super::allocation::{
    Allocation, AllocationConfig, AllocationEvent, ChannelError, CHANNEL_REFRESH, MAX_CHANNELS,
};
use super::credentials::Credentials;
use crate::stun::{decode_stun, encode_stun};

const SECRET: &str = "secret";
const REALM: &str = "mesh";
const RELAYED: &str = "198.18.0.9:49160";

fn server() -> SocketAddr {
    "198.18.0.1:3478".parse().unwrap()
}

fn creds(expiry: u64) -> Credentials {
    Credentials::rest(SECRET, "peer", expiry)
}

/// How the scripted relay answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// Challenges unsigned requests, grants signed ones (lifetime as asked, at most 600).
    Working,
    /// Refuses every signed Refresh with 403 (allocates normally).
    RefusesRefresh,
    /// Refuses every signed ChannelBind with 403.
    RefusesBinds,
    /// Answers nothing.
    Silent,
}

/// Counts of what the relay saw.
#[derive(Debug, Default)]
struct Seen {
    allocates: usize,
    refreshes: usize,
    frees: usize,
    binds: usize,
    sent: usize,
}

/// Answers everything `a` queued, as `relay` does, at `now`.
fn exchange(a: &mut Allocation, relay: Relay, now: Instant, seen: &mut Seen) {
    while let Some(t) = a.poll_transmit() {
        seen.sent += 1;
        assert!(seen.sent < 10_000, "runaway transmits");
        assert_eq!(t.dst, server());
        let d = decode_stun(&t.payload).expect("valid STUN");
        let m = d.msg;
        if relay == Relay::Silent {
            continue;
        }
        let txn = *m.transaction_id();
        let signed = m.get::<UserName>().is_some();
        let lifetime = m
            .get::<LifeTime>()
            .and_then(|l| l.as_life_time().ok())
            .map(|l| l.as_u32());
        let answer = if !signed {
            let code = stun_rs::ErrorCode::new(401, "Unauthorized").unwrap();
            let attrs: Vec<StunAttribute> = vec![
                ErrorCode::from(code).into(),
                Realm::new(REALM).unwrap().into(),
                Nonce::new("n0nce").unwrap().into(),
            ];
            encode_stun(
                m.method(),
                MessageClass::ErrorResponse,
                txn,
                attrs,
                None,
                true,
                0,
            )
        } else if (m.method() == REFRESH && relay == Relay::RefusesRefresh && lifetime != Some(0))
            || (m.method() == CHANNEL_BIND && relay == Relay::RefusesBinds)
        {
            let code = stun_rs::ErrorCode::new(403, "Forbidden").unwrap();
            let attrs: Vec<StunAttribute> = vec![ErrorCode::from(code).into()];
            encode_stun(
                m.method(),
                MessageClass::ErrorResponse,
                txn,
                attrs,
                None,
                true,
                0,
            )
        } else {
            let user = m
                .get::<UserName>()
                .and_then(|u| u.as_user_name().ok())
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default();
            let key = Credentials {
                username: user.clone(),
                password: super::credentials::rest_password(SECRET, &user),
            }
            .key(REALM)
            .unwrap();
            let granted = lifetime.unwrap_or(600).min(600);
            let mut attrs: Vec<StunAttribute> = vec![LifeTime::new(granted).into()];
            if m.method() == CHANNEL_BIND {
                seen.binds += 1;
                attrs.clear();
            } else if m.method() == ALLOCATE {
                seen.allocates += 1;
                let relayed: SocketAddr = RELAYED.parse().unwrap();
                attrs.push(XorRelayedAddress::from(relayed).into());
            } else if granted == 0 {
                seen.frees += 1;
            } else {
                seen.refreshes += 1;
            }
            let class = MessageClass::SuccessResponse;
            encode_stun(m.method(), class, txn, attrs, Some(&key), true, 0)
        };
        let answer = answer.expect("encode");
        a.handle_input(now, server(), &answer);
    }
}

/// Runs `a` until `until`, stepping through its timers.
fn run(a: &mut Allocation, relay: Relay, now: &mut Instant, until: Instant, seen: &mut Seen) {
    exchange(a, relay, *now, seen);
    while let Some(at) = a.poll_timeout().filter(|at| *at <= until) {
        *now = at.max(*now);
        a.handle_timeout(*now);
        exchange(a, relay, *now, seen);
    }
    *now = until;
}

fn events(a: &mut Allocation) -> Vec<AllocationEvent> {
    std::iter::from_fn(|| a.poll_event()).collect()
}

#[test]
fn allocates_then_refreshes_at_half_the_lifetime_for_an_hour() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let config = AllocationConfig::default();
    let mut a = Allocation::new(now, server(), creds(4_000_000_000), config, 1);
    run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    let got = events(&mut a);
    assert!(
        matches!(got.as_slice(), [AllocationEvent::Allocated { relayed, lifetime, .. }]
            if relayed.to_string() == RELAYED && *lifetime == Duration::from_secs(600)),
        "{got:?}"
    );
    run(
        &mut a,
        Relay::Working,
        &mut now,
        t0 + Duration::from_secs(3600),
        &mut seen,
    );
    assert!(events(&mut a).is_empty(), "no loss while the relay works");
    assert_eq!(a.relayed().map(|r| r.to_string()), Some(RELAYED.to_owned()));
    // Every 300 s: 12 refreshes in the hour, one allocation.
    assert_eq!((seen.allocates, seen.refreshes), (1, 12), "{seen:?}");
}

#[test]
fn a_refused_refresh_is_reported_and_a_new_allocation_follows_with_new_credentials() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let mut a = Allocation::new(now, server(), creds(1_000), AllocationConfig::default(), 2);
    run(
        &mut a,
        Relay::RefusesRefresh,
        &mut now,
        t0 + Duration::from_secs(300),
        &mut seen,
    );
    let got = events(&mut a);
    assert!(
        matches!(got.as_slice(), [AllocationEvent::Allocated { .. }, AllocationEvent::Lost(e)]
            if e.to_string().contains("403")),
        "{got:?}"
    );
    assert_eq!(a.relayed(), None);
    // The punch server renewed the credentials meanwhile: the next Allocate uses them,
    // 0.75-1.25 s after the loss (the first backoff step).
    a.set_credentials(creds(2_000));
    let lost_at = now;
    run(
        &mut a,
        Relay::Working,
        &mut now,
        lost_at + Duration::from_millis(740),
        &mut seen,
    );
    assert!(events(&mut a).is_empty(), "not before the backoff");
    run(
        &mut a,
        Relay::Working,
        &mut now,
        lost_at + Duration::from_millis(1260),
        &mut seen,
    );
    assert!(matches!(
        events(&mut a).as_slice(),
        [AllocationEvent::Allocated { .. }]
    ));
    assert_eq!(seen.allocates, 2, "{seen:?}");
}

#[test]
fn release_frees_the_allocation_and_a_silent_relay_ends_it_anyway() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let mut a = Allocation::new(
        now,
        server(),
        creds(4_000_000_000),
        AllocationConfig::default(),
        3,
    );
    run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    let _ = events(&mut a);
    a.release(now);
    run(
        &mut a,
        Relay::Working,
        &mut now,
        t0 + Duration::from_secs(1),
        &mut seen,
    );
    assert!(matches!(
        events(&mut a).as_slice(),
        [AllocationEvent::Released { confirmed: true }]
    ));
    assert!(a.is_finished() && a.poll_timeout().is_none());
    assert_eq!(seen.frees, 1);

    let mut b = Allocation::new(
        now,
        server(),
        creds(4_000_000_000),
        AllocationConfig::default(),
        4,
    );
    let at = now;
    run(&mut b, Relay::Working, &mut now, at, &mut seen);
    let _ = events(&mut b);
    b.release(now);
    let start = now;
    run(
        &mut b,
        Relay::Silent,
        &mut now,
        start + Duration::from_secs(10),
        &mut seen,
    );
    assert!(matches!(
        events(&mut b).as_slice(),
        [AllocationEvent::Released { confirmed: false }]
    ));
    assert!(b.is_finished());
}

#[test]
fn a_silent_relay_is_retried_with_growing_pauses_and_bounded_traffic() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let config = AllocationConfig::default();
    let mut a = Allocation::new(now, server(), creds(4_000_000_000), config, 5);
    run(
        &mut a,
        Relay::Silent,
        &mut now,
        t0 + Duration::from_secs(600),
        &mut seen,
    );
    let lost = events(&mut a)
        .into_iter()
        .filter(|e| matches!(e, AllocationEvent::Lost(_)))
        .count();
    // Each try lasts 5 s (10 sends at 500 ms); pauses double from 1 s to 60 s: about 14
    // tries in 10 minutes, never more than one exchange at a time.
    assert!((10..=20).contains(&lost), "{lost} losses");
    assert!(
        seen.sent <= lost * 11 + 11,
        "{} sends for {lost} tries",
        seen.sent
    );
    a.release(now);
    assert!(matches!(
        events(&mut a).as_slice(),
        [AllocationEvent::Released { .. }]
    ));
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 5000))
}

#[test]
fn channels_are_bound_numbered_and_kept_bound_for_an_hour() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let mut a = Allocation::new(
        now,
        server(),
        creds(4_000_000_000),
        AllocationConfig::default(),
        6,
    );
    assert!(matches!(
        a.bind_channel(now, peer(1)),
        Err(ChannelError::NotAllocated)
    ));
    run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    let _ = events(&mut a);
    assert_eq!(a.bind_channel(now, peer(1)).expect("bind"), 0x4000);
    assert_eq!(a.bind_channel(now, peer(2)).expect("bind"), 0x4001);
    assert_eq!(
        a.bind_channel(now, peer(1)).expect("same"),
        0x4000,
        "one channel per peer"
    );
    assert_eq!(a.channel(peer(1)), None, "not before the relay confirmed");
    run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    let bound: Vec<_> = events(&mut a)
        .into_iter()
        .filter_map(|e| match e {
            AllocationEvent::ChannelBound { peer, number } => Some((peer, number)),
            _ => None,
        })
        .collect();
    assert_eq!(bound, vec![(peer(1), 0x4000), (peer(2), 0x4001)]);
    assert_eq!(
        (a.channel(peer(1)), a.channel(peer(2))),
        (Some(0x4000), Some(0x4001))
    );
    let hour = t0 + Duration::from_secs(3600);
    run(&mut a, Relay::Working, &mut now, hour, &mut seen);
    // Bound again every 240 s (inside the permission's 300 s): 15 times each in the
    // hour, plus the first binds; the allocation refreshed 12 times as before.
    let rebinds = (3600 / CHANNEL_REFRESH.as_secs()) as usize;
    assert_eq!(seen.binds, 2 * (rebinds + 1), "{seen:?}");
    assert_eq!(seen.refreshes, 12, "{seen:?}");
    assert_eq!(
        (a.channel(peer(1)), a.channel(peer(2))),
        (Some(0x4000), Some(0x4001))
    );
}

#[test]
fn a_refused_bind_or_a_lost_allocation_drops_the_channel() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let mut a = Allocation::new(
        now,
        server(),
        creds(4_000_000_000),
        AllocationConfig::default(),
        7,
    );
    run(&mut a, Relay::RefusesBinds, &mut now, t0, &mut seen);
    let _ = events(&mut a);
    assert_eq!(a.bind_channel(now, peer(1)).expect("sent"), 0x4000);
    run(&mut a, Relay::RefusesBinds, &mut now, t0, &mut seen);
    assert!(matches!(
        events(&mut a).as_slice(),
        [AllocationEvent::ChannelFailed {
            error: ChannelError::Turn(_),
            ..
        }]
    ));
    assert_eq!(a.channel(peer(1)), None);
    // The number is free again; with a relay that binds, it is taken.
    assert_eq!(a.bind_channel(now, peer(3)).expect("sent"), 0x4000);
    run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    let _ = events(&mut a);
    assert_eq!(a.channel(peer(3)), Some(0x4000));
    // The allocation's refresh is refused: the allocation and its channel are gone.
    let at = t0 + Duration::from_secs(300);
    run(&mut a, Relay::RefusesRefresh, &mut now, at, &mut seen);
    let got = events(&mut a);
    assert!(
        got.iter()
            .any(|e| matches!(e, AllocationEvent::ChannelFailed { peer: p, .. } if *p == peer(3)))
            && got.iter().any(|e| matches!(e, AllocationEvent::Lost(_))),
        "{got:?}"
    );
    assert_eq!(a.channel(peer(3)), None);
}

#[test]
fn channels_are_bounded() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut seen = Seen::default();
    let mut a = Allocation::new(
        now,
        server(),
        creds(4_000_000_000),
        AllocationConfig::default(),
        8,
    );
    run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    for n in 0..MAX_CHANNELS {
        let p = SocketAddr::from(([198, 18, 1, n as u8], 6000));
        // Answer as we go: the client has at most 8 requests in flight.
        a.bind_channel(now, p).expect("room");
        run(&mut a, Relay::Working, &mut now, t0, &mut seen);
    }
    assert!(matches!(
        a.bind_channel(now, peer(9)),
        Err(ChannelError::Full)
    ));
}
