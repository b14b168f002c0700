//! miniupnpd (UPnP IGD) on a lab router, with its nftables backend (plumbing for the
//! UPnP tests; the protocol is miniupnpd's).
//!
//! [`Lab::start_upnp`] runs these steps inside the router's namespace:
//! 1. Checks that `miniupnpd` is installed (Debian package `miniupnpd-nftables`).
//! 2. Creates miniupnpd's own nftables tables with policy accept (the packaged
//!    `nft_init.sh` would add a forward chain with policy drop): `inet natlab_upnp`
//!    (filter: forward chain jumping to `upnp_forward`, where miniupnpd puts its accept
//!    rules) and `inet natlab_upnp_nat` (nat: prerouting and postrouting chains jumping to
//!    `upnp_prerouting` and `upnp_postrouting`, where it puts its DNAT rules).
//! 3. Adds three rules to the router's own `ip natlab` table while miniupnpd runs, tagged
//!    with the comment `natlab-upnp`: the input chain accepts UDP from the server's two
//!    addresses with the STUN source ports (miniupnpd's STUN check needs the
//!    CHANGE-REQUEST answers from the alternate address and port, which conntrack sees as
//!    unsolicited); the postrouting chain leaves the router's own STUN requests alone
//!    (`masquerade fully-random` would change their source port, and miniupnpd would see a
//!    "symmetric NAT" in front of itself); the forward chain accepts WAN -> LAN flows that
//!    a DNAT rule (miniupnpd's mapping) redirected. Everything else unsolicited is still
//!    dropped.
//! 4. Writes the config into the lab's temporary directory: `ext_ifname=wan0`,
//!    `listening_ip=lan0`, `http_port=5000`, `secure_mode=yes`, STUN against the given
//!    server (the lab's WAN addresses are in 198.18.0.0/15, which miniupnpd treats as not
//!    public and refuses to forward for unless a STUN check shows an unfiltered 1:1
//!    address), `allow 1024-65535 <LAN>/24 1024-65535`, `deny 0-65535 0.0.0.0/0 0-65535`.
//! 5. Runs `miniupnpd -f CONF -d -P PIDFILE` in the foreground (so the lab owns the
//!    process; its log goes to stderr) and waits until it listens on its HTTP port and its
//!    STUN check reported an address that supports port forwarding.
//!
//! Dropping the [`UpnpDaemon`] (or [`UpnpDaemon::stop`]) sends SIGTERM (miniupnpd then
//! removes its rules itself), kills it if it has not exited within 3 s, deletes the two
//! tables and the `natlab-upnp` rules.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cmd::{run, run_output, which};
use crate::nft::{LAN, WAN};
use crate::process::LabProcess;
use crate::{Host, Lab, LabError, Router};

/// HTTP (SOAP) port of miniupnpd on the router's LAN address.
pub const UPNP_HTTP_PORT: u16 = 5000;
/// Filter table miniupnpd adds its forward rules to (family `inet`).
pub const UPNP_TABLE: &str = "natlab_upnp";
/// NAT table miniupnpd adds its DNAT rules to (family `inet`).
pub const UPNP_NAT_TABLE: &str = "natlab_upnp_nat";
/// Comment on the rules opened in the router's `ip natlab` table.
const HOLE_COMMENT: &str = "natlab-upnp";
/// How long miniupnpd may take to start (its STUN check included).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where miniupnpd sends its STUN check: an RFC 5780 server with an alternate address
/// (the lab server's second address) and an alternate port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpnpStun {
    /// Primary address of the STUN server (on the lab internet).
    pub server: SocketAddr,
    /// The server's alternate port (CHANGE-REQUEST "change port" answers come from it).
    pub alt_port: u16,
}

/// A miniupnpd running on a lab router; stopped (and its rules removed) when dropped.
#[derive(Debug)]
pub struct UpnpDaemon<'lab> {
    lab: &'lab Lab,
    router: Router,
    process: Option<LabProcess>,
}

fn router_host(router: Router) -> Host {
    match router {
        Router::A => Host::RouterA,
        Router::B => Host::RouterB,
        Router::C => Host::RouterC,
    }
}

fn lan_prefix(router: Router) -> &'static str {
    match router {
        Router::A => "10.1.0.0/24",
        Router::B => "10.2.0.0/24",
        Router::C => "10.3.0.0/24",
    }
}

/// miniupnpd's nftables tables (step 2 of the module docs).
pub(crate) fn upnp_tables() -> String {
    format!(
        "table inet {UPNP_TABLE} {{\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter; policy accept;\n\
         \x20       jump upnp_forward\n\
         \x20   }}\n\
         \x20   chain upnp_forward {{\n\
         \x20   }}\n\
         }}\n\
         table inet {UPNP_NAT_TABLE} {{\n\
         \x20   chain prerouting {{\n\
         \x20       type nat hook prerouting priority dstnat; policy accept;\n\
         \x20       jump upnp_prerouting\n\
         \x20   }}\n\
         \x20   chain postrouting {{\n\
         \x20       type nat hook postrouting priority srcnat; policy accept;\n\
         \x20       jump upnp_postrouting\n\
         \x20   }}\n\
         \x20   chain upnp_prerouting {{\n\
         \x20   }}\n\
         \x20   chain upnp_postrouting {{\n\
         \x20   }}\n\
         }}\n"
    )
}

