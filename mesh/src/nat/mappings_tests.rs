//! [`MappingProbe`] against a simulated STUN server behind simulated NATs (sequential,
//! random, endpoint-independent), with loss: the ports it reports, and how it fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::nat::stun::{binding_response, parse_request};
use crate::punch::predict::{predict, Observed, PredictConfig, Prediction};

const PRIMARY: &str = "198.18.0.1:3478";
const ALT: &str = "198.18.0.2:3479";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[derive(Clone, Copy)]
enum Nat {
    /// One port per new destination, in sequence.
    Sequential,
    /// One random port per new destination.
    Random,
    /// The same port for every destination.
    Independent,
}

/// Runs a probe through `nat`, dropping each datagram with `loss`; the event.
fn run(nat: Nat, seed: u64, loss: f64, alternate: bool) -> MappingEvent {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut now = t0;
    let primary = addr(PRIMARY);
    let mut probe = MappingProbe::new(now, primary, seed);
    // The control connection's flow exists already.
    let mut mappings: HashMap<SocketAddr, u16> = HashMap::from([(primary, 40_000)]);
    let mut next_port = 40_001u16;
    for _ in 0..1000 {
        if let Some(event) = probe.poll_event() {
            return event;
        }
        while let Some(t) = probe.poll_transmit() {
            let port = *mappings.entry(t.destination).or_insert_with(|| match nat {
                Nat::Sequential => {
                    next_port += 1;
                    next_port - 1
                }
                Nat::Random => rng.gen_range(1024..65535),
                Nat::Independent => 40_000,
            });
            if rng.gen_bool(loss) {
                continue;
            }
            let (id, _) = parse_request(&t.contents).expect("a Binding request");
            let mapped = SocketAddr::new("198.18.5.5".parse().expect("ip"), port);
            let other = alternate.then(|| addr(ALT));
            let answer = binding_response(id, mapped, other, t.destination);
            if !rng.gen_bool(loss) {
                assert!(probe.handle_input(now, t.destination, &answer));
            }
        }
        match probe.poll_timeout() {
            Some(t) => now = now.max(t),
            None => now += Duration::from_millis(10),
        }
        probe.handle_timeout(now);
    }
    panic!("the probe never ended");
}

#[test]
fn a_sequential_nat_is_predicted_and_a_random_one_is_not() {
    let config = PredictConfig::default();
    for seed in 0..50 {
        let MappingEvent::Observed { reflexive, fresh } = run(Nat::Sequential, seed, 0.1, true)
        else {
            continue; // lost three times in a row: counted below
        };
        assert_eq!(reflexive.port(), 40_000);
        assert_eq!(fresh, vec![40_001, 40_002], "seed {seed}");
        let p = predict(&Observed { ports: fresh }, config);
        assert!(matches!(p, Prediction::Ports { step: 1, ref ports } if ports[0] == 40_003));
    }
    for seed in 0..50 {
        if let MappingEvent::Observed { fresh, .. } = run(Nat::Random, seed, 0.0, true) {
            let p = predict(&Observed { ports: fresh }, config);
            // Two random ports within 16 of each other happen, rarely; then a window of
            // unanswered checks is all it costs.
            if (seed as usize) < 40 {
                assert!(!matches!(p, Prediction::Stable(_)), "seed {seed}");
            }
        }
    }
    let MappingEvent::Observed { fresh, .. } = run(Nat::Independent, 1, 0.0, true) else {
        panic!("observed");
    };
    let p = predict(&Observed { ports: fresh }, config);
    assert_eq!(p, Prediction::Stable(40_000));
}

#[test]
fn without_an_alternate_address_or_answers_the_probe_ends() {
    assert_eq!(
        run(Nat::Sequential, 1, 0.0, false),
        MappingEvent::NoAlternate
    );
    assert!(matches!(
        run(Nat::Sequential, 1, 1.0, true),
        MappingEvent::Failed(_)
    ));
}

#[test]
fn most_probes_survive_ten_percent_loss() {
    let ok = (0..200)
        .filter(|s| {
            matches!(
                run(Nat::Sequential, *s, 0.1, true),
                MappingEvent::Observed { .. }
            )
        })
        .count();
    // Three tries per request, three requests: about 97 % end with the ports.
    assert!(ok >= 180, "{ok} of 200");
}
