//! Runtime configuration of the master server, with documented defaults.
//!
//! The command line (`main.rs`) maps flags and environment variables onto this struct;
//! tests and embedders build it directly.

use std::time::Duration;

use crate::writer::WriterConfig;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database URL: `sqlite:PATH` (file created if missing) or `postgres://...`.
    /// Default `sqlite:master.db`.
    pub database_url: String,
    /// Requests per second per client IP, with a burst of twice that; 0 turns limiting off.
    /// Default 100 (a LAN party behind one NAT stays well below it).
    pub rate_limit_per_sec: u32,
    /// Smallest `timeout_secs` accepted. Default 5.
    pub min_timeout_secs: u32,
    /// Largest `timeout_secs` accepted. Default 3600.
    pub max_timeout_secs: u32,
    /// `timeout_secs` when a create omits it. Default 60.
    pub default_timeout_secs: u32,
    /// Take the client IP from the last `X-Forwarded-For` entry (set by a trusted load
    /// balancer) instead of the TCP peer. Default off.
    pub trust_forwarded_for: bool,
    /// Most rows held at once; creates beyond get 503 `full`. Default 1,000,000.
    pub max_sessions: usize,
    /// Most live rows one client IP may hold (the forwarded address with
    /// `trust_forwarded_for`); creates beyond get 429 `too_many_sessions_for_address`.
    /// 0 turns the cap off. Default 64.
    pub max_sessions_per_ip: usize,
    /// Largest request body, in bytes. Default 64 KiB.
    pub max_body_bytes: usize,
    /// How often buffered heartbeats are written (see [`crate::heartbeats`]); zero makes
    /// every heartbeat commit before it is answered. Default 50 ms.
    pub heartbeat_flush: Duration,
    /// The database writer's tuning.
    pub writer: WriterConfig,
    /// Connection limits and timeouts of the HTTP listener (see [`crate::serve`]).
    pub conn: ConnLimits,
}

/// How the listener treats connections: timeouts against slow clients and caps against
/// descriptor exhaustion.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// From a connection's first byte (or its opening) until a request's headers are
    /// complete; a connection that misses it is closed. Default 5 s.
    pub header_read_timeout: Duration,
    /// From the end of the headers until the whole body has arrived; a miss is answered
    /// 408 `body_timeout` and the connection closed. Default 10 s.
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may wait between requests. Default 30 s.
    pub idle_timeout: Duration,
    /// Most connections open at once from one TCP peer address; 0 turns the cap off.
    /// Default 256.
    pub max_per_ip: usize,
    /// Most connections open at once; lowered at start to the descriptor limit minus
    /// [`crate::serve::RESERVED_FDS`]. Default 10,000.
    pub max_total: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_per_ip: 256,
            max_total: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite:master.db".to_owned(),
            rate_limit_per_sec: 100,
            min_timeout_secs: 5,
            max_timeout_secs: 3600,
            default_timeout_secs: 60,
            trust_forwarded_for: false,
            max_sessions: 1_000_000,
            max_sessions_per_ip: 64,
            max_body_bytes: 64 * 1024,
            heartbeat_flush: Duration::from_millis(50),
            writer: WriterConfig::default(),
            conn: ConnLimits::default(),
        }
    }
}
