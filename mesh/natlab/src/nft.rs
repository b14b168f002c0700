//! nftables rulesets for the lab routers (RFC 4787 mapping and filtering behaviours).
//!
//! Every router gets one table `ip natlab` built from these steps:
//! 1. `input`: the router itself accepts only established/related traffic from the WAN and
//!    **drops** everything else (an accepted unsolicited packet would create a conntrack
//!    entry that steals a public port and breaks endpoint-independent mapping).
//! 2. `forward`: LAN -> WAN is always allowed; WAN -> LAN only for established/related
//!    flows and for flows the prerouting chain DNATed (full-cone / restricted), or for
//!    everything when the router does no NAT.
//! 3. `postrouting`: `masquerade` (keeps the source port when free: endpoint-independent
//!    mapping, conntrack filters on the exact 5-tuple: address-and-port-dependent
//!    filtering), or `masquerade fully-random` for symmetric (address-and-port-dependent
//!    mapping).
//! 4. Full cone and restricted add a dynamic map `public port -> LAN ip . port`, written
//!    after NAT by a *filter* chain at priority srcnat + 10 (a second nat-type chain would
//!    never run: the kernel stops at the first nat chain that sets up a binding), and a prerouting `dnat` through that map for new
//!    WAN flows; restricted additionally requires `(public port, remote ip)` to be in a
//!    set that outgoing packets fill (address-dependent filtering).
//! 5. Loss: a `netdev` table on the WAN device drops `N` % of packets at ingress and at
//!    egress (the kernel has no netem; `numgen random` is the loss source). Only IPv4 is
//!    dropped: losing ARP would add whole seconds of neighbour-resolution delay and, after
//!    three lost ARP rounds, a hard "host unreachable", which is not what loss tests mean.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::NatType;

/// First public port of a [`NatType::SymmetricSequential`] router.
pub(crate) const SEQ_FIRST_PORT: u16 = 20000;
/// How many ports it cycles through.
pub(crate) const SEQ_PORTS: u16 = 1024;

/// WAN interface name on every router.
pub(crate) const WAN: &str = "wan0";
/// LAN interface name on every router.
pub(crate) const LAN: &str = "lan0";

/// The ruleset of one router (fed to `nft -f -` inside its namespace).
pub(crate) fn router_ruleset(nat: NatType, loss_percent: u8, wan_ip: Ipv4Addr) -> String {
    let mut r = String::new();
    let wan_to_lan_new = match nat {
        NatType::None => "        iifname \"wan0\" oifname \"lan0\" accept\n",
        NatType::FullCone | NatType::Restricted => {
            "        iifname \"wan0\" oifname \"lan0\" ct status dnat accept\n"
        }
        NatType::PortRestricted | NatType::Symmetric | NatType::SymmetricSequential => "",
    };
    let masquerade = match nat {
        NatType::None => String::new(),
        NatType::Symmetric => "        oifname \"wan0\" masquerade fully-random\n".into(),
        // Each new UDP flow takes the next port of one counter (a rule runs for the first
        // packet of a flow only); anything else is masqueraded. The counter goes through
        // a map: a bare `numgen` is a host-order integer, which as a port would step by
        // 256 on a little-endian machine.
        NatType::SymmetricSequential => {
            let ports: Vec<String> = (0..SEQ_PORTS)
                .map(|i| format!("{i} : {}", SEQ_FIRST_PORT + i))
                .collect();
            format!(
                "        oifname \"wan0\" meta l4proto udp snat to {wan_ip} : numgen inc mod {SEQ_PORTS} map {{ {} }}\n\
                 \x20       oifname \"wan0\" masquerade\n",
                ports.join(", ")
            )
        }
        _ => "        oifname \"wan0\" masquerade\n".into(),
    };
    let _ = write!(
        r,
        "table ip natlab {{\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority filter; policy accept;\n\
         \x20       iifname \"{WAN}\" ct state established,related accept\n\
         \x20       iifname \"{WAN}\" drop\n\
         \x20   }}\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter; policy drop;\n\
         \x20       iifname \"{LAN}\" oifname \"{WAN}\" accept\n\
         \x20       iifname \"{WAN}\" oifname \"{LAN}\" ct state established,related accept\n\
         {wan_to_lan_new}\
         \x20   }}\n\
         \x20   chain postrouting {{\n\
         \x20       type nat hook postrouting priority srcnat; policy accept;\n\
         {masquerade}\
         \x20   }}\n"
    );
    if matches!(nat, NatType::FullCone | NatType::Restricted) {
        let restricted = nat == NatType::Restricted;
        r.push_str(
            "    map eim {\n\
             \x20       type inet_service : ipv4_addr . inet_service\n\
             \x20       flags dynamic\n\
             \x20   }\n",
        );
        if restricted {
            r.push_str(
                "    set seen {\n\
                 \x20       type inet_service . ipv4_addr\n\
                 \x20       flags dynamic\n\
                 \x20   }\n",
            );
        }
        r.push_str(
            "    chain remember {\n\
             \x20       type filter hook postrouting priority srcnat + 10; policy accept;\n\
             \x20       oifname \"wan0\" ct direction original meta l4proto udp update @eim { udp sport : ct original ip saddr . ct original proto-src }\n",
        );
        if restricted {
            r.push_str(
                "        oifname \"wan0\" meta l4proto udp update @seen { udp sport . ip daddr }\n",
            );
        }
        r.push_str("    }\n");
        let condition = if restricted {
            "udp dport . ip saddr @seen "
        } else {
            ""
        };
        let _ = write!(
            r,
            "    chain inbound {{\n\
             \x20       type nat hook prerouting priority dstnat; policy accept;\n\
             \x20       iifname \"{WAN}\" meta l4proto udp {condition}dnat ip to udp dport map @eim\n\
             \x20   }}\n"
        );
    }
    r.push_str("}\n");
    if loss_percent > 0 {
        let n = loss_percent.min(100);
        let _ = write!(
            r,
            "table netdev natlab_loss {{\n\
             \x20   chain ingress {{\n\
             \x20       type filter hook ingress device \"{WAN}\" priority filter; policy accept;\n\
             \x20       meta protocol ip numgen random mod 100 < {n} drop\n\
             \x20   }}\n\
             \x20   chain egress {{\n\
             \x20       type filter hook egress device \"{WAN}\" priority filter; policy accept;\n\
             \x20       meta protocol ip numgen random mod 100 < {n} drop\n\
             \x20   }}\n\
             }}\n"
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

    #[test]
    fn rulesets_mention_their_mechanism() {
        assert!(router_ruleset(NatType::Symmetric, 0, WAN_IP).contains("fully-random"));
        assert!(!router_ruleset(NatType::None, 0, WAN_IP).contains("masquerade"));
        assert!(router_ruleset(NatType::Restricted, 0, WAN_IP).contains("@seen"));
        assert!(router_ruleset(NatType::FullCone, 0, WAN_IP).contains("@eim"));
        assert!(!router_ruleset(NatType::FullCone, 0, WAN_IP).contains("@seen"));
        assert!(router_ruleset(NatType::PortRestricted, 20, WAN_IP).contains("< 20 drop"));
        let seq = router_ruleset(NatType::SymmetricSequential, 0, WAN_IP);
        assert!(
            seq.contains("snat to 198.18.0.10 : numgen inc mod 1024 map { 0 : 20000, 1 : 20001"),
            "{seq}"
        );
    }
}
