//! One simulated peer of `connect_sim`: its control-stream client, its [`Prober`] and its
//! quinn-proto endpoint, all on one (simulated) UDP socket.
//!
//! Datagrams are demultiplexed as the real socket does ([`classify`]): STUN to the prober,
//! QUIC to the quinn-proto endpoint. The dialer starts its QUIC handshake toward the remote
//! address of [`ProbeEvent::Nominated`] at the instant the event is reported; the listener's
//! endpoint accepts every incoming handshake. The control stream is the real client's
//! sans-IO core ([`ControlClient`], as `mesh::direct`'s control task drives it): its hello,
//! its requests and their deadlines, its answers to `Incoming` by the configured policy.

use std::iter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use mesh::coord::{encode, ClientMsg, Go};
use mesh::direct::{ClientEvent, ClientSettings, ControlClient};
use mesh::identity::PeerId;
use mesh::punch::{Candidate, CandidateKind, ProbeConfig, ProbeEvent, Prober};
use mesh::socket::demux::{classify, DatagramKind};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
    ServerConfig,
};

/// Most items taken from one output queue per step (the queues are bounded anyway).
const MAX_DRAIN: usize = 256;

/// When things happened to one peer (simulated time).
#[derive(Debug, Default, Clone, Copy)]
pub struct Marks {
    /// Its `Go` arrived.
    pub go: Option<Instant>,
    /// The common start the `Go` asked for (`Go::start_at`).
    pub start_at: Option<Instant>,
    /// Its prober reported `Nominated`.
    pub nominated: Option<Instant>,
    /// The dialer started its QUIC handshake (at `nominated`, unless what-if B says else).
    pub dialed: Option<Instant>,
    /// Its QUIC connection reported `Event::Connected`.
    pub connected: Option<Instant>,
}

/// What a peer wants sent after a step.
#[derive(Debug, Default)]
pub struct Out {
    /// Control-stream bytes to the punch server.
    pub ctrl: Vec<Vec<u8>>,
    /// UDP datagrams from the peer's socket: (destination, bytes).
    pub udp: Vec<(SocketAddr, Vec<u8>)>,
}

impl Out {
    fn msg(&mut self, msg: &ClientMsg) {
        let mut buf = Vec::new();
        encode(msg, &mut buf).expect("client message encodes");
        self.ctrl.push(buf);
    }
}

/// The dialer's QUIC client settings: config and the TLS name of the expected peer.
pub struct Dial {
    /// Mutual-TLS client config pinned to the listener's key.
    pub config: ClientConfig,
    /// The listener's server name.
    pub server_name: String,
}

/// One peer.
pub struct Peer {
    /// Its socket's address on its LAN (its host candidate).
    pub local: SocketAddr,
    control: ControlClient,
    srflx: Option<SocketAddr>,
    probe: ProbeConfig,
    prober: Option<Prober>,
    endpoint: Endpoint,
    dial: Option<Dial>,
    dial_on_request: bool,
    quic: Option<(ConnectionHandle, Connection)>,
    /// Event times.
    pub marks: Marks,
    /// Anything that went wrong (errors from the server, lost connections).
    pub errors: Vec<String>,
}

impl Peer {
    /// A peer at `local` whose control client has `control`; `dial` is set for the dialer.
    pub fn new(
        local: SocketAddr,
        control: ClientSettings,
        endpoint_config: Arc<EndpointConfig>,
        server: Arc<ServerConfig>,
        dial: Option<Dial>,
        probe: ProbeConfig,
        seed: [u8; 32],
    ) -> Self {
        Self {
            local,
            control: ControlClient::new(
                control,
                vec![mesh::coord::Candidate::new(
                    mesh::coord::CandidateKind::Host,
                    local,
                )],
            ),
            srflx: None,
            probe,
            prober: None,
            endpoint: Endpoint::new(endpoint_config, Some(server), false, Some(seed)),
            dial,
            dial_on_request: false,
            quic: None,
            marks: Marks::default(),
            errors: Vec::new(),
        }
    }

    /// What-if B (NOT the current code): the dialer starts QUIC toward the source of the
    /// first authenticated check it receives from the peer, without waiting for
    /// `Nominated` (a bench-side emulation of a proposed prober change).
    pub fn set_dial_on_request(&mut self, on: bool) {
        self.dial_on_request = on;
    }

    /// The control stream is up: the client sends its hello (`Register` with the host
    /// candidate, the server adds the reflexive one; `Policy` under `AcceptAll`).
    pub fn register(&mut self, out: &mut Out) {
        self.control.start_session();
        self.flush_control(out);
    }

    /// The application calls `connect(target)`.
    pub fn connect(&mut self, now: Instant, target: PeerId, out: &mut Out) {
        if let Err(e) = self.control.connect(now, target) {
            self.errors.push(format!("connect: {e}"));
        }
        self.flush_control(out);
    }

    /// Control-stream bytes from the server.
    pub fn on_ctrl(&mut self, now: Instant, bytes: &[u8], out: &mut Out) {
        if let Err(e) = self.control.handle_input(now, bytes) {
            self.errors.push(format!("control: {e}"));
        }
        self.poll(now, out);
    }

    /// Sends what the control client queued and acts on its events.
    fn flush_control(&mut self, out: &mut Out) {
        for msg in iter::from_fn(|| self.control.poll_transmit()).take(MAX_DRAIN) {
            out.msg(&msg);
        }
        for _ in 0..MAX_DRAIN {
            let Some(event) = self.control.poll_event() else {
                break;
            };
            match event {
                ClientEvent::SessionUp { observed_addr }
                | ClientEvent::Registered { observed_addr } => self.srflx = Some(observed_addr),
                ClientEvent::Answered {
                    result: Ok(go),
                    received,
                    ..
                }
                | ClientEvent::Accepted { go, received } => self.start_probing(go, received),
                ClientEvent::Answered { result: Err(e), .. } => {
                    self.errors.push(format!("request failed: {e}"))
                }
                // This simulated peer uses no relays.
                ClientEvent::Relays(_) => {}
            }
        }
    }

