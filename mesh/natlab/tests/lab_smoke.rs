//! Smoke tests of the NAT lab harness itself (need root: they build real namespaces).

use std::time::Duration;

use natlab::{Host, Lab, NatType, Router};

fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output();
    String::from_utf8_lossy(&out.expect("ip netns list").stdout).into_owned()
}

#[test]
fn builds_every_type_and_removes_namespaces_on_drop() {
    if natlab::skip_requested("builds_every_type_and_removes_namespaces_on_drop") {
        return;
    }
    let prefixes: Vec<String> = NatType::ALL
        .iter()
        .map(|&nat| {
            let lab = Lab::builder()
                .label("smoke")
                .router_a(nat)
                .router_b(nat)
                .loss_b(10)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            let out = lab
                .run(
                    Host::LanA1,
                    "ip",
                    &["-4", "addr", "show", "dev", "eth0"],
                    Duration::from_secs(5),
                )
                .expect("ip addr in LAN host");
            assert!(out.stdout.contains("10.1.0.11/24"), "{}", out.stdout);
            let rules = lab
                .run(
                    Host::RouterB,
                    "nft",
                    &["list", "ruleset"],
                    Duration::from_secs(5),
                )
                .expect("nft list");
            assert!(
                rules.stdout.contains("numgen random mod 100 < 10"),
                "{}",
                rules.stdout
            );
            assert_eq!(lab.nat(Router::A), nat);
            lab.prefix().to_string()
        })
        .collect();
    let list = namespaces();
    for prefix in prefixes {
        assert!(!list.contains(&prefix), "{prefix} still present: {list}");
    }
}

#[test]
fn build_removes_leftovers_of_dead_runs_only() {
    if natlab::skip_requested("build_removes_leftovers_of_dead_runs_only") {
        return;
    }
    // A pid that has certainly exited: a child we started and reaped.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait true");
    let leftover = format!("nlab-{dead}-0-leftover-srv");
    let foreign = format!("natlabtest-foreign-{}", std::process::id());
    for ns in [&leftover, &foreign] {
        let status = std::process::Command::new("ip")
            .args(["netns", "add", ns])
            .status();
        assert!(status.expect("ip netns add").success());
    }
    let lab = Lab::builder()
        .label("leftover")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let list = namespaces();
    let _ = std::process::Command::new("ip")
        .args(["netns", "delete", &foreign])
        .status();
    assert!(
        !list.contains(&leftover),
        "leftover of dead pid {dead} not removed: {list}"
    );
    assert!(
        list.contains(&foreign),
        "a namespace the lab did not create was touched: {list}"
    );
    assert!(
        list.contains(lab.prefix()),
        "the lab's own namespaces are missing: {list}"
    );
}

#[test]
fn reconfigure_router_replaces_the_ruleset() {
    if natlab::skip_requested("reconfigure_router_replaces_the_ruleset") {
        return;
    }
    let mut lab = Lab::builder()
        .label("reconf")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    lab.reconfigure_router(Router::A, NatType::Symmetric, 30)
        .expect("reconfigure");
    let rules = lab
        .run(
            Host::RouterA,
            "nft",
            &["list", "ruleset"],
            Duration::from_secs(5),
        )
        .expect("nft list");
    assert!(rules.stdout.contains("fully-random"), "{}", rules.stdout);
    assert!(rules.stdout.contains("< 30 drop"), "{}", rules.stdout);
    assert_eq!(lab.nat(Router::A), NatType::Symmetric);
    lab.reconfigure_router(Router::A, NatType::FullCone, 0)
        .expect("reconfigure again");
    let rules = lab
        .run(
            Host::RouterA,
            "nft",
            &["list", "ruleset"],
            Duration::from_secs(5),
        )
        .expect("nft list");
    assert!(!rules.stdout.contains("fully-random") && rules.stdout.contains("@eim"));
    assert!(!rules.stdout.contains("natlab_loss"), "{}", rules.stdout);
}

