//! Connect-time simulation: from `connect()` to an established QUIC connection between two
//! NATed peers, entirely in simulated time, with the real sans-IO components.
//!
//! Run: `cargo bench -p punch-server --bench connect_sim` (optionally
//! `-- --rtt-ms 50 --seeds 200 --jitter-ms 2 --rtt-samples 8 --loss 0.02 --verbose`).
//!
//! Components (all real, none mocked): the punch server's
//! [`Coordinator`](punch_server::coordinator::Coordinator) fed with encoded frames
//! (`handle_bytes`, `poll_send`, timers); each peer's [`mesh::punch::Prober`] built from its
//! `Go` (`Go::start_at`, `Go::probe_candidates`); quinn-proto endpoints and connections
//! driven by hand (as quinn-proto's own test `Pair` harness does) with the mutual-TLS
//! configurations of `mesh::identity::tls` and `mesh::socket::endpoint_config`. STUN and
//! QUIC share each peer's one socket and are told apart by `mesh::socket::demux::classify`.
//!
//! The world (modules `net`, `peer`, `world`): dialer D on 10.0.1.2 behind NAT 198.18.1.1,
//! listener L on 10.0.2.2 behind NAT 198.18.2.1, punch server S on 198.18.0.1. Every path
//! (peer-server and peer-peer) has one-way latency RTT/2 plus a seeded uniform jitter in
//! `[0, jitter]` per datagram (so datagrams may reorder). NATs map endpoint-independently
//! (one public port per socket) and filter per kind: full cone, restricted (address), or
//! port-restricted (address and port), checked when a datagram arrives. The control
//! connections are reliable ordered pipes with the same latency (no loss, no QUIC framing).
//!
//! Steps of one run:
//! 1. Before t = 0 (one simulated second of setup): both control connections are up (the
//!    server observes each NAT's mapping), the driver feeds the coordinator `--rtt-samples`
//!    RTT samples per connection (`handle_rtt`, as the QUIC estimate would), the server's
//!    own ping is answered, both peers `Register` their host candidate, and L, like the
//!    real client (`mesh::direct::control`) with the `AcceptAll` policy, follows its
//!    `Register` with `Policy { accept_all: true }`.
//! 2. t = 0: D calls `connect()`: `Connect` to S; since L accepts everything in advance, S
//!    sends no `Incoming`: it plans the start at once (`timing::plan_start`: the lead
//!    bounds the one-way delay, `max(floor, max(srtt/2 + 4 rttvar) + margin)`) and sends
//!    `Go` to both. (In the row "[target asks: Incoming/Accept round trip]" L sends no
//!    `Policy`: S sends `Incoming` to L, L answers `Accept` at once, then both `Go`.)
//! 3. Each peer builds a `Prober` when its `Go` arrives (start at receive time + `start_in`)
//!    and checks the other's candidates (host: unroutable here; server-reflexive) through
//!    the NATs; L's checks open L's NAT toward D and vice versa.
//! 4. When D's prober reports `Nominated { remote }`, D starts a quinn-proto client
//!    connection to `remote` from the same socket; L's endpoint accepts it.
//! 5. The run ends when D's connection reports `Event::Connected` (the measurement) and L's
//!    does too (reported separately); or after 10 simulated seconds (a failure).
//!
//! Printed per scenario: p50/p99/max of connect -> established (ms and RTTs) for D and L,
//! and the medians of D's phases: connect -> `Go` received, `Go` -> nominated (of which the
//! wait until the planned start), nominated -> QUIC established. Scenarios (all with the
//! current protocol unless labelled): port-restricted on both sides (the headline),
//! full-cone and restricted mixes, the coordinator knowing only its own ping's RTT sample,
//! random loss of peer-to-peer datagrams, and the target asked with `Incoming`/`Accept`
//! (L sends no `Policy`) for comparison. Then one row clearly labelled "what-if", NOT the
//! current code: B, the dialer dialing on the first authenticated check it receives
//! instead of waiting for `Nominated`, emulated in the bench around the unchanged prober;
//! it quantifies a suggestion.
//!
//! Every loop is bounded in count and simulated time; no socket is opened, and the real
//! clock is read once, only as the origin of the simulated `Instant`s.

