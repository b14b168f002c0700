//! Port prediction for NATs with address-and-port-dependent mapping (RFC 4787 "symmetric")
//! that allocate public ports predictably, as RakNet's NAT punchthrough and many NAT
//! traversal stacks do: a bounded window of candidate ports where the NAT's next mapping
//! will likely land.
//!
//! Steps:
//! 1. The punch server sees the peer's mappings toward its two addresses (RFC 5780
//!    discovery, tests I to III), in the order they were created: [`Observed`].
//! 2. [`predict`] looks at the gaps between consecutive ports. If every gap is the same
//!    small step (1 for a sequential NAT, or a fixed delta of at most
//!    [`PredictConfig::max_step`]), the NAT is predictable; otherwise (random allocation,
//!    gaps that disagree) nothing is predicted and the caller does not try.
//! 3. A predictable NAT's next mapping is at `last + step`, or a few steps later when other
//!    traffic from the same host took ports in between: the prediction is the window
//!    `last + step × k` for `k = 1..=`[`PredictConfig::window`], staying inside the port
//!    range. The peer offers these as extra candidates; the other side checks them like
//!    any other, so a wrong guess costs a few unanswered checks and nothing else.

/// Mappings seen for one local socket, in creation order (public ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The public ports, oldest first (at least two are needed).
    pub ports: Vec<u16>,
}

/// Tunables of [`predict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictConfig {
    /// Largest step between consecutive mappings still taken as a pattern. Default 16.
    pub max_step: u16,
    /// How many ports ahead are offered. Default 8.
    pub window: u16,
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            max_step: 16,
            window: 8,
        }
    }
}

/// What [`predict`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prediction {
    /// Every mapping was `step` after the previous one: try these ports, likeliest first.
    Ports {
        /// The gap between consecutive mappings.
        step: i32,
        /// The predicted ports.
        ports: Vec<u16>,
    },
    /// The same port every time: the mapping is endpoint-independent after all.
    Stable(u16),
    /// No pattern (random allocation, or too few observations): do not try.
    Unpredictable,
}

/// Predicts where the NAT's next mapping will be (see the module docs).
pub fn predict(observed: &Observed, config: PredictConfig) -> Prediction {
    let ports = &observed.ports;
    if ports.len() < 2 {
        return Prediction::Unpredictable;
    }
    let steps: Vec<i32> = ports
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    let step = steps[0];
    if steps.iter().any(|s| *s != step) {
        return Prediction::Unpredictable;
    }
    if step == 0 {
        return Prediction::Stable(ports[0]);
    }
    if step.unsigned_abs() > u32::from(config.max_step) {
        return Prediction::Unpredictable;
    }
    let last = i32::from(ports[ports.len() - 1]);
    let predicted: Vec<u16> = (1..=i32::from(config.window))
        .map(|k| last + step * k)
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p >= 1024)
        .collect();
    if predicted.is_empty() {
        return Prediction::Unpredictable;
    }
    Prediction::Ports {
        step,
        ports: predicted,
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A symmetric NAT model: each new mapping takes the next port (`step` apart), and
    /// other hosts' traffic takes a random number of ports in between (`busy` per new
    /// mapping, on average), or a random port when `random` is set.
    struct Nat {
        next: u16,
        step: u16,
        busy: f64,
        random: bool,
    }

    impl Nat {
        fn map(&mut self, rng: &mut StdRng) -> u16 {
            if self.random {
                return rng.gen_range(1024..=65535);
            }
            while rng.gen_bool(self.busy) {
                self.next = self.next.wrapping_add(self.step); // someone else's mapping
            }
            let port = self.next;
            self.next = self.next.wrapping_add(self.step);
            port
        }
    }

    /// Three discovery mappings, then the mapping toward the peer: was it predicted?
    fn trial(seed: u64, nat: &mut Nat) -> (Prediction, u16) {
        let mut rng = StdRng::seed_from_u64(seed);
        let ports = (0..3).map(|_| nat.map(&mut rng)).collect();
        let prediction = predict(&Observed { ports }, PredictConfig::default());
        (prediction, nat.map(&mut rng))
    }

    #[test]
    fn a_sequential_nat_is_predicted_within_the_window() {
        let mut hits = 0;
        for seed in 0..500 {
            let mut nat = Nat {
                next: 40_000 + seed as u16,
                step: 1,
                busy: 0.2,
                random: false,
            };
            let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
            // The discovery mappings come back to back (no one else in between).
            let ports: Vec<u16> = (0..3)
                .map(|_| {
                    let p = nat.next;
                    nat.next += 1;
                    p
                })
                .collect();
            let Prediction::Ports { step, ports: guess } =
                predict(&Observed { ports }, PredictConfig::default())
            else {
                panic!("seed {seed}: a sequential NAT must be predicted");
            };
            assert_eq!(step, 1);
            assert!(guess.len() <= 8);
            if guess.contains(&nat.map(&mut rng)) {
                hits += 1;
            }
        }
        // With 20 % of other traffic per port the next mapping is within 8 ports almost
        // always (1 - 0.2^8).
        assert!(hits >= 495, "{hits} of 500");
    }

    #[test]
    fn a_fixed_delta_nat_is_predicted() {
        let mut nat = Nat {
            next: 20_000,
            step: 4,
            busy: 0.0,
            random: false,
        };
        let (prediction, next) = trial(1, &mut nat);
        match prediction {
            Prediction::Ports { step, ports } => {
                assert_eq!(step, 4);
                assert_eq!(ports[0], next, "the very next port first");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_random_nat_is_not_tried() {
        let mut tried = 0;
        for seed in 0..1000 {
            let mut nat = Nat {
                next: 0,
                step: 0,
                busy: 0.0,
                random: true,
            };
            if matches!(trial(seed, &mut nat).0, Prediction::Ports { .. }) {
                tried += 1;
            }
        }
        // Two random gaps agree and are small with odds of about 1 in 65536 × 2000.
        assert_eq!(tried, 0);
    }

    #[test]
    fn edge_cases() {
        let p = |ports: &[u16]| {
            predict(
                &Observed {
                    ports: ports.to_vec(),
                },
                PredictConfig::default(),
            )
        };
        assert_eq!(p(&[5000]), Prediction::Unpredictable);
        assert_eq!(p(&[5000, 5000, 5000]), Prediction::Stable(5000));
        assert_eq!(
            p(&[5000, 5100, 5200]),
            Prediction::Unpredictable,
            "step above 16"
        );
        assert_eq!(
            p(&[5000, 5001, 5003]),
            Prediction::Unpredictable,
            "gaps disagree"
        );
        match p(&[65530, 65532, 65534]) {
            Prediction::Ports { ports, .. } => {
                assert!(ports.is_empty() || ports.iter().all(|x| *x > 65534))
            }
            Prediction::Unpredictable => {}
            other => panic!("{other:?}"),
        }
        match p(&[1030, 1028, 1026]) {
            Prediction::Ports { step, ports } => {
                assert_eq!(step, -2);
                assert_eq!(ports, vec![1024]);
            }
            other => panic!("{other:?}"),
        }
    }
}
