//! CreatePermission and ChannelBind (RFC 8656 sections 10 and 11).
//!
//! CreatePermission, after authentication and the allocation check (437/441):
//!
//! 1. No XOR-PEER-ADDRESS: 400. Any peer of the other address family: 443. Any peer the
//!    policy refuses: 403 ([`super::policy`]). A table that cannot take them all: 508.
//! 2. Otherwise every peer IP gets a permission, new or refreshed, for 300 s. The request
//!    succeeds or fails as a whole.
//!
//! ChannelBind:
//!
//! 1. CHANNEL-NUMBER missing or outside 0x4000-0x4FFF (0x7FFF with the RFC 5766 option),
//!    or XOR-PEER-ADDRESS missing: 400.
//!    Other family: 443. Refused peer: 403.
//! 2. The number bound to another peer, or the peer to another number (also during the
//!    5-minute cooldown after a binding expires): 400. A full table: 508.
//! 3. Otherwise the binding is created or refreshed (600 s), and the peer's permission
//!    too (300 s).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use stun_rs::attributes::turn::{ChannelNumber, XorPeerAddress};
use stun_rs::{MessageClass, StunMessage};

use super::allocation::BindError;
use super::policy::peer_allowed;
use super::{Authed, Quota, Req, Server};
use crate::wire::CHANNEL_MIN;

impl Server {
    /// Checks a peer address for this relay: 443 for the other family, 403 for policy.
    fn check_peer(&mut self, peer: SocketAddr) -> Result<(), u16> {
        if peer.is_ipv4() != self.config.relay_ip.is_ipv4() {
            return Err(443);
        }
        if !peer_allowed(&self.config.policy, &self.own, peer.ip()) {
            self.stats.policy_refusals += 1;
            tracing::debug!(%peer, "peer refused by policy");
            return Err(403);
        }
        Ok(())
    }

    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        req: &Req,
        msg: &StunMessage,
        authed: &Authed,
    ) {
        let Some(port) = self.allocation_for(req, authed) else {
            return;
        };
        let peers: Vec<SocketAddr> = msg
            .attributes()
            .iter()
            .filter_map(|a| a.as_xor_peer_address().ok())
            .map(|p| *p.socket_address())
            .collect();
        if peers.is_empty() {
            return self.error(req, 400, Some(&authed.key));
        }
        for peer in &peers {
            if let Err(code) = self.check_peer(*peer) {
                return self.error(req, code, Some(&authed.key));
            }
        }
        let max = self.config.limits.max_permissions_per_allocation;
        let Some(a) = self.allocations.get_mut(&port) else {
            return;
        };
        // All or nothing: the live IPs and the requested ones must fit together.
        let mut ips: Vec<IpAddr> = a
            .permissions
            .iter()
            .filter(|p| p.expires > now)
            .map(|p| p.ip)
            .chain(peers.iter().map(|p| p.ip().to_canonical()))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        if ips.len() > max {
            self.stats.quota(Quota::Permissions);
            return self.error(req, 508, Some(&authed.key));
        }
        let mut created = 0;
        for peer in &peers {
            if let Ok(true) = a.permit(peer.ip(), now, max) {
                created += 1;
            }
        }
        self.stats.permissions_created += created;
        self.reply(
            req,
            MessageClass::SuccessResponse,
            Vec::new(),
            Some(&authed.key),
        );
    }

    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        req: &Req,
        msg: &StunMessage,
        authed: &Authed,
    ) {
        let Some(port) = self.allocation_for(req, authed) else {
            return;
        };
        let number = msg
            .get::<ChannelNumber>()
            .and_then(|a| a.as_channel_number().ok())
            .map(|c| c.number());
        let peer = msg
            .get::<XorPeerAddress>()
            .and_then(|a| a.as_xor_peer_address().ok())
            .map(|p| *p.socket_address());
        let (Some(number), Some(peer)) = (number, peer) else {
            return self.error(req, 400, Some(&authed.key));
        };
        if !(CHANNEL_MIN..=self.config.channel_max()).contains(&number) {
            return self.error(req, 400, Some(&authed.key));
        }
        if let Err(code) = self.check_peer(peer) {
            return self.error(req, code, Some(&authed.key));
        }
        let limits = &self.config.limits;
        let (max_channels, max_perms) = (
            limits.max_channels_per_allocation,
            limits.max_permissions_per_allocation,
        );
        let Some(a) = self.allocations.get_mut(&port) else {
            return;
        };
        let checked = a
            .check_bind(number, peer, now, max_channels)
            .and_then(|()| {
                if a.can_permit(peer.ip(), now, max_perms) {
                    Ok(())
                } else {
                    Err(BindError::Full)
                }
            });
        match checked {
            Ok(()) => {}
            Err(BindError::Conflict) => return self.error(req, 400, Some(&authed.key)),
            Err(BindError::Full) => {
                self.stats.quota(Quota::Channels);
                return self.error(req, 508, Some(&authed.key));
            }
        }
        if a.bind(number, peer, now) {
            self.stats.channels_bound += 1;
        }
        if let Ok(true) = a.permit(peer.ip(), now, max_perms) {
            self.stats.permissions_created += 1;
        }
        self.reply(
            req,
            MessageClass::SuccessResponse,
            Vec::new(),
            Some(&authed.key),
        );
    }
}
