//! The sans-IO RFC 5780 behaviour-discovery state machine.
//!
//! Steps (one RFC 8489 client transaction each, strictly one after the other):
//! 1. `MapI` to the primary address: reflexive address M1 and OTHER-ADDRESS. No usable
//!    OTHER-ADDRESS is an error; M1 == local means [`Mapping::NoNat`].
//! 2. `FiltII` (CHANGE-REQUEST ip+port): answered -> endpoint-independent filtering, go
//!    to step 4; unanswered -> step 3.
//! 3. `FiltIII` (CHANGE-REQUEST port): answered -> address-dependent, else
//!    address-and-port-dependent filtering.
//! 4. `MapII` to (alternate IP, primary port), skipped with no NAT: M2 == M1 ->
//!    endpoint-independent mapping, done.
//! 5. `MapIII` to the alternate address: M3 == M2 -> address-dependent, else
//!    address-and-port-dependent mapping.
//!
//! Responses are matched by transaction id only (filtering answers come from the other
//! address); a late answer to an earlier transaction is ignored. The caller feeds
//! datagrams with [`NatDiscovery::handle_input`] and the clock with
//! [`NatDiscovery::handle_timeout`], and drains [`NatDiscovery::poll_transmit`] and
//! [`NatDiscovery::poll_event`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::stun::{binding_request, parse_response, response_transaction_id, Change, Response};
use super::{Filtering, Mapping, NatBehaviour, NatConfig, NatError};

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dest: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// What the state machine reports.
#[derive(Debug)]
pub enum NatEvent {
    /// Discovery finished (reported exactly once).
    Done(Result<NatBehaviour, NatError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    MapI,
    FiltII,
    FiltIII,
    MapII,
    MapIII,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::MapI => "test I",
            Step::FiltII => "filtering test II",
            Step::FiltIII => "filtering test III",
            Step::MapII => "mapping test II",
            Step::MapIII => "mapping test III",
        }
    }
}

#[derive(Debug)]
struct Transaction {
    step: Step,
    id: [u8; 12],
    dest: SocketAddr,
    bytes: Vec<u8>,
    sent: u32,
    first_sent: Instant,
    deadline: Instant,
}

/// RFC 5780 NAT behaviour discovery as a sans-IO state machine (see the module docs).
#[derive(Debug)]
pub struct NatDiscovery {
    config: NatConfig,
    local: SocketAddr,
    server: SocketAddr,
    rng: StdRng,
    current: Option<Transaction>,
    transmits: VecDeque<Transmit>,
    event: Option<NatEvent>,
    finished: bool,
    // Results so far.
    m1: Option<SocketAddr>,
    m2: Option<SocketAddr>,
    other: Option<SocketAddr>,
    rtt: Option<Duration>,
    filtering: Option<Filtering>,
}

impl NatDiscovery {
    /// Starts discovery from the socket bound at `local` (a concrete IP, not unspecified,
    /// so "no NAT" can be detected) against the STUN server at `server`; the first request
    /// is queued at once.
    pub fn new(now: Instant, local: SocketAddr, server: SocketAddr, config: NatConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut d = NatDiscovery {
            config,
            local,
            server,
            rng,
            current: None,
            transmits: VecDeque::new(),
            event: None,
            finished: false,
            m1: None,
            m2: None,
            other: None,
            rtt: None,
            filtering: None,
        };
        d.start(now, Step::MapI, server, Change::NONE);
        d
    }

