//! `host`, `join` and `list`: sessions through the master server (`mesh::session`).
//!
//! - `host`: start a [`Mesh`] on `--punch`, host a session of `--game` (`Mesh::host`: the
//!   node starts and the listing is posted), print `listed {session, peer, host}`, then
//!   run the session loop.
//! - `join`: read the listing (`--session ID`, or the first listed session of `--game`
//!   with a free slot), start a [`Mesh`] on `--punch` or the listing's punch server, join
//!   (`Mesh::join_via`), print `joined {session, peer, members, host}`, then run the loop.
//!   A failed join prints `error {kind, detail}` (`JoinError::kind`) and exits 1.
//! - `list`: print one `session` line per live listing of `--game` and exit 0.
//!
//! The session loop, for `host` and `join`:
//! 1. A thread reads stdin line by line; each line is broadcast to every member as a
//!    reliable, ordered message.
//! 2. Session events become JSON lines: `member_joined`, `member_left`, `host_changed`
//!    (plus `listing` when this peer becomes host), `message`, `ended`, and `path` when a
//!    member's link moves (`direct`, `relay`, or `router` with `via`, the member that
//!    forwards). Join requests are
//!    accepted at once (the core still turns joiners away when locked or full).
//! 3. EOF on stdin, SIGINT or SIGTERM leave gracefully (`Session::leave`), print `left`
//!    (with `signal` after a signal) and exit 0; the session ending by itself prints
//!    `ended` and exits 0 if it was a leave, 1 otherwise. A signal before the session is
//!    up prints `error {kind: "interrupted"}` and exits 1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mesh::coord::PunchAddr;
use mesh::direct::ActivePath;
use mesh::identity::{Identity, PeerId};
use mesh::listing::{Filter, ListingClient, ListingId, SessionRow};
use mesh::session::{
    JoinTarget, Mesh, MeshConfig, Reliability, Session, SessionConfig, SessionEnd, SessionEvent,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::out::{emit, error_line};
use crate::signals::{bounded_cleanup, interrupted, Signal, Stop};

/// Timeout of each master-server request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags shared by `host` and `join`: the master server, the game and the node.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// The master server's base URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "PEER_MASTER")]
    pub master: String,
    /// The game whose sessions to host or join.
    #[arg(long, env = "PEER_GAME")]
    pub game: String,
    /// Accept a bare `HOST:PORT` punch server and any server key (development only).
    #[arg(long, env = "PEER_INSECURE")]
    pub insecure: bool,
    /// This peer's key file (PKCS#8 PEM, created if missing); without it a fresh key is
    /// generated for this run.
    #[arg(long, env = "PEER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Local address of the one UDP socket. The default `[::]:0` is one dual-stack socket
    /// (IPv4 and IPv6; IPv4 only on a host without IPv6).
    #[arg(long, env = "PEER_BIND", default_value = "[::]:0")]
    pub bind: SocketAddr,
    /// Do not map a port with UPnP.
    #[arg(long, env = "PEER_NO_UPNP")]
    pub no_upnp: bool,
    /// Longest wait for the punch server to answer (name resolved, QUIC handshake done),
    /// in milliseconds; then `error {kind: "unreachable"}`.
    #[arg(long, env = "PEER_CONNECT_TIMEOUT_MS", default_value_t = crate::punch::DEFAULT_CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Do not ask another member to route to a member this peer cannot reach (the join
    /// then fails naming it).
    #[arg(long, env = "PEER_NO_ROUTE")]
    pub no_route: bool,
}

impl SessionArgs {
    /// A [`Mesh`] for a fresh or loaded identity on `punch`.
    fn mesh(&self, punch: PunchAddr) -> Result<Mesh, (&'static str, String)> {
        let identity = match &self.key_file {
            Some(path) => Identity::load_or_generate(path),
            None => Identity::generate(),
        }
        .map_err(|e| ("identity", e.to_string()))?;
        let mut config = MeshConfig::new(self.master.clone(), punch);
        config.direct.insecure = self.insecure;
        config.direct.bind = self.bind;
        if self.no_upnp {
            config.direct.upnp = None;
        }
        config.direct.connect_timeout = Duration::from_millis(self.connect_timeout_ms.max(1));
        config.request_timeout = REQUEST_TIMEOUT;
        config.membership.route_through_members = !self.no_route;
        Mesh::new(Arc::new(identity), config).map_err(|e| (e.kind(), e.to_string()))
    }
}

/// Parses a punch server address (`ID@HOST:PORT`, or `HOST:PORT` with `--insecure`).
fn parse_punch(s: &str) -> Result<PunchAddr, (&'static str, String)> {
    s.parse()
        .map_err(|e: mesh::coord::ParsePunchAddrError| ("address", e.to_string()))
}

