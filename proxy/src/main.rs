//! `proxy`: a TURN relay server (RFC 8656 over UDP) with TURN REST API credentials.
//!
//! Steps:
//!
//! 1. Parse flags and `PROXY_*` env vars into a [`ProxyConfig`]; set up tracing (logs on
//!    stderr); check the config.
//! 2. Install the SIGINT/SIGTERM handlers, bind and start ([`Proxy::start`]), and print one
//!    JSON line on stdout:
//!    `{"event":"listening","addr":...,"relay_ip":...,"metrics_addr":...}`.
//! 3. Relay until a signal, then shut down: close every relay socket, stop the metrics
//!    endpoint, log the totals.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use proxy::config::{Limits, PeerPolicy, PortRange, ProxyConfig, DEFAULT_PORTS, DEFAULT_REALM};
use proxy::driver::Proxy;
use server_ops::process::{init_tracing, shutdown_signal, LogFormat};

/// TURN relay server (RFC 8656 over UDP) with TURN REST API credentials
/// (`EXPIRY:USER`, password base64(HMAC-SHA1(secret, username))).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// UDP address for STUN/TURN (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "PROXY_LISTEN", default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// IP of the relayed addresses handed to clients; relay sockets bind to it, so it
    /// must be an address of this host.
    #[arg(long, env = "PROXY_RELAY_IP")]
    relay_ip: IpAddr,
    /// Shared secret of the TURN REST API credentials (prefer the env var: flags show in
    /// `ps`).
    #[arg(long, env = "PROXY_AUTH_SECRET", hide_env_values = true)]
    auth_secret: String,
    /// Realm of the long-term credentials.
    #[arg(long, env = "PROXY_REALM", default_value = DEFAULT_REALM)]
    realm: String,
    /// Relay port range LO-HI.
    #[arg(long, env = "PROXY_PORTS", default_value_t = DEFAULT_PORTS)]
    ports: PortRange,
    /// TCP address for `/metrics` and `/healthz` (off if unset).
    #[arg(long, env = "PROXY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Most allocations at once (508 beyond).
    #[arg(long, env = "PROXY_MAX_ALLOCATIONS", default_value_t = Limits::default().max_allocations,
          value_parser = count_parser(1_000_000))]
    max_allocations: usize,
    /// Most allocations per user, the USER of `EXPIRY:USER` (486 beyond).
    #[arg(long, env = "PROXY_MAX_ALLOCATIONS_PER_USER", default_value_t = Limits::default().max_allocations_per_user,
          value_parser = count_parser(1_000_000))]
    max_allocations_per_user: usize,
    /// Most allocations per client IP (486 beyond).
    #[arg(long, env = "PROXY_MAX_ALLOCATIONS_PER_IP", default_value_t = Limits::default().max_allocations_per_ip,
          value_parser = count_parser(1_000_000))]
    max_allocations_per_ip: usize,
    /// Relayed bytes per second per allocation, both directions (token bucket of one
    /// second; 0 = no limit).
    #[arg(long, env = "PROXY_BANDWIDTH_PER_ALLOCATION", default_value_t = Limits::default().bandwidth_per_allocation)]
    bandwidth_per_allocation: u64,
    /// Longest allocation lifetime granted, in seconds (60 to 86400).
    #[arg(long, env = "PROXY_MAX_LIFETIME_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(60..=86_400))]
    max_lifetime_secs: u64,
    /// Most permissions (peer IPs) per allocation.
    #[arg(long, env = "PROXY_MAX_PERMISSIONS_PER_ALLOCATION", default_value_t = Limits::default().max_permissions_per_allocation,
          value_parser = count_parser(4096))]
    max_permissions_per_allocation: usize,
    /// Most channels per allocation.
    #[arg(long, env = "PROXY_MAX_CHANNELS_PER_ALLOCATION", default_value_t = Limits::default().max_channels_per_allocation,
          value_parser = count_parser(4096))]
    max_channels_per_allocation: usize,
    /// How long a nonce is valid, in seconds (438 Stale Nonce after).
    #[arg(long, env = "PROXY_NONCE_LIFETIME_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    nonce_lifetime_secs: u64,
    /// Allow private peers (RFC 1918, 100.64.0.0/10, fc00::/7).
    #[arg(long, env = "PROXY_ALLOW_PRIVATE_PEERS")]
    allow_private_peers: bool,
    /// Allow loopback peers (tests on one machine; never the proxy's own ports).
    #[arg(long, env = "PROXY_ALLOW_LOOPBACK_PEERS")]
    allow_loopback_peers: bool,
    /// Accept RFC 5766 channel numbers 0x4000-0x7FFF (coturn's `turnutils_uclient` picks
    /// from them) besides RFC 8656's 0x4000-0x4FFF.
    #[arg(long, env = "PROXY_RFC5766_CHANNELS")]
    rfc5766_channels: bool,
    /// Send every datagram with its own `sendmsg` (no GSO runs).
    #[arg(long, env = "PROXY_NO_GSO")]
    no_gso: bool,
    /// Log filter (`RUST_LOG` syntax, e.g. `info` or `proxy=debug`); overrides `RUST_LOG`.
    #[arg(long, env = "PROXY_LOG")]
    log: Option<String>,
    /// Log format.
    #[arg(long, env = "PROXY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Parses a count flag: 1 to `max`.
