//! [`Membership`]: the sans-IO membership core of one member (or joiner) of a session.
//!
//! It takes the time and its inputs as arguments and returns what to send
//! ([`Membership::poll_transmit`]), what happened ([`Membership::poll_event`]) and when to
//! wake it ([`Membership::poll_timeout`]). The driver owns the QUIC connections ("links")
//! and tells the core when one comes up ([`Membership::handle_link_up`]) or goes down
//! ([`Membership::handle_link_down`]); it never decides anything itself.
//!
//! This file holds the state, the links (heartbeats, liveness) and how a new membership is
//! applied; `host.rs` has the host's side of a verified join, `joiner.rs` the joiner's,
//! `election.rs` the host election after a lost host. The rules:
//! 1. Only the host changes the membership: it numbers each change with the next epoch and
//!    sends the whole [`View`] to every member. Members keep the join order; the host is
//!    always the first member (the one in the mesh longest).
//! 2. A member whose link to another member breaks tells the host ([`SessionMsg::LinkDown`]);
//!    the host removes the later-joined of the two, so the mesh stays full. A link to the
//!    host itself that breaks starts an election.
//! 3. A message that makes no sense from its sender (a view from a member that is not the
//!    host, a stale epoch, a join message out of order) is a violation: the link is closed
//!    and [`Event::Violation`] is reported. Nothing panics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::msg::{ListingGrant, SessionMsg, View, MAX_MEMBERS};
use super::{Event, LeaveReason, SessionEnd};
use crate::identity::PeerId;

/// Tunables of the membership core, with their defaults.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Most members, the host included (at most [`MAX_MEMBERS`]). Default 8.
    pub max_players: usize,
    /// A heartbeat goes to a link that was sent nothing for this long. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// A link from which nothing was heard for this long is down. Default 3 s: a dead host
    /// is noticed within it.
    pub detect_timeout: Duration,
    /// Longest a join may take, on both sides. Default 20 s: longer than a punch's probing
    /// budget on a slow path (which grows with the RTT), so an unreachable member is
    /// reported as such rather than as a timeout.
    pub join_timeout: Duration,
    /// How long the host's application has to accept or reject a joiner; then the default
    /// applies (accept unless locked or full). Default 2 s.
    pub decision_timeout: Duration,
    /// How long a member that lost its host waits for a new one before it ends its
    /// session. Default 6 s.
    pub election_timeout: Duration,
    /// Most joins the host runs at once (more get [`super::RejectReason::Busy`]). Default 8.
    pub max_pending_joins: usize,
    /// When a dial to a member fails, ask another member to route between the two
    /// ([`crate::route`]) before giving up on it. Default on.
    pub route_through_members: bool,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            max_players: 8,
            heartbeat_interval: Duration::from_millis(500),
            detect_timeout: Duration::from_secs(3),
            join_timeout: Duration::from_secs(20),
            decision_timeout: Duration::from_secs(2),
            election_timeout: Duration::from_secs(6),
            max_pending_joins: 8,
            route_through_members: true,
        }
    }
}

/// One live connection to another peer, as far as the core knows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub(super) last_heard: Instant,
    pub(super) last_sent: Instant,
}

/// What this peer is in the session.
#[derive(Debug)]
pub(super) enum Role {
    /// Working through a verified join.
    Joining(super::joiner::Joining),
    /// A member (the host is the first member of the view).
    Member,
    /// Done: left, removed, failed to join or lost.
    Ended,
}

