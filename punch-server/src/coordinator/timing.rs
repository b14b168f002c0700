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
//!    one_way_bound(x) = srtt(x) / 2 + 4 rttvar(x)   (RTO-style bound of x's one-way delay)
//!    L                = max(floor, max(one_way_bound(a), one_way_bound(b)) + margin)
//!    start_in(x)      = L - srtt(x) / 2
//!    ```
//!
//!    On a path about as fast both ways (the common case) a message takes half the RTT,
//!    and jitter stays within `4 rttvar` with high probability, so each `Go` arrives before
//!    `S`. Each side waits `start_in(x)` after receiving its `Go`, so both send their
//!    first probe at `S` (on symmetric paths exactly at once; otherwise off by the
//!    asymmetry, which no clock-free scheme can see). Bounding the one-way delay rather
//!    than the whole RTT saves half an RTT on every connect; the price is paid only on a
//!    strongly asymmetric path, where a `Go` arriving after `S` makes that side start at
//!    once and the first check of the other side may meet a closed NAT filter: its
//!    retransmission (or the late side's triggered check) completes the pair one check
//!    interval later, it does not fail.
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

    /// Upper bound of the one-way delay with high probability: `srtt / 2 + 4 rttvar`.
    pub fn one_way_bound(&self, initial: Duration) -> Duration {
        let (s, v) = self.or_initial(initial);
        (s / 2).saturating_add(v.saturating_mul(4))
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
    let worst = requester
        .one_way_bound(initial)
        .max(target.one_way_bound(initial));
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
        assert_eq!(e.one_way_bound(ms(200)), ms(500));
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
        assert!(wan.lead >= ms(20) + c.start_margin);
        // Stable paths wait about half an RTT plus the margin, not a whole RTT.
        assert!(wan.lead < ms(40), "{:?}", wan.lead);
        // Unknown RTTs are treated conservatively.
        let unknown = plan_start(&RttEstimator::default(), &stable(ms(10)), &c);
        assert!(unknown.lead >= ms(500));
    }

    #[test]
    fn jittery_paths_rarely_get_go_after_start() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let c = CoordConfig::default();
        let (mut late, mut worst) = (0u32, 0.0f64);
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
                // The Go's own transit: half of a fresh RTT, the path up to 20 % lopsided.
                let rtt = draw(&mut rng);
                let one_way = rtt.mul_f64(rng.gen_range(0.4..=0.6));
                (e, one_way)
            };
            let (a, owd_a) = side();
            let (b, owd_b) = side();
            let p = plan_start(&a, &b, &c);
            for owd in [owd_a, owd_b] {
                if owd >= p.lead {
                    late += 1;
                    worst = worst.max((owd - p.lead).as_secs_f64() / owd.as_secs_f64());
                }
            }
        }
        // Jitter beyond 4 rttvar of the samples seen is rare: at most 1 % of the Go
        // messages arrive after the start, and then by a fraction of their transit only
        // (that side starts at once; its checks meet the other side's retransmissions).
        assert!(
            late <= 40,
            "{late} of 4000 Go messages arrived after the start"
        );
        assert!(worst < 0.5, "a late Go was {worst:.2} of its transit late");
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
            // The lead is half the larger RTT plus the margin (or the floor).
            let half = ms(ra.max(rb)) / 2;
            let expected = (half + c.start_margin).max(c.start_floor);
            assert!(p.lead.abs_diff(expected) < ms(1), "{ra} {rb} {p:?}");
        }
    }
}