    /// Whether discovery has finished (the event may still be waiting in `poll_event`).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feeds a received datagram; returns whether it was the awaited STUN response.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let Some(id) = response_transaction_id(data) else {
            return false;
        };
        let Some(txn) = self.current.as_ref() else {
            return false;
        };
        if txn.id != id {
            return false;
        }
        let Some(response) = parse_response(data) else {
            tracing::debug!(%from, "undecodable STUN response ignored");
            return false;
        };
        let (step, sent, first_sent) = (txn.step, txn.sent, txn.first_sent);
        self.current = None;
        let (mapped, other) = match response {
            Response::Success { mapped, other } => (mapped, other),
            Response::Error { code, reason } => {
                self.finish(Err(NatError::ServerError { code, reason }));
                return true;
            }
        };
        let Some(mapped) = mapped else {
            self.finish(Err(NatError::Protocol(format!(
                "{} response from {from} has no (XOR-)MAPPED-ADDRESS",
                step.name()
            ))));
            return true;
        };
        tracing::debug!(step = step.name(), %from, %mapped, "STUN response");
        match step {
            Step::MapI => {
                let Some(other) = other.filter(|o| o.ip() != self.server.ip()) else {
                    self.finish(Err(NatError::NoOtherAddress(self.server)));
                    return true;
                };
                self.m1 = Some(mapped);
                self.other = Some(other);
                self.rtt = (sent == 1).then(|| now.saturating_duration_since(first_sent));
                self.start(
                    now,
                    Step::FiltII,
                    self.server,
                    Change {
                        ip: true,
                        port: true,
                    },
                );
            }
            Step::FiltII => {
                if from.ip() == self.server.ip() || from.port() == self.server.port() {
                    self.finish(Err(NatError::ChangeRequestIgnored { from }));
                    return true;
                }
                self.filtering = Some(Filtering::EndpointIndependent);
                self.after_filtering(now);
            }
            Step::FiltIII => {
                if from.port() == self.server.port() {
                    self.finish(Err(NatError::ChangeRequestIgnored { from }));
                    return true;
                }
                self.filtering = Some(Filtering::AddressDependent);
                self.after_filtering(now);
            }
            Step::MapII => {
                if Some(mapped) == self.m1 {
                    self.conclude(Mapping::EndpointIndependent);
                } else {
                    self.m2 = Some(mapped);
                    let other = self.other.unwrap_or(self.server);
                    self.start(now, Step::MapIII, other, Change::NONE);
                }
            }
            Step::MapIII => {
                if Some(mapped) == self.m2 {
                    self.conclude(Mapping::AddressDependent);
                } else {
                    self.conclude(Mapping::AddressAndPortDependent);
                }
            }
        }
        true
    }

    /// Advances the clock: retransmits or ends the current transaction when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(txn) = self.current.as_mut() else {
            return;
        };
        if now < txn.deadline {
            return;
        }
        if txn.sent < self.config.rc.max(1) {
            let backoff = self
                .config
                .rto
                .saturating_mul(1u32 << (txn.sent - 1).min(20));
            txn.sent += 1;
            txn.deadline = now
                + if txn.sent < self.config.rc.max(1) {
                    backoff.saturating_mul(2)
                } else {
                    self.config.rto.saturating_mul(self.config.rm)
                };
            self.transmits.push_back(Transmit {
                dest: txn.dest,
                bytes: txn.bytes.clone(),
            });
            return;
        }
        let (step, dest) = (txn.step, txn.dest);
        self.current = None;
        tracing::debug!(step = step.name(), %dest, "transaction timed out");
        match step {
            Step::MapI | Step::MapII | Step::MapIII => self.finish(Err(NatError::Timeout {
                test: step.name(),
                server: dest,
                after: self.config.transaction_timeout(),
            })),
            Step::FiltII => self.start(
                now,
                Step::FiltIII,
                self.server,
                Change {
                    ip: false,
                    port: true,
                },
            ),
            Step::FiltIII => {
                self.filtering = Some(Filtering::AddressAndPortDependent);
                self.after_filtering(now);
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`NatDiscovery::handle_timeout`] must be called next (`None` once finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.as_ref().map(|t| t.deadline)
    }

    /// The final event, once.
    pub fn poll_event(&mut self) -> Option<NatEvent> {
        self.event.take()
    }

    fn start(&mut self, now: Instant, step: Step, dest: SocketAddr, change: Change) {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        let bytes = match binding_request(id, change) {
            Ok(bytes) => bytes,
            Err(e) => return self.finish(Err(e)),
        };
        // With rc == 1 the only request is also the last: wait Rm * RTO.
        let first_wait = if self.config.rc.max(1) > 1 {
            self.config.rto
        } else {
            self.config.rto.saturating_mul(self.config.rm)
        };
        self.transmits.push_back(Transmit {
            dest,
            bytes: bytes.clone(),
        });
        self.current = Some(Transaction {
            step,
            id,
            dest,
            bytes,
            sent: 1,
            first_sent: now,
            deadline: now + first_wait,
        });
    }

    fn after_filtering(&mut self, now: Instant) {
        if self.m1 == Some(self.local) {
            return self.conclude(Mapping::NoNat);
        }
        let Some(other) = self.other else {
            return self.finish(Err(NatError::NoOtherAddress(self.server)));
        };
        self.start(
            now,
            Step::MapII,
            SocketAddr::new(other.ip(), self.server.port()),
            Change::NONE,
        );
    }

    fn conclude(&mut self, mapping: Mapping) {
        let result = match (self.m1, self.other, self.filtering) {
            (Some(reflexive), Some(other_address), Some(filtering)) => Ok(NatBehaviour {
                mapping,
                filtering,
                reflexive,
                local: self.local,
                other_address,
                rtt: self.rtt,
            }),
            _ => Err(NatError::Protocol(
                "discovery concluded without test I results".into(),
            )),
        };
        self.finish(result);
    }

    fn finish(&mut self, result: Result<NatBehaviour, NatError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.current = None;
        self.event = Some(NatEvent::Done(result));
    }
}
