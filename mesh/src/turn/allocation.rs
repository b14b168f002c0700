//! A node's allocation on one TURN relay, kept alive (RFC 8656 sections 7 and 8): a
//! sans-IO state machine over the [`TurnClient`].
//!
//! Steps:
//! 1. [`Allocation::new`] starts an Allocate (the 401 challenge, then the signed request)
//!    with the credentials the punch server offered.
//! 2. On success it reports [`AllocationEvent::Allocated`] (relayed and mapped address,
//!    lifetime) and schedules a Refresh at half the granted lifetime; each refresh that
//!    succeeds reschedules the next one.
//! 3. A failed Allocate or Refresh reports [`AllocationEvent::Lost`] and starts again
//!    after a backoff ([`crate::backoff::Backoff`], 1 s doubling to 60 s) with the newest
//!    credentials ([`Allocation::set_credentials`]): the punch server renews them before
//!    they expire, and a relay refuses a refresh under an expired username.
//! 4. [`Allocation::bind_channel`] binds a channel (RFC 8656 section 12, numbers from
//!    0x4000 up, at most [`MAX_CHANNELS`]) to a peer's address, which also installs the
//!    permission for its IP; [`AllocationEvent::ChannelBound`] or
//!    [`AllocationEvent::ChannelFailed`] follows. Bound channels are bound again every
//!    [`CHANNEL_REFRESH`] (channels last 600 s, permissions 300 s). A lost allocation
//!    loses its channels (each reported failed).
//! 5. [`Allocation::release`] frees the allocation (Refresh with lifetime 0) and reports
//!    [`AllocationEvent::Released`] once the relay answered, or once the exchange timed
//!    out; then the machine is finished.
//!
//! The driver sends [`Allocation::poll_transmit`] to the relay from the node's socket,
//! feeds the relay's STUN answers to [`Allocation::handle_input`] and calls
//! [`Allocation::handle_timeout`] at [`Allocation::poll_timeout`]. Time comes in as an
//! argument; the random jitter comes from a seeded generator.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::client::{RequestId, Transmit, TurnClient, TurnClientConfig, TurnError, TurnEvent};
use super::credentials::Credentials;
use super::wire::{CHANNEL_MAX, CHANNEL_MIN};
use crate::backoff::Backoff;

/// Most channels bound on one allocation.
pub const MAX_CHANNELS: usize = 64;
/// Bound channels are bound again this often: inside the 300 s of the permission that
/// a ChannelBind installs (RFC 8656 sections 9 and 12).
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(240);
/// A refresh that could not start (too many requests in flight) is tried again after this.
const CHANNEL_RETRY: Duration = Duration::from_secs(1);

/// Why a channel cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The allocation is not (or no longer) allocated.
    #[error("no allocation on the relay")]
    NotAllocated,
    /// [`MAX_CHANNELS`] are bound already.
    #[error("all {MAX_CHANNELS} channels are in use")]
    Full,
    /// The relay refused or did not answer.
    #[error(transparent)]
    Turn(#[from] TurnError),
    /// Reported by a driver that passed the failure on (its text).
    #[error("{0}")]
    Refused(String),
}

/// Settings of an [`Allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationConfig {
    /// The lifetime asked for, in seconds (default 600, RFC 8656's default).
    pub lifetime_secs: u32,
    /// Timing of each exchange with the relay.
    pub client: TurnClientConfig,
    /// First wait before allocating again after a loss (default 1 s).
    pub retry_min: Duration,
    /// Longest wait before allocating again (default 60 s).
    pub retry_max: Duration,
}

