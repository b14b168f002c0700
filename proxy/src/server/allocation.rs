//! One allocation's state: its permissions, channels and bandwidth bucket (RFC 8656
//! sections 9 and 12).
//!
//! Steps of an allocation's life:
//!
//! 1. Allocate creates it *pending* on a relay port; once the driver has bound the port,
//!    it is *active* until `expires` (Refresh moves that, lifetime 0 ends it).
//! 2. CreatePermission installs or refreshes a [`Permission`] for a peer IP (300 s);
//!    ChannelBind binds or refreshes a [`Channel`] (600 s) and its peer's permission.
//! 3. Relayed data needs a live permission; ChannelData needs a bound channel; both
//!    draw from the [`TokenBucket`].
//! 4. [`Allocation::sweep`] drops expired permissions, and channels once their 5-minute
//!    cooldown after expiry is over (RFC 8656 section 12: a number or peer is not rebound
//!    to something else before that). Both tables are bounded by the limits.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_rs::{HMACKey, TransactionId};

/// Permission lifetime (RFC 8656 section 9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 section 12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Time after a channel binding expires during which its number and peer stay reserved.
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

/// A permission for one peer IP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

/// A channel binding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    /// Bound until then; reserved for [`CHANNEL_COOLDOWN`] after.
    pub expires: Instant,
}

/// Why a channel cannot be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindError {
    /// The number is bound to another peer, or the peer to another number (400).
    Conflict,
    /// The channel table is full (508).
    Full,
}

/// The workspace's token bucket ([`mesh::limit`]), in bytes: refilled at the allocation's
/// rate per second up to one second's worth ([`bytes_bucket`]).
pub(crate) use mesh::limit::TokenBucket;

/// A full bucket of `rate` bytes per second holding one second's worth (0 = unlimited).
pub(crate) fn bytes_bucket(rate: u64, now: Instant) -> TokenBucket {
    TokenBucket::new(rate, rate, now)
}

/// An allocation (the 5-tuple is the client address and the listening socket).
#[derive(Debug)]
pub(crate) struct Allocation {
    pub client: SocketAddr,
    pub port: u16,
    /// The username of the Allocate; later requests must use the same (441 otherwise).
    pub username: Box<str>,
    /// The quota user (the `USER` part of the username).
    pub user: Box<str>,
    pub key: HMACKey,
    /// Transaction id of the Allocate, to answer a retransmission again.
    pub txn: TransactionId,
    pub expires: Instant,
    /// Lifetime granted by the last Allocate or Refresh, in seconds.
    pub lifetime: u32,
    /// Whether the relay port is bound (false until the driver confirms).
    pub active: bool,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    pub bucket: TokenBucket,
    /// The Allocate waiting for the driver to bind the port.
    pub pending: Option<super::allocate::Pending>,
}

impl Allocation {
    /// Whether a live permission covers `ip`.
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes the permission for `ip`: `Ok(true)` if new, `Err(Full)` if
    /// the table is full.
    pub fn permit(&mut self, ip: IpAddr, now: Instant, max: usize) -> Result<bool, BindError> {
        let ip = ip.to_canonical();
        let expires = now + PERMISSION_LIFETIME;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            return Ok(false);
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= max {
            return Err(BindError::Full);
        }
        self.permissions.push(Permission { ip, expires });
        Ok(true)
    }

    /// Whether a permission for `ip` could be installed (a refresh, or room in the table).
    pub fn can_permit(&self, ip: IpAddr, now: Instant, max: usize) -> bool {
        let ip = ip.to_canonical();
        let live = self.permissions.iter().filter(|p| p.expires > now).count();
        self.permissions.iter().any(|p| p.ip == ip) || live < max
    }

