//! The relay thread: one mio poll over the listening socket and every relay socket,
//! driving the sans-IO [`Server`].
//!
//! Steps of one round:
//!
//! 1. Wait for readiness, at most until the core's next timeout or the next metrics
//!    publication (not at all if a socket still had data last round).
//! 2. For every ready socket, receive up to [`RECV_CALLS`] batches (`recvmmsg`, GRO) of
//!    datagrams and hand each to the core: the listening socket's to
//!    [`Server::handle_client_input`], a relay socket's to [`Server::handle_peer_input`].
//!    Forwarded data goes into the [`SendBatch`] (GSO runs); commands are carried out
//!    right away: answers are queued to send, relay ports are bound (and the result told
//!    to the core) or closed. The batch is flushed after every receive call. A socket
//!    that still has data is served again next round, after the others.
//! 3. Run the core's timeout; publish the counters to the metrics recorder once a second.
//! 4. Stop when the stop flag is set (the [`mio::Waker`] interrupts the wait).
//!
//! On a wildcard listening address the answer to a client leaves from the IP its
//! request was sent to (`IP_PKTINFO`), remembered per client while it has an allocation.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, BATCH_SIZE};

use super::batch::{Io, SendBatch, SocketSet, Src};
use crate::metrics::Metrics;
use crate::server::{ClientInput, Command, PeerInput, Server, Stats};

/// Token of the listening socket.
const LISTEN: Token = Token(0);
/// Token of the waker.
pub(crate) const WAKER: Token = Token(1);
/// Relay port `p` has token `RELAY_BASE + p`.
const RELAY_BASE: usize = 0x1_0000;
/// Receive calls per ready socket per round (each up to `BATCH_SIZE` datagrams).
const RECV_CALLS: usize = 4;
/// Receive buffer per datagram slot: the largest UDP payload (GRO may fill it).
const RECV_BUF: usize = 65_536;
/// Socket buffer sizes asked for (the kernel caps them at its maximum).
const LISTEN_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 1 << 20;
/// How often counters go to the metrics recorder.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The sockets, by [`Src`].
struct Sockets {
    listen: Io,
    relays: HashMap<u16, Relay>,
}

struct Relay {
    io: Io,
    client: SocketAddr,
}

impl SocketSet for Sockets {
    fn io(&self, from: Src) -> Option<&Io> {
        match from {
            Src::Listen => Some(&self.listen),
            Src::Relay(p) => self.relays.get(&p).map(|r| &r.io),
        }
    }
}

/// Everything the relay thread owns.
pub(crate) struct EventLoop {
    pub core: Server,
    pub poll: Poll,
    sockets: Sockets,
    relay_ip: IpAddr,
    /// Local IP per client, when the listening socket is a wildcard.
    reply_ip: Option<HashMap<SocketAddr, IpAddr>>,
    batch: SendBatch,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    pub fn new(
        core: Server,
        poll: Poll,
        listen: std::net::UdpSocket,
        gso: bool,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let wildcard = listen.local_addr()?.ip().is_unspecified();
        let mut listen = Io::new(listen, LISTEN_BUFFER)?;
        poll.registry()
            .register(&mut listen.sock, LISTEN, Interest::READABLE)?;
        let max_segments = if gso {
            listen.state.max_gso_segments()
        } else {
            1
        };
        Ok(Self {
            relay_ip: core.config().relay_ip,
            core,
            poll,
            sockets: Sockets {
                listen,
                relays: HashMap::new(),
            },
            reply_ip: wildcard.then(HashMap::new),
            batch: SendBatch::new(max_segments),
            metrics,
            stop,
        })
    }

