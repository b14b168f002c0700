//! The sans-IO TURN server (RFC 8656 over UDP, RFC 8489 long-term credentials).
//!
//! The core owns every table and reads no clock and no socket: the driver passes `now`
//! and the datagrams in and carries the answers out. Steps:
//!
//! 1. A datagram on the listening port goes to [`Server::handle_client_input`]. STUN
//!    requests (Binding, Allocate, Refresh, CreatePermission, ChannelBind) are answered
//!    through [`Command::SendToClient`]; a Send indication becomes a
//!    [`Command::SendFromRelay`]; ChannelData is the fast path and returns
//!    [`ClientInput::Forward`] with the payload borrowed from the datagram. Anything
//!    malformed is dropped and counted, never answered.
//! 2. An Allocate that passes authentication and the limits picks a relay port and
//!    queues [`Command::CreateRelayPort`]; the driver binds it and reports back with
//!    [`Server::handle_relay_port`], and only then is the client answered (success, or
//!    another port, or 508).
//! 3. A datagram on a relay port goes to [`Server::handle_peer_input`]: from a permitted
//!    peer with a channel it returns [`PeerInput::Forward`] (the driver prepends the
//!    4-byte ChannelData header), otherwise it queues a Data indication.
//! 4. [`Server::handle_timeout`] runs at [`Server::poll_timeout`] (once a second): it
//!    frees expired allocations ([`Command::FreeRelayPort`]), permissions, channels and
//!    reservations. Expiry is also checked on every use, so the sweep only reclaims memory.
//! 5. The driver drains [`Server::poll_command`] after every input; counters are in
//!    [`Server::stats`].

mod allocate;
mod allocation;
mod answer;
mod auth;
mod permissions;
mod policy;
mod ports;
mod relay;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use stun_rs::{HMACKey, MessageClass, MessageMethod, TransactionId};

use self::allocation::Allocation;
pub use self::allocation::{CHANNEL_COOLDOWN, CHANNEL_LIFETIME, PERMISSION_LIFETIME};
use self::auth::Nonces;
use self::policy::Own;
pub use self::ports::RESERVATION_LIFETIME;
use self::ports::{PortPool, Reservations};
pub use self::stats::{AuthFailure, DropReason, Quota, Stats, Traffic};
use crate::config::{ConfigError, ServerConfig};
use crate::wire::{self, Kind};

/// Most commands queued before answers are dropped (the driver drains after every input,
/// so this is only reached by a driver bug; port commands are never dropped).
const MAX_COMMANDS: usize = 4096;
/// How often [`Server::handle_timeout`] sweeps the tables.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send `bytes` from the listening socket to the client `to`.
    SendToClient {
        /// The client.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Send `bytes` from relay port `port` to the peer `to` (a Send indication's data).
    SendFromRelay {
        /// The relay port.
        port: u16,
        /// The peer.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Bind a UDP socket on the relay IP and `port` for `client`'s allocation, then call
    /// [`Server::handle_relay_port`] with the outcome.
    CreateRelayPort {
        /// The relay port.
        port: u16,
        /// The client the allocation belongs to.
        client: SocketAddr,
    },
    /// Close the socket of relay port `port` (the allocation is gone).
    FreeRelayPort {
        /// The relay port.
        port: u16,
        /// The client the allocation belonged to.
        client: SocketAddr,
    },
}

/// What became of a datagram from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInput<'a> {
    /// Relay `payload` from relay port `port` to `peer` (ChannelData).
    Forward {
        /// The relay port to send from.
        port: u16,
        /// The peer.
        peer: SocketAddr,
        /// The application data, borrowed from the input.
        payload: &'a [u8],
    },
    /// Handled; answers, if any, are queued as commands.
    Handled,
    /// Dropped without an answer (counted).
    Dropped(DropReason),
}

