//! TURN relay offers: the coordinator hands every registered peer credentials for the
//! operator's relays (TURN REST API, as coturn's `use-auth-secret`) and renews them.
//!
//! Steps:
//! 1. The operator configures [`RelayConfig`]: the relays' URIs (`--turn-uri`), their shared
//!    secret (`--turn-secret`) and the credentials' lifetime (`--turn-ttl-secs`).
//! 2. The driver tells the coordinator the wall-clock time once
//!    ([`Coordinator::set_wall_clock`]); the coordinator reads no clock, so expiries are
//!    that time plus the monotonic time passed since.
//! 3. After a peer's first `Registered`, the coordinator sends [`ServerMsg::Relays`]: for
//!    each URI the username `EXPIRY:PEER_ID` (expiry = now + ttl, the peer id as the
//!    protocol prints it) and the password `base64(HMAC-SHA1(secret, username))`, derived
//!    by `mesh::turn` (the same code the relay checks them with).
//! 4. At half the lifetime a timer sends fresh credentials, so a long-lived registration
//!    always holds credentials valid for at least another ttl/2.

use std::fmt;
use std::time::{Duration, Instant};

use mesh::coord::{RelayCredential, ServerMsg, MAX_RELAYS};
use mesh::turn::TurnUri;

use super::{ConnId, Coordinator, Timer};
use crate::config::ConfigError;

/// Default lifetime of relay credentials (`--turn-ttl-secs`): one hour.
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(3600);
/// Shortest lifetime accepted: renewals at half of it stay rare.
pub const MIN_TURN_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime accepted: a week (leaked credentials should not live longer).
pub const MAX_TURN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The relays' shared secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(String);

impl TurnSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

/// The TURN relays offered to registered peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relays, 1 to [`MAX_RELAYS`] of them.
    pub uris: Vec<TurnUri>,
    /// Their shared secret (coturn's `static-auth-secret`, the proxy's `--auth-secret`).
    pub secret: TurnSecret,
    /// Lifetime of the credentials (default [`DEFAULT_TURN_TTL`]); renewed at half of it.
    pub ttl: Duration,
}

impl RelayConfig {
    /// The relay settings from the command line's parts: `None` without URIs. URIs need a
    /// secret and a secret needs URIs; the lifetime must be within
    /// [`MIN_TURN_TTL`]..=[`MAX_TURN_TTL`].
    pub fn from_parts(
        uris: Vec<TurnUri>,
        secret: Option<String>,
        ttl: Duration,
    ) -> Result<Option<Self>, ConfigError> {
        let secret = secret.filter(|s| !s.is_empty());
        match (uris.is_empty(), secret) {
            (true, None) => Ok(None),
            (true, Some(_)) => Err(ConfigError::Invalid(
                "--turn-secret is set but no --turn-uri: name the relays it is for",
            )),
            (false, None) => Err(ConfigError::Invalid(
                "--turn-uri needs --turn-secret (the relays' shared secret)",
            )),
            (false, Some(secret)) => {
                let config = Self {
                    uris,
                    secret: TurnSecret::new(secret),
                    ttl,
                };
                config.validate()?;
                Ok(Some(config))
            }
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.uris.is_empty() || self.uris.len() > MAX_RELAYS {
            return Err(ConfigError::Invalid("give 1 to 8 --turn-uri"));
        }
        if self.secret.expose().is_empty() {
            return Err(ConfigError::Invalid("--turn-secret must not be empty"));
        }
        if !(MIN_TURN_TTL..=MAX_TURN_TTL).contains(&self.ttl) {
            return Err(ConfigError::Invalid(
                "--turn-ttl-secs must be from 60 to 604800 (one week)",
            ));
        }
        Ok(())
    }
}

impl Coordinator {
    /// Tells the coordinator the wall-clock time: at `now`, `since_unix_epoch` has passed
    /// since 1970. Relay credentials carry UNIX expiries, so none are offered before this
    /// is called.
    pub fn set_wall_clock(&mut self, now: Instant, since_unix_epoch: Duration) {
        let elapsed = now.saturating_duration_since(self.epoch);
        self.unix_at_epoch = Some(since_unix_epoch.saturating_sub(elapsed));
    }

    /// UNIX seconds at `now`, if the wall clock is known.
    fn unix_secs(&self, now: Instant) -> Option<u64> {
        let at_epoch = self.unix_at_epoch?;
        Some(
            at_epoch
                .saturating_add(now.saturating_duration_since(self.epoch))
                .as_secs(),
        )
    }

    /// Sends `conn` fresh credentials for every relay and schedules the renewal at half
    /// their lifetime. Nothing without relays or wall clock.
    pub(crate) fn offer_relays(&mut self, now: Instant, conn: ConnId) {
        let Some(config) = self.config.relays.as_ref() else {
            return;
        };
        let Some(unix) = self.unix_secs(now) else {
            tracing::warn!("relay credentials not offered: wall clock unknown");
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let expires = unix.saturating_add(config.ttl.as_secs());
        let user = c.peer.to_string();
        let relays = config
            .uris
            .iter()
            .map(|uri| RelayCredential::issue(uri.clone(), config.secret.expose(), &user, expires))
            .collect();
        if let Some(old) = c.next_relays.take() {
            self.timers.remove(&(old, Timer::Relays(conn)));
        }
        let next = now + config.ttl / 2;
        c.next_relays = Some(next);
        self.timers.insert((next, Timer::Relays(conn)));
        self.stats.relay_offers += 1;
        self.send(conn, ServerMsg::Relays { relays });
    }
}
