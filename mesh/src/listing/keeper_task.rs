//! [`KeeperTask`]: runs a sans-IO [`Keeper`] with a [`ListingClient`] on tokio.
//!
//! Steps of the task's loop:
//! 1. Report the keeper's events (tracing, the status watch, a waiting `delist`), and stop
//!    once the keeper has.
//! 2. If nothing is in flight, start the request the keeper asks for (the client bounds
//!    it with its request timeout).
//! 3. Wait for the first of: the response (fed back to the keeper), the keeper's timer,
//!    a change of the desired row, a delist request, or the handle going away (the task
//!    then stops and the row expires on its own).
//!
//! The game never waits on the master server: [`KeeperHandle`]'s setters write the
//! desired row into a watch (latest value wins), which the task applies to the keeper.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::client::{ListingClient, ListingError};
use super::keeper::Keeper;
use super::keeper_io::{Desired, KeeperEvent, KeeperRequest, KeeperResponse, RequestId};
use super::wire::{Attributes, ConnectInfo, ListingId};

/// A row's owner token. Its `Debug` form hides it: it is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerToken(pub String);

impl std::fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerToken(..)")
    }
}

/// What a [`KeeperTask`] reports about its listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperStatus {
    /// The row's id, once listed (it changes if the row is re-created).
    pub id: Option<ListingId>,
    /// The row's owner token, once listed (it changes with the id).
    pub token: Option<OwnerToken>,
    /// When a request last succeeded.
    pub last_success: Option<Instant>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The latest failure, cleared by a success.
    pub last_error: Option<ListingError>,
    /// The task has stopped (delisted, unauthorized, or its handle dropped).
    pub stopped: bool,
}

/// Why [`KeeperHandle::delist`] did not confirm the delisting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelistError {
    /// The master server did not confirm within the given time.
    #[error("delisting not confirmed within {0:?}")]
    Timeout(Duration),
    /// The task stopped before (e.g. after a refused token).
    #[error("the listing task has stopped")]
    Stopped,
    /// The master server refused the owner token.
    #[error("the master server refused the owner token")]
    Unauthorized,
}

type DelistReply = oneshot::Sender<Result<(), DelistError>>;
type Call = Pin<Box<dyn Future<Output = Result<KeeperResponse, ListingError>> + Send>>;

/// The game's side of a [`KeeperTask`]. Dropping it stops the task.
#[derive(Debug)]
pub struct KeeperHandle {
    desired: watch::Sender<Desired>,
    delist: mpsc::Sender<DelistReply>,
    status: watch::Receiver<KeeperStatus>,
}

impl KeeperHandle {
    /// Sets the player count. Never blocks.
    pub fn set_players(&self, players: u32) {
        self.desired
            .send_if_modified(|d| replace(&mut d.players, players));
    }

    /// Sets the capacity. Never blocks.
    pub fn set_max_players(&self, max_players: u32) {
        self.desired
            .send_if_modified(|d| replace(&mut d.max_players, max_players));
    }

    /// Sets the display name. Never blocks.
    pub fn set_name(&self, name: String) {
        self.desired
            .send_if_modified(|d| replace(&mut d.name, name));
    }

    /// Replaces the attributes. Never blocks.
    pub fn set_attributes(&self, attributes: Attributes) {
        self.desired
            .send_if_modified(|d| replace(&mut d.attributes, attributes));
    }

    /// Sets how to reach the host. Never blocks.
    pub fn set_connect(&self, connect: ConnectInfo) {
        self.desired
            .send_if_modified(|d| replace(&mut d.connect, Some(connect)));
    }

    /// The task's status, updated as it goes.
    pub fn status(&self) -> watch::Receiver<KeeperStatus> {
        self.status.clone()
    }

    /// Delists the row and waits up to `timeout` for the master server to confirm; the
    /// task stops either way.
    pub async fn delist(self, timeout: Duration) -> Result<(), DelistError> {
        let (reply, confirmed) = oneshot::channel();
        self.delist
            .try_send(reply)
            .map_err(|_| DelistError::Stopped)?;
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DelistError::Stopped),
            Err(_) => Err(DelistError::Timeout(timeout)),
        }
    }
}

/// Sets `*slot` to `value`; whether it changed.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

/// Runs a [`Keeper`] (see the module docs).
pub struct KeeperTask {
    client: ListingClient,
    keeper: Keeper,
    desired: watch::Receiver<Desired>,
    delist: mpsc::Receiver<DelistReply>,
    status: watch::Sender<KeeperStatus>,
    waiter: Option<DelistReply>,
    span: tracing::Span,
}

