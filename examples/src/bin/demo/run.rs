//! The demo's orchestration: peer processes, the steps, the timeline.
//!
//! Steps of [`run`] (each bounded by the step timeout; a step that does not happen in time
//! fails the demo):
//! 1. Start the master and punch servers in this process ([`Servers`]).
//! 2. Start peer 1 as host; read its listing from the master server.
//! 3. Start peers 2..N one after the other, each joining by listing id; print each join's
//!    latency; wait until every peer sees all N members.
//! 4. Every peer broadcasts a reliable hello; wait until each arrived at all others.
//! 5. Read the listing: players = N.
//! 6. SIGKILL the host's process; wait until every survivor reports the same new host.
//! 7. Read the listing again: still live, players = N-1, `connect.peer` = the new host.
//! 8. Close each survivor's stdin in turn (it leaves gracefully) and wait for it to exit;
//!    the last one delists the session. Stop the servers.

use std::collections::{BTreeSet, VecDeque};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use mesh::listing::{Filter, ListingClient, ListingId, SessionRow};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::proto::{FromPeer, ToPeer};
use super::servers::Servers;

/// Bound of the queue of peer lines into the demo.
const NOTE_QUEUE: usize = 1024;
/// How often the listing is read while waiting for it to change.
const LISTING_POLL: Duration = Duration::from_millis(100);

/// What the demo runs with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of peers (at least 2).
    pub peers: usize,
    /// Game name of the listing.
    pub game: String,
    /// Print only the main steps.
    pub quiet: bool,
    /// Longest any one step may take.
    pub step_timeout: Duration,
}

/// Prints timeline lines with the time since the start.
struct Timeline {
    start: Instant,
    quiet: bool,
}

impl Timeline {
    /// A main step: always printed.
    fn step(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>6.2}s] {}",
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    /// A detail: printed unless `--quiet`.
    fn detail(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            println!(
                "[{:>6.2}s]     {}",
                self.start.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }
}

/// A line from peer `peer` (index from 0); `None` when its stdout closed.
struct Note {
    peer: usize,
    event: Option<FromPeer>,
}

/// One peer process.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its peer id, once it said.
    id: String,
    /// The members it last reported.
    members: Vec<String>,
    /// False once it was killed or its stdout closed.
    alive: bool,
}

/// The demo's state: the timeline, the peer processes and their lines.
struct Demo {
    tl: Timeline,
    opts: Options,
    peers: Vec<Peer>,
    notes_tx: mpsc::Sender<Note>,
    notes: mpsc::Receiver<Note>,
    /// Lines received but not yet consumed by a step.
    backlog: VecDeque<Note>,
}

/// Runs the demo (see the module docs).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let tl = Timeline {
        start: Instant::now(),
        quiet: opts.quiet,
    };
    let step_timeout = opts.step_timeout;
    let servers = tokio::time::timeout(step_timeout, Servers::start())
        .await
        .context("the servers did not start in time")??;
    tl.step(format!("master server listening on {}", servers.master_url));
    tl.step(format!("punch server listening on {}", servers.punch));
    let (notes_tx, notes) = mpsc::channel(NOTE_QUEUE);
    let mut demo = Demo {
        tl,
        opts,
        peers: Vec::new(),
        notes_tx,
        notes,
        backlog: VecDeque::new(),
    };
    let result = demo.steps(&servers).await;
    // Whatever happened, no peer outlives the demo (they are also killed on drop).
    for p in demo.peers.iter_mut().filter(|p| p.alive) {
        let _ = p.child.start_kill();
    }
    result?;
    servers.shutdown().await?;
    demo.tl.step("servers stopped; demo complete");
    Ok(())
}

