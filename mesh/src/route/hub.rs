//! The route hub: a node's driver of routed paths, both as an end and as a router.
//!
//! Steps:
//! 1. [`RouteHub::start`] attaches to the node's socket (its routed datagrams come to the
//!    hub's bounded queue, [`crate::socket::routed`]) and starts the task that sends them.
//! 2. [`RouteHub::add_link`] names the outer connections: the QUIC connections to other
//!    members that carry routed datagrams. Whoever reads a link's datagrams hands each to
//!    [`RouteHub::on_datagram`] ([`RouteHub::pump`] does that for a link nothing else
//!    reads).
//! 3. End: [`RouteHub::open_end`] makes a route to `target` through `via` (whose link must
//!    carry [`MIN_OUTER_DATAGRAM`]-byte datagrams, else a clear refusal) and points the
//!    target's entry in the path table at it, so a QUIC connection to the target runs
//!    over it ([`crate::socket::Endpoint::connect_via`] with [`Path::Router`], or an
//!    existing connection moves). Each datagram goes to `via` as [`wire::to`]; each
//!    [`wire::from`] from `via` naming the target is handed to the socket.
//! 4. Router: [`RouteHub::ask`] records an end's ask ([`Forwarder`]); each [`wire::to`]
//!    from one end is forwarded to the other as [`wire::from`] while the route is open
//!    and within its budget, else dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::forward::{Asked, ForwardConfig, ForwardStats, Forwarder, Refused};
use super::wire::{self, Outer, MIN_OUTER_DATAGRAM};
use crate::identity::PeerId;
use crate::socket::{MeshSocket, Path, RouteId, RoutedDatagram};

/// Bound of the queue of routed datagrams from the socket.
pub const HUB_QUEUE: usize = 1024;
/// Most routes a node ends.
pub const MAX_ENDS: usize = 256;

/// Why a route could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No link to the router.
    #[error("no connection to the router {0}")]
    NoLink(PeerId),
    /// The link to the router cannot carry a routed QUIC datagram.
    #[error(
        "the connection to the router carries datagrams of at most {have} bytes; a route \
         needs {need} (the inner QUIC connection's 1200 plus the routing header)"
    )]
    DatagramTooSmall {
        /// What the link carries now (0: datagrams off).
        have: usize,
        /// What a route needs.
        need: usize,
    },
    /// The node ends its maximum of routes.
    #[error("this node already ends {0} routes")]
    TooMany(usize),
    /// The path table is full.
    #[error("the path table is full")]
    TableFull,
    /// The router refused (as a router, this node's own core).
    #[error("refused: {0}")]
    Refused(#[from] Refused),
}

/// Counters of a hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Routed datagrams sent to a router.
    pub sent: u64,
    /// Routed datagrams received from a router and handed to the socket.
    pub received: u64,
    /// Routed datagrams dropped at this end: no route, no link, socket full.
    pub dropped: u64,
    /// Inner datagrams larger than the link to the router carries (the inner connection's
    /// path MTU probes above [`wire::INNER_MIN`]: lost, as on a path with a smaller MTU).
    pub too_large: u64,
    /// This node's forwarding as a router.
    pub forward: ForwardStats,
    /// Outer datagrams that did not parse.
    pub malformed: u64,
}

#[derive(Debug)]
struct State {
    links: HashMap<PeerId, quinn::Connection>,
    /// Route -> (router, other end).
    ends: HashMap<RouteId, (PeerId, PeerId)>,
    /// (router, other end) -> route.
    by_pair: HashMap<(PeerId, PeerId), RouteId>,
    forwarder: Forwarder,
    next_route: u32,
    stats: HubStats,
}

impl State {
    /// Ends the routes whose (router, other end) `gone` names.
    fn drop_ends(&mut self, gone: impl Fn(&PeerId, &PeerId) -> bool) {
        let ids: Vec<RouteId> = self
            .ends
            .iter()
            .filter(|(_, (via, other))| gone(via, other))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(pair) = self.ends.remove(&id) {
                self.by_pair.remove(&pair);
            }
        }
    }
}

