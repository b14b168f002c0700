//! [`Endpoint`]: one UDP socket, one quinn endpoint, one identity.
//!
//! Flow:
//! 1. [`Endpoint::bind`] opens the [`MeshSocket`], builds the mutual-TLS server
//!    configuration of the [`Identity`] and creates the quinn endpoint on the socket with
//!    `quinn::Endpoint::new_with_abstract_socket`. It hands back the STUN queue.
//! 2. [`Endpoint::connect`] registers the peer's path in the path table, dials the peer's
//!    synthetic address with a client configuration that accepts only the expected
//!    [`PeerId`] (QUIC-TLS, RFC 9001 / RFC 8446) and returns a [`PeerConnection`]; a key
//!    mismatch is [`ConnectError::Identity`] with both ids.
//! 3. [`Endpoint::accept`] waits for an incoming handshake, reads the peer's verified key and
//!    pins the learned synthetic address to it.
//!    The endpoint never greases the QUIC bit ([`endpoint_config`]), so every QUIC packet it
//!    receives passes the first-byte demultiplexing.
//! 4. Every connection runs in a tracing span naming the peer; handshakes are bounded by
//!    [`EndpointOptions::handshake_timeout`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::path::{Path, PathTable, PathTableFull, DEFAULT_CAPACITY, DEFAULT_IDLE_TIMEOUT};
use super::udp::{MeshSocket, RawSendError, SocketStats, StunReceiver, DEFAULT_STUN_QUEUE};
use crate::identity::{tls, Identity, IdentityError, PeerId};

/// Initial RTT estimate of every connection, before the first sample.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);

/// Smallest measured RTT used as a connection's initial RTT.
const MIN_MEASURED_RTT: Duration = Duration::from_millis(2);

/// Tunables of an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Bound of the path table.
    pub max_paths: usize,
    /// Idle time after which a learned path may be evicted when the table is full.
    pub path_idle_timeout: Duration,
    /// Bound of the STUN queue.
    pub stun_queue: usize,
    /// Longest time a handshake may take.
    pub handshake_timeout: Duration,
    /// quinn transport parameters for every connection (accepted ones, and dialed ones
    /// whose path RTT is unknown).
    pub transport: Arc<quinn::TransportConfig>,
    /// Builds the transport parameters of a dialed connection whose path RTT was just
    /// measured (by probing, [`Endpoint::connect_with_rtt`]): loss recovery of the handshake
    /// then starts from the real RTT instead of a guess, which matters on lossy paths.
    pub transport_for_rtt: fn(Duration) -> quinn::TransportConfig,
}

/// The default transport parameters, with `initial_rtt` as the RTT estimate before the
/// first sample: keep-alive every 10 s (keeps NAT mappings open).
pub fn default_transport(initial_rtt: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.initial_rtt(initial_rtt);
    transport
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            max_paths: DEFAULT_CAPACITY,
            path_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            stun_queue: DEFAULT_STUN_QUEUE,
            handshake_timeout: Duration::from_secs(20),
            // RFC 9002 starts at 333 ms, tuned for unknown paths; games on lossy links
            // recover a lost handshake packet three times sooner from 100 ms (the estimate
            // takes over after the first sample).
            transport: Arc::new(default_transport(INITIAL_RTT)),
            transport_for_rtt: default_transport,
        }
    }
}

/// The quinn endpoint configuration for a shared socket.
///
/// The QUIC bit is not greased (RFC 9287): a peer that greases it sends short headers with a
/// first byte in 0-63, which RFC 7983 demultiplexing (and our [`super::demux::classify`])
/// takes for STUN or DTLS. Without the `grease_quic_bit` transport parameter peers keep it set.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    config
}

