//! A node's routes through other members of its session ([`crate::route`]): the hub, a
//! connection over a route (the route is its relayed path: its path core moves it to a
//! direct path when one validates), and moving a live connection to a new route when its
//! router left.

use std::time::Instant;

use super::{DirectConnection, DirectNode};
use crate::direct::conn_slots::ConnCmd;
use crate::direct::error::DialError;
use crate::direct::route::{ActivePath, HowFinder, PathType};
use crate::direct::supervise;
use crate::identity::PeerId;
use crate::route::RouteHub;
use crate::socket::Path;

impl DirectNode {
    /// The node's routes through other members, and its forwarding for them
    /// ([`crate::route`]); the session layer feeds it its links and the members' asks.
    pub fn routes(&self) -> &RouteHub {
        &self.race.routes
    }

    /// Connects to `target` through member `via` on the route this node opened with
    /// [`RouteHub::open_end`] (both ends asked `via`, which opened the route). The route
    /// is the connection's relayed path: its path core probes for a direct path in the
    /// background and moves the connection when one validates, as for a relayed start.
    pub async fn connect_routed(
        &self,
        target: PeerId,
        via: PeerId,
    ) -> Result<DirectConnection, DialError> {
        let started = Instant::now();
        let route = self
            .race
            .routes
            .open_end(via, target)
            .map_err(|e| DialError::NoRoute {
                peer: target,
                detail: e.to_string(),
            })?;
        let path = Path::Router { route };
        let peer = match self.endpoint.connect_via(target, path, None).await {
            Ok(peer) => peer,
            Err(e) => {
                self.race.routes.close_end(route);
                return Err(DialError::Handshake(e));
            }
        };
        let watch = self.race.watches.set(target, ActivePath::routed(Some(via)));
        self.race.watches.set_relay(target, path, path.remote());
        if !self.race.relay_only {
            supervise::spawn(&self.race, &peer, Some(self.control.clone()));
        }
        let how = HowFinder {
            peer: target,
            watches: self.race.watches.clone(),
        };
        let remote = watch.borrow().remote;
        Ok(DirectConnection {
            remote,
            path: watch,
            elapsed: Some(started.elapsed()),
            peer,
            how,
        })
    }

    /// Moves the live connection to `target` onto a new route through `via` (its router
    /// left): the route becomes the connection's relayed path, and its active path if it
    /// ran on a route.
    pub fn reroute(&self, target: PeerId, via: PeerId) -> Result<(), DialError> {
        let on_route = self
            .race
            .watches
            .current(target)
            .is_some_and(|p| p.kind == PathType::Router);
        let route = self
            .race
            .routes
            .open_end_as(via, target, false)
            .map_err(|e| DialError::NoRoute {
                peer: target,
                detail: e.to_string(),
            })?;
        let path = Path::Router { route };
        self.race.watches.set_relay(target, path, path.remote());
        if on_route {
            self.race
                .watches
                .update(target, ActivePath::routed(Some(via)));
        }
        let kind = crate::conn::PathKind::Routed { route };
        let engine = self.race.engine.clone();
        tokio::spawn(async move {
            engine.conn(ConnCmd::Relay { peer: target, kind }).await;
        });
        Ok(())
    }

    /// The path the connection to `peer` runs on now, if one is watched.
    pub fn path_of(&self, peer: &PeerId) -> Option<ActivePath> {
        self.race.watches.current(*peer)
    }
}
