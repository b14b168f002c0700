//! [`Endpoint`]: one UDP socket, one quinn endpoint, one identity.
//!
//! Flow:
//! 1. [`Endpoint::bind`] opens the [`MeshSocket`], builds the transport parameters for paths
//!    of unknown RTT ([`EndpointOptions::transport`] with `None`) and the mutual-TLS server
//!    configuration of the [`Identity`], keeps both for every later connection, and creates
//!    the quinn endpoint on the socket with `quinn::Endpoint::new_with_abstract_socket`. It
//!    hands back the STUN queue.
//! 2. [`Endpoint::connect`] registers the peer's path in the path table, dials the peer's
//!    synthetic address with a client configuration that accepts only the expected
//!    [`PeerId`] (QUIC-TLS, RFC 9001 / RFC 8446) and returns a [`PeerConnection`]; a key
//!    mismatch is [`ConnectError::Identity`] with both ids. [`Endpoint::connect_insecure`]
//!    accepts any key and pins the path to the key the remote proved. A failed dial removes
//!    the path it created.
//! 3. [`Endpoint::accept`] waits for an incoming handshake, reads the peer's verified key and
//!    pins the learned synthetic address to it.
//!    The endpoint never greases the QUIC bit ([`endpoint_config`]), so every QUIC packet it
//!    receives passes the first-byte demultiplexing.
//! 4. A dial or handshake given a measured RTT ([`Endpoint::connect_with_rtt`],
//!    [`Endpoint::handshake_with_rtt`]) gets transport parameters built for that RTT; the
//!    handshake reuses the server configuration of step 1 with them.
//! 5. Every connection runs in a tracing span naming the peer; handshakes are bounded by
//!    [`EndpointOptions::handshake_timeout`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::path::{
    DialTarget, Path, PathTable, PathTableFull, DEFAULT_CAPACITY, DEFAULT_IDLE_TIMEOUT,
};
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
    /// Builds the quinn transport parameters of a connection from its path's RTT, the one
    /// place to tune them. `None`: the RTT is unknown ([`Endpoint::connect`],
    /// [`Endpoint::accept`], ...); built once at [`Endpoint::bind`] and shared.
    /// `Some(rtt)`: the RTT was just measured (by probing: [`Endpoint::connect_with_rtt`],
    /// [`Endpoint::handshake_with_rtt`]; at least 2 ms), so loss recovery of the handshake
    /// starts from the real RTT instead of a guess, which matters on lossy paths. The
    /// default is [`default_transport`], with [`INITIAL_RTT`] for `None`.
    pub transport: fn(Option<Duration>) -> quinn::TransportConfig,
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
            transport: |rtt| default_transport(rtt.unwrap_or(INITIAL_RTT)),
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
    /// `options.transport` for an unknown RTT, built at bind.
    transport: Arc<quinn::TransportConfig>,
    /// The server configuration built at bind (with `transport`); a handshake with a known
    /// RTT clones it with its own transport parameters.
    server: quinn::ServerConfig,
    options: EndpointOptions,
    /// Address-validation tokens (NEW_TOKEN, RFC 9000 §8.1.3) servers gave us, shared by
    /// every dial (quinn's default keeps them per client configuration, which is built
    /// per dial): a dial again to the same server (a woken parked node reconnecting to
    /// its punch server) skips the Retry round trip. Bounded by quinn.
    tokens: Arc<quinn::TokenMemoryCache>,
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
        let transport = Arc::new((options.transport)(None));
        let server = tls::server_config(&identity, Some(transport.clone()))?;
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            Some(server.clone()),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        tracing::debug!(peer = %identity.peer_id(), local = ?socket.real_local_addr(), "endpoint bound");
        Ok((
            Self {
                identity,
                socket,
                quinn,
                transport,
                server,
                options,
                tokens: Arc::new(quinn::TokenMemoryCache::default()),
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

    /// Sends a STUN message whose answers go to `owner`'s queue (see
    /// [`MeshSocket::route_stun`]).
    pub async fn send_stun_as(
        &self,
        owner: crate::stun::StunOwner,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), RawSendError> {
        self.socket.send_stun_as(owner, dest, data).await
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
        self.connect_via(peer, Path::direct(addr), rtt).await
    }

    /// Connects to `peer` over `path` (direct, or relayed through a TURN channel the caller
    /// has bound), accepting only that peer's key; `rtt` as in
    /// [`Endpoint::connect_with_rtt`]. The path becomes the peer's active one.
    pub async fn connect_via(
        &self,
        peer: PeerId,
        path: Path,
        rtt: Option<Duration>,
    ) -> Result<PeerConnection, ConnectError> {
        let target = self.socket.paths().dial_peer(Instant::now(), peer, path)?;
        let span = tracing::info_span!("peer", peer = %peer.short(), dir = "out", ?path);
        let dial = async {
            let transport = self.transport_for(rtt);
            let (mut config, check) = tls::client_config(&self.identity, peer, Some(transport))?;
            config.token_store(self.tokens.clone());
            let connecting =
                self.quinn
                    .connect_with(config, target.synthetic, &tls::server_name(&peer))?;
            match self
                .finish_handshake(connecting, target.synthetic, Some(peer))
                .await
            {
                Ok(connection) => {
                    tracing::debug!("connected");
                    Ok(connection)
                }
                Err(e) => {
                    let err = match e {
                        ConnectError::Handshake(_) => {
                            check.mismatch().map(ConnectError::Identity).unwrap_or(e)
                        }
                        e => e,
                    };
                    tracing::debug!(error = %err, "connect failed");
                    Err(err)
                }
            }
        };
        self.forget_new_path_on_error(target, dial.instrument(span))
            .await
    }

    /// Connects to whatever key answers at `addr` (development only: a punch server named
    /// without its id, `--insecure`). The returned [`PeerConnection::peer_id`] is the key
    /// the remote proved; pin it if you talk to it again.
    pub async fn connect_insecure(&self, addr: SocketAddr) -> Result<PeerConnection, ConnectError> {
        let target = self.socket.paths().dial_remote(Instant::now(), addr)?;
        let span = tracing::info_span!("peer", peer = tracing::field::Empty, dir = "out", %addr);
        let dial = async {
            tracing::warn!("connecting without checking the remote key (insecure)");
            let mut config =
                tls::client_config_insecure(&self.identity, Some(self.transport.clone()))?;
            config.token_store(self.tokens.clone());
            let connecting =
                self.quinn
                    .connect_with(config, target.synthetic, tls::INSECURE_SERVER_NAME)?;
            self.finish_handshake(connecting, target.synthetic, None)
                .await
        };
        self.forget_new_path_on_error(target, dial.instrument(span))
            .await
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
                    let mut config = self.server.clone();
                    config.transport_config(self.transport_for(Some(rtt)));
                    incoming.accept_with(Arc::new(config))?
                }
                None => incoming.accept()?,
            };
            let connection = self.finish_handshake(connecting, synthetic, None).await?;
            tracing::debug!("accepted");
            Ok(connection)
        }
        .instrument(span)
        .await
    }

    /// The transport parameters of a connection on a path with RTT `rtt`, if known.
    fn transport_for(&self, rtt: Option<Duration>) -> Arc<quinn::TransportConfig> {
        match rtt {
            // quinn's timer granularity is 1 ms; a LAN RTT below it would make the first
            // retransmissions needlessly eager.
            Some(rtt) => Arc::new((self.options.transport)(Some(rtt.max(MIN_MEASURED_RTT)))),
            None => self.transport.clone(),
        }
    }

    /// The end of every handshake, in the connection's span: waits for it (bounded by
    /// [`EndpointOptions::handshake_timeout`]), reads the key the peer proved, checks it
    /// against `expected` if the peer was dialed by id, names the peer in the span and pins
    /// `synthetic` to it.
    async fn finish_handshake(
        &self,
        connecting: quinn::Connecting,
        synthetic: SocketAddr,
        expected: Option<PeerId>,
    ) -> Result<PeerConnection, ConnectError> {
        let limit = self.options.handshake_timeout;
        let connection = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(limit))??;
        let peer_id = tls::remote_peer_id(&connection)?;
        if let Some(expected) = expected.filter(|&expected| expected != peer_id) {
            // The verifier already checked the key; this checks the finished connection.
            connection.close(0u32.into(), b"peer id mismatch");
            return Err(IdentityError::PeerIdMismatch {
                expected,
                actual: peer_id,
            }
            .into());
        }
        tracing::Span::current().record("peer", tracing::field::display(peer_id.short()));
        self.socket.paths().bind_peer(&synthetic, peer_id);
        Ok(PeerConnection {
            connection,
            peer_id,
            synthetic_addr: synthetic,
        })
    }

    /// Runs `dial` towards `target`; if it fails and `target`'s path table entry is new,
    /// removes the entry again: no path is kept for a peer never reached.
    async fn forget_new_path_on_error(
        &self,
        target: DialTarget,
        dial: impl Future<Output = Result<PeerConnection, ConnectError>>,
    ) -> Result<PeerConnection, ConnectError> {
        let result = dial.await;
        if result.is_err() && target.created {
            self.socket.paths().remove(&target.synthetic);
        }
        result
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use anyhow::Context;
    use tokio::time::timeout;

    use super::*;

    const STEP: Duration = Duration::from_secs(10);

    fn bind(options: EndpointOptions) -> anyhow::Result<(Endpoint, SocketAddr)> {
        let identity = Arc::new(Identity::generate()?);
        let (endpoint, _stun) = Endpoint::bind("127.0.0.1:0".parse()?, identity, options)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], endpoint.local_addr()?.port()));
        Ok((endpoint, addr))
    }

    /// Every RTT the builder of [`every_transport_comes_from_the_one_builder`] was asked for.
    static BUILT: Mutex<Vec<Option<Duration>>> = Mutex::new(Vec::new());

    #[tokio::test]
    async fn every_transport_comes_from_the_one_builder() -> anyhow::Result<()> {
        let options = EndpointOptions {
            transport: |rtt| {
                BUILT.lock().unwrap_or_else(|p| p.into_inner()).push(rtt);
                default_transport(rtt.unwrap_or(INITIAL_RTT))
            },
            ..EndpointOptions::default()
        };
        let built = || BUILT.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (a, a_addr) = bind(options.clone())?;
        let (b, _) = bind(options)?;
        // The unknown-RTT parameters: once per endpoint, at bind.
        assert_eq!(built(), [None, None]);

        let (accepted, dialed) = tokio::join!(
            async {
                let incoming = a.accept_incoming().await.context("closed")?;
                // Below the 1 ms timer granularity: raised to 2 ms.
                let rtt = Some(Duration::from_micros(100));
                anyhow::Ok(timeout(STEP, a.handshake_with_rtt(incoming, rtt)).await??)
            },
            timeout(
                STEP,
                b.connect_with_rtt(a.peer_id(), a_addr, Some(Duration::from_millis(30)))
            )
        );
        let (accepted, dialed) = (accepted?, dialed??);
        assert_eq!(accepted.peer_id, b.peer_id());
        assert_eq!(dialed.peer_id, a.peer_id());
        let mut seen = built();
        seen.sort();
        assert_eq!(
            seen,
            [
                None,
                None,
                Some(MIN_MEASURED_RTT),
                Some(Duration::from_millis(30))
            ]
        );

        // Unknown RTT again: nothing is built.
        let (accepted, dialed) = tokio::join!(
            async { anyhow::Ok(timeout(STEP, a.accept()).await?.context("closed")??) },
            timeout(STEP, b.connect(a.peer_id(), a_addr))
        );
        assert_eq!(accepted?.peer_id, b.peer_id());
        assert_eq!(dialed??.synthetic_addr, dialed_synthetic(&b, a.peer_id())?);
        assert_eq!(built().len(), 4);
        Ok(())
    }

    /// One dual-stack endpoint talks QUIC with an IPv4 and an IPv6 endpoint, in both
    /// directions, and its path table holds the IPv4 peer as plain IPv4.
    #[tokio::test]
    async fn a_dual_stack_endpoint_reaches_both_families() -> anyhow::Result<()> {
        let identity = Arc::new(Identity::generate()?);
        let (dual, _stun) = Endpoint::bind("[::]:0".parse()?, identity, Default::default())?;
        if dual.socket().family() != crate::socket::SocketFamily::Dual {
            return Ok(()); // A host without IPv6: the default fell back to IPv4.
        }
        let port = dual.local_addr()?.port();
        for (bind, dual_at) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
            let identity = Arc::new(Identity::generate()?);
            let (other, _stun) = Endpoint::bind(bind.parse()?, identity, Default::default())?;
            let dual_addr = SocketAddr::new(dual_at.parse()?, port);
            let other_addr = other.local_addr()?;
            // other → dual
            let (accepted, dialed) = tokio::join!(
                async { anyhow::Ok(timeout(STEP, dual.accept()).await?.context("closed")??) },
                timeout(STEP, other.connect(dual.peer_id(), dual_addr))
            );
            let (accepted, _dialed) = (accepted?, dialed??);
            assert_eq!(accepted.peer_id, other.peer_id());
            let path = dual.socket().paths().resolve(&accepted.synthetic_addr);
            assert_eq!(path, Some(Path::direct(other_addr)), "{bind}");
            // dual → other, on the path it already has.
            let (accepted, dialed) = tokio::join!(
                async { anyhow::Ok(timeout(STEP, other.accept()).await?.context("closed")??) },
                timeout(STEP, dual.connect(other.peer_id(), other_addr))
            );
            assert_eq!(accepted?.peer_id, dual.peer_id());
            assert_eq!(dialed??.peer_id, other.peer_id());
        }
        Ok(())
    }

    fn dialed_synthetic(endpoint: &Endpoint, peer: PeerId) -> anyhow::Result<SocketAddr> {
        endpoint
            .socket()
            .paths()
            .synthetic_for_peer(&peer)
            .context("no path pinned to the peer")
    }

    #[tokio::test]
    async fn insecure_dial_pins_the_path_to_the_proved_key() -> anyhow::Result<()> {
        let (a, a_addr) = bind(EndpointOptions::default())?;
        let (b, _) = bind(EndpointOptions::default())?;
        let (accepted, dialed) = tokio::join!(
            async { anyhow::Ok(timeout(STEP, a.accept()).await?.context("closed")??) },
            timeout(STEP, b.connect_insecure(a_addr))
        );
        let (accepted, dialed) = (accepted?, dialed??);
        assert_eq!(accepted.peer_id, b.peer_id());
        assert_eq!(dialed.peer_id, a.peer_id());
        assert_eq!(dialed_synthetic(&b, a.peer_id())?, dialed.synthetic_addr);
        // Dialing the proved key later reuses the same synthetic address.
        let (accepted, again) = tokio::join!(
            async { anyhow::Ok(timeout(STEP, a.accept()).await?.context("closed")??) },
            timeout(STEP, b.connect(a.peer_id(), a_addr))
        );
        accepted?;
        assert_eq!(again??.synthetic_addr, dialed.synthetic_addr);
        assert_eq!(b.socket().paths().len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn failed_insecure_dial_removes_only_a_path_it_created() -> anyhow::Result<()> {
        let options = EndpointOptions {
            max_paths: 1,
            handshake_timeout: Duration::from_millis(200),
            ..EndpointOptions::default()
        };
        let (a, _) = bind(options)?;
        // A bound but silent socket: the handshake cannot finish.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let target = silent.local_addr()?;

        let err = a
            .connect_insecure(target)
            .await
            .err()
            .context("connected")?;
        assert!(matches!(err, ConnectError::Timeout(_)), "{err}");
        assert!(a.socket().paths().is_empty());

        // An entry that was there before the dial stays.
        let known = a.socket().paths().dial_remote(Instant::now(), target)?;
        let err = a
            .connect_insecure(target)
            .await
            .err()
            .context("connected")?;
        assert!(matches!(err, ConnectError::Timeout(_)), "{err}");
        assert_eq!(
            a.socket().paths().resolve(&known.synthetic),
            Some(Path::direct(target))
        );

        // The one slot is taken and not idle: a full table is an error.
        let other = SocketAddr::from(([127, 0, 0, 1], target.port().wrapping_add(1).max(1)));
        let err = a.connect_insecure(other).await.err().context("connected")?;
        assert!(
            matches!(
                err,
                ConnectError::PathTableFull(PathTableFull { capacity: 1 })
            ),
            "{err}"
        );
        assert_eq!(a.socket().paths().len(), 1);
        Ok(())
    }
}
