//! The path table's tests: synthetic addresses, dialing, learning and eviction, path
//! switches with standbys, relayed paths.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

#[test]
fn synthetic_addresses_round_trip_and_are_recognised() {
    for id in [1u64, 2, 0xdead_beef, u64::MAX] {
        let a = synthetic_addr(id);
        assert_eq!(synthetic_id(&a), Some(id));
        assert!(is_synthetic(&a));
        assert!(a.ip().to_string().starts_with("fd6d:6573:6800:1:"), "{a}");
    }
    assert!(!is_synthetic(&addr(1)));
    assert!(!is_synthetic(&"[::1]:1".parse().unwrap()));
    let other_port = SocketAddr::new(synthetic_addr(5).ip(), 2);
    assert!(!is_synthetic(&other_port));
}

#[test]
fn incoming_is_learned_and_stable() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let s1 = t.on_incoming(now, addr(1000)).unwrap();
    let s2 = t.on_incoming(now, addr(2000)).unwrap();
    assert_ne!(s1, s2);
    assert_eq!(t.on_incoming(now, addr(1000)), Some(s1));
    assert_eq!(t.resolve(&s1), Some(Path::direct(addr(1000))));
    assert_eq!(t.resolve(&synthetic_addr(999)), None);
    assert_eq!(t.resolve(&addr(1000)), None);
    assert_eq!(t.len(), 2);
}

#[test]
fn dialing_reuses_and_moves_the_peer_address() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let s = t
        .upsert_peer(now, peer(1), Path::direct(addr(1000)))
        .unwrap();
    assert_eq!(t.on_incoming(now, addr(1000)), Some(s));
    assert_eq!(t.peer_of(&s), Some(peer(1)));
    // The peer moves: same synthetic address, new path; the old one stays a standby
    // (datagrams in flight on it still arrive) until it is removed.
    let s_again = t
        .upsert_peer(now, peer(1), Path::direct(addr(1001)))
        .unwrap();
    assert_eq!(s, s_again);
    assert_eq!(t.resolve(&s), Some(Path::direct(addr(1001))));
    assert_eq!(t.on_incoming(now, addr(1001)), Some(s));
    assert_eq!(t.on_incoming(now, addr(1000)), Some(s));
    assert!(t.remove_path(&s, Path::direct(addr(1000))));
    assert_ne!(t.on_incoming(now, addr(1000)), Some(s));
}

#[test]
fn relayed_and_direct_paths_of_one_peer_map_to_one_address() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let turn = addr(3478);
    let relay = Path::Relay {
        server: turn,
        channel: 0x4001,
    };
    // Relay first.
    let s = t.upsert_peer(now, peer(1), relay).unwrap();
    assert!(t.is_relay_server(&turn));
    assert_eq!(t.resolve(&s), Some(relay));
    assert_eq!(t.on_relayed(now, turn, 0x4001), Some(s));
    assert_eq!(t.on_relayed(now, turn, 0x4002), None, "unknown channel");
    // A second peer on the same relay, another channel.
    let other = Path::Relay {
        server: turn,
        channel: 0x4002,
    };
    let s2 = t.upsert_peer(now, peer(2), other).unwrap();
    assert_eq!(t.on_relayed(now, turn, 0x4002), Some(s2));
    // Then direct: the relay stays live as a standby.
    assert!(t.set_path(&s, Path::direct(addr(1000))));
    assert_eq!(t.resolve(&s), Some(Path::direct(addr(1000))));
    assert_eq!(t.on_incoming(now, addr(1000)), Some(s));
    assert_eq!(t.on_relayed(now, turn, 0x4001), Some(s));
    assert_eq!(t.paths_of(&s), vec![Path::direct(addr(1000)), relay]);
    // Back to the relay: no new entry, the direct path is the standby now.
    assert!(t.set_path(&s, relay));
    assert_eq!(t.paths_of(&s), vec![relay, Path::direct(addr(1000))]);
    assert!(!t.remove_path(&s, relay), "the active path stays");
    assert!(t.remove_path(&s, Path::direct(addr(1000))));
    // The server stays a relay while any path uses it.
    assert!(t.remove(&s2).is_some());
    assert!(t.is_relay_server(&turn));
    assert!(t.remove(&s).is_some());
    assert!(!t.is_relay_server(&turn));
    assert_eq!(t.on_relayed(now, turn, 0x4001), None);
}

