//! The host's side of a verified join (as RakNet's FullyConnectedMesh2 verifies joins).
//!
//! Steps, for one joiner ("guest" until accepted):
//! 1. The joiner's connection comes up: it becomes a guest with a deadline
//!    (`join_timeout`); at most `max_pending_joins` guests at once, more are refused.
//! 2. [`SessionMsg::JoinRequest`]: a locked or full session rejects at once. Otherwise every
//!    member is told to expect the joiner ([`SessionMsg::Expect`]) and the joiner gets the
//!    member list ([`SessionMsg::JoinMembers`], the current epoch).
//! 3. [`SessionMsg::JoinReport`]: a named failure ends the join (members are told
//!    [`SessionMsg::Unexpect`]). A report for an older epoch (members joined or left
//!    meanwhile) gets the new list; the joiner connects to the new members and reports
//!    again.
//! 4. A report for the current epoch asks the application ([`Event::JoinRequest`]); it
//!    answers with [`Membership::decide`] before `decision_timeout`, or the default applies:
//!    accept unless locked or full.
//! 5. On accept the host commits the next epoch with the joiner last in join order, sends it
//!    to the members and [`SessionMsg::Welcome`] to the joiner (with the listing grant and the
//!    other joiners in progress, whose connections the new member must accept). Joins are
//!    thus serialized by epoch: two joiners never enter on the same epoch.

use std::time::Instant;

use super::core::Membership;
use super::msg::{RejectReason, SessionMsg};
use super::{Decision, Event, LeaveReason};
use crate::identity::PeerId;

/// Where a guest's join stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Connected, no request yet.
    Connected,
    /// Given the member list of `epoch`; connecting to them.
    Probing { epoch: u64 },
    /// Connected to every member of `epoch`; the application decides by `deadline`.
    Deciding { epoch: u64, deadline: Instant },
    /// The joiner could not reach `peer`, which the host has not heard from lately either:
    /// if `peer` is not gone by `until`, the join fails naming it.
    Failed { peer: PeerId, until: Instant },
}

/// A join in progress on the host.
#[derive(Debug, Clone)]
pub(super) struct Guest {
    stage: Stage,
    /// The join as a whole must end by then.
    deadline: Instant,
    /// The application already accepted (the membership changed after that).
    approved: bool,
    /// The joiner's join data, for the application's decision.
    data: Vec<u8>,
}

impl Membership {
    /// An unknown peer's connection came up: a guest if this peer can take one.
    pub(super) fn admit_guest(&mut self, now: Instant, peer: PeerId) -> bool {
        if !self.is_member() || self.guests.len() >= self.config.max_pending_joins {
            return false;
        }
        self.guests.insert(
            peer,
            Guest {
                stage: Stage::Connected,
                deadline: now + self.config.join_timeout,
                approved: false,
                data: Vec::new(),
            },
        );
        true
    }

    fn is_full(&self) -> bool {
        self.view.members.len() >= self.config.max_players
    }

