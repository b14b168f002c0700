//! The thin tokio driver around the sans-IO core: sockets, workers, hook, shutdown.
//!
//! Steps:
//!
//! 1. [`Server::start`] validates the config and binds the UDP sockets: the primary
//!    address, or, with an alternate address (RFC 5780), all four (IP, port) combinations.
//!    Port 0 is resolved to the real bound port; if a combination's port is taken, the
//!    whole set is re-bound (a bounded number of times).
//! 2. One worker task per socket owns its own [`StunServer`] core (so no lock per packet).
//!    It waits for readability, then drains up to [`BATCH`] datagrams without waiting,
//!    with batched receives (`recvmmsg`/GRO through `quinn-udp`): each goes through
//!    [`StunServer::handle_input`]; a response is sent from the socket the core names
//!    (CHANGE-REQUEST may name another one), through a [`SendBatcher`] that coalesces
//!    runs to one destination into GSO sends and is flushed after every receive call. A
//!    full send buffer drops the response (counted): UDP, the client retries.
//! 3. Datagrams that are not STUN (RFC 7983) go to the worker's [`NonStunHook`] with their
//!    [`DatagramMeta`]; the default one, [`DropNonStun`], logs at trace level and drops
//!    them (the core counts them). The QUIC punchthrough coordinator ([`crate::quic`])
//!    plugs in here, and sends its own datagrams through [`Server::socket`]. Parked peers'
//!    keep-alives (STUN, [`Outcome::Keepalive`]) go to the same hook's `on_keepalive`.
//! 4. After every batch the worker copies its counters into a shared [`Stats`] slot,
//!    which the metrics endpoint sums; other parts add their own metrics to it with
//!    [`Stats::add_source`].
//! 5. [`Server::shutdown`] signals every task through a watch channel and joins them.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::{EcnCodepoint, RecvMeta, BATCH_SIZE};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ServerConfig};
pub use crate::metrics_http::Stats;
use crate::send_batch::{SendBatcher, SocketIo};
use crate::server::{Endpoints, Outcome, SocketId, StunServer};

/// Most datagrams a worker handles between two readiness waits (bounds its time slice).
pub const BATCH: usize = 256;
/// Receive buffer: the largest UDP payload, so that no datagram is silently truncated.
const RECV_BUF: usize = 65_536;
/// How often binding the four RFC 5780 sockets is retried when a picked port is taken.
const BIND_ATTEMPTS: usize = 16;

/// Where a non-STUN datagram came from and arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramMeta {
    /// The bound address of the socket it arrived on (may be a wildcard address).
    pub local: SocketAddr,
    /// Its source.
    pub from: SocketAddr,
    /// The local IP it was sent to (`IP_PKTINFO`), if the OS reported it.
    pub dst_ip: Option<IpAddr>,
    /// Its ECN codepoint, if any.
    pub ecn: Option<EcnCodepoint>,
}

/// Receives the datagrams on the STUN port that are not STUN (RFC 7983 / RFC 9443).
///
/// One instance per worker (socket). The punchthrough coordinator implements this to get
/// its QUIC datagrams; it must not block.
pub trait NonStunHook: Send + 'static {
    /// One datagram (the whole UDP payload), with where it came from and arrived.
    fn on_datagram(&mut self, meta: &DatagramMeta, datagram: &[u8]);

    /// A parked peer's keep-alive ([`Outcome::Keepalive`]), which the coordinator checks
    /// and answers. The default drops it (no coordinator: nobody is parked).
    fn on_keepalive(&mut self, meta: &DatagramMeta, datagram: &[u8]) {
        tracing::trace!(from = %meta.from, len = datagram.len(), "keep-alive dropped");
    }
}

/// The default hook: drops non-STUN datagrams (already counted by the core) with a trace.
#[derive(Debug, Default, Clone, Copy)]
pub struct DropNonStun;

impl NonStunHook for DropNonStun {
    fn on_datagram(&mut self, meta: &DatagramMeta, datagram: &[u8]) {
        let (local, from) = (meta.local, meta.from);
        tracing::trace!(%local, %from, len = datagram.len(), "non-STUN datagram dropped");
    }
}

