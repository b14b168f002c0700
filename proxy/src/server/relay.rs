//! Relaying application data (RFC 8656 sections 11 and 12): Send and Data indications,
//! ChannelData.
//!
//! Client to peer:
//!
//! 1. ChannelData: parse (malformed: dropped), find the client's allocation, the bound
//!    channel (else dropped as `unbound_channel`) and the peer's permission, refuse the
//!    proxy's own ports, draw from the bandwidth bucket (else dropped as `bandwidth`),
//!    and return
//!    [`ClientInput::Forward`] with the payload borrowed from the datagram. A peer that is
//!    another allocation of this proxy (relay-to-relay) is handed over inside the core:
//!    the data enters that allocation as peer input from the sender's relayed address.
//! 2. A Send indication: the same checks with XOR-PEER-ADDRESS and DATA; the data leaves
//!    as a [`Command::SendFromRelay`]. Indications are never answered.
//!
//! Peer to client:
//!
//! 1. Find the allocation of the relay port and the sender's permission (by IP), draw
//!    from the bucket.
//! 2. A bound channel to the sender's exact address: [`PeerInput::Forward`] with the
//!    ChannelData header; otherwise a Data indication (XOR-PEER-ADDRESS, DATA) as a
//!    [`Command::SendToClient`].

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;
use stun_rs::attributes::turn::{Data, XorPeerAddress};
use stun_rs::methods::DATA;
use stun_rs::{MessageClass, StunMessage, TransactionId};

use super::{ClientInput, Command, DropReason, PeerInput, Server};
use crate::wire::{self, ChannelData, MAX_UDP_PAYLOAD};

/// Bytes a Data indication adds around its data (header, XOR-PEER-ADDRESS for IPv6, DATA
/// header and padding).
const DATA_INDICATION_OVERHEAD: usize = 20 + 24 + 4 + 3;