#[path = "connect_sim/net.rs"]
mod net;
#[path = "connect_sim/peer.rs"]
mod peer;
#[path = "connect_sim/world.rs"]
mod world;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mesh::identity::{tls, Identity};
use mesh::punch::ProbeConfig;
use punch_server::coordinator::CoordConfig;

use net::{NatKind, FULL_CONE, PORT_RESTRICTED, RESTRICTED};
use world::{Keys, Outcome, Setup, D, L};

/// Command-line settings.
struct Args {
    rtt_ms: f64,
    seeds: u64,
    jitter_ms: f64,
    rtt_samples: u32,
    loss: f64,
    verbose: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        rtt_ms: 50.0,
        seeds: 200,
        jitter_ms: 2.0,
        rtt_samples: 8,
        loss: 0.02,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> f64 {
            let v = it.next().unwrap_or_default();
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs a number, got {v:?}"))
        };
        match flag.as_str() {
            "--rtt-ms" => a.rtt_ms = num("--rtt-ms"),
            "--seeds" => a.seeds = num("--seeds") as u64,
            "--jitter-ms" => a.jitter_ms = num("--jitter-ms"),
            "--rtt-samples" => a.rtt_samples = num("--rtt-samples") as u32,
            "--loss" => a.loss = num("--loss"),
            "--verbose" => a.verbose = true,
            _ => {} // `cargo bench` passes `--bench`; ignore what we do not know.
        }
    }
    a.rtt_ms = a.rtt_ms.clamp(1.0, 1000.0);
    a.seeds = a.seeds.clamp(1, 5000);
    a.jitter_ms = a.jitter_ms.clamp(0.0, 100.0);
    a.rtt_samples = a.rtt_samples.min(1000);
    a.loss = a.loss.clamp(0.0, 0.5);
    a
}

