//! Allocate and Refresh (RFC 8656 sections 7 and 8), and the driver's answer about the
//! relay port.
//!
//! Allocate, after authentication (steps of RFC 8656 section 7.2):
//!
//! 1. The client already has an allocation: the same transaction id is a
//!    retransmission and gets the success answer again; another gets 437.
//! 2. REQUESTED-TRANSPORT missing: 400; not UDP: 442. DONT-FRAGMENT is accepted: relay
//!    sockets always send with DF set (quinn-udp sets it).
//! 3. RESERVATION-TOKEN next to EVEN-PORT or an address-family attribute: 400; a token
//!    that is unknown or expired: 508. EVEN-PORT asks for an even port, and with the R
//!    bit for its successor to be reserved (answered with RESERVATION-TOKEN).
//! 4. Address families: one relay family (that of `relay_ip`); asking for the other:
//!    440. ADDITIONAL-ADDRESS-FAMILY IPv4: 400; IPv6 next to an IPv4 relay: the IPv4
//!    allocation succeeds with ADDRESS-ERROR-CODE 440 for IPv6.
//! 5. Limits: all allocations (508), per user (486), per client IP (486), reservations
//!    (508), free ports (508).
//! 6. A port is taken, [`Command::CreateRelayPort`] queued, and the allocation waits;
//!    [`Server::handle_relay_port`] answers the client: success with XOR-RELAYED-ADDRESS,
//!    LIFETIME and XOR-MAPPED-ADDRESS, or another port (a few times), or 508.
//!
//! Refresh: 437 without an allocation, 443 for a REQUESTED-ADDRESS-FAMILY of the other
//! family; LIFETIME 0 deletes the allocation, anything else is clamped like Allocate's.

use std::time::{Duration, Instant};

use stun_rs::attributes::stun::XorMappedAddress;
use stun_rs::attributes::turn::{
    AdditionalAddressFamily, AddressErrorCode, EvenPort, LifeTime, RequestedAddressFamily,
    RequestedTrasport, ReservationToken, XorRelayedAddress,
};
use stun_rs::{AddressFamily, MessageClass, StunAttribute, StunMessage};

use super::allocation::{bytes_bucket, Allocation};
use super::{Authed, Command, Quota, Req, Server};

/// How many ports are tried when the driver cannot bind the picked one.
const BIND_ATTEMPTS: u8 = 8;
/// The UDP protocol number of REQUESTED-TRANSPORT.
const UDP: u8 = 17;

/// What the answer to a pending Allocate needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    req: Req,
    attempts: u8,
    even: bool,
    reserve: bool,
    from_token: bool,
    ipv6_refused: bool,
}

/// The requested lifetime, clamped to `[min(600 s, max), max]`.
pub(crate) fn granted_lifetime(max: Duration, requested: Option<u32>) -> u32 {
    let max = u32::try_from(max.as_secs()).unwrap_or(u32::MAX);
    let default = 600.min(max);
    requested.map_or(default, |r| r.clamp(default, max))
}

fn family_of(ip: std::net::IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::IPv4
    } else {
        AddressFamily::IPv6
    }
}

