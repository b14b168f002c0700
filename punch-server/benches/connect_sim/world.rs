//! One run of `connect_sim`: the punch server's [`Coordinator`], the dialer D and the
//! listener L behind their NATs, from registration to both QUIC connections established.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::coord::encode;
use mesh::direct::{Allowlist, ClientSettings, IncomingPolicy};
use mesh::identity::PeerId;
use mesh::punch::ProbeConfig;
use punch_server::coordinator::{ConnId, CoordConfig, Coordinator};
use quinn_proto::{ClientConfig, EndpointConfig, ServerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::net::{Nat, NatKind, Net, NetStats, Payload};
use crate::peer::{Dial, Marks, Out, Peer};

/// Index of the dialer.
pub const D: usize = 0;
/// Index of the listener.
pub const L: usize = 1;

/// Simulated time from the start of registration to `connect()`.
const SETUP: Duration = Duration::from_secs(1);
/// Simulated time after `connect()` before a run counts as failed.
const LIMIT: Duration = Duration::from_secs(10);
/// Most loop steps of one run (each handles every arrival and timer due at one instant).
const MAX_STEPS: usize = 200_000;

/// The settings of one scenario.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Nominal round-trip time of every path (peer-server and peer-peer).
    pub rtt: Duration,
    /// Upper bound of the uniform extra delay of each datagram or control frame.
    pub jitter: Duration,
    /// Random loss of peer-to-peer datagrams (the control pipes are reliable).
    pub loss: f64,
    /// NAT of the dialer and of the listener.
    pub nats: [NatKind; 2],
    /// RTT samples the driver feeds the coordinator per connection before `connect()`
    /// (`handle_rtt`, the control connection's QUIC estimate), on top of its own ping.
    pub rtt_samples: u32,
    /// The coordinator's settings.
    pub coord: CoordConfig,
    /// The probers' settings.
    pub probe: ProbeConfig,
    /// L sends `Policy { accept_all: true }` after `Register`, as the real client with the
    /// `AcceptAll` policy does: `Connect` gets both `Go` at once. Off: the server asks L
    /// with `Incoming` and L answers `Accept` (one more server-L round trip).
    pub listener_policy: bool,
    /// What-if B, NOT the current code: the dialer dials on the first authenticated check
    /// it receives from the peer instead of waiting for `Nominated` (see
    /// [`Peer::set_dial_on_request`]).
    pub what_if_dial_on_request: bool,
}

/// Keys and TLS configurations, built once.
pub struct Keys {
    /// Peer ids of D and L.
    pub ids: [PeerId; 2],
    /// Each peer's QUIC server config (mutual TLS with its identity).
    pub server: [Arc<ServerConfig>; 2],
    /// D's client config, pinned to L's key, and L's TLS server name.
    pub client: (ClientConfig, String),
    /// The shared-socket endpoint config (`mesh::socket::endpoint_config`).
    pub endpoint: Arc<EndpointConfig>,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    /// When D called `connect()`.
    pub connect: Instant,
    /// Event times of D and L.
    pub marks: [Marks; 2],
    /// Errors seen by either peer or the coordinator's driver.
    pub errors: Vec<String>,
    /// Datagram counters.
    pub stats: NetStats,
}

