//! `punch-server`: STUN server (RFC 8489, RFC 5780) and punchthrough coordinator.
//!
//! Steps:
//! 1. Parse flags/env into a [`ServerConfig`], a [`QuicConfig`] and a [`CoordConfig`]; set
//!    up tracing; check the configs ([`ServerConfig::validate`],
//!    [`QuicConfig::validate_with`]: e.g. a non-zero rate limit needs a burst of at least
//!    1; TURN relay URIs need the relays' secret, see [`RelayConfig::from_parts`]).
//! 2. Load (or create) the server's key file: its key is the server id and the QUIC
//!    coordinator's TLS identity.
//! 3. Bind and start STUN and the QUIC coordinator on the same UDP port
//!    ([`punch_server::quic::start`]); print one JSON line
//!    `{"event":"listening","id":...,"addr":...}` on stdout.
//! 4. Serve until SIGINT/SIGTERM, then shut down: close every QUIC connection and wait
//!    (bounded) for the endpoint to drain, then stop the STUN workers.
//!
//! Peers address the server as `ID@HOST:PORT` and verify its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mesh::identity::Identity;
use mesh::turn::TurnUri;
use punch_server::config::ConfigError;
use punch_server::config::{ServerConfig, StunConfig, DEFAULT_KEY_FILE};
use punch_server::coordinator::{CoordConfig, Rate, RelayConfig, DEFAULT_TURN_TTL};
use punch_server::quic::{QuicConfig, RetryPolicy, MAX_COUNT};
use server_ops::process::{init_tracing, shutdown_signal, LogFormat};

/// When a new client must prove its address with a QUIC Retry first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QuicRetry {
    /// Every new source (one more round trip on registration; within RFC 9000's 3x
    /// anti-amplification limit).
    Always,
    /// Only while half of `--max-handshakes` are in progress (quinn 0.11 then sends up to
    /// 3.1 times an unanswered Initial).
    UnderLoad,
}

impl From<QuicRetry> for RetryPolicy {
    fn from(r: QuicRetry) -> Self {
        match r {
            QuicRetry::Always => Self::Always,
            QuicRetry::UnderLoad => Self::UnderLoad,
        }
    }
}

