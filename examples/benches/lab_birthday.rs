//! Birthday probing in the NAT lab: time from an established (relayed) connection to the
//! direct path birthday probing finds, and the checks it spends, between a symmetric NAT
//! with random ports and a port-restricted one, both ways (`--runs` dials each, default
//! 20): p50/p99/max of `after_ms` of the `path_changed` to `direct`, the success rate, and
//! the dialer's checks per run (probes on the easy side, checks from the extra sockets on
//! the hard side).
//!
//! Needs root (network namespaces, nftables); traffic stays inside the lab's namespaces.
//! Build the binaries first, then run:
//!
//! ```text
//! cargo build --release -p punch-server -p proxy -p examples
//! cargo bench -p examples --bench lab_birthday -- --runs 20
//! ```
//!
//! Steps per direction: build a lab, start `proxy` and `punch-server` (RFC 5780 mode, so
//! both nodes observe their NAT's mappings), `peer listen` behind B, then run the dials
//! one after another, each a new process and key, holding the connection idle until it
//! runs direct (at most 8 s) before a short echo.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use natlab::{Host, Lab, NatType};

fn measure(a: NatType, b: NatType, runs: usize) -> Result<Vec<common::UntilDirect>> {
    let lab = Lab::builder()
        .label("bbench")
        .router_a(a)
        .router_b(b)
        .build()
        .context("the lab needs root")?;
    let servers = common::start_relay_servers(&lab, true)?;
    let listener = common::start_listener(&lab, Host::LanB1, &servers.punch, false)?;
    // Let the listener allocate its relay and observe its mappings.
    std::thread::sleep(Duration::from_millis(500));
    (0..runs)
        .map(|_| {
            // The coordinator allows a peer 2 punch attempts/s (burst 10): pace the dials.
            std::thread::sleep(Duration::from_millis(500));
            common::dial_until_direct(
                &lab,
                &servers.punch,
                &listener.peer,
                1024,
                Duration::from_secs(8),
            )
        })
        .collect()
}

fn main() -> Result<()> {
    let runs = common::runs_arg(20)?;
    println!("direction                          direct  p50 ms  p99 ms  max ms  checks p50/max");
    for (a, b, name) in [
        (
            NatType::PortRestricted,
            NatType::Symmetric,
            "port-restricted -> symmetric",
        ),
        (
            NatType::Symmetric,
            NatType::PortRestricted,
            "symmetric -> port-restricted",
        ),
    ] {
        let all = measure(a, b, runs)?;
        let mut times: Vec<f64> = all
            .iter()
            .filter_map(common::UntilDirect::direct_after_ms)
            .collect();
        times.sort_by(f64::total_cmp);
        let mut checks: Vec<f64> = all.iter().map(|r| r.checks() as f64).collect();
        checks.sort_by(f64::total_cmp);
        println!(
            "{name:<34} {:>3}/{:<3} {:>7.1} {:>7.1} {:>7.1}  {:>6.0}/{:.0}",
            times.len(),
            all.len(),
            common::percentile(&times, 50.0),
            common::percentile(&times, 99.0),
            times.last().copied().unwrap_or(f64::NAN),
            common::percentile(&checks, 50.0),
            checks.last().copied().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
