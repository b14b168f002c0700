//! Deterministic simulation of discovery through a modelled NAT (RFC 4787 mapping and
//! filtering) against a modelled RFC 5780 server (four address/port combinations,
//! CHANGE-REQUEST honoured), with random delay, reordering and loss, over many seeds and a
//! simulated clock (RFC 8489 timers cost no real time).
//!
//! Per step of the simulation:
//! 1. The client's transmits go through the NAT's outbound rule (allocating a public port
//!    per the mapping behaviour and remembering the remote for filtering), may be lost,
//!    and are queued with a random delay.
//! 2. The earliest of (next delivery, client timer) happens: the server answers from the
//!    address CHANGE-REQUEST selects; answers pass the NAT's inbound filter, may be lost,
//!    and reach `handle_input`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::stun::{binding_response, parse_request, Change};
use super::*;

fn addr(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

const PRIMARY: ([u8; 4], u16) = ([198, 18, 0, 1], 3478);
const ALTERNATE: ([u8; 4], u16) = ([198, 18, 0, 2], 3479);

/// A modelled NAT (or, with `Mapping::NoNat`, a plain firewall).
struct Nat {
    mapping: Mapping,
    filtering: Filtering,
    public_ip: IpAddr,
    next_port: u16,
    /// mapping key -> public port
    ports: HashMap<(SocketAddr, Option<IpAddr>, Option<u16>), u16>,
    /// public port -> (internal address, remotes sent to)
    sessions: HashMap<u16, (SocketAddr, Vec<SocketAddr>)>,
}

impl Nat {
    fn new(mapping: Mapping, filtering: Filtering) -> Self {
        Nat {
            mapping,
            filtering,
            public_ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)),
            next_port: 40000,
            ports: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    fn outbound(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        let key = match self.mapping {
            Mapping::NoNat | Mapping::EndpointIndependent => (from, None, None),
            Mapping::AddressDependent => (from, Some(to.ip()), None),
            Mapping::AddressAndPortDependent => (from, Some(to.ip()), Some(to.port())),
        };
        let port = match self.mapping {
            Mapping::NoNat => from.port(),
            _ => *self.ports.entry(key).or_insert_with(|| {
                self.next_port += 7;
                self.next_port
            }),
        };
        let session = self.sessions.entry(port).or_insert((from, Vec::new()));
        session.1.push(to);
        let ip = if self.mapping == Mapping::NoNat {
            from.ip()
        } else {
            self.public_ip
        };
        SocketAddr::new(ip, port)
    }

    fn inbound(&self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let (internal, remotes) = self.sessions.get(&to.port())?;
        let allowed = match self.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => remotes.iter().any(|r| r.ip() == from.ip()),
            Filtering::AddressAndPortDependent => remotes.contains(&from),
        };
        allowed.then_some(*internal)
    }
}

/// A modelled RFC 5780 server on four address/port combinations.
fn serve(
    with_other: bool,
    to: SocketAddr,
    from: SocketAddr,
    data: &[u8],
) -> Option<(SocketAddr, Vec<u8>)> {
    let (id, change) = parse_request(data)?;
    let (ips, ports) = ([PRIMARY.0, ALTERNATE.0], [PRIMARY.1, ALTERNATE.1]);
    let ip_i = ips.iter().position(|ip| IpAddr::from(*ip) == to.ip())?;
    let port_i = ports.iter().position(|p| *p == to.port())?;
    let ip_i = if change.ip { 1 - ip_i } else { ip_i };
    let port_i = if change.port { 1 - port_i } else { port_i };
    let origin = addr(ips[ip_i], ports[port_i]);
    let other = with_other.then(|| addr(ALTERNATE.0, ALTERNATE.1));
    Some((origin, binding_response(id, from, other, origin)))
}

/// A datagram in flight: (from, to, bytes, towards the client?).
type Datagram = (SocketAddr, SocketAddr, Vec<u8>, bool);

struct Outcome {
    result: Result<NatBehaviour, NatError>,
    elapsed: Duration,
}

