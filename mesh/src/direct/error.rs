//! The typed errors of [`super::DirectNode`].

use std::time::Duration;

use crate::coord::{CloseCode, CodecError, ErrorKind, ParsePunchAddrError};
use crate::identity::PeerId;
use crate::punch::NoDirectPath;
use crate::socket::{BindError, ConnectError};

/// Why a node could not start (bind, reach or register with the punch server).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The punch server address may not be used (bare `HOST:PORT` without `insecure`).
    #[error(transparent)]
    Address(#[from] ParsePunchAddrError),
    /// The punch server's host name did not resolve to an address of the socket's family.
    #[error("cannot resolve punch server {host}: {detail}")]
    Resolve {
        /// The host name.
        host: String,
        /// What went wrong.
        detail: String,
    },
    /// The socket or the endpoint could not be set up.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The QUIC connection to the punch server failed (unreachable, wrong key, ...).
    #[error("cannot reach punch server: {0}")]
    Connect(#[source] ConnectError),
    /// The control stream failed.
    #[error("punch server control stream failed: {0}")]
    Control(#[from] ControlError),
    /// No `Registered` in time.
    #[error("punch server did not confirm the registration within {0:?}")]
    RegisterTimeout(Duration),
    /// The punch server completed no QUIC handshake within the connect timeout
    /// ([`super::DirectConfig::connect_timeout`]).
    #[error("punch server {server} did not answer within {waited:?}")]
    Unreachable {
        /// The address dialed.
        server: std::net::SocketAddr,
        /// The connect timeout.
        waited: Duration,
    },
}

/// A failure of the control connection to the punch server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The QUIC connection or stream ended.
    #[error("control connection lost: {0}")]
    Lost(String),
    /// The punch server closed the connection with a known close code.
    #[error("punch server closed the control connection: {0}")]
    ClosedByServer(CloseCode),
    /// The server sent bytes that are not a valid frame; the connection was closed.
    #[error("invalid frame from punch server: {0}")]
    Codec(#[from] CodecError),
    /// The server reported an error for the connection as a whole.
    #[error("punch server error {kind}: {detail}")]
    Server {
        /// What went wrong.
        kind: ErrorKind,
        /// The server's detail.
        detail: String,
    },
}

impl ControlError {
    /// The error of a QUIC connection that ended: the server's close code if it sent a
    /// known one, otherwise the error's text.
    pub(crate) fn from_connection(error: &quinn::ConnectionError) -> Self {
        match CloseCode::from_quic(error) {
            Some(code) => Self::ClosedByServer(code),
            None => Self::Lost(error.to_string()),
        }
    }

    /// Whether connecting again cannot help (another connection with our key took over,
    /// or the server speaks another protocol version); the node then stays offline.
    pub fn is_final(&self) -> bool {
        match self {
            Self::ClosedByServer(code) => code.is_final(),
            Self::Codec(CodecError::VersionMismatch { .. }) => true,
            Self::Server { kind, .. } => *kind == ErrorKind::VersionMismatch,
            Self::Lost(_) | Self::Codec(_) => false,
        }
    }
}

/// Why [`super::DirectNode::connect`] did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The punch server knows no registered peer with this id.
    #[error("peer {0} is not registered at the punch server")]
    UnknownTarget(PeerId),
    /// The target refused the request.
    #[error("peer {0} refused the connection")]
    Refused(PeerId),
    /// The target did not answer in time (or the server did not).
    #[error("no answer from peer {peer} within {waited:?}")]
    Timeout {
        /// The target.
        peer: PeerId,
        /// How long we waited.
        waited: Duration,
    },
    /// Probing found no direct path within its budget; relay instead.
    #[error("no direct path to peer {peer}: {detail}")]
    NoDirectPath {
        /// The target.
        peer: PeerId,
        /// Every pair tried and its outcome.
        detail: NoDirectPath,
    },
    /// Relay-only: no relayed path to the peer could be set up (no relay offered or
    /// allocated, or the channel bind failed).
    #[error("no relayed path to peer {peer}: {detail}")]
    NoRelayedPath {
        /// The target.
        peer: PeerId,
        /// Why.
        detail: String,
    },
    /// No route through the named member (no link to it, its datagrams too small, or
    /// too many routes).
    #[error("no route to peer {peer}: {detail}")]
    NoRoute {
        /// The target.
        peer: PeerId,
        /// Why.
        detail: String,
    },
    /// The punch server rejected the request (rate limit, limits, ...).
    #[error("punch server refused the request: {kind}: {detail}")]
    Server {
        /// The server's error kind.
        kind: ErrorKind,
        /// Its detail.
        detail: String,
    },
    /// Too many attempts are running on this node.
    #[error("too many punch attempts in progress ({0})")]
    Busy(usize),
    /// The control connection to the punch server is gone.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Probing succeeded but the QUIC handshake on the nominated path failed (or the
    /// peer presented another key).
    #[error("handshake with peer failed: {0}")]
    Handshake(#[source] ConnectError),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Closed,
}

impl DialError {
    /// A short stable name for scripts: `unknown_target`, `refused`, `timeout`,
    /// `no_direct_path`, `no_relayed_path`, `server_error`, `busy`, `control_lost`,
    /// `identity_mismatch`, `handshake_failed`, `closed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownTarget(_) => "unknown_target",
            Self::Refused(_) => "refused",
            Self::Timeout { .. } => "timeout",
            Self::NoDirectPath { .. } => "no_direct_path",
            Self::NoRelayedPath { .. } => "no_relayed_path",
            Self::NoRoute { .. } => "no_route",
            Self::Server { .. } => "server_error",
            Self::Busy(_) => "busy",
            Self::Control(_) => "control_lost",
            Self::Handshake(ConnectError::Identity(_)) => "identity_mismatch",
            Self::Handshake(_) => "handshake_failed",
            Self::Closed => "closed",
        }
    }
}

impl StartError {
    /// A short stable name for scripts: `address`, `resolve`, `bind`, `identity_mismatch`,
    /// `unreachable`, `control`, `register_timeout`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Address(_) => "address",
            Self::Resolve { .. } => "resolve",
            Self::Bind(_) => "bind",
            Self::Connect(ConnectError::Identity(_)) => "identity_mismatch",
            Self::Connect(_) | Self::Unreachable { .. } => "unreachable",
            Self::Control(_) => "control",
            Self::RegisterTimeout(_) => "register_timeout",
        }
    }
}
