//! The QUIC driver of the punch coordinator: the sans-IO
//! [`Coordinator`] served over QUIC on the STUN port.
//!
//! Flow:
//! 1. [`start`] checks the QUIC and coordinator settings and the limit between them
//!    ([`QuicConfig::validate_with`], once), makes the bounded ingress queue and its hook
//!    factory ([`ingress()`]), and starts the STUN [`Server`] with it: the primary socket's
//!    worker hands every QUIC datagram (first byte 64-127 or 192-255) to the queue without
//!    ever waiting; the RFC 5780 alternate sockets drop QUIC.
//! 2. [`CoordServer::start`] (which checks the settings too when called directly) wraps the primary socket and the queue in a [`HookSocket`]
//!    (quinn's `AsyncUdpSocket`: receives from the queue, sends through the same socket,
//!    so peers see one address) and creates the quinn endpoint on it, without QUIC-bit
//!    greasing and with random connection ids ([`QuicConfig::endpoint_config`]), and with
//!    the server identity's mutual TLS ([`QuicConfig::server_config`]).
//! 3. The accept loop first asks a client whose address is not validated yet for a QUIC
//!    Retry (RFC 9000 §8.1.2): always by default, so the server never sends more than
//!    3 times what an unvalidated source sent (RFC 9000 §8.1), or with
//!    [`RetryPolicy::UnderLoad`] only while half of `max_handshakes` are in progress. It
//!    admits a connection if a handshake slot (`max_handshakes`) and a connection slot
//!    (`max_connections`) are free, else refuses it. Each admitted
//!    connection gets a task ([`conn_task`]): handshake, peer id from the client
//!    certificate, the one control stream, the stream pumps and RTT/address reports.
//! 4. The coordinator task ([`coord_task`]) owns the `Coordinator` (seeded from the OS),
//!    takes the connection tasks' events from a bounded queue, wakes at its deadlines, and
//!    after every call writes its messages ([`mesh::coord::encode`]) into the connections'
//!    bounded outgoing queues and carries out its closes (messages first, then the close
//!    with a [`CloseCode`]).
//!    Parked peers (see [`crate::coordinator`]) need no task: the coordinator task takes
//!    their keep-alives from the STUN worker's hook and sends their answers and wakes
//!    from the primary socket.
//! 5. Counters ([`CoordMetrics`]) are added to the STUN server's `/metrics` as
//!    `punch_coord_*`.
//! 6. [`CoordServer::shutdown`] stops accepting, closes every connection
//!    ([`CloseCode::Shutdown`]), waits (bounded) for the connection tasks and for the
//!    endpoint to drain, and stops the coordinator task; then shut the STUN server down.

mod config;
pub mod conn_task;
pub mod coord_task;
mod ingress;
mod stats;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mesh::identity::{Identity, IdentityError};
use rand::RngCore;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

pub use config::{CloseCode, QuicConfig, RetryPolicy, MAX_COUNT};
pub use ingress::{ingress, HookSocket, IngressQueue, QuicHook};
pub use stats::{CoordMetrics, CoordSnapshot, QuicCounters};

use crate::config::{ConfigError, ServerConfig};
use crate::coordinator::{ConnId, CoordConfig, Coordinator};
use crate::driver::{DriverError, Server};
use crate::server::SocketId;
use conn_task::ConnCtx;
use coord_task::CoordTask;