/// Punch server: STUN (RFC 8489 Binding, RFC 5780 behaviour discovery) and the QUIC
/// punchthrough coordinator on the same UDP port.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// UDP address for STUN (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "PUNCH_LISTEN", default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// Alternate IP:PORT for RFC 5780: serve on all four IP/port combinations.
    #[arg(long, env = "PUNCH_ALT_ADDR")]
    alt_addr: Option<SocketAddr>,
    /// TCP address for the HTTP `/metrics` and `/healthz` endpoint (off if unset).
    #[arg(long, env = "PUNCH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// STUN requests per second allowed per source IP (IPv6: per /64); 0 = no limit.
    #[arg(long, env = "PUNCH_RATE_LIMIT", default_value_t = StunConfig::default().rate_limit_per_sec)]
    rate_limit: u32,
    /// Burst of the per-source rate limit (default: twice the rate, at least 1).
    #[arg(long, env = "PUNCH_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Send every response with its own `sendmsg` (no GSO coalescing of runs of
    /// responses to one destination).
    #[arg(long, env = "PUNCH_NO_GSO")]
    no_gso: bool,
    /// The server's Ed25519 key (PKCS#8 PEM), created with mode 0600 if missing. Its
    /// public key is the server id that peers verify (`ID@HOST:PORT`).
    #[arg(long, env = "PUNCH_KEY_FILE", default_value = DEFAULT_KEY_FILE)]
    key_file: PathBuf,
    /// Most registered peers (connected and parked) at once; more are refused. A parked
    /// peer holds about 3 KiB of server memory, a connected one about 32 KiB (quinn's and
    /// rustls' connection state; `cargo bench -p punch-server --bench idle_peers`): with
    /// parking on, the default needs about 0.3 GiB for idle peers plus 32 KiB per active
    /// one; without parking about 3.1 GiB. Size it to the machine.
    #[arg(long, env = "PUNCH_MAX_PEERS", default_value_t = CoordConfig::default().max_connections,
          value_parser = count_parser())]
    max_peers: usize,
    /// Most QUIC handshakes in progress at once; more are refused.
    #[arg(long, env = "PUNCH_MAX_HANDSHAKES", default_value_t = QuicConfig::default().max_handshakes,
          value_parser = count_parser())]
    max_handshakes: usize,
    /// When a new client must first prove its address with a QUIC Retry: `always` (one
    /// more round trip on registration) or `under-load`.
    #[arg(long, env = "PUNCH_QUIC_RETRY", value_enum, default_value = "always")]
    quic_retry: QuicRetry,
    /// Most pending connect requests in the whole server.
    #[arg(long, env = "PUNCH_MAX_PENDING", default_value_t = CoordConfig::default().max_pending_total,
          value_parser = count_parser())]
    max_pending: usize,
    /// How long a target has to accept or refuse a connect request, in milliseconds.
    #[arg(long, env = "PUNCH_REQUEST_TIMEOUT_MS", default_value_t = duration_ms(CoordConfig::default().request_timeout),
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
    request_timeout_ms: u64,
    /// Connect requests per second per peer (0 = no limit). A peer's spent tokens outlast
    /// its connection: reconnecting does not refill them.
    #[arg(long, env = "PUNCH_CONNECT_RATE", default_value_t = CoordConfig::default().connect_rate.per_sec)]
    connect_rate: u32,
    /// Burst of the connect rate: connect requests a peer may make at once (at least 1
    /// unless the rate is 0).
    #[arg(long, env = "PUNCH_CONNECT_BURST", default_value_t = CoordConfig::default().connect_rate.burst)]
    connect_burst: u32,
    /// Punch attempts per second per peer, as requester or target (0 = no limit); kept
    /// across reconnects like the connect rate.
    #[arg(long, env = "PUNCH_ATTEMPT_RATE", default_value_t = CoordConfig::default().attempt_rate.per_sec)]
    attempt_rate: u32,
    /// Burst of the attempt rate: punch attempts a peer may take part in at once (at least
    /// 1 unless the rate is 0).
    #[arg(long, env = "PUNCH_ATTEMPT_BURST", default_value_t = CoordConfig::default().attempt_rate.burst)]
    attempt_burst: u32,
    /// QUIC idle timeout of coordinator connections, in milliseconds.
    #[arg(long, env = "PUNCH_IDLE_TIMEOUT_MS", default_value_t = duration_ms(QuicConfig::default().idle_timeout),
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
    idle_timeout_ms: u64,
    /// A TURN relay to offer registered peers, `turn:HOST:PORT` (optionally
    /// `?transport=udp`); repeat the flag for several (env: comma-separated). Needs
    /// `--turn-secret`.
    #[arg(long = "turn-uri", env = "PUNCH_TURN_URI", value_delimiter = ',')]
    turn_uri: Vec<TurnUri>,
    /// The relays' shared TURN REST API secret (the proxy's `--auth-secret`, coturn's
    /// `static-auth-secret`): peers get username `EXPIRY:PEER_ID` and password
    /// base64(HMAC-SHA1(secret, username)).
    #[arg(long, env = "PUNCH_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Lifetime of the relay credentials in seconds (60 to 604800); peers get fresh ones
    /// at half of it.
    #[arg(long, env = "PUNCH_TURN_TTL_SECS", default_value_t = DEFAULT_TURN_TTL.as_secs())]
    turn_ttl_secs: u64,
    /// Park the control connection of a peer that supports it after this many seconds
    /// without a message (pongs do not count) and no pending request: the connection is
    /// closed and the peer stays registered with small keep-alives; a connect request
    /// wakes it. 0 = never park.
    #[arg(long, env = "PUNCH_PARK_AFTER_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    park_after_secs: u64,
    /// Keep-alive interval of parked peers, in seconds; a parked peer is dropped after
    /// three intervals without one.
    #[arg(long, env = "PUNCH_PARK_KEEPALIVE_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    park_keepalive_secs: u64,
    /// Log filter (`RUST_LOG` syntax, e.g. `info` or `punch_server=debug`); overrides
    /// `RUST_LOG`.
    #[arg(long, env = "PUNCH_LOG")]
    log: Option<String>,
    /// Log format.
    #[arg(long, env = "PUNCH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Largest timeout flag accepted: one hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Parses a count flag: 1 to [`MAX_COUNT`].