/// Not a test on its own: the child process of `killed_process_leaves_no_namespaces`
/// (does nothing unless `NATLAB_HOLD=1`).
#[test]
fn helper_hold_lab_until_killed() {
    if std::env::var("NATLAB_HOLD").as_deref() != Ok("1") {
        return;
    }
    let lab = Lab::builder()
        .label("hold")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let _sleeper = lab
        .spawn(Host::Server, "sleep", &["60"])
        .expect("spawn sleep");
    println!("PREFIX {}", lab.prefix());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn killed_process_leaves_no_namespaces() {
    use std::io::{BufRead, BufReader};
    if natlab::skip_requested("killed_process_leaves_no_namespaces") {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "helper_hold_lab_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NATLAB_HOLD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(prefix) = line.split("PREFIX ").nth(1) {
                let _ = tx.send(prefix.to_string());
            }
        }
    });
    let prefix = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("helper printed its prefix");
    assert!(namespaces().contains(&prefix));
    child.kill().expect("SIGKILL the helper");
    child.wait().expect("reap helper");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while namespaces().contains(&prefix) {
        assert!(
            std::time::Instant::now() < deadline,
            "watchdog did not remove {prefix}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn router_c_is_built_on_request_and_natted() {
    if natlab::skip_requested("router_c_is_built_on_request_and_natted") {
        return;
    }
    let without = Lab::builder()
        .label("noc")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!without.has_router_c());
    assert!(
        !namespaces().contains(&without.namespace(Host::LanC1)),
        "router C's hosts exist in a lab that did not ask for them"
    );
    let err = without
        .run(Host::LanC1, "true", &[], Duration::from_secs(5))
        .expect_err("no C1 without router C");
    assert!(
        matches!(err, natlab::LabError::Absent(Host::LanC1)),
        "{err}"
    );
    drop(without);

    let lab = Lab::builder()
        .label("routerc")
        .router_a(NatType::FullCone)
        .router_c(NatType::PortRestricted)
        .loss_c(10)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(lab.has_router_c());
    assert_eq!(lab.nat(Router::C), NatType::PortRestricted);
    assert_eq!(lab.ip(Host::LanC1).to_string(), "10.3.0.11");
    let out = lab
        .run(
            Host::LanC1,
            "ip",
            &["-4", "addr", "show", "dev", "eth0"],
            Duration::from_secs(5),
        )
        .expect("ip addr in C1");
    assert!(out.stdout.contains("10.3.0.11/24"), "{}", out.stdout);
    let rules = lab
        .run(
            Host::RouterC,
            "nft",
            &["list", "ruleset"],
            Duration::from_secs(5),
        )
        .expect("nft list on router C");
    assert!(
        rules.stdout.contains("masquerade") && rules.stdout.contains("numgen random mod 100 < 10"),
        "{}",
        rules.stdout
    );
    // A UDP datagram from C1 to the server leaves through router C's NAT: conntrack shows
    // the LAN source and the reply towards router C's WAN address (the entry exists before
    // the WAN's loss applies).
    let send = format!("echo natlab >/dev/udp/{}/9", lab.server_ip(0));
    let out = lab
        .run(Host::LanC1, "bash", &["-c", &send], Duration::from_secs(5))
        .expect("udp from C1");
    assert!(out.success(), "send from C1: {}", out.stderr);
    let nat = lab
        .run(
            Host::RouterC,
            "conntrack",
            &["-L", "-p", "udp"],
            Duration::from_secs(5),
        )
        .expect("conntrack on router C");
    let table = format!("{}{}", nat.stdout, nat.stderr);
    assert!(
        table.contains("src=10.3.0.11")
            && table.contains(&format!("dst={} ", lab.wan_ip(Router::C))),
        "C1's datagram is not masqueraded to router C's WAN: {table}"
    );
    lab.flush_conntrack(Router::C).expect("flush C");
    let prefix = lab.prefix().to_string();
    drop(lab);
    assert!(!namespaces().contains(&prefix), "{prefix} still present");
}

#[test]
fn ipv6_is_routed_without_nat_behind_a_stateful_firewall() {
    if natlab::skip_requested("ipv6_is_routed_without_nat_behind_a_stateful_firewall") {
        return;
    }
    let lab = Lab::builder()
        .label("ipv6")
        .router_a(NatType::Symmetric)
        .router_b(NatType::None)
        .ipv6()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let ip6 = |host| lab.ip6(host).expect("lab with IPv6").to_string();
    assert_eq!(ip6(Host::LanA1), "2001:db8:1::b");
    let ping = |from, to: String| {
        lab.run(
            from,
            "ping",
            &["-6", "-c", "1", "-W", "2", &to],
            Duration::from_secs(5),
        )
        .expect("ping")
        .success()
    };
    // Outbound from behind the firewall, and unsolicited into a router without NAT.
    assert!(ping(Host::LanA1, ip6(Host::Server)), "A1 -> server");
    assert!(ping(Host::LanA1, ip6(Host::LanB1)), "A1 -> B1");
    // Unsolicited into a firewalled LAN: dropped.
    assert!(!ping(Host::Server, ip6(Host::LanA1)), "server -> A1 got in");
    // The address a LAN host has is global and its own: no NAT.
    let out = lab
        .run(
            Host::LanA1,
            "ip",
            &["-6", "addr", "show", "dev", "eth0", "scope", "global"],
            Duration::from_secs(5),
        )
        .expect("ip addr");
    assert!(out.stdout.contains("2001:db8:1::b/64"), "{}", out.stdout);
    // A lab without IPv6 has none.
    let plain = Lab::builder()
        .label("noipv6")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plain.ip6(Host::LanA1), None);
}

#[test]
fn a_blocked_peer_is_cut_off_and_comes_back_while_the_server_stays_reachable() {
    if natlab::skip_requested(
        "a_blocked_peer_is_cut_off_and_comes_back_while_the_server_stays_reachable",
    ) {
        return;
    }
    let lab = Lab::builder()
        .label("block")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let ping = |to: std::net::Ipv4Addr| {
        lab.run(
            Host::LanA1,
            "ping",
            &["-c", "1", "-W", "1", &to.to_string()],
            Duration::from_secs(5),
        )
        .expect("ping")
        .success()
    };
    // Routers without NAT: B1 is reachable from A1 by its own address.
    let b1 = lab.ip(Host::LanB1);
    let server = lab.server_ip(0);
    assert!(ping(b1) && ping(server), "reachable before the block");
    lab.block_peer(Router::A, b1).expect("block");
    lab.block_peer(Router::A, b1)
        .expect("blocking twice is fine");
    assert!(!ping(b1), "B1 still reachable through a block");
    assert!(ping(server), "the server must stay reachable");
    lab.unblock_peer(Router::A, b1).expect("unblock");
    lab.unblock_peer(Router::A, b1)
        .expect("unblocking twice is fine");
    assert!(ping(b1), "B1 unreachable after the block was lifted");
}
