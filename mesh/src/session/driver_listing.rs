//! The session task's listing duties: the host keeps the session's row alive (a
//! [`Keeper`] started from the grant that travels with the view), members take up a
//! re-posted row's new grant, and the last members to leave delist it.
//!
//! Steps:
//! 1. After every step of the core, [`SessionTask::sync_listing`]: the host starts a
//!    keeper from the grant (its connect object names the new host; the player count
//!    follows the view), a member that is not the host drops its keeper, and a locked
//!    session with `delist_when_locked` is delisted (posted again when unlocked).
//! 2. A keeper that posted the row again reports a new id and token
//!    ([`SessionTask::on_keeper_status`]): the grant in the view is replaced, so every
//!    member (and whoever hosts next) keeps the right row.
//! 3. Leaving ([`SessionTask::delist_if_everyone_leaves`]): whoever keeps the listing
//!    delists it when every other member says `Leave` within [`LEAVE_WAIT`].

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Input, SessionTask, DELIST_TIMEOUT, LEAVE_WAIT};
use crate::identity::PeerId;
use crate::listing::{
    ConnectInfo, Desired, Keeper, KeeperConfig, KeeperHandle, KeeperStatus, KeeperTask, ListingId,
};
use crate::session::SessionMsg;

impl SessionTask {
    /// Leaving: whoever keeps the listing (the host, or the member next in line while the
    /// host is lost) delists it when every other member leaves too, within
    /// [`LEAVE_WAIT`] (or none is left); otherwise another member keeps it.
    pub(super) async fn delist_if_everyone_leaves(&mut self, inputs: &mut mpsc::Receiver<Input>) {
        let local = self.core.local_id();
        let next_in_line = self.core.accepts_successor(local);
        tracing::debug!(
            keeper = self.keeper.is_some(),
            next_in_line,
            members = self.core.view().members.len(),
            "leaving"
        );
        if self.keeper.is_none() && !next_in_line {
            return;
        }
        let others: Vec<PeerId> = (self.core.view().members.iter())
            .filter(|m| **m != local && !self.said_leave.contains(m) && !self.core.down.contains(m))
            .copied()
            .collect();
        if !all_leave(inputs, others).await {
            return;
        }
        let result = match (self.keeper.take(), self.core.grant()) {
            (Some((keeper, _)), _) => keeper
                .delist(DELIST_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            (None, Some(grant)) => match grant.listing.parse::<ListingId>() {
                Ok(id) => {
                    let delete = self.listing.client.delete(id, &grant.token);
                    match tokio::time::timeout(DELIST_TIMEOUT, delete).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) if e.status() == Some(404) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timed out".to_string()),
                    }
                }
                Err(e) => Err(format!("listing id: {e:?}")),
            },
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => tracing::info!("every member left: delisted"),
            Err(e) => tracing::warn!(error = %e, "listing not delisted"),
        }
    }

    /// The listing's row was posted again (it had expired, or was delisted while locked):
    /// every member gets the new grant, so whoever hosts next keeps the right row.
    pub(super) fn on_keeper_status(&mut self, status: KeeperStatus) {
        if status.stopped {
            if let Some(e) = &status.last_error {
                tracing::warn!(error = %e, "the listing's keeper stopped");
            }
        }
        let (Some(id), Some(token)) = (status.id, status.token) else {
            return;
        };
        let Some(old) = self.core.grant() else {
            return;
        };
        let listing = id.to_string();
        if old.listing == listing && old.token == token.0 {
            return;
        }
        tracing::info!(listing = %listing, "the listing has a new row: members get its grant");
        let grant = crate::session::ListingGrant {
            listing,
            token: token.0,
            ..old.clone()
        };
        self.core.set_grant(grant);
    }

    pub(super) fn sync_listing(&mut self, is_host: bool, players: usize) {
        if !is_host || self.core.is_ended() {
            if self.leaving.is_none() {
                // Not the host (any more): someone else keeps the listing.
                self.keeper = None;
            }
            return;
        }
        let players = u32::try_from(players).unwrap_or(u32::MAX);
        let Some(grant) = self.core.grant().cloned() else {
            return;
        };
        if grant.delist_when_locked && self.core.view().locked {
            // Locked: not listed. The row comes back (under a new id) when unlocked.
            if let Some((keeper, _)) = self.keeper.take() {
                tokio::spawn(async move {
                    match keeper.delist(DELIST_TIMEOUT).await {
                        Ok(()) => tracing::info!("locked: delisted"),
                        Err(e) => tracing::warn!(error = %e, "locked: not delisted"),
                    }
                });
            }
            return;
        }
        if self.keeper.is_none() {
            let Ok(id) = grant.listing.parse::<ListingId>() else {
                tracing::warn!(listing = %grant.listing, "listing id does not parse; not kept");
                return;
            };
            let cfg = &self.listing.config;
            let desired = Desired {
                game: self.listing.game.clone(),
                name: cfg.name.clone(),
                max_players: cfg.max_players,
                players,
                attributes: cfg.attributes.clone(),
                connect: Some(ConnectInfo {
                    peer: self.core.local_id().to_string(),
                    punch: self.listing.punch.clone(),
                }),
            };
            // The row may still say what the previous host posted: start the keeper from
            // an unknown player count and connect object, so that setting the real ones
            // marks them changed and the keeper patches them at once (a keeper started
            // with the desired state takes the row as up to date and only heartbeats).
            let stale = Desired {
                players: 0,
                connect: None,
                ..desired.clone()
            };
            let mut keeper = Keeper::new(
                Instant::now(),
                id,
                grant.token,
                // The original host's timeout travels with the grant.
                Duration::from_secs(u64::from(if grant.timeout_secs > 0 {
                    grant.timeout_secs
                } else {
                    cfg.listing_timeout_secs
                })),
                stale,
                KeeperConfig::default(),
            );
            // A new host says where it is at once (the connect object names it now). A row
            // that is gone (expired, or delisted while locked) is posted again.
            keeper.set_desired(&desired);
            let handle = KeeperTask::spawn(self.listing.client.clone(), keeper);
            tracing::info!(listing = %id, players, "keeping the listing alive");
            let status = handle.status();
            self.keeper = Some((handle, status));
            self.players = players;
        } else if players != self.players {
            if let Some((k, _)) = &self.keeper {
                k.set_players(players);
            }
            self.players = players;
        }
    }
}

/// Whether every one of `others` says `Leave` within [`LEAVE_WAIT`] (true at once when
/// there are none).
async fn all_leave(inputs: &mut mpsc::Receiver<Input>, mut others: Vec<PeerId>) -> bool {
    let wait = async {
        while !others.is_empty() {
            match inputs.recv().await {
                Some(Input::Frame {
                    peer,
                    msg: SessionMsg::Leave,
                    ..
                }) => others.retain(|p| *p != peer),
                Some(other) => tracing::debug!(?other, "while leaving"),
                None => return false,
            }
        }
        true
    };
    let all = tokio::time::timeout(LEAVE_WAIT, wait)
        .await
        .unwrap_or(false);
    tracing::debug!(all, "other members leaving too");
    all
}

/// The keeper's next status, if there is a keeper; never ready otherwise.
pub(super) async fn keeper_changed(
    keeper: &mut Option<(KeeperHandle, watch::Receiver<KeeperStatus>)>,
) -> Option<KeeperStatus> {
    match keeper {
        Some((_, status)) => match status.changed().await {
            Ok(()) => Some(status.borrow_and_update().clone()),
            // The task stopped: nothing more will change.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
