//! [`Keeper`]: keeps one session listed on a master server. Sans-IO: it performs no I/O
//! and reads no clock; a driver ([`super::KeeperTask`], or a test) feeds it time and
//! responses and sends the requests it asks for.
//!
//! Protocol:
//! 1. Without a row, it asks for `Create` with the full desired body.
//! 2. With a row, it asks for a `Heartbeat` every `timeout × heartbeat_fraction` after
//!    the last success. Desired-state changes coalesce into one pending `Patch`, sent as
//!    soon as nothing is in flight (and no retry is waiting); a patch counts as a heartbeat.
//! 3. At most one request is in flight. A failure is retried after a [`Backoff`] delay
//!    (`retry_min` up to `timeout / 3`, jittered); a success resets the backoff.
//! 4. A 404 on a heartbeat or patch means the row expired: it posts the row again with the
//!    full desired body and continues with the new id and token.
//! 5. A 401 or 403 stops it ([`KeeperEvent::Unauthorized`]).
//! 6. [`Keeper::delist`] sends `Delete` once nothing is in flight, then stops (a 404 on
//!    delete means the row is gone already).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::client::ListingError;
use super::keeper_io::{
    Desired, KeeperConfig, KeeperEvent, KeeperRequest, KeeperResponse, RequestId, MAX_EVENTS,
};
use super::wire::{Created, ListingId};
use crate::backoff::Backoff;

mod desired;
#[cfg(test)]
mod tests;

use desired::Dirty;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Create,
    Heartbeat,
    Patch(Dirty),
    Delete,
}

/// Keeps one listing alive (see the module docs for the protocol).
#[derive(Debug)]
pub struct Keeper {
    desired: Desired,
    timeout: Duration,
    interval: Duration,
    row: Option<(ListingId, String)>,
    /// The row existed once and vanished (the next create is a re-create).
    lost: bool,
    dirty: Dirty,
    in_flight: Option<(RequestId, Sent)>,
    next_id: u64,
    /// Earliest instant of the next heartbeat, create or retry.
    due: Instant,
    /// `due` is a retry after a failure (patches wait for it too).
    retrying: bool,
    now: Instant,
    backoff: Backoff,
    rng: StdRng,
    failures: u32,
    last_success: Option<Instant>,
    last_error: Option<ListingError>,
    delisting: bool,
    /// A failing delete gives up here: the row has expired by then.
    delist_deadline: Instant,
    stopped: bool,
    events: VecDeque<KeeperEvent>,
}

impl Keeper {
    /// A keeper that first posts a new row for `desired`, alive `timeout` per heartbeat.
    pub fn create(now: Instant, desired: Desired, timeout: Duration, config: KeeperConfig) -> Self {
        let interval = Duration::try_from_secs_f64(
            timeout.as_secs_f64() * config.heartbeat_fraction.clamp(0.05, 0.9),
        )
        .unwrap_or(Duration::MAX)
        .max(Duration::from_millis(10));
        Keeper {
            desired,
            timeout,
            interval,
            row: None,
            lost: false,
            dirty: Dirty::default(),
            in_flight: None,
            next_id: 0,
            due: now,
            retrying: false,
            now,
            backoff: Backoff::new(config.retry_min, timeout / 3),
            rng: StdRng::seed_from_u64(config.seed),
            failures: 0,
            last_success: None,
            last_error: None,
            delisting: false,
            delist_deadline: now,
            stopped: false,
            events: VecDeque::new(),
        }
    }

    /// A keeper of an existing row (`id`, `token`); it heartbeats at once to confirm it.
    pub fn new(
        now: Instant,
        id: ListingId,
        token: String,
        timeout: Duration,
        desired: Desired,
        config: KeeperConfig,
    ) -> Self {
        let mut keeper = Keeper::create(now, desired, timeout, config);
        keeper.row = Some((id, token));
        keeper
    }

    /// The current row's id, once listed.
    pub fn id(&self) -> Option<ListingId> {
        self.row.as_ref().map(|(id, _)| *id)
    }

    /// The current row's owner token, once listed.
    pub fn token(&self) -> Option<&str> {
        self.row.as_ref().map(|(_, token)| token.as_str())
    }

    /// The desired state.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        self.interval
    }

    /// When the last request succeeded.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The latest failure, cleared by a success.
    pub fn last_error(&self) -> Option<&ListingError> {
        self.last_error.as_ref()
    }

    /// Whether the keeper stopped (delisted or unauthorized); it asks for nothing more.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a request is awaiting its response.
    pub fn in_flight(&self) -> Option<RequestId> {
        self.in_flight.map(|(id, _)| id)
    }
}

impl Keeper {
    /// Delists: `Delete` once nothing is in flight, then stop.
    pub fn delist(&mut self) {
        if !self.stopped && !self.delisting {
            self.delisting = true;
            self.delist_deadline = after(self.now, self.timeout);
        }
    }