/// Histograms of one scenario, in microseconds.
struct Report {
    dialer: Histogram<u64>,
    listener: Histogram<u64>,
    go: Histogram<u64>,
    wait: Histogram<u64>,
    probe: Histogram<u64>,
    quic: Histogram<u64>,
    ok: u64,
    failed: u64,
    first_failure: Option<String>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Report {
    fn new() -> Self {
        Self {
            dialer: hist(),
            listener: hist(),
            go: hist(),
            wait: hist(),
            probe: hist(),
            quic: hist(),
            ok: 0,
            failed: 0,
            first_failure: None,
        }
    }

    fn add(&mut self, o: &Outcome) {
        let (d, l) = (o.marks[D], o.marks[L]);
        let (Some(go), Some(start), Some(dial), Some(conn), Some(l_conn)) =
            (d.go, d.start_at, d.dialed, d.connected, l.connected)
        else {
            self.failed += 1;
            if self.first_failure.is_none() {
                self.first_failure = Some(format!("{d:?} {l:?} {:?} {:?}", o.errors, o.stats));
            }
            return;
        };
        self.ok += 1;
        let since = |t: Instant, from: Instant| us(t.saturating_duration_since(from));
        let record = |h: &mut Histogram<u64>, v: u64| {
            h.record(v.min(h.high())).expect("value within bounds")
        };
        record(&mut self.dialer, since(conn, o.connect));
        record(&mut self.listener, since(l_conn, o.connect));
        record(&mut self.go, since(go, o.connect));
        record(&mut self.wait, since(start, go));
        record(&mut self.probe, since(dial, go));
        record(&mut self.quic, since(conn, dial));
    }

    fn print(&self, label: &str, rtt: Duration) {
        let rtt_us = us(rtt) as f64;
        let ms = |v: u64| v as f64 / 1000.0;
        let both = |v: u64| format!("{:.1} ms ({:.2} RTT)", ms(v), v as f64 / rtt_us);
        let dist = |h: &Histogram<u64>| {
            if h.is_empty() {
                return "n/a".to_owned();
            }
            format!(
                "p50 {} p99 {} max {}",
                both(h.value_at_quantile(0.5)),
                both(h.value_at_quantile(0.99)),
                both(h.max())
            )
        };
        let med = |h: &Histogram<u64>| ms(h.value_at_quantile(0.5));
        println!(
            "{label} rtt {:.0} ms: connect->established {}; listener {}; phases: go {:.1} ms, \
             probe {:.1} ms (start wait {:.1} ms), quic {:.1} ms; ok {}/{}",
            rtt_us / 1000.0,
            dist(&self.dialer),
            dist(&self.listener),
            med(&self.go),
            med(&self.probe),
            med(&self.wait),
            med(&self.quic),
            self.ok,
            self.ok + self.failed,
        );
    }
}

fn keys() -> Keys {
    let d = Identity::generate().expect("dialer identity");
    let l = Identity::generate().expect("listener identity");
    let transport = Arc::new((mesh::socket::EndpointOptions::default().transport)(None));
    let server = |id: &Identity| {
        Arc::new(tls::server_config(id, Some(transport.clone())).expect("server config"))
    };
    let (client, _check) =
        tls::client_config(&d, l.peer_id(), Some(transport.clone())).expect("client config");
    Keys {
        ids: [d.peer_id(), l.peer_id()],
        server: [server(&d), server(&l)],
        client: (client, tls::server_name(&l.peer_id())),
        endpoint: Arc::new(mesh::socket::endpoint_config()),
    }
}

fn main() {
    let args = parse_args();
    let rtt = Duration::from_secs_f64(args.rtt_ms / 1000.0);
    let base = Setup {
        rtt,
        jitter: Duration::from_secs_f64(args.jitter_ms / 1000.0),
        loss: 0.0,
        nats: [PORT_RESTRICTED, PORT_RESTRICTED],
        rtt_samples: args.rtt_samples,
        coord: CoordConfig::default(),
        probe: ProbeConfig::default(),
        listener_policy: true,
        what_if_dial_on_request: false,
    };
    let pair = |a: NatKind, b: NatKind| Setup {
        nats: [a, b],
        ..base.clone()
    };
    let mut scenarios: Vec<(String, Setup)> = vec![
        (String::new(), base.clone()),
        (String::new(), pair(FULL_CONE, PORT_RESTRICTED)),
        (String::new(), pair(PORT_RESTRICTED, FULL_CONE)),
        (String::new(), pair(RESTRICTED, RESTRICTED)),
        (String::new(), pair(FULL_CONE, FULL_CONE)),
        (
            " [coordinator RTT from its own ping only]".to_owned(),
            Setup {
                rtt_samples: 0,
                ..base.clone()
            },
        ),
    ];
    if args.loss > 0.0 {
        scenarios.push((
            format!(" [peer-peer loss {:.0}%]", args.loss * 100.0),
            Setup {
                loss: args.loss,
                ..base.clone()
            },
        ));
    }
    scenarios.push((
        " [target asks: Incoming/Accept round trip]".to_owned(),
        Setup {
            listener_policy: false,
            ..base.clone()
        },
    ));

    let what_ifs: Vec<(&str, Setup)> = vec![(
        " [what-if B: dialer dials on the first authenticated check it receives]",
        Setup {
            what_if_dial_on_request: true,
            ..base.clone()
        },
    )];
    let scenarios = scenarios
        .into_iter()
        .map(|(label, s)| (false, label, s))
        .chain(what_ifs.into_iter().map(|(l, s)| (true, l.to_owned(), s)));

    let keys = keys();
    // The only read of the real clock: the origin of simulated time.
    let origin = Instant::now();
    println!(
        "connect_sim: {} seeds per scenario, jitter 0-{:.1} ms per datagram, {} RTT samples \
         fed to the coordinator (+1 ping); L sends Policy {{ accept_all: true }} unless \
         labelled; measured: D connect() -> D Event::Connected",
        args.seeds, args.jitter_ms, args.rtt_samples
    );
    let mut header = false;
    for (n, (is_what_if, extra, setup)) in scenarios.enumerate() {
        if is_what_if && !header {
            header = true;
            println!(
                "what-if (bench-side emulation of a proposed prober change around the same \
                 components; NOT the current code):"
            );
        }
        let mut report = Report::new();
        for s in 0..args.seeds {
            let seed = (n as u64) << 32 | s;
            let outcome = world::run(&setup, &keys, origin, seed);
            if args.verbose && !outcome.errors.is_empty() {
                eprintln!("seed {seed}: {:?}", outcome.errors);
            }
            report.add(&outcome);
        }
        let label = format!("{} x {}{extra}", setup.nats[D].name, setup.nats[L].name);
        report.print(&label, rtt);
        if let Some(f) = &report.first_failure {
            println!("  first failure: {f}");
        }
    }
}