/// What became of a datagram from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerInput {
    /// Send `header` followed by the whole input datagram to `client` (ChannelData).
    Forward {
        /// The client.
        client: SocketAddr,
        /// The ChannelData header.
        header: [u8; wire::CHANNEL_HEADER_LEN],
    },
    /// Handled; a Data indication is queued as a command.
    Handled,
    /// Dropped (counted).
    Dropped(DropReason),
}

/// The request being answered: where answers go and how they are framed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Req {
    from: SocketAddr,
    method: MessageMethod,
    txn: TransactionId,
    fingerprint: bool,
}

/// An authenticated request's credentials.
#[derive(Debug)]
pub(crate) struct Authed {
    key: HMACKey,
    username: String,
    user: String,
}

/// The sans-IO TURN server; see the module docs for the flow.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    own: Own,
    nonces: Nonces,
    rng: StdRng,
    base: Instant,
    base_unix: u64,
    /// Allocations by relay port.
    allocations: HashMap<u16, Allocation>,
    /// Relay port by client address.
    by_client: HashMap<SocketAddr, u16>,
    per_user: HashMap<Box<str>, usize>,
    per_ip: HashMap<IpAddr, usize>,
    pool: PortPool,
    reservations: Reservations,
    commands: VecDeque<Command>,
    next_sweep: Instant,
    stats: Stats,
}

impl Server {
    /// A server with `config`, whose clock reads `now` at UNIX time `now_unix` (seconds;
    /// used for username expiry and nonces).
    pub fn new(config: ServerConfig, now: Instant, now_unix: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let nonces = Nonces::new(rng.gen(), config.nonce_lifetime.as_secs());
        let mut ips = vec![config.relay_ip.to_canonical()];
        if !config.listen.ip().is_unspecified() {
            ips.push(config.listen.ip().to_canonical());
        }
        let own = Own {
            ips,
            listen_port: config.listen.port(),
        };
        Ok(Self {
            pool: PortPool::new(config.ports),
            own,
            nonces,
            rng,
            base: now,
            base_unix: now_unix,
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            per_user: HashMap::new(),
            per_ip: HashMap::new(),
            reservations: Reservations::default(),
            commands: VecDeque::new(),
            next_sweep: now + SWEEP_INTERVAL,
            stats: Stats::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts datagrams the driver failed to send.
    pub fn record_send_failures(&mut self, n: u64) {
        self.stats.send_failures += n;
    }

    /// `(allocations, live permissions, bound channels)` right now.
    pub fn live_counts(&self, now: Instant) -> (usize, usize, usize) {
        let (mut p, mut c) = (0, 0);
        for a in self.allocations.values() {
            let (ap, ac) = a.counts(now);
            p += ap;
            c += ac;
        }
        (self.allocations.len(), p, c)
    }

    /// Handles a datagram from a client on the listening port.
    pub fn handle_client_input<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> ClientInput<'a> {
        let out = match wire::classify(bytes, self.config.channel_max()) {
            Kind::ChannelData => self.channel_data(now, from, bytes),
            Kind::Stun => self.stun(now, from, bytes),
            Kind::Other => ClientInput::Dropped(DropReason::Malformed),
        };
        if let ClientInput::Dropped(reason) = out {
            self.stats.drop(reason);
            tracing::trace!(%from, len = bytes.len(), reason = reason.as_str(), "client datagram dropped");
        }
        out
    }

    /// Handles a datagram from `from` on relay port `relay_port`.
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay_port: u16,
        from: SocketAddr,
        bytes: &[u8],
    ) -> PeerInput {
        let out = self.peer_data(now, relay_port, from, bytes);
        if let PeerInput::Dropped(reason) = out {
            self.stats.drop(reason);
            tracing::trace!(%from, relay_port, reason = reason.as_str(), "peer datagram dropped");
        }
        out
    }

    /// Runs the periodic sweep if due; see the module docs.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let expired: Vec<u16> = self
            .allocations
            .values()
            .filter(|a| a.expires <= now)
            .map(|a| a.port)
            .collect();
        for port in expired {
            self.stats.allocations_expired += 1;
            self.remove_allocation(port, "expired");
        }
        for a in self.allocations.values_mut() {
            a.sweep(now);
        }
        for port in self.reservations.expire(now) {
            self.pool.release(port);
        }
    }