/// The membership state machine of one peer (see the module docs).
#[derive(Debug)]
pub struct Membership {
    pub(super) local: PeerId,
    pub(super) config: MembershipConfig,
    pub(super) role: Role,
    pub(super) view: View,
    pub(super) links: BTreeMap<PeerId, Link>,
    /// Host only: broken links between two members (earlier, later-joined) and when to
    /// decide on them.
    pub(super) broken: BTreeMap<(PeerId, PeerId), Instant>,
    /// Host only: joins in progress.
    pub(super) guests: BTreeMap<PeerId, super::host::Guest>,
    /// Joiners the host announced: their connections are accepted.
    pub(super) expected: BTreeSet<PeerId>,
    /// The listing, once the session is listed.
    pub(super) grant: Option<ListingGrant>,
    /// Members this peer lost since the current view.
    pub(super) down: BTreeSet<PeerId>,
    /// Election reports of other members about the current host.
    pub(super) reports: BTreeMap<PeerId, BTreeSet<PeerId>>,
    /// When the host was lost (election running).
    pub(super) host_lost_at: Option<Instant>,
    /// Why a member went, when known before the view that removes it.
    pub(super) leave_reasons: BTreeMap<PeerId, LeaveReason>,
    transmits: VecDeque<(PeerId, SessionMsg)>,
    events: VecDeque<Event>,
}

impl Membership {
    /// A new session with `local` as its only member and host.
    pub fn host(local: PeerId, config: MembershipConfig) -> Self {
        let mut m = Self::blank(local, config, Role::Member);
        m.view.members.push(local);
        m
    }

