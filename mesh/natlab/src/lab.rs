//! Building, using and tearing down one lab instance (the topology RFC 5780 discovery
//! needs: a server with two public addresses, RFC 4787 NATs in front of the LANs).
//!
//! [`LabBuilder::build`] runs these steps (each command bounded by a deadline):
//! 1. [`crate::preflight`], then removal of dead runs' leftovers (see `cleanup.rs`).
//! 2. A unique prefix `nlab-<pid>-<counter>[-<label>]`; the [`Lab`] value exists from here
//!    on, so a failure in any later step still deletes what was created (Drop).
//! 3. One namespace per [`Host`] plus the switch `-sw`; sysctls: IPv6 off, `rp_filter` 0,
//!    `ip_forward` 1 on routers only.
//! 4. Bridges `inet`, `lana`, `lanb` in the switch; one veth per host, the host end named
//!    `eth0` (routers: `wan0` and `lan0`) created directly inside the host namespace.
//! 5. Addresses and routes (`ip -batch`); LAN hosts default via their router. A router of
//!    type [`NatType::None`] gets its LAN routed from the server and the other router.
//! 6. Router rulesets with `nft -f -` and a `conntrack -F`.
//!
//! A watchdog process (see `cleanup.rs`) removes the namespaces if this process dies
//! without dropping the lab (Ctrl-C, SIGKILL, a CI timeout).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::cleanup::{remove_leftovers, remove_namespace, spawn_watchdog, TAG};
use crate::cmd::{preflight, run, run_output, Output};
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
    nat: [NatType; 2],
    loss: [u8; 2],
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
            dir,
            watchdog: None,
        };
        let mut names = vec![format!("{}-sw", lab.prefix)];
        names.extend(Host::ALL.iter().map(|h| lab.namespace(*h)));
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
    nat: [NatType; 2],
    loss: [u8; 2],
    dir: tempfile::TempDir,
    watchdog: Option<std::process::Child>,
}

fn router_index(router: Router) -> usize {
    match router {
        Router::A => 0,
        Router::B => 1,
    }
}

fn router_host(router: Router) -> Host {
    match router {
        Router::A => Host::RouterA,
        Router::B => Host::RouterB,
    }
}

impl Lab {
    /// A builder with both routers [`NatType::None`] and no loss.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            label: None,
            nat: [NatType::None; 2],
            loss: [0; 2],
        }
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
        }
    }

    /// The behaviour a router currently has.
    pub fn nat(&self, router: Router) -> NatType {
        self.nat[router_index(router)]
    }

    /// Starts `program args` inside `host`; the process is killed when the handle drops
    /// (and at the latest when the lab drops).
    pub fn spawn(&self, host: Host, program: &str, args: &[&str]) -> Result<LabProcess, LabError> {
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
        let ns = self.namespace(host);
        let mut full = vec!["netns", "exec", &ns, program];
        full.extend_from_slice(args);
        run_output("ip", &full, None, timeout)
    }

    /// Changes a router's behaviour and loss at run time and flushes its conntrack table.
    pub fn reconfigure_router(
        &mut self,
        router: Router,
        nat: NatType,
        loss_percent: u8,
    ) -> Result<(), LabError> {
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
        let ns = self.namespace(router_host(router));
        // `conntrack -F` exits 0 even on an empty table; stderr carries its summary.
        run("ip", &["netns", "exec", &ns, "conntrack", "-F"], None).map(drop)
    }

    fn load_router(&self, router: Router) -> Result<(), LabError> {
        let i = router_index(router);
        let ns = self.namespace(router_host(router));
        let rules = router_ruleset(self.nat[i], self.loss[i]);
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
        let mut args = vec![
            "netns",
            "exec",
            &name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        args.push(if router {
            "net.ipv4.ip_forward=1"
        } else {
            "net.ipv4.ip_forward=0"
        });
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
        for host in Host::ALL {
            let router = matches!(host, Host::RouterA | Host::RouterB);
            self.add_namespace(self.namespace(host), router)?;
        }
        // (switch port, bridge, host, device in host)
        let ports = [
            ("srv", "inet", Host::Server, "eth0"),
            ("ra_w", "inet", Host::RouterA, "wan0"),
            ("rb_w", "inet", Host::RouterB, "wan0"),
            ("ra_l", "lana", Host::RouterA, "lan0"),
            ("rb_l", "lanb", Host::RouterB, "lan0"),
            ("a1", "lana", Host::LanA1, "eth0"),
            ("a2", "lana", Host::LanA2, "eth0"),
            ("b1", "lanb", Host::LanB1, "eth0"),
        ];
        let mut sw_cmds = vec!["link set dev lo up".to_string()];
        for br in ["inet", "lana", "lanb"] {
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

        let a_lan = "10.1.0.0/24";
        let b_lan = "10.2.0.0/24";
        let wan_a = self.wan_ip(Router::A);
        let wan_b = self.wan_ip(Router::B);
        let (none_a, none_b) = (self.nat[0] == NatType::None, self.nat[1] == NatType::None);
        let mut server = vec![
            format!("addr add {}/15 dev eth0", SERVER_IPS[0]),
            format!("addr add {}/15 dev eth0", SERVER_IPS[1]),
        ];
        let mut ra = vec![
            format!("addr add {wan_a}/15 dev wan0"),
            "addr add 10.1.0.1/24 dev lan0".to_string(),
        ];
        let mut rb = vec![
            format!("addr add {wan_b}/15 dev wan0"),
            "addr add 10.2.0.1/24 dev lan0".to_string(),
        ];
        if none_a {
            server.push(format!("route add {a_lan} via {wan_a}"));
            rb.push(format!("route add {a_lan} via {wan_a}"));
        }
        if none_b {
            server.push(format!("route add {b_lan} via {wan_b}"));
            ra.push(format!("route add {b_lan} via {wan_b}"));
        }
        let lan = |ip: Ipv4Addr, gw: &str| {
            vec![
                format!("addr add {ip}/24 dev eth0"),
                format!("route add default via {gw}"),
            ]
        };
        let plan = [
            (Host::Server, server, &["eth0"][..]),
            (Host::RouterA, ra, &["wan0", "lan0"][..]),
            (Host::RouterB, rb, &["wan0", "lan0"][..]),
            (
                Host::LanA1,
                lan(self.ip(Host::LanA1), "10.1.0.1"),
                &["eth0"][..],
            ),
            (
                Host::LanA2,
                lan(self.ip(Host::LanA2), "10.1.0.1"),
                &["eth0"][..],
            ),
            (
                Host::LanB1,
                lan(self.ip(Host::LanB1), "10.2.0.1"),
                &["eth0"][..],
            ),
        ];
        for (host, addr_cmds, devs) in plan {
            let mut cmds = vec!["link set dev lo up".to_string()];
            cmds.extend(devs.iter().map(|d| format!("link set dev {d} up")));
            cmds.extend(addr_cmds);
            self.batch(&self.namespace(host), &cmds)?;
        }
        self.load_router(Router::A)?;
        self.load_router(Router::B)?;
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