    /// Time has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// When to call [`Keeper::handle_timeout`] next; `None` while a request is in flight
    /// or once stopped. Never before the latest time the keeper was given.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped || self.in_flight.is_some() {
            return None;
        }
        Some(self.due.max(self.now))
    }

    /// The next event to report.
    pub fn poll_event(&mut self) -> Option<KeeperEvent> {
        self.events.pop_front()
    }

    /// The request to send now, if any (never while another is in flight).
    pub fn poll_request(&mut self) -> Option<(RequestId, KeeperRequest)> {
        if self.stopped || self.in_flight.is_some() {
            return None;
        }
        let ready = self.now >= self.due;
        let (sent, request) = match self.row.clone() {
            None if self.delisting => {
                self.stop(KeeperEvent::Delisted);
                return None;
            }
            None if ready => {
                self.dirty = Dirty::default();
                (Sent::Create, KeeperRequest::Create(self.create_body()))
            }
            None => return None,
            Some((id, token)) if self.delisting => {
                if self.retrying && !ready {
                    return None;
                }
                (Sent::Delete, KeeperRequest::Delete { id, token })
            }
            Some((id, token)) if self.dirty.any() && (ready || !self.retrying) => {
                let dirty = std::mem::take(&mut self.dirty);
                let patch = self.patch_body(dirty);
                (
                    Sent::Patch(dirty),
                    KeeperRequest::Patch { id, token, patch },
                )
            }
            Some((id, token)) if ready => (Sent::Heartbeat, KeeperRequest::Heartbeat { id, token }),
            Some(_) => return None,
        };
        let request_id = RequestId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.in_flight = Some((request_id, sent));
        Some((request_id, request))
    }

    /// The answer to request `id` (answers to anything but the request in flight are
    /// ignored).
    pub fn handle_response(
        &mut self,
        now: Instant,
        id: RequestId,
        result: Result<KeeperResponse, ListingError>,
    ) {
        self.now = self.now.max(now);
        let sent = match self.in_flight {
            Some((in_flight, sent)) if in_flight == id => sent,
            _ => return,
        };
        self.in_flight = None;
        if self.stopped {
            return;
        }
        match (sent, result) {
            (Sent::Create, Ok(KeeperResponse::Created(created))) => self.on_created(created),
            (Sent::Create, Ok(_)) => self.on_failure(
                sent,
                ListingError::Decode("create answered without the created row".into()),
            ),
            (_, Ok(_)) => self.on_success(sent),
            (_, Err(error)) => self.on_failure(sent, error),
        }
    }

    fn on_created(&mut self, created: Created) {
        let id = ListingId(created.id);
        self.row = Some((id, created.token.clone()));
        let token = created.token;
        self.push(if self.lost {
            KeeperEvent::Recreated { id, token }
        } else {
            KeeperEvent::Listed { id, token }
        });
        self.on_success(Sent::Create);
    }

    fn on_success(&mut self, sent: Sent) {
        self.failures = 0;
        self.last_error = None;
        self.backoff.reset();
        self.retrying = false;
        self.last_success = Some(self.now);
        self.due = after(self.now, self.interval);
        match sent {
            Sent::Patch(_) => self.push(KeeperEvent::Updated),
            Sent::Delete => self.stop(KeeperEvent::Delisted),
            Sent::Create | Sent::Heartbeat => {}
        }
    }

    fn on_failure(&mut self, sent: Sent, error: ListingError) {
        match (error.status(), sent) {
            (Some(401 | 403), _) => {
                self.last_error = Some(error);
                self.stop(KeeperEvent::Unauthorized);
                return;
            }
            (Some(404), Sent::Delete) => {
                self.stop(KeeperEvent::Delisted);
                return;
            }
            (Some(404), Sent::Heartbeat | Sent::Patch(_)) => {
                // The row expired: post it again at once, with the full desired body.
                self.row = None;
                self.lost = true;
                self.retrying = false;
                self.due = self.now;
                self.last_error = Some(error);
                return;
            }
            _ => {}
        }
        if sent == Sent::Delete && self.now >= self.delist_deadline {
            self.stop(KeeperEvent::Delisted);
            return;
        }
        if let Sent::Patch(dirty) = sent {
            // A patch the server rejected for good is dropped, so heartbeats go on.
            if error.is_retryable() {
                self.dirty.merge(dirty);
            }
        }
        self.failures = self.failures.saturating_add(1);
        let retry_in = self.backoff.next(&mut self.rng);
        self.due = after(self.now, retry_in);
        self.retrying = true;
        self.last_error = Some(error.clone());
        self.push(KeeperEvent::Failed { error, retry_in });
    }

    fn stop(&mut self, event: KeeperEvent) {
        self.stopped = true;
        self.push(event);
    }

    fn push(&mut self, event: KeeperEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}
