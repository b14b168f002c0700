//! The sans-IO STUN server core (RFC 8489 Binding, RFC 5780 behaviour discovery).
//!
//! The core owns no socket and reads no clock: the driver hands it one datagram at a time
//! with the time, the local socket it arrived on and its source, and gets back what to do.
//! Steps for each datagram ([`StunServer::handle_input`]):
//!
//! 1. Drop empty datagrams and sources that fail validation (port 0, unspecified,
//!    multicast or broadcast address): never answer those.
//! 2. Demultiplex (RFC 7983): not STUN -> [`Outcome::NotStun`], for the coordinator hook.
//! 3. Structural checks (header, lengths, attribute layout, FINGERPRINT): drop on failure.
//! 4. Only Binding requests are answered; indications and responses are dropped (RFC 8489
//!    §6.3), as are requests for other methods.
//! 5. Per-source rate limit (token bucket in a bounded table).
//! 6. Decode with `stun-rs`. A USERNAME starting with `park:` marks a parked peer's
//!    keep-alive (`mesh::coord::park`): [`Outcome::Keepalive`], for the coordinator, which
//!    holds the keys (on the primary socket; dropped on the others). Unknown comprehension-required attributes (and RFC 5780
//!    attributes this server does not serve: PADDING always; CHANGE-REQUEST and
//!    RESPONSE-PORT when there is no alternate address, RFC 5780 §6.1) -> 420 with
//!    UNKNOWN-ATTRIBUTES.
//! 7. Success response with XOR-MAPPED-ADDRESS. With an alternate address (RFC 5780 §6.1)
//!    also MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS; CHANGE-REQUEST selects
//!    the socket the response leaves from (change IP and/or port), and RESPONSE-PORT the
//!    port of the source's IP it goes to.
//! 8. Amplification limit (see [`crate::response`]), encode into a reused buffer, and
//!    return an [`Outcome::Transmit`] naming the local socket to send from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags};
use stun_rs::{MessageDecoder, MessageDecoderBuilder, MessageEncoder, MessageEncoderBuilder};
use stun_rs::{StunAttribute, TransactionId};

use mesh::coord::park::is_park_username;

use crate::config::StunConfig;
use crate::counters::{Counters, DropReason};
use crate::rate_limit::RateLimiter;
use crate::response::{Response, MAX_UNKNOWN_LISTED};
use crate::wire::{self, Class, WireError, METHOD_BINDING};
use mesh::socket::demux::{classify, DatagramKind};

/// CHANGE-REQUEST attribute type (RFC 5780 §7.2).
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
/// PADDING (RFC 5780 §7.6): not served, it exists to make responses bigger.
const ATTR_PADDING: u16 = 0x0026;
/// Comprehension-required attributes (RFC 8489 §14, range 0x0000-0x7FFF) a Binding
/// request may carry that this server understands: the base STUN set. Anything else in
/// that range (ICE's PRIORITY and USE-CANDIDATE, TURN's, or ones nobody registered) gets
/// a 420, whatever features the shared STUN codec was built with.
const BASE_STUN_ATTRIBUTES: [u16; 11] = [
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x0014, // REALM
    0x0015, // NONCE
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0020, // XOR-MAPPED-ADDRESS
];
/// Size of the reused response buffer; every response this core builds is far smaller.
const RESPONSE_BUF: usize = 256;

/// One of the (at most four) local sockets: primary or alternate IP x primary or alternate
/// port. Without an alternate address only [`SocketId::PRIMARY`] exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    /// Bound to the alternate IP.
    pub alt_ip: bool,
    /// Bound to the alternate port.
    pub alt_port: bool,
}

impl SocketId {
    /// The primary IP and port.
    pub const PRIMARY: SocketId = SocketId {
        alt_ip: false,
        alt_port: false,
    };
    /// All four sockets, in [`SocketId::index`] order.
    pub const ALL: [SocketId; 4] = [
        SocketId::PRIMARY,
        SocketId {
            alt_ip: false,
            alt_port: true,
        },
        SocketId {
            alt_ip: true,
            alt_port: false,
        },
        SocketId {
            alt_ip: true,
            alt_port: true,
        },
    ];

