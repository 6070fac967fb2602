//! The time the mocks' quotas run on: the real monotonic clock by default; a test freezes it and
//! moves it on by hand, so that no test sleeps to wait a quota window out and no quota test
//! depends on how fast a loaded machine runs.
//!
//! ```
//! # use std::time::Duration;
//! let clock = idbridge_mock_clouds::MockClock::default();
//! clock.freeze();
//! let t = clock.now();
//! clock.advance(Duration::from_secs(2));
//! assert_eq!(clock.now() - t, Duration::from_secs(2));
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A shareable clock reading time since its creation. Clones share the same time.
#[derive(Debug, Clone)]
pub struct MockClock(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// Some while frozen: the time it reads.
    frozen: Mutex<Option<Duration>>,
}

impl Default for MockClock {
    fn default() -> Self {
        MockClock(Arc::new(Inner {
            start: Instant::now(),
            frozen: Mutex::new(None),
        }))
    }
}

impl MockClock {
    /// Time since the clock was made (or, frozen, the time it was frozen at plus advances).
    pub fn now(&self) -> Duration {
        match *self.lock() {
            Some(t) => t,
            None => self.0.start.elapsed(),
        }
    }

    /// Stops the clock where it is: from now on only [`MockClock::advance`] moves it.
    pub fn freeze(&self) {
        let mut f = self.lock();
        if f.is_none() {
            *f = Some(self.0.start.elapsed());
        }
    }

    /// Moves a frozen clock on by `by` (freezing it first if it runs).
    pub fn advance(&self, by: Duration) {
        let mut f = self.lock();
        let now = f.unwrap_or_else(|| self.0.start.elapsed());
        *f = Some(now + by);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Duration>> {
        // A poisoned lock only means a panic elsewhere; the value is a plain Duration.
        self.0.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_time_moves_only_by_hand() {
        let c = MockClock::default();
        let shared = c.clone();
        c.freeze();
        let t = c.now();
        assert_eq!(shared.now(), t);
        shared.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), t + Duration::from_millis(1500));
    }
}
