//! The listing follows the session: delisted while locked (when the host asks for it),
//! listed again under a new row when unlocked, and that new row's grant reaches the other
//! members, so the next host keeps the right row alive.
//!
//! Flow, with the real servers on 127.0.0.1 and two in-process peers:
//! 1. A host with `delist_when_locked` and a joiner form a session; the row shows 2
//!    players.
//! 2. The host locks: the row is deleted (`GET` answers 404) and the game is no longer
//!    listed.
//! 3. The host unlocks: the game is listed again, under a new id, with 2 players, and both
//!    members report that id (`listing_id()`): the member got the new grant.
//! 4. The host dies (its `Session` dropped without `leave`): the joiner takes over and
//!    the new row names it, with 1 player.
//! 5. The new host leaves: as the last member it delists the session.
//!
//! And when every member leaves at the same moment, the session is delisted at once.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::loopback::{loopback_mesh, Servers};
use mesh::listing::{Filter, ListingId, SessionRow};
use mesh::session::{JoinTarget, Mesh, Session, SessionConfig};

const GAME: &str = "listing-follows";
/// Bound of every wait (a host failover is 3 s of detection plus the election).
const WAIT: Duration = Duration::from_secs(20);

fn id_of(session: &Session) -> Result<ListingId> {
    session
        .listing_id()
        .context("no listing id")?
        .parse()
        .map_err(|e| anyhow::anyhow!("listing id: {e:?}"))
}

/// Polls `check` every 50 ms until it holds; fails with `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        ensure!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The game's listed rows.
async fn listed(mesh: &Mesh) -> Vec<SessionRow> {
    mesh.list(GAME, &Filter::default())
        .await
        .map(|l| l.sessions)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delisted_while_locked_relisted_on_unlock_and_kept_by_the_next_host() -> Result<()> {
    let servers = Servers::start(Stdio::inherit)?;
    let (host_mesh, joiner_mesh) = (loopback_mesh(&servers)?, loopback_mesh(&servers)?);
    let mut config = SessionConfig::new("locks");
    config.delist_when_locked = true;
    let host = host_mesh.host(GAME, config).await?;
    let first = id_of(&host)?;
    let joiner = joiner_mesh.join(JoinTarget::Id(first), Vec::new()).await?;
    let client = joiner_mesh.listing();
    eventually("2 players listed", || async {
        client.get(first).await.is_ok_and(|r| r.players == 2)
    })
    .await?;

    // 2. Locked: delisted.
    host.set_locked(true);
    eventually("the row deleted", || async {
        client
            .get(first)
            .await
            .is_err_and(|e| e.status() == Some(404))
    })
    .await?;
    ensure!(listed(&joiner_mesh).await.is_empty(), "still listed");

    // 3. Unlocked: listed again under a new row that both members know.
    host.set_locked(false);
    eventually("listed again with 2 players", || async {
        let rows = listed(&joiner_mesh).await;
        rows.len() == 1 && rows[0].players == 2 && ListingId(rows[0].id) != first
    })
    .await?;
    let second = ListingId(listed(&joiner_mesh).await[0].id);
    eventually("both members hold the new grant", || async {
        id_of(&host).is_ok_and(|id| id == second) && id_of(&joiner).is_ok_and(|id| id == second)
    })
    .await?;

    // 4. The host dies: the joiner keeps the new row, naming itself.
    let new_host = joiner.local_id().to_string();
    drop(host);
    eventually("the new row names the new host with 1 player", || async {
        client
            .get(second)
            .await
            .is_ok_and(|r| r.players == 1 && r.connect_info().is_some_and(|c| c.peer == new_host))
    })
    .await?;

    // 5. The last member leaves: delisted.
    joiner.leave().await;
    eventually("delisted by the last member", || async {
        client
            .get(second)
            .await
            .is_err_and(|e| e.status() == Some(404))
    })
    .await?;
    Ok(())
}

/// Every member leaves at the same moment: the host hears the others leave too and
/// delists, instead of leaving a row behind that names a session nobody hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_leaving_at_once_delists() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let servers = Servers::start(Stdio::inherit)?;
    let meshes = [
        loopback_mesh(&servers)?,
        loopback_mesh(&servers)?,
        loopback_mesh(&servers)?,
    ];
    let host = meshes[0]
        .host(GAME, SessionConfig::new("all leave"))
        .await?;
    let id = id_of(&host)?;
    let first = meshes[1].join(JoinTarget::Id(id), Vec::new()).await?;
    let second = meshes[2].join(JoinTarget::Id(id), Vec::new()).await?;
    let client = meshes[0].listing();
    eventually("3 players listed", || async {
        client.get(id).await.is_ok_and(|r| r.players == 3)
    })
    .await?;
    let left = Instant::now();
    tokio::join!(host.leave(), first.leave(), second.leave());
    eventually("delisted", || async {
        client.get(id).await.is_err_and(|e| e.status() == Some(404))
    })
    .await?;
    eprintln!("delisted {:?} after the leaves", left.elapsed());
    ensure!(listed(&meshes[0]).await.is_empty(), "still listed");
    Ok(())
}
