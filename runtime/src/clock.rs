//! Injectable wall-clock time, so that idleness and rate limits are testable without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source of wall-clock time and of waiting.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time elapsed since this clock's origin.
    fn elapsed(&self) -> Duration;
    /// Waits for `d` (a manual clock advances instead).
    fn sleep(&self, d: Duration);
    /// Milliseconds since the Unix epoch (a manual clock's epoch is its origin).
    fn unix_millis(&self) -> i64 {
        self.elapsed().as_millis() as i64
    }
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
    /// The origin, in milliseconds since the Unix epoch.
    origin_unix_ms: i64,
}

impl SystemClock {
    /// A clock whose origin is now.
    #[allow(clippy::disallowed_methods)] // the one place the real clock is read
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
            origin_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    fn unix_millis(&self) -> i64 {
        self.origin_unix_ms
            .saturating_add(self.origin.elapsed().as_millis() as i64)
    }
}

/// A clock that only moves when told to (or when something sleeps on it).
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }
    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
    fn sleep(&self, d: Duration) {
        self.advance(d);
        // Waiting takes no time here, but let the other threads run.
        std::thread::yield_now();
    }
}
