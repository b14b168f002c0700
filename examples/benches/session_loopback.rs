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

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use mesh::coord::PunchAddr;
use mesh::identity::{Identity, PeerId};
use mesh::listing::ListingId;
use mesh::session::{
    JoinTarget, Mesh, MeshConfig, Reliability, SendError, Session, SessionConfig, SessionEvent,
};
use serde_json::Value;
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

/// What one peer's task records.
struct Rec {
    unreliable: Histogram<u64>,
    reliable: Histogram<u64>,
    unreliable_received: u64,
    reliable_received: u64,
    reliable_out_of_order: u64,
    last_reliable: HashMap<u8, u32>,
    saturate_received: u64,
    saturate_out_of_order: u64,
    saturate_last_seq: Option<u32>,
    saturate_last_at: Option<Instant>,
    unreliable_broadcasts: u64,
    reliable_broadcasts: u64,
    send_errors: HashMap<&'static str, u64>,
    host_changed: Option<(Instant, PeerId)>,
    ended: Option<String>,
}

impl Rec {
    fn new() -> Self {
        let hist = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
        Self {
            unreliable: hist(),
            reliable: hist(),
            unreliable_received: 0,
            reliable_received: 0,
            reliable_out_of_order: 0,
            last_reliable: HashMap::new(),
            saturate_received: 0,
            saturate_out_of_order: 0,
            saturate_last_seq: None,
            saturate_last_at: None,
            unreliable_broadcasts: 0,
            reliable_broadcasts: 0,
            send_errors: HashMap::new(),
            host_changed: None,
            ended: None,
        }
    }

    fn on_message(&mut self, bytes: &[u8], reliability: Reliability) {
        let now = Instant::now();
        if bytes.len() != MSG_LEN {
            *self.send_errors.entry("bad message received").or_default() += 1;
            return;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[..8]);
        let latency = micros_since_epoch(now).saturating_sub(u64::from_le_bytes(ts));
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&bytes[9..13]);
        let seq = u32::from_le_bytes(seq);
        let sender = bytes[13];
        match (bytes[8], reliability) {
            (KIND_UNRELIABLE, Reliability::Unreliable) => {
                self.unreliable_received += 1;
                let _ = self.unreliable.record(latency.max(1));
            }
            (KIND_RELIABLE, Reliability::ReliableOrdered) => {
                self.reliable_received += 1;
                let _ = self.reliable.record(latency.max(1));
                if let Some(prev) = self.last_reliable.insert(sender, seq) {
                    if seq != prev + 1 {
                        self.reliable_out_of_order += 1;
                    }
                }
            }
            (KIND_SATURATE, Reliability::ReliableOrdered) => {
                self.saturate_received += 1;
                if self.saturate_last_seq.is_some_and(|p| seq <= p) {
                    self.saturate_out_of_order += 1;
                }
                self.saturate_last_seq = Some(seq);
                self.saturate_last_at = Some(now);
            }
            _ => {
                *self
                    .send_errors
                    .entry("unexpected message kind")
                    .or_default() += 1
            }
        }
    }
}

type Shared = Arc<Mutex<Rec>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Rec> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of `Session::stats`.
#[derive(Debug, Default, Clone, Copy)]
struct Drops {
    events: u64,
    frames: u64,
    datagrams: u64,
    violations: u64,
}

/// What the bench asks of a peer's task.
enum Ctl {
    /// Broadcast at 60 Hz (unreliable) and 10 Hz (reliable) until then.
    Traffic(Instant),
    /// Broadcast reliable messages as fast as accepted until then; answers (accepted,
    /// queue full, elapsed).
    Saturate(Instant, oneshot::Sender<(u64, u64, Duration)>),
    Stats(oneshot::Sender<Drops>),
    Leave(oneshot::Sender<()>),
    /// Drop the session without leaving.
    Abort(oneshot::Sender<Instant>),
}

/// One in-process peer: its session runs in a task that takes every event (and accepts
/// every join request).
struct Peer {
    id: PeerId,
    ctl: mpsc::Sender<Ctl>,
    rec: Shared,
    task: JoinHandle<()>,
}

impl Peer {
    fn start(index: u8, session: Session) -> Self {
        let id = session.local_id();
        let rec = Arc::new(Mutex::new(Rec::new()));
        let (ctl, rx) = mpsc::channel(8);
        let task = tokio::spawn(peer_loop(index, session, rx, rec.clone()));
        Self { id, ctl, rec, task }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Ctl) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(make(tx))
            .await
            .map_err(|_| anyhow::anyhow!("peer task gone"))?;
        Ok(tokio::time::timeout(STEP_TIMEOUT, rx).await??)
    }

    async fn leave(self) -> Result<()> {
        self.ask(Ctl::Leave).await?;
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.task).await;
        Ok(())
    }
}

fn count_error(rec: &Shared, e: &SendError) {
    let kind = match e {
        SendError::NotMember(_) => "not member",
        SendError::TooLarge { .. } => "too large",
        SendError::QueueFull(_) => "queue full",
        SendError::Datagram(_) => "datagram",
        SendError::Closed => "closed",
    };
    *lock(rec).send_errors.entry(kind).or_default() += 1;
}

