//! Per-connection timeouts as a state machine (sans-IO): the listener ([`crate::serve`])
//! feeds it events with the current instant and asks it when to act.
//!
//! Slow clients (RFC 9112 section 9.5 lets a server close idle connections; section 9.6
//! "tear-down" is what we do at a deadline):
//! 1. A new connection is in `Header` phase: its request headers must be complete within
//!    the header read timeout, counted from the opening.
//! 2. Once the headers are parsed the request is `Busy`: no connection deadline (the body
//!    read timeout and the handlers' own bounded waits apply).
//! 3. When the response is handed over the connection is `Idle`: the next request's first
//!    byte must come within the idle (keep-alive) timeout; it then moves to `Header`,
//!    counted from that byte, so trickling one byte at a time buys nothing.
//! 4. An expired `Idle` asks for a graceful shutdown (hyper closes at once if nothing is
//!    in flight, or after the response being written); if the connection is still open one
//!    header timeout later (a client that does not read its response) it is closed hard.
//! 5. An expired `Header` is closed hard: nothing was promised to that client yet.

use std::time::{Duration, Instant};

/// What the listener should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing before [`ConnClock::deadline`].
    Wait,
    /// Stop keep-alive: close once the response in progress (if any) is written.
    Shutdown,
    /// Drop the connection now.
    Close,
}

/// Why a connection was closed by its clock (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Request headers not complete in time.
    Header,
    /// Nothing sent between requests in time.
    Idle,
    /// The graceful close after idling did not finish in time.
    Linger,
}

impl Expired {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
            Expired::Linger => "linger",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header { since: Instant },
    Busy,
    Idle { since: Instant },
    Closing { since: Instant },
}

/// One connection's timeout state.
#[derive(Debug, Clone)]
pub struct ConnClock {
    header: Duration,
    idle: Duration,
    phase: Phase,
    expired: Option<Expired>,
}

impl ConnClock {
    /// A connection opened at `now`.
    pub fn new(header: Duration, idle: Duration, now: Instant) -> Self {
        ConnClock {
            header,
            idle,
            phase: Phase::Header { since: now },
            expired: None,
        }
    }

    /// Bytes arrived from the client.
    pub fn on_read(&mut self, now: Instant) {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Header { since: now };
        }
    }

    /// A request's headers were parsed and handed to the service.
    pub fn on_request(&mut self) {
        if !matches!(self.phase, Phase::Closing { .. }) {
            self.phase = Phase::Busy;
        }
    }

    /// The service produced its response.
    pub fn on_response(&mut self, now: Instant) {
        if self.phase == Phase::Busy {
            self.phase = Phase::Idle { since: now };
        }
    }

    /// When [`ConnClock::poll`] should next be called (`None`: only after an event).
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Header { since } => Some(since + self.header),
            Phase::Busy => None,
            Phase::Idle { since } => Some(since + self.idle),
            Phase::Closing { since } => Some(since + self.header),
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: Instant) -> Action {
        match self.deadline() {
            Some(deadline) if now >= deadline => {}
            _ => return Action::Wait,
        }
        match self.phase {
            Phase::Header { .. } => {
                self.expired = Some(Expired::Header);
                Action::Close
            }
            Phase::Idle { .. } => {
                self.expired = Some(Expired::Idle);
                self.phase = Phase::Closing { since: now };
                Action::Shutdown
            }
            Phase::Closing { .. } => {
                self.expired = Some(Expired::Linger);
                Action::Close
            }
            Phase::Busy => Action::Wait,
        }
    }

    /// Which deadline closed the connection, if one did.
    pub fn expired(&self) -> Option<Expired> {
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn headers_must_complete_in_time_from_the_opening_or_the_first_byte() {
        let t0 = Instant::now();
        let mut clock = ConnClock::new(5 * S, 30 * S, t0);
        assert_eq!(clock.deadline(), Some(t0 + 5 * S));
        assert_eq!(clock.poll(t0 + 4 * S), Action::Wait);
        clock.on_read(t0 + 4 * S);
        assert_eq!(clock.deadline(), Some(t0 + 5 * S), "trickling buys nothing");
        assert_eq!(clock.poll(t0 + 5 * S), Action::Close);
        assert_eq!(clock.expired(), Some(Expired::Header));

        let mut clock = ConnClock::new(5 * S, 30 * S, t0);
        clock.on_request();
        assert_eq!(clock.deadline(), None, "no deadline while a request runs");
        assert_eq!(clock.poll(t0 + 100 * S), Action::Wait);
        clock.on_response(t0 + 100 * S);
        assert_eq!(clock.deadline(), Some(t0 + 130 * S));
        clock.on_read(t0 + 110 * S);
        assert_eq!(
            clock.deadline(),
            Some(t0 + 115 * S),
            "header phase from the byte"
        );
        assert_eq!(clock.poll(t0 + 115 * S), Action::Close);
    }

    #[test]
    fn idle_connections_shut_down_then_close_if_they_linger() {
        let t0 = Instant::now();
        let mut clock = ConnClock::new(5 * S, 30 * S, t0);
        clock.on_request();
        clock.on_response(t0);
        assert_eq!(clock.poll(t0 + 29 * S), Action::Wait);
        assert_eq!(clock.poll(t0 + 30 * S), Action::Shutdown);
        assert_eq!(clock.expired(), Some(Expired::Idle));
        clock.on_read(t0 + 31 * S);
        clock.on_request();
        assert_eq!(clock.deadline(), Some(t0 + 35 * S), "closing stays closing");
        assert_eq!(clock.poll(t0 + 35 * S), Action::Close);
        assert_eq!(clock.expired(), Some(Expired::Linger));
    }
}