#[test]
fn standby_paths_are_bounded() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let s = t.upsert_peer(now, peer(1), Path::direct(addr(1))).unwrap();
    for port in 2..10 {
        assert!(t.add_path(&s, Path::direct(addr(port))));
    }
    let paths = t.paths_of(&s);
    assert_eq!(paths.len(), MAX_PATHS_PER_PEER);
    assert_eq!(paths[0], Path::direct(addr(1)), "the active path stays");
    // The oldest standbys went, and their sources with them.
    assert_eq!(t.on_incoming(now, addr(9)), Some(s));
    assert_ne!(t.on_incoming(now, addr(2)), Some(s));
    // Relay mappings go with their paths too.
    let relay = Path::Relay {
        server: addr(3478),
        channel: 0x4000,
    };
    assert!(t.add_path(&s, relay));
    assert!(t.is_relay_server(&addr(3478)));
    for port in 20..24 {
        assert!(t.add_path(&s, Path::direct(addr(port))));
    }
    assert!(!t.is_relay_server(&addr(3478)), "pushed out, unlinked");
}

#[test]
fn learned_entry_is_adopted_and_bound() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let learned = t.on_incoming(now, addr(1000)).unwrap();
    assert_eq!(
        t.upsert_peer(now, peer(1), Path::direct(addr(1000))),
        Ok(learned)
    );
    let other = t.on_incoming(now, addr(2000)).unwrap();
    assert!(t.bind_peer(&other, peer(2)));
    assert!(!t.bind_peer(&other, peer(3)));
    assert!(!t.bind_peer(&synthetic_addr(12345), peer(3)));
    assert_eq!(
        t.upsert_peer(now, peer(2), Path::direct(addr(2000))),
        Ok(other)
    );
}

#[test]
fn moving_onto_a_learned_remote_merges_it() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let s = t
        .upsert_peer(now, peer(1), Path::direct(addr(1000)))
        .unwrap();
    let learned = t.on_incoming(now, addr(3000)).unwrap();
    assert!(t.set_path(&s, Path::direct(addr(3000))));
    assert_eq!(t.on_incoming(now, addr(3000)), Some(s));
    assert_eq!(t.resolve(&learned), None);
    assert_eq!(t.len(), 1);
}

#[test]
fn bounded_with_idle_eviction() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(10);
    let mut t = PathTable::new(3, idle);
    let pinned = t.upsert_peer(t0, peer(1), Path::direct(addr(1))).unwrap();
    let a = t.on_incoming(t0, addr(2)).unwrap();
    let _b = t.on_incoming(t0 + Duration::from_secs(5), addr(3)).unwrap();
    // Full, nothing idle long enough.
    assert_eq!(t.on_incoming(t0 + Duration::from_secs(1), addr(4)), None);
    assert!(t.upsert_peer(t0, peer(9), Path::direct(addr(9))).is_err());
    // `a` is idle for 10 s now and is evicted first.
    let c = t.on_incoming(t0 + idle, addr(4)).unwrap();
    assert_eq!(t.resolve(&a), None);
    assert_eq!(t.resolve(&c), Some(Path::direct(addr(4))));
    // Learned entries go before the idle pinned one.
    assert!(t.on_incoming(t0 + idle * 100, addr(5)).is_some());
    assert_eq!(t.resolve(&pinned), Some(Path::direct(addr(1))));
    assert_eq!(t.len(), 3);
    assert_eq!(t.synthetic_for_peer(&peer(1)), Some(pinned));
    assert_eq!(t.remove(&pinned), Some(Path::direct(addr(1))));
    assert_eq!(t.remove(&pinned), None);
    assert_eq!(t.len(), 2);
}

