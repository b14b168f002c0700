//! The task that owns the sans-IO [`Coordinator`] and turns its outputs into stream writes
//! and connection closes.
//!
//! Steps:
//! 1. Wait for the next [`Event`] from a connection task (bounded queue), the
//!    coordinator's next deadline ([`Coordinator::poll_timeout`]), or shutdown.
//! 2. Feed it: `Connected` stores the connection's handle (outgoing queue and quinn
//!    connection) *before* [`Coordinator::handle_connected`], so even the `ServerFull`
//!    answer finds its way; `Bytes`, `Rtt`, `Addr`, `Disconnected` map 1:1; a passed
//!    deadline runs [`Coordinator::handle_timeout`]. Up to [`EVENTS_PER_ROUND`] queued
//!    events are taken per wake-up.
//! 3. After every call, [`CoordTask::flush`]: every [`Coordinator::poll_send`] message is
//!    encoded ([`mesh::coord::encode`]) into the connection's bounded outgoing queue; a full
//!    queue closes that connection as too slow (and tells the coordinator it is gone).
//!    Then every [`Coordinator::poll_close`] queues a close behind the messages already
//!    queued, so the connection task delivers them first; if even that does not fit, the
//!    connection is closed at once.
//! 4. After each round the counters are published to [`CoordMetrics`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh::coord::encode;
use mesh::identity::PeerId;
use tokio::sync::{mpsc, watch};

use super::config::CloseCode;
use super::stats::{CoordMetrics, CoordSnapshot, QuicCounters};
use crate::coordinator::{ConnId, Coordinator};

/// Most events handled per wake-up before the counters are published again.
pub const EVENTS_PER_ROUND: usize = 256;

/// What a connection task tells the coordinator task.
#[derive(Debug)]
pub enum Event {
    /// The control stream is open.
    Connected {
        /// The connection's id.
        conn: ConnId,
        /// The peer id its certificate proved.
        peer: PeerId,
        /// Its address as the server sees it.
        addr: SocketAddr,
        /// Its writer's queue.
        out: mpsc::Sender<Outgoing>,
        /// The connection, to close it when its queue is full.
        connection: quinn::Connection,
    },
    /// Bytes read from the control stream.
    Bytes {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The connection's RTT estimate.
    Rtt {
        /// The connection.
        conn: ConnId,
        /// quinn's smoothed RTT.
        rtt: Duration,
    },
    /// The peer's address changed (migration or NAT rebinding).
    Addr {
        /// The connection.
        conn: ConnId,
        /// The new address.
        addr: SocketAddr,
    },
    /// The connection ended.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
}

/// What the coordinator task queues for a connection's writer.
#[derive(Debug)]
pub enum Outgoing {
    /// One encoded frame.
    Frame(Bytes),
    /// Finish the stream, let the peer take what is queued, then close with this code.
    Close(CloseCode),
}

/// The coordinator task's handle on one connection.
#[derive(Debug)]
struct Handle {
    out: mpsc::Sender<Outgoing>,
    connection: quinn::Connection,
}

/// The coordinator task (see the module docs).
#[derive(Debug)]
pub struct CoordTask {
    coord: Coordinator,
    events: mpsc::Receiver<Event>,
    conns: HashMap<ConnId, Handle>,
    metrics: Arc<CoordMetrics>,
}

impl CoordTask {
    /// A task driving `coord` from `events`.
    pub fn new(
        coord: Coordinator,
        events: mpsc::Receiver<Event>,
        metrics: Arc<CoordMetrics>,
    ) -> Self {
        Self {
            coord,
            events,
            conns: HashMap::new(),
            metrics,
        }
    }

    /// Runs until `shutdown` flips (or its sender is gone) or every event sender is gone.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let deadline = self.coord.poll_timeout();
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                event = self.events.recv() => {
                    let Some(event) = event else { break };
                    self.on_event(event);
                    for _ in 1..EVENTS_PER_ROUND {
                        match self.events.try_recv() {
                            Ok(event) => self.on_event(event),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    self.coord.handle_timeout(Instant::now());
                    self.flush();
                }
            }
            self.publish();
        }
        self.publish();
        tracing::debug!(connections = self.conns.len(), "coordinator task stopped");
    }

    /// Feeds one event to the coordinator and flushes its outputs.
    pub fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Connected {
                conn,
                peer,
                addr,
                out,
                connection,
            } => {
                self.conns.insert(conn, Handle { out, connection });
                self.coord.handle_connected(now, conn, peer, addr);
            }
            Event::Bytes { conn, bytes } => self.coord.handle_bytes(now, conn, &bytes),
            Event::Rtt { conn, rtt } => self.coord.handle_rtt(conn, rtt),
            Event::Addr { conn, addr } => self.coord.handle_observed_addr(conn, addr),
            Event::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.coord.handle_disconnected(conn);
            }
        }
        self.flush();
    }

    /// Drains the coordinator's messages and closes (see the module docs, step 3).
    pub fn flush(&mut self) {
        let mut gone: Vec<(ConnId, Option<CloseCode>)> = Vec::new();
        loop {
            while let Some((conn, msg)) = self.coord.poll_send() {
                let Some(handle) = self.conns.get(&conn) else {
                    tracing::trace!(%conn, "message for a closed connection dropped");
                    continue;
                };
                let mut frame = Vec::with_capacity(64);
                if let Err(e) = encode(&msg, &mut frame) {
                    tracing::warn!(%conn, error = %e, "cannot encode a coordinator message");
                    continue;
                }
                match handle.out.try_send(Outgoing::Frame(Bytes::from(frame))) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        gone.push((conn, Some(CloseCode::TooSlow)));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push((conn, None)),
                }
            }
            while let Some((conn, reason)) = self.coord.poll_close() {
                let code = CloseCode::from(reason);
                if let Some(handle) = self.conns.remove(&conn) {
                    tracing::debug!(%conn, %reason, "closing");
                    if handle.out.try_send(Outgoing::Close(code)).is_err() {
                        code.close(&handle.connection);
                    }
                }
            }
            if gone.is_empty() {
                return;
            }
            // Forgetting a connection may queue more messages (cancellations): go again.
            // Each round removes the connections it names, so this ends.
            for (conn, code) in gone.drain(..) {
                if let Some(handle) = self.conns.remove(&conn) {
                    if let Some(code) = code {
                        tracing::debug!(%conn, "outgoing queue full, closing as too slow");
                        QuicCounters::inc(&self.metrics.quic.too_slow);
                        code.close(&handle.connection);
                    }
                }
                self.coord.handle_disconnected(conn);
            }
        }
    }

    fn publish(&self) {
        self.metrics.publish(CoordSnapshot {
            stats: self.coord.stats().clone(),
            connections: self.coord.connections(),
            registered: self.coord.registered(),
            pending: self.coord.pending_requests(),
        });
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
