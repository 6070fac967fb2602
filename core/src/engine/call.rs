//! The engine's one call path. Every connector call (register, deregister, lookup, list,
//! finish, health check) is one [`Caller::attempt`]: a fresh [`CallContext`] paced by the
//! engine's pacer, whose waits for tokens do not count against the attempt timeout; no answer
//! within the timeout is [`ErrorKind::OutcomeUnknown`]. Its error is judged by [`classify`], the
//! one place that decides between retrying, stopping the job and failing for good.
//!
//! Batch calls retry per device (the run's `schedule` takes each retry from the job's budget);
//! single calls (lookup, list, finish, health check) retry in [`Caller::retried`], from the
//! same kind of budget ([`Budget`]): a job's finish and reconcile lookups take from the job's,
//! a `diff` has one for all its lookups and pages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::EngineOptions;
use super::pacer::{self, CallClock, RatePacer, TARGET_API};
use super::retry::{Backoff, RetryPolicy};
use crate::connector::{CallContext, Connector, Quota, RemoteDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::DeviceIdentity;

/// What to do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Temporary: try again after a backoff, budget and attempts allowing.
    Retry,
    /// Nothing further can work (credentials, permissions, the target disabled, its
    /// configuration): stop the job, leave what is not done pending.
    Stop,
    /// Permanent for this call or device only.
    Fail,
}

/// The one classifier of failed calls.
pub(crate) fn classify(e: &Error) -> Verdict {
    if e.is_temporary() {
        return Verdict::Retry;
    }
    match e.kind() {
        ErrorKind::Unauthenticated
        | ErrorKind::PermissionDenied
        | ErrorKind::TargetDisabled
        | ErrorKind::ConfigInvalid => Verdict::Stop,
        _ => Verdict::Fail,
    }
}

/// Retries allowed across a set of calls (a job, a diff), with the backoff's random source.
pub(crate) type Budget = Backoff;

/// Makes connector calls: pacing, attempt timeout, retries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    connector: Arc<dyn Connector>,
    pacer: Arc<RatePacer>,
    timeout: Duration,
    retry: RetryPolicy,
    seed: Option<u64>,
}

impl Caller {
    /// The call path for `connector` with the engine options `opts` (quotas: the connector's
    /// defaults, then `opts.quotas`, then `opts.rate` as the target-wide limit). A front end
    /// that makes a call outside a job (`idbridge check`'s health check) uses this, so its call
    /// is paced, timed and retried like a job's.
    pub fn new(connector: Arc<dyn Connector>, opts: &EngineOptions) -> Self {
        let mut quotas = connector.info().quotas;
        quotas.extend(opts.quotas.iter().cloned());
        if let Some(rate) = opts.rate {
            quotas.push(Quota::new(TARGET_API, rate));
        }
        Caller {
            pacer: Arc::new(RatePacer::new(&quotas)),
            connector,
            timeout: opts.attempt_timeout,
            retry: opts.retry.clone(),
            seed: opts.seed,
        }
    }

    /// The connector.
    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    /// The pacer (per-API quotas).
    pub fn pacer(&self) -> &Arc<RatePacer> {
        &self.pacer
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// A retry budget for a set of `calls` calls (the policy's `budget_for`).
    pub(crate) fn budget(&self, calls: usize) -> Budget {
        Backoff::new(self.retry.clone(), self.seed, self.retry.budget_for(calls))
    }

    /// Checks reachability and credentials: one health check, retried while temporary.
    pub async fn health_check(&self) -> Result<()> {
        let budget = self.budget(1);
        self.retried(&budget, None, "health_check", |ctx| async move {
            self.connector.health_check(&ctx).await
        })
        .await
    }

    /// What the target holds for `device`: one lookup, retried while temporary.
    pub async fn lookup(&self, device: &DeviceIdentity) -> Result<Option<RemoteDevice>> {
        let budget = self.budget(1);
        self.lookup_within(&budget, device).await
    }

    /// As [`Caller::lookup`], its retries taken from `budget`.
    pub(crate) async fn lookup_within(
        &self,
        budget: &Budget,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        self.retried(budget, None, "lookup", |ctx| async move {
            self.connector.lookup(&ctx, device).await
        })
        .await
    }

    /// One attempt of one connector call. `call` gets a context paced by the engine's pacer;
    /// the time it waits for tokens does not count against the attempt timeout. No answer in
    /// time is `OutcomeUnknown` (the call may have taken effect).
    pub(crate) async fn attempt<T, F, Fut>(
        &self,
        job: Option<&str>,
        operation: &'static str,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(CallContext) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.measured_attempt(job, operation, call).await.0
    }

    /// [`Caller::attempt`], also giving the call's pacer handle (the APIs it used, the time it
    /// waited for tokens) and its wall time, from which the run sizes its concurrency.
    pub(crate) async fn measured_attempt<T, F, Fut>(
        &self,
        job: Option<&str>,
        operation: &'static str,
        call: F,
    ) -> (Result<T>, Arc<CallClock>, Duration)
    where
        F: FnOnce(CallContext) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let clock = CallClock::new(self.pacer.clone());
        let mut ctx = CallContext::paced(clock.clone());
        ctx.job_id = job.map(str::to_owned);
        let started = tokio::time::Instant::now();
        let out = match pacer::timed(&clock, self.timeout, call(ctx)).await {
            Ok(r) => r,
            Err(()) => Err(Error::new(
                ErrorKind::OutcomeUnknown,
                format!("no answer within {:?}", self.timeout),
            )
            .with_operation(operation)),
        };
        (out, clock, started.elapsed())
    }

    /// A single call (lookup, list, finish, health check) with the engine's retries: attempts
    /// while [`classify`] says retry, up to the policy's attempts, each retry taken from
    /// `budget` and waited out (backoff with jitter, at least the cloud's `Retry-After`).
    pub(crate) async fn retried<T, F, Fut>(
        &self,
        budget: &Budget,
        job: Option<&str>,
        operation: &'static str,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(CallContext) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match self.attempt(job, operation, &mut call).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if classify(&e) != Verdict::Retry || attempt >= budget.policy().max_attempts {
                return Err(e);
            }
            if !budget.take_budget() {
                return Err(e);
            }
            let delay = budget.delay(attempt, e.retry_after());
            tracing::debug!(operation, attempt, error = %e, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}
