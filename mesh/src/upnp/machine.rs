//! The sans-IO core of the UPnP port mapper: when to search, map, renew, retry and remove.
//!
//! No sockets, no sleeps: the driver (`driver.rs`) feeds results and the clock in and
//! executes the [`Action`]s that come out. Steps of one mapping's life:
//! 1. [`Machine::start`]: `Search` (SSDP discovery plus `GetExternalIPAddress`).
//! 2. Search result: a failure is retried after a backoff (`retry_base`, doubling, capped at
//!    `retry_max`) until `search_attempts` failed, then the state is `Unavailable`, and a new
//!    round starts after `rediscover_after` (if set). An external address that is
//!    unspecified (`0.0.0.0`) counts as a failure; a reserved or private one (a lab, a
//!    double NAT) is usable and taken as is.
//! 3. `Map` with the local port as the external port. "Port in use" switches to any
//!    external port (`AddAnyPortMapping`); "only permanent leases" retries with lease 0;
//!    other failures are retried with backoff up to `map_attempts`, then `Unavailable`.
//! 4. `Mapped`: the same `Map` request (an `AddPortMapping` for the same external port
//!    refreshes the lease) is sent at half the granted lease. A failed renewal is retried
//!    with backoff while the lease lasts; when it runs out, the mapping is lost and a new
//!    round starts at step 1. Permanent leases (0) are never renewed.
//! 5. [`Machine::shutdown`]: a live mapping (or one whose request is in flight) is removed
//!    with `Remove`; then the machine is closed. The state reads `Unavailable("stopped")`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::UpnpState;

/// Timing and retry limits of the state machine (the driver's `UpnpConfig` fills them).
#[derive(Debug, Clone)]
pub(crate) struct MachineConfig {
    /// The socket's local port: the first external port asked for.
    pub local_port: u16,
    /// Lease asked for; zero means permanent.
    pub lease: Duration,
    /// Searches in one round before giving up.
    pub search_attempts: u32,
    /// Failed map requests (other than "port in use") before giving up.
    pub map_attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Start a new round this long after giving up (`None`: never).
    pub rediscover_after: Option<Duration>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Find the gateway and ask for its external address; answer with
    /// [`Machine::on_search`].
    Search,
    /// Add (or refresh) a UDP mapping to the local socket: external port `Some(p)` exactly,
    /// or `None` for any port; answer with [`Machine::on_map`].
    Map {
        /// External port wanted, or any.
        external_port: Option<u16>,
        /// Lease in whole seconds (0: permanent).
        lease_secs: u32,
    },
    /// Remove the mapping of this external port; answer with [`Machine::on_removed`].
    Remove {
        /// External port to remove.
        external_port: u16,
    },
}

/// Why a map request failed, as far as the decisions care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MapFailure {
    /// The external port is taken (by another client or the gateway itself).
    PortInUse,
    /// The gateway only accepts lease 0 (UPnP error 725).
    OnlyPermanentLeases,
    /// Anything else (not authorized, I/O, timeout, malformed answer), with a description.
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    SearchWait {
        at: Instant,
    },
    Searching,
    MapWait {
        at: Instant,
        port: Option<u16>,
    },
    Mapping {
        port: Option<u16>,
    },
    Mapped {
        port: u16,
        renew_at: Option<Instant>,
        lease_until: Option<Instant>,
    },
    Renewing {
        port: u16,
        lease_until: Instant,
    },
    RenewWait {
        at: Instant,
        port: u16,
        lease_until: Instant,
    },
    Unavailable {
        retry_at: Option<Instant>,
    },
    Removing,
    Closed,
}

/// The port mapper's decisions; see the module docs.
#[derive(Debug)]
pub(crate) struct Machine {
    cfg: MachineConfig,
    phase: Phase,
    pending: Option<Action>,
    external_ip: Option<IpAddr>,
    search_failures: u32,
    map_failures: u32,
    renew_failures: u32,
    permanent_only: bool,
    closing: bool,
    state: UpnpState,
}

impl Machine {
    pub(crate) fn new(cfg: MachineConfig) -> Self {
        Machine {
            cfg,
            phase: Phase::Idle,
            pending: None,
            external_ip: None,
            search_failures: 0,
            map_failures: 0,
            renew_failures: 0,
            permanent_only: false,
            closing: false,
            state: UpnpState::Searching,
        }
    }

    /// The state to publish.
    pub(crate) fn state(&self) -> &UpnpState {
        &self.state
    }