/// `peer host`: host a session, print `listed`, run the session loop.
pub async fn host(
    args: SessionArgs,
    punch: &str,
    name: String,
    max_players: u32,
    listing_timeout_secs: u32,
    stop: &Stop,
) -> ExitCode {
    let mesh = match parse_punch(punch).and_then(|p| args.mesh(p)) {
        Ok(m) => m,
        Err((kind, detail)) => return error_line(kind, &detail),
    };
    let mut config = SessionConfig::new(name);
    config.max_players = max_players;
    config.listing_timeout_secs = listing_timeout_secs;
    let session = match stop.until(mesh.host(&args.game, config)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error_line(host_error_kind(&e), &e.to_string()),
        Err(signal) => return interrupted(signal),
    };
    emit(&json!({
        "event": "listed",
        "session": session.listing_id(),
        "peer": session.local_id().to_string(),
        "host": session.local_id().to_string(),
    }));
    run(session, stop).await
}

/// A stable `kind` for a [`mesh::session::HostError`].
fn host_error_kind(e: &mesh::session::HostError) -> &'static str {
    use mesh::session::HostError;
    match e {
        HostError::Start(s) => s.kind(),
        HostError::Listing(l) => l.kind(),
        HostError::Invalid(_) => "invalid",
    }
}

/// `peer join`: find the listing, join its session, print `joined`, run the loop.
pub async fn join(
    args: SessionArgs,
    session: Option<String>,
    punch: Option<String>,
    stop: &Stop,
) -> ExitCode {
    let row = match stop.until(find_listing(&args, session.as_deref())).await {
        Ok(Ok(r)) => r,
        Ok(Err((kind, detail))) => return error_line(kind, &detail),
        Err(signal) => return interrupted(signal),
    };
    let override_punch = match punch.as_deref().map(parse_punch).transpose() {
        Ok(p) => p,
        Err((kind, detail)) => return error_line(kind, &detail),
    };
    // The mesh needs a punch server; the join itself uses the override or the listing's.
    let mesh_punch = match &override_punch {
        Some(p) => Ok(p.clone()),
        None => row
            .connect_info()
            .ok_or((
                "bad_listing",
                "the listing has no connect object".to_string(),
            ))
            .and_then(|c| parse_punch(&c.punch)),
    };
    let mesh = match mesh_punch.and_then(|p| args.mesh(p)) {
        Ok(m) => m,
        Err((kind, detail)) => return error_line(kind, &detail),
    };
    let id = row.id.to_string();
    let joining = mesh.join_via(
        JoinTarget::Listing(Box::new(row)),
        Vec::new(),
        override_punch,
    );
    let session = match stop.until(joining).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error_line(e.kind(), &e.to_string()),
        Err(signal) => return interrupted(signal),
    };
    emit(&json!({
        "event": "joined",
        "session": session.listing_id().unwrap_or(id),
        "peer": session.local_id().to_string(),
        "members": session.members().iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "host": session.host().map(|h| h.to_string()),
    }));
    run(session, stop).await
}

/// The listing `id`, or the first listed session of the game with a free slot.
async fn find_listing(
    args: &SessionArgs,
    id: Option<&str>,
) -> Result<SessionRow, (&'static str, String)> {
    let client =
        ListingClient::new(&args.master, REQUEST_TIMEOUT).map_err(|e| (e.kind(), e.to_string()))?;
    match id {
        Some(id) => {
            let id: ListingId = id
                .parse()
                .map_err(|_| ("usage", format!("session id {id:?} is not a UUID")))?;
            client.get(id).await.map_err(|e| match e.status() {
                Some(404) => ("not_found", "no such session".to_string()),
                _ => (e.kind(), e.to_string()),
            })
        }
        None => {
            let filter = Filter {
                has_space: true,
                ..Filter::default()
            };
            let list = client
                .list(&args.game, &filter)
                .await
                .map_err(|e| (e.kind(), e.to_string()))?;
            list.sessions
                .into_iter()
                .next()
                .ok_or(("not_found", format!("no {} session with space", args.game)))
        }
    }
}

/// `peer list`: one `session` line per live listing of `game`, every page.
pub async fn list(master: &str, game: &str) -> ExitCode {
    let client = match ListingClient::new(master, REQUEST_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return error_line(e.kind(), &e.to_string()),
    };
    let mut filter = Filter::default();
    loop {
        let page = match client.list(game, &filter).await {
            Ok(p) => p,
            Err(e) => return error_line(e.kind(), &e.to_string()),
        };
        for row in &page.sessions {
            emit(&json!({
                "event": "session",
                "id": row.id.to_string(),
                "name": row.name,
                "players": row.players,
                "max_players": row.max_players,
                "host": row.connect_info().map(|c| c.peer),
                "punch": row.connect_info().map(|c| c.punch),
            }));
        }
        match page.next_cursor {
            Some(c) if !page.sessions.is_empty() => filter.cursor = Some(c),
            _ => return ExitCode::SUCCESS,
        }
    }
}