#[test]
fn dialing_tells_whether_the_entry_is_new() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(10);
    let mut t = PathTable::new(2, idle);
    let learned = t.on_incoming(t0, addr(1000)).unwrap();
    // A known remote is reused as it is, pinned or not; its idle time is kept.
    assert_eq!(
        t.dial_remote(t0 + idle, addr(1000)),
        Ok(DialTarget {
            synthetic: learned,
            created: false
        })
    );
    assert_eq!(t.peer_of(&learned), None);
    let pinned = t.dial_peer(t0, peer(1), Path::direct(addr(2000))).unwrap();
    assert!(pinned.created);
    assert_eq!(
        t.dial_remote(t0, addr(2000)),
        Ok(DialTarget {
            synthetic: pinned.synthetic,
            created: false
        })
    );
    // Adopting or moving is not creating.
    let adopted = t.dial_peer(t0, peer(2), Path::direct(addr(1000))).unwrap();
    assert_eq!((adopted.synthetic, adopted.created), (learned, false));
    let moved = t.dial_peer(t0, peer(1), Path::direct(addr(2001))).unwrap();
    assert_eq!((moved.synthetic, moved.created), (pinned.synthetic, false));
    // Full, nothing idle: an error, not a silent drop.
    assert_eq!(
        t.dial_remote(t0, addr(3000)),
        Err(PathTableFull { capacity: 2 })
    );
    // Created over an evicted entry: the length stays, `created` still says so.
    let fresh = t.dial_remote(t0 + idle, addr(3000)).unwrap();
    assert!(fresh.created);
    assert_eq!(t.len(), 2);
    assert_eq!(t.resolve(&fresh.synthetic), Some(Path::direct(addr(3000))));
    assert_eq!(t.on_incoming(t0 + idle, addr(3000)), Some(fresh.synthetic));
}

#[test]
fn ids_are_never_reused() {
    let now = Instant::now();
    let mut t = PathTable::new(1, Duration::ZERO);
    let a = t.on_incoming(now, addr(1)).unwrap();
    t.remove(&a);
    let b = t.on_incoming(now, addr(1)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn each_path_remembers_when_it_last_delivered() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(2);
    let mut t = PathTable::default();
    let turn = addr(3478);
    let relay = Path::Relay {
        server: turn,
        channel: 0x4001,
    };
    let direct = Path::direct(addr(1000));
    let s = t.upsert_peer(t0, peer(1), relay).unwrap();
    assert_eq!(t.last_rx_on(&s, relay), None, "nothing arrived yet");
    assert_eq!(t.on_relayed(t0, turn, 0x4001), Some(s));
    assert!(t.set_path(&s, direct));
    assert_eq!(t.on_incoming(later, addr(1000)), Some(s));
    assert_eq!(t.last_rx_on(&s, relay), Some(t0));
    assert_eq!(t.last_rx_on(&s, direct), Some(later));
    // A removed path is forgotten, and the slots stay bounded.
    assert!(t.remove_path(&s, relay));
    for port in 2000..2010 {
        t.add_path(&s, Path::direct(addr(port)));
        t.on_incoming(later, addr(port));
    }
    assert_eq!(t.last_rx_on(&s, Path::direct(addr(2009))), Some(later));
    assert!(t.paths_of(&s).len() <= MAX_PATHS_PER_PEER);
}

#[test]
fn a_path_names_its_local_socket() {
    let now = Instant::now();
    let mut t = PathTable::default();
    let primary = Path::direct(addr(1000));
    let other = Path::Direct {
        remote: addr(1000),
        local: LocalSocket(3),
    };
    assert_eq!(primary.local(), LocalSocket::PRIMARY);
    assert_eq!(other.local(), LocalSocket(3));
    // The same remote from two local sockets is two paths of one peer.
    let s = t.upsert_peer(now, peer(1), primary).unwrap();
    assert!(t.add_path(&s, other));
    assert_eq!(t.paths_of(&s), vec![primary, other]);
    assert!(t.set_path(&s, other));
    assert_eq!(t.resolve(&s), Some(other));
    // Datagrams the primary socket receives are on the primary socket's path.
    assert_eq!(t.on_incoming(now, addr(1000)), Some(s));
    assert_eq!(t.last_rx_on(&s, primary), Some(now));
    assert_eq!(t.last_rx_on(&s, other), None);
    // Relay allocations live on the primary socket.
    let relay = Path::Relay {
        server: addr(3478),
        channel: 0x4000,
    };
    assert_eq!(relay.local(), LocalSocket::PRIMARY);
}