impl Server {
    pub(super) fn allocate(&mut self, now: Instant, req: &Req, msg: &StunMessage, authed: Authed) {
        let key = authed.key.clone();
        if let Some(port) = self.by_client.get(&req.from).copied() {
            let retransmit = self
                .allocations
                .get(&port)
                .map(|a| (a.txn == req.txn, a.active));
            match retransmit {
                Some((true, true)) => self.answer_allocate(req, port, None),
                Some((true, false)) => {} // still waiting for its port
                _ => self.error(req, 437, Some(&key)),
            }
            return;
        }
        let transport = msg
            .get::<RequestedTrasport>()
            .and_then(|a| a.as_requested_trasport().ok())
            .map(|t| t.protocol().as_u8());
        match transport {
            None => return self.error(req, 400, Some(&key)),
            Some(UDP) => {}
            Some(_) => return self.error(req, 442, Some(&key)),
        }
        let even_port = msg
            .get::<EvenPort>()
            .and_then(|a| a.as_even_port().ok())
            .map(|e| e.reserve());
        let token = msg
            .get::<ReservationToken>()
            .and_then(|a| a.as_reservation_token().ok())
            .map(|t| t.token().to_vec());
        let requested = msg
            .get::<RequestedAddressFamily>()
            .and_then(|a| a.as_requested_address_family().ok())
            .map(|f| f.family());
        let additional = msg
            .get::<AdditionalAddressFamily>()
            .and_then(|a| a.as_additional_address_family().ok())
            .map(|f| f.family());
        let relay_family = family_of(self.config.relay_ip);
        if token.is_some() && (even_port.is_some() || requested.is_some() || additional.is_some()) {
            return self.error(req, 400, Some(&key));
        }
        let mut ipv6_refused = false;
        match (requested, additional) {
            (Some(_), Some(_)) | (None, Some(AddressFamily::IPv4)) => {
                return self.error(req, 400, Some(&key));
            }
            (None, Some(AddressFamily::IPv6)) if relay_family == AddressFamily::IPv4 => {
                ipv6_refused = true;
            }
            (None, Some(_)) => return self.error(req, 440, Some(&key)),
            (want, None) => {
                if want.unwrap_or(AddressFamily::IPv4) != relay_family {
                    return self.error(req, 440, Some(&key));
                }
            }
        }
        let limits = &self.config.limits;
        let refusal = if self.allocations.len() >= limits.max_allocations {
            Some((508, Quota::Allocations))
        } else if self
            .per_user
            .get(authed.user.as_str())
            .copied()
            .unwrap_or(0)
            >= limits.max_allocations_per_user
        {
            Some((486, Quota::PerUser))
        } else if self.per_ip.get(&req.from.ip()).copied().unwrap_or(0)
            >= limits.max_allocations_per_ip
        {
            Some((486, Quota::PerIp))
        } else if even_port == Some(true) && self.reservations.len() >= limits.max_reservations {
            Some((508, Quota::Reservations))
        } else {
            None
        };
        if let Some((code, quota)) = refusal {
            self.stats.quota(quota);
            tracing::debug!(from = %req.from, user = %authed.user, quota = quota.as_str(), "allocation refused");
            return self.error(req, code, Some(&key));
        }
        let (port, from_token) = match token {
            Some(token) => match self.reservations.claim(&token, now) {
                Some(port) => (Some(port), true),
                None => (None, true),
            },
            None => {
                let even = even_port.is_some();
                let pair = even_port == Some(true);
                (self.pool.pick(&mut self.rng, even, pair), false)
            }
        };
        let Some(port) = port else {
            self.stats.quota(Quota::Ports);
            return self.error(req, 508, Some(&key));
        };
        let lifetime = granted_lifetime(self.config.limits.max_lifetime, lifetime_of(msg));
        let pending = Pending {
            req: *req,
            attempts: 1,
            even: even_port.is_some(),
            reserve: even_port == Some(true),
            from_token,
            ipv6_refused,
        };
        *self
            .per_user
            .entry(authed.user.as_str().into())
            .or_default() += 1;
        *self.per_ip.entry(req.from.ip()).or_default() += 1;
        self.by_client.insert(req.from, port);
        self.allocations.insert(
            port,
            Allocation {
                client: req.from,
                port,
                username: authed.username.into(),
                user: authed.user.into(),
                key,
                txn: req.txn,
                expires: now + Duration::from_secs(u64::from(lifetime)),
                lifetime,
                active: false,
                permissions: Vec::new(),
                channels: Vec::new(),
                bucket: bytes_bucket(self.config.limits.bandwidth_per_allocation, now),
                pending: Some(pending),
            },
        );
        self.push(Command::CreateRelayPort {
            port,
            client: req.from,
        });
    }

