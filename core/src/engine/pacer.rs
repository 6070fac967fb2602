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
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
pub const HEADROOM: f64 = 0.97;

/// governor cells per call.
pub const SUBCELLS: u32 = 64;

/// How early a call may be, to make up for a late wake-up (timer granularity, a busy CPU).
/// A window of one second then holds at most `(1 + SLACK + jitter) * 0.97 * quota + 1` calls,
/// at or below the quota for any quota while `SLACK + jitter` stays under 30 ms (1/0.97 - 1):
/// 8 ms of slack leaves 22 ms for the jitter of arrivals on a busy machine.
pub const SLACK: Duration = Duration::from_millis(8);

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

    /// The calls per second the pacer lets through for `api` (its quota less the headroom),
    /// `None` when it is not limited.
    pub fn rate_of(&self, api: &str) -> Option<f64> {
        self.buckets.get(api)?;
        self.quotas
            .iter()
            .find(|q| q.api == api)
            .map(|q| q.per_second * HEADROOM)
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

/// The pacer of one connector call, which keeps the time the call spends waiting for tokens so
/// that waiting does not count against the attempt timeout (an AWS register makes five paced
/// calls; at 10/s with many calls in flight the waits alone could pass a timeout).
#[derive(Debug)]
pub(crate) struct CallClock {
    inner: Arc<RatePacer>,
    waited_nanos: AtomicU64,
    waiting: AtomicU32,
    /// Every wait of the call, for the sizer (never reset).
    total_waited_nanos: AtomicU64,
    /// The units acquired per API (a handful of APIs a call).
    used: Mutex<Vec<(String, u32)>>,
}

impl CallClock {
    pub(crate) fn new(inner: Arc<RatePacer>) -> Arc<Self> {
        Arc::new(CallClock {
            inner,
            waited_nanos: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            total_waited_nanos: AtomicU64::new(0),
            used: Mutex::new(Vec::new()),
        })
    }

    /// The time the call spent waiting for tokens.
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_nanos(self.total_waited_nanos.load(Ordering::Acquire))
    }

    /// The devices per second the quotas allow for calls like this one, which handled
    /// `devices` devices: for each API it used, the API's rate over its units per device; the
    /// lowest wins. `None` when the call used no limited API.
    pub(crate) fn device_rate(&self, devices: usize) -> Option<f64> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.iter()
            .filter_map(|(api, units)| {
                let rate = self.inner.rate_of(api)?;
                (*units > 0).then(|| rate * devices as f64 / f64::from(*units))
            })
            .reduce(f64::min)
    }
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl Pacer for CallClock {
    async fn acquire(&self, api: &str, units: u32) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _guard = Waiting(&self.waiting);
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            match used.iter_mut().find(|(a, _)| a == api) {
                Some((_, n)) => *n = n.saturating_add(units),
                None => used.push((api.to_owned(), units)),
            }
        }
        let t = tokio::time::Instant::now();
        self.inner.wait(api, units).await;
        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_nanos.fetch_add(nanos, Ordering::AcqRel);
        self.total_waited_nanos.fetch_add(nanos, Ordering::AcqRel);
    }
}

/// Runs `fut` (a connector call paced through `clock`) with `timeout` of its own time: the
/// deadline moves by the time spent waiting for the pacer. `Err(())` when it ran out.
pub(crate) async fn timed<F: Future>(
    clock: &CallClock,
    timeout: Duration,
    fut: F,
) -> Result<F::Output, ()> {
    tokio::pin!(fut);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            () = tokio::time::sleep_until(deadline) => {
                let waited = Duration::from_nanos(clock.waited_nanos.swap(0, Ordering::AcqRel));
                if clock.waiting.load(Ordering::Acquire) > 0 {
                    // Waiting for a token right now: check again shortly (that wait is added
                    // when it ends).
                    deadline = (deadline + waited).max(tokio::time::Instant::now() + Duration::from_millis(50));
                } else if !waited.is_zero() {
                    deadline += waited;
                } else {
                    return Err(());
                }
            }
        }
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
        // 100 intervals of 1/(50*0.97) s, the millisecond timer notwithstanding.
        let total = times[100].as_secs_f64();
        // (The first call after idle may take up to SLACK early.)
        let expected = 100.0 / 48.5;
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
        assert!(rate > 0.96 * 200.0, "achieved {rate}/s");
        for (i, t) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|u| **u < t + 1.0).count();
            assert!(n <= 200, "{n} calls in the second after {t}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_pacer_does_not_count_against_the_timeout() {
        let pacer = Arc::new(RatePacer::new(&[Quota::new("A", 1.0)]));
        pacer.wait("A", 1).await;
        let clock = CallClock::new(pacer.clone());
        let ctx = crate::connector::CallContext::paced(clock.clone());
        // Three paced calls at 1/s (about 3 s of waiting) plus 0.5 s of wire time, in a 1 s
        // timeout: not a timeout.
        let call = async {
            for _ in 0..3 {
                ctx.acquire("A").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            7
        };
        assert_eq!(timed(&clock, Duration::from_secs(1), call).await, Ok(7));
        // 1.5 s of wire time is one.
        let clock = CallClock::new(pacer);
        let slow = tokio::time::sleep(Duration::from_millis(1500));
        assert_eq!(timed(&clock, Duration::from_secs(1), slow).await, Err(()));
    }

    #[tokio::test(start_paused = true)]
    async fn units_above_burst_are_taken_in_steps() {
        let p = RatePacer::new(&[Quota::new("A", 10.0)]);
        let start = tokio::time::Instant::now();
        p.wait("A", 1).await;
        p.wait("A", 20).await;
        let t = start.elapsed().as_secs_f64();
        let expected = 20.0 / 9.7;
        assert!(
            t <= expected + 0.002 && t >= expected - SLACK.as_secs_f64() - 0.002,
            "took {t}"
        );
    }
}
