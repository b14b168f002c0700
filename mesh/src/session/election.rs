//! Host election after the host is lost, and why it never yields two hosts that reach each
//! other.
//!
//! The host is always the first member of the view (join order: the member in the mesh
//! longest). When a member's link to the host breaks (a close, or nothing heard for
//! `detect_timeout`):
//! 1. It adds the host to its *down set* (every member it lost since the current view) and
//!    sends [`SessionMsg::Down`] `{ host, down }` to every member it still reaches; it sends
//!    it again whenever its down set grows. Down sets only grow within a view.
//! 2. Member X takes over when all of these hold:
//!    - every member before X in join order is in X's own down set;
//!    - every member X still reaches has reported a down set (about the same host) that
//!      contains every member before X: they agree X is the first survivor;
//!    - X and the members it reaches are a strict majority of the view's members other than
//!      the lost host (so a member cut off alone does not claim a session of three or more;
//!      in a session of two, the survivor continues).
//! 3. The new host commits the next epoch without the members before it, without those it
//!    lost, and, for each broken link the reports show between two survivors, without the
//!    later-joined of the two. It sends the view to every member in it.
//! 4. A member accepts a view from a member other than its host only if it lost its host and
//!    every member before the sender (this is [`Membership::accepts_successor`]).
//! 5. A member that finds no new host within `election_timeout` ends its session
//!    ([`SessionEnd::NoHost`]) rather than guess.
//!
//! Why two members that reach each other never both host: if X and Y (X before Y in join
//! order) both took over, Y's own down set held X; and a link, once down, stays down (the
//! driver closes the connection). A member Z that reaches both must have reported X lost to
//! Y, so it no longer reaches X, and it accepts X's view only while it still does. The
//! simulation tests check this, and that no member keeps a membership the others do not
//! share, over many seeds with loss, partitions and crashes.

use std::collections::BTreeSet;
use std::time::Instant;

use super::core::Membership;
use super::msg::SessionMsg;
use crate::identity::PeerId;

impl Membership {
    /// Tells every member still reached which members this peer lost.
    pub(super) fn broadcast_down(&mut self) {
        let Some(host) = self.view.host() else { return };
        let down: Vec<PeerId> = self.down.iter().copied().collect();
        for m in self.other_members() {
            if !self.down.contains(&m) {
                self.send(
                    m,
                    SessionMsg::Down {
                        host,
                        down: down.clone(),
                    },
                );
            }
        }
    }

    pub(super) fn on_down_report(
        &mut self,
        now: Instant,
        from: PeerId,
        host: PeerId,
        down: Vec<PeerId>,
    ) -> Result<(), &'static str> {
        if !self.is_member() || !self.view.contains(&from) {
            return Err("an election report from a peer that is not a member");
        }
        if self.view.host() != Some(host) {
            // About another view's host: stale, or from a member a view behind or ahead.
            return Ok(());
        }
        if from == host {
            return Err("the host reported itself lost");
        }
        let members = &self.view.members;
        let down: BTreeSet<PeerId> = down.into_iter().filter(|m| members.contains(m)).collect();
        self.reports.insert(from, down);
        self.try_takeover(now);
        Ok(())
    }

    /// Whether `candidate` is the successor this member agrees to: its host is lost, and so
    /// is every member before the candidate.
    pub(super) fn accepts_successor(&self, candidate: PeerId) -> bool {
        let Some(pos) = self.view.position(&candidate) else {
            return false;
        };
        pos > 0
            && self.view.members[..pos]
                .iter()
                .all(|m| self.down.contains(m))
    }

    /// Takes over as host if the rules in the module docs allow it.
    pub(super) fn try_takeover(&mut self, now: Instant) {
        if !self.is_member() || self.host_lost_at.is_none() {
            return;
        }
        let Some(me) = self.view.position(&self.local) else {
            return;
        };
        if !self.accepts_successor(self.local) {
            return;
        }
        let before = &self.view.members[..me];
        let reachable: Vec<PeerId> = self
            .other_members()
            .into_iter()
            .filter(|m| !self.down.contains(m))
            .collect();
        let others = self.view.members.len() - 1;
        if (reachable.len() + 1) * 2 <= others {
            return;
        }
        let agreed = reachable.iter().all(|m| {
            self.reports
                .get(m)
                .is_some_and(|d| before.iter().all(|b| d.contains(b)))
        });
        if !agreed {
            return;
        }
        let mut members: Vec<PeerId> = self
            .view
            .members
            .iter()
            .copied()
            .filter(|m| *m == self.local || reachable.contains(m))
            .collect();
        // Broken links between survivors: the later-joined of each pair goes.
        for (reporter, lost) in &self.reports {
            for l in lost {
                let (Some(a), Some(b)) = (
                    members.iter().position(|m| m == reporter),
                    members.iter().position(|m| m == l),
                ) else {
                    continue;
                };
                members.remove(a.max(b));
            }
        }
        tracing::info!(
            epoch = self.view.epoch + 1,
            members = members.len(),
            "taking over as host"
        );
        self.commit(now, members, self.view.locked);
    }
}