fn simulate(nat: &mut Nat, seed: u64, loss: f64, with_other: bool, config: NatConfig) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut now = start;
    let local = addr([10, 1, 0, 11], 5000);
    let server = addr(PRIMARY.0, PRIMARY.1);
    let mut machine = NatDiscovery::new(
        now,
        local,
        server,
        NatConfig {
            seed: Some(seed),
            ..config
        },
    );
    // Keyed by (delivery time, sequence number).
    let mut queue: BTreeMap<(Instant, u64), Datagram> = BTreeMap::new();
    let mut seq = 0u64;
    for _ in 0..100_000 {
        while let Some(t) = machine.poll_transmit() {
            let public = nat.outbound(local, t.dest);
            if rng.gen_bool(1.0 - loss) {
                let delay = Duration::from_millis(rng.gen_range(5..60));
                seq += 1;
                queue.insert((now + delay, seq), (public, t.dest, t.bytes, false));
            }
        }
        if let Some(NatEvent::Done(result)) = machine.poll_event() {
            return Outcome {
                result,
                elapsed: now - start,
            };
        }
        let timer = machine.poll_timeout().expect("running machine has a timer");
        let next = queue.keys().next().copied();
        match next {
            Some(key) if key.0 <= timer => {
                now = key.0;
                let Some((from, to, bytes, to_client)) = queue.remove(&key) else {
                    continue;
                };
                if to_client {
                    if let Some(internal) = nat.inbound(from, to) {
                        assert_eq!(internal, local);
                        machine.handle_input(now, from, &bytes);
                    }
                } else if let Some((origin, reply)) = serve(with_other, to, from, &bytes) {
                    if rng.gen_bool(1.0 - loss) {
                        let delay = Duration::from_millis(rng.gen_range(5..60));
                        seq += 1;
                        queue.insert((now + delay, seq), (origin, from, reply, true));
                    }
                }
            }
            _ => {
                now = timer;
                machine.handle_timeout(now);
            }
        }
    }
    panic!("simulation did not finish");
}

fn models() -> Vec<(Mapping, Filtering)> {
    use Filtering as F;
    use Mapping as M;
    let mut all = Vec::new();
    for m in [
        M::NoNat,
        M::EndpointIndependent,
        M::AddressDependent,
        M::AddressAndPortDependent,
    ] {
        for f in [
            F::EndpointIndependent,
            F::AddressDependent,
            F::AddressAndPortDependent,
        ] {
            all.push((m, f));
        }
    }
    all
}

#[test]
fn classifies_every_model_over_many_seeds_with_loss_and_reordering() {
    for (mapping, filtering) in models() {
        for seed in 0..150 {
            let loss = [0.0, 0.05, 0.1][seed as usize % 3];
            let mut nat = Nat::new(mapping, filtering);
            let out = simulate(&mut nat, seed, loss, true, NatConfig::default());
            let got = out
                .result
                .unwrap_or_else(|e| panic!("{mapping}/{filtering} seed {seed}: {e}"));
            assert_eq!(
                (got.mapping, got.filtering),
                (mapping, filtering),
                "seed {seed} loss {loss}"
            );
            assert_eq!(got.local, addr([10, 1, 0, 11], 5000));
            if mapping == Mapping::NoNat {
                assert_eq!(got.reflexive, got.local);
            } else {
                assert_eq!(got.reflexive.ip(), nat.public_ip);
            }
            assert_eq!(got.other_address, addr(ALTERNATE.0, ALTERNATE.1));
        }
    }
}

#[test]
fn lossless_run_takes_at_most_two_transaction_timeouts() {
    let config = NatConfig::with_transaction_timeout(Duration::from_secs(10));
    for (mapping, filtering) in models() {
        let mut nat = Nat::new(mapping, filtering);
        let out = simulate(&mut nat, 1, 0.0, true, config);
        let got = out.result.expect("lossless run succeeds");
        assert_eq!((got.mapping, got.filtering), (mapping, filtering));
        assert!(got.rtt.is_some());
        assert!(out.elapsed <= config.transaction_timeout() * 2 + Duration::from_secs(1));
    }
}

#[test]
fn server_without_other_address_is_reported() {
    let mut nat = Nat::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
    let out = simulate(&mut nat, 3, 0.0, false, NatConfig::default());
    assert!(
        matches!(out.result, Err(NatError::NoOtherAddress(_))),
        "{:?}",
        out.result
    );
}

#[test]
fn silent_server_times_out_after_rfc_8489_schedule() {
    let start = Instant::now();
    let server = addr(PRIMARY.0, PRIMARY.1);
    let mut m = NatDiscovery::new(
        start,
        addr([10, 1, 0, 11], 5000),
        server,
        NatConfig::default(),
    );
    let mut sends = Vec::new();
    let mut now = start;
    loop {
        while let Some(t) = m.poll_transmit() {
            assert_eq!(t.dest, server);
            sends.push((now - start).as_millis());
        }
        if let Some(NatEvent::Done(result)) = m.poll_event() {
            assert!(matches!(result, Err(NatError::Timeout { .. })));
            break;
        }
        now = m.poll_timeout().expect("timer");
        m.handle_timeout(now);
    }
    assert_eq!(sends, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!((now - start).as_millis(), 39500);
}

#[test]
fn foreign_and_stale_datagrams_are_ignored() {
    let now = Instant::now();
    let server = addr(PRIMARY.0, PRIMARY.1);
    let mut m = NatDiscovery::new(
        now,
        addr([10, 1, 0, 11], 5000),
        server,
        NatConfig::default(),
    );
    assert!(m.poll_transmit().is_some());
    assert!(!m.handle_input(now, server, b"hello"));
    let stale = binding_response([9; 12], server, None, server);
    assert!(!m.handle_input(now, server, &stale));
    assert!(!m.is_finished());
    let _ = Change::NONE;
}