    /// The driver's answer to [`Command::CreateRelayPort`]: `bound` tells whether the
    /// socket on `port` exists now. Answers the client, or tries another port.
    pub fn handle_relay_port(&mut self, now: Instant, port: u16, bound: bool) {
        let Some(a) = self.allocations.get_mut(&port) else {
            return;
        };
        let Some(p) = a.pending.take() else {
            return;
        };
        if bound {
            a.active = true;
            self.stats.allocations_created += 1;
            let token = p
                .reserve
                .then(|| port.checked_add(1))
                .flatten()
                .map(|next| self.reservations.add(&mut self.rng, next, now));
            tracing::debug!(client = %p.req.from, port, "allocation created");
            self.answer_allocate(&p.req, port, Some((token, p.ipv6_refused)));
            return;
        }
        tracing::debug!(
            port,
            attempt = p.attempts,
            "relay port not bound; trying another"
        );
        if p.reserve {
            if let Some(next) = port.checked_add(1) {
                self.pool.release(next);
            }
        }
        let next = (!p.from_token && p.attempts < BIND_ATTEMPTS)
            .then(|| self.pool.pick(&mut self.rng, p.even, p.reserve))
            .flatten();
        // The failed port stays taken until the allocation moves, so it is not re-picked.
        self.pool.release(port);
        let Some(next) = next else {
            let key = a.key.clone();
            self.remove_allocation(port, "no relay port could be bound");
            self.stats.quota(Quota::Ports);
            self.error(&p.req, 508, Some(&key));
            return;
        };
        if let Some(mut a) = self.allocations.remove(&port) {
            a.port = next;
            a.pending = Some(Pending {
                attempts: p.attempts + 1,
                ..p
            });
            self.by_client.insert(a.client, next);
            self.allocations.insert(next, a);
        }
        self.push(Command::CreateRelayPort {
            port: next,
            client: p.req.from,
        });
    }

    /// Answers an Allocate (first time with `extra`: reservation token, IPv6 refusal).
    fn answer_allocate(&mut self, req: &Req, port: u16, extra: Option<(Option<[u8; 8]>, bool)>) {
        let Some(a) = self.allocations.get(&port) else {
            return;
        };
        let relayed = std::net::SocketAddr::new(self.config.relay_ip, port);
        let mut attrs: Vec<StunAttribute> = vec![
            XorRelayedAddress::from(relayed).into(),
            LifeTime::new(a.lifetime).into(),
            XorMappedAddress::from(req.from).into(),
        ];
        if let Some((token, ipv6_refused)) = extra {
            if let Some(token) = token {
                attrs.push(ReservationToken::from(token).into());
            }
            if ipv6_refused {
                if let Ok(code) = stun_rs::ErrorCode::new(440, "Address Family not Supported") {
                    attrs.push(AddressErrorCode::new(AddressFamily::IPv6, code).into());
                }
            }
        }
        let key = a.key.clone();
        self.reply(req, MessageClass::SuccessResponse, attrs, Some(&key));
    }

    pub(super) fn refresh(&mut self, now: Instant, req: &Req, msg: &StunMessage, authed: &Authed) {
        let Some(port) = self.allocation_for(req, authed) else {
            return;
        };
        let requested = msg
            .get::<RequestedAddressFamily>()
            .and_then(|a| a.as_requested_address_family().ok())
            .map(|f| f.family());
        if requested.is_some_and(|f| f != family_of(self.config.relay_ip)) {
            return self.error(req, 443, Some(&authed.key));
        }
        let lifetime = match lifetime_of(msg) {
            Some(0) => 0,
            other => granted_lifetime(self.config.limits.max_lifetime, other),
        };
        if lifetime == 0 {
            self.stats.allocations_deleted += 1;
            self.remove_allocation(port, "refreshed to 0");
        } else if let Some(a) = self.allocations.get_mut(&port) {
            a.lifetime = lifetime;
            a.expires = now + Duration::from_secs(u64::from(lifetime));
        }
        let attrs = vec![LifeTime::new(lifetime).into()];
        self.reply(req, MessageClass::SuccessResponse, attrs, Some(&authed.key));
    }
}

fn lifetime_of(msg: &StunMessage) -> Option<u32> {
    msg.get::<LifeTime>()
        .and_then(|a| a.as_life_time().ok())
        .map(|l| l.as_u32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_clamped() {
        let max = Duration::from_secs(3600);
        assert_eq!(granted_lifetime(max, None), 600);
        assert_eq!(granted_lifetime(max, Some(30)), 600);
        assert_eq!(granted_lifetime(max, Some(1200)), 1200);
        assert_eq!(granted_lifetime(max, Some(u32::MAX)), 3600);
        let short = Duration::from_secs(120);
        assert_eq!(granted_lifetime(short, None), 120);
        assert_eq!(granted_lifetime(short, Some(600)), 120);
    }
}