fn count_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_COUNT as u64)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Everything the command line configures.
struct Configs {
    server: ServerConfig,
    quic: QuicConfig,
    coord: CoordConfig,
}

impl Cli {
    fn into_configs(mut self) -> Result<Configs, ConfigError> {
        let relays = RelayConfig::from_parts(
            std::mem::take(&mut self.turn_uri),
            self.turn_secret.take(),
            Duration::from_secs(self.turn_ttl_secs),
        )?;
        let coord = CoordConfig {
            relays,
            max_connections: self.max_peers,
            max_pending_total: self.max_pending,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            connect_rate: Rate {
                per_sec: self.connect_rate,
                burst: self.connect_burst,
            },
            attempt_rate: Rate {
                per_sec: self.attempt_rate,
                burst: self.attempt_burst,
            },
            park_after: (self.park_after_secs > 0)
                .then(|| Duration::from_secs(self.park_after_secs)),
            park_keepalive: Duration::from_secs(self.park_keepalive_secs),
            ..CoordConfig::default()
        };
        let quic = QuicConfig {
            max_connections: self.max_peers,
            max_handshakes: self.max_handshakes,
            retry: self.quic_retry.into(),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            ..QuicConfig::default()
        };
        Ok(Configs {
            server: self.into_config(),
            quic,
            coord,
        })
    }

    fn into_config(self) -> ServerConfig {
        let stun = StunConfig {
            rate_limit_per_sec: self.rate_limit,
            rate_limit_burst: self
                .rate_burst
                .unwrap_or(self.rate_limit.saturating_mul(2))
                .max(1),
            rate_limit_seed: rand_seed(),
            ..StunConfig::default()
        };
        ServerConfig {
            listen: self.listen,
            alt_addr: self.alt_addr,
            metrics_listen: self.metrics_listen,
            gso: !self.no_gso,
            stun,
        }
    }
}