/// Reads stdin lines on a thread (so a blocked read never holds up the exit); the
/// channel closes at EOF or on a read error.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// What the session loop woke up for.
enum Next {
    Line(String),
    Eof,
    Event(SessionEvent),
    Closed,
    Signal(Signal),
}

/// The session loop (steps in the module docs).
async fn run(mut session: Session, stop: &Stop) -> ExitCode {
    let local = session.local_id();
    let mut stdin = stdin_lines();
    let mut paths = HashMap::new();
    let mut path_check = tokio::time::interval(PATH_CHECK);
    loop {
        let next = tokio::select! {
            _ = path_check.tick() => {
                report_paths(&session, &mut paths);
                continue;
            }
            line = stdin.recv() => line.map_or(Next::Eof, Next::Line),
            event = session.next_event() => event.map_or(Next::Closed, Next::Event),
            signal = stop.wait() => Next::Signal(signal),
        };
        match next {
            Next::Signal(signal) => {
                // As at EOF: members told, links closed, the last member delists.
                bounded_cleanup(session.leave()).await;
                emit(&json!({"event": "left", "peer": local.to_string(), "signal": signal.name()}));
                return ExitCode::SUCCESS;
            }
            Next::Line(text) => {
                if let Err(e) =
                    session.broadcast(text.into_bytes().into(), Reliability::ReliableOrdered)
                {
                    emit(&json!({"event": "error", "kind": "send", "detail": e.to_string()}));
                }
            }
            Next::Eof => {
                session.leave().await;
                emit(&json!({"event": "left", "peer": local.to_string()}));
                return ExitCode::SUCCESS;
            }
            Next::Closed => return error_line("closed", "the session task stopped"),
            Next::Event(SessionEvent::Ended(end)) => {
                emit(&json!({"event": "ended", "reason": end_reason(&end)}));
                return if end == SessionEnd::Left {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            Next::Event(event) => on_event(&session, event),
        }
    }
}

/// How often the members' paths are looked at.
const PATH_CHECK: Duration = Duration::from_millis(200);

/// Prints a `path` line for each member whose link moved to another path since the last
/// look: `path` (`direct`, `relay` or `router`), `remote`, and `via` for a router.
fn report_paths(session: &Session, last: &mut HashMap<PeerId, ActivePath>) {
    let local = session.local_id();
    last.retain(|p, _| session.members().contains(p));
    for member in session.members().into_iter().filter(|m| *m != local) {
        let Some(path) = session.path_of(&member) else {
            continue;
        };
        if last.insert(member, path) == Some(path) {
            continue;
        }
        let mut line = json!({
            "event": "path",
            "peer": member.to_string(),
            "path": path.kind.as_str(),
            "remote": path.remote.to_string(),
        });
        if let Some(via) = path.via {
            line["via"] = via.to_string().into();
        }
        emit(&line);
    }
}

/// Prints one session event (and answers join requests).
fn on_event(session: &Session, event: SessionEvent) {
    let local = session.local_id();
    match event {
        SessionEvent::MemberJoined(peer) => {
            emit(&json!({"event": "member_joined", "peer": peer.to_string()}));
        }
        SessionEvent::MemberLeft { peer, reason } => emit(&json!({
            "event": "member_left",
            "peer": peer.to_string(),
            "reason": reason.as_str(),
        })),
        SessionEvent::HostChanged { old, new } => {
            emit(&json!({
                "event": "host_changed",
                "old": old.to_string(),
                "host": new.to_string(),
            }));
            if new == local {
                emit(&json!({
                    "event": "listing",
                    "session": session.listing_id(),
                    "host": local.to_string(),
                }));
            }
        }
        SessionEvent::JoinRequest { peer, .. } => {
            emit(&json!({"event": "join_request", "peer": peer.to_string()}));
            session.accept_join(peer);
        }
        SessionEvent::Message {
            from,
            bytes,
            reliability,
        } => emit(&json!({
            "event": "message",
            "from": from.to_string(),
            "text": String::from_utf8_lossy(&bytes),
            "reliable": reliability == Reliability::ReliableOrdered,
        })),
        SessionEvent::Ended(end) => {
            emit(&json!({"event": "ended", "reason": end_reason(&end)}));
        }
    }
}

/// A stable name for why the session ended.
fn end_reason(end: &SessionEnd) -> String {
    match end {
        SessionEnd::Left => "left".into(),
        SessionEnd::Removed => "removed".into(),
        SessionEnd::NoHost => "no_host".into(),
        SessionEnd::JoinFailed(f) => format!("join_failed: {f}"),
    }
}
