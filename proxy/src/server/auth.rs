//! Long-term credential checks (RFC 8489 section 9.2.4) with TURN REST API usernames,
//! and stateless nonces.
//!
//! Steps, for every Allocate, Refresh, CreatePermission and ChannelBind:
//!
//! 1. No MESSAGE-INTEGRITY: a 401 challenge with REALM and a fresh NONCE.
//! 2. MESSAGE-INTEGRITY without USERNAME, REALM or NONCE: 400.
//! 3. A USERNAME that is not `EXPIRY:USER`, or has expired: 401 (with REALM and NONCE).
//! 4. The password is derived from the shared secret ([`crate::credentials`]); a
//!    MESSAGE-INTEGRITY that does not match the key: 401.
//! 5. A NONCE that is not ours, is for another client IP, or is older than the nonce
//!    lifetime: 438 (Stale Nonce) with a fresh one. RFC 8489 checks it last, so only a
//!    client that knows the password learns that its nonce is stale.
//!
//! Nonces carry their own issue time and an HMAC-SHA1 over it and the client IP under a
//! per-process key, so the relay keeps no nonce table: nothing to bound or flood.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun_rs::attributes::stun::{MessageIntegrity, Nonce, Realm, UserName};
use stun_rs::{HMACKey, StunMessage};
use subtle::ConstantTimeEq;

use super::stats::AuthFailure;
use crate::credentials::{self, CredentialError, RestUsername};
use crate::wire;

/// Hex digits of the issue time in a nonce.
const TIME_HEX: usize = 16;
/// Bytes of the MAC kept in a nonce.
const MAC_LEN: usize = 12;

/// Mints and checks nonces.
#[derive(Clone)]
pub(crate) struct Nonces {
    key: [u8; 32],
    lifetime_secs: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

/// Why a nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceError {
    /// Not minted by this process for this client IP.
    Bad,
    /// Older than the nonce lifetime.
    Stale,
}

impl Nonces {
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        Self { key, lifetime_secs }
    }

    fn mac(&self, issued: u64, ip: IpAddr) -> [u8; MAC_LEN] {
        let mut out = [0u8; MAC_LEN];
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.key) else {
            return out;
        };
        mac.update(&issued.to_be_bytes());
        match ip.to_canonical() {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let full = mac.finalize().into_bytes();
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A nonce for a client at `ip`, issued at `now_unix`.
    pub fn mint(&self, now_unix: u64, ip: IpAddr) -> String {
        format!("{now_unix:016x}{}", hex::encode(self.mac(now_unix, ip)))
    }

    /// Checks a nonce presented by a client at `ip`.
    pub fn check(&self, nonce: &str, now_unix: u64, ip: IpAddr) -> Result<(), NonceError> {
        if nonce.len() != TIME_HEX + 2 * MAC_LEN {
            return Err(NonceError::Bad);
        }
        let (time, mac) = nonce.split_at(TIME_HEX);
        let issued = u64::from_str_radix(time, 16).map_err(|_| NonceError::Bad)?;
        let mut presented = [0u8; MAC_LEN];
        hex::decode_to_slice(mac, &mut presented).map_err(|_| NonceError::Bad)?;
        if !bool::from(presented.ct_eq(&self.mac(issued, ip))) {
            return Err(NonceError::Bad);
        }
        if issued > now_unix || now_unix - issued >= self.lifetime_secs {
            return Err(NonceError::Stale);
        }
        Ok(())
    }
}

/// The result of checking a request's credentials.
#[derive(Debug)]
pub(crate) enum Auth {
    /// Authenticated: the key signs the answers.
    Ok {
        key: HMACKey,
        username: String,
        user: String,
    },
    /// No credentials: answer 401 with REALM and NONCE (not counted as a failure).
    Challenge,
    /// Refused with `code`; `challenge` adds REALM and a fresh NONCE to the answer.
    Refused {
        code: u16,
        reason: AuthFailure,
        challenge: bool,
    },
}

fn refused(code: u16, reason: AuthFailure, challenge: bool) -> Auth {
    Auth::Refused {
        code,
        reason,
        challenge,
    }
}

/// What the check needs from the server.
pub(crate) struct AuthContext<'a> {
    pub nonces: &'a Nonces,
    pub realm: &'a str,
    pub secret: &'a str,
    pub now_unix: u64,
    pub client_ip: IpAddr,
}

/// Checks the long-term credentials of `msg` (decoded from `datagram`).
pub(crate) fn authenticate(ctx: &AuthContext<'_>, datagram: &[u8], msg: &StunMessage) -> Auth {
    if msg.get::<MessageIntegrity>().is_none() {
        return Auth::Challenge;
    }
    let username = msg.get::<UserName>().and_then(|a| a.as_user_name().ok());
    let realm = msg.get::<Realm>().and_then(|a| a.as_realm().ok());
    let nonce = msg.get::<Nonce>().and_then(|a| a.as_nonce().ok());
    let (Some(username), Some(_realm), Some(nonce)) = (username, realm, nonce) else {
        return refused(400, AuthFailure::MissingAttributes, false);
    };
    let username = username.as_str();
    let parsed = match RestUsername::parse(username) {
        Ok(p) => p,
        Err(_) => return refused(401, AuthFailure::BadUsername, true),
    };
    if let Err(CredentialError::Expired { .. }) = parsed.check_expiry(ctx.now_unix) {
        return refused(401, AuthFailure::ExpiredUsername, true);
    }
    let password = credentials::rest_password(ctx.secret, username);
    let Ok(key) = credentials::long_term_key(username, ctx.realm, &password) else {
        return refused(401, AuthFailure::BadUsername, true);
    };
    if !wire::integrity_ok(datagram, msg, &key) {
        return refused(401, AuthFailure::BadIntegrity, true);
    }
    match ctx
        .nonces
        .check(nonce.as_str(), ctx.now_unix, ctx.client_ip)
    {
        Ok(()) => Auth::Ok {
            key,
            username: username.to_owned(),
            user: parsed.user.to_owned(),
        },
        Err(NonceError::Bad) => refused(438, AuthFailure::BadNonce, true),
        Err(NonceError::Stale) => refused(438, AuthFailure::StaleNonce, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_round_trip_and_bind_to_ip_and_time() {
        let n = Nonces::new([7; 32], 600);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let nonce = n.mint(1_000, ip);
        assert_eq!(nonce.len(), 40);
        assert_eq!(n.check(&nonce, 1_000, ip), Ok(()));
        assert_eq!(n.check(&nonce, 1_599, ip), Ok(()));
        assert_eq!(n.check(&nonce, 1_600, ip), Err(NonceError::Stale));
        assert_eq!(
            n.check(&nonce, 999, ip),
            Err(NonceError::Stale),
            "from the future"
        );
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(n.check(&nonce, 1_000, other), Err(NonceError::Bad));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(
            n.check(&nonce, 1_000, mapped),
            Ok(()),
            "IPv4-mapped is the same IP"
        );
        let foreign = Nonces::new([8; 32], 600).mint(1_000, ip);
        assert_eq!(n.check(&foreign, 1_000, ip), Err(NonceError::Bad));
        for bad in ["", "zz", &nonce[..39], &format!("{}g", &nonce[..39])] {
            assert_eq!(n.check(bad, 1_000, ip), Err(NonceError::Bad), "{bad}");
        }
    }
}
