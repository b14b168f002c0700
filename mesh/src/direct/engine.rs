//! The punch engine: runs the [`Prober`]s of all attempts of a node on its one socket.
//!
//! Steps:
//! 1. [`Engine::start`] spawns the task; it owns the socket's STUN queue, so every STUN
//!    datagram the socket receives passes through here.
//! 2. [`Engine::attempt`] hands it a `Go` (with when it arrived): the task builds a
//!    [`Prober`] from the peer's candidates, the per-attempt credentials and role, and
//!    the node's current local candidates, starting at [`Go::start_at`].
//! 3. Each received STUN datagram is offered to the attempts in turn; the one whose
//!    credentials it carries takes it ([`Prober::handle_input`] returns `true`). The
//!    socket's router ([`crate::stun::StunRouter`]) brings here only requests,
//!    indications and answers to the engine's own checks; answers to other parts of the
//!    node (a parked node's keep-alives) go straight to them. Unclaimed datagrams from
//!    the punch server's address go to the control task (wake-ups of a parked node,
//!    bounded queue); others are dropped and counted.
//! 4. After every input and timer the task sends what the probers queued (through the
//!    shared socket, from the same port QUIC uses) and reports each outcome:
//!    `Nominated` resolves the attempt with the pair (remote address, local socket) that
//!    QUIC must use; `Failed` with [`NoDirectPath`].
//! 5. A prober keeps answering its peer's checks for [`super::DirectConfig::linger`] after
//!    its outcome, then is dropped. The number of attempts is bounded.
//! 6. Birthday probing ([`super::birthdays`]): a `Go` between a random-port NAT and an
//!    endpoint-independent one also starts a birthday round (the hard side opens its
//!    extra sockets here). Datagrams on extra sockets go to the rounds only; on the
//!    primary socket the rounds see them before the attempts and cores. A validated pair goes
//!    to the peer's core (or waits for it), its `how` is noted as birthday. An attempt
//!    with the peer whose outcome is still awaited (a dial or an accept; a relay-first
//!    dial takes its relay meanwhile, so this matters to dials without one) is answered
//!    with the pair, local socket included; one whose probing failed while the round
//!    still ran tells its failure only when the round ends without a pair (at most the
//!    round's budget plus [`birthday_steps::BIRTHDAY_HOLD_MARGIN`] later).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::birthdays::{BirthdayStats, Birthdays};
use super::conn_slots::{ConnCmd, ConnSlots};
use super::rebind::Stray;
use super::route::PathWatches;
use super::{deadline_from, queue_bound, sleep_until_opt};
use crate::conn::ConnConfig;
use crate::coord::{Go, NatMapping};
use crate::identity::PeerId;
use crate::punch::birthday::BirthdayConfig;
use crate::punch::{Candidate, NoDirectPath, ProbeConfig, ProbeEvent, Prober};
use crate::socket::{LocalSocket, MeshSocket, Path, StunDatagram, StunReceiver};
use crate::turn::msg::parse_data_indication;

#[path = "engine_birthdays.rs"]
mod birthday_steps;

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum AttemptOutcome {
    /// Run QUIC to this remote address; `rtt` is what the validating check measured.
    Nominated {
        /// The peer's address on the nominated pair.
        remote: SocketAddr,
        /// Round-trip time of the check that validated it.
        rtt: Duration,
        /// This node's address as the peer saw it (the latest answer's mapped address).
        seen_as: Option<SocketAddr>,
        /// This node's socket on the pair: the primary one, or the extra socket of a
        /// birthday pair (step 6).
        local: LocalSocket,
    },
    /// Probing found nothing within the budget.
    NoDirectPath(NoDirectPath),
    /// The engine already runs its maximum number of attempts.
    Busy(usize),
    /// The peer's live connection took the round into its path core
    /// ([`super::conn_slots`]): its task reports the outcome as a path change.
    Adopted,
    /// The engine stopped.
    Closed,
}

type Reply = oneshot::Sender<AttemptOutcome>;

struct Start {
    go: Go,
    received: Instant,
    /// RTT of this node's control connection: scales the first retransmission.
    server_rtt: Duration,
    reply: Option<Reply>,
}

