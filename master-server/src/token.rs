//! Owner tokens: the whole authority over one session row.
//!
//! 1. On create, 256 random bits from the OS generator become the token, shown once to the
//!    host as URL-safe base64.
//! 2. Only its SHA-256 hash is stored (the database and every cache hold hashes only).
//! 3. A write presents `Authorization: Bearer TOKEN`; the server hashes it and compares the
//!    hashes in constant time.
//!
//! A token can be handed to another peer (host migration) and keeps working there.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token text accepted from a client; longer headers are rejected unhashed.
pub const MAX_TOKEN_LEN: usize = 128;

/// A freshly issued owner token (secret; never stored).
pub struct Token(String);

impl Token {
    /// Draws a new random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token text handed to the host.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash that is stored in place of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// SHA-256 of a token's text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Rebuilds a hash read from the database; `None` when the stored bytes are not 32 long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenHash)
    }

    /// Whether `presented` is the token behind this hash, compared in constant time.
    pub fn verify(&self, presented: &str) -> bool {
        if presented.is_empty() || presented.len() > MAX_TOKEN_LEN {
            return false;
        }
        TokenHash::of(presented).0.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_verify_only_themselves() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.as_str().len() >= 22, "at least 128 bits of base64");
        assert!(a.hash().verify(a.as_str()));
        assert!(!a.hash().verify(b.as_str()));
        assert!(!a.hash().verify(""));
        assert!(!a.hash().verify(&"x".repeat(MAX_TOKEN_LEN + 1)));
    }
}
