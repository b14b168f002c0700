//! Throughput of one QUIC stream between two mesh endpoints on loopback, over a relayed
//! path through the real `proxy` (TURN ChannelData) and over a direct path, in the same run.
//!
//! Run: `cargo build --release -p proxy && cargo bench -p examples --bench relay_path`
//! (`-- --mib N --rounds R`). Each round sends N MiB (default 64) on a fresh stream of one
//! connection per kind and prints MiB/s; the summary gives the median of each kind and the
//! relayed/direct ratio. Loopback on shared cores: the relay process competes with both
//! endpoints for the CPU, so the ratio is what to read, not the absolute rates.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::relay::{start_proxy_with, transfer, Side};
use mesh::socket::Path;

const STEP: Duration = Duration::from_secs(10);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Connects `a` to `b` over `a_path` (B reaches A at `b_path`); returns (dialed, accepted).
async fn connect(
    a: &Side,
    b: &Side,
    a_path: Path,
    b_path: Path,
) -> Result<(quinn::Connection, quinn::Connection)> {
    let a_id = a.endpoint.peer_id();
    b.endpoint
        .socket()
        .paths()
        .upsert_peer(Instant::now(), a_id, b_path)?;
    let (accepted, dialed) = tokio::join!(
        async {
            let accepted = tokio::time::timeout(STEP, b.endpoint.accept()).await?;
            anyhow::Ok(accepted.context("endpoint closed")??)
        },
        tokio::time::timeout(
            STEP,
            a.endpoint.connect_via(b.endpoint.peer_id(), a_path, None)
        )
    );
    Ok((dialed??.connection, accepted?.connection))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mib = arg("--mib", 64);
    let rounds = arg("--rounds", 3);
    // No per-allocation bandwidth cap (1 MB/s by default): this measures the path.
    let (_proxy, proxy_addr) = start_proxy_with(&["--bandwidth-per-allocation", "0"])?;
    // Relayed: A allocates and binds a channel to B; B sends to A's relayed address.
    let mut a = Side::start(proxy_addr, "alice").await?;
    let b = Side::start(proxy_addr, "bob").await?;
    a.bind_channel(0x4000, b.direct()?).await?;
    let relay = Path::Relay {
        server: proxy_addr,
        channel: 0x4000,
    };
    let relayed = connect(&a, &b, relay, Path::direct(a.relayed)).await?;
    // Direct: two more endpoints (their allocations stay unused).
    let c = Side::start(proxy_addr, "carol").await?;
    let d = Side::start(proxy_addr, "dave").await?;
    let direct = connect(&c, &d, Path::direct(d.direct()?), Path::direct(c.direct()?)).await?;

    let len = mib << 20;
    let mut figures: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    println!("== one QUIC stream, {mib} MiB per round, loopback");
    for round in 1..=rounds {
        for (i, (name, (from, to))) in [("relayed", &relayed), ("direct", &direct)]
            .into_iter()
            .enumerate()
        {
            let started = Instant::now();
            transfer(from, to, len, async { Ok(()) }).await?;
            let rate = mib as f64 / started.elapsed().as_secs_f64();
            println!("   round {round} {name:8} {rate:8.1} MiB/s");
            figures[i].push(rate);
        }
    }
    let stats = a.endpoint.stats();
    anyhow::ensure!(
        stats.relayed_tx > 0 && stats.quic_tx == 0,
        "A went direct: {stats:?}"
    );
    let (r, d) = (median(figures[0].clone()), median(figures[1].clone()));
    println!(
        "   median: relayed {r:.1} MiB/s, direct {d:.1} MiB/s, relayed/direct {:.2}",
        r / d
    );
    println!(
        "   A's socket: {} relayed transmits, {} relayed datagrams in, {} dropped",
        stats.relayed_tx, stats.relayed_rx, stats.relayed_dropped
    );
    Ok(())
}