async fn peer_loop(index: u8, mut session: Session, mut ctl: mpsc::Receiver<Ctl>, rec: Shared) {
    let mut traffic_until: Option<Instant> = None;
    let mut fast = tokio::time::interval(Duration::from_micros(16_667));
    let mut slow = tokio::time::interval(Duration::from_millis(100));
    let (mut fast_seq, mut slow_seq) = (0u32, 0u32);
    loop {
        let sending = traffic_until.is_some_and(|u| Instant::now() < u);
        tokio::select! {
            event = session.next_event() => match event {
                Some(SessionEvent::Message { bytes, reliability, .. }) => {
                    lock(&rec).on_message(&bytes, reliability);
                }
                Some(SessionEvent::JoinRequest { peer, .. }) => session.accept_join(peer),
                Some(SessionEvent::HostChanged { new, .. }) => {
                    lock(&rec).host_changed = Some((Instant::now(), new));
                }
                Some(SessionEvent::Ended(end)) => lock(&rec).ended = Some(format!("{end:?}")),
                Some(_) => {}
                None => {
                    // Over: keep answering commands so the bench never waits in vain.
                    let _ = ctl.recv().await;
                    return;
                }
            },
            _ = fast.tick(), if sending => {
                let m = message(KIND_UNRELIABLE, fast_seq, index);
                fast_seq += 1;
                lock(&rec).unreliable_broadcasts += 1;
                if let Err(e) = session.broadcast(m, Reliability::Unreliable) {
                    count_error(&rec, &e);
                }
            }
            _ = slow.tick(), if sending => {
                let m = message(KIND_RELIABLE, slow_seq, index);
                match session.broadcast(m, Reliability::ReliableOrdered) {
                    Ok(()) => {
                        slow_seq += 1;
                        lock(&rec).reliable_broadcasts += 1;
                    }
                    Err(e) => count_error(&rec, &e),
                }
            }
            c = ctl.recv() => match c {
                Some(Ctl::Traffic(until)) => {
                    traffic_until = Some(until);
                    fast.reset();
                    slow.reset();
                }
                Some(Ctl::Saturate(until, reply)) => {
                    let _ = reply.send(saturate(&session, index, until).await);
                }
                Some(Ctl::Stats(reply)) => {
                    let s = session.stats();
                    let r = std::sync::atomic::Ordering::Relaxed;
                    let _ = reply.send(Drops {
                        events: s.events_dropped.load(r),
                        frames: s.frames_dropped.load(r),
                        datagrams: s.links.datagrams_dropped.load(r),
                        violations: s.violations.load(r),
                    });
                }
                Some(Ctl::Leave(reply)) => {
                    session.leave().await;
                    let _ = reply.send(());
                    return;
                }
                Some(Ctl::Abort(reply)) => {
                    drop(session);
                    let _ = reply.send(Instant::now());
                    return;
                }
                None => return,
            },
        }
    }
}

/// Broadcasts reliable messages as fast as they are taken until `until` (phase 3).
async fn saturate(session: &Session, index: u8, until: Instant) -> (u64, u64, Duration) {
    let start = Instant::now();
    let (mut accepted, mut full) = (0u64, 0u64);
    let mut seq = 0u32;
    while Instant::now() < until && u64::from(seq) < SATURATE_MAX {
        let m = message(KIND_SATURATE, seq, index);
        seq += 1;
        match session.broadcast(m, Reliability::ReliableOrdered) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull(_)) => {
                full += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => break,
        }
        if seq % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    (accepted, full, start.elapsed())
}

/// A server child: JSON lines on stdout; killed (by its pid) on drop.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(program: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The first JSON line with `event` == `name`.
    fn wait_event(&self, name: &str) -> Result<Value> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no {name} line within {STEP_TIMEOUT:?}"))?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                ensure!(v["event"] != "error", "error line {v}");
                if v["event"] == name {
                    return Ok(v);
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn str_of(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no string {key} in {v}"))
}

/// The servers and what a peer needs to use them.
struct Servers {
    master: Proc,
    punch: Proc,
    master_url: String,
    punch_addr: String,
    _dir: tempfile::TempDir,
}

fn start_servers() -> Result<Servers> {
    let hint = "build the servers first: cargo build --release -p master-server -p punch-server";
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite:{}", dir.path().join("master.db").display());
    let master = Proc::spawn(
        &common::master_server_bin().context(hint)?,
        &[
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--rate-limit",
            "0",
        ],
    )?;
    let master_url = format!(
        "http://{}",
        str_of(&master.wait_event("listening")?, "addr")?
    );
    let key = dir.path().join("punch.key");
    let punch = Proc::spawn(
        &common::punch_server_bin().context(hint)?,
        &[
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            &key.to_string_lossy(),
        ],
    )?;
    let line = punch.wait_event("listening")?;
    let punch_addr = format!("{}@{}", str_of(&line, "id")?, str_of(&line, "addr")?);
    Ok(Servers {
        master,
        punch,
        master_url,
        punch_addr,
        _dir: dir,
    })
}

fn new_mesh(s: &Servers) -> Result<Mesh> {
    let punch: PunchAddr = s.punch_addr.parse().context("punch address")?;
    let mut config = MeshConfig::new(s.master_url.clone(), punch);
    config.direct.upnp = None;
    config.direct.bind = "127.0.0.1:0".parse()?;
    Ok(Mesh::new(Arc::new(Identity::generate()?), config)?)
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
    let mut host = Proc::spawn(
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
    )?;
    let listed = host.wait_event("listed")?;
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
