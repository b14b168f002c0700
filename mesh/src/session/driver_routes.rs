//! The session driver's routing through a member ([`crate::route`]): verified joins and
//! links that reach a member neither directly nor through a relay get a route through a
//! member that reaches both.
//!
//! Steps:
//! 0. **RTTs.** Members tell each other their links' RTTs ([`SessionMsg::LinkRtts`]) when
//!    one of their links comes up or goes, and every [`crate::session::RTT_REPORT_EVERY`].
//! 1. **Ask.** A dial to `peer` failed (the joiner's dial to a member, say): instead of
//!    reporting the link down, the end asks the linked member with the lowest sum of RTTs
//!    to `peer` (the `router_choice` module) for a route ([`SessionMsg::RouteAsk`]) and
//!    waits up to [`ROUTE_WAIT`].
//!    Only one route is tried per peer; a failed one reports the link down as before (the
//!    join then fails naming the member).
//! 2. **Router.** A member asked for a route records the ask in its hub's forwarder
//!    (members, announced joiners and joiners in progress only) and tells the other end
//!    ([`SessionMsg::RouteWanted`]); when the other end asks too, the route is open and
//!    both hear [`SessionMsg::RouteReady`]; a refused ask gets
//!    [`SessionMsg::RouteRefused`].
//! 3. **Other end.** On `RouteWanted` from a peer it may talk to, an end opens its side
//!    (its entry for the asker points at the route) and asks the router too.
//! 4. **Connect.** On `RouteReady`, the asking end opens its side and dials over the
//!    route ([`DirectNode::connect_routed`]); the link comes up like any other and its
//!    path core keeps probing for a direct path, moving the connection when one
//!    validates. An end whose link to the peer is up already (a reroute) only moves it.
//! 5. **Reroute.** When a router's link goes, the end with the lower id asks another
//!    member for a new route for each link that ran through it; the inner connection
//!    moves to the new route without a new handshake.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{SessionMsg, SessionTask};
use crate::identity::PeerId;
use crate::session::router_choice::{pick_router, report, RttReports, RTT_REPORT_EVERY};

/// How long an end waits for its route.
pub(crate) const ROUTE_WAIT: Duration = Duration::from_secs(8);

/// An end's routes in progress (bounded by the members: one per peer).
#[derive(Debug, Default)]
pub(crate) struct Routing {
    /// Peer -> (router asked, deadline, whether the link is up already: a reroute).
    pending: HashMap<PeerId, (PeerId, Instant, bool)>,
    /// Peers a route was tried for (not again until a link to them came up).
    tried: HashSet<PeerId>,
    /// The peers the router was last told it may route between.
    pub(crate) members: Vec<PeerId>,
    /// The linked members' last RTT reports (step 0).
    pub(crate) reports: RttReports,
    /// When this end next reports its links' RTTs to every linked member.
    next_report: Option<Instant>,
}