    pub(super) fn blank(local: PeerId, mut config: MembershipConfig, role: Role) -> Self {
        config.max_players = config.max_players.clamp(1, MAX_MEMBERS);
        config.max_pending_joins = config.max_pending_joins.clamp(1, MAX_MEMBERS);
        Self {
            local,
            config,
            role,
            view: View {
                epoch: 0,
                members: Vec::new(),
                locked: false,
            },
            links: BTreeMap::new(),
            broken: BTreeMap::new(),
            guests: BTreeMap::new(),
            expected: BTreeSet::new(),
            grant: None,
            down: BTreeSet::new(),
            reports: BTreeMap::new(),
            host_lost_at: None,
            leave_reasons: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The tunables in force.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// This peer's id.
    pub fn local_id(&self) -> PeerId {
        self.local
    }

    /// The current membership (empty while joining).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The current host, once a member.
    pub fn host_id(&self) -> Option<PeerId> {
        match self.role {
            Role::Member => self.view.host(),
            _ => None,
        }
    }

    /// Whether this peer is the host.
    pub fn is_host(&self) -> bool {
        self.host_id() == Some(self.local)
    }

    /// Whether this peer is a member (joined and not ended).
    pub fn is_member(&self) -> bool {
        matches!(self.role, Role::Member)
    }

    /// Whether the session is over for this peer.
    pub fn is_ended(&self) -> bool {
        matches!(self.role, Role::Ended)
    }

    /// Whether messages from `peer` may be delivered to the game (a current member).
    pub fn accepts_messages_from(&self, peer: &PeerId) -> bool {
        self.is_member() && *peer != self.local && self.view.contains(peer)
    }

    /// The listing grant, if the session is listed.
    pub fn grant(&self) -> Option<&ListingGrant> {
        self.grant.as_ref()
    }

    /// Host: records the listing and hands it to every member.
    pub fn set_grant(&mut self, grant: ListingGrant) {
        self.grant = Some(grant.clone());
        if self.is_host() {
            for m in self.other_members() {
                self.send(
                    m,
                    SessionMsg::Grant {
                        grant: grant.clone(),
                    },
                );
            }
        }
    }

    /// Host: locks or unlocks the session (a locked session rejects joiners). The lock
    /// travels with the next view; a change alone is sent as a new view.
    pub fn set_locked(&mut self, now: Instant, locked: bool) {
        if self.is_host() && self.view.locked != locked {
            let members = self.view.members.clone();
            self.commit(now, members, locked);
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, SessionMsg)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(super) fn emit(&mut self, e: Event) {
        self.events.push_back(e);
    }

    pub(super) fn send(&mut self, to: PeerId, msg: SessionMsg) {
        self.transmits.push_back((to, msg));
    }

    /// The members other than this peer.
    pub(super) fn other_members(&self) -> Vec<PeerId> {
        self.view
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.local)
            .collect()
    }

    /// Whether `peer` may route for this end and report its links' RTTs: a member of the
    /// view, or (while joining) the host or a member the host listed.
    pub fn is_member_or_listed(&self, peer: &PeerId) -> bool {
        self.view.members.contains(peer) || matches!(&self.role, Role::Joining(j) if j.knows(peer))
    }

    /// The peers a member may route between ([`crate::route`]): the members, the joiners
    /// the host announced, and (on the host) the joiners in progress.
    pub fn routable(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.view.members.clone();
        peers.extend(self.expected.iter().copied());
        peers.extend(self.guests.keys().copied());
        peers
    }

    /// A connection to `peer` is up.
    pub fn handle_link_up(&mut self, now: Instant, peer: PeerId) {
        if peer == self.local || self.is_ended() {
            self.emit(Event::Close(peer));
            return;
        }
        let known =
            self.view.contains(&peer) || self.expected.contains(&peer) || self.joiner_wants(&peer);
        if !known && !self.admit_guest(now, peer) {
            self.emit(Event::Close(peer));
            return;
        }
        self.links.insert(
            peer,
            Link {
                last_heard: now,
                last_sent: now,
            },
        );
        self.joiner_link_up(now, peer);
    }

    /// The connection to `peer` is gone (closed by either side, or the driver gave up).
    pub fn handle_link_down(&mut self, now: Instant, peer: PeerId) {
        self.link_down(now, peer, LeaveReason::Lost);
    }

    pub(super) fn link_down(&mut self, now: Instant, peer: PeerId, reason: LeaveReason) {
        if self.links.remove(&peer).is_none() {
            // A dial that never came up: only the joiner cares.
            self.joiner_dial_failed(now, peer);
            return;
        }
        self.emit(Event::Close(peer));
        self.leave_reasons.entry(peer).or_insert(reason);
        if self.guest_gone(now, peer) || self.joiner_link_down(now, peer) {
            return;
        }
        if !self.is_member() || !self.view.contains(&peer) {
            return;
        }
        if self.is_host() {
            let members = self.view.members.iter().copied().filter(|m| *m != peer);
            let members = members.collect();
            self.commit(now, members, self.view.locked);
            return;
        }
        self.down.insert(peer);
        match self.view.host() {
            Some(host) if self.down.contains(&host) => {
                self.host_lost_at.get_or_insert(now);
                self.broadcast_down();
                self.try_takeover(now);
            }
            Some(host) => self.send(host, SessionMsg::LinkDown { peer }),
            None => {}
        }
    }

    /// A message from `from` (already decoded). App messages are the driver's; passing
    /// them here only counts as liveness.
    pub fn handle_input(&mut self, now: Instant, from: PeerId, msg: SessionMsg) {
        let Some(link) = self.links.get_mut(&from) else {
            // Not (or no longer) linked: a late message of a closed link.
            return;
        };
        link.last_heard = now;
        if let Err(why) = self.dispatch(now, from, msg) {
            self.emit(Event::Violation { peer: from, why });
            self.link_down(now, from, LeaveReason::Violation);
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        from: PeerId,
        msg: SessionMsg,
    ) -> Result<(), &'static str> {
        match msg {
            // App messages and routing (the driver's) count as liveness only.
            SessionMsg::Heartbeat
            | SessionMsg::App { .. }
            | SessionMsg::RouteAsk { .. }
            | SessionMsg::RouteWanted { .. }
            | SessionMsg::RouteReady { .. }
            | SessionMsg::RouteRefused { .. }
            | SessionMsg::LinkRtts { .. } => Ok(()),
            SessionMsg::Leave => {
                self.link_down(now, from, LeaveReason::Left);
                Ok(())
            }
            SessionMsg::JoinRequest { data } => self.on_join_request(now, from, data),
            SessionMsg::JoinReport { epoch, failed } => {
                self.on_join_report(now, from, epoch, failed)
            }
            SessionMsg::JoinMembers { epoch, members } => {
                self.on_join_members(now, from, epoch, members)
            }
            SessionMsg::Welcome {
                view,
                grant,
                expected,
            } => self.on_welcome(now, from, view, grant, expected),
            SessionMsg::JoinRejected { reason } => self.on_rejected(now, from, reason),
            SessionMsg::Expect { joiner } => self.on_expect(from, joiner, true),
            SessionMsg::Unexpect { joiner } => self.on_expect(from, joiner, false),
            SessionMsg::View { view } => self.on_view(now, from, view),
            SessionMsg::Grant { grant } => {
                if self.host_id() != Some(from) {
                    return Err("a listing grant from a member that is not the host");
                }
                self.grant = Some(grant);
                Ok(())
            }
            SessionMsg::LinkDown { peer } => self.on_link_down_report(now, from, peer),
            SessionMsg::Down { host, down } => self.on_down_report(now, from, host, down),
        }
    }

    fn on_expect(
        &mut self,
        from: PeerId,
        joiner: PeerId,
        expect: bool,
    ) -> Result<(), &'static str> {
        if self.host_id() != Some(from) {
            return Err("a joiner announcement from a member that is not the host");
        }
        if expect {
            if self.expected.len() >= 2 * self.config.max_pending_joins {
                if let Some(oldest) = self.expected.iter().next().copied() {
                    self.expected.remove(&oldest);
                }
            }
            if self.expected.insert(joiner) {
                self.emit(Event::Allow(joiner));
            }
        } else if self.expected.remove(&joiner) {
            self.emit(Event::Disallow(joiner));
            if self.links.contains_key(&joiner) && !self.view.contains(&joiner) {
                self.links.remove(&joiner);
                self.emit(Event::Close(joiner));
            }
        }
        Ok(())
    }

    /// A view from `from`: from the current host, or a takeover by a successor.
    fn on_view(&mut self, now: Instant, from: PeerId, view: View) -> Result<(), &'static str> {
        if !self.is_member() {
            return Err("a view sent to a peer that is not a member");
        }
        if view.host() != Some(from) {
            return Err("a view whose first member is not its sender");
        }
        if view.epoch <= self.view.epoch {
            return Err("a view with a stale epoch");
        }
        if self.view.host() != Some(from) && !self.accepts_successor(from) {
            return Err("a view from a member that is not the host");
        }
        self.apply_view(now, view);
        Ok(())
    }