/// Why the QUIC coordinator could not start.
#[derive(Debug, Error)]
pub enum QuicError {
    /// A setting is invalid (or the QUIC and coordinator limits do not fit together).
    #[error("invalid QUIC settings: {0}")]
    Config(String),
    /// A setting of the sans-IO coordinator ([`CoordConfig`]) is invalid.
    #[error(transparent)]
    Coord(ConfigError),
    /// The TLS configuration could not be built from the identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The STUN server has no primary socket to share.
    #[error("the STUN server has no primary socket")]
    NoPrimarySocket,
    /// quinn could not start the endpoint.
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(#[source] io::Error),
    /// The STUN server could not start.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Starts the STUN server with the QUIC hook and the coordinator on its primary port,
/// after checking the settings ([`QuicConfig::validate_with`]; the STUN server checks
/// `config`). Shut down with [`CoordServer::shutdown`], then [`Server::shutdown`].
pub async fn start(
    config: ServerConfig,
    quic: QuicConfig,
    coord: CoordConfig,
    identity: &Identity,
) -> Result<(Server, CoordServer), QuicError> {
    quic.validate_with(&coord)?;
    let metrics = Arc::new(CoordMetrics::default());
    let (hook, queue) = ingress(
        quic.ingress_queue,
        quic.max_datagram_len,
        Arc::clone(&metrics),
    );
    let server = Server::start_with_hook(config, hook).await?;
    match CoordServer::start_validated(&server, queue, identity, quic, coord, metrics) {
        Ok(coord) => Ok((server, coord)),
        Err(e) => {
            server.shutdown().await;
            Err(e)
        }
    }
}

/// The running QUIC side of the coordinator.
#[derive(Debug)]
pub struct CoordServer {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    metrics: Arc<CoordMetrics>,
    slots: Arc<Semaphore>,
    config: QuicConfig,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl CoordServer {
    /// Starts the endpoint on `server`'s primary socket, fed by `queue` (made by
    /// [`ingress()`] with the same `metrics`, whose hook factory `server` was started with),
    /// the accept loop and the coordinator task, after checking the settings
    /// ([`QuicConfig::validate_with`]). Adds `metrics` to the server's `/metrics`.
    pub fn start(
        server: &Server,
        queue: IngressQueue,
        identity: &Identity,
        quic: QuicConfig,
        coord: CoordConfig,
        metrics: Arc<CoordMetrics>,
    ) -> Result<Self, QuicError> {
        quic.validate_with(&coord)?;
        Self::start_validated(server, queue, identity, quic, coord, metrics)
    }

    /// [`CoordServer::start`] with settings the caller has already checked.
    fn start_validated(
        server: &Server,
        mut queue: IngressQueue,
        identity: &Identity,
        quic: QuicConfig,
        coord: CoordConfig,
        metrics: Arc<CoordMetrics>,
    ) -> Result<Self, QuicError> {
        let io = server
            .socket(SocketId::PRIMARY)
            .ok_or(QuicError::NoPrimarySocket)?;
        let local_addr = server.local_addr();
        let keepalives = queue.take_keepalives();
        let socket = HookSocket::new(Arc::clone(&io), local_addr, queue, Arc::clone(&metrics));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            QuicConfig::endpoint_config(),
            Some(quic.server_config(identity)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(QuicError::Endpoint)?;
        server.stats().add_source(metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, events_rx) = mpsc::channel(quic.event_queue);
        let mut coordinator = Coordinator::new(coord, Instant::now(), os_seed());
        // Relay credentials carry UNIX expiries; a clock before 1970 offers none.
        if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            coordinator.set_wall_clock(Instant::now(), since);
        }
        let mut coord_task = CoordTask::new(
            coordinator,
            events_rx,
            Arc::clone(&metrics),
            quic.report_interval,
        );
        if let Some(keepalives) = keepalives {
            coord_task = coord_task.with_parking(keepalives, io);
        }
        coord_task = coord_task.with_endpoint(endpoint.clone());
        let slots = Arc::new(Semaphore::new(quic.max_connections));
        let accept = AcceptLoop {
            endpoint: endpoint.clone(),
            ctx: Arc::new(ConnCtx {
                config: quic.clone(),
                events,
                metrics: Arc::clone(&metrics),
            }),
            handshakes: Arc::new(Semaphore::new(quic.max_handshakes)),
            slots: Arc::clone(&slots),
            next_id: AtomicU64::new(1),
        };
        let tasks = vec![
            tokio::spawn(coord_task.run(shutdown_rx.clone())),
            tokio::spawn(accept.run(shutdown_rx)),
        ];
        tracing::debug!(addr = %local_addr, id = %identity.peer_id(), "QUIC coordinator started");
        Ok(Self {
            endpoint,
            local_addr,
            metrics,
            slots,
            config: quic,
            shutdown,
            tasks,
        })
    }

    /// The UDP address the coordinator is reached at (the STUN primary address).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared counters.
    pub fn metrics(&self) -> Arc<CoordMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Closes every connection, waits (at most `shutdown_timeout`) for the connection
    /// tasks and the endpoint to finish, and stops the tasks.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        let _ = self.shutdown.send(true);
        let code = CloseCode::Shutdown;
        self.endpoint.close(code.varint(), code.reason().as_bytes());
        // Every connection task holds one slot: all slots free = all tasks done.
        let all = u32::try_from(self.config.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout_at(deadline, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("connection tasks still running at shutdown");
        }
        if tokio::time::timeout_at(deadline, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("QUIC endpoint not idle at shutdown");
        }
        for task in self.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("coordinator task did not stop in time");
            }
        }
    }
}

/// Admits incoming connections (see the module docs, step 3).
struct AcceptLoop {
    endpoint: quinn::Endpoint,
    ctx: Arc<ConnCtx>,
    handshakes: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl AcceptLoop {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let metrics = Arc::clone(&self.ctx.metrics);
        let q = &metrics.quic;
        let max = self.ctx.config.max_handshakes;
        let busy_at = (max / 2).max(1);
        loop {
            let mut incoming = tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let in_progress = max.saturating_sub(self.handshakes.available_permits());
            let retry = match self.ctx.config.retry {
                RetryPolicy::Always => true,
                RetryPolicy::UnderLoad => in_progress >= busy_at,
            };
            if retry && !incoming.remote_address_validated() {
                // Make the client prove its address before any handshake work.
                match incoming.retry() {
                    Ok(()) => {
                        QuicCounters::inc(&q.retries_sent);
                        continue;
                    }
                    Err(e) => incoming = e.into_incoming(),
                }
            }
            let permits = (
                Arc::clone(&self.slots).try_acquire_owned(),
                Arc::clone(&self.handshakes).try_acquire_owned(),
            );
            let (Ok(slot), Ok(handshake)) = permits else {
                QuicCounters::inc(&q.connections_refused);
                tracing::debug!(addr = %incoming.remote_address(), "connection refused: limit");
                incoming.refuse();
                continue;
            };
            QuicCounters::inc(&q.connections_accepted);
            let id = ConnId(self.next_id.fetch_add(1, Ordering::Relaxed));
            tokio::spawn(conn_task::run(
                incoming,
                id,
                Arc::clone(&self.ctx),
                handshake,
                slot,
            ));
        }
        tracing::debug!("accept loop stopped");
    }
}

/// 32 random bytes from the OS (the thread generator, itself OS-seeded, if that fails).
fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if rand::rngs::OsRng.try_fill_bytes(&mut seed).is_err() {
        rand::thread_rng().fill_bytes(&mut seed);
    }
    seed
}