impl Routing {
    /// `peer`'s link is up: no route pending for it any more, and a later failure may
    /// try a route again.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.pending.remove(peer);
        self.tried.remove(peer);
    }

    /// The next deadline of a pending route or of the next RTT report.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let route = self.pending.values().map(|(_, at, _)| *at).min();
        match (route, self.next_report) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl SessionTask {
    /// Step 1: a dial to `peer` failed; `true` if a route is being tried instead.
    pub(crate) fn try_route(&mut self, now: Instant, peer: PeerId) -> bool {
        let allowed = self.core.config().route_through_members;
        if !allowed || self.routing.tried.contains(&peer) || self.core.is_ended() {
            return false;
        }
        let Some(router) = self.best_router(&peer) else {
            return false;
        };
        self.ask_route(now, peer, router)
    }

    /// The linked member (not `peer`) with the lowest sum of RTTs to `peer`; only
    /// members (or, while joining, the members the host listed) route.
    fn best_router(&self, peer: &PeerId) -> Option<PeerId> {
        let own = self
            .links
            .iter()
            .filter(|(p, _)| self.core.is_member_or_listed(p))
            .map(|(p, l)| (*p, l.conn.rtt()));
        pick_router(own, &self.routing.reports, peer)
    }

    /// Step 0: sends this end's link RTTs to every linked peer (a link came up or went,
    /// or the period is over); a joiner needs them before it is a member.
    pub(crate) fn report_rtts(&mut self, now: Instant) {
        if self.links.is_empty() {
            self.routing.next_report = None;
            return;
        }
        let msg = SessionMsg::LinkRtts {
            rtts: report(self.links.iter().map(|(p, l)| (*p, l.conn.rtt()))),
        };
        for l in self.links.values() {
            l.send(&msg);
        }
        self.routing.next_report = Some(now + RTT_REPORT_EVERY);
    }

    fn ask_route(&mut self, now: Instant, peer: PeerId, router: PeerId) -> bool {
        let Some(link) = self.links.get(&router) else {
            return false;
        };
        if !link.send(&SessionMsg::RouteAsk { to: peer }) {
            return false;
        }
        tracing::info!(peer = %peer.short(), router = %router.short(), "asking for a route");
        self.routing.tried.insert(peer);
        let linked = self.links.contains_key(&peer);
        self.routing
            .pending
            .insert(peer, (router, now + ROUTE_WAIT, linked));
        true
    }

    /// Steps 2-4: a routing message from `from`.
    pub(crate) fn on_route_msg(&mut self, now: Instant, from: PeerId, msg: &SessionMsg) {
        let routes = self.node.routes().clone();
        match *msg {
            // Only members (or the members a joiner was listed) may be routers: a guest's
            // report could otherwise make it everyone's router.
            SessionMsg::LinkRtts { ref rtts } if self.core.is_member_or_listed(&from) => {
                self.routing.reports.record(from, rtts);
            }
            SessionMsg::RouteAsk { to } => {
                let answer = match routes.ask(from, to) {
                    Ok(crate::route::Asked::Waiting) => {
                        let told = self
                            .links
                            .get(&to)
                            .is_some_and(|l| l.send(&SessionMsg::RouteWanted { from }));
                        if !told {
                            routes.close_route(from, to);
                        }
                        (!told).then_some(SessionMsg::RouteRefused { with: to })
                    }
                    Ok(crate::route::Asked::Open) => {
                        if let Some(l) = self.links.get(&to) {
                            l.send(&SessionMsg::RouteReady { with: from });
                        }
                        Some(SessionMsg::RouteReady { with: to })
                    }
                    Err(e) => {
                        tracing::info!(from = %from.short(), to = %to.short(), error = %e, "route refused");
                        Some(SessionMsg::RouteRefused { with: to })
                    }
                };
                if let (Some(answer), Some(l)) = (answer, self.links.get(&from)) {
                    l.send(&answer);
                }
            }
            SessionMsg::RouteWanted { from: asker } => {
                // Only for a member or a joiner this session expects, and for a linked peer
                // only when its link ran on a route (its router left): a member cannot pull
                // a working link onto a route through itself.
                if asker == from || !self.core.routable().contains(&asker) {
                    return;
                }
                let linked = self.links.contains_key(&asker);
                let routed = self
                    .node
                    .path_of(&asker)
                    .is_some_and(|p| p.kind == crate::direct::PathType::Router);
                if linked && !routed {
                    return;
                }
                let opened = if linked {
                    self.node.reroute(asker, from).map_err(|e| e.to_string())
                } else {
                    routes
                        .open_end(from, asker)
                        .map(drop)
                        .map_err(|e| e.to_string())
                };
                match opened {
                    Ok(()) => {
                        if let Some(l) = self.links.get(&from) {
                            l.send(&SessionMsg::RouteAsk { to: asker });
                        }
                    }
                    Err(e) => {
                        tracing::info!(asker = %asker.short(), error = %e, "cannot take the route")
                    }
                }
            }
            SessionMsg::RouteReady { with } => {
                let Some((router, _, _)) = self.routing.pending.get(&with).copied() else {
                    return;
                };
                if router != from {
                    return;
                }
                self.routing.pending.remove(&with);
                if self.links.contains_key(&with) {
                    if let Err(e) = self.node.reroute(with, router) {
                        tracing::info!(peer = %with.short(), error = %e, "reroute failed");
                    }
                } else {
                    self.dial_routed(with, router);
                }
            }
            SessionMsg::RouteRefused { with } => {
                if let Some((router, _, linked)) = self.routing.pending.get(&with).copied() {
                    if router == from {
                        self.routing.pending.remove(&with);
                        tracing::info!(peer = %with.short(), router = %from.short(), "route refused");
                        if !linked {
                            self.core.handle_link_down(now, with);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Step 4: dials `peer` over the route through `via` (in its own task).
    fn dial_routed(&self, peer: PeerId, via: PeerId) {
        let node = self.node.clone();
        let wakes = self.wake_tx.clone();
        let budget = self.core_join_timeout();
        tokio::spawn(async move {
            let dial = tokio::time::timeout(budget, node.connect_routed(peer, via));
            let dialed = match dial.await {
                Ok(result) => result.map_err(|e| format!("through {}: {e}", via.short())),
                Err(_) => Err("routed dial timed out".into()),
            };
            let _ = wakes.send(super::open_link(peer, dialed).await).await;
        });
    }

    /// Ends pending routes past their deadline (the link is down) and sends the RTT
    /// report when it is due.
    pub(crate) fn route_timeouts(&mut self, now: Instant) {
        if self.routing.next_report.is_some_and(|at| at <= now) {
            self.report_rtts(now);
        }
        let expired: Vec<(PeerId, bool)> = self
            .routing
            .pending
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(p, (_, _, linked))| (*p, *linked))
            .collect();
        for (peer, linked) in expired {
            self.routing.pending.remove(&peer);
            tracing::info!(peer = %peer.short(), "no route in time");
            if !linked {
                self.core.handle_link_down(now, peer);
            }
        }
    }

    /// Step 5: the link to `router` went; reroute the links that ran through it.
    pub(crate) fn reroute_from(&mut self, now: Instant, router: PeerId, through: Vec<PeerId>) {
        let local = self.core.local_id();
        for peer in through {
            if local >= peer || !self.links.contains_key(&peer) || peer == router {
                continue;
            }
            self.routing.tried.remove(&peer);
            if let Some(next) = self.best_router(&peer).filter(|r| *r != router) {
                self.ask_route(now, peer, next);
            }
        }
    }
}
