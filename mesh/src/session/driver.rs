//! The session driver: one tokio task that feeds a [`Membership`] core from the node's
//! connections and turns its outputs into dials, frames, allowlist changes and game events.
//!
//! Steps of the loop:
//! 1. Drain the core: transmits go to the links' queues; events become dials (each in its
//!    own task, bounded by the join timeout), allowlist changes, closed links and game
//!    events; then the shared table of member links, the snapshot and the listing keeper
//!    are brought up to date (the host keeps the listing alive; any other member does not).
//! 2. Wait for the next of: a link's input (frames, datagrams, closes), a dial or an
//!    accepted connection, a command from the game, or the core's timer.
//! 3. Feed it to the core with the current time, and go to 1. The loop ends with the
//!    core's `Ended` event; a graceful leave flushes the goodbyes first and, for the last
//!    member, delists the session.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::api::{Session, SessionConfig, SessionEvent};
use super::app_link::AppSink;
use super::link::{self, Input, LinkHandle};
pub(crate) use super::shared::{SessionStats, Shared, Snapshot};
use super::{Decision, Event, Membership, SessionEnd, SessionMsg};
use crate::direct::{sleep_until_opt, DirectNode};
use crate::identity::PeerId;
use crate::listing::{Attributes, KeeperHandle, KeeperStatus, ListingClient};

