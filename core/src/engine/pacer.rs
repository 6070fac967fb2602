//! The engine's rate limiter: one GCRA bucket (governor) per cloud API, on tokio's clock so
//! tests with `tokio::time::pause` are deterministic.
//!
//! Connectors call [`CallContext::acquire`](crate::connector::CallContext::acquire) with the API
//! name before each wire call; the engine's target-wide limit (`--rate`) is the API named
//! [`TARGET_API`]. An API without a quota is not limited.
//!
//! Each bucket runs a little under its quota ([`HEADROOM`]): the cloud counts arrivals, which
//! reach it with scheduling and network jitter, and a call delayed into the next second must not
//! push that second over the quota. A call is [`SUBCELLS`] governor cells with a tolerance of
//! [`SLACK`], so a task woken a few milliseconds late does not lose that time for good (at
//! 200/s each lost millisecond is 20% of a call), while no call is ever more than `SLACK` early.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota as GQuota, RateLimiter};

use crate::connector::{Pacer, Quota};

/// The pseudo-API of the target-wide limit, acquired once per device by the engine.
pub const TARGET_API: &str = "*";

/// The fraction of a quota the engine uses.
pub const HEADROOM: f64 = 0.98;

/// governor cells per call.
pub const SUBCELLS: u32 = 64;

/// How early a call may be, to make up for a late wake-up (timer granularity, a busy CPU).
/// A window of one second then holds at most `(1 + SLACK) * 0.98 * quota + 1` calls, which
/// stays at or below the quota for any quota while `SLACK` is under 20 ms; the other 10 ms are
/// left for arrival jitter.
pub const SLACK: Duration = Duration::from_millis(10);

/// governor's clock, reading tokio's (pausable) time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Per-API buckets built from quotas.
#[derive(Debug)]
pub struct RatePacer {
    clock: TokioClock,
    buckets: HashMap<String, (Bucket, u32)>,
    quotas: Vec<Quota>,
}

impl RatePacer {
    /// A pacer enforcing `quotas` (later entries for the same API win).
    pub fn new(quotas: &[Quota]) -> Self {
        let clock = TokioClock::default();
        let mut buckets = HashMap::new();
        let mut kept: HashMap<String, Quota> = HashMap::new();
        for q in quotas {
            kept.insert(q.api.clone(), q.clone());
        }
        let mut list: Vec<Quota> = kept.into_values().collect();
        list.sort_by(|a, b| a.api.cmp(&b.api));
        for q in &list {
            if !(q.per_second.is_finite() && q.per_second > 0.0) {
                continue;
            }
            let per_call = Duration::from_secs_f64(1.0 / (q.per_second * HEADROOM));
            let per_cell = (per_call / SUBCELLS).max(Duration::from_nanos(1));
            let slack = u32::try_from(SLACK.as_nanos() / per_cell.as_nanos().max(1))
                .unwrap_or(u32::MAX / 2);
            let cells = SUBCELLS
                .saturating_mul(q.burst.max(1))
                .saturating_add(slack);
            let burst = NonZeroU32::new(cells).unwrap_or(NonZeroU32::MIN);
            let Some(gq) = GQuota::with_period(per_cell) else {
                continue;
            };
            let bucket = RateLimiter::direct_with_clock(gq.allow_burst(burst), clock);
            buckets.insert(q.api.clone(), (bucket, q.burst.max(1)));
        }
        RatePacer {
            clock,
            buckets,
            quotas: list,
        }
    }

    /// The quotas enforced, sorted by API.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// Waits for `units` of `api`.
    pub async fn wait(&self, api: &str, units: u32) {
        let Some((bucket, burst)) = self.buckets.get(api) else {
            return;
        };
        let mut left = units;
        while left > 0 {
            let n = left.min(*burst);
            let Some(cells) = NonZeroU32::new(n.saturating_mul(SUBCELLS)) else {
                return;
            };
            loop {
                match bucket.check_n(cells) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        tokio::time::sleep(wait.max(Duration::from_micros(50))).await;
                    }
                    // n <= burst by construction; treat the impossible as "go".
                    Err(_) => break,
                }
            }
            left -= n;
        }
    }
}

#[async_trait]
impl Pacer for RatePacer {
    async fn acquire(&self, api: &str, units: u32) {
        self.wait(api, units).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_at_the_quota_with_headroom() {
        let p = RatePacer::new(&[Quota::new("A", 50.0)]);
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..101 {
            p.wait("A", 1).await;
            times.push(start.elapsed());
        }
        // 100 intervals of 1/(50*0.98) s, the millisecond timer notwithstanding.
        let total = times[100].as_secs_f64();
        // (The first call after idle may take up to SLACK early.)
        let expected = 100.0 / 49.0;
        assert!(
            total <= expected + 0.002 && total >= expected - SLACK.as_secs_f64() - 0.002,
            "took {total}"
        );
        // Never more than 50 in any one-second window.
        for (i, t) in times.iter().enumerate() {
            let n = times[i..]
                .iter()
                .take_while(|u| u.as_secs_f64() < t.as_secs_f64() + 1.0)
                .count();
            assert!(n <= 50, "{n} calls in the second after {t:?}");
        }
        // Unlimited APIs do not wait.
        let before = tokio::time::Instant::now();
        p.wait("B", 1000).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn late_wakeups_are_made_up_without_exceeding_the_quota() {
        let p = RatePacer::new(&[Quota::new("A", 200.0)]);
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for i in 0..1000u32 {
            p.wait("A", 1).await;
            times.push(start.elapsed().as_secs_f64());
            // Every seventh call, the caller is busy for 8 ms (a loaded machine).
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        }
        let rate = 999.0 / times[999];
        assert!(rate > 0.97 * 200.0, "achieved {rate}/s");
        for (i, t) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|u| **u < t + 1.0).count();
            assert!(n <= 200, "{n} calls in the second after {t}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn units_above_burst_are_taken_in_steps() {
        let p = RatePacer::new(&[Quota::new("A", 10.0)]);
        let start = tokio::time::Instant::now();
        p.wait("A", 1).await;
        p.wait("A", 20).await;
        let t = start.elapsed().as_secs_f64();
        let expected = 20.0 / 9.8;
        assert!(
            t <= expected + 0.002 && t >= expected - SLACK.as_secs_f64() - 0.002,
            "took {t}"
        );
    }
}
