//! The joiner's side of a verified join.
//!
//! Steps:
//! 1. [`Membership::join`]: allow and dial the host ([`Event::Dial`]).
//! 2. The host's link is up: send [`SessionMsg::JoinRequest`] with the game's join data.
//! 3. [`SessionMsg::JoinMembers`]: dial every listed member not yet connected, all at once.
//! 4. Once every member is connected, report [`SessionMsg::JoinReport`] for that epoch; the
//!    first member that cannot be reached fails the join, naming it
//!    ([`JoinFailure::MemberUnreachable`]). A newer member list (members joined meanwhile)
//!    means dialing the new ones and reporting again.
//! 5. [`SessionMsg::Welcome`]: a member, with the host's view. [`SessionMsg::JoinRejected`]
//!    ends the join, except a "not the host" answer, which is followed (at most twice) to
//!    the host it names. A lost host link or the join deadline also ends it.

use std::collections::BTreeSet;
use std::time::Instant;

use super::core::{Membership, MembershipConfig, Role};
use super::msg::{ListingGrant, RejectReason, SessionMsg, View};
use super::{Event, JoinFailure, SessionEnd};
use crate::identity::PeerId;

/// Most "not the host" redirects a joiner follows.
const MAX_REDIRECTS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    ConnectingHost,
    Requested,
    Probing { epoch: u64 },
    Reported { epoch: u64 },
}

/// A join in progress on the joiner.
#[derive(Debug)]
pub(crate) struct Joining {
    host: PeerId,
    data: Vec<u8>,
    deadline: Instant,
    stage: Stage,
    targets: BTreeSet<PeerId>,
    /// Dials in flight.
    dialing: BTreeSet<PeerId>,
    failed: Option<PeerId>,
    redirects: u8,
}

impl Joining {
    /// Whether `peer` is the host or a member the host listed.
    pub(super) fn knows(&self, peer: &PeerId) -> bool {
        self.host == *peer || self.targets.contains(peer)
    }
}

impl Membership {
    /// Starts joining the session hosted by `host`, with the game's `data`.
    pub fn join(
        now: Instant,
        local: PeerId,
        host: PeerId,
        data: Vec<u8>,
        config: MembershipConfig,
    ) -> Self {
        let deadline = now + config.join_timeout;
        let mut m = Self::blank(
            local,
            config,
            Role::Joining(Joining {
                host,
                data,
                deadline,
                stage: Stage::ConnectingHost,
                targets: BTreeSet::new(),
                dialing: BTreeSet::new(),
                failed: None,
                redirects: 0,
            }),
        );
        m.emit(Event::Allow(host));
        m.emit(Event::Dial(host));
        m
    }

    fn joining(&mut self) -> Option<&mut Joining> {
        match &mut self.role {
            Role::Joining(j) => Some(j),
            _ => None,
        }
    }

    /// Whether a link to `peer` is one this joiner asked for.
    pub(super) fn joiner_wants(&self, peer: &PeerId) -> bool {
        match &self.role {
            Role::Joining(j) => j.host == *peer || j.targets.contains(peer),
            _ => false,
        }
    }

    pub(super) fn joiner_link_up(&mut self, now: Instant, peer: PeerId) {
        let Some(j) = self.joining() else { return };
        j.dialing.remove(&peer);
        if peer == j.host && j.stage == Stage::ConnectingHost {
            j.stage = Stage::Requested;
            let data = j.data.clone();
            self.send(peer, SessionMsg::JoinRequest { data });
        } else {
            self.check_report(now);
        }
    }

    /// A dial that never came up.
    pub(super) fn joiner_dial_failed(&mut self, now: Instant, peer: PeerId) {
        let Some(j) = self.joining() else { return };
        j.dialing.remove(&peer);
        if peer == j.host {
            self.fail(JoinFailure::HostGone);
        } else if j.targets.contains(&peer) {
            j.failed.get_or_insert(peer);
            self.check_report(now);
        }
    }

    /// A link of the joiner went down. True if it concerned the join.
    pub(super) fn joiner_link_down(&mut self, now: Instant, peer: PeerId) -> bool {
        let Some(j) = self.joining() else {
            return false;
        };
        if peer == j.host {
            self.fail(JoinFailure::HostGone);
        } else if j.targets.contains(&peer) {
            j.failed.get_or_insert(peer);
            self.check_report(now);
        }
        true
    }