    pub(super) fn on_join_request(
        &mut self,
        now: Instant,
        from: PeerId,
        data: Vec<u8>,
    ) -> Result<(), &'static str> {
        let Some(guest) = self.guests.get(&from) else {
            return Err("a join request from a member");
        };
        if guest.stage != Stage::Connected {
            return Err("a second join request");
        }
        if !self.is_host() {
            let host = self.view.host().unwrap_or(self.local);
            self.reject(now, from, RejectReason::NotHost(host));
            return Ok(());
        }
        if self.view.locked {
            self.reject(now, from, RejectReason::Locked);
            return Ok(());
        }
        if self.is_full() {
            self.reject(now, from, RejectReason::Full);
            return Ok(());
        }
        for m in self.other_members() {
            self.send(m, SessionMsg::Expect { joiner: from });
        }
        if let Some(g) = self.guests.get_mut(&from) {
            g.data = data;
        }
        self.send_members(from);
        Ok(())
    }

    /// Sends `guest` the current member list and moves it to probing.
    fn send_members(&mut self, guest: PeerId) {
        let epoch = self.view.epoch;
        let members: Vec<PeerId> = self.other_members();
        if let Some(g) = self.guests.get_mut(&guest) {
            g.stage = Stage::Probing { epoch };
            self.send(guest, SessionMsg::JoinMembers { epoch, members });
        }
    }

    pub(super) fn on_join_report(
        &mut self,
        now: Instant,
        from: PeerId,
        epoch: u64,
        failed: Option<PeerId>,
    ) -> Result<(), &'static str> {
        let Some(guest) = self.guests.get(&from) else {
            if self.view.contains(&from) {
                // A report that crossed the joiner's welcome.
                return Ok(());
            }
            return Err("a join report from a peer that is not joining");
        };
        let Stage::Probing { epoch: sent } = guest.stage else {
            // A report may cross a new member list or a pending failure check.
            if matches!(guest.stage, Stage::Failed { .. }) {
                return Ok(());
            }
            return Err("a join report before the member list");
        };
        if epoch > sent {
            return Err("a join report for an epoch never sent");
        }
        if let Some(peer) = failed {
            self.on_member_failed(now, from, peer);
            return Ok(());
        }
        if epoch != self.view.epoch || sent != self.view.epoch {
            self.send_members(from);
            return Ok(());
        }
        if guest.approved {
            self.admit(now, from);
            return Ok(());
        }
        let data = guest.data.clone();
        let deadline = now + self.config.decision_timeout;
        if let Some(g) = self.guests.get_mut(&from) {
            g.stage = Stage::Deciding { epoch, deadline };
        }
        self.emit(Event::JoinRequest { peer: from, data });
        Ok(())
    }

    /// The joiner `guest` could not reach member `peer`. A member that is gone (or going)
    /// is no reason to fail: the joiner gets the new list instead. A member the host hears
    /// from is really unreachable for the joiner: the join fails naming it. Otherwise the
    /// host waits until it would notice the member's death.
    fn on_member_failed(&mut self, now: Instant, guest: PeerId, peer: PeerId) {
        if !self.view.contains(&peer) {
            self.send_members(guest);
            return;
        }
        let heard = self.links.get(&peer).map(|l| l.last_heard);
        let fresh = self.config.heartbeat_interval * 2;
        match heard {
            Some(t) if now.saturating_duration_since(t) > fresh => {
                let until = t + self.config.detect_timeout;
                if let Some(g) = self.guests.get_mut(&guest) {
                    g.stage = Stage::Failed { peer, until };
                }
            }
            _ => self.reject(now, guest, RejectReason::Unreachable(peer)),
        }
    }

    /// Host: the application's answer to an [`Event::JoinRequest`]. An answer for a join
    /// that is no longer waiting (it timed out, or the joiner left) is ignored.
    pub fn decide(&mut self, now: Instant, peer: PeerId, decision: Decision) {
        let Some(guest) = self.guests.get(&peer) else {
            return;
        };
        if !matches!(guest.stage, Stage::Deciding { .. }) {
            return;
        }
        match decision {
            Decision::Accept => self.admit(now, peer),
            Decision::Reject(reason) => self.reject(now, peer, RejectReason::App(reason)),
        }
    }

    /// Accepts `peer` if it is still verified against the current membership.
    fn admit(&mut self, now: Instant, peer: PeerId) {
        if self.view.locked {
            return self.reject(now, peer, RejectReason::Locked);
        }
        if self.is_full() {
            return self.reject(now, peer, RejectReason::Full);
        }
        let verified = match self.guests.get(&peer).map(|g| g.stage) {
            Some(Stage::Deciding { epoch, .. }) | Some(Stage::Probing { epoch }) => {
                epoch == self.view.epoch
            }
            _ => false,
        };
        if !verified {
            // Members changed since the joiner's report: it connects to the new ones first.
            if let Some(g) = self.guests.get_mut(&peer) {
                g.approved = true;
            }
            self.send_members(peer);
            return;
        }
        self.guests.remove(&peer);
        let mut members = self.view.members.clone();
        members.push(peer);
        self.commit(now, members, self.view.locked);
        let expected: Vec<PeerId> = self.guests.keys().copied().collect();
        self.send(
            peer,
            SessionMsg::Welcome {
                view: self.view.clone(),
                grant: self.grant.clone(),
                expected,
            },
        );
    }

    /// Turns `peer` away: tells it why and forgets the join.
    fn reject(&mut self, now: Instant, peer: PeerId, reason: RejectReason) {
        self.send(peer, SessionMsg::JoinRejected { reason });
        self.drop_guest(now, peer);
    }

    /// Forgets a join: members stop expecting the joiner, its link is closed.
    fn drop_guest(&mut self, _now: Instant, peer: PeerId) {
        if self.guests.remove(&peer).is_none() {
            return;
        }
        if self.is_host() {
            for m in self.other_members() {
                self.send(m, SessionMsg::Unexpect { joiner: peer });
            }
        }
        if self.links.remove(&peer).is_some() {
            self.emit(Event::Close(peer));
        }
    }

    /// A guest's link went down: its join is over. True if `peer` was a guest.
    pub(super) fn guest_gone(&mut self, now: Instant, peer: PeerId) -> bool {
        if !self.guests.contains_key(&peer) {
            return false;
        }
        self.drop_guest(now, peer);
        true
    }

    /// After a membership change: guests still connecting get the new list.
    pub(super) fn reprobe_guests(&mut self) {
        let probing: Vec<PeerId> = self
            .guests
            .iter()
            .filter(|(_, g)| match g.stage {
                Stage::Probing { .. } => true,
                Stage::Failed { peer, .. } => !self.view.contains(&peer),
                _ => false,
            })
            .map(|(p, _)| *p)
            .collect();
        for p in probing {
            self.send_members(p);
        }
    }

    /// Join deadlines: a decision not made in time takes the default; a join not done in
    /// time is rejected.
    pub(super) fn guest_timeouts(&mut self, now: Instant) {
        let guests: Vec<(PeerId, Guest)> =
            self.guests.iter().map(|(p, g)| (*p, g.clone())).collect();
        for (peer, g) in guests {
            if now >= g.deadline {
                self.reject(now, peer, RejectReason::Timeout);
                continue;
            }
            match g.stage {
                Stage::Deciding { deadline, .. } if now >= deadline => self.admit(now, peer),
                Stage::Failed {
                    peer: member,
                    until,
                } if now >= until => {
                    self.reject(now, peer, RejectReason::Unreachable(member));
                }
                _ => {}
            }
        }
    }

    pub(super) fn guest_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.guests.values().flat_map(|g| {
            let decision = match g.stage {
                Stage::Deciding { deadline, .. } => Some(deadline),
                Stage::Failed { until, .. } => Some(until),
                _ => None,
            };
            std::iter::once(g.deadline).chain(decision)
        })
    }

    /// Host: member `from` lost its link to `peer`: the later-joined of the two goes, so
    /// every remaining pair stays connected.
    pub(super) fn on_link_down_report(
        &mut self,
        now: Instant,
        from: PeerId,
        peer: PeerId,
    ) -> Result<(), &'static str> {
        if !self.is_host() {
            return Err("a broken-link report sent to a member that is not the host");
        }
        let (Some(a), Some(b)) = (self.view.position(&from), self.view.position(&peer)) else {
            // One of them is gone already: nothing left to mend.
            return Ok(());
        };
        if b == 0 {
            return Err("a member reported the host as lost to the host");
        }
        // Decided later: if `peer` is dying or leaving, the host notices within the
        // detection time and removes it; only a link broken between two live members costs
        // the later-joined its place.
        let key = if a < b { (from, peer) } else { (peer, from) };
        if self.broken.len() < 2 * crate::session::MAX_MEMBERS {
            self.broken
                .entry(key)
                .or_insert(now + self.config.detect_timeout);
        }
        Ok(())
    }

    /// Broken links whose grace ran out: the later-joined member of each goes.
    pub(super) fn broken_link_timeouts(&mut self, now: Instant) {
        let due: Vec<(PeerId, PeerId)> = self
            .broken
            .iter()
            .filter(|(_, at)| now >= **at)
            .map(|(k, _)| *k)
            .collect();
        for (early, late) in due {
            self.broken.remove(&(early, late));
            if self.is_host() && self.view.contains(&early) && self.view.contains(&late) {
                self.leave_reasons.insert(late, LeaveReason::Removed);
                let members = self
                    .view
                    .members
                    .iter()
                    .copied()
                    .filter(|m| *m != late)
                    .collect();
                self.commit(now, members, self.view.locked);
            }
        }
    }
}
