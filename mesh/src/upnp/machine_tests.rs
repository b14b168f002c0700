//! Tests of the UPnP mapping state machine under simulated time.

use super::*;
use std::net::Ipv4Addr;

const LAB_WAN: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));

fn cfg() -> MachineConfig {
    MachineConfig {
        local_port: 40000,
        lease: Duration::from_secs(600),
        search_attempts: 3,
        map_attempts: 3,
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(30),
        rediscover_after: Some(Duration::from_secs(300)),
    }
}

fn map(port: Option<u16>, lease_secs: u32) -> Option<Action> {
    Some(Action::Map {
        external_port: port,
        lease_secs,
    })
}

/// Start, find the gateway at `ip`, map the local port.
fn mapped_machine(t0: Instant) -> Machine {
    let mut m = Machine::new(cfg());
    m.start(t0);
    assert_eq!(m.poll_action(), Some(Action::Search));
    assert_eq!(m.state(), &UpnpState::Searching);
    m.on_search(t0, Ok(LAB_WAN));
    assert_eq!(m.poll_action(), map(Some(40000), 600));
    m.on_map(t0, Ok(40000));
    m
}

#[test]
fn maps_same_port_with_reserved_external_address_and_renews_at_half_lease() {
    let t0 = Instant::now();
    let mut m = mapped_machine(t0);
    assert_eq!(
        m.state(),
        &UpnpState::Mapped {
            external: "198.18.0.10:40000".parse().unwrap(),
            lease_until: Some(t0 + Duration::from_secs(600)),
        }
    );
    assert_eq!(m.poll_action(), None);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(300)));
    // Early timer: nothing happens.
    m.handle_timeout(t0 + Duration::from_secs(299));
    assert_eq!(m.poll_action(), None);
    let t1 = t0 + Duration::from_secs(300);
    m.handle_timeout(t1);
    assert_eq!(m.poll_action(), map(Some(40000), 600));
    // Still mapped while the renewal is in flight.
    assert!(m.state().mapped().is_some());
    m.on_map(t1, Ok(40000));
    assert_eq!(
        m.state(),
        &UpnpState::Mapped {
            external: "198.18.0.10:40000".parse().unwrap(),
            lease_until: Some(t1 + Duration::from_secs(600)),
        }
    );
    assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(300)));
}

#[test]
fn port_in_use_falls_back_to_any_port() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.start(t0);
    m.poll_action();
    m.on_search(t0, Ok(LAB_WAN));
    m.poll_action();
    m.on_map(t0, Err(MapFailure::PortInUse));
    assert_eq!(m.poll_action(), map(None, 600));
    m.on_map(t0, Ok(51234));
    assert_eq!(
        m.state().mapped(),
        Some("198.18.0.10:51234".parse().unwrap())
    );
    // Renewal keeps the port the gateway chose.
    m.handle_timeout(t0 + Duration::from_secs(300));
    assert_eq!(m.poll_action(), map(Some(51234), 600));
}