/// The holes in the router's `ip natlab` table (step 3 of the module docs).
pub(crate) fn upnp_holes(
    server_ips: [std::net::Ipv4Addr; 2],
    wan_ip: std::net::Ipv4Addr,
    stun: UpnpStun,
) -> String {
    let mut ports = vec![stun.server.port(), stun.alt_port];
    ports.dedup();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let ports = ports.join(", ");
    let servers = format!("{}, {}", server_ips[0], server_ips[1]);
    format!(
        "insert rule ip natlab input iifname \"{WAN}\" ip saddr {{ {servers} }} \
         udp sport {{ {ports} }} accept comment \"{HOLE_COMMENT}\"\n\
         insert rule ip natlab postrouting oifname \"{WAN}\" ip saddr {wan_ip} \
         ip daddr {{ {servers} }} udp dport {{ {ports} }} accept comment \"{HOLE_COMMENT}\"\n\
         insert rule ip natlab forward iifname \"{WAN}\" oifname \"{LAN}\" ct status dnat \
         accept comment \"{HOLE_COMMENT}\"\n"
    )
}

/// The miniupnpd configuration (step 4 of the module docs).
pub(crate) fn upnp_config(router: Router, stun: UpnpStun) -> String {
    format!(
        "ext_ifname={WAN}\n\
         listening_ip={LAN}\n\
         http_port={UPNP_HTTP_PORT}\n\
         enable_upnp=yes\n\
         enable_natpmp=no\n\
         secure_mode=yes\n\
         system_uptime=no\n\
         ext_perform_stun=yes\n\
         ext_stun_host={}\n\
         ext_stun_port={}\n\
         upnp_table_name={UPNP_TABLE}\n\
         upnp_nat_table_name={UPNP_NAT_TABLE}\n\
         upnp_forward_chain=upnp_forward\n\
         upnp_nat_chain=upnp_prerouting\n\
         upnp_nat_postrouting_chain=upnp_postrouting\n\
         allow 1024-65535 {} 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        stun.server.ip(),
        stun.server.port(),
        lan_prefix(router)
    )
}

/// What miniupnpd's log says about its STUN check: `Some(Ok)` usable, `Some(Err)` not.
fn stun_verdict(log: &str) -> Option<Result<(), String>> {
    for bad in [
        "does not support port forwarding",
        "firewall filters incoming connections",
        "Performing STUN failed",
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(bad)) {
            return Some(Err(line.trim().to_string()));
        }
    }
    let good = log
        .lines()
        .any(|l| l.contains("STUN: ext interface") || l.contains("STUN: ... done"));
    good.then_some(Ok(()))
}