impl Default for AllocationConfig {
    fn default() -> Self {
        Self {
            lifetime_secs: 600,
            client: TurnClientConfig::default(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// What an [`Allocation`] reports.
#[derive(Debug)]
pub enum AllocationEvent {
    /// The relay allocated (or, after a loss, allocated again).
    Allocated {
        /// The relayed transport address (XOR-RELAYED-ADDRESS): the candidate to offer.
        relayed: SocketAddr,
        /// This node's address as the relay saw it (XOR-MAPPED-ADDRESS).
        mapped: Option<SocketAddr>,
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// The allocation failed or could not be refreshed; a new one is tried later.
    Lost(TurnError),
    /// A channel to `peer` is bound (or bound again): its ChannelData reaches the peer.
    ChannelBound {
        /// The peer's address.
        peer: SocketAddr,
        /// The channel number.
        number: u16,
    },
    /// The channel to `peer` could not be bound or refreshed, or the allocation was lost;
    /// it is gone.
    ChannelFailed {
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        error: ChannelError,
    },
    /// [`Allocation::release`] finished: the relay freed it, or did not answer in time.
    Released {
        /// Whether the relay confirmed.
        confirmed: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Allocate in flight.
    Allocating(RequestId),
    /// Allocated; refresh at `refresh_at` (or in flight).
    Allocated {
        relayed: SocketAddr,
        refresh_at: Instant,
        refreshing: Option<RequestId>,
    },
    /// Waiting to allocate again.
    Retrying { at: Instant },
    /// Freeing.
    Releasing(RequestId),
    /// Done.
    Finished,
}

/// One channel of an allocation.
#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    number: u16,
    /// Whether the relay confirmed it at least once.
    bound: bool,
    /// The ChannelBind in flight.
    pending: Option<RequestId>,
    /// When to bind it again.
    refresh_at: Instant,
}

/// One relay's allocation; see the module docs.
#[derive(Debug)]
pub struct Allocation {
    server: SocketAddr,
    creds: Credentials,
    config: AllocationConfig,
    client: TurnClient,
    state: State,
    channels: Vec<Channel>,
    backoff: Backoff,
    rng: StdRng,
    events: VecDeque<AllocationEvent>,
}

impl Allocation {
    /// Starts allocating on `server` with `creds`; `seed` drives the retry jitter.
    pub fn new(
        now: Instant,
        server: SocketAddr,
        creds: Credentials,
        config: AllocationConfig,
        seed: u64,
    ) -> Self {
        let client = TurnClient::new(server, creds.clone(), config.client);
        let mut a = Self {
            server,
            creds,
            config,
            client,
            state: State::Finished,
            channels: Vec::new(),
            backoff: Backoff::new(config.retry_min, config.retry_max),
            rng: StdRng::seed_from_u64(seed),
            events: VecDeque::new(),
        };
        a.allocate(now);
        a
    }

    /// The relay.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address while allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relayed, .. } => Some(relayed),
            _ => None,
        }
    }

    /// Whether [`Allocation::release`] finished.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Credentials for the next Allocate (the current allocation keeps its own until
    /// a refresh fails).
    pub fn set_credentials(&mut self, creds: Credentials) {
        self.creds = creds;
    }

    /// Binds a channel to `peer` (step 4 of the module docs) and returns its number; a
    /// peer with a channel already keeps it. The binding is confirmed by
    /// [`AllocationEvent::ChannelBound`].
    pub fn bind_channel(&mut self, now: Instant, peer: SocketAddr) -> Result<u16, ChannelError> {
        if !matches!(self.state, State::Allocated { .. }) {
            return Err(ChannelError::NotAllocated);
        }
        if let Some(c) = self.channels.iter().find(|c| c.peer == peer) {
            return Ok(c.number);
        }
        if self.channels.len() >= MAX_CHANNELS {
            return Err(ChannelError::Full);
        }
        let number = (CHANNEL_MIN..=CHANNEL_MAX)
            .find(|n| self.channels.iter().all(|c| c.number != *n))
            .ok_or(ChannelError::Full)?;
        let id = self.client.channel_bind(now, number, peer)?;
        self.channels.push(Channel {
            peer,
            number,
            bound: false,
            pending: Some(id),
            refresh_at: now + CHANNEL_REFRESH,
        });
        Ok(number)
    }

    /// The channel bound to `peer`, if the relay confirmed one.
    pub fn channel(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.bound)
            .map(|c| c.number)
    }

    /// Frees the allocation (see the module docs, step 5).
    pub fn release(&mut self, now: Instant) {
        match self.state {
            State::Allocated { .. } | State::Allocating(_) => match self.client.free(now) {
                Ok(id) => self.state = State::Releasing(id),
                Err(_) => self.finish(false),
            },
            State::Retrying { .. } => self.finish(true),
            State::Releasing(_) | State::Finished => {}
        }
    }

    /// A datagram from `from`; returns whether it was the relay's answer to us.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        let taken = self.client.handle_input(now, from, bytes);
        self.drain_client(now);
        taken
    }

    /// Retransmissions, timeouts, refreshes and retries that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.drain_client(now);
        match self.state {
            State::Allocated {
                relayed,
                refresh_at,
                refreshing: None,
            } if refresh_at <= now => {
                let lifetime = self.config.lifetime_secs;
                match self.client.refresh(now, lifetime) {
                    Ok(id) => {
                        self.state = State::Allocated {
                            relayed,
                            refresh_at,
                            refreshing: Some(id),
                        }
                    }
                    Err(e) => self.lose(now, e),
                }
            }
            State::Retrying { at } if at <= now => self.allocate(now),
            _ => {}
        }
        if matches!(self.state, State::Allocated { .. }) {
            for c in &mut self.channels {
                if c.pending.is_none() && c.refresh_at <= now {
                    match self.client.channel_bind(now, c.number, c.peer) {
                        Ok(id) => {
                            c.pending = Some(id);
                            c.refresh_at = now + CHANNEL_REFRESH;
                        }
                        // Too many requests in flight: soon again.
                        Err(_) => c.refresh_at = now + CHANNEL_RETRY,
                    }
                }
            }
        }
    }