/// A per-process seed for the rate-limit hash, from the std hasher's random keys.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref(), cli.log_format);
    let key_file = cli.key_file.clone();
    let Configs {
        server: config,
        quic,
        coord,
    } = cli.into_configs()?;
    // Check the flags before touching the key file, so a bad command line creates nothing.
    config.validate()?;
    quic.validate_with(&coord)?;
    let identity = Identity::load_or_generate(&key_file)
        .with_context(|| format!("loading the server key from {}", key_file.display()))?;
    let signal = shutdown_signal().context("installing the SIGINT/SIGTERM handlers")?;
    let (server, coordinator) =
        punch_server::quic::start(config.clone(), quic.clone(), coord.clone(), &identity)
            .await
            .context("starting the punch server")?;
    let mut event = serde_json::json!({
        "event": "listening",
        "id": identity.peer_id().to_string(),
        "addr": server.local_addr().to_string(),
    });
    if let Some(alt) = server.alt_addr() {
        event["alt_addr"] = alt.to_string().into();
    }
    if let Some(m) = server.metrics_addr() {
        event["metrics_addr"] = m.to_string().into();
    }
    // The first stdout line, for tests and supervisors; flushed by println!'s line buffer.
    println!("{event}");
    tracing::info!(
        id = %identity.peer_id(),
        addr = %server.local_addr(),
        alt = ?server.alt_addr(),
        metrics = ?server.metrics_addr(),
        rate_limit = config.stun.rate_limit_per_sec,
        max_peers = coord.max_connections,
        relays = coord.relays.as_ref().map_or(0, |r| r.uris.len()),
        park_after = ?coord.park_after,
        "listening"
    );
    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    let metrics = coordinator.metrics();
    coordinator.shutdown().await;
    let totals = server.stats().total();
    server.shutdown().await;
    let coord = metrics.snapshot().stats;
    tracing::info!(
        received = totals.received,
        answered = totals.success_responses + totals.error_responses,
        dropped = totals.dropped_total(),
        registrations = coord.registrations,
        punches = coord.accepted,
        parked = coord.parked,
        "stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(args: &[&str]) -> Configs {
        let cli = Cli::try_parse_from(std::iter::once("punch-server").chain(args.iter().copied()))
            .expect("flags parse");
        cli.into_configs().expect("valid flags")
    }

    fn coord(args: &[&str]) -> CoordConfig {
        configs(args).coord
    }

    #[test]
    fn retry_flag_reaches_the_quic_config() {
        assert_eq!(configs(&[]).quic.retry, RetryPolicy::Always);
        let under_load = configs(&["--quic-retry", "under-load"]).quic;
        assert_eq!(under_load.retry, RetryPolicy::UnderLoad);
        let bad = ["punch-server", "--quic-retry", "never"];
        assert!(Cli::try_parse_from(bad).is_err());
    }

    #[test]
    fn turn_flags_reach_the_coordinator_or_fail_clearly() {
        assert_eq!(coord(&[]).relays, None);
        let c = coord(&[
            "--turn-uri",
            "turn:127.0.0.1:3478",
            "--turn-uri",
            "turn:relay.example:3479?transport=udp",
            "--turn-secret",
            "s",
            "--turn-ttl-secs",
            "600",
        ]);
        let relays = c.relays.expect("relays");
        let uris: Vec<String> = relays.uris.iter().map(ToString::to_string).collect();
        assert_eq!(uris, ["turn:127.0.0.1:3478", "turn:relay.example:3479"]);
        assert_eq!(relays.ttl, Duration::from_secs(600));
        let fails = |args: &[&str]| -> String {
            match Cli::try_parse_from(std::iter::once("punch-server").chain(args.iter().copied())) {
                Err(e) => e.to_string(),
                Ok(cli) => cli.into_configs().err().expect("an error").to_string(),
            }
        };
        let bad_uri = fails(&["--turn-uri", "turns:relay:5349", "--turn-secret", "s"]);
        assert!(bad_uri.contains("must start with `turn:`"), "{bad_uri}");
        let no_secret = fails(&["--turn-uri", "turn:relay:3478"]);
        assert!(
            no_secret.contains("--turn-uri needs --turn-secret"),
            "{no_secret}"
        );
        let no_uri = fails(&["--turn-secret", "s"]);
        assert!(no_uri.contains("no --turn-uri"), "{no_uri}");
    }

    #[test]
    fn rate_flags_reach_the_coordinator() {
        assert_eq!(coord(&[]), CoordConfig::default());
        let c = coord(&[
            "--connect-rate",
            "1",
            "--connect-burst",
            "5",
            "--attempt-rate",
            "0",
            "--attempt-burst",
            "0",
        ]);
        assert_eq!(
            (c.connect_rate, c.attempt_rate),
            (
                Rate {
                    per_sec: 1,
                    burst: 5
                },
                Rate {
                    per_sec: 0,
                    burst: 0
                }
            )
        );
        assert!(c.validate().is_ok(), "a zero rate needs no burst");
        let bad = coord(&["--attempt-rate", "3", "--attempt-burst", "0"]);
        let err = bad.validate().expect_err("burst 0 with a rate");
        assert!(err.to_string().contains("--attempt-burst"), "{err}");
    }
}
