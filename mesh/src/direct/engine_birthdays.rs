//! Step 6 of the punch engine ([`super`]): its birthday rounds
//! ([`crate::direct::birthdays`]).
//!
//! Steps:
//! 1. A `Go` between a random-port NAT and an endpoint-independent one starts a round
//!    (at most one per peer a minute); the hard side opens its extra sockets here.
//! 2. The rounds' checks and answers go out from their own sockets.
//! 3. A validated pair goes to the peer's connection core (or waits for it), and answers
//!    every attempt with that peer whose outcome is still awaited (the dial runs QUIC on
//!    the pair, local socket included).
//! 4. A round without a hit tells the failures the engine held for it (attempts whose
//!    probing failed while the round still ran, at most the round's budget plus
//!    [`BIRTHDAY_HOLD_MARGIN`]); its sockets close.

use std::time::{Duration, Instant};

use super::{AttemptOutcome, EngineTask, Start};
use crate::direct::birthdays::{side_for, BirthdayOutput};
use crate::direct::deadline_from;
use crate::punch::birthday::BirthdaySide;
use crate::socket::LocalSocket;
use crate::stun::StunOwner;

/// A failed attempt waits for its peer's birthday round at most the round's budget plus
/// this before telling its failure.
pub(super) const BIRTHDAY_HOLD_MARGIN: Duration = Duration::from_secs(5);

impl EngineTask {
    /// Step 6: starts a birthday round for `start` when the two NATs call for one.
    pub(super) fn maybe_birthday(&mut self, now: Instant, start: &Start) {
        if self.settings.birthday.is_none() {
            return;
        }
        let go = &start.go;
        let own = *self.settings.mapping.borrow();
        let Some(side) = side_for(own, go) else {
            return;
        };
        let family = self.socket.family();
        let target = match side {
            BirthdaySide::Hard { easy } => easy,
            BirthdaySide::Easy { hard_ip } => std::net::SocketAddr::new(hard_ip, 1),
        };
        if !family.reaches(target)
            || self.conns.runs_direct(&go.peer)
            || !self.birthdays.admits(now, &go.peer)
        {
            return;
        }
        let sockets = match side {
            BirthdaySide::Easy { .. } => vec![LocalSocket::PRIMARY],
            BirthdaySide::Hard { .. } => {
                match self.socket.open_extra(self.birthdays.config().hard_sockets) {
                    Ok(sockets) => sockets,
                    Err(e) => {
                        tracing::warn!(peer = %go.peer.short(), error = %e, "no birthday round");
                        return;
                    }
                }
            }
        };
        let start_at = go.start_at(start.received);
        self.birthdays
            .start(now, go.peer, side, go, start_at, sockets);
        self.settings.birthday_stats.started();
    }

    /// Step 6: the rounds' checks and answers go out from their sockets; a validated
    /// pair goes to its connection's core.
    pub(super) async fn flush_birthdays(&mut self, now: Instant) {
        while let Some(t) = self.birthdays.poll_transmit() {
            let sent = self
                .socket
                .send_stun_from(t.local, StunOwner::Default, t.destination, &t.contents)
                .await;
            if let Err(e) = sent {
                tracing::trace!(to = %t.destination, error = %e, "birthday check not sent");
            }
        }
        while let Some(output) = self.birthdays.poll_output() {
            self.settings.birthday_stats.count(&output);
            match output {
                BirthdayOutput::Validated {
                    peer, found, rtt, ..
                } => {
                    self.settings.watches.set_birthday(peer, found.remote);
                    // A dial without a relay waits for this pair (its probing failed or
                    // still runs): QUIC runs on it.
                    for a in self.attempts.iter_mut().filter(|a| a.peer == peer) {
                        if let Some(reply) = a.reply.take() {
                            let _ = reply.send(AttemptOutcome::Nominated {
                                remote: found.remote,
                                rtt,
                                seen_as: None,
                                local: found.local,
                            });
                            a.held = None;
                            a.linger_until
                                .get_or_insert(deadline_from(now, self.settings.linger));
                        }
                    }
                    if self.conns.add_direct(now, &peer, found) {
                        // The core has it; the found pair is not needed any more.
                        self.birthdays.take_found(&peer);
                    }
                }
                BirthdayOutput::Failed { peer, .. } => {
                    for a in self.attempts.iter_mut().filter(|a| a.peer == peer) {
                        a.tell_held();
                    }
                }
                BirthdayOutput::Close(sockets) => self.socket.close_extra(&sockets),
            }
        }
    }
}
