//! Backoff, jitter and the retry budget: the parameters of the engine's one retry loop.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the engine retries temporary failures.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Calls per device (or per single call) before giving up, the first included.
    pub max_attempts: u32,
    /// The first backoff.
    pub base: Duration,
    /// The longest backoff (a `Retry-After` above it is still honoured).
    pub cap: Duration,
    /// Retries allowed per job, at least.
    pub budget_min: u64,
    /// Retries allowed per job as a fraction of its devices (0.2: one retry per five devices).
    pub budget_ratio: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
            budget_min: 200,
            budget_ratio: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The budget for a job of `devices` devices.
    pub fn budget_for(&self, devices: usize) -> u64 {
        let by_ratio = (devices as f64 * self.budget_ratio).ceil();
        self.budget_min.max(by_ratio as u64)
    }
}

/// Backoff with equal jitter, from an injectable random source.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    rng: Mutex<StdRng>,
    budget: AtomicU64,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy, seed: Option<u64>, budget: u64) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Backoff {
            policy,
            rng: Mutex::new(rng),
            budget: AtomicU64::new(budget),
        }
    }

    pub(crate) fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The wait before retry number `retry` (1-based): half of `base * 2^(retry-1)` (capped)
    /// plus a random part up to the other half; at least `retry_after` when the cloud sent one.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = retry.saturating_sub(1).min(20);
        let full = self
            .policy
            .base
            .saturating_mul(1u32 << exp)
            .min(self.policy.cap);
        let half = full / 2;
        let jitter = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rng.random_range(0..=nanos))
        };
        let backoff = half + jitter;
        match retry_after {
            Some(after) => after.max(backoff.min(after + self.policy.base)),
            None => backoff,
        }
    }

    /// Takes one retry from the job's budget; false when it is spent.
    pub(crate) fn take_budget(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok()
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> u64 {
        self.budget.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_honour_retry_after() {
        let b = Backoff::new(RetryPolicy::default(), Some(7), 3);
        for retry in 1..12 {
            let d = b.delay(retry, None);
            let full = Duration::from_millis(200)
                .saturating_mul(1 << (retry - 1))
                .min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        let d = b.delay(1, Some(Duration::from_secs(5)));
        assert!(d >= Duration::from_secs(5), "{d:?}");
        assert!(b.take_budget() && b.take_budget() && b.take_budget());
        assert!(!b.take_budget());
        assert_eq!(b.remaining(), 0);
    }
}
