//! The per-address cap on live sessions (`max_sessions_per_ip`).
//!
//! 1. A create counts the live rows its client address already holds in the index (rows
//!    expired or deleted stop counting at once; with a shared PostgreSQL the index also
//!    holds the other instances' rows, through the change feed).
//! 2. Creates from that address still in flight count too: a create reserves a slot
//!    before it goes to the writer and gives it back when it is answered, by which time
//!    its row is in the index. Counting and reserving happen under one lock, so
//!    concurrent creates from one address cannot overshoot the cap on one instance.
//! 3. At the cap the create is refused with 429 `too_many_sessions_for_address`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::ApiError;
use crate::index::Index;
use crate::time::Millis;

/// Creates in flight per address (an entry exists only while one is).
#[derive(Debug, Default)]
pub struct SessionQuota {
    pending: Mutex<HashMap<IpAddr, usize>>,
}

/// A reserved slot; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    quota: Arc<SessionQuota>,
    addr: IpAddr,
}

impl SessionQuota {
    fn pending(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for one more session from `addr`, or refuses at `limit`
    /// (`limit == 0`: no cap, nothing reserved).
    pub fn reserve(
        self: &Arc<Self>,
        index: &Index,
        addr: IpAddr,
        limit: usize,
        now: Millis,
    ) -> Result<Option<Reservation>, ApiError> {
        if limit == 0 {
            return Ok(None);
        }
        let mut pending = self.pending();
        let in_flight = pending.get(&addr).copied().unwrap_or(0);
        if in_flight + index.live_count_for(addr, now) >= limit {
            return Err(ApiError::TooManySessionsForAddress { limit });
        }
        *pending.entry(addr).or_insert(0) += 1;
        Ok(Some(Reservation {
            quota: self.clone(),
            addr,
        }))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut pending = self.quota.pending();
        if let Some(count) = pending.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.addr);
            }
        }
    }
}
