//! IPv6 in the lab ([`crate::LabBuilder::ipv6`]): global addresses, no NAT, a stateful
//! firewall on each router, as most home routers run IPv6 next to their IPv4 NAT.
//!
//! Steps, added to the lab's own build when IPv6 is asked for:
//! 1. Sysctls: IPv6 on in every namespace, forwarding on in routers (see `lab.rs`).
//! 2. Addresses from the documentation prefix 2001:db8::/32 (RFC 3849), so nothing can leak
//!    anywhere real: the lab internet is 2001:db8::/64 (server `::1` and `::2`, router A WAN
//!    `::a`, B `::14`, C `::1e`); LAN A is 2001:db8:1::/64 (router `::1`, hosts `::b` and
//!    `::c`), LAN B 2001:db8:2::/64 (router `::1`, host `::b`), LAN C 2001:db8:3::/64.
//!    Every address is added `nodad`, so it works at once.
//! 3. Routes: the server and every router reach each LAN through its router's WAN address;
//!    LAN hosts default through their router.
//! 4. Each router's `ip6 natlab6` table: LAN to WAN forwarded, WAN to LAN only for
//!    established flows (RFC 6092's recommended simple security: outbound UDP opens a
//!    pinhole for its 5-tuple, so simultaneous probes punch through, while unsolicited
//!    packets are dropped). A router of type [`NatType::None`] forwards everything.
//!    The lab's loss rules match IPv4 only: IPv6 paths are lossless.

use std::net::Ipv6Addr;

use crate::{Host, NatType, Router};

/// The IPv6 address of `host` in a lab with IPv6.
pub(crate) fn host_ip6(host: Host) -> Ipv6Addr {
    match host {
        Host::Server => server_ip6(0),
        Host::RouterA => wan_ip6(Router::A),
        Host::RouterB => wan_ip6(Router::B),
        Host::RouterC => wan_ip6(Router::C),
        Host::LanA1 => lan_ip6(1, 0xb),
        Host::LanA2 => lan_ip6(1, 0xc),
        Host::LanB1 => lan_ip6(2, 0xb),
        Host::LanC1 => lan_ip6(3, 0xb),
    }
}

/// Address `index` (0 or 1) of the server.
pub(crate) fn server_ip6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, if index == 0 { 1 } else { 2 })
}

/// A router's WAN address.
pub(crate) fn wan_ip6(router: Router) -> Ipv6Addr {
    let last = match router {
        Router::A => 0xa,
        Router::B => 0x14,
        Router::C => 0x1e,
    };
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

fn lan_ip6(lan: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, lan, 0, 0, 0, 0, last)
}

/// The LAN number (prefix 2001:db8:N::/64) of a router.
fn lan_number(router: Router) -> u16 {
    match router {
        Router::A => 1,
        Router::B => 2,
        Router::C => 3,
    }
}

/// `ip -batch` lines for the server: its two addresses and the routes to the `routers`' LANs.
pub(crate) fn server_commands(routers: &[Router]) -> Vec<String> {
    let mut cmds = vec![
        format!("addr add {}/64 dev eth0 nodad", server_ip6(0)),
        format!("addr add {}/64 dev eth0 nodad", server_ip6(1)),
    ];
    cmds.extend(lan_routes(routers, None));
    cmds
}

/// `ip -batch` lines for a router: WAN and LAN addresses and the routes to the other LANs.
pub(crate) fn router_commands(router: Router, routers: &[Router]) -> Vec<String> {
    let n = lan_number(router);
    let mut cmds = vec![
        format!("addr add {}/64 dev wan0 nodad", wan_ip6(router)),
        format!("addr add {}/64 dev lan0 nodad", lan_ip6(n, 1)),
    ];
    cmds.extend(lan_routes(routers, Some(router)));
    cmds
}

/// `ip -batch` lines for a LAN host behind `router`.
pub(crate) fn lan_host_commands(host: Host, router: Router) -> Vec<String> {
    vec![
        format!("addr add {}/64 dev eth0 nodad", host_ip6(host)),
        format!("route add ::/0 via {}", lan_ip6(lan_number(router), 1)),
    ]
}

fn lan_routes(routers: &[Router], except: Option<Router>) -> impl Iterator<Item = String> + '_ {
    routers
        .iter()
        .filter(move |r| Some(**r) != except)
        .map(|r| {
            format!(
                "route add 2001:db8:{:x}::/64 via {}",
                lan_number(*r),
                wan_ip6(*r)
            )
        })
}

/// The router's IPv6 firewall (step 4), for `nft -f -`.
pub(crate) fn firewall_ruleset(nat: NatType) -> String {
    let inbound = if nat == NatType::None {
        "        iifname \"wan0\" oifname \"lan0\" accept\n"
    } else {
        "        iifname \"wan0\" oifname \"lan0\" ct state established,related accept\n"
    };
    format!(
        "table ip6 natlab6 {{\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter; policy drop;\n\
         \x20       iifname \"lan0\" oifname \"wan0\" accept\n\
         {inbound}\
         \x20   }}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_documentation_addresses() {
        for host in Host::ALL {
            let ip = host_ip6(host);
            assert_eq!(ip.segments()[..2], [0x2001, 0xdb8], "{host:?}");
        }
        assert_eq!(host_ip6(Host::LanB1).to_string(), "2001:db8:2::b");
    }

    #[test]
    fn routes_skip_the_routers_own_lan() {
        let cmds = router_commands(Router::A, &[Router::A, Router::B]);
        assert!(cmds
            .iter()
            .any(|c| c.contains("2001:db8:2::/64 via 2001:db8::14")));
        assert!(!cmds.iter().any(|c| c.contains("2001:db8:1::/64 via")));
    }

    #[test]
    fn only_a_plain_router_lets_unsolicited_packets_in() {
        assert!(firewall_ruleset(NatType::Symmetric).contains("ct state established"));
        assert!(!firewall_ruleset(NatType::None).contains("ct state"));
    }
}