    /// Whether the machine is done (after shutdown).
    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next action for the driver, if any.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.pending.take()
    }

    /// When [`Machine::handle_timeout`] wants to run next, if at all.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::SearchWait { at } | Phase::MapWait { at, .. } | Phase::RenewWait { at, .. } => {
                Some(*at)
            }
            Phase::Mapped { renew_at, .. } => *renew_at,
            Phase::Unavailable { retry_at } => *retry_at,
            _ => None,
        }
    }

    /// Starts the first round.
    pub(crate) fn start(&mut self, _now: Instant) {
        if self.phase == Phase::Idle {
            self.begin_round();
        }
    }

    fn lease_secs(&self) -> u32 {
        if self.permanent_only {
            0
        } else {
            u32::try_from(self.cfg.lease.as_secs()).unwrap_or(u32::MAX)
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        self.cfg
            .retry_base
            .saturating_mul(1u32 << shift)
            .min(self.cfg.retry_max)
    }

    fn begin_round(&mut self) {
        self.search_failures = 0;
        self.map_failures = 0;
        self.renew_failures = 0;
        self.external_ip = None;
        self.state = UpnpState::Searching;
        self.search();
    }

    fn search(&mut self) {
        self.phase = Phase::Searching;
        self.pending = Some(Action::Search);
    }

    fn map(&mut self, port: Option<u16>) {
        self.phase = Phase::Mapping { port };
        self.pending = Some(Action::Map {
            external_port: port,
            lease_secs: self.lease_secs(),
        });
    }

    fn give_up(&mut self, now: Instant, reason: String) {
        self.phase = Phase::Unavailable {
            retry_at: self.cfg.rediscover_after.map(|d| now + d),
        };
        self.state = UpnpState::Unavailable { reason };
    }

    /// Result of a search: the gateway's external address, or why none was found.
    pub(crate) fn on_search(&mut self, now: Instant, result: Result<IpAddr, String>) {
        if self.phase != Phase::Searching {
            return;
        }
        let result = result.and_then(|ip| {
            if ip.is_unspecified() {
                Err(format!("gateway reports no external address ({ip})"))
            } else {
                Ok(ip)
            }
        });
        match result {
            Ok(ip) => {
                self.external_ip = Some(ip);
                self.map(Some(self.cfg.local_port));
            }
            Err(reason) => {
                self.search_failures += 1;
                if self.search_failures >= self.cfg.search_attempts {
                    self.give_up(
                        now,
                        format!(
                            "no UPnP gateway after {} searches: {reason}",
                            self.search_failures
                        ),
                    );
                } else {
                    self.phase = Phase::SearchWait {
                        at: now + self.backoff(self.search_failures),
                    };
                }
            }
        }
    }

    /// Result of a `Map` request: the external port mapped, or why not.
    pub(crate) fn on_map(&mut self, now: Instant, result: Result<u16, MapFailure>) {
        match self.phase.clone() {
            Phase::Mapping { port } => self.on_first_map(now, port, result),
            Phase::Renewing { port, lease_until } => self.on_renew(now, port, lease_until, result),
            _ => {}
        }
    }

    fn mapped(&mut self, now: Instant, port: u16) {
        let Some(ip) = self.external_ip else {
            // Cannot happen: a map follows a successful search. Start over.
            self.begin_round();
            return;
        };
        let lease = self.lease_secs();
        let (renew_at, lease_until) = if lease == 0 {
            (None, None)
        } else {
            let lease = Duration::from_secs(u64::from(lease));
            let half = (lease / 2).max(Duration::from_secs(1));
            (Some(now + half), Some(now + lease))
        };
        self.renew_failures = 0;
        self.phase = Phase::Mapped {
            port,
            renew_at,
            lease_until,
        };
        self.state = UpnpState::Mapped {
            external: SocketAddr::new(ip, port),
            lease_until,
        };
    }

    fn on_first_map(&mut self, now: Instant, port: Option<u16>, result: Result<u16, MapFailure>) {
        if self.closing {
            // Shut down while the request was in flight: undo what it did.
            match result {
                Ok(external_port) => {
                    self.phase = Phase::Removing;
                    self.pending = Some(Action::Remove { external_port });
                }
                Err(_) => self.phase = Phase::Closed,
            }
            return;
        }
        match result {
            Ok(external_port) => self.mapped(now, external_port),
            Err(MapFailure::PortInUse) if port.is_some() => self.map(None),
            Err(MapFailure::OnlyPermanentLeases) if !self.permanent_only => {
                self.permanent_only = true;
                self.map(port);
            }
            Err(failure) => {
                self.map_failures += 1;
                if self.map_failures >= self.cfg.map_attempts {
                    let what = match failure {
                        MapFailure::PortInUse => "no free external port".to_string(),
                        MapFailure::OnlyPermanentLeases => "lease refused".to_string(),
                        MapFailure::Other(detail) => detail,
                    };
                    self.give_up(
                        now,
                        format!(
                            "gateway refused the mapping {} times: {what}",
                            self.map_failures
                        ),
                    );
                } else {
                    self.phase = Phase::MapWait {
                        at: now + self.backoff(self.map_failures),
                        port,
                    };
                }
            }
        }
    }

    fn on_renew(
        &mut self,
        now: Instant,
        port: u16,
        lease_until: Instant,
        result: Result<u16, MapFailure>,
    ) {
        if self.closing {
            self.phase = Phase::Removing;
            self.pending = Some(Action::Remove {
                external_port: port,
            });
            return;
        }
        match result {
            Ok(external_port) => self.mapped(now, external_port),
            Err(MapFailure::OnlyPermanentLeases) if !self.permanent_only => {
                self.permanent_only = true;
                self.phase = Phase::Renewing { port, lease_until };
                self.pending = Some(Action::Map {
                    external_port: Some(port),
                    lease_secs: 0,
                });
            }
            Err(MapFailure::PortInUse) => {
                // Someone else holds our port now: the mapping is gone, map any port.
                self.state = UpnpState::Searching;
                self.map_failures = 0;
                self.map(None);
            }
            Err(_) => {
                self.renew_failures += 1;
                let at = now + self.backoff(self.renew_failures);
                if at >= lease_until {
                    self.begin_round();
                } else {
                    self.phase = Phase::RenewWait {
                        at,
                        port,
                        lease_until,
                    };
                }
            }
        }
    }

    /// Result of a `Remove` request (success or not, the machine closes).
    pub(crate) fn on_removed(&mut self, _now: Instant, _result: Result<(), String>) {
        if self.phase == Phase::Removing {
            self.phase = Phase::Closed;
        }
    }

    /// Runs the timer that [`Machine::poll_timeout`] asked for (early calls do nothing).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.phase.clone() {
            Phase::SearchWait { at } if now >= at => self.search(),
            Phase::MapWait { at, port } if now >= at => self.map(port),
            Phase::Mapped {
                port,
                renew_at: Some(at),
                lease_until: Some(lease_until),
            } if now >= at => {
                self.phase = Phase::Renewing { port, lease_until };
                self.pending = Some(Action::Map {
                    external_port: Some(port),
                    lease_secs: self.lease_secs(),
                });
            }
            Phase::RenewWait {
                at,
                port,
                lease_until,
            } if now >= at => {
                if now >= lease_until {
                    self.begin_round();
                } else {
                    self.phase = Phase::Renewing { port, lease_until };
                    self.pending = Some(Action::Map {
                        external_port: Some(port),
                        lease_secs: self.lease_secs(),
                    });
                }
            }
            Phase::Unavailable { retry_at: Some(at) } if now >= at => self.begin_round(),
            _ => {}
        }
    }

    /// Stops: removes a live mapping first (see the module docs).
    pub(crate) fn shutdown(&mut self, _now: Instant) {
        if self.closing || self.phase == Phase::Closed {
            return;
        }
        self.closing = true;
        self.state = UpnpState::Unavailable {
            reason: "stopped".into(),
        };
        match self.phase.clone() {
            Phase::Mapped { port, .. } | Phase::RenewWait { port, .. } => {
                self.phase = Phase::Removing;
                self.pending = Some(Action::Remove {
                    external_port: port,
                });
            }
            // Not handed out yet: nothing was asked of the gateway.
            Phase::Mapping { .. } if self.pending.is_some() => {
                self.pending = None;
                self.phase = Phase::Closed;
            }
            Phase::Renewing { port, .. } if self.pending.is_some() => {
                self.phase = Phase::Removing;
                self.pending = Some(Action::Remove {
                    external_port: port,
                });
            }
            // A request is in flight: its answer decides (see on_first_map / on_renew).
            Phase::Mapping { .. } | Phase::Renewing { .. } | Phase::Removing => {}
            _ => {
                self.pending = None;
                self.phase = Phase::Closed;
            }
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