#[test]
fn search_failures_back_off_then_unavailable_then_rediscover() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.start(t0);
    assert_eq!(m.poll_action(), Some(Action::Search));
    m.on_search(t0, Err("no response".into()));
    assert_eq!(m.poll_action(), None);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    let t1 = t0 + Duration::from_secs(1);
    m.handle_timeout(t1);
    assert_eq!(m.poll_action(), Some(Action::Search));
    m.on_search(t1, Err("no response".into()));
    assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(2)));
    let t2 = t1 + Duration::from_secs(2);
    m.handle_timeout(t2);
    assert_eq!(m.poll_action(), Some(Action::Search));
    assert_eq!(m.state(), &UpnpState::Searching);
    m.on_search(t2, Err("no response".into()));
    match m.state() {
        UpnpState::Unavailable { reason } => {
            assert!(reason.contains("3 searches"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(m.poll_timeout(), Some(t2 + Duration::from_secs(300)));
    m.handle_timeout(t2 + Duration::from_secs(300));
    assert_eq!(m.poll_action(), Some(Action::Search));
    assert_eq!(m.state(), &UpnpState::Searching);
}

#[test]
fn unspecified_external_address_is_a_failure() {
    let t0 = Instant::now();
    let mut m = Machine::new(MachineConfig {
        search_attempts: 1,
        rediscover_after: None,
        ..cfg()
    });
    m.start(t0);
    m.poll_action();
    m.on_search(t0, Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    assert!(matches!(m.state(), UpnpState::Unavailable { .. }));
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.poll_action(), None);
}

#[test]
fn permanent_only_gateway_gets_lease_zero_and_no_renewal() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.start(t0);
    m.poll_action();
    m.on_search(t0, Ok(LAB_WAN));
    m.poll_action();
    m.on_map(t0, Err(MapFailure::OnlyPermanentLeases));
    assert_eq!(m.poll_action(), map(Some(40000), 0));
    m.on_map(t0, Ok(40000));
    assert_eq!(
        m.state(),
        &UpnpState::Mapped {
            external: "198.18.0.10:40000".parse().unwrap(),
            lease_until: None
        }
    );
    assert_eq!(m.poll_timeout(), None);
    m.shutdown(t0);
    assert_eq!(
        m.poll_action(),
        Some(Action::Remove {
            external_port: 40000
        })
    );
}

#[test]
fn map_failures_are_bounded() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.start(t0);
    m.poll_action();
    m.on_search(t0, Ok(LAB_WAN));
    let mut now = t0;
    for i in 1..=3u32 {
        assert_eq!(m.poll_action(), map(Some(40000), 600), "attempt {i}");
        m.on_map(now, Err(MapFailure::Other("606 not authorized".into())));
        if i < 3 {
            let at = m.poll_timeout().unwrap();
            assert_eq!(at - now, Duration::from_secs(1 << (i - 1)));
            now = at;
            m.handle_timeout(now);
        }
    }
    match m.state() {
        UpnpState::Unavailable { reason } => {
            assert!(reason.contains("not authorized"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn renewal_failures_retry_within_lease_then_start_over() {
    let t0 = Instant::now();
    let mut m = Machine::new(MachineConfig {
        lease: Duration::from_secs(20),
        retry_max: Duration::from_secs(4),
        ..cfg()
    });
    m.start(t0);
    m.poll_action();
    m.on_search(t0, Ok(LAB_WAN));
    m.poll_action();
    m.on_map(t0, Ok(40000));
    let lease_until = t0 + Duration::from_secs(20);
    let mut now = t0 + Duration::from_secs(10);
    m.handle_timeout(now);
    let mut renewals = 0;
    loop {
        match m.poll_action() {
            Some(Action::Map {
                external_port: Some(40000),
                ..
            }) => {
                renewals += 1;
                assert!(m.state().mapped().is_some(), "mapped until the lease ends");
                m.on_map(now, Err(MapFailure::Other("timeout".into())));
            }
            Some(Action::Search) => break,
            other => panic!("unexpected {other:?}"),
        }
        if let Some(at) = m.poll_timeout() {
            assert!(at < lease_until);
            now = at;
            m.handle_timeout(now);
        }
    }
    // 10 s + 1 + 2 + 4 + 4 (= 21 > 20): four attempts, then the mapping counts as lost.
    assert_eq!(renewals, 4);
    assert_eq!(m.state(), &UpnpState::Searching);
}

#[test]
fn renewal_conflict_maps_any_port() {
    let t0 = Instant::now();
    let mut m = mapped_machine(t0);
    let t1 = t0 + Duration::from_secs(300);
    m.handle_timeout(t1);
    m.poll_action();
    m.on_map(t1, Err(MapFailure::PortInUse));
    assert_eq!(m.poll_action(), map(None, 600));
    assert_eq!(m.state(), &UpnpState::Searching);
    m.on_map(t1, Ok(50000));
    assert_eq!(
        m.state().mapped(),
        Some("198.18.0.10:50000".parse().unwrap())
    );
}

#[test]
fn shutdown_removes_live_mapping() {
    let t0 = Instant::now();
    let mut m = mapped_machine(t0);
    m.shutdown(t0);
    assert_eq!(
        m.poll_action(),
        Some(Action::Remove {
            external_port: 40000
        })
    );
    assert_eq!(m.state().mapped(), None);
    assert!(!m.is_closed());
    m.on_removed(t0, Ok(()));
    assert!(m.is_closed());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn shutdown_during_map_request_removes_after_the_answer() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.start(t0);
    m.poll_action();
    m.on_search(t0, Ok(LAB_WAN));
    assert_eq!(m.poll_action(), map(Some(40000), 600));
    m.shutdown(t0);
    assert_eq!(m.poll_action(), None);
    m.on_map(t0, Ok(40000));
    assert_eq!(
        m.poll_action(),
        Some(Action::Remove {
            external_port: 40000
        })
    );
    m.on_removed(t0, Err("timeout".into()));
    assert!(m.is_closed());
}

#[test]
fn shutdown_while_searching_or_waiting_closes_at_once() {
    let t0 = Instant::now();
    let mut m = Machine::new(cfg());
    m.start(t0);
    m.poll_action();
    m.shutdown(t0);
    assert!(m.is_closed());
    assert_eq!(m.poll_action(), None);
    // A late search answer changes nothing.
    m.on_search(t0, Ok(LAB_WAN));
    assert_eq!(m.poll_action(), None);
    assert!(m.is_closed());
}

#[test]
fn random_event_orders_never_leave_a_mapping_behind() {
    // A small deterministic fuzz: whatever happens, after shutdown and answering every
    // action the machine is closed, and a Remove always names the port mapped last.
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _case in 0..2000 {
        let t0 = Instant::now();
        let mut m = Machine::new(MachineConfig {
            lease: Duration::from_secs(20),
            ..cfg()
        });
        let mut now = t0;
        let mut live: Option<u16> = None;
        m.start(now);
        let steps = next() % 30;
        let answer =
            |m: &mut Machine, a: Action, now: Instant, r: u64, live: &mut Option<u16>| match a {
                Action::Search => {
                    if r % 3 == 0 {
                        m.on_search(now, Err("x".into()))
                    } else {
                        m.on_search(now, Ok(LAB_WAN))
                    }
                }
                Action::Map { external_port, .. } => match r % 4 {
                    0 => m.on_map(now, Err(MapFailure::PortInUse)),
                    1 => m.on_map(now, Err(MapFailure::Other("x".into()))),
                    _ => {
                        let p = external_port.unwrap_or(50000);
                        *live = Some(p);
                        m.on_map(now, Ok(p))
                    }
                },
                Action::Remove { external_port } => {
                    assert_eq!(Some(external_port), *live);
                    *live = None;
                    m.on_removed(now, Ok(()))
                }
            };
        for _ in 0..steps {
            if let Some(a) = m.poll_action() {
                answer(&mut m, a, now, next(), &mut live);
            } else if let Some(at) = m.poll_timeout() {
                now = at;
                m.handle_timeout(now);
            }
        }
        m.shutdown(now);
        for _ in 0..10 {
            match m.poll_action() {
                Some(a) => answer(&mut m, a, now, 3, &mut live),
                None => break,
            }
        }
        assert!(m.is_closed(), "{:?}", m.phase);
    }
}