fn seed_bytes(seed: u64, salt: u64) -> [u8; 32] {
    let mut rng = StdRng::seed_from_u64(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    rng.gen()
}

fn v4(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

struct World {
    net: Net,
    rng: StdRng,
    coord: Coordinator,
    peers: [Peer; 2],
    conns: [ConnId; 2],
    errors: Vec<String>,
}

impl World {
    /// Sends what peer `i` produced.
    fn send(&mut self, now: Instant, i: usize, out: Out) {
        for bytes in out.ctrl {
            self.net.send_ctrl(now, i, true, bytes, &mut self.rng);
        }
        for (to, bytes) in out.udp {
            self.net.send_udp(now, i, to, bytes, &mut self.rng);
        }
    }

    /// Drains the coordinator's outputs onto the control pipes.
    fn flush_coord(&mut self, now: Instant) {
        // Bounded: a handful of messages per input.
        for _ in 0..1024 {
            let Some((conn, msg)) = self.coord.poll_send() else {
                break;
            };
            let Some(i) = self.conns.iter().position(|c| *c == conn) else {
                continue;
            };
            let mut bytes = Vec::new();
            encode(&msg, &mut bytes).expect("server message encodes");
            self.net.send_ctrl(now, i, false, bytes, &mut self.rng);
        }
        for (conn, reason) in std::iter::from_fn(|| self.coord.poll_close()).take(64) {
            self.errors
                .push(format!("coordinator closed {conn}: {reason}"));
        }
    }

    fn deliver(&mut self, now: Instant, payload: Payload) {
        match payload {
            Payload::ToServer { peer, bytes } => {
                self.coord.handle_bytes(now, self.conns[peer], &bytes);
                self.flush_coord(now);
            }
            Payload::ToPeer { peer, bytes } => {
                let mut out = Out::default();
                self.peers[peer].on_ctrl(now, &bytes, &mut out);
                self.send(now, peer, out);
            }
            Payload::Udp { from, to, bytes } => {
                if let Some(i) = self.net.route_inbound(from, to) {
                    let mut out = Out::default();
                    self.peers[i].on_udp(now, from, bytes, &mut out);
                    self.send(now, i, out);
                }
            }
        }
    }

    fn next_wake(&mut self) -> Option<Instant> {
        [
            self.net.next_at(),
            self.coord.poll_timeout(),
            self.peers[D].next_timeout(),
            self.peers[L].next_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Runs one seed of `setup`, starting the simulated clock at `base`.
pub fn run(setup: &Setup, keys: &Keys, base: Instant, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let server_addr = v4([198, 18, 0, 1], 7000);
    let locals = [v4([10, 0, 1, 2], 5000), v4([10, 0, 2, 2], 5000)];
    let nats = vec![
        Nat::new(setup.nats[D], Ipv4Addr::new(198, 18, 1, 1), locals[D]),
        Nat::new(setup.nats[L], Ipv4Addr::new(198, 18, 2, 1), locals[L]),
    ];
    let net = Net::new(setup.rtt / 2, setup.jitter, setup.loss, nats);
    let probe = |k: u64| ProbeConfig {
        seed: Some(seed.wrapping_mul(4).wrapping_add(k)),
        ..setup.probe.clone()
    };
    let dial = Dial {
        config: keys.client.0.clone(),
        server_name: keys.client.1.clone(),
    };
    // The dialer only dials; the listener accepts everyone, announcing it with `Policy`
    // when the scenario says so, or else answering `Incoming` (the allowlist's answer
    // for a listed peer).
    let control = |incoming| ClientSettings {
        incoming,
        allow: Arc::new(Allowlist::default()),
        request_timeout: Duration::from_secs(10),
        max_pending: 4,
        park: false,
        hide_address: false,
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(30),
    };
    let listener = if setup.listener_policy {
        control(IncomingPolicy::AcceptAll)
    } else {
        let c = control(IncomingPolicy::Allowlist);
        c.allow.allow(keys.ids[D]);
        c
    };
    let peers = [
        Peer::new(
            locals[D],
            control(IncomingPolicy::RefuseAll),
            keys.endpoint.clone(),
            keys.server[D].clone(),
            Some(dial),
            probe(1),
            seed_bytes(seed, 1),
        ),
        Peer::new(
            locals[L],
            listener,
            keys.endpoint.clone(),
            keys.server[L].clone(),
            None,
            probe(2),
            seed_bytes(seed, 2),
        ),
    ];
    let coord = Coordinator::new(setup.coord.clone(), base, seed_bytes(seed, 3));
    let mut w = World {
        net,
        rng: StdRng::seed_from_u64(seed.wrapping_add(7)),
        coord,
        peers,
        conns: [ConnId(1), ConnId(2)],
        errors: Vec::new(),
    };

    // Before t = 0: both control connections are up (the server observes each peer's NAT
    // mapping), the driver has fed RTT estimates, both peers register (L also sends its
    // `Policy` when the scenario says so).
    for i in [D, L] {
        let observed = w.net.nats[i].outbound(server_addr, &mut rng);
        w.coord
            .handle_connected(base, w.conns[i], keys.ids[i], observed);
        for _ in 0..setup.rtt_samples {
            let sample = w.net.delay(&mut rng) + w.net.delay(&mut rng);
            w.coord.handle_rtt(w.conns[i], sample);
        }
        let mut out = Out::default();
        w.peers[i].register(&mut out);
        w.send(base, i, out);
    }
    w.flush_coord(base);
    w.peers[D].set_dial_on_request(setup.what_if_dial_on_request);

    let connect = base + SETUP;
    let end = connect + LIMIT;
    let mut connect_sent = false;
    let mut now = base;
    for _ in 0..MAX_STEPS {
        if w.peers.iter().all(|p| p.marks.connected.is_some()) {
            break;
        }
        let wake = w.next_wake();
        let scheduled = (!connect_sent).then_some(connect);
        let Some(next) = scheduled.into_iter().chain(wake).min() else {
            break;
        };
        if next > end {
            break;
        }
        now = now.max(next);
        if !connect_sent && now >= connect {
            connect_sent = true;
            let mut out = Out::default();
            w.peers[D].connect(now, keys.ids[L], &mut out);
            w.send(now, D, out);
        }
        // Bounded: at most this many arrivals at one instant.
        for _ in 0..10_000 {
            let Some(p) = w.net.pop_due(now) else {
                break;
            };
            w.deliver(now, p);
        }
        if w.coord.poll_timeout().is_some_and(|t| t <= now) {
            w.coord.handle_timeout(now);
            w.flush_coord(now);
        }
        for i in [D, L] {
            if w.peers[i].next_timeout().is_some_and(|t| t <= now) {
                let mut out = Out::default();
                w.peers[i].on_timeout(now, &mut out);
                w.send(now, i, out);
            }
        }
    }
    let mut errors = w.errors;
    for p in &mut w.peers {
        errors.append(&mut p.errors);
    }
    Outcome {
        connect,
        marks: [w.peers[D].marks, w.peers[L].marks],
        errors,
        stats: w.net.stats,
    }
}
