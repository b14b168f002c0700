//! Building, using and tearing down one lab instance (the topology RFC 5780 discovery
//! needs: a server with two public addresses, RFC 4787 NATs in front of the LANs).
//!
//! [`LabBuilder::build`] runs these steps (each command bounded by a deadline):
//! 1. [`crate::preflight`], then removal of dead runs' leftovers (see `cleanup.rs`).
//! 2. A unique prefix `nlab-<pid>-<counter>[-<label>]`; the [`Lab`] value exists from here
//!    on, so a failure in any later step still deletes what was created (Drop).
//! 3. One namespace per [`Host`] plus the switch `-sw` (router C and host C1 only when the
//!    builder configured router C); sysctls: IPv6 off (on with [`LabBuilder::ipv6`]),
//!    `rp_filter` 0, forwarding on routers only.
//! 4. Bridges `inet`, `lana`, `lanb` (and `lanc`) in the switch; one veth per host, the
//!    host end named `eth0` (routers: `wan0` and `lan0`) created directly inside the host
//!    namespace.
//! 5. Addresses and routes (`ip -batch`); LAN hosts default via their router. A router of
//!    type [`NatType::None`] gets its LAN routed from the server and the other routers.
//!    With IPv6, every host also gets a global IPv6 address and routes (see `ipv6.rs`).
//! 6. Router rulesets with `nft -f -` and a `conntrack -F`.
//!
//! A watchdog process (see `cleanup.rs`) removes the namespaces if this process dies
//! without dropping the lab (Ctrl-C, SIGKILL, a CI timeout).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::cleanup::{remove_leftovers, remove_namespace, spawn_watchdog, TAG};
use crate::cmd::{preflight, run, run_output, Output};
use crate::ipv6;
use crate::nft::router_ruleset;
use crate::process::LabProcess;
use crate::{Host, LabError, NatType, Router};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The two public addresses of the server host.
const SERVER_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];

/// Configuration of a lab; see [`Lab::builder`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    label: Option<String>,
    nat: [NatType; 3],
    loss: [u8; 3],
    /// Whether router C and host C1 are created.
    c: bool,
    /// Whether the lab has IPv6 (see `ipv6.rs`).
    ipv6: bool,
}

impl LabBuilder {
    /// A human-readable label added to the namespace names (letters, digits and `_` kept,
    /// at most 12 characters).
    pub fn label(mut self, label: &str) -> Self {
        let clean: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(12)
            .collect();
        self.label = (!clean.is_empty()).then_some(clean);
        self
    }

    /// Behaviour of router A.
    pub fn router_a(mut self, nat: NatType) -> Self {
        self.nat[0] = nat;
        self
    }

    /// Behaviour of router B.
    pub fn router_b(mut self, nat: NatType) -> Self {
        self.nat[1] = nat;
        self
    }

    /// Behaviour of router C; configuring it (or [`LabBuilder::loss_c`]) is what creates
    /// router C and host C1 (other labs do without their setup time).
    pub fn router_c(mut self, nat: NatType) -> Self {
        self.nat[2] = nat;
        self.c = true;
        self
    }

    /// Packet loss in percent on router A's WAN link (each direction).
    pub fn loss_a(mut self, percent: u8) -> Self {
        self.loss[0] = percent.min(100);
        self
    }

    /// Packet loss in percent on router B's WAN link (each direction).
    pub fn loss_b(mut self, percent: u8) -> Self {
        self.loss[1] = percent.min(100);
        self
    }

    /// Packet loss in percent on router C's WAN link (each direction); creates router C
    /// (of type [`NatType::None`] unless [`LabBuilder::router_c`] says otherwise).
    pub fn loss_c(mut self, percent: u8) -> Self {
        self.loss[2] = percent.min(100);
        self.c = true;
        self
    }

    /// Adds IPv6: global addresses on every host, no NAT for IPv6, and a stateful firewall
    /// on each router (see [`Lab::ip6`]). Without it IPv6 is off in every namespace.
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// Builds the lab (needs root); see the module docs for the steps.
    pub fn build(self) -> Result<Lab, LabError> {
        preflight()?;
        remove_leftovers()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut prefix = format!("{TAG}{}-{n}", std::process::id());
        if let Some(label) = &self.label {
            prefix = format!("{prefix}-{label}");
        }
        let dir = tempfile::Builder::new().prefix("natlab-").tempdir()?;
        let mut lab = Lab {
            prefix,
            created: Vec::new(),
            nat: self.nat,
            loss: self.loss,
            c: self.c,
            ipv6: self.ipv6,
            dir,
            watchdog: None,
        };
        let mut names = vec![format!("{}-sw", lab.prefix)];
        names.extend(lab.hosts().map(|h| lab.namespace(h)));
        lab.watchdog = Some(spawn_watchdog(&names)?);
        lab.create()?;
        Ok(lab)
    }
}

