//! The sans-IO RFC 5780 behaviour-discovery state machine.
//!
//! Two lanes run in parallel, each on its own socket (RFC 5780 section 4.5 lets a client
//! combine and parallelize the tests; the mapping tests send to the alternate address,
//! which opens the NAT's filter towards it, so they get their own socket and NAT binding
//! and cannot spoil the filtering tests):
//! 1. Filtering lane ([`Lane::Filtering`], the caller's socket): `FiltI` to the primary
//!    address gives the reflexive address M1 (reported), OTHER-ADDRESS and the RTT. No
//!    usable OTHER-ADDRESS is an error; M1 == local means [`Mapping::NoNat`].
//! 2. Then `FiltII` (CHANGE-REQUEST ip+port) and `FiltIII` (CHANGE-REQUEST port) at once:
//!    `FiltII` answered -> endpoint-independent filtering; else `FiltIII` answered ->
//!    address-dependent; neither -> address-and-port-dependent.
//! 3. Mapping lane ([`Lane::Mapping`], a second socket), from the start: `MapI` to the
//!    primary address (its own M1), then `MapII` to (alternate IP, primary port): M2 == M1
//!    -> endpoint-independent mapping; else `MapIII` to the alternate address: M3 == M2
//!    -> address-dependent, else address-and-port-dependent.
//! 4. Done once both lanes have their answer (the mapping lane is not waited for when
//!    the filtering lane saw no NAT).
//!
//! Timing (RFC 8489 section 6.2.1, with [`NatConfig`]): each lane's first test uses the
//! configured RTO, Rc and Rm (defaults 500 ms, 7, 16), since nothing is known about the
//! path yet. Every later test uses an RTO derived from the RTT its lane's first test
//! measured (RFC 8489 lets a client that knows the RTT start from it): twice the RTT (both
//! lanes' test I go to the same address at the same time, so either one's sample serves),
//! or when no first request was answered (Karn's rule) the whole time the lane's test I
//! took; within [`NatConfig::rto_floor`] and [`NatConfig::rto_cap`]. The filtering tests, whose
//! expected answer may be silence, send [`NatConfig::filter_rc`] requests and wait
//! [`NatConfig::filter_rm`] RTOs after the last (defaults 3 and 2: silence is decided after
//! 5 RTOs, 500 ms on a fast path); the mapping tests, whose answer is required, keep Rc and
//! Rm (they end as soon as the answer arrives).
//!
//! Responses are matched by transaction id and lane (filtering answers come from the
//! other address); a late answer to a finished transaction is ignored. The caller feeds
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

/// Which socket a datagram leaves from or arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The caller's socket: test I, then both filtering tests.
    Filtering,
    /// A second socket of the same host: its own test I, then the mapping tests.
    Mapping,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to send it from.
    pub lane: Lane,
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
    FiltI,
    FiltII,
    FiltIII,
    MapI,
    MapII,
    MapIII,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::FiltI => "test I",
            Step::FiltII => "filtering test II",
            Step::FiltIII => "filtering test III",
            Step::MapI => "mapping test I",
            Step::MapII => "mapping test II",
            Step::MapIII => "mapping test III",
        }
    }

    fn lane(self) -> Lane {
        match self {
            Step::FiltI | Step::FiltII | Step::FiltIII => Lane::Filtering,
            Step::MapI | Step::MapII | Step::MapIII => Lane::Mapping,
        }
    }
}

/// The timers of one transaction: requests at 0, RTO, 3 RTO, 7 RTO ... (Rc in all), then
/// a final wait of Rm RTOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    rto: Duration,
    rc: u32,
    rm: u32,
}

impl Schedule {
    /// The wait after the `sent`-th request.
    fn wait_after(&self, sent: u32) -> Duration {
        if sent < self.rc.max(1) {
            self.rto.saturating_mul(1u32 << (sent.max(1) - 1).min(20))
        } else {
            self.rto.saturating_mul(self.rm)
        }
    }

    /// How long the transaction lasts when nothing answers.
    fn total(&self) -> Duration {
        (1..=self.rc.max(1)).map(|k| self.wait_after(k)).sum()
    }
}

#[derive(Debug)]
struct Transaction {
    step: Step,
    id: [u8; 12],
    dest: SocketAddr,
    bytes: Vec<u8>,
    schedule: Schedule,
    sent: u32,
    first_sent: Instant,
    deadline: Instant,
}

/// What a lane's first test found.
#[derive(Debug, Default, Clone, Copy)]
struct FirstTest {
    mapped: Option<SocketAddr>,
    other: Option<SocketAddr>,
    /// RTO of the lane's later tests.
    rto: Option<Duration>,
}

