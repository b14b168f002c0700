//! Connect time in the NAT lab: `peer dial` through our punch server for every punchable
//! pair of NAT types, `--runs` dials per pair (default 30), p50/p99/max of the `ms` that
//! `peer dial` reports (from the call to `connect` to an established QUIC connection: the
//! request, the server's `Go`, probing, and the QUIC handshake).
//!
//! Needs root (network namespaces, nftables); traffic stays inside the lab's namespaces.
//! Build the binaries first, then run:
//!
//! ```text
//! cargo build --release -p punch-server -p examples
//! cargo bench -p examples --bench lab_connect -- --runs 30
//! ```
//!
//! Steps per pair: build a lab (dialer behind router A, listener behind router B), start
//! `punch-server` and `peer listen`, run the dials one after another, 500 ms apart (the
//! coordinator allows a peer 2 punch attempts per second; each dial is a new process and a
//! new key, so nothing is cached), collect `ms`, tear the lab down.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use natlab::{Host, Lab, NatType};

fn measure(a: NatType, b: NatType, runs: usize) -> Result<Vec<f64>> {
    let lab = Lab::builder()
        .label("bench")
        .router_a(a)
        .router_b(b)
        .build()
        .context("the lab needs root")?;
    let server = common::start_punch_server(&lab, false)?;
    let listener = common::start_listener(&lab, Host::LanB1, &server, false)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        // The coordinator allows a peer 2 punch attempts/s (burst 10): pace the dials.
        std::thread::sleep(Duration::from_millis(500));
        let d = common::dial(&lab, Host::LanA1, &server, &listener.peer, 1)?;
        let ms = d
            .event("connected")
            .and_then(|l| l["ms"].as_f64())
            .with_context(|| format!("{a} x {b}: dial failed: {:?} {}", d.lines, d.stderr))?;
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn main() -> Result<()> {
    let runs = common::runs_arg(30)?;
    println!(
        "connect time in the NAT lab, {runs} dials per pair (ms from connect() to established)"
    );
    let mut all = Vec::new();
    for (i, a) in NatType::ALL.iter().enumerate() {
        for b in NatType::ALL.iter().skip(i) {
            if !common::punchable(*a, *b) {
                continue;
            }
            let t = measure(*a, *b, runs)?;
            println!(
                "{:>15} x {:<15} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
                a.name(),
                b.name(),
                common::percentile(&t, 50.0),
                common::percentile(&t, 99.0),
                t.last().copied().unwrap_or(f64::NAN)
            );
            all.extend(t);
        }
    }
    all.sort_by(f64::total_cmp);
    println!(
        "all punchable pairs ({} dials): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        all.len(),
        common::percentile(&all, 50.0),
        common::percentile(&all, 99.0),
        all.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
