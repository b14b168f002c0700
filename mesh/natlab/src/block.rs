//! Blocking one path at a router while others keep working, as a firewall rule or a
//! broken route would: the relay tests block the direct path between two peers and later
//! lift the block, while the path to the server (and a relay on it) stays open.
//!
//! Steps:
//! 1. [`Lab::block_peer`] makes sure the router has the `ip natlab_block` table: a set of
//!    blocked addresses and a forward chain at priority `filter - 10` (before the NAT
//!    table's own forward rules) that drops every forwarded packet from or to an address
//!    in the set, established flows included, then adds the address to the set.
//! 2. [`Lab::unblock_peer`] removes the address; packets flow again at once (the NAT
//!    mappings and conntrack entries were never touched).

use std::net::Ipv4Addr;

use crate::cmd::run;
use crate::{Lab, LabError, Router};

const TABLE: &str = "table ip natlab_block {\n\
    \x20   set peers {\n\
    \x20       type ipv4_addr\n\
    \x20   }\n\
    \x20   chain forward {\n\
    \x20       type filter hook forward priority filter - 10; policy accept;\n\
    \x20       ip saddr @peers drop\n\
    \x20       ip daddr @peers drop\n\
    \x20   }\n\
    }\n";

impl Lab {
    /// Drops everything `router` forwards from or to `peer` (an address on the lab
    /// internet), both ways, until [`Lab::unblock_peer`]. Idempotent.
    pub fn block_peer(&self, router: Router, peer: Ipv4Addr) -> Result<(), LabError> {
        let ns = self.router_namespace(router)?;
        // `nft -f` with a table definition adds what is missing and keeps what exists.
        run("ip", &["netns", "exec", &ns, "nft", "-f", "-"], Some(TABLE))?;
        let element = format!("{{ {peer} }}");
        let args = [
            "netns",
            "exec",
            &ns,
            "nft",
            "add",
            "element",
            "ip",
            "natlab_block",
            "peers",
            &element,
        ];
        run("ip", &args, None).map(drop)
    }

    /// Lets `router` forward traffic from and to `peer` again. Unblocking an address that
    /// was not blocked is not an error.
    pub fn unblock_peer(&self, router: Router, peer: Ipv4Addr) -> Result<(), LabError> {
        let ns = self.router_namespace(router)?;
        run("ip", &["netns", "exec", &ns, "nft", "-f", "-"], Some(TABLE))?;
        // Deleting an absent element fails; flushing and re-adding the others is racy, so
        // check membership first.
        let listed = run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "nft",
                "list",
                "set",
                "ip",
                "natlab_block",
                "peers",
            ],
            None,
        )?;
        let wanted = peer.to_string();
        let present = listed
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|token| token == wanted);
        if !present {
            return Ok(());
        }
        let element = format!("{{ {peer} }}");
        let args = [
            "netns",
            "exec",
            &ns,
            "nft",
            "delete",
            "element",
            "ip",
            "natlab_block",
            "peers",
            &element,
        ];
        run("ip", &args, None).map(drop)
    }
}