/// Bound of the queue of link inputs into the session task.
const INPUT_QUEUE: usize = 4096;
/// Bound of the game's command queue.
const COMMAND_QUEUE: usize = 256;
/// Bound of the queue of membership events not yet taken by the game.
const MEMBERSHIP_EVENTS: usize = 1024;
/// Longest a link's stream setup may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest dial to a member while another member could route to it.
const DIAL_BEFORE_ROUTE: Duration = Duration::from_secs(6);
/// How long the last member waits for the delisting to be confirmed.
const DELIST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a host that leaves listens for the other members leaving too (then nobody
/// would keep the listing: it delists).
const LEAVE_WAIT: Duration = Duration::from_millis(300);

/// A game command for the session task.
#[derive(Debug)]
pub(crate) enum Command {
    SetLocked(bool),
    Decide(PeerId, Decision),
    UpdateListing {
        name: Option<String>,
        attributes: Option<Attributes>,
    },
    Leave(oneshot::Sender<()>),
}

/// What a session needs to keep its listing alive when it hosts.
#[derive(Debug, Clone)]
pub(crate) struct ListingContext {
    pub client: ListingClient,
    pub game: String,
    pub config: SessionConfig,
    /// This node's punch server, for the listing's `connect` object.
    pub punch: String,
}

/// A dial or an accept finished.
enum Wake {
    Connected {
        peer: PeerId,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    DialFailed {
        peer: PeerId,
        reason: String,
    },
}

struct SessionTask {
    core: Membership,
    node: Arc<DirectNode>,
    listing: ListingContext,
    links: HashMap<PeerId, LinkHandle>,
    shared: Arc<Shared>,
    input_tx: mpsc::Sender<Input>,
    wake_tx: mpsc::Sender<Wake>,
    events: mpsc::Sender<SessionEvent>,
    /// Where links put game messages.
    sink: AppSink,
    joined: Option<oneshot::Sender<Result<(), super::JoinFailure>>>,
    /// The listing's keeper while this member hosts, and its status.
    keeper: Option<(KeeperHandle, watch::Receiver<KeeperStatus>)>,
    players: u32,
    leaving: Option<oneshot::Sender<()>>,
    /// Members whose `MemberJoined` waits for their link (at most `MAX_MEMBERS`).
    held_joins: Vec<PeerId>,
    /// Members that said `Leave` (at most `MAX_MEMBERS`: only current members count).
    said_leave: Vec<PeerId>,
    /// Routes through members in progress (`driver_routes.rs`).
    routing: routes::Routing,
}

/// Starts the session task for `core` on `node`.
pub(crate) fn spawn(
    core: Membership,
    node: Arc<DirectNode>,
    listing: ListingContext,
    event_queue: usize,
) -> Session {
    let local = core.local_id();
    let shared = Arc::new(Shared {
        links: RwLock::new(HashMap::new()),
        // Set before `host` returns, so `listing_id()` and `members()` are right at once.
        snapshot: Mutex::new(Snapshot::of(&core)),
        closed: std::sync::atomic::AtomicBool::new(false),
        published: tokio::sync::Notify::new(),
        stats: SessionStats::default(),
    });
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (wake_tx, wake_rx) = mpsc::channel(INPUT_QUEUE);
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events_tx, events) = mpsc::channel(MEMBERSHIP_EVENTS);
    let (messages_tx, messages) = mpsc::channel(event_queue.max(16));
    let (joined_tx, joined_rx) = oneshot::channel();
    let joining = !core.is_member();
    let routes = node.routes().clone();
    let task_node = node.clone();
    let task = SessionTask {
        core,
        node,
        listing,
        links: HashMap::new(),
        shared: shared.clone(),
        input_tx,
        wake_tx,
        events: events_tx,
        sink: AppSink {
            messages: messages_tx,
            shared: shared.clone(),
            routes,
        },
        joined: joining.then_some(joined_tx),
        keeper: None,
        players: 0,
        leaving: None,
        held_joins: Vec::new(),
        said_leave: Vec::new(),
        routing: routes::Routing::default(),
    };
    let span = tracing::info_span!("session", peer = %local.short());
    let handle = tokio::spawn(tracing::Instrument::instrument(
        task.run(input_rx, wake_rx, command_rx),
        span,
    ));
    Session {
        node: Arc::downgrade(&task_node),
        local,
        shared,
        commands,
        events,
        messages,
        ending: None,
        joined: joining.then_some(joined_rx),
        task: Some(handle),
    }
}

#[path = "driver_listing.rs"]
mod listing_sync;

#[path = "driver_routes.rs"]
mod routes;

use listing_sync::keeper_changed;

impl SessionTask {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut wakes: mpsc::Receiver<Wake>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        // Aborted on drop: also when this task is aborted (`Session` dropped without
        // `leave`), where the code after the loop never runs. A detached accept loop would
        // keep the node (its socket, its punch-server registration) alive for good.
        let accept = AbortOnDrop(tokio::spawn(accept_loop(
            self.node.clone(),
            self.wake_tx.clone(),
        )));
        loop {
            self.flush();
            if self.core.is_ended() {
                break;
            }
            let deadline = self.core.poll_timeout();
            tokio::select! {
                Some(input) = inputs.recv() => self.on_input(input),
                Some(wake) = wakes.recv() => self.on_wake(wake),
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    // The game dropped its handle: leave.
                    None => self.core.leave(Instant::now()),
                },
                _ = sleep_until_opt(deadline) => self.core.handle_timeout(Instant::now()),
                _ = sleep_until_opt(self.routing.next_deadline()) => {
                    self.route_timeouts(Instant::now());
                }
                Some(status) = keeper_changed(&mut self.keeper) => self.on_keeper_status(status),
            }
        }
        drop(accept);
        self.finish(inputs).await;
    }

    /// After the core ended: flush links, delist if this was the last member (or every
    /// other member is leaving at the same moment), stop.
    async fn finish(mut self, mut inputs: mpsc::Receiver<Input>) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.published.notify_waiters();
        self.shared.clear_links();
        if self.leaving.is_some() {
            self.delist_if_everyone_leaves(&mut inputs).await;
        }
        self.keeper = None;
        // Give the links' writers a moment to send the goodbyes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(done) = self.leaving.take() {
            let _ = done.send(());
        }
        if let Ok(node) = Arc::try_unwrap(self.node) {
            node.shutdown().await;
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Frame { peer, link, msg } => {
                if !self.is_current(&peer, link) {
                    return;
                }
                if let SessionMsg::App { .. } = msg {
                    // Game messages travel on the app stream.
                    self.violation(now, peer, "a game message on the membership stream");
                } else {
                    self.on_route_msg(now, peer, &msg);
                    if msg == SessionMsg::Leave
                        && self.core.view().contains(&peer)
                        && !self.said_leave.contains(&peer)
                    {
                        self.said_leave.push(peer);
                    }
                    self.core.handle_input(now, peer, msg);
                }
            }
            Input::Closed { peer, link, error } => {
                if self.is_current(&peer, link) {
                    tracing::info!(peer = %peer.short(), ?error, "link closed");
                    self.drop_link(&peer);
                    self.core.handle_link_down(now, peer);
                }
            }
            Input::Malformed { peer, link, error } => {
                if self.is_current(&peer, link) {
                    self.violation(now, peer, &error);
                }
            }
        }
    }

    /// Closes the link of a peer that broke the link protocol.
    fn violation(&mut self, now: Instant, peer: PeerId, error: &str) {
        tracing::warn!(peer = %peer.short(), %error, "malformed session traffic");
        self.shared.stats.violations.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = self.drop_link(&peer) {
            l.conn.close(1u32.into(), b"malformed session frame");
        }
        self.core.handle_link_down(now, peer);
    }

    fn is_current(&self, peer: &PeerId, link: u64) -> bool {
        self.links.get(peer).is_some_and(|l| l.id == link)
    }

    fn on_wake(&mut self, wake: Wake) {
        let now = Instant::now();
        match wake {
            Wake::Connected {
                peer,
                conn,
                send,
                recv,
            } => {
                if !self.node.allowlist().allows(&peer) || self.core.is_ended() {
                    conn.close(2u32.into(), b"not a member of this session");
                    return;
                }
                if let Some(old) = self.drop_link(&peer) {
                    old.close();
                    self.core.handle_link_down(now, peer);
                }
                self.node.routes().add_link(peer, conn.clone());
                self.routing.forget(&peer);
                let handle = link::spawn(
                    peer,
                    conn,
                    send,
                    recv,
                    self.input_tx.clone(),
                    self.sink.clone(),
                );
                self.links.insert(peer, handle);
                // Everyone's view of this end's links changed: tell every linked member.
                self.report_rtts(now);
                self.core.handle_link_up(now, peer);
            }
            Wake::DialFailed { peer, reason } => {
                tracing::info!(peer = %peer.short(), %reason, "dial failed");
                if self.try_route(now, peer) {
                    return;
                }
                self.core.handle_link_down(now, peer);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::SetLocked(locked) => self.core.set_locked(now, locked),
            Command::Decide(peer, decision) => self.core.decide(now, peer, decision),
            Command::UpdateListing { name, attributes } => {
                if let Some(n) = name {
                    self.listing.config.name = n;
                }
                if let Some(a) = attributes {
                    self.listing.config.attributes = a;
                }
                if let Some((k, _)) = &self.keeper {
                    k.set_name(self.listing.config.name.clone());
                    k.set_attributes(self.listing.config.attributes.clone());
                }
            }
            Command::Leave(done) => {
                self.leaving = Some(done);
                self.core.leave(now);
            }
        }
    }

    fn drop_link(&mut self, peer: &PeerId) -> Option<LinkHandle> {
        let link = self.links.remove(peer)?;
        self.shared
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
        self.routing.reports.forget(peer);
        let routes = self.node.routes();
        let through = routes.ends_via(peer);
        routes.remove_link(peer);
        let now = Instant::now();
        if !through.is_empty() {
            self.reroute_from(now, *peer, through);
        }
        // The other members' view of this end's links changed.
        self.report_rtts(now);
        Some(link)
    }

    fn dial(&self, peer: PeerId) {
        let node = self.node.clone();
        let wakes = self.wake_tx.clone();
        // With another member linked, a route through it is the fallback: a dial whose
        // direct and relayed paths are both cut would wait for its QUIC handshake to time
        // out, so it gets `DIAL_BEFORE_ROUTE` (at most half the join's time). A slow dial
        // cut short still ends direct: the routed link's path core keeps probing.
        let router_available =
            self.core.config().route_through_members && self.links.keys().any(|p| *p != peer);
        let budget = if router_available {
            DIAL_BEFORE_ROUTE.min(self.core_join_timeout() / 2)
        } else {
            self.core_join_timeout()
        };
        tokio::spawn(async move {
            let dialed = match tokio::time::timeout(budget, node.connect(peer)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("dial timed out".into()),
            };
            let _ = wakes.send(open_link(peer, dialed).await).await;
        });
    }

    fn core_join_timeout(&self) -> Duration {
        self.core.config().join_timeout
    }

    /// Applies the core's outputs (step 1 of the module docs).
    fn flush(&mut self) {
        let now = Instant::now();
        loop {
            let mut overloaded = Vec::new();
            while let Some((to, msg)) = self.core.poll_transmit() {
                match self.links.get(&to) {
                    Some(l) if l.send(&msg) => self.core.note_sent(now, to),
                    Some(_) => overloaded.push(to),
                    None => {}
                }
            }
            if overloaded.is_empty() {
                break;
            }
            // A membership message that finds the link's queue full would be lost
            // and leave the two sides disagreeing: the link is closed instead, and the
            // core handles it as any broken link.
            for peer in overloaded {
                self.shared
                    .stats
                    .frames_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(l) = self.drop_link(&peer) {
                    tracing::warn!(peer = %peer.short(), "link queue full: closing the link");
                    l.conn.close(4u32.into(), b"session link overloaded");
                    self.core.handle_link_down(now, peer);
                }
            }
        }
        // Links and snapshot before the events: a game that reads `members()`, `host()` or
        // `listing_id()`, or sends, on an event (or when `join` returns) sees the state
        // after it.
        self.publish();
        while let Some(event) = self.core.poll_event() {
            self.on_event(event);
        }
        self.sync();
        self.release_held_joins();
    }

    fn on_event(&mut self, event: Event) {
        let game = match event {
            Event::Dial(peer) => {
                self.dial(peer);
                None
            }
            Event::Allow(peer) => {
                self.node.allowlist().allow(peer);
                None
            }
            Event::Disallow(peer) => {
                self.node.allowlist().disallow(&peer);
                // A joiner whose join ended without it (or a member that left): routes to
                // it end here too.
                self.node.routes().forget_peer(&peer);
                None
            }
            Event::Close(peer) => {
                if let Some(l) = self.drop_link(&peer) {
                    l.close();
                }
                None
            }
            Event::Joined => {
                if let Some(tx) = self.joined.take() {
                    let _ = tx.send(Ok(()));
                }
                None
            }
            Event::JoinRequest { peer, data } => Some(SessionEvent::JoinRequest { peer, data }),
            // A member's connection to us may still be in its stream setup when the host's
            // view names it: hold the event until its link is published, so that a game
            // that sends on `MemberJoined` reaches it (`broadcast` skips members without
            // a link).
            Event::MemberJoined(peer) if !self.links.contains_key(&peer) => {
                if !self.held_joins.contains(&peer) {
                    self.held_joins.push(peer);
                }
                None
            }
            Event::MemberJoined(peer) => Some(SessionEvent::MemberJoined(peer)),
            // The game never saw it join: it does not see it leave either.
            Event::MemberLeft { peer, .. } if self.held_joins.contains(&peer) => {
                self.held_joins.retain(|p| *p != peer);
                None
            }
            Event::MemberLeft { peer, reason } => {
                self.node.routes().forget_peer(&peer);
                Some(SessionEvent::MemberLeft { peer, reason })
            }
            Event::HostChanged { old, new } => Some(SessionEvent::HostChanged { old, new }),
            Event::Violation { peer, why } => {
                tracing::warn!(peer = %peer.short(), why, "protocol violation");
                self.shared.stats.violations.fetch_add(1, Ordering::Relaxed);
                None
            }
            Event::Ended(why) => {
                if let SessionEnd::JoinFailed(f) = &why {
                    if let Some(tx) = self.joined.take() {
                        let _ = tx.send(Err(f.clone()));
                    }
                }
                Some(SessionEvent::Ended(why))
            }
        };
        if let Some(e) = game {
            self.deliver(e);
        }
    }

    /// Hands a membership event to the game.
    fn deliver(&self, e: SessionEvent) {
        // Membership events are rare; a full queue means the game stopped reading.
        if self.events.try_send(e).is_err() {
            self.shared
                .stats
                .events_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("session event dropped: the game does not take events");
        }
    }

    /// Publishes the core's view to the game's handle.
    fn update_snapshot(&self) {
        *self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Snapshot::of(&self.core);
    }

    /// Brings the shared link table, the snapshot, the allowlist and the listing up to date.
    fn sync(&mut self) {
        self.publish();
        let is_host = self.core.is_host();
        self.node
            .allowlist()
            .set_open(is_host && !self.core.view().locked);
        let routable = self.core.routable();
        if routable != self.routing.members {
            self.node.routes().set_members(routable.iter().copied());
            self.routing.members = routable;
        }
        self.sync_listing(is_host, self.core.view().members.len());
    }

    /// Publishes the links of current members (what `send` and `broadcast` use) and the
    /// snapshot to the game's handle.
    fn publish(&self) {
        {
            let mut shared = self.shared.links.write().unwrap_or_else(|p| p.into_inner());
            shared.clear();
            for m in self
                .core
                .view()
                .members
                .iter()
                .filter(|m| self.core.accepts_messages_from(m))
            {
                if let Some(l) = self.links.get(m) {
                    shared.insert(*m, l.clone());
                }
            }
        }
        self.shared.published.notify_waiters();
        self.update_snapshot();
    }

    /// Delivers the held `MemberJoined` events of members whose link is now published.
    fn release_held_joins(&mut self) {
        let ready: Vec<PeerId> = {
            let shared = self.shared.links.read().unwrap_or_else(|p| p.into_inner());
            self.held_joins
                .iter()
                .filter(|p| shared.contains_key(p))
                .copied()
                .collect()
        };
        for peer in ready {
            self.held_joins.retain(|p| *p != peer);
            self.deliver(SessionEvent::MemberJoined(peer));
        }
    }
}
/// The wake of a finished dial: the link with its session stream, or why not.
async fn open_link(peer: PeerId, dialed: Result<crate::direct::DirectConnection, String>) -> Wake {
    let conn = match dialed {
        Ok(c) => hold_path(c),
        Err(reason) => return Wake::DialFailed { peer, reason },
    };
    match link::open(&conn, STREAM_TIMEOUT).await {
        Ok((send, recv)) => Wake::Connected {
            peer,
            conn,
            send,
            recv,
        },
        Err(reason) => Wake::DialFailed { peer, reason },
    }
}

