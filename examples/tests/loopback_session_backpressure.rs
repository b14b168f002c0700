//! Reliable game messages are end to end: a game that stops reading slows its senders
//! down instead of losing messages, and the session itself stays up meanwhile.
//!
//! Flow, with the real servers on 127.0.0.1 and two in-process peers:
//! 1. A host and a joiner form a session.
//! 2. The joiner's game stops reading events for longer than the failure detection (3 s)
//!    while the host keeps broadcasting numbered reliable messages: the broadcast says the
//!    joiner's queue is full (`SendError::Partial` naming the joiner with `QueueFull`) and
//!    the sender gets only part of them out.
//! 3. Both still see two members: membership traffic does not wait behind game messages.
//! 4. The joiner reads again; the host sends the rest. Every message arrives once, in
//!    order, and no counter shows a drop.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use common::loopback::{loopback_mesh, Servers};
use mesh::session::{JoinTarget, Reliability, SendError, Session, SessionConfig, SessionEvent};

/// Messages sent in all.
const TOTAL: u64 = 30_000;
/// Size of each message.
const MSG_LEN: usize = 1024;
/// Bound of every phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the joiner's game does not read (longer than the 3 s failure detection).
const STALL: Duration = Duration::from_secs(4);

fn message(n: u64) -> Bytes {
    let mut m = vec![0u8; MSG_LEN];
    m[..8].copy_from_slice(&n.to_be_bytes());
    Bytes::from(m)
}

/// Broadcasts message `n`; `Ok(false)` when the joiner's queue is full.
fn try_broadcast(host: &Session, n: u64) -> Result<bool> {
    match host.broadcast(message(n), Reliability::ReliableOrdered) {
        Ok(()) => Ok(true),
        Err(SendError::Partial { sent: 0, failed })
            if failed.len() == 1 && matches!(failed[0].1, SendError::QueueFull(_)) =>
        {
            Ok(false)
        }
        Err(e) => bail!("broadcast {n}: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_sender_and_loses_nothing() -> Result<()> {
    let servers = Servers::start(Stdio::inherit)?;
    let host_mesh = loopback_mesh(&servers)?;
    let joiner_mesh = loopback_mesh(&servers)?;
    let host = host_mesh
        .host("backpressure", SessionConfig::new("slow reader"))
        .await?;
    let listing = host
        .listing_id()
        .context("no listing")?
        .parse()
        .map_err(|e| anyhow::anyhow!("listing id {e:?}"))?;
    let mut joiner = joiner_mesh
        .join(JoinTarget::Id(listing), Vec::new())
        .await?;
    let joiner_id = joiner.local_id();
    // The host publishes the joiner's link before `MemberJoined`.
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while host.members().len() < 2 {
        ensure!(Instant::now() < deadline, "the host never saw the joiner");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 2. + 3. The joiner does not read for longer than the failure detection, while the
    // host keeps sending: the broadcast reports the joiner's full queue and holds the
    // sender back, well short of every message.
    let mut next = 0u64;
    let mut held_back = 0u64;
    let started = Instant::now();
    while started.elapsed() < STALL && next < TOTAL {
        if try_broadcast(&host, next)? {
            next += 1;
            if next % 256 == 0 {
                tokio::task::yield_now().await;
            }
        } else {
            held_back += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    eprintln!("stalled reader: {next} messages of {MSG_LEN} bytes in flight, the sender held back {held_back} times");
    ensure!(
        held_back > 0 && next < TOTAL,
        "no back-pressure: {next} of {TOTAL} messages taken while the reader stalled"
    );
    // Still a session of two.
    ensure!(host.members().len() == 2, "host: {:?}", host.members());
    ensure!(
        joiner.members().len() == 2,
        "joiner: {:?}",
        joiner.members()
    );

    // 4. Read everything while the host sends the rest.
    let reader = tokio::spawn(async move {
        let mut expected = 0u64;
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        while expected < TOTAL {
            let event = tokio::time::timeout_at(deadline, joiner.next_event())
                .await
                .with_context(|| format!("message {expected} did not arrive"))?;
            match event {
                Some(SessionEvent::Message {
                    bytes, reliability, ..
                }) => {
                    ensure!(reliability == Reliability::ReliableOrdered);
                    let n = u64::from_be_bytes(bytes[..8].try_into()?);
                    ensure!(n == expected, "got message {n}, expected {expected}");
                    expected += 1;
                }
                Some(SessionEvent::Ended(why)) => bail!("ended: {why:?}"),
                Some(_) => {}
                None => bail!("events ended at {expected}"),
            }
        }
        anyhow::Ok(joiner)
    });
    let mut waits = 0u64;
    while next < TOTAL {
        if try_broadcast(&host, next)? {
            next += 1;
        } else {
            waits += 1;
            ensure!(started.elapsed() < 2 * PHASE_TIMEOUT, "the sender stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let joiner = reader.await??;
    eprintln!("all {TOTAL} messages in order; the sender waited {waits} times");
    for (who, s) in [("host", &host), ("joiner", &joiner)] {
        let stats = s.stats();
        ensure!(stats.events_dropped.load(Ordering::Relaxed) == 0, "{who}");
        ensure!(stats.messages_refused.load(Ordering::Relaxed) == 0, "{who}");
        ensure!(stats.violations.load(Ordering::Relaxed) == 0, "{who}");
        ensure!(stats.frames_dropped.load(Ordering::Relaxed) == 0, "{who}");
    }
    ensure!(host.members().contains(&joiner_id));
    joiner.leave().await;
    host.leave().await;
    Ok(())
}
