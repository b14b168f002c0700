//! The task that owns the sans-IO [`Coordinator`] and turns its outputs into stream writes
//! and connection closes.
//!
//! Steps:
//! 1. Wait for the next [`Event`] from a connection task (bounded queue), the
//!    coordinator's next deadline ([`Coordinator::poll_timeout`]), the next report tick
//!    (every `report_interval`), or shutdown.
//! 2. Feed it: `Connected` stores the connection's handle (outgoing queue and quinn
//!    connection) *before* [`Coordinator::handle_connected`], so even the `ServerFull`
//!    answer finds its way, and gives it the connection's RTT estimate at once; `Bytes`
//!    and `Disconnected` map 1:1; a passed deadline runs [`Coordinator::handle_timeout`].
//!    Up to [`EVENTS_PER_ROUND`] queued events are taken per wake-up.
//! 3. On a report tick, [`CoordTask::report`] reads every connection's RTT estimate
//!    ([`Coordinator::handle_rtt`]) and remote address, which changes on migration or NAT
//!    rebinding ([`Coordinator::handle_observed_addr`]). One sweep here instead of a
//!    timer in every connection task keeps idle connections small and quiet. After
//!    enough parks, the tick also returns freed memory to the OS ([`crate::memory`]).
//! 4. After every call, [`CoordTask::flush`]: every [`Coordinator::poll_send`] message is
//!    encoded ([`mesh::coord::encode`]) into the connection's bounded outgoing queue; a full
//!    queue closes that connection as too slow (and tells the coordinator it is gone).
//!    Then every [`Coordinator::poll_close`] queues a close behind the messages already
//!    queued, so the connection task delivers them first; if even that does not fit, the
//!    connection is closed at once.
//! 5. Parked peers' keep-alives (from the STUN worker's hook, bounded queue) go to
//!    [`Coordinator::handle_keepalive`]; every [`Coordinator::poll_transmit`] datagram
//!    (keep-alive answers, wakes) leaves from the server's primary socket, never waiting.
//! 6. After each round the counters are published to [`CoordMetrics`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh::coord::encode;
use mesh::identity::PeerId;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::config::CloseCode;
use super::ingress::Keepalive;
use super::stats::{CoordMetrics, CoordSnapshot, QuicCounters};
use crate::coordinator::{ConnId, Coordinator};
use crate::memory::Trimmer;
use crate::send_batch::SocketIo;

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
        /// The connection: its RTT estimate and address are read from it, and it is
        /// closed when its queue is full.
        connection: quinn::Connection,
    },
    /// Bytes read from the control stream.
    Bytes {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
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
    /// The remote address last given to the coordinator.
    addr: SocketAddr,
}

/// The coordinator task (see the module docs).
#[derive(Debug)]
pub struct CoordTask {
    coord: Coordinator,
    events: mpsc::Receiver<Event>,
    /// Parked peers' keep-alives, and the socket their answers and wakes leave from.
    park: Option<(mpsc::Receiver<Keepalive>, Arc<SocketIo>)>,
    /// The QUIC endpoint, for the gauge of the connections quinn holds.
    endpoint: Option<quinn::Endpoint>,
    /// Returns the memory of parked connections to the OS.
    trimmer: Trimmer,
    conns: HashMap<ConnId, Handle>,
    metrics: Arc<CoordMetrics>,
    report_interval: Duration,
}

impl CoordTask {
    /// A task driving `coord` from `events`, reading the connections' RTT estimates and
    /// addresses every `report_interval`.
    pub fn new(
        coord: Coordinator,
        events: mpsc::Receiver<Event>,
        metrics: Arc<CoordMetrics>,
        report_interval: Duration,
    ) -> Self {
        Self {
            coord,
            events,
            park: None,
            endpoint: None,
            trimmer: Trimmer::default(),
            conns: HashMap::new(),
            metrics,
            report_interval,
        }
    }

