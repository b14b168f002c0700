//! TURN REST API credentials (coturn's `use-auth-secret`, draft-uberti-behave-turn-rest),
//! the one implementation shared by the relay (`proxy`), the punch server that hands them
//! out, and the peers that use them.
//!
//! Steps:
//!
//! 1. The issuer picks an expiry (UNIX seconds) and a user name and forms the username
//!    `EXPIRY:USER` ([`rest_username`]); a bare `EXPIRY` is accepted too (coturn's client
//!    sends that without `-u`).
//! 2. The password is `base64(HMAC-SHA1(secret, username))` ([`rest_password`]).
//! 3. The client uses them as long-term credentials (RFC 8489 section 9.2): the key of
//!    MESSAGE-INTEGRITY is `MD5(username ":" realm ":" password)` ([`long_term_key`]).
//! 4. The relay parses the username ([`RestUsername::parse`]), refuses it once expired,
//!    and derives the same password from the shared secret; nobody without the secret
//!    can mint credentials, and stolen ones stop working at their expiry.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun_rs::{Algorithm, AlgorithmId, HMACKey};
use thiserror::Error;

/// Longest username accepted (RFC 8489 limits USERNAME to 513 bytes).
pub const MAX_USERNAME_LEN: usize = 513;

/// Why a username is not a valid REST API username.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// Not `EXPIRY` or `EXPIRY:USER` with a decimal expiry.
    #[error("username is not EXPIRY:USER")]
    Malformed,
    /// The expiry has passed.
    #[error("username expired at {expiry} (now {now})")]
    Expired {
        /// The username's expiry, UNIX seconds.
        expiry: u64,
        /// The time of the check, UNIX seconds.
        now: u64,
    },
    /// The username or realm cannot be used as a STUN string.
    #[error("username or realm is not a valid STUN string")]
    NotStunString,
}

/// A parsed REST API username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Expiry, UNIX seconds.
    pub expiry: u64,
    /// The user (empty for a bare `EXPIRY`); per-user quotas count by it.
    pub user: &'a str,
}

impl<'a> RestUsername<'a> {
    /// Parses `EXPIRY:USER` or `EXPIRY`.
    pub fn parse(username: &'a str) -> Result<Self, CredentialError> {
        if username.len() > MAX_USERNAME_LEN {
            return Err(CredentialError::Malformed);
        }
        let (expiry, user) = username.split_once(':').unwrap_or((username, ""));
        if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CredentialError::Malformed);
        }
        let expiry = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        Ok(Self { expiry, user })
    }

    /// Fails with [`CredentialError::Expired`] if the expiry is not after `now_unix`.
    pub fn check_expiry(&self, now_unix: u64) -> Result<(), CredentialError> {
        if self.expiry <= now_unix {
            return Err(CredentialError::Expired {
                expiry: self.expiry,
                now: now_unix,
            });
        }
        Ok(())
    }
}

/// The REST API username `EXPIRY:USER`.
pub fn rest_username(expiry_unix: u64, user: &str) -> String {
    format!("{expiry_unix}:{user}")
}

/// The REST API password: `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The long-term key of RFC 8489 section 9.2.2: `MD5(username:realm:password)`.
pub fn long_term_key(
    username: &str,
    realm: &str,
    password: &str,
) -> Result<HMACKey, CredentialError> {
    HMACKey::new_long_term(username, realm, password, Algorithm::from(AlgorithmId::MD5))
        .map_err(|_| CredentialError::NotStunString)
}

/// A username and password pair, as a client uses them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username (`EXPIRY:USER`).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// REST API credentials for `user`, valid until `expiry_unix`.
    pub fn rest(secret: &str, user: &str, expiry_unix: u64) -> Self {
        let username = rest_username(expiry_unix, user);
        let password = rest_password(secret, &username);
        Self { username, password }
    }

    /// The long-term key for `realm`.
    pub fn key(&self, realm: &str) -> Result<HMACKey, CredentialError> {
        long_term_key(&self.username, realm, &self.password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_parse() {
        assert_eq!(
            RestUsername::parse("1700000000:alice"),
            Ok(RestUsername {
                expiry: 1_700_000_000,
                user: "alice"
            })
        );
        assert_eq!(
            RestUsername::parse("42").map(|u| (u.expiry, u.user)),
            Ok((42, ""))
        );
        assert_eq!(RestUsername::parse("1:a:b").map(|u| u.user), Ok("a:b"));
        for bad in [
            "",
            ":x",
            "alice:1700000000",
            "-1:x",
            "1 :x",
            "99999999999999999999999:x",
        ] {
            assert_eq!(
                RestUsername::parse(bad),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
        let long = format!("1:{}", "a".repeat(MAX_USERNAME_LEN));
        assert!(RestUsername::parse(&long).is_err());
    }

    #[test]
    fn expiry_is_exclusive() {
        let u = RestUsername::parse("100:x").expect("parse");
        assert!(u.check_expiry(99).is_ok());
        assert!(matches!(
            u.check_expiry(100),
            Err(CredentialError::Expired { .. })
        ));
    }

    #[test]
    fn password_matches_coturn_formula() {
        // HMAC-SHA1("secret", "1600000000:user"), base64; computed with
        // `printf %s 1600000000:user | openssl dgst -sha1 -hmac secret -binary | base64`.
        assert_eq!(
            rest_password("secret", "1600000000:user"),
            "BwzEW9gDEHXnNCRCm1qZLqyo+hg="
        );
        let c = Credentials::rest("secret", "user", 1_600_000_000);
        assert_eq!(c.username, "1600000000:user");
        assert!(!format!("{c:?}").contains(&c.password));
        assert!(c.key("realm").is_ok());
    }
}