    /// A `Go` arrived at `now`: probe from the common start it names.
    fn start_probing(&mut self, go: Go, now: Instant) {
        let mut local = vec![Candidate::new(self.local, CandidateKind::Host)];
        if let Some(s) = self.srflx {
            local.push(Candidate::new(s, CandidateKind::ServerReflexive));
        }
        let start_at = go.start_at(now);
        self.marks.go = Some(now);
        self.marks.start_at = Some(start_at);
        self.prober = Some(Prober::new(
            now,
            self.probe.clone(),
            go.role,
            go.credentials.clone(),
            &local,
            &go.probe_candidates(),
            start_at,
        ));
    }

    /// A datagram arrived at the socket from `from`.
    pub fn on_udp(&mut self, now: Instant, from: SocketAddr, bytes: Vec<u8>, out: &mut Out) {
        match classify(&bytes) {
            DatagramKind::Stun => {
                if let Some(p) = &mut self.prober {
                    let answered = p.counters().requests_answered;
                    p.handle_input(now, from, &bytes);
                    if self.dial_on_request && p.counters().requests_answered > answered {
                        self.start_quic(now, from);
                    }
                }
            }
            DatagramKind::Quic => self.on_quic(now, from, bytes, out),
            DatagramKind::Unknown => {}
        }
        self.poll(now, out);
    }

    fn on_quic(&mut self, now: Instant, from: SocketAddr, bytes: Vec<u8>, out: &mut Out) {
        let mut buf = Vec::new();
        let data = BytesMut::from(&bytes[..]);
        match self.endpoint.handle(now, from, None, None, data, &mut buf) {
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.quic.is_some() {
                    self.endpoint.ignore(incoming);
                    return;
                }
                buf.clear();
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok(conn) => self.quic = Some(conn),
                    Err(e) => {
                        self.errors.push(format!("accept: {}", e.cause));
                        if let Some(t) = e.response {
                            out.udp.push((t.destination, buf[..t.size].to_vec()));
                        }
                    }
                }
            }
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some((h, conn)) = &mut self.quic {
                    if *h == ch {
                        conn.handle_event(ev);
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                out.udp.push((t.destination, buf[..t.size].to_vec()));
            }
            None => {}
        }
    }

    /// The earliest timer of the control client, the prober and the QUIC connection.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        let c = self.control.poll_timeout();
        let p = self.prober.as_ref().and_then(Prober::poll_timeout);
        let q = self.quic.as_mut().and_then(|(_, c)| c.poll_timeout());
        [c, p, q].into_iter().flatten().min()
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant, out: &mut Out) {
        if self.control.poll_timeout().is_some_and(|t| t <= now) {
            self.control.handle_timeout(now);
        }
        if let Some(p) = &mut self.prober {
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
        }
        if let Some((_, c)) = &mut self.quic {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        self.poll(now, out);
    }

    /// Drains the control client, the prober and the QUIC connection: messages and
    /// datagrams to send, events.
    fn poll(&mut self, now: Instant, out: &mut Out) {
        self.flush_control(out);
        let mut nominated = None;
        if let Some(p) = &mut self.prober {
            for t in iter::from_fn(|| p.poll_transmit()).take(MAX_DRAIN) {
                out.udp.push((t.destination, t.contents));
            }
            for ev in iter::from_fn(|| p.poll_event()).take(MAX_DRAIN) {
                match ev {
                    ProbeEvent::Nominated { remote, .. } => {
                        if self.marks.nominated.is_none() {
                            self.marks.nominated = Some(now);
                            nominated = Some(remote);
                        }
                    }
                    ProbeEvent::Failed(e) => self.errors.push(format!("probe: {e}")),
                }
            }
        }
        if let Some(remote) = nominated {
            self.start_quic(now, remote);
        }
        self.drive_quic(now, out);
    }

    /// The dialer starts its QUIC handshake to `remote` (once).
    fn start_quic(&mut self, now: Instant, remote: SocketAddr) {
        let (Some(dial), None) = (&self.dial, &self.quic) else {
            return;
        };
        let config = dial.config.clone();
        match self
            .endpoint
            .connect(now, config, remote, &dial.server_name)
        {
            Ok(conn) => {
                self.quic = Some(conn);
                self.marks.dialed = Some(now);
            }
            Err(e) => self.errors.push(format!("connect: {e}")),
        }
    }

    fn drive_quic(&mut self, now: Instant, out: &mut Out) {
        let Some((ch, conn)) = &mut self.quic else {
            return;
        };
        let mut buf = Vec::new();
        // Bounded: a handshake produces a handful of datagrams and events per step.
        for _ in 0..64 {
            let mut progress = false;
            for _ in 0..MAX_DRAIN {
                let Some(ev) = conn.poll_endpoint_events() else {
                    break;
                };
                progress = true;
                if let Some(back) = self.endpoint.handle_event(*ch, ev) {
                    conn.handle_event(back);
                }
            }
            buf.clear();
            if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                progress = true;
                out.udp.push((t.destination, buf[..t.size].to_vec()));
            }
            for ev in iter::from_fn(|| conn.poll()).take(MAX_DRAIN) {
                match ev {
                    Event::Connected => {
                        self.marks.connected.get_or_insert(now);
                    }
                    Event::ConnectionLost { reason } => {
                        self.errors.push(format!("connection lost: {reason}"))
                    }
                    _ => {}
                }
            }
            if !progress {
                break;
            }
        }
    }
}