    /// Host: sequences a new membership (next epoch) and sends it to every member.
    pub(super) fn commit(&mut self, now: Instant, members: Vec<PeerId>, locked: bool) {
        let view = View {
            epoch: self.view.epoch + 1,
            members,
            locked,
        };
        // Members of the old view get the new one, removed members too (so they learn it);
        // a new member gets its welcome instead.
        let local = self.local;
        let to: Vec<PeerId> = self
            .view
            .members
            .iter()
            .filter(|m| **m != local && self.links.contains_key(m))
            .copied()
            .collect();
        for m in to {
            self.send(m, SessionMsg::View { view: view.clone() });
        }
        self.apply_view(now, view);
        self.reprobe_guests();
    }

    /// Applies a membership: events for who joined, left, and a new host; links to peers
    /// that are no longer members (nor expected joiners) are closed.
    pub(super) fn apply_view(&mut self, now: Instant, view: View) {
        let old = std::mem::replace(&mut self.view, view);
        let was_host = old.host();
        let gone: Vec<PeerId> = old
            .members
            .iter()
            .filter(|m| !self.view.contains(m))
            .copied()
            .collect();
        for gone in &gone {
            let reason = self
                .leave_reasons
                .remove(gone)
                .unwrap_or(LeaveReason::Removed);
            if *gone == self.local {
                continue;
            }
            self.emit(Event::MemberLeft {
                peer: *gone,
                reason,
            });
            self.emit(Event::Disallow(*gone));
            if self.links.remove(gone).is_some() {
                self.emit(Event::Close(*gone));
            }
        }
        let new: Vec<PeerId> = self
            .view
            .members
            .iter()
            .filter(|m| !old.contains(m) && **m != self.local)
            .copied()
            .collect();
        for joined in new {
            self.expected.remove(&joined);
            self.emit(Event::Allow(joined));
            self.emit(Event::MemberJoined(joined));
        }
        if !self.view.contains(&self.local) {
            self.end(SessionEnd::Removed);
            return;
        }
        if let (Some(old_host), Some(new_host)) = (was_host, self.view.host()) {
            if old_host != new_host {
                self.emit(Event::HostChanged {
                    old: old_host,
                    new: new_host,
                });
            }
        }
        self.leave_reasons
            .retain(|p, _| self.view.members.contains(p));
        let members = &self.view.members;
        self.broken
            .retain(|(a, b), _| members.contains(a) && members.contains(b));
        // Losses the new host may not know of yet are reported again.
        let members = &self.view.members;
        self.down.retain(|m| members.contains(m));
        self.reports.clear();
        self.host_lost_at = None;
        if let Some(host) = self.view.host() {
            if host != self.local {
                for lost in self.down.clone() {
                    self.send(host, SessionMsg::LinkDown { peer: lost });
                }
            } else if !self.down.is_empty() {
                let members = self
                    .view
                    .members
                    .iter()
                    .copied()
                    .filter(|m| !self.down.contains(m))
                    .collect();
                self.down.clear();
                self.commit(now, members, self.view.locked);
            }
        }
    }

