//! A parked control task: the node's registration kept alive without a QUIC connection
//! (see [`super::control`], step 4, and [`crate::coord::park`]).
//!
//! Steps of [`ControlTask::parked`]:
//! 1. Build the sans-IO [`ParkKeeper`] with the server's key and keep-alive interval;
//!    drop STUN datagrams from the server that were queued before the park.
//! 2. Loop: send what the keeper queued (from the node's one socket, to the server's
//!    port, sent as [`StunOwner::Control`] so the socket's router brings the answers
//!    here), act on its events, then wait for the next of: a STUN datagram from the
//!    server (answers by transaction id; wake-ups passed on by the engine), a command of
//!    the node, a change of the
//!    allowlist, or the keeper's timer.
//! 3. Return why the node must dial again ([`Unpark`]): woken by the server, the
//!    keep-alives failed, a command needs the connection (a `Connect` is queued and sent
//!    on the new session; new candidates are registered with it), or the allowlist's
//!    openness changed (the server holds the parked connection's policy), or half the
//!    remaining life of the relay credentials passed (a parked node gets no `Relays`
//!    renewals; dialing again brings fresh ones with the registration). `None` when the
//!    node closed (then after sending the server a signed leave, so dials to the node
//!    fail at once instead of waking nobody) or dropped its handles.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::control_task::ControlTask;
use super::sleep_until_opt;
use crate::coord::{ParkEvent, ParkKeeper, ParkKey, ParkLost};
use crate::stun::StunOwner;
use crate::turn::RelayCredential;

/// Why a parked node dials the server again.
pub(super) enum Unpark {
    /// Woken by the server (someone connects to us).
    Woken,
    /// The keep-alives failed: the server no longer holds our registration.
    Lost(ParkLost),
    /// The node needs the connection (it connects, or its registration changed).
    Needed,
    /// The relay credentials are half way to expiry: a new registration renews them.
    RenewRelays,
}

/// When a parked node should dial again to renew its relay credentials: half way from
/// `now_unix` to the earliest expiry; `None` without relays or once they expired (the
/// server no longer offers them, or its clock is off: dialing would not help).
pub(super) fn relay_renewal_at(
    relays: &[RelayCredential],
    now: Instant,
    now_unix: Duration,
) -> Option<Instant> {
    let earliest = relays.iter().map(|r| r.expires_unix).min()?;
    let left = Duration::from_secs(earliest).checked_sub(now_unix)?;
    (!left.is_zero()).then(|| now + left / 2)
}

impl ControlTask {
    /// Keeps the parked registration alive ([`ParkKeeper`]) until the node must dial the
    /// server again; `None` if the node closed or went away.
    pub(super) async fn parked(&mut self, key: ParkKey, interval: Duration) -> Option<Unpark> {
        let me = self.connector.endpoint.peer_id();
        let server = self.connector.server;
        let seed = rand::random();
        let mut keeper = ParkKeeper::new(Instant::now(), me, key, server, interval, seed);
        // Datagrams from before the park are of no use.
        while self.server_stun.try_recv().is_ok() {}
        let open = self.settings.allow.is_open();
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let renew_at = relay_renewal_at(&self.relays.borrow(), Instant::now(), now_unix);
        loop {
            if self.closed.load(Ordering::Relaxed) {
                // Closed while this loop was busy (another branch won the race with the
                // close signal): the server must still hear that we are gone.
                self.leave(&mut keeper, server).await;
                return None;
            }
            while let Some(datagram) = keeper.poll_transmit() {
                if let Err(e) = self
                    .connector
                    .endpoint
                    .send_stun_as(StunOwner::Control, server, &datagram)
                    .await
                {
                    tracing::debug!(error = %e, "keep-alive not sent");
                }
            }
            while let Some(event) = keeper.poll_event() {
                match event {
                    ParkEvent::Confirmed { mapped } => {
                        tracing::debug!(?mapped, "parked registration confirmed");
                    }
                    ParkEvent::Woken => return Some(Unpark::Woken),
                    ParkEvent::Lost(why) => return Some(Unpark::Lost(why)),
                }
            }
            let wake_at = keeper.poll_timeout();
            tokio::select! {
                datagram = self.server_stun.recv() => {
                    let datagram = datagram?;
                    keeper.handle_datagram(Instant::now(), datagram.from, &datagram.data);
                }
                command = self.commands.recv() => {
                    // Registered with, or sent on, the next session (see
                    // `ControlClient::session_lost`).
                    self.on_command(command?);
                    self.dispatch_events();
                    return Some(Unpark::Needed);
                }
                changed = self.allow_changes.changed() => {
                    // The server holds the policy of the parked connection: sync it.
                    if changed.is_ok() && self.settings.allow.is_open() != open {
                        return Some(Unpark::Needed);
                    }
                }
                _ = sleep_until_opt(Some(wake_at)) => keeper.handle_timeout(Instant::now()),
                _ = sleep_until_opt(renew_at) => return Some(Unpark::RenewRelays),
                _ = self.close_signal.notified() => {
                    self.leave(&mut keeper, server).await;
                    return None;
                }
            }
        }
    }

    /// Tells the server we are gone (a signed leave), so dials to us fail at once.
    async fn leave(&self, keeper: &mut ParkKeeper, server: std::net::SocketAddr) {
        if let Some(leave) = keeper.leave() {
            let _ = self
                .connector
                .endpoint
                .send_stun_as(StunOwner::Control, server, &leave)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(expires_unix: u64) -> RelayCredential {
        let uri = "turn:127.0.0.1:3478".parse().expect("uri");
        RelayCredential::issue(uri, "secret", "peer", expires_unix)
    }

    #[test]
    fn a_parked_node_renews_half_way_to_the_earliest_expiry() {
        let now = Instant::now();
        let unix = Duration::from_secs(1_000_000);
        assert_eq!(relay_renewal_at(&[], now, unix), None);
        let relays = [relay(1_003_600), relay(1_000_600)];
        assert_eq!(
            relay_renewal_at(&relays, now, unix),
            Some(now + Duration::from_secs(300))
        );
        // Expired (a server that stopped offering relays, or a clock off): no renewal,
        // or the node would dial again after every park.
        assert_eq!(relay_renewal_at(&[relay(1_000_000)], now, unix), None);
        assert_eq!(relay_renewal_at(&[relay(999_000)], now, unix), None);
    }
}