/// RFC 5780 NAT behaviour discovery as a sans-IO state machine (see the module docs).
#[derive(Debug)]
pub struct NatDiscovery {
    config: NatConfig,
    local: SocketAddr,
    server: SocketAddr,
    rng: StdRng,
    transactions: Vec<Transaction>,
    transmits: VecDeque<Transmit>,
    event: Option<NatEvent>,
    finished: bool,
    filtering_lane: FirstTest,
    mapping_lane: FirstTest,
    /// The RTT of the first test I (either lane) whose first request was answered.
    rtt: Option<Duration>,
    /// Whether filtering tests II and III were answered (`None` while running).
    filt_ii: Option<bool>,
    filt_iii: Option<bool>,
    m2: Option<SocketAddr>,
    /// The mapping lane's verdict (or why it failed).
    mapping: Option<Result<Mapping, NatError>>,
}

impl NatDiscovery {
    /// Starts discovery against the STUN server at `server`. `local` is the address of
    /// the filtering lane's socket (a concrete IP, not unspecified, so "no NAT" can be
    /// detected; its reflexive address is the one reported); the mapping lane's socket is a
    /// second socket of the same host. Both first requests are queued at once.
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
            transactions: Vec::new(),
            transmits: VecDeque::new(),
            event: None,
            finished: false,
            filtering_lane: FirstTest::default(),
            mapping_lane: FirstTest::default(),
            rtt: None,
            filt_ii: None,
            filt_iii: None,
            m2: None,
            mapping: None,
        };
        let first = d.first_schedule();
        d.start(now, Step::FiltI, server, Change::NONE, first);
        d.start(now, Step::MapI, server, Change::NONE, first);
        d
    }

    /// Whether discovery has finished (the event may still be waiting in `poll_event`).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feeds a datagram received on `lane`'s socket; returns whether it answered one of
    /// the running transactions.
    pub fn handle_input(
        &mut self,
        now: Instant,
        lane: Lane,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Some(id) = response_transaction_id(data) else {
            return false;
        };
        let Some(index) = self
            .transactions
            .iter()
            .position(|t| t.id == id && t.step.lane() == lane)
        else {
            return false;
        };
        let Some(response) = parse_response(data) else {
            tracing::debug!(%from, "undecodable STUN response ignored");
            return false;
        };
        let txn = self.transactions.swap_remove(index);
        let mapped = match response {
            Response::Success {
                mapped: Some(mapped),
                other,
            } => (mapped, other),
            Response::Success { mapped: None, .. } => {
                self.finish(Err(NatError::Protocol(format!(
                    "{} response from {from} has no (XOR-)MAPPED-ADDRESS",
                    txn.step.name()
                ))));
                return true;
            }
            Response::Error { code, reason } => {
                self.finish(Err(NatError::ServerError { code, reason }));
                return true;
            }
        };
        tracing::debug!(step = txn.step.name(), %from, mapped = %mapped.0, "STUN response");
        self.on_answer(now, &txn, from, mapped);
        self.try_conclude();
        true
    }

    fn on_answer(
        &mut self,
        now: Instant,
        txn: &Transaction,
        from: SocketAddr,
        (mapped, other): (SocketAddr, Option<SocketAddr>),
    ) {
        match txn.step {
            Step::FiltI | Step::MapI => {
                let Some(other) = other.filter(|o| o.ip() != self.server.ip()) else {
                    return self.finish(Err(NatError::NoOtherAddress(self.server)));
                };
                let elapsed = now.saturating_duration_since(txn.first_sent);
                // Both lanes' test I go to the same address at the same time: a valid RTT
                // sample of either serves both.
                if txn.sent == 1 && self.rtt.is_none() {
                    self.rtt = Some(elapsed);
                }
                let rto = self.later_rto(elapsed);
                let first = FirstTest {
                    mapped: Some(mapped),
                    other: Some(other),
                    rto: Some(rto),
                };
                let filter = self.filter_schedule(rto);
                if txn.step == Step::FiltI {
                    self.filtering_lane = first;
                    let both = Change {
                        ip: true,
                        port: true,
                    };
                    let port = Change {
                        ip: false,
                        port: true,
                    };
                    self.start(now, Step::FiltII, self.server, both, filter);
                    self.start(now, Step::FiltIII, self.server, port, filter);
                } else {
                    self.mapping_lane = first;
                    let dest = SocketAddr::new(other.ip(), self.server.port());
                    let schedule = self.mapping_schedule(rto);
                    self.start(now, Step::MapII, dest, Change::NONE, schedule);
                }
            }
            Step::FiltII => {
                if from.ip() == self.server.ip() || from.port() == self.server.port() {
                    return self.finish(Err(NatError::ChangeRequestIgnored { from }));
                }
                self.filt_ii = Some(true);
                // Endpoint-independent: test III cannot change the verdict.
                self.transactions.retain(|t| t.step != Step::FiltIII);
            }
            Step::FiltIII => {
                if from.port() == self.server.port() {
                    return self.finish(Err(NatError::ChangeRequestIgnored { from }));
                }
                self.filt_iii = Some(true);
            }
            Step::MapII => {
                if Some(mapped) == self.mapping_lane.mapped {
                    self.mapping = Some(Ok(Mapping::EndpointIndependent));
                } else {
                    self.m2 = Some(mapped);
                    let other = self.mapping_lane.other.unwrap_or(self.server);
                    let rto = self.mapping_lane.rto.unwrap_or(self.config.rto);
                    let schedule = self.mapping_schedule(rto);
                    self.start(now, Step::MapIII, other, Change::NONE, schedule);
                }
            }
            Step::MapIII => {
                self.mapping = Some(Ok(if Some(mapped) == self.m2 {
                    Mapping::AddressDependent
                } else {
                    Mapping::AddressAndPortDependent
                }));
            }
        }
    }

    /// Advances the clock: retransmits or ends the transactions that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for txn in &mut self.transactions {
            if now < txn.deadline {
                continue;
            }
            if txn.sent < txn.schedule.rc.max(1) {
                txn.sent += 1;
                txn.deadline = now + txn.schedule.wait_after(txn.sent);
                self.transmits.push_back(Transmit {
                    lane: txn.step.lane(),
                    dest: txn.dest,
                    bytes: txn.bytes.clone(),
                });
            } else {
                expired.push((txn.step, txn.dest, txn.schedule.total()));
            }
        }
        self.transactions.retain(|t| now < t.deadline);
        for (step, dest, after) in expired {
            tracing::debug!(step = step.name(), %dest, ?after, "transaction timed out");
            let timeout = NatError::Timeout {
                test: step.name(),
                server: dest,
                after,
            };
            match step {
                Step::FiltI => return self.finish(Err(timeout)),
                Step::FiltII => self.filt_ii = Some(false),
                Step::FiltIII => self.filt_iii = Some(false),
                Step::MapI | Step::MapII | Step::MapIII => self.mapping = Some(Err(timeout)),
            }
        }
        self.try_conclude();
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`NatDiscovery::handle_timeout`] must be called next (`None` once finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.iter().map(|t| t.deadline).min()
    }

    /// The final event, once.
    pub fn poll_event(&mut self) -> Option<NatEvent> {
        self.event.take()
    }

    fn first_schedule(&self) -> Schedule {
        Schedule {
            rto: self.config.rto,
            rc: self.config.rc,
            rm: self.config.rm,
        }
    }

    fn filter_schedule(&self, rto: Duration) -> Schedule {
        Schedule {
            rto,
            rc: self.config.filter_rc,
            rm: self.config.filter_rm,
        }
    }

    fn mapping_schedule(&self, rto: Duration) -> Schedule {
        Schedule {
            rto,
            rc: self.config.rc,
            rm: self.config.rm,
        }
    }

    /// The RTO of a lane's later tests: twice the RTT if a test I's first request was
    /// answered, else the whole time this lane's test I took (`elapsed`, an upper bound of
    /// the RTT that already holds one RTO of slack), clamped to the floor and cap.
    fn later_rto(&self, elapsed: Duration) -> Duration {
        let rto = match self.rtt {
            Some(rtt) => rtt.saturating_mul(2),
            None => elapsed,
        };
        rto.clamp(
            self.config.rto_floor,
            self.config.rto_cap.max(self.config.rto_floor),
        )
    }

    fn start(&mut self, now: Instant, step: Step, dest: SocketAddr, change: Change, s: Schedule) {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        let bytes = match binding_request(id, change) {
            Ok(bytes) => bytes,
            Err(e) => return self.finish(Err(e)),
        };
        self.transmits.push_back(Transmit {
            lane: step.lane(),
            dest,
            bytes: bytes.clone(),
        });
        self.transactions.push(Transaction {
            step,
            id,
            dest,
            bytes,
            schedule: s,
            sent: 1,
            first_sent: now,
            deadline: now + s.wait_after(1),
        });
    }

    /// Finishes once test I, both filtering tests and (behind a NAT) the mapping lane are
    /// decided.
    fn try_conclude(&mut self) {
        if self.finished {
            return;
        }
        let (Some(reflexive), Some(other_address)) =
            (self.filtering_lane.mapped, self.filtering_lane.other)
        else {
            return;
        };
        let filtering = match (self.filt_ii, self.filt_iii) {
            (Some(true), _) => Filtering::EndpointIndependent,
            (Some(false), Some(true)) => Filtering::AddressDependent,
            (Some(false), Some(false)) => Filtering::AddressAndPortDependent,
            _ => return,
        };
        let mapping = if reflexive == self.local {
            Mapping::NoNat
        } else {
            match self.mapping.take() {
                None => return,
                Some(Ok(mapping)) => mapping,
                Some(Err(e)) => return self.finish(Err(e)),
            }
        };
        self.finish(Ok(NatBehaviour {
            mapping,
            filtering,
            reflexive,
            local: self.local,
            other_address,
            rtt: self.rtt,
        }));
    }

    fn finish(&mut self, result: Result<NatBehaviour, NatError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.transactions.clear();
        self.event = Some(NatEvent::Done(result));
    }
}
