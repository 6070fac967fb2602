//! How many calls the engine keeps in flight: sized from the quotas and the latency it observes.
//!
//! A quota caps the devices per second a target takes; a cloud that answers each call after
//! `L` seconds needs `rate × L` devices in flight to reach that cap (Little's law). The engine
//! cannot know beforehand which APIs one `register` makes (an AWS device is four paced calls,
//! an IoT Hub bulk call one), so every connector call reports what it acquired from the pacer:
//! the APIs and units it used set the device rate the quotas allow for that kind of call, and
//! the time the call took less the time it waited for tokens is the latency the cloud added.
//!
//! The run starts at [`EngineOptions::concurrency`](super::EngineOptions::concurrency) calls and
//! grows (never past `max_concurrency`) to `HEADROOM_FACTOR × rate × latency / batch` + 1, so that
//! the pacer, not the latency, is what limits the run (latency, rate and batch are moving
//! averages over the calls). A call that used no quota tells nothing:
//! without a quota the engine has no rate to aim at and keeps the configured concurrency.

use std::sync::Mutex;
use std::time::Duration;

/// Calls in flight above the bare Little's-law figure: latency jitter and the pacer's own
/// spacing would otherwise leave the quota unused part of the time.
pub const HEADROOM_FACTOR: f64 = 1.25;

/// Weight of a new latency observation in the moving average.
const EWMA_WEIGHT: f64 = 0.2;

/// One connector call, as the sizer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Devices in the call.
    pub devices: usize,
    /// Devices per second the quotas allow for calls like this one (`None`: no quota applied).
    pub device_rate: Option<f64>,
    /// The call's time less its waits for the pacer.
    pub service: Duration,
}

/// The concurrency of one run (shared by its calls).
#[derive(Debug)]
pub struct Sizer {
    min: usize,
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Moving average of a call's service time, seconds.
    latency: Option<f64>,
    /// Moving average of the device rate the quotas allow (a one-off call, such as AWS's
    /// GetPolicy at 10/s on the first device, fades out rather than pinning the rate).
    rate: Option<f64>,
    /// Moving average of devices per call.
    batch: Option<f64>,
}

impl Sizer {
    /// Starts at `min` calls in flight, never above `max` (at least `min`).
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        Sizer {
            min,
            max: max.max(min),
            state: Mutex::new(State {
                limit: min,
                latency: None,
                rate: None,
                batch: None,
            }),
        }
    }

    /// Calls that may be in flight now.
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).limit
    }

    /// The most calls this run may ever have in flight.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes one finished call into account; returns the new limit.
    pub fn observe(&self, o: Observation) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if o.devices == 0 || self.max == self.min {
            return s.limit;
        }
        let Some(rate) = o.device_rate.filter(|r| r.is_finite() && *r > 0.0) else {
            return s.limit;
        };
        let secs = o.service.as_secs_f64();
        let ewma = |old: Option<f64>, new: f64| match old {
            Some(old) => old + EWMA_WEIGHT * (new - old),
            None => new,
        };
        s.latency = Some(ewma(s.latency, secs));
        s.batch = Some(ewma(s.batch, o.devices as f64));
        s.rate = Some(ewma(s.rate, rate));
        let (Some(latency), Some(rate), Some(batch)) = (s.latency, s.rate, s.batch) else {
            return s.limit;
        };
        let wanted = (HEADROOM_FACTOR * rate * latency / batch.max(1.0)).ceil() + 1.0;
        let wanted = if wanted.is_finite() && wanted > 0.0 {
            // Bounded by max below; the cast saturates.
            wanted as usize
        } else {
            self.min
        };
        s.limit = wanted.clamp(self.min, self.max);
        s.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(devices: usize, rate: Option<f64>, ms: u64) -> Observation {
        Observation {
            devices,
            device_rate: rate,
            service: Duration::from_millis(ms),
        }
    }

    #[test]
    fn grows_to_cover_the_latency_at_the_quota() {
        // 100 devices/s, one device a call, 250 ms a device (five calls of 50 ms): 25 in
        // flight reach the quota; with headroom ⌈31.25⌉ + 1.
        let s = Sizer::new(16, 256);
        assert_eq!(s.limit(), 16);
        let mut limit = 0;
        for _ in 0..50 {
            limit = s.observe(obs(1, Some(100.0), 250));
        }
        assert_eq!(limit, 33);
    }

    #[test]
    fn bulk_calls_need_few_in_flight() {
        // IoT Hub bulk: 100 devices a call at 100 devices/s and 50 ms: well under one call.
        let s = Sizer::new(4, 256);
        assert_eq!(s.observe(obs(100, Some(100.0), 50)), 4);
    }

    #[test]
    fn never_below_the_start_nor_above_the_ceiling() {
        let s = Sizer::new(8, 40);
        assert_eq!(s.observe(obs(1, Some(1000.0), 500)), 40);
        let s = Sizer::new(8, 40);
        assert_eq!(s.observe(obs(1, Some(10.0), 10)), 8);
    }

    #[test]
    fn a_call_without_a_quota_changes_nothing() {
        let s = Sizer::new(16, 256);
        assert_eq!(s.observe(obs(1, None, 5_000)), 16);
        assert_eq!(s.observe(obs(0, Some(100.0), 5_000)), 16);
    }

    #[test]
    fn a_fixed_concurrency_stays_fixed() {
        let s = Sizer::new(16, 16);
        assert_eq!(s.observe(obs(1, Some(1000.0), 1_000)), 16);
    }

    #[test]
    fn a_one_off_slow_api_does_not_pin_the_rate() {
        // The first call also read a policy at 10/s; every later one runs at 100/s.
        let s = Sizer::new(1, 256);
        assert_eq!(s.observe(obs(1, Some(10.0), 250)), 5);
        let mut limit = 0;
        for _ in 0..100 {
            limit = s.observe(obs(1, Some(100.0), 250));
        }
        assert_eq!(limit, 33);
    }
}
