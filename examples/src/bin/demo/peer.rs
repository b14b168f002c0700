//! The hidden `demo peer` subcommand: one [`Mesh`] peer in its own process, driven by the
//! demo over JSON lines ([`super::proto`]).
//!
//! Steps:
//! 1. Generate an identity and build a [`Mesh`] bound to 127.0.0.1 (UPnP off).
//! 2. `--role host`: host a session of `--game` and print `hosted`; `--role join`: join the
//!    listing `--listing` and print `joined` with the latency.
//! 3. Until stdin closes: print every session event; broadcast what the demo asks; as the
//!    host (the first one or a successor), accept every join request at once.
//! 4. On end of stdin, leave gracefully and print `left`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use mesh::coord::PunchAddr;
use mesh::identity::{Identity, PeerId};
use mesh::listing::ListingId;
use mesh::session::{
    JoinTarget, Mesh, MeshConfig, Reliability, Session, SessionConfig, SessionEvent,
};
use std::io::BufRead as _;

use super::proto::{FromPeer, ToPeer};

/// Bound of the queue of stdin lines.
const STDIN_QUEUE: usize = 64;

/// What a peer process does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Host a new session.
    Host,
    /// Join the session `--listing`.
    Join,
}

/// Flags of `demo peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Host or join.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The master server's base URL.
    #[arg(long)]
    pub master: String,
    /// The punch server, `ID@HOST:PORT`.
    #[arg(long)]
    pub punch: PunchAddr,
    /// The game name of the listing.
    #[arg(long)]
    pub game: String,
    /// The listing to join (with `--role join`).
    #[arg(long)]
    pub listing: Option<ListingId>,
}

/// Prints one protocol line on stdout (line-buffered, so the demo sees it at once).
fn emit(event: &FromPeer) {
    match serde_json::to_string(event) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("demo peer: cannot encode {event:?}: {e}"),
    }
}

fn ids(members: Vec<PeerId>) -> Vec<String> {
    members.into_iter().map(|p| p.to_string()).collect()
}

/// Runs one peer (see the module docs); errors are also printed as `failed`.
pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    let result = run_inner(args).await;
    if let Err(e) = &result {
        emit(&FromPeer::Failed {
            error: format!("{e:#}"),
        });
    }
    result
}

async fn run_inner(args: PeerArgs) -> anyhow::Result<()> {
    let identity = Arc::new(Identity::generate().context("generating an identity")?);
    let mut config = MeshConfig::new(args.master.clone(), args.punch.clone());
    // Loopback only, and no UPnP discovery (it would multicast on the LAN).
    config.direct.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.direct.upnp = None;
    let mesh = Mesh::new(identity, config).context("creating the mesh")?;
    let started = Instant::now();
    let session = match args.role {
        Role::Host => {
            let session = mesh
                .host(&args.game, SessionConfig::new("demo session"))
                .await
                .context("hosting")?;
            emit(&FromPeer::Hosted {
                peer: session.local_id().to_string(),
                listing: session.listing_id().unwrap_or_default(),
                latency_ms: millis(started.elapsed()),
            });
            session
        }
        Role::Join => {
            let listing = args.listing.context("--role join needs --listing")?;
            let session = mesh
                .join(JoinTarget::Id(listing), b"demo".to_vec())
                .await
                .context("joining")?;
            emit(&FromPeer::Joined {
                peer: session.local_id().to_string(),
                host: session.host().map(|h| h.to_string()).unwrap_or_default(),
                members: ids(session.members()),
                latency_ms: millis(started.elapsed()),
            });
            session
        }
    };
    serve(session).await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Step 3 and 4 of the module docs.
async fn serve(mut session: Session) -> anyhow::Result<()> {
    let mut stdin = stdin_lines();
    loop {
        tokio::select! {
            line = stdin.recv() => match line {
                Some(line) => command(&session, &line),
                // End of stdin (or a broken one): leave.
                None => break,
            },
            event = session.next_event() => match event {
                Some(event) => {
                    if !on_event(&session, event) {
                        return Ok(());
                    }
                }
                None => {
                    emit(&FromPeer::Ended { reason: "event stream closed".into() });
                    return Ok(());
                }
            },
        }
    }
    session.leave().await;
    emit(&FromPeer::Left);
    Ok(())
}

/// Lines of stdin, read by a thread (blocking reads; the workspace's tokio has no
/// `io-std`); the channel closes at end of input.
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

/// Runs one command line from the demo.
fn command(session: &Session, line: &str) {
    match serde_json::from_str::<ToPeer>(line) {
        Ok(ToPeer::Broadcast { text }) => {
            if let Err(e) = session.broadcast(Bytes::from(text), Reliability::ReliableOrdered) {
                emit(&FromPeer::Failed {
                    error: format!("broadcast: {e}"),
                });
            }
        }
        Err(e) => eprintln!("demo peer: bad command {line:?}: {e}"),
    }
}

/// Reports one session event; false once the session is over.
fn on_event(session: &Session, event: SessionEvent) -> bool {
    let line = match event {
        SessionEvent::JoinRequest { peer, .. } => {
            session.accept_join(peer);
            FromPeer::Accepted {
                peer: peer.to_string(),
            }
        }
        SessionEvent::MemberJoined(peer) => FromPeer::MemberJoined {
            peer: peer.to_string(),
            members: ids(session.members()),
        },
        SessionEvent::MemberLeft { peer, reason } => FromPeer::MemberLeft {
            peer: peer.to_string(),
            reason: reason.as_str().into(),
            members: ids(session.members()),
        },
        SessionEvent::HostChanged { old, new } => FromPeer::HostChanged {
            old: old.to_string(),
            new: new.to_string(),
        },
        SessionEvent::Message {
            from,
            bytes,
            reliability,
        } => FromPeer::Message {
            from: from.to_string(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            reliable: reliability == Reliability::ReliableOrdered,
        },
        SessionEvent::Ended(why) => {
            emit(&FromPeer::Ended {
                reason: format!("{why:?}"),
            });
            return false;
        }
    };
    emit(&line);
    true
}
