//! Relay benchmark: our `proxy` against coturn's `turnserver --use-auth-secret`, in the
//! same run, on loopback.
//!
//! Steps:
//!
//! 1. Start a UDP echo peer, our proxy (release build) and coturn (if installed).
//! 2. For each relay: `CLIENTS` clients allocate, bind a channel to the echo peer and keep
//!    `WINDOW` packets of `SIZE` bytes in flight for `SECS` seconds after a 1 s warm-up.
//!    Report relayed packets per second (both directions: two per round trip), loss,
//!    p50/p99 round-trip time, and the relay's CPU time per relayed packet
//!    (`/proc/PID/stat`, 10 ms resolution).
//! 3. Memory per allocation: the relay's resident memory before and after `ALLOCS`
//!    allocations, each with a channel (kernel socket memory not included).
//!
//! Run: `cargo bench -p proxy --bench relay_load`. Settings (env): `RELAY_BENCH_SECS`
//! (5), `RELAY_BENCH_CLIENTS` (4), `RELAY_BENCH_WINDOW` (32), `RELAY_BENCH_SIZE` (1200),
//! `RELAY_BENCH_ALLOCS` (500), `RELAY_BENCH_COTURN` (1; 0 skips coturn). The whole run is
//! bounded: two loads of `SECS + 1` s plus setup.

#[path = "../../tests/common/mod.rs"]
mod common;
mod load;
mod servers;

use std::time::Duration;

use common::EchoPeer;
use load::{Load, Measured};
use servers::{rss_kib, Relay, TICKS_PER_SEC};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One relay's figures.
struct Figures {
    name: &'static str,
    pps: f64,
    loss: f64,
    p50_us: u64,
    p99_us: u64,
    cpu_us_per_pkt: f64,
    kib_per_alloc: f64,
}

fn figures(relay: &Relay, m: &Measured, kib_per_alloc: f64) -> Figures {
    let relayed = 2.0 * m.echoes as f64;
    let cpu_secs = m.cpu_ticks as f64 / TICKS_PER_SEC;
    Figures {
        name: relay.name,
        pps: relayed / m.secs,
        loss: if m.sent == 0 {
            0.0
        } else {
            1.0 - m.received as f64 / m.sent as f64
        },
        p50_us: m.rtt_us.value_at_quantile(0.5),
        p99_us: m.rtt_us.value_at_quantile(0.99),
        cpu_us_per_pkt: if relayed == 0.0 {
            0.0
        } else {
            cpu_secs * 1e6 / relayed
        },
        kib_per_alloc,
    }
}

/// Resident KiB per allocation over `n` allocations with a channel each.
fn memory_per_allocation(relay: &Relay, peer: &EchoPeer, n: usize) -> f64 {
    let before = rss_kib(relay.pid());
    let sessions: Vec<_> = (0..n)
        .map(|i| load::session(relay.addr, peer.addr, &format!("mem{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(relay.pid());
    for s in sessions {
        // Free it, or a later client on the same local port would meet it (437).
        let _ = s.close();
    }
    after.saturating_sub(before) as f64 / n as f64
}

fn measure(relay: &Relay, peer: &EchoPeer, load: Load, allocs: usize) -> Figures {
    let m = load::run(relay.addr, relay.pid(), peer.addr, load);
    let kib = memory_per_allocation(relay, peer, allocs);
    figures(relay, &m, kib)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter) is ignored.
    let load = Load {
        clients: env_or("RELAY_BENCH_CLIENTS", 4) as usize,
        window: env_or("RELAY_BENCH_WINDOW", 32) as usize,
        size: env_or("RELAY_BENCH_SIZE", 1200).max(16) as usize,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(env_or("RELAY_BENCH_SECS", 5).clamp(1, 60)),
    };
    let allocs = env_or("RELAY_BENCH_ALLOCS", 500).clamp(1, 5000) as usize;
    let peer = EchoPeer::start();
    println!(
        "relay_load: {} clients, window {}, {} B ChannelData, {} s (after 1 s warm-up), loopback",
        load.clients,
        load.window,
        load.size,
        load.duration.as_secs()
    );
    let mut results = Vec::new();
    {
        let ours = Relay::ours("30000-39999");
        results.push(measure(&ours, &peer, load, allocs));
    }
    if env_or("RELAY_BENCH_COTURN", 1) != 0 {
        match Relay::coturn(40000, 49999) {
            Some(coturn) => results.push(measure(&coturn, &peer, load, allocs)),
            None => println!("coturn: turnserver not found or not answering; skipped"),
        }
    }
    println!(
        "{:<8} {:>12} {:>8} {:>9} {:>9} {:>14} {:>14}",
        "relay", "relayed/s", "loss", "p50 RTT", "p99 RTT", "CPU/packet", "RSS/alloc"
    );
    for f in &results {
        println!(
            "{:<8} {:>12.0} {:>7.3}% {:>7}us {:>7}us {:>12.2}us {:>11.2}KiB",
            f.name,
            f.pps,
            f.loss * 100.0,
            f.p50_us,
            f.p99_us,
            f.cpu_us_per_pkt,
            f.kib_per_alloc
        );
    }
    if let [ours, coturn] = &results[..] {
        println!(
            "proxy vs coturn: rate x{:.2}, CPU per packet x{:.2}",
            ours.pps / coturn.pps.max(1.0),
            ours.cpu_us_per_pkt / coturn.cpu_us_per_pkt.max(1e-9)
        );
    }
}