impl Server {
    pub(super) fn channel_data<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> ClientInput<'a> {
        let Some(cd) = ChannelData::parse_up_to(bytes, self.config.channel_max()) else {
            return ClientInput::Dropped(DropReason::Malformed);
        };
        let Some(port) = self.by_client.get(&from).copied() else {
            return ClientInput::Dropped(DropReason::NoAllocation);
        };
        let (own, pool) = (&self.own, &self.pool);
        let Some(a) = self.allocations.get_mut(&port) else {
            return ClientInput::Dropped(DropReason::NoAllocation);
        };
        if !a.active {
            return ClientInput::Dropped(DropReason::Pending);
        }
        let Some(peer) = a.channel_peer(cd.number, now) else {
            return ClientInput::Dropped(DropReason::UnboundChannel);
        };
        if !a.permits(peer.ip(), now) {
            return ClientInput::Dropped(DropReason::NoPermission);
        }
        let loopback = self.config.policy.allow_loopback_peers;
        let to_relay = own.relay_peer(peer, port, loopback, |p| pool.is_taken(p));
        if to_relay == Some(Err(())) {
            return ClientInput::Dropped(DropReason::OwnAddress);
        }
        if !a.bucket.take(now, cd.payload.len() as u64) {
            return ClientInput::Dropped(DropReason::Bandwidth);
        }
        self.stats.to_peer.add(cd.payload.len());
        if let Some(Ok(target)) = to_relay {
            return self.relay_to_relay(now, port, target, cd.payload);
        }
        ClientInput::Forward {
            port,
            peer,
            payload: cd.payload,
        }
    }

    /// Hands data from the allocation at `from_port` to the one at `target` (both this
    /// proxy's), as if it had arrived from the sender's relayed address: the target's
    /// permission, bucket and channel apply as for any peer.
    fn relay_to_relay<'a>(
        &mut self,
        now: Instant,
        from_port: u16,
        target: u16,
        payload: &[u8],
    ) -> ClientInput<'a> {
        let Some(relay_ip) = self.own.relay_ip() else {
            return ClientInput::Dropped(DropReason::OwnAddress);
        };
        let from = SocketAddr::new(relay_ip, from_port);
        match self.handle_peer_input(now, target, from, payload) {
            PeerInput::Forward { client, header } => {
                let mut bytes = Vec::with_capacity(header.len() + payload.len() + 3);
                bytes.extend_from_slice(&header);
                bytes.extend_from_slice(payload);
                // ChannelData over UDP is padded to a multiple of 4 (RFC 8656 section 12.5).
                bytes.resize(bytes.len().next_multiple_of(4), 0);
                self.stats.relay_to_relay += 1;
                self.push(Command::SendToClient { to: client, bytes });
                ClientInput::Handled
            }
            PeerInput::Handled => {
                self.stats.relay_to_relay += 1;
                ClientInput::Handled
            }
            // Counted by `handle_peer_input`.
            PeerInput::Dropped(_) => ClientInput::Handled,
        }
    }

    pub(super) fn send_indication<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &StunMessage,
    ) -> ClientInput<'a> {
        let Some(port) = self.by_client.get(&from).copied() else {
            return ClientInput::Dropped(DropReason::NoAllocation);
        };
        let peer = msg
            .get::<XorPeerAddress>()
            .and_then(|a| a.as_xor_peer_address().ok())
            .map(|p| *p.socket_address());
        let data = msg.get::<Data>().and_then(|a| a.as_data().ok());
        let (Some(peer), Some(data)) = (peer, data) else {
            return ClientInput::Dropped(DropReason::BadIndication);
        };
        if peer.is_ipv4() != self.config.relay_ip.is_ipv4() {
            return ClientInput::Dropped(DropReason::BadIndication);
        }
        let (own, pool) = (&self.own, &self.pool);
        let Some(a) = self.allocations.get_mut(&port) else {
            return ClientInput::Dropped(DropReason::NoAllocation);
        };
        if !a.active {
            return ClientInput::Dropped(DropReason::Pending);
        }
        if !a.permits(peer.ip(), now) {
            return ClientInput::Dropped(DropReason::NoPermission);
        }
        let loopback = self.config.policy.allow_loopback_peers;
        let to_relay = own.relay_peer(peer, port, loopback, |p| pool.is_taken(p));
        if to_relay == Some(Err(())) {
            return ClientInput::Dropped(DropReason::OwnAddress);
        }
        let bytes = data.as_bytes();
        if !a.bucket.take(now, bytes.len() as u64) {
            return ClientInput::Dropped(DropReason::Bandwidth);
        }
        self.stats.to_peer.add(bytes.len());
        if let Some(Ok(target)) = to_relay {
            let bytes = bytes.to_vec();
            return self.relay_to_relay(now, port, target, &bytes);
        }
        let bytes = bytes.to_vec();
        self.push(Command::SendFromRelay {
            port,
            to: peer,
            bytes,
        });
        ClientInput::Handled
    }

    pub(super) fn peer_data(
        &mut self,
        now: Instant,
        port: u16,
        from: SocketAddr,
        bytes: &[u8],
    ) -> PeerInput {
        let Some(a) = self.allocations.get_mut(&port) else {
            return PeerInput::Dropped(DropReason::NoAllocation);
        };
        if !a.active {
            return PeerInput::Dropped(DropReason::Pending);
        }
        if !a.permits(from.ip(), now) {
            return PeerInput::Dropped(DropReason::NoPermission);
        }
        if bytes.len() + DATA_INDICATION_OVERHEAD > MAX_UDP_PAYLOAD {
            return PeerInput::Dropped(DropReason::TooLarge);
        }
        if !a.bucket.take(now, bytes.len() as u64) {
            return PeerInput::Dropped(DropReason::Bandwidth);
        }
        let client = a.client;
        if let Some(number) = a.channel_of(from, now) {
            let Some(header) = ChannelData::header(number, bytes.len()) else {
                return PeerInput::Dropped(DropReason::TooLarge);
            };
            self.stats.to_client.add(bytes.len());
            return PeerInput::Forward { client, header };
        }
        let attrs = vec![XorPeerAddress::from(from).into(), Data::new(bytes).into()];
        let txn = TransactionId::from(self.rng.gen::<[u8; 12]>());
        match wire::encode_stun(
            DATA,
            MessageClass::Indication,
            txn,
            attrs,
            None,
            false,
            bytes.len(),
        ) {
            Some(out) => {
                self.stats.to_client.add(bytes.len());
                self.push(Command::SendToClient {
                    to: client,
                    bytes: out,
                });
                PeerInput::Handled
            }
            None => PeerInput::Dropped(DropReason::Encode),
        }
    }
}