    /// Runs until the stop flag is set; returns the final counters.
    pub fn run(mut self) -> Stats {
        let mut events = Events::with_capacity(1024);
        let mut bufs = vec![0u8; BATCH_SIZE * RECV_BUF];
        let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
        let mut ready: Vec<Token> = Vec::new();
        let mut next_publish = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wake = self
                .core
                .poll_timeout()
                .map_or(next_publish, |t| t.min(next_publish));
            let timeout = if ready.is_empty() {
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed; relay stopped");
                    break;
                }
            }
            for ev in events.iter() {
                if ev.token() != WAKER && !ready.contains(&ev.token()) {
                    ready.push(ev.token());
                }
            }
            let round = std::mem::take(&mut ready);
            for token in round {
                if self.serve(token, &mut bufs, &mut meta) {
                    ready.push(token);
                }
            }
            let now = Instant::now();
            self.core.handle_timeout(now);
            self.run_commands(now, None);
            self.flush();
            if now >= next_publish {
                self.metrics
                    .publish(self.core.stats(), self.core.live_counts(now));
                next_publish = now + PUBLISH_EVERY;
            }
        }
        let now = Instant::now();
        self.metrics
            .publish(self.core.stats(), self.core.live_counts(now));
        self.core.stats().clone()
    }

    /// Receives from the socket of `token`; `true` if it may have more.
    fn serve(&mut self, token: Token, bufs: &mut [u8], meta: &mut [RecvMeta]) -> bool {
        let port = match token {
            LISTEN => None,
            Token(t) => match u16::try_from(t.wrapping_sub(RELAY_BASE)) {
                Ok(p) if self.sockets.relays.contains_key(&p) => Some(p),
                _ => return false,
            },
        };
        for _ in 0..RECV_CALLS {
            let now = Instant::now();
            let io = match port {
                None => &self.sockets.listen,
                Some(p) => match self.sockets.relays.get(&p) {
                    Some(r) => &r.io,
                    None => return false,
                },
            };
            let mut iov: Vec<IoSliceMut<'_>> =
                bufs.chunks_mut(RECV_BUF).map(IoSliceMut::new).collect();
            let n = match io.state.recv((&io.sock).into(), &mut iov, meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep serving.
                    tracing::debug!(error = %e, ?port, "recv error");
                    continue;
                }
            };
            drop(iov);
            for (i, m) in meta.iter().take(n).enumerate() {
                let start = i * RECV_BUF;
                let data = bufs.get(start..start + m.len).unwrap_or_default();
                // With GRO one buffer holds several datagrams of `stride` bytes each; an
                // empty datagram is one too.
                let mut datagrams = data.chunks(m.stride.max(1));
                let empty = data.is_empty().then_some(&[][..]);
                for datagram in empty.into_iter().chain(&mut datagrams) {
                    match port {
                        None => self.client_datagram(now, m, datagram),
                        Some(p) => self.peer_datagram(now, p, m.addr, datagram),
                    }
                }
            }
            self.flush();
        }
        true
    }

    fn client_datagram(&mut self, now: Instant, m: &RecvMeta, datagram: &[u8]) {
        match self.core.handle_client_input(now, m.addr, datagram) {
            ClientInput::Forward {
                port,
                peer,
                payload,
            } => {
                let lost =
                    self.batch
                        .push(&self.sockets, Src::Relay(port), peer, None, &[], payload);
                self.core.record_send_failures(lost);
            }
            ClientInput::Handled | ClientInput::Dropped(_) => {}
        }
        self.run_commands(now, m.dst_ip);
    }

    fn peer_datagram(&mut self, now: Instant, port: u16, from: SocketAddr, datagram: &[u8]) {
        match self.core.handle_peer_input(now, port, from, datagram) {
            PeerInput::Forward { client, header } => {
                let src_ip = self.reply_ip(client, None);
                let lost = self.batch.push(
                    &self.sockets,
                    Src::Listen,
                    client,
                    src_ip,
                    &header,
                    datagram,
                );
                self.core.record_send_failures(lost);
            }
            PeerInput::Handled => self.run_commands(now, None),
            PeerInput::Dropped(_) => {}
        }
    }

    /// The source IP for datagrams to `client` (wildcard listening socket only).
    fn reply_ip(&self, client: SocketAddr, request_dst: Option<IpAddr>) -> Option<IpAddr> {
        let map = self.reply_ip.as_ref()?;
        map.get(&client).copied().or(request_dst)
    }

    /// Carries out the core's commands; `request_dst` is the local IP of the datagram
    /// being handled, if any.
    fn run_commands(&mut self, now: Instant, request_dst: Option<IpAddr>) {
        while let Some(cmd) = self.core.poll_command() {
            match cmd {
                Command::SendToClient { to, bytes } => {
                    let src_ip = self.reply_ip(to, request_dst);
                    let lost = self
                        .batch
                        .push(&self.sockets, Src::Listen, to, src_ip, &[], &bytes);
                    self.core.record_send_failures(lost);
                }
                Command::SendFromRelay { port, to, bytes } => {
                    let lost =
                        self.batch
                            .push(&self.sockets, Src::Relay(port), to, None, &[], &bytes);
                    self.core.record_send_failures(lost);
                }
                Command::CreateRelayPort { port, client } => {
                    let bound = match self.bind_relay(port, client) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(port, error = %e, "cannot bind relay port");
                            false
                        }
                    };
                    if bound {
                        if let (Some(map), Some(ip)) = (self.reply_ip.as_mut(), request_dst) {
                            map.insert(client, ip);
                        }
                    }
                    self.core.handle_relay_port(now, port, bound);
                }
                Command::FreeRelayPort { port, client } => {
                    // Pending sends from this port go out first (or fail) before it closes.
                    self.flush();
                    if let Some(mut relay) = self.sockets.relays.remove(&port) {
                        let _ = self.poll.registry().deregister(&mut relay.io.sock);
                    }
                    if let Some(map) = self.reply_ip.as_mut() {
                        map.remove(&client);
                    }
                }
            }
        }
    }

    fn bind_relay(&mut self, port: u16, client: SocketAddr) -> io::Result<()> {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(self.relay_ip, port))?;
        let mut io = Io::new(sock, RELAY_BUFFER)?;
        self.poll.registry().register(
            &mut io.sock,
            Token(RELAY_BASE + usize::from(port)),
            Interest::READABLE,
        )?;
        self.sockets.relays.insert(port, Relay { io, client });
        Ok(())
    }

    fn flush(&mut self) {
        let lost = self.batch.flush(&self.sockets);
        self.core.record_send_failures(lost);
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("relays", &self.sockets.relays.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}
