//! The router's core: which pairs of members it forwards between, and how much.
//!
//! Rules (RakNet's Router2 forwards between any two systems that ask; here the router's
//! own session decides):
//! 1. Only between members of the router's session ([`Forwarder::set_members`]): a member
//!    that leaves takes its routes and asks with it.
//! 2. Only after both ends asked ([`Forwarder::ask`]): the first ask waits
//!    [`ForwardConfig::ask_timeout`] for the other; the second opens the route.
//! 3. Within a budget per route ([`ForwardConfig::bytes_per_sec`],
//!    [`ForwardConfig::packets_per_sec`], both directions together); a datagram over it
//!    is refused (dropped and counted, as a congested link would).
//! 4. At most [`ForwardConfig::max_routes`] routes and as many pending asks.
//!
//! Sans-IO: the time comes in as an argument; the hub ([`super::hub`]) moves the bytes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::identity::PeerId;
use crate::limit::TokenBucket;

/// Settings of a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Bytes a second one route may carry (both directions). Default 2,000,000 (16 Mbit/s,
    /// far above a game's traffic; a router is a player's machine). 0 = unlimited.
    pub bytes_per_sec: u64,
    /// Datagrams a second one route may carry. Default 4000. 0 = unlimited.
    pub packets_per_sec: u64,
    /// Most routes at once. Default 64.
    pub max_routes: usize,
    /// How long the first end's ask waits for the other's. Default 30 s.
    pub ask_timeout: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            bytes_per_sec: 2_000_000,
            packets_per_sec: 4000,
            max_routes: 64,
            ask_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a route or a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// One end is not a member of the router's session.
    #[error("{0} is not a member of this router's session")]
    NotMember(PeerId),
    /// An end asked for a route to itself.
    #[error("a route needs two different ends")]
    SameEnds,
    /// The router carries its maximum of routes (or pending asks).
    #[error("the router carries its maximum of {0} routes")]
    TooMany(usize),
    /// No open route between the two ends (not both asked).
    #[error("no route between these ends")]
    NoRoute,
    /// The route's budget is spent for now.
    #[error("the route's budget is spent")]
    OverBudget,
}

/// What an ask did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Waiting for the other end's ask.
    Waiting,
    /// Both asked: the route is open.
    Open,
}

/// Counters of a router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Datagrams with no open route.
    pub no_route: u64,
    /// Datagrams over a route's budget.
    pub over_budget: u64,
}

#[derive(Debug)]
struct Route {
    bytes: TokenBucket,
    packets: TokenBucket,
}

/// A pair of ends in a fixed order (the route is one for both directions).
fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// The router's core (see the module docs).
#[derive(Debug)]
pub struct Forwarder {
    config: ForwardConfig,
    members: HashSet<PeerId>,
    /// (asker, other) -> until when the ask waits.
    asks: HashMap<(PeerId, PeerId), Instant>,
    routes: HashMap<(PeerId, PeerId), Route>,
    stats: ForwardStats,
}

impl Forwarder {
    /// A router with no members yet.
    pub fn new(config: ForwardConfig) -> Self {
        Self {
            config,
            members: HashSet::new(),
            asks: HashMap::new(),
            routes: HashMap::new(),
            stats: ForwardStats::default(),
        }
    }

