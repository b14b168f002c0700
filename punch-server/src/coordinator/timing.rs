//! RTT estimation and the common start time of a punch attempt.
//!
//! Steps:
//! 1. Every RTT sample of a peer (the server's Ping/Pong, or the QUIC connection's own
//!    estimate fed by the driver) updates an RFC 6298 estimator: the first sample sets
//!    `srtt = r, rttvar = r/2`; later ones `rttvar = 3/4 rttvar + 1/4 |srtt - r|`,
//!    `srtt = 7/8 srtt + 1/8 r`.
//! 2. On accept, [`plan_start`] picks the lead time `L` from now to the common start `S`:
//!
//!    ```text
//!    bound(x) = srtt(x) + 4 rttvar(x)             (RTO-style upper bound of x's RTT)
//!    L        = max(floor, max(bound(a), bound(b)) + margin)
//!    start_in(x) = L - srtt(x) / 2
//!    ```
//!
//!    A message's one-way delay is at most the round trip (both directions take a positive
//!    time), and the RTT stays below `bound` with high probability, so each `Go` arrives
//!    before `S` even on a fully asymmetric path. Each side waits `start_in(x)` after
//!    receiving its `Go`; with its delay estimated as half its RTT, both sides send their
//!    first probe at `S` (on symmetric paths exactly at once; otherwise off by the
//!    asymmetry, which no clock-free scheme can see).
//! 3. Versus RakNet's `max(100 ms, 4 x the larger ping)`: a stable 40 ms path waits about
//!    50 ms instead of 160 ms, a LAN the 20 ms floor instead of 100 ms, while a jittery path
//!    (large rttvar) still gets the head room it needs. A `Go` that still arrives late makes
//!    that side start at once; probes repeat for a while, so the pair still meets.

use std::time::Duration;

use super::config::CoordConfig;

/// RFC 6298 smoothed RTT and RTT variation of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// Takes one RTT sample, clamped to `max`.
    pub fn sample(&mut self, rtt: Duration, max: Duration) {
        let r = rtt.min(max);
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// The smoothed RTT, if any sample was taken.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The RTT variation (zero before the first sample).
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// `srtt` (or `initial`) and `rttvar` (or `initial / 2`) as RFC 6298 starts them.
    fn or_initial(&self, initial: Duration) -> (Duration, Duration) {
        match self.srtt {
            Some(s) => (s, self.rttvar),
            None => (initial, initial / 2),
        }
    }

    /// Upper bound of the RTT with high probability: `srtt + 4 rttvar`.
    pub fn bound(&self, initial: Duration) -> Duration {
        let (s, v) = self.or_initial(initial);
        s.saturating_add(v.saturating_mul(4))
    }

    /// Estimated one-way delay: half the smoothed RTT.
    pub fn one_way(&self, initial: Duration) -> Duration {
        self.or_initial(initial).0 / 2
    }
}

/// When the two sides of an attempt start probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPlan {
    /// From now (when both `Go` messages leave the server) to the common start.
    pub lead: Duration,
    /// What the requester's `Go` says: wait this long after receiving it.
    pub start_in_requester: Duration,
    /// What the target's `Go` says.
    pub start_in_target: Duration,
}

/// The common start of an attempt between `requester` and `target` (formula in the module
/// docs).
pub fn plan_start(
    requester: &RttEstimator,
    target: &RttEstimator,
    config: &CoordConfig,
) -> StartPlan {
    let initial = config.initial_rtt;
    let worst = requester.bound(initial).max(target.bound(initial));
    let lead = worst
        .saturating_add(config.start_margin)
        .max(config.start_floor);
    StartPlan {
        lead,
        start_in_requester: lead.saturating_sub(requester.one_way(initial)),
        start_in_target: lead.saturating_sub(target.one_way(initial)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn stable(rtt: Duration) -> RttEstimator {
        let mut e = RttEstimator::default();
        for _ in 0..50 {
            e.sample(rtt, ms(2000));
        }
        e
    }

    #[test]
    fn estimator_follows_rfc6298() {
        let mut e = RttEstimator::default();
        assert_eq!(e.bound(ms(200)), ms(600));
        e.sample(ms(100), ms(2000));
        assert_eq!((e.srtt(), e.rttvar()), (Some(ms(100)), ms(50)));
        e.sample(ms(180), ms(2000));
        assert_eq!(e.srtt(), Some(ms(110)));
        assert_eq!(e.rttvar(), ms(57) + Duration::from_micros(500));
        e.sample(ms(60_000), ms(2000));
        assert!(e.srtt().unwrap() < ms(400), "samples are clamped");
    }

    #[test]
    fn lead_beats_raknet_and_respects_floor() {
        let c = CoordConfig::default();
        let lan = plan_start(&stable(ms(1)), &stable(ms(1)), &c);
        assert_eq!(lan.lead, c.start_floor);
        let wan = plan_start(&stable(ms(40)), &stable(ms(30)), &c);
        let raknet = ms(100).max(ms(40) * 4);
        assert!(wan.lead < raknet, "{:?} vs {raknet:?}", wan.lead);
        assert!(wan.lead >= ms(40) + c.start_margin);
        // Unknown RTTs are treated conservatively.
        let unknown = plan_start(&RttEstimator::default(), &stable(ms(10)), &c);
        assert!(unknown.lead >= ms(600));
    }

    #[test]
    fn jittery_paths_still_get_go_before_start() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let c = CoordConfig::default();
        for seed in 0..2000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            // Each side: a base RTT of 1-400 ms with up to +-25 % jitter per sample.
            let mut side = || {
                let base = rng.gen_range(1_000..400_000u64);
                let jitter = rng.gen_range(0.0..0.25);
                let draw = move |rng: &mut StdRng| {
                    let f = 1.0 + rng.gen_range(-jitter..=jitter);
                    Duration::from_micros((base as f64 * f) as u64)
                };
                let mut e = RttEstimator::default();
                for _ in 0..rng.gen_range(1..20) {
                    e.sample(draw(&mut rng), c.max_rtt);
                }
                // The Go's own transit: anywhere from half to all of a fresh RTT.
                let rtt = draw(&mut rng);
                let one_way = rtt.mul_f64(rng.gen_range(0.5..=1.0));
                (e, one_way)
            };
            let (a, owd_a) = side();
            let (b, owd_b) = side();
            let p = plan_start(&a, &b, &c);
            assert!(owd_a < p.lead && owd_b < p.lead, "seed {seed}: {p:?}");
        }
    }

    #[test]
    fn symmetric_paths_start_together_and_go_arrives_first() {
        let c = CoordConfig::default();
        for (ra, rb) in [(1, 1), (10, 250), (300, 20), (80, 80), (2, 900)] {
            let (a, b) = (stable(ms(ra)), stable(ms(rb)));
            let p = plan_start(&a, &b, &c);
            // Symmetric paths: each Go takes rtt/2; both sides start at `lead`.
            let start_a = ms(ra) / 2 + p.start_in_requester;
            let start_b = ms(rb) / 2 + p.start_in_target;
            assert_eq!(start_a, p.lead);
            assert_eq!(start_b, p.lead);
            // Even a fully one-sided path (one-way delay = whole RTT) arrives before start.
            assert!(ms(ra) < p.lead && ms(rb) < p.lead, "{ra} {rb} {p:?}");
        }
    }
}
