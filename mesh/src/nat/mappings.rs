//! Observing how the NAT allocates public ports for the node's own socket, for port
//! prediction ([`crate::punch::predict`]): a sans-IO [`MappingProbe`] that asks the punch
//! server's STUN service (RFC 8489 Binding, RFC 5780 OTHER-ADDRESS) for the mappings of
//! two fresh flows.
//!
//! Steps:
//! 1. A Binding request to the server's primary address (the flow the node already uses
//!    for its control connection: no new mapping): the reflexive address and the
//!    server's OTHER-ADDRESS. A server without one ends the probe ([`MappingEvent::NoAlternate`]).
//! 2. A request to OTHER-ADDRESS, then one to the primary IP on the alternate port: two
//!    new flows back to back, so an address-and-port-dependent NAT allocates two
//!    consecutive public ports for them (whatever its pattern is).
//! 3. [`MappingEvent::Observed`] gives the reflexive address and the two fresh ports in
//!    creation order. Each request is sent up to [`TRIES`] times, [`RETRY`] apart
//!    (doubling); no answer ends the probe ([`MappingEvent::Failed`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::stun::{binding_request, parse_response, response_transaction_id, Change, Response};
use crate::punch::Transmit;

/// Sends of one request before the probe gives up.
pub const TRIES: u32 = 3;
/// First retransmission time (doubles per try).
pub const RETRY: Duration = Duration::from_millis(250);

/// What a [`MappingProbe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingEvent {
    /// The reflexive address (step 1) and the public ports of the two fresh flows.
    Observed {
        /// The mapping of the flow toward the server's primary address.
        reflexive: SocketAddr,
        /// The fresh flows' public ports, oldest first.
        fresh: Vec<u16>,
    },
    /// The server has no alternate address (not in RFC 5780 mode).
    NoAlternate,
    /// A request went unanswered, or an answer was an error.
    Failed(String),
}

/// The probe (see the module docs).
#[derive(Debug)]
pub struct MappingProbe {
    server: SocketAddr,
    /// The destinations still to ask, in order (filled once OTHER-ADDRESS is known).
    steps: VecDeque<SocketAddr>,
    current: Option<Pending>,
    reflexive: Option<SocketAddr>,
    fresh: Vec<u16>,
    transmits: VecDeque<Transmit>,
    event: Option<MappingEvent>,
    done: bool,
    /// Transaction ids.
    rng: StdRng,
}

#[derive(Debug)]
struct Pending {
    to: SocketAddr,
    id: [u8; 12],
    tries: u32,
    due: Instant,
}

impl MappingProbe {
    /// A probe against the punch server's STUN service at `server`, starting at `now`.
    /// `seed` makes the transaction ids (any random value).
    pub fn new(now: Instant, server: SocketAddr, seed: u64) -> Self {
        let mut probe = Self {
            server,
            steps: VecDeque::new(),
            current: None,
            reflexive: None,
            fresh: Vec::new(),
            transmits: VecDeque::new(),
            event: None,
            done: false,
            rng: StdRng::seed_from_u64(seed),
        };
        probe.ask(now, server);
        probe
    }

    /// Whether the probe ended (its event may still be waiting).
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn ask(&mut self, now: Instant, to: SocketAddr) {
        let id: [u8; 12] = self.rng.gen();
        self.current = Some(Pending {
            to,
            id,
            tries: 0,
            due: now,
        });
        self.send_due(now);
    }

    fn send_due(&mut self, now: Instant) {
        let Some(p) = &mut self.current else { return };
        if now < p.due {
            return;
        }
        if p.tries >= TRIES {
            let to = p.to;
            self.finish(MappingEvent::Failed(format!("no answer from {to}")));
            return;
        }
        match binding_request(p.id, Change::NONE) {
            Ok(contents) => self.transmits.push_back(Transmit {
                destination: p.to,
                contents,
            }),
            Err(e) => {
                self.finish(MappingEvent::Failed(e.to_string()));
                return;
            }
        }
        p.due = now + RETRY * 2u32.pow(p.tries);
        p.tries += 1;
    }

    fn finish(&mut self, event: MappingEvent) {
        self.current = None;
        self.done = true;
        self.event = Some(event);
    }

    /// A datagram from `from`; `true` if it answered this probe.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let Some(p) = &self.current else { return false };
        if response_transaction_id(data) != Some(p.id) || from != p.to {
            return false;
        }
        match parse_response(data) {
            Some(Response::Success {
                mapped: Some(mapped),
                other,
            }) => {
                if self.reflexive.is_none() {
                    self.reflexive = Some(mapped);
                    let Some(other) = other.filter(|o| o.ip() != self.server.ip()) else {
                        self.finish(MappingEvent::NoAlternate);
                        return true;
                    };
                    self.steps.push_back(other);
                    self.steps
                        .push_back(SocketAddr::new(self.server.ip(), other.port()));
                } else {
                    self.fresh.push(mapped.port());
                }
                match self.steps.pop_front() {
                    Some(next) => self.ask(now, next),
                    None => {
                        let reflexive = self.reflexive.unwrap_or(mapped);
                        let fresh = std::mem::take(&mut self.fresh);
                        self.finish(MappingEvent::Observed { reflexive, fresh });
                    }
                }
            }
            Some(Response::Error { code, reason }) => {
                self.finish(MappingEvent::Failed(format!("error {code}: {reason}")));
            }
            _ => self.finish(MappingEvent::Failed(
                "answer without a mapped address".into(),
            )),
        }
        true
    }

    /// Retransmits or gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send_due(now);
    }

    /// The next request to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The outcome, once.
    pub fn poll_event(&mut self) -> Option<MappingEvent> {
        self.event.take()
    }

    /// When to call [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.as_ref().map(|p| p.due)
    }
}

#[cfg(test)]
#[path = "mappings_tests.rs"]
mod tests;