    /// Leaves the session: every linked peer is told, every link closed.
    pub fn leave(&mut self, _now: Instant) {
        if self.is_ended() {
            return;
        }
        for peer in self.links.keys().copied().collect::<Vec<_>>() {
            self.send(peer, SessionMsg::Leave);
        }
        self.end(SessionEnd::Left);
    }

    /// Ends the session for this peer: all links closed, one [`Event::Ended`].
    pub(super) fn end(&mut self, why: SessionEnd) {
        if self.is_ended() {
            return;
        }
        self.role = Role::Ended;
        for peer in std::mem::take(&mut self.links).into_keys() {
            self.emit(Event::Close(peer));
        }
        self.guests.clear();
        self.expected.clear();
        self.emit(Event::Ended(why));
    }

    /// Timers: heartbeats, dead links, join and election deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let dead: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                now.saturating_duration_since(l.last_heard) >= self.config.detect_timeout
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in dead {
            self.link_down(now, peer, LeaveReason::Lost);
        }
        self.guest_timeouts(now);
        self.broken_link_timeouts(now);
        self.joiner_timeout(now);
        if let Some(lost) = self.host_lost_at {
            if now.saturating_duration_since(lost) >= self.config.election_timeout {
                self.end(SessionEnd::NoHost);
            }
        }
        let interval = self.config.heartbeat_interval;
        let due: Vec<PeerId> = self
            .links
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_sent) >= interval)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.send(peer, SessionMsg::Heartbeat);
            self.note_sent(now, peer);
        }
    }

    /// The driver sent something to `peer` (heartbeats are then not needed).
    pub fn note_sent(&mut self, now: Instant, peer: PeerId) {
        if let Some(l) = self.links.get_mut(&peer) {
            l.last_sent = now;
        }
    }

    /// The driver heard from `peer` outside the core (e.g. a datagram): it is alive.
    pub fn note_heard(&mut self, now: Instant, peer: PeerId) {
        if let Some(l) = self.links.get_mut(&peer) {
            l.last_heard = now;
        }
    }

    /// When to call [`Membership::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_ended() {
            return None;
        }
        let links = self.links.values().flat_map(|l| {
            [
                l.last_heard + self.config.detect_timeout,
                l.last_sent + self.config.heartbeat_interval,
            ]
        });
        let election = self.host_lost_at.map(|t| t + self.config.election_timeout);
        links
            .chain(election)
            .chain(self.broken.values().copied())
            .chain(self.guest_deadlines())
            .chain(self.joiner_deadline())
            .min()
    }
}