struct Attempt {
    peer: PeerId,
    prober: Prober,
    reply: Option<Reply>,
    /// Set once the outcome is known: the prober is dropped after this.
    linger_until: Option<Instant>,
    /// Probing failed while a birthday round with the peer still ran: the failure is
    /// told when the round ends without a pair, or at this deadline (step 6).
    held: Option<(NoDirectPath, Instant)>,
}

impl Attempt {
    /// Tells the held failure (step 6), if any.
    fn tell_held(&mut self) {
        if let Some((no_path, _)) = self.held.take() {
            tracing::info!(peer = %self.peer.short(), tried = no_path.tried.len(), "no direct path");
            if let Some(reply) = self.reply.take() {
                let _ = reply.send(AttemptOutcome::NoDirectPath(no_path));
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        [
            self.prober.poll_timeout(),
            self.linger_until,
            self.held.as_ref().map(|(_, until)| *until),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// What the engine task is asked to do.
#[derive(Debug)]
enum EngineCmd {
    /// A new attempt.
    Attempt(Start),
    /// A round of a peer that may have a live connection (run in its core if so).
    Round(Start),
    /// About a live connection's core.
    Conn(ConnCmd),
}

/// Handle on the engine task.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    starts: mpsc::Sender<EngineCmd>,
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Start({})", self.go.peer.short())
    }
}

/// Settings of the engine.
pub(crate) struct EngineSettings {
    pub probe: ProbeConfig,
    pub max_attempts: usize,
    pub linger: Duration,
    /// The punch server's address: STUN datagrams from it that no attempt claims go to
    /// `to_control` (keep-alive answers and wake-ups of a parked node).
    pub server: SocketAddr,
    pub to_control: mpsc::Sender<StunDatagram>,
    /// The live connections' path cores.
    pub conns: ConnConfig,
    /// Where unclaimed Data indications from relay servers go ([`super::rebind`]).
    pub strays: Option<mpsc::Sender<Stray>>,
    /// Birthday rounds' settings; `None` turns birthday probing off.
    pub birthday: Option<BirthdayConfig>,
    /// This node's NAT mapping, once its own probe found it.
    pub mapping: watch::Receiver<Option<NatMapping>>,
    /// The connections' path watches (a birthday pair's `how`).
    pub watches: Arc<PathWatches>,
    /// Counters of the birthday rounds.
    pub birthday_stats: Arc<BirthdayStats>,
}

impl Engine {
    /// Starts the engine on `socket`'s STUN queue. `local` is the node's current set of
    /// local candidates (for pair priorities).
    pub(crate) fn start(
        socket: Arc<MeshSocket>,
        stun: StunReceiver,
        local: watch::Receiver<Vec<Candidate>>,
        settings: EngineSettings,
    ) -> Self {
        let (starts, rx) = mpsc::channel(queue_bound(settings.max_attempts));
        let task = EngineTask {
            socket,
            local,
            conns: ConnSlots::new(settings.conns.clone()),
            birthdays: Birthdays::new(settings.birthday.clone().unwrap_or_default()),
            settings,
            attempts: Vec::new(),
            unmatched: 0,
        };
        tokio::spawn(task.run(stun, rx));
        Self { starts }
    }

    /// Starts probing for `go` (received at `received`) and waits for the outcome.
    pub(crate) async fn attempt(
        &self,
        go: Go,
        received: Instant,
        server_rtt: Duration,
    ) -> AttemptOutcome {
        self.ask(EngineCmd::Attempt, go, received, server_rtt).await
    }

    /// A later round with a peer: run in its live connection's core
    /// ([`AttemptOutcome::Adopted`]), or as an attempt when it has none.
    pub(crate) async fn round(
        &self,
        go: Go,
        received: Instant,
        server_rtt: Duration,
    ) -> AttemptOutcome {
        self.ask(EngineCmd::Round, go, received, server_rtt).await
    }

    async fn ask(
        &self,
        cmd: fn(Start) -> EngineCmd,
        go: Go,
        received: Instant,
        server_rtt: Duration,
    ) -> AttemptOutcome {
        let (reply, rx) = oneshot::channel();
        let start = Start {
            go,
            received,
            server_rtt,
            reply: Some(reply),
        };
        if self.starts.send(cmd(start)).await.is_err() {
            return AttemptOutcome::Closed;
        }
        rx.await.unwrap_or(AttemptOutcome::Closed)
    }

    /// Tells the engine about a live connection's core ([`ConnCmd`]).
    pub(crate) async fn conn(&self, cmd: ConnCmd) {
        if self.starts.send(EngineCmd::Conn(cmd)).await.is_err() {
            tracing::debug!("engine stopped");
        }
    }

    /// Starts probing for `go` without waiting for the outcome (the accepting side: the
    /// peer dials once its own prober nominates).
    pub(crate) fn spawn_attempt(&self, go: Go, received: Instant, server_rtt: Duration) {
        let start = Start {
            go,
            received,
            server_rtt,
            reply: None,
        };
        if self.starts.try_send(EngineCmd::Attempt(start)).is_err() {
            tracing::warn!("punch attempt dropped: engine queue full");
        }
    }
}

struct EngineTask {
    socket: Arc<MeshSocket>,
    local: watch::Receiver<Vec<Candidate>>,
    settings: EngineSettings,
    attempts: Vec<Attempt>,
    conns: ConnSlots,
    birthdays: Birthdays,
    unmatched: u64,
}

impl EngineTask {
    async fn run(mut self, mut stun: StunReceiver, mut starts: mpsc::Receiver<EngineCmd>) {
        loop {
            let attempts = self.attempts.iter().filter_map(Attempt::next_wake).min();
            let wake = attempts
                .into_iter()
                .chain(self.conns.next_wake())
                .chain(self.birthdays.next_wake())
                .min();
            tokio::select! {
                datagram = stun.recv() => {
                    let Some(d) = datagram else { break };
                    self.on_datagram(Instant::now(), d);
                }
                cmd = starts.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.on_cmd(Instant::now(), cmd);
                }
                _ = sleep_until_opt(wake) => {
                    let now = Instant::now();
                    for a in &mut self.attempts {
                        if a.prober.poll_timeout().is_some_and(|t| t <= now) {
                            a.prober.handle_timeout(now);
                        }
                    }
                    self.conns.handle_timeout(now, &self.socket.paths());
                    self.birthdays.handle_timeout(now);
                    // A pair is in use when the peer's core has it, or when the socket
                    // sends to the peer on it (a dial's handshake runs on it before the
                    // core exists).
                    let conns = &self.conns;
                    let paths = self.socket.paths();
                    self.birthdays.keep(now, |peer, found| {
                        let pair = Path::Direct {
                            remote: found.remote,
                            local: found.local,
                        };
                        conns.uses(peer, found)
                            || paths
                                .synthetic_for_peer(peer)
                                .and_then(|s| paths.resolve(&s))
                                == Some(pair)
                    });
                }
            }
            self.flush().await;
        }
        for a in self.attempts.drain(..) {
            if let Some(reply) = a.reply {
                let _ = reply.send(AttemptOutcome::Closed);
            }
        }
    }

    fn on_cmd(&mut self, now: Instant, cmd: EngineCmd) {
        if let EngineCmd::Attempt(start) | EngineCmd::Round(start) = &cmd {
            self.maybe_birthday(now, start);
        }
        match cmd {
            EngineCmd::Attempt(start) => self.on_start(now, start),
            EngineCmd::Round(start) if self.conns.has(&start.go.peer) => {
                let peer = start.go.peer;
                let prober = self.prober_for(now, &start);
                tracing::debug!(peer = %peer.short(), "round in the connection's path core");
                self.conns.round(now, &peer, prober);
                if let Some(reply) = start.reply {
                    let _ = reply.send(AttemptOutcome::Adopted);
                }
            }
            EngineCmd::Round(start) => self.on_start(now, start),
            EngineCmd::Conn(ConnCmd::Adopt(adoption)) => {
                let peer = adoption.peer;
                let round = self.take_attempt(&peer);
                self.conns.adopt(now, adoption, round);
                if let Some(found) = self.birthdays.take_found(&peer) {
                    self.conns.add_direct(now, &peer, found);
                }
            }
            EngineCmd::Conn(ConnCmd::Relay { peer, kind }) => {
                self.conns.add_relay(now, &peer, kind);
            }
        }
    }

    /// The newest attempt with `peer` that nominated or is still probing, taken out of
    /// the attempts (whoever waits for it hears [`AttemptOutcome::Adopted`]).
    fn take_attempt(&mut self, peer: &PeerId) -> Option<Prober> {
        let i = self.attempts.iter().rposition(|a| {
            a.peer == *peer && (a.linger_until.is_none() || a.prober.nominated().is_some())
        })?;
        let a = self.attempts.remove(i);
        if let Some(reply) = a.reply {
            let _ = reply.send(AttemptOutcome::Adopted);
        }
        Some(a.prober)
    }

    /// The prober of `start`, from the node's current local candidates.
    fn prober_for(&self, now: Instant, start: &Start) -> Prober {
        let go = &start.go;
        let local = self.local.borrow().clone();
        // A pair the socket cannot send to (IPv6 from an IPv4-only socket) is never checked.
        let family = self.socket.family();
        let mut remote = go.probe_candidates();
        remote.retain(|c| family.reaches(c.addr));
        tracing::debug!(
            peer = %go.peer.short(),
            role = ?go.role,
            start_in_us = go.start_in.as_micros() as u64,
            ?remote,
            "punch attempt"
        );
        Prober::new(
            now,
            probe_config(&self.settings.probe, start.server_rtt, go.start_in),
            go.role,
            go.credentials.clone(),
            &local,
            &remote,
            go.start_at(start.received),
        )
    }

    fn on_start(&mut self, now: Instant, start: Start) {
        if self.attempts.len() >= self.settings.max_attempts {
            tracing::warn!(peer = %start.go.peer.short(), "too many punch attempts");
            if let Some(reply) = start.reply {
                let _ = reply.send(AttemptOutcome::Busy(self.attempts.len()));
            }
            return;
        }
        let prober = self.prober_for(now, &start);
        self.attempts.push(Attempt {
            peer: start.go.peer,
            prober,
            reply: start.reply,
            linger_until: None,
            held: None,
        });
    }

    fn on_datagram(&mut self, now: Instant, d: StunDatagram) {
        let (from, data) = (d.from, &d.data);
        // Birthday rounds first: an extra socket carries nothing else, and on the primary
        // socket the easy side's round must see the hard side's checks (a check from a
        // port the round's probe opened is its hit, even when the probe itself was
        // dropped because it came before the hard side's mapping).
        match self.birthdays.offer(now, d.local, from, data) {
            Some(heard) => {
                if let Some((peer, found)) = heard {
                    self.conns.heard(now, &peer, found);
                }
                self.birthdays.after_input(now);
                return;
            }
            None if d.local != LocalSocket::PRIMARY => {
                self.unmatched += 1;
                return;
            }
            None => {}
        }
        for a in &mut self.attempts {
            if a.prober.handle_input(now, from, data) {
                return;
            }
        }
        if self.conns.offer(now, from, data) {
            return;
        }

        if let Some(strays) = &self.settings.strays {
            if self.socket.paths().is_relay_server(&from) {
                if let Some((peer, _)) = parse_data_indication(data) {
                    if strays.try_send(Stray { server: from, peer }).is_err() {
                        tracing::trace!(%from, "stray Data indication dropped");
                    }
                    return;
                }
            }
        }
        if from == self.settings.server {
            // Not a probe: the control task's (parking). It drops what it cannot use.
            if self.settings.to_control.try_send(d).is_err() {
                tracing::trace!(%from, "STUN datagram from the punch server dropped");
            }
            return;
        }
        self.unmatched += 1;
        tracing::trace!(%from, len = data.len(), unmatched = self.unmatched, "STUN datagram for no attempt");
    }

    /// Sends queued checks and answers, reports outcomes, drops finished attempts.
    async fn flush(&mut self) {
        let now = Instant::now();
        for a in &mut self.attempts {
            while let Some(t) = a.prober.poll_transmit() {
                if let Err(e) = self.socket.send_stun(t.destination, &t.contents).await {
                    tracing::debug!(to = %t.destination, error = %e, "probe send failed");
                }
            }
            while let Some(event) = a.prober.poll_event() {
                let outcome = match event {
                    ProbeEvent::Nominated { remote, rtt } => {
                        let seen_as = a.prober.seen_as();
                        tracing::info!(peer = %a.peer.short(), %remote, ?rtt, ?seen_as, "direct path nominated");
                        AttemptOutcome::Nominated {
                            remote,
                            rtt,
                            seen_as,
                            local: LocalSocket::PRIMARY,
                        }
                    }
                    ProbeEvent::Failed(no_path)
                        if a.reply.is_some() && self.birthdays.probing(&a.peer) =>
                    {
                        tracing::info!(peer = %a.peer.short(), tried = no_path.tried.len(), "no direct path yet: waiting for the birthday round");
                        let hold =
                            self.birthdays.config().budget + birthday_steps::BIRTHDAY_HOLD_MARGIN;
                        a.held = Some((no_path, deadline_from(now, hold)));
                        a.linger_until = Some(deadline_from(now, self.settings.linger));
                        continue;
                    }
                    ProbeEvent::Failed(no_path) => {
                        tracing::info!(peer = %a.peer.short(), tried = no_path.tried.len(), "no direct path");
                        AttemptOutcome::NoDirectPath(no_path)
                    }
                };
                if let Some(reply) = a.reply.take() {
                    let _ = reply.send(outcome);
                }
                a.linger_until = Some(deadline_from(now, self.settings.linger));
            }
        }
        for a in &mut self.attempts {
            if a.held.as_ref().is_some_and(|(_, until)| *until <= now) {
                a.tell_held();
            }
        }
        self.attempts
            .retain(|a| a.held.is_some() || a.linger_until.is_none_or(|until| until > now));
        for t in self.conns.drain() {
            if let Err(e) = self.socket.send_stun(t.destination, &t.contents).await {
                tracing::debug!(to = %t.destination, error = %e, "check send failed");
            }
        }
        self.flush_birthdays(now).await;
    }
}

/// The probe settings of one attempt, scaled to the measured RTTs:
///
/// - **First retransmission** of a check: twice the control connection's RTT (a stand-in
///   for the peer's, which is unknown before the first answer), between
///   [`MIN_FIRST_RETRANSMIT`] and the configured `retransmit_initial`. Both sides' first
///   checks cross; the one that reaches the other NAT before that NAT has sent anything is
///   dropped, and only its retransmission gets through, so on a short path this wait is
///   most of the connect time.
/// - **Budget**: `clamp(BUDGET_RTTS × path_rtt, budget, MAX_BUDGET_FACTOR × budget)` with
///   `path_rtt = max(server_rtt, 2 × lead)` and `lead = start_in + server_rtt / 2`, the
///   server's time from sending the `Go` to the common start. The server picks that lead
///   from the larger of both sides' one-way delay bounds (about half the slower side's RTT
///   plus a margin on a stable path), so `2 × lead` is the best estimate of the peer's RTT
///   this side has before probing, and both sides compute about the same budget. A
///   fixed budget assumes a fast machine: on a busy one (both cores loaded, a server RTT
///   of 230 ms in the NAT lab instead of 2 ms) each retransmission and answer comes late,
///   and a lossy path that needs several retransmissions per pair ran out of its 4 s.
///   [`BUDGET_RTTS`] RTTs give about as many retransmission rounds there as 4 s give on an
///   ordinary WAN path, while fast paths keep the configured budget (it is a floor). The
///   ceiling keeps a bogus `start_in` or a stalled RTT estimate from holding an attempt
///   that has no path for long.
fn probe_config(base: &ProbeConfig, server_rtt: Duration, start_in: Duration) -> ProbeConfig {
    let mut config = base.clone();
    config.retransmit_initial = server_rtt
        .saturating_mul(2)
        .max(MIN_FIRST_RETRANSMIT)
        .min(base.retransmit_initial);
    let lead = start_in.saturating_add(server_rtt / 2);
    let path_rtt = server_rtt.max(lead.saturating_mul(2));
    let ceiling = base.budget.saturating_mul(MAX_BUDGET_FACTOR);
    config.budget = path_rtt
        .saturating_mul(BUDGET_RTTS)
        .min(ceiling)
        .max(base.budget);
    config
}

/// Shortest first retransmission of a check.
const MIN_FIRST_RETRANSMIT: Duration = Duration::from_millis(10);

/// The probing budget covers at least this many path RTTs (see [`probe_config`]).
pub(crate) const BUDGET_RTTS: u32 = 20;

/// The RTT-scaled budget never exceeds this many times the configured one.
pub(crate) const MAX_BUDGET_FACTOR: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: Duration = Duration::ZERO;

    #[test]
    fn first_retransmission_follows_the_server_rtt_within_bounds() {
        let base = ProbeConfig::default();
        let ms = Duration::from_millis;
        assert_eq!(probe_config(&base, ms(1), ZERO).retransmit_initial, ms(10));
        assert_eq!(probe_config(&base, ms(12), ZERO).retransmit_initial, ms(24));
        assert_eq!(
            probe_config(&base, ms(200), ZERO).retransmit_initial,
            base.retransmit_initial
        );
    }

    #[test]
    fn budget_is_the_configured_one_on_fast_paths() {
        let base = ProbeConfig::default();
        let ms = Duration::from_millis;
        // A LAN lab: 2 ms to the server, the server's 20 ms floor as lead.
        assert_eq!(probe_config(&base, ms(2), ms(19)).budget, base.budget);
        // An ordinary WAN path: 20 x 100 ms is still below 4 s.
        assert_eq!(probe_config(&base, ms(80), ms(10)).budget, base.budget);
    }

    #[test]
    fn budget_scales_with_the_server_rtt() {
        let base = ProbeConfig::default();
        let ms = Duration::from_millis;
        // The busy machine of the failed CI run: 231 ms to the punch server.
        let start_in = ms(10);
        let lead = start_in + ms(231) / 2;
        assert_eq!(
            probe_config(&base, ms(231), start_in).budget,
            (lead * 2) * BUDGET_RTTS
        );
        assert!(probe_config(&base, ms(231), start_in).budget > base.budget);
        // Without any lead, the server RTT alone decides.
        assert_eq!(probe_config(&base, ms(300), ZERO).budget, ms(300) * 20);
    }

    #[test]
    fn budget_scales_with_the_peer_rtt_seen_in_the_lead() {
        let base = ProbeConfig::default();
        let ms = Duration::from_millis;
        // This side is fast (2 ms), the peer slow: the server made this side wait for it
        // (lead = 250 ms from the server's send), so 2 x 250 ms is the path RTT.
        let start_in = ms(249);
        assert_eq!(probe_config(&base, ms(2), start_in).budget, ms(500) * 20);
        // Both sides get about the same budget: the slow one (its own RTT 480 ms, lead
        // 250 ms, so start_in 10 ms) computes the same path RTT.
        assert_eq!(probe_config(&base, ms(480), ms(10)).budget, ms(500) * 20);
    }

    #[test]
    fn budget_is_capped() {
        let base = ProbeConfig::default();
        let ceiling = base.budget * MAX_BUDGET_FACTOR;
        assert_eq!(
            probe_config(&base, Duration::from_secs(5), ZERO).budget,
            ceiling
        );
        // A hostile or broken server's start_in cannot hold an attempt for ever.
        assert_eq!(probe_config(&base, ZERO, Duration::MAX).budget, ceiling);
        // A configured budget above the scaled one stays as configured.
        let long = ProbeConfig {
            budget: Duration::from_secs(60),
            ..ProbeConfig::default()
        };
        assert_eq!(
            probe_config(&long, Duration::from_secs(1), ZERO).budget,
            long.budget
        );
    }
}