/// The first 10 characters of an id, as the mesh logs them.
fn short(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

impl Demo {
    async fn steps(&mut self, servers: &Servers) -> anyhow::Result<()> {
        let n = self.opts.peers;
        let listings = ListingClient::new(&servers.master_url, Duration::from_secs(5))
            .context("creating the listing client")?;

        // Step 2: the host.
        self.spawn(servers, None)?;
        let hosted = self
            .expect("peer 1 to host", |n| {
                n.peer == 0 && matches!(n.event, Some(FromPeer::Hosted { .. }))
            })
            .await?;
        let Some(FromPeer::Hosted {
            peer,
            listing,
            latency_ms,
        }) = hosted.event
        else {
            bail!("unreachable: not a hosted line");
        };
        self.peers[0].id = peer.clone();
        self.peers[0].members = vec![peer];
        self.tl.step(format!(
            "{} hosts a session ({latency_ms} ms), listing {listing}",
            self.name(0)
        ));
        let listing_id: ListingId = listing.parse().context("the host's listing id")?;
        let list = listings
            .list(&self.opts.game, &Filter::default())
            .await
            .context("listing sessions")?;
        let row = list
            .sessions
            .iter()
            .find(|r| r.id == listing_id.0)
            .context("the session is not in the game's list")?;
        self.tl.step(format!(
            "master server lists it: {:?} players {}/{} ({} session(s) of game {:?})",
            row.name,
            row.players,
            row.max_players,
            list.sessions.len(),
            self.opts.game
        ));

        // Step 3: the joiners, one after the other.
        for k in 1..n {
            let spawned = Instant::now();
            self.spawn(servers, Some(&listing))?;
            let joined = self
                .expect(&format!("peer {} to join", k + 1), |n| {
                    n.peer == k && matches!(n.event, Some(FromPeer::Joined { .. }))
                })
                .await?;
            let Some(FromPeer::Joined {
                peer,
                members,
                latency_ms,
                ..
            }) = joined.event
            else {
                bail!("unreachable: not a joined line");
            };
            self.peers[k].id = peer;
            self.peers[k].members = members;
            self.tl.step(format!(
                "{} joined in {latency_ms} ms (process start to member: {} ms)",
                self.name(k),
                spawned.elapsed().as_millis()
            ));
        }
        self.until(&format!("every peer to see {n} members"), |d| {
            d.peers.iter().all(|p| p.members.len() == n)
        })
        .await?;
        self.tl
            .step(format!("full mesh: every peer sees {n} members"));

        // Step 4: hellos.
        let sent = Instant::now();
        for k in 0..n {
            let text = format!("hello from peer {}", k + 1);
            self.command(k, &ToPeer::Broadcast { text }).await?;
        }
        let mut got: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        for _ in 0..n * (n - 1) {
            let note = self
                .expect("the hellos to arrive", |n| {
                    matches!(&n.event, Some(FromPeer::Message { text, .. }) if text.starts_with("hello"))
                })
                .await?;
            let Some(FromPeer::Message {
                from,
                text,
                reliable,
            }) = note.event
            else {
                bail!("unreachable: not a message line");
            };
            let sender = self.index(&from).context("a hello from an unknown peer")?;
            ensure!(reliable, "the hello from {from} did not come reliably");
            ensure!(
                got[note.peer].insert(sender),
                "{} got a second hello from {}",
                self.name(note.peer),
                self.name(sender)
            );
            self.tl.detail(format!(
                "{} got {text:?} from {}",
                self.name(note.peer),
                self.name(sender)
            ));
        }
        self.tl.step(format!(
            "all {} hellos arrived at all others ({} ms)",
            n * (n - 1),
            sent.elapsed().as_millis()
        ));

        // Step 5: the listing counts everybody.
        let row = self
            .listing_until(&listings, listing_id, "players = N", |r| {
                r.players as usize == n
            })
            .await?;
        self.tl.step(format!(
            "listing: live, players {}/{}, connect.peer = {}",
            row.players,
            row.max_players,
            self.connect_name(&row)
        ));

        // Step 6: kill the host.
        let pid = self.peers[0].child.id().unwrap_or_default();
        let killed = Instant::now();
        self.peers[0]
            .child
            .start_kill()
            .context("killing the host")?;
        self.peers[0].alive = false;
        tokio::time::timeout(self.opts.step_timeout, self.peers[0].child.wait())
            .await
            .context("the killed host did not exit")??;
        self.tl
            .step(format!("SIGKILLed the host, {} (pid {pid})", self.name(0)));
        let mut new_host = None;
        for k in 1..n {
            let note = self
                .expect(&format!("{} to see the host change", self.name(k)), |n| {
                    n.peer == k && matches!(n.event, Some(FromPeer::HostChanged { .. }))
                })
                .await?;
            let Some(FromPeer::HostChanged { old, new }) = note.event else {
                bail!("unreachable: not a host_changed line");
            };
            let new_name = self
                .index(&new)
                .map_or_else(|| short(&new).to_string(), |i| self.name(i));
            self.tl.step(format!(
                "{} sees host changed: {} -> {new_name} ({} ms after the kill)",
                self.name(k),
                self.index(&old)
                    .map_or_else(|| short(&old).to_string(), |i| self.name(i)),
                killed.elapsed().as_millis()
            ));
            ensure!(
                old == self.peers[0].id,
                "{} saw a change from {old}, not from the killed host",
                self.name(k)
            );
            match &new_host {
                None => new_host = Some(new),
                Some(h) => ensure!(
                    *h == new,
                    "survivors disagree on the new host: {h} and {new}"
                ),
            }
        }
        let new_host = new_host.context("no survivor")?;
        let new_index = self
            .index(&new_host)
            .context("the new host is not a survivor")?;
        ensure!(new_index != 0, "the killed host is the new host");
        self.tl.step(format!(
            "all {} survivors agree: the new host is {} ({} ms from kill to agreement)",
            n - 1,
            self.name(new_index),
            killed.elapsed().as_millis()
        ));

        // Step 7: the listing follows the new host.
        let row = self
            .listing_until(
                &listings,
                listing_id,
                "players = N-1 and connect.peer = the new host",
                |r| {
                    r.players as usize == n - 1
                        && r.connect_info().is_some_and(|c| c.peer == new_host)
                },
            )
            .await?;
        self.tl.step(format!(
            "listing after migration: live, players {}/{}, connect.peer = {} = the new host ({} ms after the kill)",
            row.players,
            row.max_players,
            self.connect_name(&row),
            killed.elapsed().as_millis()
        ));

        // Step 8: the survivors leave one after the other, so the last one sees itself
        // alone and delists the session.
        let leaving = Instant::now();
        for k in 1..n {
            self.peers[k].stdin = None;
            self.expect(&format!("{} to leave", self.name(k)), |n| {
                n.peer == k && matches!(n.event, Some(FromPeer::Left))
            })
            .await?;
            let status = tokio::time::timeout(self.opts.step_timeout, self.peers[k].child.wait())
                .await
                .with_context(|| format!("{} did not exit after leaving", self.name(k)))??;
            ensure!(status.success(), "{} exited with {status}", self.name(k));
            self.peers[k].alive = false;
            self.tl.detail(format!("{} left and exited", self.name(k)));
        }
        self.tl.step(format!(
            "all survivors left gracefully, one after the other ({} ms)",
            leaving.elapsed().as_millis()
        ));
        match listings.get(listing_id).await {
            Err(e) if e.status() == Some(404) => {
                self.tl.step("listing: gone (the last member delisted it)")
            }
            Ok(r) => self.tl.step(format!(
                "listing: still there (players {}); it expires on its own",
                r.players
            )),
            Err(e) => self.tl.step(format!("listing: could not be read: {e}")),
        }
        Ok(())
    }

    /// "peer K (id…)" for peer index `k`.
    fn name(&self, k: usize) -> String {
        let id = &self.peers[k].id;
        if id.is_empty() {
            format!("peer {}", k + 1)
        } else {
            format!("peer {} ({})", k + 1, short(id))
        }
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    fn connect_name(&self, row: &SessionRow) -> String {
        match row.connect_info() {
            Some(c) => self
                .index(&c.peer)
                .map_or_else(|| short(&c.peer).to_string(), |i| self.name(i)),
            None => "(none)".into(),
        }
    }

    /// Starts the next peer: the host without a listing, else a joiner of `listing`.
    fn spawn(&mut self, servers: &Servers, listing: Option<&str>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the demo's own executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("peer")
            .args(["--master", &servers.master_url])
            .args(["--punch", &servers.punch.to_string()])
            .args(["--game", &self.opts.game]);
        match listing {
            None => cmd.args(["--role", "host"]),
            Some(l) => cmd.args(["--role", "join", "--listing", l]),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a peer process")?;
        let stdout = child.stdout.take().context("the peer's stdout")?;
        let stdin = child.stdin.take();
        let index = self.peers.len();
        let tx = self.notes_tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = match serde_json::from_str::<FromPeer>(&line) {
                    Ok(e) => e,
                    Err(_) => {
                        eprintln!("peer {}: {line}", index + 1);
                        continue;
                    }
                };
                if tx
                    .send(Note {
                        peer: index,
                        event: Some(event),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx
                .send(Note {
                    peer: index,
                    event: None,
                })
                .await;
        });
        self.peers.push(Peer {
            child,
            stdin,
            id: String::new(),
            members: Vec::new(),
            alive: true,
        });
        Ok(())
    }

    /// Writes one command line to peer `k`.
    async fn command(&mut self, k: usize, command: &ToPeer) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        let stdin = self.peers[k]
            .stdin
            .as_mut()
            .context("the peer's stdin is closed")?;
        tokio::time::timeout(self.opts.step_timeout, stdin.write_all(line.as_bytes()))
            .await
            .context("writing to a peer timed out")??;
        Ok(())
    }

    /// Receives one line (within `deadline`), notes what it says and queues it; false if
    /// the deadline passed first.
    async fn pump(&mut self, what: &str, deadline: tokio::time::Instant) -> anyhow::Result<bool> {
        let note = match tokio::time::timeout_at(deadline, self.notes.recv()).await {
            Ok(Some(note)) => note,
            Ok(None) => bail!("all peer output closed while waiting for {what}"),
            Err(_) => return Ok(false),
        };
        let k = note.peer;
        match &note.event {
            // A peer whose stdin is closed is leaving: its output ends.
            None if self.peers[k].alive && self.peers[k].stdin.is_some() => {
                bail!("{} exited while waiting for {what}", self.name(k))
            }
            None => {}
            Some(FromPeer::Failed { error }) => bail!("{} failed: {error}", self.name(k)),
            Some(FromPeer::Ended { reason }) if self.peers[k].alive => {
                bail!(
                    "{}'s session ended ({reason}) while waiting for {what}",
                    self.name(k)
                )
            }
            Some(FromPeer::MemberJoined { peer, members }) => {
                self.peers[k].members = members.clone();
                let who = self
                    .index(peer)
                    .map_or_else(|| short(peer).to_string(), |i| self.name(i));
                self.tl.detail(format!(
                    "{} sees {who} join ({} members)",
                    self.name(k),
                    members.len()
                ));
            }
            Some(FromPeer::MemberLeft {
                peer,
                reason,
                members,
            }) => {
                self.peers[k].members = members.clone();
                let who = self
                    .index(peer)
                    .map_or_else(|| short(peer).to_string(), |i| self.name(i));
                self.tl
                    .detail(format!("{} sees {who} leave ({reason})", self.name(k)));
            }
            Some(FromPeer::Accepted { peer }) => {
                // Joins run one at a time: the joiner is the newest peer.
                let joiner = self.peers.len();
                self.tl.detail(format!(
                    "{} accepts the join request of peer {joiner} ({})",
                    self.name(k),
                    short(peer)
                ));
            }
            Some(_) => {}
        }
        self.backlog.push_back(note);
        Ok(true)
    }

    fn timed_out(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "timed out after {} s waiting for {what}",
            self.opts.step_timeout.as_secs()
        )
    }

    /// Waits (within the step timeout) for a line matching `pred` and takes it.
    async fn expect(&mut self, what: &str, pred: impl Fn(&Note) -> bool) -> anyhow::Result<Note> {
        let deadline = tokio::time::Instant::now() + self.opts.step_timeout;
        let mut seen = 0;
        loop {
            if let Some(i) = self.backlog.iter().skip(seen).position(&pred) {
                if let Some(note) = self.backlog.remove(seen + i) {
                    return Ok(note);
                }
            }
            seen = self.backlog.len();
            if !self.pump(what, deadline).await? {
                return Err(self.timed_out(what));
            }
        }
    }

    /// Waits (within the step timeout) until `cond` holds.
    async fn until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.opts.step_timeout;
        while !cond(self) {
            if !self.pump(what, deadline).await? {
                return Err(self.timed_out(what));
            }
        }
        Ok(())
    }

    /// Reads the listing until `cond` holds (within the step timeout), while still
    /// taking the peers' lines.
    async fn listing_until(
        &mut self,
        client: &ListingClient,
        id: ListingId,
        what: &str,
        cond: impl Fn(&SessionRow) -> bool,
    ) -> anyhow::Result<SessionRow> {
        let deadline = tokio::time::Instant::now() + self.opts.step_timeout;
        loop {
            let last = match client.get(id).await {
                Ok(row) if cond(&row) => return Ok(row),
                Ok(row) => format!(
                    "players {}, connect.peer {}",
                    row.players,
                    self.connect_name(&row)
                ),
                Err(e) => e.to_string(),
            };
            let poll = tokio::time::Instant::now() + LISTING_POLL;
            if poll >= deadline {
                bail!("timed out waiting for the listing to show {what}; last read: {last}");
            }
            // Keep reading peer lines meanwhile (a failing peer ends the wait early).
            while self.pump(what, poll).await? {}
        }
    }
}