fn count_parser(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=max)
}

impl Cli {
    fn into_config(self) -> ProxyConfig {
        let mut config = ProxyConfig::new(self.relay_ip, self.auth_secret);
        config.listen = self.listen;
        config.metrics_listen = self.metrics_listen;
        config.gso = !self.no_gso;
        let s = &mut config.server;
        s.realm = self.realm;
        s.ports = self.ports;
        s.nonce_lifetime = Duration::from_secs(self.nonce_lifetime_secs);
        s.seed = rand::random();
        s.rfc5766_channels = self.rfc5766_channels;
        s.limits = Limits {
            max_allocations: self.max_allocations,
            max_allocations_per_user: self.max_allocations_per_user,
            max_allocations_per_ip: self.max_allocations_per_ip,
            bandwidth_per_allocation: self.bandwidth_per_allocation,
            max_lifetime: Duration::from_secs(self.max_lifetime_secs),
            max_permissions_per_allocation: self.max_permissions_per_allocation,
            max_channels_per_allocation: self.max_channels_per_allocation,
            ..Limits::default()
        };
        s.policy = PeerPolicy {
            allow_private_peers: self.allow_private_peers,
            allow_loopback_peers: self.allow_loopback_peers,
        };
        config
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref(), cli.log_format);
    let config = cli.into_config();
    let mut checked = config.server.clone();
    checked.listen = config.listen;
    checked.validate()?;
    let signal = shutdown_signal().context("installing the SIGINT/SIGTERM handlers")?;
    let proxy = Proxy::start(config.clone())
        .await
        .context("starting the proxy")?;
    let event = serde_json::json!({
        "event": "listening",
        "addr": proxy.local_addr().to_string(),
        "relay_ip": config.server.relay_ip.to_string(),
        "metrics_addr": proxy.metrics_addr().map(|a| a.to_string()),
    });
    // The first stdout line, for tests and supervisors; flushed by println!'s line buffer.
    println!("{event}");
    tracing::info!(
        addr = %proxy.local_addr(),
        relay_ip = %config.server.relay_ip,
        ports = %config.server.ports,
        realm = %config.server.realm,
        metrics = ?proxy.metrics_addr(),
        limits = ?config.server.limits,
        policy = ?config.server.policy,
        "listening"
    );
    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    match proxy.shutdown().await {
        Some(s) => tracing::info!(
            allocations = s.allocations_created,
            to_peer_packets = s.to_peer.packets,
            to_client_packets = s.to_client.packets,
            dropped = s.dropped_total(),
            "stopped"
        ),
        None => tracing::warn!("stopped; the relay thread did not report"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ProxyConfig {
        let base = ["proxy", "--relay-ip", "192.0.2.1", "--auth-secret", "s"];
        Cli::try_parse_from(base.iter().chain(args))
            .expect("flags parse")
            .into_config()
    }

    #[test]
    fn defaults_and_limit_flags_reach_the_config() {
        let c = parse(&[]);
        assert_eq!(c.server.limits, Limits::default());
        assert_eq!(c.server.ports, DEFAULT_PORTS);
        assert_eq!(c.server.policy, PeerPolicy::default());
        let c = parse(&[
            "--max-allocations",
            "5",
            "--max-allocations-per-user",
            "2",
            "--max-allocations-per-ip",
            "3",
            "--bandwidth-per-allocation",
            "0",
            "--max-lifetime-secs",
            "3600",
            "--ports",
            "40000-40010",
            "--allow-loopback-peers",
        ]);
        let l = &c.server.limits;
        assert_eq!(
            (
                l.max_allocations,
                l.max_allocations_per_user,
                l.max_allocations_per_ip
            ),
            (5, 2, 3)
        );
        assert_eq!(l.bandwidth_per_allocation, 0);
        assert_eq!(l.max_lifetime, Duration::from_secs(3600));
        assert_eq!(
            c.server.ports,
            PortRange {
                lo: 40000,
                hi: 40010
            }
        );
        assert!(c.server.policy.allow_loopback_peers && !c.server.policy.allow_private_peers);
        let base = ["proxy", "--relay-ip", "192.0.2.1", "--auth-secret", "s"];
        for bad in [
            &["--max-lifetime-secs", "10"][..],
            &["--ports", "9-1"],
            &["--max-allocations", "0"],
        ] {
            assert!(
                Cli::try_parse_from(base.iter().chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