    /// Index 0..4 (primary, alt port, alt IP, both).
    pub fn index(self) -> usize {
        usize::from(self.alt_ip) * 2 + usize::from(self.alt_port)
    }

    /// The socket with the IP and/or port switched.
    pub fn switched(self, ip: bool, port: bool) -> SocketId {
        SocketId {
            alt_ip: self.alt_ip ^ ip,
            alt_port: self.alt_port ^ port,
        }
    }
}

/// The bound local addresses the core reports in RFC 5780 attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    primary: SocketAddr,
    alternate: Option<SocketAddr>,
}

impl Endpoints {
    /// Endpoints of a server bound to `primary` and, for RFC 5780, to every combination of
    /// primary and `alternate` IP and port. Pass the real bound addresses (no port 0).
    pub fn new(primary: SocketAddr, alternate: Option<SocketAddr>) -> Self {
        Self { primary, alternate }
    }

    /// Whether RFC 5780 behaviour discovery is on.
    pub fn has_alternate(&self) -> bool {
        self.alternate.is_some()
    }

    /// The address of one local socket, or `None` if the server does not have it.
    pub fn addr(&self, id: SocketId) -> Option<SocketAddr> {
        match self.alternate {
            None if id == SocketId::PRIMARY => Some(self.primary),
            None => None,
            Some(alt) => {
                let ip = if id.alt_ip {
                    alt.ip()
                } else {
                    self.primary.ip()
                };
                let port = if id.alt_port {
                    alt.port()
                } else {
                    self.primary.port()
                };
                Some(SocketAddr::new(ip, port))
            }
        }
    }

    /// The sockets the server has, with their addresses (1 or 4).
    pub fn sockets(&self) -> impl Iterator<Item = (SocketId, SocketAddr)> + '_ {
        SocketId::ALL
            .into_iter()
            .filter_map(|id| self.addr(id).map(|a| (id, a)))
    }
}