    /// Step 1: the session's members now; routes and asks of others are dropped.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = PeerId>) {
        self.members = members.into_iter().collect();
        let members = &self.members;
        self.routes
            .retain(|(a, b), _| members.contains(a) && members.contains(b));
        self.asks
            .retain(|(a, b), _| members.contains(a) && members.contains(b));
    }

    /// Step 2: `asker` asks for a route to `other`.
    pub fn ask(&mut self, now: Instant, asker: PeerId, other: PeerId) -> Result<Asked, Refused> {
        if asker == other {
            return Err(Refused::SameEnds);
        }
        for end in [asker, other] {
            if !self.members.contains(&end) {
                return Err(Refused::NotMember(end));
            }
        }
        self.asks.retain(|_, until| *until > now);
        let key = pair(asker, other);
        if self.routes.contains_key(&key) {
            return Ok(Asked::Open);
        }
        if self.asks.remove(&(other, asker)).is_some() {
            if self.routes.len() >= self.config.max_routes {
                return Err(Refused::TooMany(self.config.max_routes));
            }
            let c = &self.config;
            let route = Route {
                bytes: TokenBucket::new(c.bytes_per_sec, c.bytes_per_sec, now),
                packets: TokenBucket::new(c.packets_per_sec, c.packets_per_sec, now),
            };
            self.routes.insert(key, route);
            return Ok(Asked::Open);
        }
        if self.asks.len() >= self.config.max_routes && !self.asks.contains_key(&(asker, other)) {
            return Err(Refused::TooMany(self.config.max_routes));
        }
        let until = now.checked_add(self.config.ask_timeout).unwrap_or(now);
        self.asks.insert((asker, other), until);
        Ok(Asked::Waiting)
    }

    /// Closes the route between `a` and `b` (either end gave it up).
    pub fn close(&mut self, a: PeerId, b: PeerId) {
        self.routes.remove(&pair(a, b));
        self.asks.remove(&(a, b));
        self.asks.remove(&(b, a));
    }

    /// Whether the route between `a` and `b` is open.
    pub fn is_open(&self, a: PeerId, b: PeerId) -> bool {
        self.routes.contains_key(&pair(a, b))
    }

    /// Step 3: may a datagram of `len` bytes from `from` go to `to` now?
    pub fn forward(
        &mut self,
        now: Instant,
        from: PeerId,
        to: PeerId,
        len: usize,
    ) -> Result<(), Refused> {
        let Some(route) = self.routes.get_mut(&pair(from, to)) else {
            self.stats.no_route += 1;
            return Err(Refused::NoRoute);
        };
        let len = len as u64;
        if !route.packets.ready(now, 1) || !route.bytes.ready(now, len) {
            self.stats.over_budget += 1;
            return Err(Refused::OverBudget);
        }
        route.packets.take(now, 1);
        route.bytes.take(now, len);
        self.stats.forwarded += 1;
        self.stats.bytes += len;
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> ForwardStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn router(config: ForwardConfig) -> Forwarder {
        let mut f = Forwarder::new(config);
        f.set_members([peer(1), peer(2), peer(3)]);
        f
    }

    #[test]
    fn a_route_opens_only_when_both_members_asked() {
        let t0 = Instant::now();
        let mut f = router(ForwardConfig::default());
        assert_eq!(f.forward(t0, peer(1), peer(2), 100), Err(Refused::NoRoute));
        assert_eq!(f.ask(t0, peer(1), peer(2)), Ok(Asked::Waiting));
        assert_eq!(f.forward(t0, peer(1), peer(2), 100), Err(Refused::NoRoute));
        assert_eq!(f.ask(t0, peer(2), peer(1)), Ok(Asked::Open));
        assert_eq!(f.forward(t0, peer(1), peer(2), 100), Ok(()));
        assert_eq!(f.forward(t0, peer(2), peer(1), 100), Ok(()));
        assert_eq!(f.forward(t0, peer(1), peer(3), 100), Err(Refused::NoRoute));
        // Strangers and loops are refused.
        assert_eq!(
            f.ask(t0, peer(1), peer(9)),
            Err(Refused::NotMember(peer(9)))
        );
        assert_eq!(f.ask(t0, peer(1), peer(1)), Err(Refused::SameEnds));
        // A member that leaves takes its route with it.
        f.set_members([peer(1), peer(3)]);
        assert_eq!(f.forward(t0, peer(1), peer(2), 100), Err(Refused::NoRoute));
        assert_eq!(f.stats().forwarded, 2);
        assert_eq!(f.stats().no_route, 4);
    }

    #[test]
    fn an_ask_expires_without_the_other_end() {
        let t0 = Instant::now();
        let mut f = router(ForwardConfig::default());
        assert_eq!(f.ask(t0, peer(1), peer(2)), Ok(Asked::Waiting));
        let later = t0 + ForwardConfig::default().ask_timeout + Duration::from_secs(1);
        assert_eq!(f.ask(later, peer(2), peer(1)), Ok(Asked::Waiting));
        assert!(!f.is_open(peer(1), peer(2)));
    }

    #[test]
    fn the_budget_caps_bytes_and_packets_per_route() {
        let t0 = Instant::now();
        let config = ForwardConfig {
            bytes_per_sec: 10_000,
            packets_per_sec: 5,
            ..ForwardConfig::default()
        };
        let mut f = router(config);
        f.ask(t0, peer(1), peer(2)).expect("ask");
        f.ask(t0, peer(2), peer(1)).expect("ask");
        for _ in 0..5 {
            assert_eq!(f.forward(t0, peer(1), peer(2), 100), Ok(()));
        }
        assert_eq!(
            f.forward(t0, peer(2), peer(1), 100),
            Err(Refused::OverBudget)
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(f.forward(t1, peer(1), peer(2), 9_000), Ok(()));
        assert_eq!(
            f.forward(t1, peer(1), peer(2), 2_000),
            Err(Refused::OverBudget)
        );
        assert_eq!(f.stats().over_budget, 2);
    }

    #[test]
    fn routes_and_asks_are_bounded() {
        let t0 = Instant::now();
        let config = ForwardConfig {
            max_routes: 1,
            ..ForwardConfig::default()
        };
        let mut f = router(config);
        f.ask(t0, peer(1), peer(2)).expect("ask");
        assert_eq!(f.ask(t0, peer(2), peer(1)), Ok(Asked::Open));
        assert_eq!(f.ask(t0, peer(1), peer(3)), Ok(Asked::Waiting));
        assert_eq!(f.ask(t0, peer(3), peer(1)), Err(Refused::TooMany(1)));
        // One pending ask at most as well.
        assert_eq!(f.ask(t0, peer(2), peer(3)), Ok(Asked::Waiting));
        assert_eq!(f.ask(t0, peer(1), peer(3)), Err(Refused::TooMany(1)));
    }
}
