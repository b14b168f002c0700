//! TURN (RFC 8656) pieces shared by the relay, the punch server and peers: the TURN REST
//! API credentials ([`credentials`]), relay URIs (RFC 7065, [`TurnUri`]), the relay
//! offers a punch server hands to registered peers ([`RelayCredential`]), the framing
//! glue to stun-rs ([`wire`]), and the one TURN client: its messages ([`msg`]), its sans-IO
//! state machine ([`client`]), the keeper of a node's allocation on a relay
//! ([`allocation`]) and a tokio check of a relay offer ([`check`]).
//!
//! Flow of a relay offer:
//! 1. The operator starts the punch server with `--turn-uri turn:HOST:PORT` (one per relay)
//!    and the relays' shared `--turn-secret`.
//! 2. On registration the server sends the peer one [`RelayCredential`] per relay:
//!    username `EXPIRY:PEER_ID`, password `base64(HMAC-SHA1(secret, username))`
//!    ([`RelayCredential::issue`]), and it sends fresh ones before they expire.
//! 3. The peer uses them as long-term credentials (RFC 8489 section 9.2) on the relay,
//!    which derives the same password from the same secret.

pub mod allocation;
#[cfg(test)]
mod allocation_tests;
pub mod check;
pub mod client;
#[cfg(test)]
mod client_tests;
pub mod credentials;
pub mod msg;
mod uri;
pub mod wire;

pub use uri::{ParseTurnUriError, TurnUri, DEFAULT_TURN_PORT, MAX_URI_LEN};

use credentials::Credentials;

/// One relay a punch server offers a peer, with credentials for it.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayCredential {
    /// Where the relay is.
    pub uri: TurnUri,
    /// The REST API username `EXPIRY:USER`.
    pub username: String,
    /// The password derived from the relays' shared secret.
    pub password: String,
    /// When the credentials stop working, UNIX seconds (the `EXPIRY` of the username).
    pub expires_unix: u64,
}

impl std::fmt::Debug for RelayCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never goes to logs.
        f.debug_struct("RelayCredential")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
}

impl RelayCredential {
    /// Credentials on `uri` for `user` (a peer id in its printed form), valid until
    /// `expires_unix`, derived from the relays' shared `secret`.
    pub fn issue(uri: TurnUri, secret: &str, user: &str, expires_unix: u64) -> Self {
        let Credentials { username, password } = Credentials::rest(secret, user, expires_unix);
        Self {
            uri,
            username,
            password,
            expires_unix,
        }
    }

    /// The username and password, as a TURN client uses them.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_are_the_rest_api_ones() {
        let uri: TurnUri = "turn:127.0.0.1:3478".parse().expect("uri");
        let r = RelayCredential::issue(uri, "secret", "user", 1_600_000_000);
        assert_eq!(r.username, "1600000000:user");
        assert_eq!(r.password, "BwzEW9gDEHXnNCRCm1qZLqyo+hg=");
        assert_eq!(r.credentials().username, r.username);
        assert!(!format!("{r:?}").contains(&r.password));
    }
}