impl Lab {
    /// Starts miniupnpd on `router` (needs the Debian package `miniupnpd-nftables`); the
    /// STUN server must already be running. See the module docs of `upnp.rs` for what it
    /// changes on the router. Waits until miniupnpd is ready to map ports.
    pub fn start_upnp(&self, router: Router, stun: UpnpStun) -> Result<UpnpDaemon<'_>, LabError> {
        let Some(binary) = which("miniupnpd") else {
            return Err(LabError::Preflight(
                "`miniupnpd` not found (Debian package miniupnpd-nftables)".into(),
            ));
        };
        let host = router_host(router);
        self.check(host)?;
        let ns = self.namespace(host);
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&upnp_tables()),
        )?;
        let mut daemon = UpnpDaemon {
            lab: self,
            router,
            process: None,
        };
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&upnp_holes(
                [self.server_ip(0), self.server_ip(1)],
                self.wan_ip(router),
                stun,
            )),
        )?;
        let role = host.role();
        let conf = self.dir().join(format!("miniupnpd-{role}.conf"));
        let pidfile = self.dir().join(format!("miniupnpd-{role}.pid"));
        std::fs::write(&conf, upnp_config(router, stun))?;
        let conf = conf.to_string_lossy().into_owned();
        let pidfile = pidfile.to_string_lossy().into_owned();
        let mut process = self.spawn(
            host,
            &binary.to_string_lossy(),
            &["-f", &conf, "-d", "-P", &pidfile],
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = process.stderr();
            let verdict = stun_verdict(&log);
            if let Some(Err(line)) = &verdict {
                return Err(LabError::Command {
                    command: format!("miniupnpd on {role}"),
                    code: None,
                    stderr: format!("STUN check refuses port forwarding: {line}\n{log}"),
                });
            }
            let listening = log.contains("HTTP listening on port");
            if verdict.is_some() && listening {
                break;
            }
            if !process.is_running() {
                return Err(LabError::Command {
                    command: format!("miniupnpd on {role}"),
                    code: None,
                    stderr: format!("exited during start-up: {}", process.stderr()),
                });
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout {
                    command: format!("miniupnpd on {role} start-up (log so far: {log})"),
                    timeout: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon.process = Some(process);
        Ok(daemon)
    }
}

impl UpnpDaemon<'_> {
    /// The router it runs on.
    pub fn router(&self) -> Router {
        self.router
    }

    /// miniupnpd's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, LabProcess::pid)
    }

    /// miniupnpd's log so far (its stderr).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(LabProcess::stderr)
            .unwrap_or_default()
    }

    /// The current content of miniupnpd's NAT table (`nft list table inet
    /// natlab_upnp_nat`): one `dnat` rule per active mapping.
    pub fn nat_rules(&self) -> Result<String, LabError> {
        let ns = self.lab.namespace(router_host(self.router));
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "nft",
                "list",
                "table",
                "inet",
                UPNP_NAT_TABLE,
            ],
            None,
        )
    }

    /// Stops miniupnpd and removes its tables and the holes (see the module docs).
    pub fn stop(mut self) -> Result<(), LabError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), LabError> {
        if let Some(mut process) = self.process.take() {
            if process.is_running() {
                let pid = process.pid().to_string();
                let _ = run_output("kill", &["-TERM", &pid], None, Duration::from_secs(5));
                let deadline = Instant::now() + Duration::from_secs(3);
                while process.is_running() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            process.kill();
        }
        let ns = self.lab.namespace(router_host(self.router));
        let mut first_error = None;
        for table in [UPNP_TABLE, UPNP_NAT_TABLE] {
            let out = run_output(
                "ip",
                &[
                    "netns", "exec", &ns, "nft", "delete", "table", "inet", table,
                ],
                None,
                Duration::from_secs(10),
            )?;
            if !out.success() && !out.stderr.contains("No such file") {
                first_error.get_or_insert(LabError::Command {
                    command: format!("nft delete table inet {table}"),
                    code: out.code,
                    stderr: out.stderr,
                });
            }
        }
        for chain in ["input", "postrouting", "forward"] {
            let listing = run(
                "ip",
                &[
                    "netns", "exec", &ns, "nft", "-a", "list", "chain", "ip", "natlab", chain,
                ],
                None,
            )?;
            for line in listing.lines().filter(|l| l.contains(HOLE_COMMENT)) {
                let Some(handle) = line.rsplit("# handle ").next() else {
                    continue;
                };
                let handle = handle.trim();
                if handle.parse::<u64>().is_err() {
                    continue;
                }
                if let Err(e) = run(
                    "ip",
                    &[
                        "netns", "exec", &ns, "nft", "delete", "rule", "ip", "natlab", chain,
                        "handle", handle,
                    ],
                    None,
                ) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for UpnpDaemon<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("natlab: stopping miniupnpd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn stun() -> UpnpStun {
        UpnpStun {
            server: "198.18.0.1:3478".parse().unwrap(),
            alt_port: 3479,
        }
    }

    #[test]
    fn config_and_rules_name_the_lab() {
        let conf = upnp_config(Router::A, stun());
        assert!(conf.contains("ext_ifname=wan0\n"));
        assert!(conf.contains("ext_stun_host=198.18.0.1\next_stun_port=3478\n"));
        assert!(conf.contains("allow 1024-65535 10.1.0.0/24 1024-65535\n"));
        assert!(conf.contains("upnp_nat_table_name=natlab_upnp_nat\n"));
        let holes = upnp_holes(
            [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)],
            Ipv4Addr::new(198, 18, 0, 10),
            stun(),
        );
        assert!(
            holes.contains("postrouting oifname \"wan0\" ip saddr 198.18.0.10"),
            "{holes}"
        );
        assert!(holes.contains("udp sport { 3478, 3479 }"), "{holes}");
        assert!(holes.contains("ct status dnat accept"));
        let tables = upnp_tables();
        assert!(tables.contains("chain upnp_prerouting"));
        assert!(!tables.contains("policy drop"));
    }

    #[test]
    fn stun_verdicts() {
        assert_eq!(stun_verdict("starting\n"), None);
        assert_eq!(
            stun_verdict("STUN: ext interface wan0 with private IP address 198.18.0.10 is now behind unrestricted full-cone NAT 1:1 with public IP address 198.18.0.10 and firewall does not block incoming connections set by miniunnpd\n"),
            Some(Ok(()))
        );
        assert!(matches!(
            stun_verdict("STUN: ext interface wan0 with private IP address 198.18.0.10 is now behind restrictive or symmetric NAT with public IP address 1.2.3.4 which does not support port forwarding\n"),
            Some(Err(_))
        ));
    }
}
