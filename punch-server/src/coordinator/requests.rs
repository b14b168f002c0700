//! Connect requests: from `Connect` to `Go` (or a typed error).
//!
//! Steps:
//! 1. `Connect { request_id, target }`: the requester must be registered, within its
//!    connect rate, not asking for itself or reusing a pending id; the target must be a
//!    registered peer; the requester's, the target's and the server's pending bounds must
//!    have room. Then the request gets a server id, a deadline, and the target an
//!    `Incoming`. Nothing is revealed to, or asked of, the target before this point, and
//!    no addresses at all before it accepts. A target that accepts everything in advance
//!    (`Policy { accept_all }`) gets no `Incoming`: the request goes on to step 4 at once.
//! 2. `Refuse` from the target: the requester gets `Error { Refused }`.
//! 3. No answer by the deadline: the requester gets `Error { Timeout }`, the target
//!    `Cancelled`.
//! 4. `Accept` from the target: both sides must be within their attempt rate (this bounds
//!    how often anyone is made to probe); then fresh credentials are drawn, the start is
//!    planned ([`super::timing`]) and both sides get their `Go`. Over the rate, the
//!    requester gets `Error { RateLimited }` and a target that was asked `Cancelled` (an
//!    `Error` would carry the server's id, which the target could take for one of its own).
//!
//! A parked target (see `park`) is woken instead of asked; its request is held (with its
//! deadline running) and asked once the target is back and has registered.
//!
//! The connect and attempt rates are per peer and outlast its connection
//! ([`super::limits`]): reconnecting does not refill them.

use std::time::Instant;

use mesh::coord::{Credentials, ErrorKind, Go, Role, ServerMsg};
use mesh::identity::PeerId;
use rand::Rng;

use super::timing::plan_start;
use super::{ConnId, Coordinator, Timer};

/// Characters of ICE ufrag and password (RFC 8445 §5.3: `ALPHA / DIGIT / "+" / "/"`).
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// ufrag length: 8 characters, 48 random bits (RFC 8445 asks for at least 24).
pub(crate) const UFRAG_LEN: usize = 8;
/// Password length: 24 characters, 144 random bits (RFC 8445 asks for at least 128).
pub(crate) const PWD_LEN: usize = 24;

/// A connect request waiting for the target's answer.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) requester: ConnId,
    /// The requester's own id for the request.
    pub(crate) requester_request: u64,
    pub(crate) target: ConnId,
    pub(crate) deadline: Instant,
}