/// A running lab instance; dropping it kills its processes and deletes its namespaces.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    created: Vec<String>,
    nat: [NatType; 3],
    loss: [u8; 3],
    c: bool,
    ipv6: bool,
    dir: tempfile::TempDir,
    watchdog: Option<std::process::Child>,
}

fn router_index(router: Router) -> usize {
    match router {
        Router::A => 0,
        Router::B => 1,
        Router::C => 2,
    }
}

fn router_host(router: Router) -> Host {
    match router {
        Router::A => Host::RouterA,
        Router::B => Host::RouterB,
        Router::C => Host::RouterC,
    }
}

impl Lab {
    /// A builder with routers A and B [`NatType::None`], no loss, and no router C.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            label: None,
            nat: [NatType::None; 3],
            loss: [0; 3],
            c: false,
            ipv6: false,
        }
    }

    /// Whether this lab has router C and host C1.
    pub fn has_router_c(&self) -> bool {
        self.c
    }

    /// The hosts this lab has, in creation order.
    pub fn hosts(&self) -> impl Iterator<Item = Host> + '_ {
        Host::ALL.into_iter().filter(|h| self.c || !h.is_c())
    }

    /// `Err(LabError::Absent)` for a host of router C in a lab without it.
    pub(crate) fn check(&self, host: Host) -> Result<(), LabError> {
        if host.is_c() && !self.c {
            return Err(LabError::Absent(host));
        }
        Ok(())
    }

    /// The unique name prefix of this instance's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace name of `host`.
    pub fn namespace(&self, host: Host) -> String {
        format!("{}-{}", self.prefix, host.role())
    }

    /// A temporary directory owned by the lab (config files, databases); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Public address `index` (0 or 1) of the server; other values give address 1.
    pub fn server_ip(&self, index: usize) -> Ipv4Addr {
        SERVER_IPS[index.min(1)]
    }

    /// WAN (public) address of a router: what peers behind it look like from outside.
    pub fn wan_ip(&self, router: Router) -> Ipv4Addr {
        match router {
            Router::A => Ipv4Addr::new(198, 18, 0, 10),
            Router::B => Ipv4Addr::new(198, 18, 0, 20),
            Router::C => Ipv4Addr::new(198, 18, 0, 30),
        }
    }

    /// The (first) address of `host`: server address 0, a router's WAN address, or a LAN
    /// host's private address.
    pub fn ip(&self, host: Host) -> Ipv4Addr {
        match host {
            Host::Server => SERVER_IPS[0],
            Host::RouterA => self.wan_ip(Router::A),
            Host::RouterB => self.wan_ip(Router::B),
            Host::LanA1 => Ipv4Addr::new(10, 1, 0, 11),
            Host::LanA2 => Ipv4Addr::new(10, 1, 0, 12),
            Host::LanB1 => Ipv4Addr::new(10, 2, 0, 11),
            Host::RouterC => self.wan_ip(Router::C),
            Host::LanC1 => Ipv4Addr::new(10, 3, 0, 11),
        }
    }

    /// The IPv6 address of `host` (documentation prefix 2001:db8::/32), or `None` in a lab
    /// built without [`LabBuilder::ipv6`].
    pub fn ip6(&self, host: Host) -> Option<Ipv6Addr> {
        self.ipv6.then(|| ipv6::host_ip6(host))
    }

    /// The behaviour a router currently has.
    pub fn nat(&self, router: Router) -> NatType {
        self.nat[router_index(router)]
    }

    /// Starts `program args` inside `host`; the process is killed when the handle drops
    /// (and at the latest when the lab drops).
    pub fn spawn(&self, host: Host, program: &str, args: &[&str]) -> Result<LabProcess, LabError> {
        self.check(host)?;
        let ns = self.namespace(host);
        let name = format!("[{}] {program} {}", host.role(), args.join(" "));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Spawn {
                command: name.clone(),
                source: e,
            })?;
        Ok(LabProcess::new(name, child))
    }

    /// A [`Command`] that runs `program` inside `host` (`ip netns exec NS program`), for
    /// callers that manage the process themselves (e.g. with `tokio::process`). Whatever
    /// still runs in the lab's namespaces is killed when the lab drops.
    pub fn command(&self, host: Host, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(host), program]);
        command
    }

    /// Runs `program args` inside `host` to completion, at most `timeout`.
    pub fn run(
        &self,
        host: Host,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, LabError> {
        self.check(host)?;
        let ns = self.namespace(host);
        let mut full = vec!["netns", "exec", &ns, program];
        full.extend_from_slice(args);
        run_output("ip", &full, None, timeout)
    }

    /// The namespace of `router`'s host (`Err(Absent)` for router C in a lab without it).
    pub(crate) fn router_namespace(&self, router: Router) -> Result<String, LabError> {
        self.check(router_host(router))?;
        Ok(self.namespace(router_host(router)))
    }

    /// Changes a router's behaviour and loss at run time and flushes its conntrack table.
    pub fn reconfigure_router(
        &mut self,
        router: Router,
        nat: NatType,
        loss_percent: u8,
    ) -> Result<(), LabError> {
        self.check(router_host(router))?;
        let ns = self.namespace(router_host(router));
        let tables = run("ip", &["netns", "exec", &ns, "nft", "list", "tables"], None)?;
        for table in ["ip natlab", "netdev natlab_loss"] {
            if tables.lines().any(|l| l.trim() == format!("table {table}")) {
                let mut args = vec!["netns", "exec", &ns, "nft", "delete", "table"];
                args.extend(table.split(' '));
                run("ip", &args, None)?;
            }
        }
        self.nat[router_index(router)] = nat;
        self.loss[router_index(router)] = loss_percent.min(100);
        self.load_router(router)
    }

    /// Flushes the conntrack table of a router (forgets all NAT mappings).
    pub fn flush_conntrack(&self, router: Router) -> Result<(), LabError> {
        self.check(router_host(router))?;
        let ns = self.namespace(router_host(router));
        // `conntrack -F` exits 0 even on an empty table; stderr carries its summary.
        run("ip", &["netns", "exec", &ns, "conntrack", "-F"], None).map(drop)
    }

    fn load_router(&self, router: Router) -> Result<(), LabError> {
        let i = router_index(router);
        let ns = self.namespace(router_host(router));
        let mut rules = router_ruleset(self.nat[i], self.loss[i], self.wan_ip(router));
        if self.ipv6 {
            rules.push_str(&ipv6::firewall_ruleset(self.nat[i]));
        }
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&rules),
        )?;
        self.flush_conntrack(router)
    }

    fn add_namespace(&mut self, name: String, router: bool) -> Result<(), LabError> {
        run("ip", &["netns", "add", &name], None)?;
        self.created.push(name.clone());
        let v6 = if self.ipv6 { "0" } else { "1" };
        let forward = if router { "1" } else { "0" };
        let settings = [
            format!("net.ipv6.conf.all.disable_ipv6={v6}"),
            format!("net.ipv6.conf.default.disable_ipv6={v6}"),
            "net.ipv4.conf.all.rp_filter=0".to_string(),
            "net.ipv4.conf.default.rp_filter=0".to_string(),
            format!("net.ipv4.ip_forward={forward}"),
            format!("net.ipv6.conf.all.forwarding={forward}"),
            // No duplicate address detection: addresses (link-local ones too) work at once.
            "net.ipv6.conf.all.accept_dad=0".to_string(),
            "net.ipv6.conf.default.accept_dad=0".to_string(),
        ];
        let mut args = vec!["netns", "exec", &name, "sysctl", "-qw"];
        args.extend(settings.iter().map(String::as_str));
        run("ip", &args, None)?;
        Ok(())
    }

    fn batch(&self, ns: &str, commands: &[String]) -> Result<(), LabError> {
        let mut script = commands.join("\n");
        script.push('\n');
        run("ip", &["-n", ns, "-batch", "-"], Some(&script)).map(drop)
    }

    fn create(&mut self) -> Result<(), LabError> {
        let sw = format!("{}-sw", self.prefix);
        self.add_namespace(sw.clone(), false)?;
        let hosts: Vec<Host> = self.hosts().collect();
        for &host in &hosts {
            let router = matches!(host, Host::RouterA | Host::RouterB | Host::RouterC);
            self.add_namespace(self.namespace(host), router)?;
        }
        // (router, its router host, LAN bridge, LAN prefix, gateway) of the routers built.
        let mut routers = vec![
            (Router::A, Host::RouterA, "lana", "10.1.0.0/24", "10.1.0.1"),
            (Router::B, Host::RouterB, "lanb", "10.2.0.0/24", "10.2.0.1"),
        ];
        if self.c {
            routers.push((Router::C, Host::RouterC, "lanc", "10.3.0.0/24", "10.3.0.1"));
        }
        // (switch port, bridge, host, device in host)
        let mut ports = vec![("srv".to_string(), "inet", Host::Server, "eth0")];
        for &(_, host, br, _, _) in &routers {
            let role = host.role();
            ports.push((format!("{role}_w"), "inet", host, "wan0"));
            ports.push((format!("{role}_l"), br, host, "lan0"));
        }
        for (host, br) in [
            (Host::LanA1, "lana"),
            (Host::LanA2, "lana"),
            (Host::LanB1, "lanb"),
            (Host::LanC1, "lanc"),
        ] {
            if hosts.contains(&host) {
                ports.push((host.role().to_string(), br, host, "eth0"));
            }
        }
        let mut sw_cmds = vec!["link set dev lo up".to_string()];
        for &br in ["inet"].iter().chain(routers.iter().map(|r| &r.2)) {
            sw_cmds.push(format!("link add name {br} type bridge"));
            sw_cmds.push(format!("link set dev {br} up"));
        }
        for (port, br, host, dev) in ports {
            let ns = self.namespace(host);
            sw_cmds.push(format!(
                "link add name {port} type veth peer name {dev} netns {ns}"
            ));
            sw_cmds.push(format!("link set dev {port} master {br} up"));
        }
        self.batch(&sw, &sw_cmds)?;

        let mut server = vec![
            format!("addr add {}/15 dev eth0", SERVER_IPS[0]),
            format!("addr add {}/15 dev eth0", SERVER_IPS[1]),
        ];
        let built: Vec<Router> = routers.iter().map(|r| r.0).collect();
        if self.ipv6 {
            server.extend(ipv6::server_commands(&built));
        }
        let mut plan: Vec<(Host, Vec<String>, &[&str])> = vec![(Host::Server, server, &["eth0"])];
        for &(router, host, _, _, gw) in &routers {
            let mut cmds = vec![
                format!("addr add {}/15 dev wan0", self.wan_ip(router)),
                format!("addr add {gw}/24 dev lan0"),
            ];
            if self.ipv6 {
                cmds.extend(ipv6::router_commands(router, &built));
            }
            plan.push((host, cmds, &["wan0", "lan0"]));
        }
        // A router without NAT: its LAN is routed from the server and the other routers.
        for &(router, host, _, prefix, _) in &routers {
            if self.nat[router_index(router)] != NatType::None {
                continue;
            }
            let route = format!("route add {prefix} via {}", self.wan_ip(router));
            for (h, cmds, _) in plan.iter_mut() {
                if *h != host {
                    cmds.push(route.clone());
                }
            }
        }
        let lan = |ip: Ipv4Addr, gw: &str| {
            vec![
                format!("addr add {ip}/24 dev eth0"),
                format!("route add default via {gw}"),
            ]
        };
        for (host, gw, router) in [
            (Host::LanA1, "10.1.0.1", Router::A),
            (Host::LanA2, "10.1.0.1", Router::A),
            (Host::LanB1, "10.2.0.1", Router::B),
            (Host::LanC1, "10.3.0.1", Router::C),
        ] {
            if hosts.contains(&host) {
                let mut cmds = lan(self.ip(host), gw);
                if self.ipv6 {
                    cmds.extend(ipv6::lan_host_commands(host, router));
                }
                plan.push((host, cmds, &["eth0"]));
            }
        }
        for (host, addr_cmds, devs) in plan {
            let mut cmds = vec!["link set dev lo up".to_string()];
            cmds.extend(devs.iter().map(|d| format!("link set dev {d} up")));
            cmds.extend(addr_cmds);
            self.batch(&self.namespace(host), &cmds)?;
        }
        for (router, ..) in routers {
            self.load_router(router)?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = remove_namespace(ns) {
                eprintln!("natlab: could not remove namespace {ns}: {e}");
            }
        }
    }
}