    pub(super) fn on_join_members(
        &mut self,
        now: Instant,
        from: PeerId,
        epoch: u64,
        members: Vec<PeerId>,
    ) -> Result<(), &'static str> {
        let local = self.local;
        let max = self.config.max_players;
        let links = &self.links;
        let Role::Joining(j) = &mut self.role else {
            return Err("a member list sent to a peer that is not joining");
        };
        if from != j.host || j.stage == Stage::ConnectingHost {
            return Err("a member list from a peer that is not the host");
        }
        if members.len() >= max || members.iter().any(|m| *m == local || *m == from) {
            return Err("a member list naming the joiner, the host, or too many members");
        }
        let same = matches!(j.stage, Stage::Probing { epoch: e } | Stage::Reported { epoch: e } if e == epoch);
        if same && j.failed.is_none() {
            // The same list again (the host answered a report that crossed it).
            return Ok(());
        }
        j.targets = members.iter().copied().collect();
        j.stage = Stage::Probing { epoch };
        j.failed = None;
        // Dial every listed member not connected and not being dialed (a member that
        // failed before is tried again: the host still lists it).
        let dial: Vec<PeerId> = members
            .into_iter()
            .filter(|m| !links.contains_key(m) && j.dialing.insert(*m))
            .collect();
        for m in dial {
            self.emit(Event::Allow(m));
            self.emit(Event::Dial(m));
        }
        self.check_report(now);
        Ok(())
    }

    /// Reports to the host once every member is connected, or one failed.
    fn check_report(&mut self, _now: Instant) {
        let links = &self.links;
        let Role::Joining(j) = &mut self.role else {
            return;
        };
        let Stage::Probing { epoch } = j.stage else {
            return;
        };
        let (host, failed) = (j.host, j.failed);
        if failed.is_some() {
            // The host decides: the member may be gone (then a new list comes), or really
            // unreachable (then a rejection naming it).
            j.stage = Stage::Reported { epoch };
            self.send(host, SessionMsg::JoinReport { epoch, failed });
        } else if j.targets.iter().all(|t| links.contains_key(t)) {
            j.stage = Stage::Reported { epoch };
            self.send(
                host,
                SessionMsg::JoinReport {
                    epoch,
                    failed: None,
                },
            );
        }
    }

    pub(super) fn on_welcome(
        &mut self,
        _now: Instant,
        from: PeerId,
        view: View,
        grant: Option<ListingGrant>,
        expected: Vec<PeerId>,
    ) -> Result<(), &'static str> {
        let local = self.local;
        let Some(j) = self.joining() else {
            return Err("a welcome sent to a peer that is not joining");
        };
        if from != j.host || !matches!(j.stage, Stage::Reported { .. }) {
            return Err("a welcome from a peer that is not the host, or before the report");
        }
        if view.host() != Some(from) || view.members.last() != Some(&local) {
            return Err("a welcome whose view is not hosted by its sender or lacks the joiner");
        }
        if let Some(missing) = view
            .members
            .iter()
            .find(|m| **m != local && !self.links.contains_key(m))
            .copied()
        {
            self.fail(JoinFailure::MemberUnreachable { peer: missing });
            return Ok(());
        }
        // Links to members that left meanwhile are closed.
        let stale: Vec<PeerId> = self
            .links
            .keys()
            .filter(|p| !view.contains(p))
            .copied()
            .collect();
        for p in stale {
            self.links.remove(&p);
            self.emit(Event::Close(p));
        }
        self.role = Role::Member;
        self.view = view;
        self.grant = grant;
        for e in expected.into_iter().take(2 * self.config.max_pending_joins) {
            if self.expected.insert(e) {
                self.emit(Event::Allow(e));
            }
        }
        self.emit(Event::Joined);
        Ok(())
    }

    pub(super) fn on_rejected(
        &mut self,
        _now: Instant,
        from: PeerId,
        reason: RejectReason,
    ) -> Result<(), &'static str> {
        let local = self.local;
        let Some(j) = self.joining() else {
            return Err("a rejection sent to a peer that is not joining");
        };
        if from != j.host {
            return Err("a rejection from a peer that is not the host");
        }
        match reason {
            RejectReason::NotHost(next)
                if j.redirects < MAX_REDIRECTS && next != local && next != from =>
            {
                j.redirects += 1;
                j.host = next;
                j.stage = Stage::ConnectingHost;
                self.links.remove(&from);
                self.emit(Event::Close(from));
                self.emit(Event::Allow(next));
                self.emit(Event::Dial(next));
            }
            RejectReason::Unreachable(peer) => {
                self.fail(JoinFailure::MemberUnreachable { peer });
            }
            reason => self.fail(JoinFailure::Rejected(reason)),
        }
        Ok(())
    }

    pub(super) fn joiner_timeout(&mut self, now: Instant) {
        if matches!(&self.role, Role::Joining(j) if now >= j.deadline) {
            self.fail(JoinFailure::Timeout);
        }
    }

    pub(super) fn joiner_deadline(&self) -> Option<Instant> {
        match &self.role {
            Role::Joining(j) => Some(j.deadline),
            _ => None,
        }
    }

    fn fail(&mut self, why: JoinFailure) {
        self.end(SessionEnd::JoinFailed(why));
    }
}