/// A datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// The local socket to send from.
    pub local: SocketId,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The bytes (borrowed from the core's reused buffer).
    pub contents: &'a [u8],
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Send this response.
    Transmit(Transmit<'a>),
    /// Not STUN (RFC 7983): hand it to the non-STUN (coordinator) hook.
    NotStun,
    /// A parked peer's keep-alive or leave (a Binding request whose USERNAME starts with
    /// `park:` or `park-leave:`, [`mesh::coord::park`]): the coordinator checks and answers it
    /// (hand it to the hook's [`crate::driver::NonStunHook::on_keepalive`]).
    Keepalive,
    /// Nothing to send; the reason was counted.
    Dropped(DropReason),
}

/// The sans-IO STUN server; see the module docs for the flow.
#[derive(Debug)]
pub struct StunServer {
    endpoints: Endpoints,
    config: StunConfig,
    limiter: RateLimiter,
    counters: Counters,
    decoder: MessageDecoder,
    encoder: MessageEncoder,
    buf: Box<[u8; RESPONSE_BUF]>,
}

impl StunServer {
    /// A core answering on `endpoints` with the given settings.
    pub fn new(config: StunConfig, endpoints: Endpoints) -> Self {
        let limiter = RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            config.rate_limit_slots,
            config.rate_limit_seed,
        );
        Self {
            endpoints,
            config,
            limiter,
            counters: Counters::default(),
            decoder: MessageDecoderBuilder::default().build(),
            encoder: MessageEncoderBuilder::default().build(),
            buf: Box::new([0; RESPONSE_BUF]),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts `n` responses the driver could not send.
    pub fn record_send_failures(&mut self, n: u64) {
        self.counters.send_failures += n;
    }

    /// The local endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Handles one datagram that arrived at `local` from `from` at `now`.
    pub fn handle_input(
        &mut self,
        now: Instant,
        local: SocketId,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Outcome<'_> {
        self.counters.received += 1;
        match self.decide(now, local, from, datagram) {
            Ok(Decided::NotStun) => {
                self.counters.not_stun += 1;
                Outcome::NotStun
            }
            Ok(Decided::Keepalive) => {
                self.counters.keepalives += 1;
                Outcome::Keepalive
            }
            Ok(Decided::Respond(to_socket, destination, len)) => match self.buf.get(..len) {
                Some(contents) => Outcome::Transmit(Transmit {
                    local: to_socket,
                    destination,
                    contents,
                }),
                None => {
                    self.counters.drop(DropReason::EncodeFailed);
                    Outcome::Dropped(DropReason::EncodeFailed)
                }
            },
            Err(reason) => {
                self.counters.drop(reason);
                tracing::trace!(%from, reason = reason.as_str(), len = datagram.len(), "dropped");
                Outcome::Dropped(reason)
            }
        }
    }

    /// Steps 1-8.
    fn decide(
        &mut self,
        now: Instant,
        local: SocketId,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Decided, DropReason> {
        // 1. Source validation.
        let from = canonical(from);
        if !source_is_valid(from) {
            return Err(DropReason::BadSource);
        }
        if self.endpoints.addr(local).is_none() {
            return Err(DropReason::UnknownSocket);
        }
        // 2. Demultiplex.
        // The workspace's one RFC 7983 demux; whatever is not STUN goes to the coordinator
        // hook (QUIC), which drops what quinn cannot use.
        match (classify(datagram), datagram.first()) {
            (DatagramKind::Stun, _) => {}
            (_, None) => return Err(DropReason::Empty),
            (_, Some(0..=3)) => return Err(DropReason::NoMagicCookie),
            (DatagramKind::Quic | DatagramKind::Unknown, Some(_)) => return Ok(Decided::NotStun),
        }
        // 3. Structure.
        let pre = wire::precheck(datagram, self.config.max_request_len).map_err(wire_reason)?;
        // 4. Binding requests only.
        match pre.class {
            Class::Request => {}
            Class::Indication => return Err(DropReason::Indication),
            Class::SuccessResponse | Class::ErrorResponse => return Err(DropReason::NotRequest),
        }
        if pre.method != METHOD_BINDING {
            return Err(DropReason::UnsupportedMethod);
        }
        // 5. Rate limit.
        if !self.limiter.allow(now, from.ip()) {
            return Err(DropReason::RateLimited);
        }
        // 6. Decode and look for attributes we do not serve.
        let (msg, _) = self
            .decoder
            .decode(datagram)
            .map_err(|_| DropReason::Undecodable)?;
        let transaction_id = TransactionId::from(*msg.transaction_id().as_bytes());
        let has_alt = self.endpoints.has_alternate();
        let mut unknown = [0u16; MAX_UNKNOWN_LISTED];
        let mut unknown_count = 0;
        let mut change = (false, false);
        let mut response_port = None;
        for attr in msg.attributes() {
            let t = attr.attribute_type();
            let not_served = match attr {
                StunAttribute::UserName(u) if is_park_username(u.as_str()) => {
                    // A parked peer's keep-alive: the coordinator's (primary socket only).
                    return if local == SocketId::PRIMARY {
                        Ok(Decided::Keepalive)
                    } else {
                        Err(DropReason::UnsupportedMethod)
                    };
                }
                StunAttribute::Unknown(_) => t.is_comprehension_required(),
                StunAttribute::ChangeRequest(cr) => {
                    change = change_flags_of(cr);
                    !has_alt
                }
                // RESPONSE-PORT (RFC 5780 §7.5) aims the response at another port of the
                // source's IP, which a spoofed source port could do anyway: no new
                // reflection capability. Served only in RFC 5780 mode.
                StunAttribute::ResponsePort(rp) => {
                    response_port = Some(rp.as_u16());
                    !has_alt
                }
                _ => {
                    t.as_u16() == ATTR_PADDING
                        || (t.is_comprehension_required()
                            && !BASE_STUN_ATTRIBUTES.contains(&t.as_u16()))
                }
            };
            if not_served && !unknown[..unknown_count].contains(&t.as_u16()) {
                if let Some(slot) = unknown.get_mut(unknown_count) {
                    *slot = t.as_u16();
                    unknown_count += 1;
                }
            }
        }
        debug_assert!(!has_alt || !unknown[..unknown_count].contains(&ATTR_CHANGE_REQUEST));
        let destination = match response_port {
            Some(0) => return Err(DropReason::BadSource),
            Some(port) if unknown_count == 0 => SocketAddr::new(from.ip(), port),
            _ => from,
        };
        // 7. Choose the response and the socket it leaves from.
        let (mut response, send_from) = if unknown_count > 0 {
            tracing::debug!(%from, types = ?&unknown[..unknown_count], "420 unknown attributes");
            let r = Response::UnknownAttributes {
                types: unknown,
                count: unknown_count,
            };
            (r, local)
        } else if has_alt {
            let send_from = local.switched(change.0, change.1);
            let origin = self
                .endpoints
                .addr(send_from)
                .ok_or(DropReason::UnknownSocket)?;
            let other = self
                .endpoints
                .addr(local.switched(true, true))
                .ok_or(DropReason::UnknownSocket)?;
            let r = Response::Success {
                mapped: from,
                discovery: Some((origin, other)),
            };
            (r, send_from)
        } else {
            let r = Response::Success {
                mapped: from,
                discovery: None,
            };
            (r, local)
        };
        // 8. Amplification limit, then encode.
        let limit = datagram.len().saturating_mul(self.config.max_amplification);
        let fingerprint = pre.has_fingerprint;
        if response.wire_len(fingerprint) > limit {
            response.shed_optional();
            if response.wire_len(fingerprint) > limit {
                return Err(DropReason::Amplification);
            }
        }
        let len = response
            .encode(
                &self.encoder,
                transaction_id,
                fingerprint,
                &mut self.buf[..],
            )
            .map_err(|_| DropReason::EncodeFailed)?;
        match response {
            Response::Success { .. } => self.counters.success_responses += 1,
            Response::UnknownAttributes { .. } => self.counters.error_responses += 1,
        }
        if send_from != local {
            self.counters.changed_source += 1;
        }
        Ok(Decided::Respond(send_from, destination, len))
    }
}

/// What [`StunServer::decide`] found.
enum Decided {
    /// Not STUN.
    NotStun,
    /// A parked peer's keep-alive, for the coordinator.
    Keepalive,
    /// Send the response in `buf` (this long) from this socket to this address.
    Respond(SocketId, SocketAddr, usize),
}

/// (change IP, change port) of a CHANGE-REQUEST.
fn change_flags_of(cr: &ChangeRequest) -> (bool, bool) {
    let f = cr.flags();
    (
        f.contains(ChangeRequestFlags::ChangeIp),
        f.contains(ChangeRequestFlags::ChangePort),
    )
}

fn wire_reason(e: WireError) -> DropReason {
    match e {
        WireError::TooShort => DropReason::TooShort,
        WireError::TooLong => DropReason::TooLong,
        WireError::HeaderBits
        | WireError::BadCookie
        | WireError::UnalignedLength
        | WireError::LengthMismatch
        | WireError::AttributeOverrun => DropReason::Malformed,
        WireError::FingerprintNotLast
        | WireError::FingerprintLength
        | WireError::BadFingerprint => DropReason::BadFingerprint,
    }
}

/// IPv4-mapped IPv6 sources (dual-stack sockets) as plain IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Whether a source may get a response: a real unicast address and a non-zero port.
pub fn source_is_valid(from: SocketAddr) -> bool {
    if from.port() == 0 {
        return false;
    }
    match from.ip().to_canonical() {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4 == Ipv4Addr::BROADCAST),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