/// Makes the hook of each worker, given the socket it serves.
pub type HookFactory = Arc<dyn Fn(SocketId) -> Box<dyn NonStunHook> + Send + Sync>;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// A running punch server (STUN part).
#[derive(Debug)]
pub struct Server {
    endpoints: Endpoints,
    sockets: Arc<Vec<Arc<SocketIo>>>,
    metrics_addr: Option<SocketAddr>,
    stats: Stats,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds and starts serving with the default non-STUN hook ([`DropNonStun`]).
    pub async fn start(config: ServerConfig) -> Result<Server, DriverError> {
        Self::start_with_hook(config, Arc::new(|_| Box::new(DropNonStun))).await
    }

    /// Binds and starts serving; `hook` makes each worker's non-STUN hook.
    pub async fn start_with_hook(
        config: ServerConfig,
        hook: HookFactory,
    ) -> Result<Server, DriverError> {
        config.validate()?;
        let (endpoints, sockets) = bind_all(&config).await?;
        let mut ios = Vec::with_capacity(sockets.len());
        for (sock, (_, addr)) in sockets.into_iter().zip(endpoints.sockets()) {
            let io = SocketIo::new(sock).map_err(|source| DriverError::Bind { addr, source })?;
            ios.push(Arc::new(io));
        }
        let sockets: Arc<Vec<Arc<SocketIo>>> = Arc::new(ios);
        let stats = Stats::new(sockets.len());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(sockets.len() + 1);
        for (worker, (id, _)) in endpoints.sockets().enumerate() {
            let core = StunServer::new(config.stun.clone(), endpoints);
            let w = Worker {
                index: worker,
                id,
                sockets: Arc::clone(&sockets),
                core,
                hook: hook(id),
                stats: stats.clone(),
                gso: config.gso,
            };
            tasks.push(tokio::spawn(w.run(shutdown_rx.clone())));
        }
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DriverError::Bind { addr, source })?;
            metrics_addr = Some(
                listener
                    .local_addr()
                    .map_err(|source| DriverError::Bind { addr, source })?,
            );
            tasks.push(tokio::spawn(crate::metrics_http::serve(
                listener,
                stats.clone(),
                shutdown_rx.clone(),
            )));
        }
        Ok(Server {
            endpoints,
            sockets,
            metrics_addr,
            stats,
            shutdown,
            tasks,
        })
    }

    /// The bound STUN endpoints (real ports, never 0).
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    /// The bound primary STUN address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoints
            .addr(SocketId::PRIMARY)
            .unwrap_or(crate::config::DEFAULT_LISTEN)
    }

    /// The bound alternate address (alternate IP and port), if RFC 5780 is on.
    pub fn alt_addr(&self) -> Option<SocketAddr> {
        if self.endpoints.has_alternate() {
            self.endpoints.addr(SocketId::ALL[3])
        } else {
            None
        }
    }

    /// The socket `id` with its `quinn-udp` state, to send from the STUN port (the QUIC
    /// coordinator does); `None` if the server has no such socket.
    pub fn socket(&self, id: SocketId) -> Option<Arc<SocketIo>> {
        self.sockets.get(id.index()).cloned()
    }

    /// The bound metrics address, if the endpoint is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The counters summed over all workers (as of their last batch).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds one socket, or all four for RFC 5780, in [`SocketId::ALL`] order.
