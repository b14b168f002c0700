//! Property tests: the sans-IO core never panics and never answers out of bounds.
//!
//! Inputs are arbitrary bytes and mutations of valid Binding requests (which reach the
//! deeper parsing steps), from arbitrary sources, on arbitrary local sockets.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use punch_server::{Endpoints, Outcome, SocketId, StunConfig, StunServer};

fn server(alt: bool) -> StunServer {
    let primary: SocketAddr = "198.51.100.1:3478".parse().expect("addr");
    let alternate = alt.then(|| "198.51.100.2:3479".parse().expect("addr"));
    StunServer::new(StunConfig::default(), Endpoints::new(primary, alternate))
}

fn valid_request(attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[9; 12]);
    for (t, v) in attrs {
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&(v.len() as u16).to_be_bytes());
        m.extend_from_slice(v);
        m.resize((m.len() + 3) & !3, 0);
    }
    let len = ((m.len() - 20) as u16).to_be_bytes();
    m[2..4].copy_from_slice(&len);
    m
}

fn check(s: &mut StunServer, local: usize, ip: IpAddr, port: u16, d: &[u8], ms: u64) {
    let t = Instant::now() + Duration::from_millis(ms);
    let from = SocketAddr::new(ip, port);
    let sockets: Vec<SocketId> = s.endpoints().sockets().map(|(id, _)| id).collect();
    if let Outcome::Transmit(tx) = s.handle_input(t, SocketId::ALL[local % 4], from, d) {
        assert!(tx.contents.len() <= d.len() * 4, "amplification");
        assert!(tx.contents.len() >= 20);
        assert!(sockets.contains(&tx.local));
        assert_eq!(tx.destination.ip(), ip.to_canonical());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        d in proptest::collection::vec(any::<u8>(), 0..1600),
        alt in any::<bool>(),
        local in 0usize..4,
        ip in any::<IpAddr>(),
        port in any::<u16>(),
    ) {
        let mut s = server(alt);
        check(&mut s, local, ip, port, &d, 0);
    }

    #[test]
    fn mutated_requests_never_panic(
        attrs in proptest::collection::vec(
            (prop_oneof![Just(0x0003u16), Just(0x0027), Just(0x0026), Just(0x8028),
                         Just(0x0020), Just(0x0006), Just(0x0008), any::<u16>()],
             proptest::collection::vec(any::<u8>(), 0..40)),
            0..6),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        alt in any::<bool>(),
        local in 0usize..4,
        port in 1u16..,
    ) {
        let mut d = valid_request(&attrs);
        for (at, x) in flips {
            let i = at % d.len();
            d[i] ^= x;
        }
        let mut s = server(alt);
        check(&mut s, local, "192.0.2.1".parse().expect("ip"), port, &d, 0);
        check(&mut s, local, "2001:db8::1".parse().expect("ip"), port, &d, 5);
        let c = s.counters();
        prop_assert_eq!(c.received, 2);
        prop_assert_eq!(c.received, c.not_stun + c.success_responses + c.error_responses + c.dropped_total());
    }
}