    /// When [`Server::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_sweep)
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// UNIX seconds at `now`.
    fn unix_now(&self, now: Instant) -> u64 {
        self.base_unix + now.saturating_duration_since(self.base).as_secs()
    }

    fn push(&mut self, cmd: Command) {
        let droppable = matches!(
            cmd,
            Command::SendToClient { .. } | Command::SendFromRelay { .. }
        );
        if droppable && self.commands.len() >= MAX_COMMANDS {
            self.stats.drop(DropReason::QueueFull);
            return;
        }
        self.commands.push_back(cmd);
    }

    fn stun<'a>(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> ClientInput<'a> {
        let Some(decoded) = wire::decode_stun(bytes) else {
            return ClientInput::Dropped(DropReason::Malformed);
        };
        let msg = decoded.msg;
        let req = Req {
            from,
            method: msg.method(),
            txn: *msg.transaction_id(),
            fingerprint: decoded.fingerprint,
        };
        match msg.class() {
            MessageClass::Request => {}
            MessageClass::Indication if msg.method() == SEND => {
                return self.send_indication(now, from, &msg);
            }
            // Binding indications are keep-alives (RFC 8489 section 6.3.2).
            MessageClass::Indication if msg.method() == BINDING => return ClientInput::Handled,
            _ => return ClientInput::Dropped(DropReason::Unexpected),
        }
        let method = msg.method();
        if method == BINDING {
            self.stats.requests += 1;
            self.binding(&req, &msg);
            return ClientInput::Handled;
        }
        if ![ALLOCATE, REFRESH, CREATE_PERMMISSION, CHANNEL_BIND].contains(&method) {
            return ClientInput::Dropped(DropReason::UnknownMethod);
        }
        self.stats.requests += 1;
        let Some(authed) = self.authenticate(now, &req, bytes, &msg) else {
            return ClientInput::Handled;
        };
        if self.refuse_unknown(&req, &msg, Some(&authed.key)) {
            return ClientInput::Handled;
        }
        match method {
            ALLOCATE => self.allocate(now, &req, &msg, authed),
            REFRESH => self.refresh(now, &req, &msg, &authed),
            CREATE_PERMMISSION => self.create_permission(now, &req, &msg, &authed),
            _ => self.channel_bind(now, &req, &msg, &authed),
        }
        ClientInput::Handled
    }

    /// The allocation of `req.from` for a non-Allocate request, answering 437 or 441 if
    /// there is none or the username differs.
    fn allocation_for(&mut self, req: &Req, authed: &Authed) -> Option<u16> {
        let port = self.by_client.get(&req.from).copied();
        let Some(a) = port.and_then(|p| self.allocations.get(&p)) else {
            self.error(req, 437, Some(&authed.key));
            return None;
        };
        if *a.username != *authed.username {
            self.stats.auth(AuthFailure::WrongCredentials);
            self.error(req, 441, Some(&authed.key));
            return None;
        }
        port
    }

    /// Frees an allocation: its port, quotas and indices; tells the driver.
    fn remove_allocation(&mut self, port: u16, why: &'static str) {
        let Some(a) = self.allocations.remove(&port) else {
            return;
        };
        self.by_client.remove(&a.client);
        self.pool.release(port);
        decrement(&mut self.per_user, &a.user);
        decrement(&mut self.per_ip, &a.client.ip());
        tracing::debug!(client = %a.client, port, why, "allocation freed");
        self.push(Command::FreeRelayPort {
            port,
            client: a.client,
        });
    }
}

fn decrement<K: std::hash::Hash + Eq + ?Sized, Q: std::borrow::Borrow<K> + std::hash::Hash + Eq>(
    map: &mut HashMap<Q, usize>,
    key: &K,
) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}