impl Coordinator {
    fn random_string(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(ICE_CHARS[self.rng.gen_range(0..ICE_CHARS.len())]))
            .collect()
    }

    /// Removes a pending request with its timer and its entries on both connections.
    pub(crate) fn take_pending(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.timers.remove(&(p.deadline, Timer::Request(id)));
        if let Some(c) = self.conns.get_mut(&p.requester) {
            c.outgoing.retain(|&x| x != id);
        }
        if let Some(c) = self.conns.get_mut(&p.target) {
            c.incoming.retain(|&x| x != id);
            c.deferred.retain(|&x| x != id);
        }
        if let Some(parked) = self.parked.get_mut(&p.target) {
            parked.incoming.retain(|&x| x != id);
        }
        Some(p)
    }

    fn reject(&mut self, conn: ConnId, request_id: u64, kind: ErrorKind, detail: &str) {
        match kind {
            ErrorKind::RateLimited => self.stats.rate_limited += 1,
            ErrorKind::LimitReached => self.stats.limit_reached += 1,
            ErrorKind::UnknownTarget => self.stats.unknown_target += 1,
            _ => self.stats.rejected += 1,
        }
        self.error(conn, Some(request_id), kind, detail);
    }

    /// Checks a `Connect`; on success returns the target's connection.
    fn check_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u64,
        target: PeerId,
    ) -> Result<ConnId, (ErrorKind, &'static str)> {
        let max_out = self.config.max_pending_per_peer;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err((ErrorKind::NotRegistered, "not connected"));
        };
        if c.candidates.is_none() {
            return Err((ErrorKind::NotRegistered, "register before connecting"));
        }
        if !c.limits.connects.take(now, 1) {
            return Err((ErrorKind::RateLimited, "too many connect requests"));
        }
        if c.peer == target {
            return Err((ErrorKind::InvalidRequest, "cannot connect to yourself"));
        }
        let outgoing = c.outgoing.clone();
        if outgoing
            .iter()
            .any(|id| self.pending.get(id).map(|p| p.requester_request) == Some(request_id))
        {
            return Err((ErrorKind::InvalidRequest, "request id already pending"));
        }
        let target_conn = self
            .by_peer
            .get(&target)
            .copied()
            .filter(|t| {
                self.conns.get(t).is_some_and(|t| t.candidates.is_some())
                    || self.parked.contains_key(t)
            })
            .ok_or((ErrorKind::UnknownTarget, "no registered peer with this id"))?;
        if outgoing.len() >= max_out {
            return Err((
                ErrorKind::LimitReached,
                "too many pending requests of yours",
            ));
        }
        let incoming = match self.conns.get(&target_conn) {
            Some(t) => t.incoming.len(),
            None => self
                .parked
                .get(&target_conn)
                .map_or(0, |p| p.incoming.len()),
        };
        if incoming >= self.config.max_incoming_per_peer {
            return Err((
                ErrorKind::LimitReached,
                "target has too many pending requests",
            ));
        }
        if self.pending.len() >= self.config.max_pending_total {
            return Err((
                ErrorKind::LimitReached,
                "server has too many pending requests",
            ));
        }
        Ok(target_conn)
    }

    /// A `Connect` from `conn`.
    pub(crate) fn on_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u64,
        target: PeerId,
    ) {
        let target_conn = match self.check_connect(now, conn, request_id, target) {
            Ok(t) => t,
            Err((kind, detail)) => return self.reject(conn, request_id, kind, detail),
        };
        let Some(from) = self.conns.get(&conn).map(|c| c.peer) else {
            return;
        };
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let deadline = now + self.config.request_timeout;
        self.pending.insert(
            id,
            Pending {
                requester: conn,
                requester_request: request_id,
                target: target_conn,
                deadline,
            },
        );
        self.timers.insert((deadline, Timer::Request(id)));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.outgoing.push(id);
        }
        self.stats.connects += 1;
        tracing::debug!(%conn, target = %target.short(), id, "connect request");
        if let Some(parked) = self.parked.get_mut(&target_conn) {
            // Asked (or started) once the peer is back: wake it.
            parked.incoming.push(id);
            // A new round of wake-ups unless one is under way.
            if parked.wake.is_none_or(|(_, next)| next.is_none()) {
                parked.wake = None;
                self.send_wake(now, target_conn);
            }
            return;
        }
        if let Some(t) = self.conns.get_mut(&target_conn) {
            t.incoming.push(id);
        }
        if self.conns.get(&target_conn).is_some_and(|t| t.accept_all) {
            // Accepted in advance (`Policy`): no round trip to ask.
            return self.start_attempt(now, id, Asked::No);
        }
        self.send(
            target_conn,
            ServerMsg::Incoming {
                request_id: id,
                from,
            },
        );
    }

    /// The pending request `id` if `conn` is its target.
    fn answerable(&self, conn: ConnId, id: u64) -> bool {
        self.pending.get(&id).is_some_and(|p| p.target == conn)
    }

    /// A `Refuse` from `conn`.
    pub(crate) fn on_refuse(&mut self, conn: ConnId, id: u64) {
        if !self.answerable(conn, id) {
            return self.reject(
                conn,
                id,
                ErrorKind::UnknownRequest,
                "no such pending request",
            );
        }
        let Some(p) = self.take_pending(id) else {
            return;
        };
        self.stats.refused += 1;
        self.error(
            p.requester,
            Some(p.requester_request),
            ErrorKind::Refused,
            "the target refused",
        );
    }

    /// The deadline of request `id` passed.
    pub(crate) fn expire(&mut self, id: u64) {
        let Some(p) = self.take_pending(id) else {
            return;
        };
        self.stats.timeouts += 1;
        self.error(
            p.requester,
            Some(p.requester_request),
            ErrorKind::Timeout,
            "the target did not answer in time",
        );
        // A parked target (never asked) gets nothing.
        if self.conns.contains_key(&p.target) {
            self.send(p.target, ServerMsg::Cancelled { request_id: id });
        }
    }

    /// An `Accept` from `conn`.
    pub(crate) fn on_accept(&mut self, now: Instant, conn: ConnId, id: u64) {
        if !self.answerable(conn, id) {
            return self.reject(
                conn,
                id,
                ErrorKind::UnknownRequest,
                "no such pending request",
            );
        }
        self.start_attempt(now, id, Asked::Yes);
    }

    /// The requests held for a parked peer that is back on `conn`: they wait for its
    /// `Register` (then [`Coordinator::deliver_deferred`]).
    pub(crate) fn adopt_held(&mut self, conn: ConnId, held: Vec<u64>) {
        for id in held {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            p.target = conn;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.incoming.push(id);
                c.deferred.push(id);
            }
        }
    }

    /// The requests held for a parked peer that is gone: the requesters learn it.
    pub(crate) fn fail_held(&mut self, held: Vec<u64>) {
        for id in held {
            if let Some(p) = self.take_pending(id) {
                self.stats.cancelled += 1;
                self.error(
                    p.requester,
                    Some(p.requester_request),
                    ErrorKind::TargetGone,
                    "target was parked and left or did not come back",
                );
            }
        }
    }

    /// `conn` registered after being parked: ask it about the held requests (or start
    /// them at once under its accept-all policy).
    pub(crate) fn deliver_deferred(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let accept_all = c.accept_all;
        for id in std::mem::take(&mut c.deferred) {
            let Some(requester) = self.pending.get(&id).map(|p| p.requester) else {
                continue;
            };
            if accept_all {
                self.start_attempt(now, id, Asked::No);
            } else if let Some(from) = self.conns.get(&requester).map(|r| r.peer) {
                self.send(
                    conn,
                    ServerMsg::Incoming {
                        request_id: id,
                        from,
                    },
                );
            }
        }
    }

    /// The target of request `id` accepted: send both sides their `Go`, unless a side is
    /// over its attempt rate.
    fn start_attempt(&mut self, now: Instant, id: u64, asked: Asked) {
        let Some(p) = self.take_pending(id) else {
            return;
        };
        let conn = p.target;
        let within_rate = |this: &mut Self, c: ConnId| {
            this.conns
                .get_mut(&c)
                .is_some_and(|c| c.limits.attempts.ready(now, 1))
        };
        if !within_rate(self, p.requester) || !within_rate(self, p.target) {
            let detail = "too many punch attempts, try again later";
            self.stats.rate_limited += 1;
            // A target that was asked learns that the request it accepted is gone. The
            // id is the server's, so it must not come as an `Error`: the target would
            // match it against its own requests' ids.
            if asked == Asked::Yes {
                self.send(p.target, ServerMsg::Cancelled { request_id: id });
            }
            self.error(
                p.requester,
                Some(p.requester_request),
                ErrorKind::RateLimited,
                detail,
            );
            return;
        }
        let (Some(req), Some(tgt)) = (self.conns.get(&p.requester), self.conns.get(&conn)) else {
            return;
        };
        let plan = plan_start(&req.rtt, &tgt.rtt, &self.config);
        let (req_peer, req_cands) = (req.peer, req.candidates_for_peer());
        let (tgt_peer, tgt_cands) = (tgt.peer, tgt.candidates_for_peer());
        let (req_mapping, tgt_mapping) = (req.mapping, tgt.mapping);
        for c in [p.requester, conn] {
            if let Some(c) = self.conns.get_mut(&c) {
                c.limits.attempts.take(now, 1);
            }
        }
        let credentials = Credentials {
            local_ufrag: self.random_string(UFRAG_LEN),
            local_pwd: self.random_string(PWD_LEN),
            remote_ufrag: self.random_string(UFRAG_LEN),
            remote_pwd: self.random_string(PWD_LEN),
        };
        self.stats.accepted += 1;
        tracing::debug!(id, lead = ?plan.lead, "accepted, sending go");
        let target_go = Go {
            request_id: id,
            peer: req_peer,
            peer_candidates: req_cands,
            credentials: credentials.swapped(),
            start_in: plan.start_in_target,
            role: Role::Controlled,
            peer_mapping: None,
        };
        // Each side that told its own mapping learns the other's (birthday probing).
        if let (Some(_), Some(mapping)) = (req_mapping, tgt_mapping) {
            let request_id = p.requester_request;
            self.send(
                p.requester,
                ServerMsg::PeerMapping {
                    request_id,
                    mapping,
                },
            );
        }
        if let (Some(_), Some(mapping)) = (tgt_mapping, req_mapping) {
            self.send(
                conn,
                ServerMsg::PeerMapping {
                    request_id: id,
                    mapping,
                },
            );
        }
        self.send(
            p.requester,
            ServerMsg::Go(Go {
                request_id: p.requester_request,
                peer: tgt_peer,
                peer_candidates: tgt_cands,
                credentials,
                start_in: plan.start_in_requester,
                role: Role::Controlling,
                peer_mapping: None,
            }),
        );
        self.send(conn, ServerMsg::Go(target_go));
    }
}

/// Whether the target was sent `Incoming` for a request (or had accepted in advance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Yes,
    No,
}