impl KeeperTask {
    /// Spawns the task on the current tokio runtime (panics outside one, like
    /// `tokio::spawn`).
    pub fn spawn(client: ListingClient, keeper: Keeper) -> KeeperHandle {
        let (desired_tx, desired_rx) = watch::channel(keeper.desired().clone());
        let (delist_tx, delist_rx) = mpsc::channel(1);
        let (status_tx, status_rx) = watch::channel(status_of(&keeper));
        let span = tracing::info_span!("listing", id = tracing::field::Empty);
        if let Some(id) = keeper.id() {
            span.record("id", tracing::field::display(id));
        }
        let task = KeeperTask {
            client,
            keeper,
            desired: desired_rx,
            delist: delist_rx,
            status: status_tx,
            waiter: None,
            span: span.clone(),
        };
        tokio::spawn(task.run().instrument(span));
        KeeperHandle {
            desired: desired_tx,
            delist: delist_tx,
            status: status_rx,
        }
    }

    async fn run(mut self) {
        let mut call: Option<(RequestId, Call)> = None;
        loop {
            self.report();
            if self.keeper.is_stopped() {
                break;
            }
            if call.is_none() {
                if let Some((id, request)) = self.keeper.poll_request() {
                    call = Some((id, Box::pin(execute(self.client.clone(), request))));
                }
            }
            let deadline = self
                .keeper
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                result = wait_call(&mut call), if call.is_some() => {
                    if let Some((id, _)) = call.take() {
                        self.keeper.handle_response(Instant::now(), id, result);
                    }
                }
                _ = sleep_until_opt(deadline) => self.keeper.handle_timeout(Instant::now()),
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let desired = self.desired.borrow_and_update().clone();
                    self.keeper.set_desired(&desired);
                }
                request = self.delist.recv() => match request {
                    Some(reply) => {
                        tracing::info!("delisting");
                        self.keeper.delist();
                        self.waiter = Some(reply);
                    }
                    None => break,
                },
            }
        }
        self.status.send_modify(|s| s.stopped = true);
        tracing::debug!("listing task stopped");
    }

    /// Reports the keeper's events and publishes its status.
    fn report(&mut self) {
        while let Some(event) = self.keeper.poll_event() {
            match event {
                KeeperEvent::Listed { id, .. } => {
                    self.span.record("id", tracing::field::display(id));
                    tracing::info!(%id, "listed");
                }
                KeeperEvent::Recreated { id, .. } => {
                    self.span.record("id", tracing::field::display(id));
                    tracing::info!(%id, "row had expired; listed again");
                }
                KeeperEvent::Updated => tracing::debug!("row updated"),
                KeeperEvent::Failed { error, retry_in } => {
                    tracing::warn!(%error, kind = error.kind(), ?retry_in, "listing request failed");
                }
                KeeperEvent::Unauthorized => {
                    tracing::error!("master server refused the owner token; listing stopped");
                    self.answer(Err(DelistError::Unauthorized));
                }
                KeeperEvent::Delisted => {
                    tracing::info!("delisted");
                    self.answer(Ok(()));
                }
            }
        }
        let status = status_of(&self.keeper);
        self.status
            .send_if_modified(|current| replace(current, status));
    }

    fn answer(&mut self, result: Result<(), DelistError>) {
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.send(result);
        }
    }
}

fn status_of(keeper: &Keeper) -> KeeperStatus {
    KeeperStatus {
        id: keeper.id(),
        token: keeper.token().map(|t| OwnerToken(t.to_string())),
        last_success: keeper.last_success(),
        consecutive_failures: keeper.consecutive_failures(),
        last_error: keeper.last_error().cloned(),
        stopped: keeper.is_stopped(),
    }
}

/// Sends one keeper request.
async fn execute(
    client: ListingClient,
    request: KeeperRequest,
) -> Result<KeeperResponse, ListingError> {
    match request {
        KeeperRequest::Create(body) => client.create(&body).await.map(KeeperResponse::Created),
        KeeperRequest::Heartbeat { id, token } => client
            .heartbeat(id, &token)
            .await
            .map(KeeperResponse::Heartbeat),
        KeeperRequest::Patch { id, token, patch } => client
            .patch(id, &token, &patch)
            .await
            .map(KeeperResponse::Patched),
        KeeperRequest::Delete { id, token } => client
            .delete(id, &token)
            .await
            .map(|()| KeeperResponse::Deleted),
    }
}

/// Awaits the call in `slot` (the `select!` guard makes sure there is one).
async fn wait_call(slot: &mut Option<(RequestId, Call)>) -> Result<KeeperResponse, ListingError> {
    match slot {
        Some((_, call)) => call.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