async fn bind_all(config: &ServerConfig) -> Result<(Endpoints, Vec<UdpSocket>), DriverError> {
    let bind = |addr: SocketAddr| async move {
        UdpSocket::bind(addr)
            .await
            .and_then(|s| s.local_addr().map(|a| (s, a)))
            .map_err(|source| DriverError::Bind { addr, source })
    };
    let Some(alt) = config.alt_addr else {
        let (sock, addr) = bind(config.listen).await?;
        return Ok((Endpoints::new(addr, None), vec![sock]));
    };
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let (primary, p) = bind(config.listen).await?;
        let (alternate, a) = bind(alt).await?;
        let cross = (
            bind(SocketAddr::new(p.ip(), a.port())).await,
            bind(SocketAddr::new(a.ip(), p.port())).await,
        );
        match cross {
            (Ok((pa, _)), Ok((ap, _))) => {
                return Ok((Endpoints::new(p, Some(a)), vec![primary, pa, ap, alternate]));
            }
            (Err(e), _) | (_, Err(e)) => {
                // Only a picked (port 0) port can be retried; a fixed port stays taken.
                if config.listen.port() != 0 && alt.port() != 0 {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or(DriverError::Config(ConfigError::Invalid("cannot bind"))))
}

struct Worker {
    index: usize,
    id: SocketId,
    sockets: Arc<Vec<Arc<SocketIo>>>,
    core: StunServer,
    hook: Box<dyn NonStunHook>,
    stats: Stats,
    gso: bool,
}

impl Worker {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let Some(io) = self.sockets.get(self.id.index()).cloned() else {
            return;
        };
        let (sock, state) = (&io.sock, &io.state);
        let max_gso = self
            .sockets
            .iter()
            .map(|s| s.state.max_gso_segments())
            .min();
        let max_gso = if self.gso { max_gso.unwrap_or(1) } else { 1 };
        let mut batcher = SendBatcher::new(max_gso);
        let local = self.core.endpoints().addr(self.id);
        let mut bufs: Vec<Vec<u8>> = (0..BATCH_SIZE).map(|_| vec![0u8; RECV_BUF]).collect();
        let mut iov: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                ready = sock.readable() => {
                    if let Err(e) = ready {
                        tracing::error!(error = %e, "STUN socket failed");
                        break;
                    }
                }
            }
            let now = Instant::now();
            // Bounded: at most BATCH / BATCH_SIZE receive calls before waiting again.
            for _ in 0..BATCH.div_ceil(BATCH_SIZE) {
                // quinn-udp: recvmmsg (and GRO) on Linux, up to BATCH_SIZE datagrams per call.
                let n = match sock.try_io(Interest::READABLE, || {
                    state.recv(sock.into(), &mut iov, &mut meta)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here; keep serving.
                        tracing::debug!(error = %e, "recv error");
                        continue;
                    }
                };
                for (m, buf) in meta.iter().zip(iov.iter()).take(n) {
                    let data = buf.get(..m.len).unwrap_or_default();
                    // With GRO one buffer holds several datagrams of `stride` bytes each.
                    for datagram in data.chunks(m.stride.max(1)) {
                        self.handle(now, m, datagram, local, &mut batcher);
                    }
                }
                let lost = batcher.flush(&self.sockets);
                self.core.record_send_failures(lost);
            }
            self.stats.publish(self.index, self.core.counters());
        }
        self.stats.publish(self.index, self.core.counters());
    }

    fn handle(
        &mut self,
        now: Instant,
        meta: &RecvMeta,
        datagram: &[u8],
        local: Option<SocketAddr>,
        batcher: &mut SendBatcher,
    ) {
        let (from, dst_ip) = (meta.addr, meta.dst_ip);
        match self.core.handle_input(now, self.id, from, datagram) {
            Outcome::Transmit(t) => {
                // A wildcard socket answers from the IP the request was sent to (IP_PKTINFO),
                // not whatever the routing table picks on a multi-homed host.
                let wildcard = local.is_some_and(|a| a.ip().is_unspecified());
                let src_ip = (wildcard && t.local == self.id).then_some(dst_ip).flatten();
                let (i, to) = (t.local.index(), t.destination);
                let lost = batcher.push(&self.sockets, i, to, src_ip, t.contents);
                self.core.record_send_failures(lost);
            }
            outcome @ (Outcome::NotStun | Outcome::Keepalive) => {
                if let Some(local) = local {
                    let meta = DatagramMeta {
                        local,
                        from,
                        dst_ip,
                        ecn: meta.ecn,
                    };
                    if outcome == Outcome::NotStun {
                        self.hook.on_datagram(&meta, datagram);
                    } else {
                        self.hook.on_keepalive(&meta, datagram);
                    }
                }
            }
            Outcome::Dropped(_) => {}
        }
    }
}
