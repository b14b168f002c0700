//! Giving the heap memory of closed connections back to the OS.
//!
//! A connected peer costs about 32 KiB, most of it quinn's and rustls' connection state;
//! a parked one about 3 KiB. When idle connections are parked, their memory is
//! freed, but glibc's allocator keeps freed memory in its arenas: small long-lived
//! allocations made meanwhile (parked entries, table growth) pin the pages, so the
//! process's resident memory would stay at its peak.
//!
//! Steps:
//! 1. On its report tick the coordinator task calls [`Trimmer::maybe_release`] with the
//!    parks so far; [`Trimmer::due`] tells whether enough has been freed since the last
//!    release (at least [`MIN_PARKS`] parks and [`MIN_INTERVAL`] since the last one).
//! 2. If so it runs [`release_free_memory`] on tokio's blocking pool (one at a time):
//!    glibc's `malloc_trim(0)` returns every whole free page of every arena to the OS
//!    (`madvise(MADV_DONTNEED)`). On other C libraries it does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Least parks between two releases.
pub const MIN_PARKS: u64 = 64;
/// Least time between two releases.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Returns free heap pages to the OS (glibc `malloc_trim(0)`); whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and only walks the allocator's own free
    // lists, locking each arena; it is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns free heap pages to the OS: nothing to do outside glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

/// Decides when to release memory after parks (see the module docs).
#[derive(Debug)]
pub struct Trimmer {
    parks_at_last: u64,
    last: Option<Instant>,
    running: Arc<AtomicBool>,
}

impl Default for Trimmer {
    fn default() -> Self {
        Self {
            parks_at_last: 0,
            last: None,
            running: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Trimmer {
    /// Whether a release is due at `now`, given the total of parks so far.
    pub fn due(&self, now: Instant, parks: u64) -> bool {
        parks >= self.parks_at_last + MIN_PARKS
            && self.last.is_none_or(|t| now >= t + MIN_INTERVAL)
            && !self.running.load(Ordering::Relaxed)
    }

    /// Starts a release on the blocking pool if one is due (see [`Trimmer::due`]).
    pub fn maybe_release(&mut self, now: Instant, parks: u64) {
        if !self.due(now, parks) {
            return;
        }
        self.parks_at_last = parks;
        self.last = Some(now);
        self.running.store(true, Ordering::Relaxed);
        let running = Arc::clone(&self.running);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let released = release_free_memory();
            tracing::debug!(released, took = ?started.elapsed(), "freed memory returned");
            running.store(false, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_after_enough_parks_and_time() {
        let t = Trimmer::default();
        let now = Instant::now();
        assert!(!t.due(now, MIN_PARKS - 1));
        assert!(t.due(now, MIN_PARKS));
        let t = Trimmer {
            parks_at_last: MIN_PARKS,
            last: Some(now),
            ..Trimmer::default()
        };
        assert!(!t.due(now + Duration::from_secs(1), 10 * MIN_PARKS));
        assert!(t.due(now + MIN_INTERVAL, 2 * MIN_PARKS));
        release_free_memory();
    }
}
