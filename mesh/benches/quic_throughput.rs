//! Throughput of one QUIC stream between two peers on loopback: through the mesh one-socket
//! layer (`mesh::socket::Endpoint`) and, in the same run, through bare quinn on plain UDP
//! sockets with the same mutual-TLS and transport configuration.
//!
//! Run: `cargo bench -p mesh --bench quic_throughput`. Environment: `MESH_BENCH_BYTES`
//! (bytes per transfer, default 1 GiB), `MESH_BENCH_ROUNDS` (default 3; rounds alternate the
//! two variants and the median is reported). Only 127.0.0.1 is used.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh::identity::{tls, Identity};
use mesh::socket::{endpoint_config, Endpoint, EndpointOptions};

const CHUNK: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `total` bytes on one uni stream; returns the elapsed time until the receiver has
/// read them all.
async fn transfer(
    sender: quinn::Connection,
    receiver: quinn::Connection,
    total: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut recv = receiver.accept_uni().await?;
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        anyhow::Ok(got)
    });
    let buf = vec![0xabu8; CHUNK];
    let mut send = sender.open_uni().await?;
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        send.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    send.finish()?;
    let got = reader.await??;
    anyhow::ensure!(got == total, "received {got} of {total} bytes");
    Ok(start.elapsed())
}

async fn through_mesh(total: u64) -> anyhow::Result<Duration> {
    let opts = EndpointOptions::default();
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    let (a, _a_stun) = Endpoint::bind(local, Arc::new(Identity::generate()?), opts.clone())?;
    let (b, _b_stun) = Endpoint::bind(local, Arc::new(Identity::generate()?), opts)?;
    let a_addr = SocketAddr::from(([127, 0, 0, 1], a.local_addr()?.port()));
    let (accepted, dialed) = tokio::join!(a.accept(), b.connect(a.peer_id(), a_addr));
    let accepted = accepted.context("closed")??;
    let dialed = dialed?;
    let elapsed = transfer(
        dialed.connection.clone(),
        accepted.connection.clone(),
        total,
    )
    .await?;
    let stats = (a.stats(), b.stats());
    anyhow::ensure!(
        stats.0.unroutable_tx + stats.1.unroutable_tx == 0,
        "unroutable: {stats:?}"
    );
    dialed.connection.close(0u32.into(), b"done");
    a.close(0, b"");
    b.close(0, b"");
    Ok(elapsed)
}

async fn through_bare_quinn(total: u64) -> anyhow::Result<Duration> {
    let opts = EndpointOptions::default();
    let transport = Arc::new((opts.transport)(None));
    let server_id = Identity::generate()?;
    let client_id = Identity::generate()?;
    let server_cfg = tls::server_config(&server_id, Some(transport.clone()))?;
    let (client_cfg, _check) =
        tls::client_config(&client_id, server_id.peer_id(), Some(transport.clone()))?;
    let bind = |server_cfg| -> anyhow::Result<quinn::Endpoint> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let runtime = Arc::new(quinn::TokioRuntime);
        Ok(quinn::Endpoint::new(
            endpoint_config(),
            server_cfg,
            socket,
            runtime,
        )?)
    };
    let server = bind(Some(server_cfg))?;
    let client = bind(None)?;
    let server_addr = server.local_addr()?;
    let name = tls::server_name(&server_id.peer_id());
    let (accepted, dialed) = tokio::join!(
        async { anyhow::Ok(server.accept().await.context("closed")?.await?) },
        async { anyhow::Ok(client.connect_with(client_cfg, server_addr, &name)?.await?) }
    );
    let (accepted, dialed) = (accepted?, dialed?);
    let elapsed = transfer(dialed.clone(), accepted, total).await?;
    dialed.close(0u32.into(), b"done");
    server.close(0u32.into(), b"");
    client.close(0u32.into(), b"");
    Ok(elapsed)
}

fn gbps(total: u64, d: Duration) -> f64 {
    total as f64 * 8.0 / d.as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let total = env_u64("MESH_BENCH_BYTES", 1 << 30);
    let rounds = env_u64("MESH_BENCH_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 1..=rounds {
            let d = tokio::time::timeout(LIMIT, through_bare_quinn(total)).await??;
            bare.push(gbps(total, d));
            let d = tokio::time::timeout(LIMIT, through_mesh(total)).await??;
            ours.push(gbps(total, d));
            println!(
                "round {round}: bare quinn {:.2} Gbit/s, mesh socket {:.2} Gbit/s",
                bare[bare.len() - 1],
                ours[ours.len() - 1]
            );
        }
        anyhow::Ok(())
    })?;
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (ob, bb) = (best(&ours), best(&bare));
    let (o, b) = (median(ours), median(bare));
    println!(
        "quic_throughput: {total} bytes x {rounds} rounds, median: mesh socket {o:.2} Gbit/s, \
         bare quinn {b:.2} Gbit/s, ratio {:.1}%",
        100.0 * o / b
    );
    println!(
        "quic_throughput: best: mesh socket {ob:.2} Gbit/s, bare quinn {bb:.2} Gbit/s, ratio {:.1}%",
        100.0 * ob / bb
    );
    Ok(())
}