    /// Serves parked peers: their keep-alives from `keepalives`, answers and wakes sent
    /// through `socket` (the server's primary socket).
    pub fn with_parking(
        mut self,
        keepalives: mpsc::Receiver<Keepalive>,
        socket: Arc<SocketIo>,
    ) -> Self {
        self.park = Some((keepalives, socket));
        self
    }

    /// Publishes how many connections `endpoint` holds (closing ones included).
    pub fn with_endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Runs until `shutdown` flips (or its sender is gone) or every event sender is gone.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.report_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                keepalive = recv_opt(&mut self.park) => {
                    let now = Instant::now();
                    self.coord.handle_keepalive(now, keepalive.from, &keepalive.data);
                    // Take what else is queued, bounded.
                    for _ in 1..EVENTS_PER_ROUND {
                        let Some(k) = self.park.as_mut().and_then(|(rx, _)| rx.try_recv().ok()) else {
                            break;
                        };
                        self.coord.handle_keepalive(now, k.from, &k.data);
                    }
                    self.flush();
                }
                _ = sleep_until_opt(deadline) => {
                    self.coord.handle_timeout(Instant::now());
                    self.flush();
                }
                _ = tick.tick() => self.report(),
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
                let rtt = connection.rtt();
                let handle = Handle {
                    out,
                    connection,
                    addr,
                };
                self.conns.insert(conn, handle);
                self.coord.handle_connected(now, conn, peer, addr);
                self.coord.handle_rtt(conn, rtt);
            }
            Event::Bytes { conn, bytes } => self.coord.handle_bytes(now, conn, &bytes),
            Event::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.coord.handle_disconnected(conn);
            }
        }
        self.flush();
    }

    /// Gives the coordinator every connection's RTT estimate, and its address where it
    /// changed (see the module docs, step 3).
    pub fn report(&mut self) {
        // Parked connections closed at least a tick ago have drained: their memory is free.
        self.trimmer
            .maybe_release(Instant::now(), self.coord.stats().parked);
        for (&conn, handle) in &mut self.conns {
            self.coord.handle_rtt(conn, handle.connection.rtt());
            let addr = handle.connection.remote_address();
            if addr != handle.addr {
                tracing::debug!(%conn, from = %handle.addr, to = %addr, "peer address changed");
                handle.addr = addr;
                self.coord.handle_observed_addr(conn, addr);
            }
        }
    }

    /// Sends the coordinator's datagrams to parked peers (without waiting: a full socket
    /// buffer drops them, counted; the peers retransmit, the server resends wakes).
    fn send_datagrams(&mut self) {
        while let Some((to, datagram)) = self.coord.poll_transmit() {
            let Some((_, socket)) = &self.park else {
                continue;
            };
            // The coordinator keeps IPv4 peers as plain IPv4; a dual-stack socket needs
            // them IPv4-mapped.
            let to = match (socket.sock.local_addr(), to) {
                (Ok(local), SocketAddr::V4(v4)) if local.is_ipv6() => {
                    SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
                }
                _ => to,
            };
            if let Err(e) = socket.sock.try_send_to(&datagram, to) {
                QuicCounters::inc(&self.metrics.quic.park_send_failures);
                tracing::debug!(%to, error = %e, "datagram to a parked peer not sent");
            }
        }
    }

    /// Drains the coordinator's messages and closes (see the module docs, step 3).
    pub fn flush(&mut self) {
        self.send_datagrams();
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
            parked: self.coord.parked(),
            quic_connections: self.endpoint.as_ref().map_or(0, |e| e.open_connections()),
            pending: self.coord.pending_requests(),
        });
    }
}

/// The next keep-alive; waits forever without a queue, or once it is closed.
async fn recv_opt(park: &mut Option<(mpsc::Receiver<Keepalive>, Arc<SocketIo>)>) -> Keepalive {
    match park {
        Some((rx, _)) => match rx.recv().await {
            Some(k) => k,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
