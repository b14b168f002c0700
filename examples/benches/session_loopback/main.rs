//! Sessions on 127.0.0.1: join latency, messaging latency, reliable saturation and host
//! failover of eight `mesh::session` peers in this process, with the real `master-server`
//! and `punch-server` binaries (and one `peer host` child for the crash case).
//!
//! Build the binaries into the same target directory first, then run:
//!
//! ```text
//! cargo build --release -p master-server -p punch-server -p examples
//! cargo bench -p examples --bench session_loopback
//! ```
//!
//! Phases (about a minute in all; every wait is bounded):
//! 1. Join: `--rounds` fresh sessions (default 5). Peer 1 hosts, peers 2..8 join one
//!    after the other (`JoinTarget::Id`: the listing GET is part of each join); the time
//!    from the `join()` call to its return, per joiner position, p50/max over the rounds.
//! 2. Messaging in the last round's 8-peer mesh: each peer broadcasts a 100-byte
//!    unreliable message at 60 Hz and a reliable ordered one at 10 Hz for 10 s. Every
//!    message carries its send time (microseconds since one `Instant` of this process);
//!    delivery latency p50/p99/max per kind, the unreliable delivered/sent ratio, the
//!    reliable messages out of order, and the sessions' drop counters.
//! 3. Saturation: one peer broadcasts 100-byte reliable messages as fast as `broadcast`
//!    takes them for 5 s (at most 2,000,000; on `QueueFull` it sleeps 1 ms and goes on with
//!    the next message: a failed broadcast may have reached some members, so it is not
//!    retried); messages/s delivered to the slowest receiver, and the queue-full count.
//! 4. Failover, abort: the host's `Session` is dropped without `leave()`; the time until
//!    every other member has `HostChanged`, and until the master server's row names the
//!    new host in `connect.peer` with `players` = 7 (polled every 50 ms).
//! 5. Failover, crash: a `peer host` child hosts, seven in-process peers join, the child
//!    is SIGKILLed (by its pid); the same two times.

#[path = "../../tests/common/mod.rs"]
mod common;
mod peer;
mod servers;

