//! The candidates a node offers: its host addresses, a UPnP mapping and its relayed
//! addresses (RFC 8445 section 5.1.1), registered with the punch server again whenever one
//! changes.
//!
//! Steps:
//! 1. [`host_addrs`]: the bound address, or for a wildcard bind the source the kernel
//!    routes toward the punch server and, on a dual-stack socket, toward the other
//!    family's internet (nothing is sent to find them). A relay-only node offers none.
//! 2. [`publish_candidates`]: the host candidates plus the current UPnP mapping and every
//!    relayed address, registered again on each change; the engine's local candidates
//!    follow.
//! 3. [`registered_relay`]: the relayed address as last confirmed by the server, which is
//!    what peers were told and what the relay plan of an introduction uses.

use std::net::{IpAddr, SocketAddr};

use tokio::sync::watch;

use super::control::Control;
use super::relays::RelayedAddr;
use crate::coord::{Candidate as WireCandidate, CandidateKind as WireKind, MAX_CANDIDATES};
use crate::punch::{self, Candidate};
use crate::socket::{canonical, SocketFamily};
use crate::upnp::UpnpState;

/// This node's relayed address as last registered (what peers were told).
pub(crate) fn registered_relay(control: &Control) -> Option<SocketAddr> {
    let registration = control.registration();
    let registered = registration.borrow();
    registered
        .candidates
        .iter()
        .find(|c| c.kind == WireKind::Relay)
        .map(|c| c.addr)
}

/// The sources of a node's candidates beyond its host addresses (each `None` when off).
pub(crate) struct Sources {
    pub mapped: Option<watch::Receiver<UpnpState>>,
    pub relayed: Option<watch::Receiver<Vec<RelayedAddr>>>,
    /// Predicted reflexive candidates ([`super::predicted`]).
    pub predicted: Option<watch::Receiver<Option<Vec<WireCandidate>>>>,
}

impl Sources {
    /// Whether any source is on.
    pub(crate) fn any(&self) -> bool {
        self.mapped.is_some() || self.relayed.is_some() || self.predicted.is_some()
    }
}

/// Registers the candidates again whenever the UPnP mapping, the relayed addresses or the
/// predicted ports change: the host candidates, the mapped one, each relayed address and
/// the predicted ones (at most [`MAX_CANDIDATES`] - 1 in all, predictions last, so the
/// reflexive address the server adds always fits).
pub(crate) async fn publish_candidates(
    mut sources: Sources,
    control: Control,
    host: Vec<WireCandidate>,
    local: watch::Sender<Vec<Candidate>>,
) {
    let mut registered = host.clone();
    loop {
        let Sources {
            mapped,
            relayed,
            predicted,
        } = &mut sources;
        let mut candidates = host.clone();
        if let Some(external) = mapped.as_mut().and_then(|m| m.borrow_and_update().mapped()) {
            candidates.push(WireCandidate::new(WireKind::Upnp, external));
        }
        if let Some(r) = relayed.as_mut() {
            for a in r.borrow_and_update().iter() {
                candidates.push(WireCandidate::new(WireKind::Relay, a.relayed));
            }
        }
        if let Some(p) = predicted.as_mut() {
            candidates.extend(p.borrow_and_update().iter().flatten().copied());
        }
        // Room for the reflexive address the punch server adds.
        candidates.truncate(MAX_CANDIDATES - 1);
        if candidates != registered {
            tracing::info!(?candidates, "registering candidates");
            let _ = local.send(probe_candidates(&candidates));
            if control.register(candidates.clone()).await.is_err() {
                return;
            }
            registered = candidates;
        }
        let (upnp_closed, relays_closed, predicted_closed) = {
            let upnp_changed = async {
                match mapped.as_mut() {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let relays_changed = async {
                match relayed.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let predicted_changed = async {
                match predicted.as_mut() {
                    Some(p) => p.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ok = upnp_changed => (!ok, false, false),
                ok = relays_changed => (false, !ok, false),
                ok = predicted_changed => (false, false, !ok),
            }
        };
        if upnp_closed {
            *mapped = None;
        }
        if relays_closed {
            *relayed = None;
        }
        if predicted_closed {
            *predicted = None;
        }
        if !sources.any() {
            return;
        }
    }
}

pub(crate) fn probe_candidates(candidates: &[WireCandidate]) -> Vec<Candidate> {
    candidates
        .iter()
        .filter_map(WireCandidate::to_probe)
        .collect::<Vec<punch::Candidate>>()
}

/// A global unicast IPv6 address (documentation prefix, RFC 3849) used only to ask the
/// routing table which source address IPv6 traffic to the internet would leave from; no
/// packet is ever sent to it.
const ROUTE_PROBE_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// The same for IPv4 (TEST-NET-1, RFC 5737).
const ROUTE_PROBE_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

/// The host candidates of a socket bound at `local`: the bound address itself, or for a
/// wildcard bind the source the kernel picks toward `server` and, on a dual-stack socket,
/// the source it picks for the other family's internet (so a peer with a global IPv6
/// address offers it even when the punch server is reached over IPv4, and the reverse).
/// Loopback, link-local and unspecified sources of the other family are left out, and so is
/// the other family when the punch server is on loopback (everything is on this machine).
pub(crate) fn host_addrs(
    local: SocketAddr,
    family: SocketFamily,
    server: SocketAddr,
) -> Vec<SocketAddr> {
    let port = local.port();
    let bound = canonical(local).ip();
    if !bound.is_unspecified() {
        return vec![SocketAddr::new(bound, port)];
    }
    let toward_server = route_source(server).unwrap_or(bound);
    let mut hosts = vec![SocketAddr::new(toward_server, port)];
    // A punch server on loopback means everything runs on this machine: no other address.
    if family == SocketFamily::Dual && !canonical(server).ip().is_loopback() {
        let other = if server.is_ipv4() {
            ROUTE_PROBE_V6
        } else {
            ROUTE_PROBE_V4
        };
        let global = route_source(SocketAddr::new(other, 9)).filter(|ip| usable_host_ip(*ip));
        if let Some(ip) = global.filter(|ip| *ip != toward_server) {
            hosts.push(SocketAddr::new(ip, port));
        }
    }
    hosts
}

/// The source address the kernel picks toward `dest`. `connect()` on a UDP socket only
/// consults the routing table; nothing is sent.
fn route_source(dest: SocketAddr) -> Option<IpAddr> {
    let unspecified: SocketAddr = match dest {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(unspecified).ok()?;
    socket.connect(dest).ok()?;
    Some(canonical(socket.local_addr().ok()?).ip())
}

/// Whether a routed source is worth offering as a host candidate of the other family.
fn usable_host_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_loopback() || v4.is_link_local()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_unicast_link_local()),
    }
}
