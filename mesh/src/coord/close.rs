//! The QUIC application close codes of the control connection, shared by the punch server
//! (which closes with them) and peers (which read them to decide whether to reconnect).
//!
//! Flow:
//! 1. The server closes a control connection with [`CloseCode::close`]: the code as the
//!    QUIC application error code (RFC 9000 §20.2, `CONNECTION_CLOSE` type 0x1d) and
//!    [`CloseCode::reason`] as the reason phrase. Closing a whole endpoint takes the same
//!    pair: [`CloseCode::varint`] and [`CloseCode::reason`].
//! 2. The peer sees `ConnectionError::ApplicationClosed`; [`CloseCode::from_quic`] turns the
//!    error back into a code (`None` for codes this version does not know, and for losses
//!    that were not an application close, such as an idle timeout).
//! 3. [`CloseCode::is_final`] tells the peer whether dialing again can help: after
//!    `Superseded`, `VersionMismatch` or `BadIdentity` it cannot.

use quinn::VarInt;

/// The QUIC application error code (and reason text) of a control connection the server
/// closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The server shuts down (code 0).
    Shutdown,
    /// The same peer id connected again; the newer connection wins (1).
    Superseded,
    /// The peer speaks another protocol version (2).
    VersionMismatch,
    /// The control stream cannot be trusted any more, e.g. an oversized frame (3).
    Malformed,
    /// Too many malformed messages (4).
    TooManyMalformed,
    /// The server holds as many connections as it may (5).
    ServerFull,
    /// The peer did not take the server's messages fast enough (6).
    TooSlow,
    /// No control stream was opened in time (7).
    NoControlStream,
    /// The peer's certificate did not yield a peer id (8).
    BadIdentity,
    /// The peer finished or reset its control stream (9).
    ControlStreamClosed,
    /// The connection was idle and the peer is parked: its registration stays while it
    /// sends keep-alives (after `ServerMsg::Park`) (10).
    Parked,
}

impl CloseCode {
    /// Every code, in wire order.
    pub const ALL: [Self; 11] = [
        Self::Shutdown,
        Self::Superseded,
        Self::VersionMismatch,
        Self::Malformed,
        Self::TooManyMalformed,
        Self::ServerFull,
        Self::TooSlow,
        Self::NoControlStream,
        Self::BadIdentity,
        Self::ControlStreamClosed,
        Self::Parked,
    ];

    /// The application error code on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Shutdown => 0,
            Self::Superseded => 1,
            Self::VersionMismatch => 2,
            Self::Malformed => 3,
            Self::TooManyMalformed => 4,
            Self::ServerFull => 5,
            Self::TooSlow => 6,
            Self::NoControlStream => 7,
            Self::BadIdentity => 8,
            Self::ControlStreamClosed => 9,
            Self::Parked => 10,
        }
    }

    /// The application error code as the QUIC varint quinn's `close` calls take.
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self.code())
    }

    /// The code with wire value `code`, if this version knows it.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// The code of a connection the peer closed with an application close, if known.
    pub fn from_quic(error: &quinn::ConnectionError) -> Option<Self> {
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => {
                Self::from_code(close.error_code.into_inner())
            }
            _ => None,
        }
    }

    /// The reason phrase sent with the close.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "server shutting down",
            Self::Superseded => "superseded by a newer connection of the same peer",
            Self::VersionMismatch => "protocol version mismatch",
            Self::Malformed => "malformed stream",
            Self::TooManyMalformed => "too many malformed messages",
            Self::ServerFull => "server full",
            Self::TooSlow => "too slow to take messages",
            Self::NoControlStream => "no control stream opened",
            Self::BadIdentity => "unusable peer certificate",
            Self::ControlStreamClosed => "control stream closed",
            Self::Parked => "parked while idle",
        }
    }

    /// Whether connecting again cannot help: another connection with the same key took
    /// over, the versions differ, or the key is unusable.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Superseded | Self::VersionMismatch | Self::BadIdentity
        )
    }

    /// Closes `conn` with this code and reason.
    pub fn close(self, conn: &quinn::Connection) {
        conn.close(self.varint(), self.reason().as_bytes());
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.reason(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for (i, c) in CloseCode::ALL.into_iter().enumerate() {
            assert_eq!(c.code() as usize, i);
            assert_eq!(CloseCode::from_code(u64::from(c.code())), Some(c));
            assert_eq!(c.varint().into_inner(), u64::from(c.code()));
        }
        assert_eq!(CloseCode::from_code(11), None);
        assert_eq!(CloseCode::from_code(u64::MAX), None);
        assert!(CloseCode::Superseded.is_final());
        assert!(!CloseCode::Shutdown.is_final());
        assert!(!CloseCode::ServerFull.is_final());
        assert_eq!(
            CloseCode::from_quic(&quinn::ConnectionError::TimedOut),
            None
        );
    }
}