/// A node's route hub (see the module docs).
#[derive(Debug, Clone)]
pub struct RouteHub {
    socket: Arc<MeshSocket>,
    state: Arc<Mutex<State>>,
}

impl RouteHub {
    /// Step 1: a hub on `socket`, forwarding (as a router) within `config`.
    pub fn start(socket: Arc<MeshSocket>, config: ForwardConfig) -> Self {
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        socket.route_out(tx);
        let hub = Self {
            socket,
            state: Arc::new(Mutex::new(State {
                links: HashMap::new(),
                ends: HashMap::new(),
                by_pair: HashMap::new(),
                forwarder: Forwarder::new(config),
                next_route: 1,
                stats: HubStats::default(),
            })),
        };
        tokio::spawn(send_loop(Arc::downgrade(&hub.state), rx));
        hub
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every method leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step 2: `conn` is the link to member `peer` (replacing an earlier one).
    pub fn add_link(&self, peer: PeerId, conn: quinn::Connection) {
        self.lock().links.insert(peer, conn);
    }

    /// The link to `peer` is gone: the routes through it end (a route *to* `peer` stays:
    /// that link may be the route itself, replaced by a new connection).
    pub fn remove_link(&self, peer: &PeerId) {
        let mut s = self.lock();
        s.links.remove(peer);
        s.drop_ends(|via, _| via == peer);
    }

    /// `peer` left the session: every route to or through it ends.
    pub fn forget_peer(&self, peer: &PeerId) {
        let mut s = self.lock();
        s.links.remove(peer);
        s.drop_ends(|via, other| via == peer || other == peer);
    }

    /// Step 2: reads `conn`'s datagrams into [`Self::on_datagram`] until it closes; game
    /// datagrams are dropped (use this only for a link nothing else reads).
    pub fn pump(&self, peer: PeerId, conn: quinn::Connection) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            while let Ok(datagram) = conn.read_datagram().await {
                hub.on_datagram(peer, datagram);
            }
        })
    }

    /// Step 3: a route to `target` through `via`; the target's path becomes the route.
    pub fn open_end(&self, via: PeerId, target: PeerId) -> Result<RouteId, RouteError> {
        self.open_end_as(via, target, true)
    }

    /// [`Self::open_end`] for a connection that may run on another path now: the route
    /// becomes the target's active path only if `activate` or the active path is a route
    /// (a router that left); otherwise it is a standby.
    pub fn open_end_as(
        &self,
        via: PeerId,
        target: PeerId,
        activate: bool,
    ) -> Result<RouteId, RouteError> {
        let mut s = self.lock();
        if let Some(id) = s.by_pair.get(&(via, target)) {
            return Ok(*id);
        }
        let link = s.links.get(&via).ok_or(RouteError::NoLink(via))?;
        let have = link.max_datagram_size().unwrap_or(0);
        if have < MIN_OUTER_DATAGRAM {
            return Err(RouteError::DatagramTooSmall {
                have,
                need: MIN_OUTER_DATAGRAM,
            });
        }
        if s.ends.len() >= MAX_ENDS {
            return Err(RouteError::TooMany(MAX_ENDS));
        }
        let id = RouteId(s.next_route);
        s.next_route = s.next_route.wrapping_add(1).max(1);
        let path = Path::Router { route: id };
        {
            let mut paths = self.socket.paths();
            let current = paths
                .synthetic_for_peer(&target)
                .map(|s| (s, paths.resolve(&s)));
            match current {
                Some((synthetic, Some(active)))
                    if !activate && !matches!(active, Path::Router { .. }) =>
                {
                    paths.add_path(&synthetic, path);
                }
                _ => {
                    paths
                        .upsert_peer(Instant::now(), target, path)
                        .map_err(|_| RouteError::TableFull)?;
                }
            }
        }
        s.ends.insert(id, (via, target));
        s.by_pair.insert((via, target), id);
        tracing::info!(via = %via.short(), target = %target.short(), ?id, "route opened");
        Ok(id)
    }

    /// The other ends of the routes this node ends through `via`.
    pub fn ends_via(&self, via: &PeerId) -> Vec<PeerId> {
        self.lock()
            .ends
            .values()
            .filter(|(v, _)| v == via)
            .map(|(_, target)| *target)
            .collect()
    }

    /// The router of route `id` (`None` once the route ended).
    pub fn via(&self, id: RouteId) -> Option<PeerId> {
        self.lock().ends.get(&id).map(|(via, _)| *via)
    }

    /// Ends route `id` at this end (the path table keeps whatever path it has now).
    pub fn close_end(&self, id: RouteId) {
        let mut s = self.lock();
        if let Some(pair) = s.ends.remove(&id) {
            s.by_pair.remove(&pair);
        }
    }

    /// Step 4: as a router, the members of this node's session.
    pub fn set_members(&self, members: impl IntoIterator<Item = PeerId>) {
        self.lock().forwarder.set_members(members);
    }

    /// Step 4: as a router, `asker` asks for a route to `other`.
    pub fn ask(&self, asker: PeerId, other: PeerId) -> Result<Asked, Refused> {
        self.lock().forwarder.ask(Instant::now(), asker, other)
    }

    /// Step 4: as a router, the route between `a` and `b` ends.
    pub fn close_route(&self, a: PeerId, b: PeerId) {
        self.lock().forwarder.close(a, b);
    }

    /// An outer datagram from member `from`: a routed one is forwarded (router) or handed
    /// to the socket (end); a game datagram is returned for the game.
    pub fn on_datagram(&self, from: PeerId, datagram: Bytes) -> Option<Bytes> {
        let outer = Outer::parse(datagram);
        let mut s = self.lock();
        match outer {
            Some(Outer::Game(payload)) => return Some(payload),
            Some(Outer::To { target, inner }) => {
                let len = inner.len();
                if s.forwarder
                    .forward(Instant::now(), from, target, len)
                    .is_err()
                {
                    return None;
                }
                let sent = s
                    .links
                    .get(&target)
                    .map(|link| link.send_datagram(wire::from(&from, &inner)));
                if !matches!(sent, Some(Ok(()))) {
                    s.stats.dropped += 1;
                }
            }
            Some(Outer::From { source, inner }) => {
                let Some(&route) = s.by_pair.get(&(from, source)) else {
                    s.stats.dropped += 1;
                    return None;
                };
                drop(s);
                let delivered = self.socket.inject_routed(route, &inner);
                let mut s = self.lock();
                if delivered {
                    s.stats.received += 1;
                } else {
                    s.stats.dropped += 1;
                }
            }
            None => s.stats.malformed += 1,
        }
        None
    }

    /// The counters.
    pub fn stats(&self) -> HubStats {
        let s = self.lock();
        HubStats {
            forward: s.forwarder.stats(),
            ..s.stats
        }
    }
}

/// Step 3: sends the socket's routed datagrams to their routers until the hub is gone.
async fn send_loop(state: std::sync::Weak<Mutex<State>>, mut rx: mpsc::Receiver<RoutedDatagram>) {
    while let Some(RoutedDatagram { route, datagram }) = rx.recv().await {
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let sent = s.ends.get(&route).and_then(|(via, target)| {
            let link = s.links.get(via)?;
            Some(link.send_datagram(wire::to(target, &datagram)))
        });
        match sent {
            Some(Ok(())) => s.stats.sent += 1,
            Some(Err(quinn::SendDatagramError::TooLarge)) => s.stats.too_large += 1,
            _ => s.stats.dropped += 1,
        }
    }
}
