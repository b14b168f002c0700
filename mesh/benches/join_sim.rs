//! Join latency and host failover of the membership protocol in simulation, printed as
//! figures (run: `cargo bench -p mesh --features sim --bench join_sim`).
//!
//! Steps: for each seed, a host and then joiners 2..=8 one after the other on a network of
//! 50 ms RTT (0–2 ms jitter, no loss); each join's latency is the simulated time from
//! `Membership::join` to its `Joined` event. A punch plus QUIC handshake takes 3.7 RTT (as
//! measured for the punch server in `connect_sim`); a punch to a member that answers the
//! punch server's `Incoming` itself takes one RTT more. Then the host crashes and the time
//! until every survivor has the new host is measured.

use std::time::Duration;

use mesh::session::sim::{NetConfig, World};
use mesh::session::{Event, MembershipConfig};

const SEEDS: u64 = 200;
const RTT: Duration = Duration::from_millis(50);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn joined_at(w: &World, i: usize) -> Option<Duration> {
    w.nodes[i]
        .events
        .iter()
        .find_map(|(t, e)| (*e == Event::Joined).then(|| *t - w.start))
}

fn run(label: &str, member_dial_rtts: f64) {
    let net = NetConfig {
        one_way: RTT / 2,
        jitter: Duration::from_millis(2),
        loss: 0.0,
        dial_time: RTT.mul_f64(3.7),
        member_dial_time: RTT.mul_f64(member_dial_rtts),
    };
    let mut per_member: Vec<Vec<f64>> = vec![Vec::new(); 9];
    let mut failover = Vec::new();
    for seed in 0..SEEDS {
        let mut w = World::new(seed, 8, net.clone(), MembershipConfig::default());
        w.host(0);
        for i in 1..8 {
            let start = w.now - w.start;
            w.join(i, 0);
            w.run_for(Duration::from_secs(3));
            if let Some(t) = joined_at(&w, i) {
                per_member[i + 1].push((t - start).as_secs_f64() / RTT.as_secs_f64());
            }
        }
        let crash = w.now - w.start;
        w.crash(0);
        w.run_for(Duration::from_secs(10));
        let agreed = (1..8)
            .filter_map(|i| {
                w.nodes[i]
                    .events
                    .iter()
                    .find_map(|(t, e)| matches!(e, Event::HostChanged { .. }).then(|| *t - w.start))
            })
            .max();
        if let Some(t) = agreed {
            failover.push((t - crash).as_secs_f64() * 1000.0);
        }
    }
    println!("{label}: members' punch = {member_dial_rtts} RTT, host's = 3.7 RTT, RTT 50 ms, {SEEDS} seeds");
    for (n, v) in per_member.iter_mut().enumerate().skip(2) {
        v.sort_by(f64::total_cmp);
        println!(
            "  member {n}: join p50 {:.2} RTT ({:.0} ms), p99 {:.2} RTT, {} of {SEEDS} joined",
            percentile(v, 0.5),
            percentile(v, 0.5) * RTT.as_secs_f64() * 1000.0,
            percentile(v, 0.99),
            v.len()
        );
    }
    failover.sort_by(f64::total_cmp);
    println!(
        "  host crash -> every survivor has the new host: p50 {:.0} ms, p99 {:.0} ms (detection 3 s)",
        percentile(&failover, 0.5),
        percentile(&failover, 0.99)
    );
}

fn main() {
    run("as built (members answer Incoming)", 4.7);
    run(
        "what-if: members pre-authorise joiners at the punch server",
        3.7,
    );
}