/// Keeps the connection's path watch for as long as the connection lives (the node
/// treats a connection nobody watches as gone: a later probing round with the peer would
/// be taken for a new introduction); returns the connection.
fn hold_path(c: crate::direct::DirectConnection) -> quinn::Connection {
    let conn = c.peer.connection;
    let (watch, closed) = (c.path, conn.clone());
    tokio::spawn(async move {
        closed.closed().await;
        drop(watch);
    });
    conn
}

/// Aborts its task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands every accepted connection (with its session stream) to the session task.
async fn accept_loop(node: Arc<DirectNode>, wakes: mpsc::Sender<Wake>) {
    while let Some(result) = node.accept().await {
        let Ok(c) = result else { continue };
        let peer = c.peer.peer_id;
        let conn = hold_path(c);
        let wakes = wakes.clone();
        tokio::spawn(async move {
            match link::accept(&conn, STREAM_TIMEOUT).await {
                Ok((send, recv)) => {
                    let _ = wakes
                        .send(Wake::Connected {
                            peer,
                            conn,
                            send,
                            recv,
                        })
                        .await;
                }
                Err(reason) => {
                    tracing::info!(peer = %peer.short(), %reason, "accepted connection without a session stream");
                    conn.close(3u32.into(), b"no session stream");
                }
            }
        });
    }
}