use common::loopback::{str_of, Proc, Servers};
use peer::*;
use servers::*;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use mesh::identity::PeerId;
use mesh::listing::ListingId;
use mesh::session::{
    JoinTarget, Mesh, Reliability, SendError, Session, SessionConfig, SessionEvent,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Members of every session.
const PEERS: usize = 8;
/// Size of every game message.
const MSG_LEN: usize = 100;
/// The game of the bench's sessions.
const GAME: &str = "bench-session";
/// Longest wait for a server's first line, a join, a leave.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a failover (3 s detection + election + listing takeover).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// Messaging phase.
const TRAFFIC_FOR: Duration = Duration::from_secs(10);
/// Saturation phase, and its bound in messages.
const SATURATE_FOR: Duration = Duration::from_secs(5);
const SATURATE_MAX: u64 = 2_000_000;

/// Message kinds (byte 8 of a message).
const KIND_UNRELIABLE: u8 = 0;
const KIND_RELIABLE: u8 = 1;
const KIND_SATURATE: u8 = 2;

/// The common epoch of every timestamp in this process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// A message: send time (µs since the epoch), kind, sequence, sender index, padding.
fn message(kind: u8, seq: u32, sender: u8) -> Bytes {
    let mut b = vec![0u8; MSG_LEN];
    b[..8].copy_from_slice(&micros_since_epoch(Instant::now()).to_le_bytes());
    b[8] = kind;
    b[9..13].copy_from_slice(&seq.to_le_bytes());
    b[13] = sender;
    Bytes::from(b)
}

/// Joins `id` with a fresh mesh; the mesh and the time `join()` took.
async fn join_one(s: &Servers, id: ListingId, index: u8) -> Result<(Mesh, Peer, Duration)> {
    let mesh = new_mesh(s)?;
    let t = Instant::now();
    let joined = tokio::time::timeout(STEP_TIMEOUT, mesh.join(JoinTarget::Id(id), Vec::new()))
        .await
        .context("join timed out")?;
    let took = t.elapsed();
    let session = joined.with_context(|| format!("join of peer {}", index + 1))?;
    Ok((mesh, Peer::start(index, session), took))
}

/// A hosted session with seven joiners: the meshes, the peers, the listing, the join times
/// of peers 2..8.
struct Formed {
    meshes: Vec<Mesh>,
    peers: Vec<Peer>,
    listing: ListingId,
    joins: Vec<Duration>,
}

async fn form(s: &Servers, round: usize) -> Result<Formed> {
    let host = new_mesh(s)?;
    let session = host
        .host(GAME, SessionConfig::new(format!("bench round {round}")))
        .await?;
    let listing: ListingId = session
        .listing_id()
        .context("no listing id")?
        .parse()
        .map_err(|e| anyhow::anyhow!("listing id: {e:?}"))?;
    let mut meshes = vec![host];
    let mut peers = vec![Peer::start(0, session)];
    let mut joins = Vec::new();
    for i in 1..PEERS {
        let (mesh, peer, took) = join_one(s, listing, i as u8).await?;
        meshes.push(mesh);
        peers.push(peer);
        joins.push(took);
    }
    Ok(Formed {
        meshes,
        peers,
        listing,
        joins,
    })
}

async fn leave_all(peers: Vec<Peer>) {
    let tasks: Vec<_> = peers.into_iter().map(|p| tokio::spawn(p.leave())).collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Phase 1. Returns the last round's session, still running.
async fn bench_joins(s: &Servers, rounds: usize) -> Result<Formed> {
    println!("== join latency: {rounds} fresh sessions, peers 2..8 join one after the other");
    println!(
        "   (ms from the join() call to its return, JoinTarget::Id: the listing GET included)"
    );
    let mut by_position: Vec<Vec<Duration>> = vec![Vec::new(); PEERS - 1];
    let mut last = None;
    for round in 0..rounds {
        let formed = form(s, round).await?;
        for (i, d) in formed.joins.iter().enumerate() {
            by_position[i].push(*d);
        }
        let line: Vec<String> = formed
            .joins
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect();
        println!("   round {}: {}", round + 1, line.join("  "));
        if round + 1 == rounds {
            last = Some(formed);
        } else {
            leave_all(formed.peers).await;
        }
    }
    for (i, v) in by_position.iter_mut().enumerate() {
        v.sort();
        println!(
            "   joiner {} ({} members after): p50 {:>7.1} ms  max {:>7.1} ms",
            i + 2,
            i + 2,
            ms(pct(v, 50.0)),
            ms(pct(v, 100.0))
        );
    }
    last.context("no rounds")
}

async fn drops(peers: &[Peer]) -> Result<Drops> {
    let mut total = Drops::default();
    for p in peers {
        let d = p.ask(Ctl::Stats).await?;
        total.events += d.events;
        total.frames += d.frames;
        total.datagrams += d.datagrams;
        total.violations += d.violations;
    }
    Ok(total)
}

fn print_hist(name: &str, h: &Histogram<u64>) {
    println!(
        "   {name:<26} n {:>6}  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// Phase 2.
async fn bench_messaging(peers: &[Peer]) -> Result<()> {
    println!(
        "== messaging: {PEERS} peers, each broadcasts {MSG_LEN} B unreliable at 60 Hz and reliable at 10 Hz for {TRAFFIC_FOR:?}"
    );
    let before = drops(peers).await?;
    let until = Instant::now() + TRAFFIC_FOR;
    for p in peers {
        p.ctl.send(Ctl::Traffic(until)).await?;
    }
    tokio::time::sleep_until((until + Duration::from_secs(1)).into()).await;
    let after = drops(peers).await?;
    let mut unrel = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut rel = unrel.clone();
    let (mut ub, mut rb, mut ur, mut rr, mut ooo) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut errors: HashMap<&'static str, u64> = HashMap::new();
    for p in peers {
        let r = lock(&p.rec);
        unrel.add(&r.unreliable)?;
        rel.add(&r.reliable)?;
        ub += r.unreliable_broadcasts;
        rb += r.reliable_broadcasts;
        ur += r.unreliable_received;
        rr += r.reliable_received;
        ooo += r.reliable_out_of_order;
        for (k, v) in &r.send_errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let others = (PEERS - 1) as u64;
    print_hist("unreliable delivery", &unrel);
    print_hist("reliable delivery", &rel);
    println!(
        "   unreliable delivered/sent {ur}/{} = {:.4}",
        ub * others,
        ur as f64 / (ub * others).max(1) as f64
    );
    println!(
        "   reliable delivered/sent {rr}/{} = {:.4}, out of order {ooo}",
        rb * others,
        rr as f64 / (rb * others).max(1) as f64
    );
    println!(
        "   dropped during the phase: events {}, frames {}, datagrams {}; violations {}; send errors {errors:?}",
        after.events - before.events,
        after.frames - before.frames,
        after.datagrams - before.datagrams,
        after.violations - before.violations,
    );
    Ok(())
}

/// Phase 3.
async fn bench_saturation(peers: &[Peer]) -> Result<()> {
    println!(
        "== saturation: peer 2 broadcasts {MSG_LEN} B reliable messages as fast as accepted for {SATURATE_FOR:?}"
    );
    let before = drops(peers).await?;
    let sender = &peers[1];
    let start = Instant::now();
    let (accepted, full, took) = sender
        .ask(|tx| Ctl::Saturate(start + SATURATE_FOR, tx))
        .await?;
    // Let the queues drain (bounded).
    let drain_until = Instant::now() + Duration::from_secs(5);
    let mut last = (0u64, Instant::now());
    while Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let total: u64 = peers
            .iter()
            .filter(|p| p.id != sender.id)
            .map(|p| lock(&p.rec).saturate_received)
            .sum();
        if total == last.0 && last.1.elapsed() >= Duration::from_millis(300) {
            break;
        }
        if total != last.0 {
            last = (total, Instant::now());
        }
    }
    let mut rates = Vec::new();
    let mut ooo = 0;
    for p in peers.iter().filter(|p| p.id != sender.id) {
        let r = lock(&p.rec);
        let span = r
            .saturate_last_at
            .map_or(took, |t| t.saturating_duration_since(start));
        rates.push((
            r.saturate_received,
            r.saturate_received as f64 / span.as_secs_f64(),
        ));
        ooo += r.saturate_out_of_order;
    }
    let after = drops(peers).await?;
    let min = rates.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let max = rates.iter().map(|r| r.1).fold(0.0, f64::max);
    let min_count = rates.iter().map(|r| r.0).min().unwrap_or(0);
    println!(
        "   broadcasts accepted {accepted} ({:.0}/s), queue full {full}, in {took:.2?}",
        accepted as f64 / took.as_secs_f64()
    );
    println!(
        "   delivered per receiver: min {min:.0} msg/s, max {max:.0} msg/s (fewest delivered {min_count}); out of order {ooo}"
    );
    println!(
        "   dropped during the phase: events {}, frames {}, datagrams {}",
        after.events - before.events,
        after.frames - before.frames,
        after.datagrams - before.datagrams,
    );
    Ok(())
}

/// Waits until every peer has `HostChanged` to one host; the time since `t0` and the host.
async fn wait_host_changed(peers: &[Peer], t0: Instant) -> Result<(Duration, PeerId)> {
    let deadline = t0 + FAILOVER_TIMEOUT;
    loop {
        let seen: Vec<_> = peers.iter().map(|p| lock(&p.rec).host_changed).collect();
        if seen.iter().all(Option::is_some) {
            let new = seen[0].map(|s| s.1).context("host")?;
            ensure!(
                seen.iter().all(|s| s.is_some_and(|s| s.1 == new)),
                "members disagree on the new host: {seen:?}"
            );
            let last = seen.iter().filter_map(|s| s.map(|s| s.0)).max();
            return Ok((last.map_or(Duration::ZERO, |l| l - t0), new));
        }
        if Instant::now() > deadline {
            let ended: Vec<_> = peers.iter().map(|p| lock(&p.rec).ended.clone()).collect();
            bail!(
                "no HostChanged everywhere within {FAILOVER_TIMEOUT:?}: {seen:?}, ended {ended:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the listing every 50 ms until it names `host` with `players`; the time since `t0`.
async fn wait_listing(mesh: &Mesh, id: ListingId, host: PeerId, t0: Instant) -> Result<Duration> {
    let deadline = t0 + FAILOVER_TIMEOUT;
    loop {
        let row = mesh.listing().get(id).await;
        if let Ok(r) = &row {
            let peer = r.connect_info().map(|c| c.peer);
            if r.players == (PEERS - 1) as u32 && peer.as_deref() == Some(&host.to_string()) {
                return Ok(t0.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("listing not taken over within {FAILOVER_TIMEOUT:?}: {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phase 4.
async fn bench_abort(formed: Formed) -> Result<()> {
    println!("== failover, abort: the host's Session is dropped without leave()");
    let Formed {
        meshes,
        mut peers,
        listing,
        ..
    } = formed;
    let host = peers.remove(0);
    let sockets = open_sockets();
    let t0 = host.ask(Ctl::Abort).await?;
    let (changed, new) = wait_host_changed(&peers, t0).await?;
    let listed = wait_listing(&meshes[1], listing, new, t0).await?;
    ensure!(new == peers[0].id, "new host {new} is not the second peer");
    println!(
        "   every member has HostChanged after {:.1} ms; the listing names the new host with 7 players after {:.1} ms",
        ms(changed),
        ms(listed)
    );
    tokio::time::sleep_until((t0 + Duration::from_secs(2)).into()).await;
    println!(
        "   UDP sockets of this process: {sockets} before the drop, {} 2 s after it",
        open_sockets()
    );
    leave_all(peers).await;
    Ok(())
}

/// Phase 5.
async fn bench_crash(s: &Servers) -> Result<()> {
    println!("== failover, crash: a `peer host` child with 7 in-process members is SIGKILLed");
    let peer_bin = Path::new(env!("CARGO_BIN_EXE_peer"));
    let mut host = Proc::spawn_with(
        "host",
        peer_bin,
        &[
            "host",
            "--punch",
            &s.punch_addr,
            "--name",
            "bench crash",
            "--no-upnp",
            "--bind",
            "127.0.0.1:0",
            "--master",
            &s.master_url,
            "--game",
            GAME,
        ],
        Stdio::null(),
    )?;
    let listed = host.wait("listed", STEP_TIMEOUT, |v| v["event"] == "listed")?;
    let listing: ListingId = str_of(&listed, "session")?
        .parse()
        .map_err(|e| anyhow::anyhow!("listing id: {e:?}"))?;
    let mut meshes = Vec::new();
    let mut peers = Vec::new();
    for i in 1..PEERS {
        let (mesh, peer, _) = join_one(s, listing, i as u8).await?;
        meshes.push(mesh);
        peers.push(peer);
    }
    // Let the mesh settle (heartbeats on every link) before the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    host.child.kill()?;
    let t0 = Instant::now();
    host.child.wait()?;
    let (changed, new) = wait_host_changed(&peers, t0).await?;
    let listed = wait_listing(&meshes[0], listing, new, t0).await?;
    ensure!(new == peers[0].id, "new host {new} is not the second peer");
    println!(
        "   every member has HostChanged after {:.1} ms; the listing names the new host with 7 players after {:.1} ms",
        ms(changed),
        ms(listed)
    );
    println!("   (detect_timeout is the default 3 s, counted from the last frame heard: heartbeats go every 500 ms)");
    leave_all(peers).await;
    Ok(())
}

/// UDP sockets of this process (its socket fds whose inode is in `/proc/net/udp`).
fn open_sockets() -> usize {
    let udp: std::collections::HashSet<String> = std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(9).map(str::to_string))
        .collect();
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|l| {
                let l = l.to_string_lossy();
                l.strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .is_some_and(|inode| udp.contains(inode))
            })
            .count()
    })
}

async fn run(rounds: usize) -> Result<()> {
    let started = Instant::now();
    let servers = start_servers()?;
    let sockets = open_sockets();
    let formed = bench_joins(&servers, rounds).await?;
    bench_messaging(&formed.peers).await?;
    bench_saturation(&formed.peers).await?;
    bench_abort(formed).await?;
    bench_crash(&servers).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "UDP sockets of this process: {sockets} before the sessions, {} after every session ended",
        open_sockets()
    );
    println!("bench done in {:.1?}", started.elapsed());
    let Servers { master, punch, .. } = servers;
    drop((master, punch));
    Ok(())
}

fn main() -> Result<()> {
    let _ = epoch();
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args.next().context("--rounds N")?.parse()?;
        }
    }
    let rounds = rounds.clamp(1, 50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(300), run(rounds)).await });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result.context("the bench took longer than 300 s")?
}
