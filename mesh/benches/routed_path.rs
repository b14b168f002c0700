//! A routed path against a direct one on loopback: throughput of one QUIC stream and the
//! round-trip time of small datagrams between A and B, once through a router member R
//! (`mesh::route`, both ends linked to R only) and once on a direct connection between
//! the same endpoints.
//!
//! Run: `cargo bench -p mesh --bench routed_path`. Environment: `MESH_BENCH_BYTES` (bytes
//! per transfer, default 256 MiB), `MESH_BENCH_ROUNDS` (default 3, median reported),
//! `MESH_BENCH_PINGS` (datagram round trips per variant, default 2000). The router runs
//! without a budget (`ForwardConfig` with zero rates) so the data plane is measured, not
//! the default per-route cap (2 MB/s). Only 127.0.0.1 is used; every loop is bounded.

#[path = "../tests/route_common/mod.rs"]
mod route_common;

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use mesh::route::ForwardConfig;
use mesh::socket::PeerConnection;
use route_common::{connect_routed, open_end, triangle, Node, STEP};

const CHUNK: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `total` bytes on one uni stream; the time until the receiver read them all.
async fn transfer(
    sender: &quinn::Connection,
    receiver: &quinn::Connection,
    total: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let receiver = receiver.clone();
    let reader = tokio::spawn(async move {
        let mut recv = receiver.accept_uni().await?;
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        anyhow::Ok(got)
    });
    let mut send = sender.open_uni().await?;
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await?;
        sent += n as u64;
    }
    send.finish()?;
    let got = tokio::time::timeout(LIMIT, reader).await???;
    anyhow::ensure!(got == total, "received {got} of {total} bytes");
    Ok(start.elapsed())
}

/// Round trips of 64-byte datagrams echoed by the other side; sorted RTTs in µs.
async fn pings(a: &quinn::Connection, b: &quinn::Connection, n: u64) -> anyhow::Result<Vec<f64>> {
    let echo_conn = b.clone();
    let echo = tokio::spawn(async move {
        while let Ok(d) = echo_conn.read_datagram().await {
            if echo_conn.send_datagram(d).is_err() {
                break;
            }
        }
    });
    let mut rtts = Vec::with_capacity(n as usize);
    let mut lost = 0u64;
    for i in 0..n {
        let mut payload = vec![0u8; 64];
        payload[..8].copy_from_slice(&i.to_be_bytes());
        let start = Instant::now();
        a.send_datagram(Bytes::from(payload))?;
        match tokio::time::timeout(Duration::from_millis(200), a.read_datagram()).await {
            Ok(Ok(_)) => rtts.push(start.elapsed().as_secs_f64() * 1e6),
            _ => lost += 1,
        }
    }
    echo.abort();
    anyhow::ensure!(lost * 10 <= n, "{lost} of {n} pings lost");
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}

/// A direct connection between A and B (the same endpoints the route joins).
async fn direct(a: &Node, b: &Node) -> anyhow::Result<(PeerConnection, PeerConnection)> {
    let accept = async { anyhow::Ok(b.endpoint.accept().await.context("closed")??) };
    let (dialed, accepted) = tokio::join!(a.endpoint.connect(b.id(), b.addr()?), accept);
    Ok((dialed?, accepted?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bytes = env_u64("MESH_BENCH_BYTES", 256 << 20);
    let rounds = env_u64("MESH_BENCH_ROUNDS", 3).max(1);
    let n_pings = env_u64("MESH_BENCH_PINGS", 2000).clamp(1, 100_000);
    let unlimited = ForwardConfig {
        bytes_per_sec: 0,
        packets_per_sec: 0,
        ..ForwardConfig::default()
    };
    let (a, r, b) = triangle(unlimited).await?;
    r.hub.ask(a.id(), b.id())?;
    r.hub.ask(b.id(), a.id())?;
    let a_route = open_end(&a, r.id(), b.id()).await?;
    open_end(&b, r.id(), a.id()).await?;
    let (ra, rb) = tokio::time::timeout(STEP, connect_routed(&a, &b, a_route)).await??;
    // The direct connection needs the target's entry on its own path: a second pair of
    // endpoints keeps the routed entries untouched.
    let (da_node, db_node) = (
        Node::start(ForwardConfig::default())?,
        Node::start(ForwardConfig::default())?,
    );
    let (da, db) = direct(&da_node, &db_node).await?;
    let (mut routed_mib, mut direct_mib) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = transfer(&ra.connection, &rb.connection, bytes).await?;
        routed_mib.push(bytes as f64 / (1 << 20) as f64 / t.as_secs_f64());
        let t = transfer(&da.connection, &db.connection, bytes).await?;
        direct_mib.push(bytes as f64 / (1 << 20) as f64 / t.as_secs_f64());
    }
    let routed_rtt = pings(&ra.connection, &rb.connection, n_pings).await?;
    let direct_rtt = pings(&da.connection, &db.connection, n_pings).await?;
    let (rm, dm) = (median(routed_mib), median(direct_mib));
    println!("routed_path: {bytes} bytes x {rounds} rounds, {n_pings} pings, loopback, 2 cores shared by 3 endpoints");
    println!(
        "  throughput  routed {rm:>8.1} MiB/s   direct {dm:>8.1} MiB/s   ratio {:.2}",
        rm / dm
    );
    println!(
        "  ping RTT    routed p50 {:>6.1} us p99 {:>6.1} us   direct p50 {:>6.1} us p99 {:>6.1} us   added p50 {:>6.1} us",
        pct(&routed_rtt, 0.5),
        pct(&routed_rtt, 0.99),
        pct(&direct_rtt, 0.5),
        pct(&direct_rtt, 0.99),
        pct(&routed_rtt, 0.5) - pct(&direct_rtt, 0.5),
    );
    let hub = r.hub.stats();
    println!(
        "  router forwarded {} datagrams ({} MiB), refused {} (no route) {} (budget); end drops {} too large {}",
        hub.forward.forwarded,
        hub.forward.bytes >> 20,
        hub.forward.no_route,
        hub.forward.over_budget,
        a.hub.stats().dropped + b.hub.stats().dropped,
        a.hub.stats().too_large + b.hub.stats().too_large,
    );
    Ok(())
}
