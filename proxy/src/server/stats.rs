//! The core's counters: plain integers, bumped on the packet path without atomics.
//!
//! Steps:
//!
//! 1. The sans-IO [`crate::server::Server`] bumps a [`Stats`] field for every relayed
//!    packet, refusal, auth failure and drop, each with its reason ([`AuthFailure`],
//!    [`Quota`], [`DropReason`]).
//! 2. The driver copies them into the `metrics` crate's Prometheus recorder a few times a
//!    second ([`crate::metrics`]); tests read them directly with
//!    [`crate::server::Server::stats`].

/// Packets and bytes relayed in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams relayed.
    pub packets: u64,
    /// Payload bytes relayed (application data, without TURN framing).
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// Defines a reason enum with `ALL` and `as_str` (the Prometheus label).
macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every reason, in label order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The Prometheus label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}

reasons! {
    /// Why a request failed authentication (RFC 8489 section 9.2.4).
    AuthFailure {
        /// USERNAME, REALM or NONCE missing next to MESSAGE-INTEGRITY (400).
        MissingAttributes => "missing_attributes",
        /// The nonce is not ours, or is for another client IP (438).
        BadNonce => "bad_nonce",
        /// The nonce expired (438).
        StaleNonce => "stale_nonce",
        /// The username is not `EXPIRY:USER` (401).
        BadUsername => "bad_username",
        /// The username's expiry has passed (401).
        ExpiredUsername => "expired_username",
        /// MESSAGE-INTEGRITY does not match the key (401).
        BadIntegrity => "bad_integrity",
        /// Another username than the allocation's (441).
        WrongCredentials => "wrong_credentials",
    }
}

reasons! {
    /// Which limit refused a request.
    Quota {
        /// `max_allocations` (508).
        Allocations => "allocations",
        /// `max_allocations_per_user` (486).
        PerUser => "per_user",
        /// `max_allocations_per_ip` (486).
        PerIp => "per_ip",
        /// No free relay port, or the port of a reservation could not be bound (508).
        Ports => "ports",
        /// `max_permissions_per_allocation` (508).
        Permissions => "permissions",
        /// `max_channels_per_allocation` (508).
        Channels => "channels",
        /// `max_reservations` (508).
        Reservations => "reservations",
    }
}

reasons! {
    /// Why a datagram was dropped without an answer.
    DropReason {
        /// Neither STUN nor ChannelData, a STUN message that does not decode, trailing
        /// bytes, a bad FINGERPRINT, a ChannelData length that does not fit the datagram,
        /// or a channel number outside 0x4000-0x4FFF.
        Malformed => "malformed",
        /// A STUN response or error response, or an indication other than Send.
        Unexpected => "unexpected",
        /// A request of a method the relay does not serve.
        UnknownMethod => "unknown_method",
        /// Relay data from a client without an allocation, or to a freed relay port.
        NoAllocation => "no_allocation",
        /// Relay data to or from a peer without a permission.
        NoPermission => "no_permission",
        /// ChannelData on a channel that is not bound.
        UnboundChannel => "unbound_channel",
        /// A Send indication without XOR-PEER-ADDRESS or DATA, or of the wrong family.
        BadIndication => "bad_indication",
        /// Data to one of the proxy's own ports.
        OwnAddress => "own_address",
        /// Over `bandwidth_per_allocation` (the allocation's token bucket is empty).
        Bandwidth => "bandwidth",
        /// Data too large to frame for the client.
        TooLarge => "too_large",
        /// An Allocate still waiting for its relay port.
        Pending => "pending",
        /// The command queue was full.
        QueueFull => "queue_full",
        /// A response could not be encoded (a bug; logged).
        Encode => "encode",
    }
}

/// Counters of one core.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations freed by expiry.
    pub allocations_expired: u64,
    /// Allocations freed by a Refresh with lifetime 0.
    pub allocations_deleted: u64,
    /// Permissions installed (new, not refreshes).
    pub permissions_created: u64,
    /// Channels bound (new, not refreshes).
    pub channels_bound: u64,
    /// Client to peer.
    pub to_peer: Traffic,
    /// Peer to client.
    pub to_client: Traffic,
    /// Requests answered with a 401 challenge because they carried no credentials.
    pub auth_challenges: u64,
    /// Authentication failures, indexed like [`AuthFailure::ALL`].
    pub auth_failures: [u64; 7],
    /// Limit refusals and drops, indexed like [`Quota::ALL`].
    pub quota: [u64; 7],
    /// Requests refused (403) by the peer-address policy.
    pub policy_refusals: u64,
    /// Datagrams handed from one allocation of this proxy to another (relay-to-relay).
    pub relay_to_relay: u64,
    /// Datagrams dropped unanswered, indexed like [`DropReason::ALL`].
    pub dropped: [u64; 13],
    /// STUN requests handled (answered).
    pub requests: u64,
    /// Error responses sent.
    pub error_responses: u64,
    /// Datagrams the driver could not send (full socket buffer).
    pub send_failures: u64,
}

impl Stats {
    pub(crate) fn auth(&mut self, r: AuthFailure) {
        if let Some(c) = self.auth_failures.get_mut(r as usize) {
            *c += 1;
        }
    }

    pub(crate) fn quota(&mut self, q: Quota) {
        if let Some(c) = self.quota.get_mut(q as usize) {
            *c += 1;
        }
    }

    pub(crate) fn drop(&mut self, r: DropReason) {
        if let Some(c) = self.dropped.get_mut(r as usize) {
            *c += 1;
        }
    }

    /// Authentication failures of one reason.
    pub fn auth_failures_of(&self, r: AuthFailure) -> u64 {
        self.auth_failures.get(r as usize).copied().unwrap_or(0)
    }

    /// Refusals and drops by one limit.
    pub fn quota_of(&self, q: Quota) -> u64 {
        self.quota.get(q as usize).copied().unwrap_or(0)
    }

    /// Drops of one reason.
    pub fn dropped_of(&self, r: DropReason) -> u64 {
        self.dropped.get(r as usize).copied().unwrap_or(0)
    }

    /// All drops together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_fit_the_reasons() {
        let s = Stats::default();
        assert_eq!(s.auth_failures.len(), AuthFailure::ALL.len());
        assert_eq!(s.quota.len(), Quota::ALL.len());
        assert_eq!(s.dropped.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
