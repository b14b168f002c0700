//! `game`: the smallest game loop on `mesh::session`, meant to be read.
//!
//! Run a master server and a punch server (`demo servers` starts both on 127.0.0.1 and
//! prints the flags), then in two or more terminals:
//!
//! ```text
//! game --master http://127.0.0.1:PORT --punch ID@127.0.0.1:PORT host
//! game --master http://127.0.0.1:PORT --punch ID@127.0.0.1:PORT join [--session ID]
//! ```
//!
//! Steps:
//! 1. Build a [`Mesh`] (identity, master server, punch server).
//! 2. `host`: post a session and print its listing id. `join`: join `--session`, or the
//!    first session of `--game` with room.
//! 3. Loop until end of stdin, Ctrl-C or the session ends:
//!    - every 1/30 s: move, and broadcast the position as an *unreliable* datagram (a lost
//!      position is not worth resending: the next one supersedes it);
//!    - every line typed on stdin: broadcast it as a *reliable* chat message;
//!    - every session event: print chat, membership and host changes, count positions;
//!      as host (the first one, or a successor after migration) accept every joiner;
//!    - every second: print how many position updates arrived from each member.
//! 4. Leave gracefully (members are told; the last one delists the session).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use mesh::coord::PunchAddr;
use mesh::identity::{Identity, PeerId};
use mesh::listing::{Filter, ListingId};
use mesh::session::{
    JoinTarget, Mesh, MeshConfig, Reliability, Session, SessionConfig, SessionEvent,
};

/// Position updates per second.
const TICK_HZ: u64 = 30;
/// Bound of the queue of typed lines.
const STDIN_QUEUE: usize = 64;

/// A minimal game on a mesh session: positions at 30 Hz (unreliable), chat (reliable).
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// The master server's base URL.
    #[arg(long, env = "GAME_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// The punch server, `ID@HOST:PORT`.
    #[arg(long, env = "GAME_PUNCH")]
    punch: PunchAddr,
    /// The game name sessions are listed under.
    #[arg(long, env = "GAME_NAME", default_value = "mesh-game")]
    game: String,
    /// Local UDP address of the node (use 127.0.0.1:0 to stay on this machine). The default
    /// `[::]:0` is one dual-stack socket (IPv4 and IPv6).
    #[arg(long, env = "GAME_BIND", default_value = "[::]:0")]
    bind: SocketAddr,
    /// Do not map a port with UPnP.
    #[arg(long, env = "GAME_NO_UPNP")]
    no_upnp: bool,
    /// Host or join.
    #[command(subcommand)]
    mode: Mode,
}

/// What to do with a session.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Host a new session.
    Host,
    /// Join a session.
    Join {
        /// The listing id; without it, the first session of the game with room.
        #[arg(long)]
        session: Option<ListingId>,
    },
}

/// A position update on the wire: 13 bytes, little-endian.
///
/// | byte 0 | bytes 1..5 | bytes 5..9 | bytes 9..13 |
/// |--------|------------|------------|-------------|
/// | `b'P'` | seq (u32)  | x (f32)    | y (f32)     |
#[derive(Debug, Clone, Copy, PartialEq)]
struct Position {
    /// Rises with every update, so a receiver can drop stale (reordered) ones.
    seq: u32,
    x: f32,
    y: f32,
}

impl Position {
    const TAG: u8 = b'P';
    const LEN: usize = 13;

    fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(Self::LEN);
        b.push(Self::TAG);
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.x.to_le_bytes());
        b.extend_from_slice(&self.y.to_le_bytes());
        Bytes::from(b)
    }

    /// `None` for anything that is not exactly a position update (peers are untrusted).
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN || b[0] != Self::TAG {
            return None;
        }
        let word = |i: usize| -> Option<[u8; 4]> { b.get(i..i + 4)?.try_into().ok() };
        Some(Self {
            seq: u32::from_le_bytes(word(1)?),
            x: f32::from_le_bytes(word(5)?),
            y: f32::from_le_bytes(word(9)?),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Step 1: the mesh.
    let identity = Arc::new(Identity::generate()?);
    let mut config = MeshConfig::new(cli.master.clone(), cli.punch.clone());
    config.direct.bind = cli.bind;
    if cli.no_upnp {
        config.direct.upnp = None;
    }
    let mesh = Mesh::new(identity, config)?;
    println!("I am {}", mesh.peer_id().short());

    // Step 2: host or join.
    let session = match cli.mode {
        Mode::Host => {
            let s = mesh
                .host(&cli.game, SessionConfig::new("mesh-game session"))
                .await?;
            println!("hosting; session id {}", s.listing_id().unwrap_or_default());
            s
        }
        Mode::Join { session } => {
            let target = match session {
                Some(id) => JoinTarget::Id(id),
                None => {
                    let filter = Filter {
                        has_space: true,
                        ..Filter::default()
                    };
                    let list = mesh.list(&cli.game, &filter).await?;
                    let row = list
                        .sessions
                        .into_iter()
                        .next()
                        .context("no session with room")?;
                    JoinTarget::Listing(Box::new(row))
                }
            };
            let s = mesh.join(target, Vec::new()).await?;
            println!("joined; {} members", s.members().len());
            s
        }
    };

    // Steps 3 and 4.
    play(session).await
}

/// The game loop (step 3), then the graceful leave (step 4).
async fn play(mut session: Session) -> anyhow::Result<()> {
    let mut chat = stdin_lines();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / TICK_HZ));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let mut me = Position {
        seq: 0,
        x: 0.0,
        y: 0.0,
    };
    // Position updates received from each member since the last report, and the newest
    // one seen from each (to drop reordered datagrams).
    let mut received: BTreeMap<PeerId, u32> = BTreeMap::new();
    let mut newest: BTreeMap<PeerId, Position> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Walk in a circle; a real game would move by input here.
                me.seq = me.seq.wrapping_add(1);
                let t = me.seq as f32 / TICK_HZ as f32;
                (me.x, me.y) = (t.cos() * 10.0, t.sin() * 10.0);
                // Unreliable: a full queue or a lost datagram is fine, the next tick follows.
                let _ = session.broadcast(me.encode(), Reliability::Unreliable);
            }
            line = chat.recv() => match line {
                Some(line) if !line.trim().is_empty() => {
                    if let Err(e) = session.broadcast(Bytes::from(line), Reliability::ReliableOrdered) {
                        println!("chat not sent: {e}");
                    }
                }
                Some(_) => {}
                None => break, // end of stdin: leave
            },
            _ = report.tick() => {
                let counts: Vec<String> = session
                    .members()
                    .into_iter()
                    .filter(|m| *m != session.local_id())
                    .map(|m| format!("{}: {}", m.short(), received.remove(&m).unwrap_or(0)))
                    .collect();
                if !counts.is_empty() {
                    println!("positions/s  {}", counts.join("  "));
                }
            }
            event = session.next_event() => match event {
                Some(SessionEvent::Message { from, bytes, reliability: Reliability::Unreliable }) => {
                    if let Some(p) = Position::decode(&bytes) {
                        // Keep only newer updates (seq may wrap after ~4.5 years at 30 Hz).
                        if newest.get(&from).is_none_or(|old| p.seq > old.seq) {
                            newest.insert(from, p);
                            *received.entry(from).or_default() += 1;
                        }
                    }
                }
                Some(SessionEvent::Message { from, bytes, .. }) => {
                    println!("<{}> {}", from.short(), String::from_utf8_lossy(&bytes));
                }
                Some(SessionEvent::JoinRequest { peer, .. }) => session.accept_join(peer),
                Some(SessionEvent::MemberJoined(p)) => println!("* {} joined", p.short()),
                Some(SessionEvent::MemberLeft { peer, reason }) => {
                    println!("* {} left ({})", peer.short(), reason.as_str());
                    newest.remove(&peer);
                }
                Some(SessionEvent::HostChanged { new, .. }) => {
                    let me = if new == session.local_id() { " (me)" } else { "" };
                    println!("* {} is the host now{me}", new.short());
                }
                Some(SessionEvent::Ended(why)) => {
                    println!("* session over: {why:?}");
                    return Ok(());
                }
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    session.leave().await;
    println!("left");
    Ok(())
}

/// Lines typed on stdin, read by a thread (blocking reads); closes at end of input.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(STDIN_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_and_rejects_other_bytes() {
        let p = Position {
            seq: 7,
            x: 1.5,
            y: -2.0,
        };
        assert_eq!(Position::decode(&p.encode()), Some(p));
        assert_eq!(Position::decode(b"hello"), None);
        assert_eq!(Position::decode(&[b'X'; Position::LEN]), None);
    }
}