/// Errors of binding an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The socket could not be opened.
    #[error("cannot bind udp socket: {0}")]
    Io(#[from] io::Error),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Errors of connecting to or accepting a peer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The remote is not the expected peer, or its certificate is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The path table has no room for another peer.
    #[error(transparent)]
    PathTableFull(#[from] PathTableFull),
    /// quinn refused to start the connection.
    #[error("cannot start connection: {0}")]
    Start(#[from] quinn::ConnectError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// An established, identity-checked QUIC connection to a peer.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// The quinn connection.
    pub connection: quinn::Connection,
    /// The verified identity of the remote peer.
    pub peer_id: PeerId,
    /// The synthetic address quinn knows the peer by.
    pub synthetic_addr: SocketAddr,
}

/// One UDP socket, the quinn endpoint on it, and this peer's identity.
#[derive(Debug)]
pub struct Endpoint {
    identity: Arc<Identity>,
    socket: Arc<MeshSocket>,
    quinn: quinn::Endpoint,
    options: EndpointOptions,
}

impl Endpoint {
    /// Binds the socket at `addr` and starts the quinn endpoint (inside a tokio runtime).
    pub fn bind(
        addr: SocketAddr,
        identity: Arc<Identity>,
        options: EndpointOptions,
    ) -> Result<(Self, StunReceiver), BindError> {
        let paths = PathTable::new(options.max_paths, options.path_idle_timeout);
        let (socket, stun) = MeshSocket::bind(addr, paths, options.stun_queue)?;
        let server = tls::server_config(&identity, Some(options.transport.clone()))?;
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        tracing::debug!(peer = %identity.peer_id(), local = ?socket.real_local_addr(), "endpoint bound");
        Ok((
            Self {
                identity,
                socket,
                quinn,
                options,
            },
            stun,
        ))
    }

    /// This endpoint's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// The real local address of the shared socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.real_local_addr()
    }

    /// The shared socket: path table, counters, raw sends.
    pub fn socket(&self) -> &Arc<MeshSocket> {
        &self.socket
    }

    /// The underlying quinn endpoint.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.quinn
    }

    /// Counters of the shared socket.
    pub fn stats(&self) -> SocketStats {
        self.socket.stats()
    }

    /// Sends a STUN message (or probe) to a real address through the shared socket.
    pub async fn send_stun(&self, dest: SocketAddr, data: &[u8]) -> Result<(), RawSendError> {
        self.socket.send_stun(dest, data).await
    }

    /// Connects to `peer` directly at `addr`, accepting only that peer's key.
    pub async fn connect(
        &self,
        peer: PeerId,
        addr: SocketAddr,
    ) -> Result<PeerConnection, ConnectError> {
        self.connect_with_rtt(peer, addr, None).await
    }

    /// [`Endpoint::connect`] on a path whose RTT was just measured (`rtt`, e.g. by the
    /// connectivity check that validated it); the handshake's loss recovery starts from it.
    pub async fn connect_with_rtt(
        &self,
        peer: PeerId,
        addr: SocketAddr,
        rtt: Option<Duration>,
    ) -> Result<PeerConnection, ConnectError> {
        let transport = match rtt {
            // quinn's timer granularity is 1 ms; a LAN RTT below it would make the first
            // retransmissions needlessly eager.
            Some(rtt) => Arc::new((self.options.transport_for_rtt)(rtt.max(MIN_MEASURED_RTT))),
            None => self.options.transport.clone(),
        };
        let (synthetic, created) = {
            // Only an entry this call adds is removed again on failure; an adopted or moved
            // one may carry another connection.
            let mut paths = self.socket.paths();
            let before = paths.len();
            let synthetic = paths.upsert_peer(Instant::now(), peer, Path::Direct(addr))?;
            (synthetic, paths.len() > before)
        };
        let span = tracing::info_span!("peer", peer = %peer.short(), dir = "out", %addr);
        let result = async {
            let (config, check) = tls::client_config(&self.identity, peer, Some(transport))?;
            let connecting =
                self.quinn
                    .connect_with(config, synthetic, &tls::server_name(&peer))?;
            let connection =
                match tokio::time::timeout(self.options.handshake_timeout, connecting).await {
                    Err(_) => return Err(ConnectError::Timeout(self.options.handshake_timeout)),
                    Ok(Err(e)) => {
                        let err = check
                            .mismatch()
                            .map(ConnectError::Identity)
                            .unwrap_or_else(|| e.into());
                        tracing::debug!(error = %err, "connect failed");
                        return Err(err);
                    }
                    Ok(Ok(c)) => c,
                };
            // The verifier already checked the key; check again on the finished connection.
            let actual = tls::remote_peer_id(&connection)?;
            if actual != peer {
                connection.close(0u32.into(), b"peer id mismatch");
                return Err(IdentityError::PeerIdMismatch {
                    expected: peer,
                    actual,
                }
                .into());
            }
            tracing::debug!("connected");
            Ok(PeerConnection {
                connection,
                peer_id: actual,
                synthetic_addr: synthetic,
            })
        }
        .instrument(span)
        .await;
        if result.is_err() && created {
            // Do not keep a path for a peer we never reached.
            self.socket.paths().remove(&synthetic);
        }
        result
    }

    /// Connects to whatever key answers at `addr` (development only: a punch server named
    /// without its id, `--insecure`). The returned [`PeerConnection::peer_id`] is the key
    /// the remote proved; pin it if you talk to it again.
    pub async fn connect_insecure(&self, addr: SocketAddr) -> Result<PeerConnection, ConnectError> {
        let (synthetic, created) = {
            let mut paths = self.socket.paths();
            let before = paths.len();
            let synthetic = paths
                .on_incoming(Instant::now(), addr)
                .ok_or(PathTableFull {
                    capacity: self.options.max_paths,
                })?;
            (synthetic, paths.len() > before)
        };
        let span = tracing::info_span!("peer", peer = tracing::field::Empty, dir = "out", %addr);
        let result = async {
            tracing::warn!("connecting without checking the remote key (insecure)");
            let config =
                tls::client_config_insecure(&self.identity, Some(self.options.transport.clone()))?;
            let connecting =
                self.quinn
                    .connect_with(config, synthetic, tls::INSECURE_SERVER_NAME)?;
            let connection = tokio::time::timeout(self.options.handshake_timeout, connecting)
                .await
                .map_err(|_| ConnectError::Timeout(self.options.handshake_timeout))??;
            let peer_id = tls::remote_peer_id(&connection)?;
            tracing::Span::current().record("peer", tracing::field::display(peer_id.short()));
            self.socket.paths().bind_peer(&synthetic, peer_id);
            Ok(PeerConnection {
                connection,
                peer_id,
                synthetic_addr: synthetic,
            })
        }
        .instrument(span)
        .await;
        if result.is_err() && created {
            self.socket.paths().remove(&synthetic);
        }
        result
    }

    /// Waits for the next incoming connection and completes its handshake.
    ///
    /// `None` once the endpoint is closed. An `Err` concerns one failed handshake only; call
    /// again for the next. This completes one handshake at a time; a server that must not
    /// let one slow handshake hold up the others takes [`Endpoint::accept_incoming`] and
    /// runs [`Endpoint::handshake`] in a task per connection.
    pub async fn accept(&self) -> Option<Result<PeerConnection, ConnectError>> {
        let incoming = self.accept_incoming().await?;
        Some(self.handshake(incoming).await)
    }

    /// Waits for the next incoming connection attempt (handshake not done yet); `None`
    /// once the endpoint is closed.
    pub async fn accept_incoming(&self) -> Option<quinn::Incoming> {
        self.quinn.accept().await
    }

    /// Completes the handshake of an incoming connection (bounded by
    /// [`EndpointOptions::handshake_timeout`]), reads the peer's verified key and pins the
    /// learned synthetic address to it.
    pub async fn handshake(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<PeerConnection, ConnectError> {
        self.handshake_with_rtt(incoming, None).await
    }

    /// [`Endpoint::handshake`] with an estimate of the path's RTT (e.g. from the
    /// connectivity checks that just opened it): the server's retransmissions of its
    /// handshake flight then start from it instead of the generic initial RTT, which on a
    /// lossy short path saves seconds of backed-off timers.
    pub async fn handshake_with_rtt(
        &self,
        incoming: quinn::Incoming,
        rtt: Option<Duration>,
    ) -> Result<PeerConnection, ConnectError> {
        let synthetic = incoming.remote_address();
        let span = tracing::info_span!("peer", dir = "in", peer = tracing::field::Empty);
        async {
            let connecting = match rtt {
                Some(rtt) => {
                    let transport = (self.options.transport_for_rtt)(rtt.max(MIN_MEASURED_RTT));
                    let config = tls::server_config(&self.identity, Some(Arc::new(transport)))?;
                    incoming.accept_with(Arc::new(config))?
                }
                None => incoming.accept()?,
            };
            let connection = tokio::time::timeout(self.options.handshake_timeout, connecting)
                .await
                .map_err(|_| ConnectError::Timeout(self.options.handshake_timeout))??;
            let peer_id = tls::remote_peer_id(&connection)?;
            tracing::Span::current().record("peer", tracing::field::display(peer_id.short()));
            self.socket.paths().bind_peer(&synthetic, peer_id);
            tracing::debug!("accepted");
            Ok(PeerConnection {
                connection,
                peer_id,
                synthetic_addr: synthetic,
            })
        }
        .instrument(span)
        .await
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.quinn.close(code.into(), reason);
    }

    /// Waits until every connection is closed and its packets are flushed.
    pub async fn wait_idle(&self) {
        self.quinn.wait_idle().await;
    }
}