    /// The peer of bound channel `number`.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
    }

    /// The bound channel to `peer`.
    pub fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number)
    }

    /// Checks that `number` may be bound to `peer` (same binding, or both free).
    pub fn check_bind(
        &self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
        max: usize,
    ) -> Result<(), BindError> {
        let mut same = false;
        for c in self
            .channels
            .iter()
            .filter(|c| c.expires + CHANNEL_COOLDOWN > now)
        {
            match (c.number == number, c.peer == peer) {
                (true, true) => same = true,
                (true, false) | (false, true) => return Err(BindError::Conflict),
                (false, false) => {}
            }
        }
        let held = self
            .channels
            .iter()
            .filter(|c| c.expires + CHANNEL_COOLDOWN > now)
            .count();
        if !same && held >= max {
            return Err(BindError::Full);
        }
        Ok(())
    }

    /// Binds or refreshes `number` to `peer` (after [`Self::check_bind`]); `true` if new.
    pub fn bind(&mut self, number: u16, peer: SocketAddr, now: Instant) -> bool {
        let expires = now + CHANNEL_LIFETIME;
        if let Some(c) = self
            .channels
            .iter_mut()
            .find(|c| c.number == number && c.peer == peer)
        {
            c.expires = expires;
            return false;
        }
        self.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
        self.channels.push(Channel {
            number,
            peer,
            expires,
        });
        true
    }

    /// Frees expired permissions and channels past their cooldown.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
    }

    /// `(live permissions, bound channels)`.
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        let p = self.permissions.iter().filter(|p| p.expires > now).count();
        let c = self.channels.iter().filter(|c| c.expires > now).count();
        (p, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(now: Instant) -> Allocation {
        Allocation {
            client: "192.0.2.1:1000".parse().expect("addr"),
            port: 50000,
            username: "1:u".into(),
            user: "u".into(),
            key: HMACKey::new_short_term("k").expect("key"),
            txn: TransactionId::default(),
            expires: now + Duration::from_secs(600),
            lifetime: 600,
            active: true,
            permissions: Vec::new(),
            channels: Vec::new(),
            bucket: bytes_bucket(0, now),
            pending: None,
        }
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_one_second() {
        let t0 = Instant::now();
        let mut b = bytes_bucket(1000, t0);
        assert!(b.take(t0, 600));
        assert!(!b.take(t0, 600), "400 left");
        assert!(b.take(t0 + Duration::from_millis(200), 600), "400 + 200");
        assert!(!b.take(t0 + Duration::from_millis(200), 1));
        assert!(
            b.take(t0 + Duration::from_secs(100), 1000),
            "capped at one second"
        );
        assert!(!b.take(t0 + Duration::from_secs(100), 1));
        let mut unlimited = bytes_bucket(0, t0);
        assert!(unlimited.take(t0, u64::MAX));
    }

    #[test]
    fn permissions_expire_and_are_bounded() {
        let t0 = Instant::now();
        let mut a = alloc(t0);
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(a.permit(ip, t0, 1), Ok(true));
        assert_eq!(a.permit(ip, t0, 1), Ok(false), "refresh");
        assert!(a.permits(ip, t0 + Duration::from_secs(299)));
        assert!(!a.permits(ip, t0 + Duration::from_secs(300)));
        let other: IpAddr = "198.51.100.2".parse().expect("ip");
        assert!(!a.can_permit(other, t0, 1));
        assert_eq!(a.permit(other, t0, 1), Err(BindError::Full));
        // Once the first expired, the table has room again.
        let later = t0 + Duration::from_secs(301);
        assert_eq!(a.permit(other, later, 1), Ok(true));
        assert_eq!(a.permissions.len(), 1);
    }

    #[test]
    fn channels_conflict_expire_and_cool_down() {
        let t0 = Instant::now();
        let mut a = alloc(t0);
        let p1: SocketAddr = "198.51.100.1:5000".parse().expect("addr");
        let p2: SocketAddr = "198.51.100.2:5000".parse().expect("addr");
        assert_eq!(a.check_bind(0x4000, p1, t0, 2), Ok(()));
        assert!(a.bind(0x4000, p1, t0));
        assert_eq!(a.check_bind(0x4000, p1, t0, 2), Ok(()), "re-bind refreshes");
        assert_eq!(a.check_bind(0x4000, p2, t0, 2), Err(BindError::Conflict));
        assert_eq!(a.check_bind(0x4001, p1, t0, 2), Err(BindError::Conflict));
        assert_eq!(a.channel_peer(0x4000, t0), Some(p1));
        assert_eq!(a.channel_of(p1, t0), Some(0x4000));
        let expired = t0 + CHANNEL_LIFETIME;
        assert_eq!(a.channel_peer(0x4000, expired), None);
        assert_eq!(
            a.check_bind(0x4000, p2, expired, 2),
            Err(BindError::Conflict),
            "cooldown"
        );
        let free = expired + CHANNEL_COOLDOWN;
        assert_eq!(a.check_bind(0x4000, p2, free, 2), Ok(()));
        a.sweep(free);
        assert!(a.channels.is_empty());
        assert!(a.bind(0x4000, p2, free));
        assert!(a.bind(0x4001, p1, free));
        assert_eq!(
            a.check_bind(0x4002, "198.51.100.3:1".parse().expect("a"), free, 2),
            Err(BindError::Full)
        );
    }
}