    /// The next datagram to send to the relay.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.client.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<AllocationEvent> {
        self.events.pop_front()
    }

    /// When [`Allocation::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.state {
            State::Allocated {
                refresh_at,
                refreshing: None,
                ..
            } => Some(refresh_at),
            State::Retrying { at } => Some(at),
            _ => None,
        };
        let channels = match self.state {
            State::Allocated { .. } => self
                .channels
                .iter()
                .filter(|c| c.pending.is_none())
                .map(|c| c.refresh_at)
                .min(),
            _ => None,
        };
        [own, channels, self.client.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn allocate(&mut self, now: Instant) {
        // A fresh client: the newest credentials, a fresh challenge.
        self.client = TurnClient::new(self.server, self.creds.clone(), self.config.client);
        match self.client.allocate(now, Some(self.config.lifetime_secs)) {
            Ok(id) => self.state = State::Allocating(id),
            Err(e) => self.lose(now, e),
        }
    }

    fn lose(&mut self, now: Instant, error: TurnError) {
        for c in self.channels.drain(..) {
            self.events.push_back(AllocationEvent::ChannelFailed {
                peer: c.peer,
                error: ChannelError::NotAllocated,
            });
        }
        let wait = self.backoff.next(&mut self.rng);
        self.state = State::Retrying { at: now + wait };
        self.events.push_back(AllocationEvent::Lost(error));
    }

    fn finish(&mut self, confirmed: bool) {
        self.state = State::Finished;
        self.events
            .push_back(AllocationEvent::Released { confirmed });
    }

    fn drain_client(&mut self, now: Instant) {
        while let Some(TurnEvent::Done { id, result }) = self.client.poll_event() {
            match (self.state, result) {
                (State::Allocating(want), result) if want == id => {
                    match result.and_then(|r| {
                        r.relayed
                            .map(|relayed| (relayed, r.mapped, r.lifetime))
                            .ok_or(TurnError::Protocol(
                                "allocate success without XOR-RELAYED-ADDRESS",
                            ))
                    }) {
                        Ok((relayed, mapped, lifetime)) => {
                            let lifetime = self.granted(lifetime);
                            self.backoff.reset();
                            self.state = State::Allocated {
                                relayed,
                                refresh_at: now + lifetime / 2,
                                refreshing: None,
                            };
                            self.events.push_back(AllocationEvent::Allocated {
                                relayed,
                                mapped,
                                lifetime,
                            });
                        }
                        Err(e) => self.lose(now, e),
                    }
                }
                (
                    State::Allocated {
                        relayed,
                        refreshing: Some(want),
                        ..
                    },
                    result,
                ) if want == id => match result {
                    Ok(r) => {
                        let lifetime = self.granted(r.lifetime);
                        self.state = State::Allocated {
                            relayed,
                            refresh_at: now + lifetime / 2,
                            refreshing: None,
                        };
                    }
                    Err(e) => self.lose(now, e),
                },
                (State::Releasing(want), result) if want == id => self.finish(result.is_ok()),
                (State::Allocated { .. }, result)
                    if self.channels.iter().any(|c| c.pending == Some(id)) =>
                {
                    self.on_channel_answer(id, result.map(|_| ()));
                }
                // An answer to a request the state moved past (e.g. a refresh racing a
                // release): nothing to do.
                _ => {}
            }
        }
    }

    /// The answer to a ChannelBind: confirmed, or the channel is dropped.
    fn on_channel_answer(&mut self, id: RequestId, result: Result<(), TurnError>) {
        let Some(pos) = self.channels.iter().position(|c| c.pending == Some(id)) else {
            return;
        };
        match result {
            Ok(()) => {
                let c = &mut self.channels[pos];
                c.pending = None;
                c.bound = true;
                self.events.push_back(AllocationEvent::ChannelBound {
                    peer: c.peer,
                    number: c.number,
                });
            }
            Err(error) => {
                let c = self.channels.swap_remove(pos);
                self.events.push_back(AllocationEvent::ChannelFailed {
                    peer: c.peer,
                    error: ChannelError::Turn(error),
                });
            }
        }
    }

    /// The lifetime the relay granted (what we asked if it did not say), at least 2 s so
    /// refreshes never spin.
    fn granted(&self, lifetime: Option<u32>) -> Duration {
        let secs = lifetime.unwrap_or(self.config.lifetime_secs).max(2);
        Duration::from_secs(u64::from(secs))
    }
}
