//! The load: a UDP echo peer and TURN clients keeping a window of ChannelData in flight.
//!
//! 1. The echo peer is the integration tests' (`tests/common`): mio + quinn-udp
//!    batched receive, on its own thread.
//! 2. [`run`] starts one thread per client: each allocates on the relay with REST API
//!    credentials, binds channel 0x4000 to the echo peer, and keeps `window` packets of
//!    `size` bytes in flight (sequence number and send time in the first 16 bytes). An
//!    echo frees a slot and gives a round-trip time; 50 ms without any echo counts the
//!    window as lost and refills it.
//! 3. The main thread samples the echo count and the relay's CPU ticks after the warm-up
//!    and at the end; RTTs are recorded in an HDR histogram after the warm-up.
//!
//! Everything runs on loopback and stops at its deadline.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use proxy::client::Session;
use proxy::credentials::Credentials;
use proxy::wire::ChannelData;

use crate::servers::{cpu_ticks, SECRET};

/// The channel every client binds.
const CHANNEL: u16 = 0x4000;
/// Silence after which the in-flight window counts as lost.
const STALL: Duration = Duration::from_millis(50);

/// Allocates on `relay` and binds [`CHANNEL`] to `peer`.
pub fn session(relay: SocketAddr, peer: SocketAddr, user: &str) -> Session {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let creds = Credentials::rest(SECRET, user, expiry);
    let mut s = Session::allocate(sock, relay, &creds, Duration::from_secs(3)).expect("allocate");
    s.channel_bind(CHANNEL, peer).expect("channel bind");
    s
}

/// The load's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub clients: usize,
    pub window: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one run measured.
pub struct Measured {
    /// Round trips completed in the measured window.
    pub echoes: u64,
    pub secs: f64,
    pub sent: u64,
    pub received: u64,
    pub rtt_us: Histogram<u64>,
    /// Relay CPU ticks in the measured window.
    pub cpu_ticks: u64,
}

/// Runs the load against `relay` (process `pid`) through `peer`.
pub fn run(relay: SocketAddr, pid: u32, peer: SocketAddr, load: Load) -> Measured {
    let sessions: Vec<Session> = (0..load.clients)
        .map(|i| session(relay, peer, &format!("load{i}")))
        .collect();
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let echoes = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram"),
    ));
    let threads: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let (echoes, hist) = (Arc::clone(&echoes), Arc::clone(&hist));
            std::thread::spawn(move || client(s, load, start, measure_from, end, &echoes, &hist))
        })
        .collect();
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let (e0, c0) = (echoes.load(Ordering::Relaxed), cpu_ticks(pid));
    let t0 = Instant::now();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let (e1, c1) = (echoes.load(Ordering::Relaxed), cpu_ticks(pid));
    let secs = t0.elapsed().as_secs_f64();
    let (mut sent, mut received) = (0, 0);
    for t in threads {
        let (s, r) = t.join().expect("client thread");
        sent += s;
        received += r;
    }
    let rtt_us = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    Measured {
        echoes: e1 - e0,
        secs,
        sent,
        received,
        rtt_us,
        cpu_ticks: c1.saturating_sub(c0),
    }
}

/// One client's loop; returns (sent, received).
fn client(
    s: Session,
    load: Load,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    echoes: &AtomicU64,
    hist: &Mutex<Histogram<u64>>,
) -> (u64, u64) {
    let sock = s.socket();
    let server = s.server();
    let mut local = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram");
    let mut payload = vec![0u8; load.size];
    let mut buf = vec![0u8; load.size + 64];
    let (mut sent, mut received, mut inflight) = (0u64, 0u64, 0usize);
    let _ = sock.set_read_timeout(Some(STALL));
    while Instant::now() < end {
        while inflight < load.window {
            let nanos = start.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            payload[8..16].copy_from_slice(&nanos.to_be_bytes());
            let Some(msg) = ChannelData::encode(CHANNEL, &payload) else {
                return (sent, received);
            };
            if sock.send_to(&msg, server).is_err() {
                break;
            }
            sent += 1;
            inflight += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let Some(cd) = ChannelData::parse(&buf[..n]) else {
                    continue;
                };
                let Some(stamp) = cd.payload.get(8..16) else {
                    continue;
                };
                let sent_at = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
                let now = start.elapsed().as_nanos() as u64;
                received += 1;
                inflight = inflight.saturating_sub(1);
                echoes.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= measure_from {
                    let _ = local.record((now.saturating_sub(sent_at) / 1000).max(1));
                }
            }
            Err(_) => inflight = 0,
        }
    }
    // Drain the last echoes.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if ChannelData::parse(&buf[..n]).is_some() {
            received += 1;
        }
    }
    if let Ok(mut h) = hist.lock() {
        let _ = h.add(&local);
    }
    let _ = s.close();
    (sent, received)
}
