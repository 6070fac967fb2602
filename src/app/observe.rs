//! The connector as the application layer sees it: every call in a `call` span (target, API,
//! device count, attempt, job, and on failure the error kind and the cloud's request id), counted for
//! the metrics, and lookups reported to whoever watches a plan (`diff`, `--dry-run`).
//!
//! A decorator around `Arc<dyn Connector>`, so the engine's one call path is unchanged: the
//! engine still paces, batches and retries; this only watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use idbridge_core::connector::{
    CallContext, Capabilities, DeregisterOutcome, ListPage, RegisterOutcome, RemoteDevice,
};
use idbridge_core::{Connector, DeviceId, DeviceIdentity, ErrorKind, Result};
use tracing::Instrument;

use super::metrics::Metrics;

/// Called once per lookup answered (whatever the answer).
pub type LookupHook = Arc<dyn Fn() + Send + Sync>;

/// A connector whose calls are traced and counted.
pub struct Observed {
    inner: Arc<dyn Connector>,
    target: String,
    on_lookup: Mutex<Option<LookupHook>>,
    metrics: Arc<Metrics>,
    /// Failed calls so far per (API, device), for the `attempt` of the next call; an entry
    /// goes when the call succeeds, so only failing devices are held.
    failures: Mutex<HashMap<(&'static str, DeviceId), u32>>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("inner", &self.inner)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Observed {
    /// Watches `inner`, the connector of target `target`, counting into `metrics`.
    pub fn new(inner: Arc<dyn Connector>, target: &str, metrics: Arc<Metrics>) -> Self {
        Observed {
            inner,
            target: target.to_owned(),
            on_lookup: Mutex::new(None),
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Calls `hook` after every lookup from now on (None: stop).
    pub fn set_lookup_hook(&self, hook: Option<LookupHook>) {
        *self.on_lookup.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    async fn traced<T>(
        &self,
        api: &'static str,
        ids: &[&DeviceId],
        ctx: &CallContext,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let devices = ids.len();
        let attempt = {
            let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            1 + ids
                .iter()
                .filter_map(|id| f.get(&(api, (*id).clone())))
                .max()
                .copied()
                .unwrap_or(0)
        };
        let span = tracing::info_span!(
            "call",
            target_name = %self.target,
            api,
            devices,
            attempt,
            job_id = ctx.job_id.as_deref().unwrap_or(""),
            error_kind = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        let start = Instant::now();
        let r = call.instrument(span.clone()).await;
        let secs = start.elapsed().as_secs_f64();
        match &r {
            Ok(_) => {
                if attempt > 1 {
                    let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                    for id in ids {
                        f.remove(&(api, (*id).clone()));
                    }
                }
                self.metrics.call(&self.target, api, "ok", secs);
                span.in_scope(|| tracing::debug!(secs, "call ok"));
            }
            Err(e) => {
                span.record("error_kind", tracing::field::display(e.kind()));
                if let Some(id) = e.request_id() {
                    span.record("request_id", id);
                }
                {
                    let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                    for id in ids {
                        *f.entry((api, (*id).clone())).or_insert(0) += 1;
                    }
                }
                let result = match e.kind() {
                    ErrorKind::RateLimited => "throttled",
                    _ => "error",
                };
                self.metrics.call(&self.target, api, result, secs);
                span.in_scope(|| tracing::info!(secs, error = %e, "call failed"));
            }
        }
        r
    }
}

#[async_trait]
impl Connector for Observed {
    fn info(&self) -> Capabilities {
        self.inner.info()
    }

    fn check_job(&self, devices: &[DeviceIdentity]) -> Result<()> {
        self.inner.check_job(devices)
    }

    fn job_check(&self) -> Option<Box<dyn idbridge_core::connector::JobCheck>> {
        self.inner.job_check()
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let ids: Vec<&DeviceId> = devices.iter().map(|d| &d.device_id).collect();
        self.traced("register", &ids, ctx, self.inner.register(ctx, devices))
            .await
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let ids: Vec<&DeviceId> = devices.iter().map(|d| &d.device_id).collect();
        self.traced("deregister", &ids, ctx, self.inner.deregister(ctx, devices))
            .await
    }

    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        let r = self
            .traced(
                "lookup",
                &[&device.device_id],
                ctx,
                self.inner.lookup(ctx, device),
            )
            .await;
        let hook = self
            .on_lookup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h();
        }
        r
    }

    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        self.traced("list", &[], ctx, self.inner.list(ctx, cursor))
            .await
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        self.traced("health_check", &[], ctx, self.inner.health_check(ctx))
            .await
    }

    async fn finish(&self, ctx: &CallContext) -> Result<()> {
        self.traced("finish", &[], ctx, self.inner.finish(ctx))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idbridge_core::Error;

    /// A target that throttles every registration and refuses every lookup.
    #[derive(Debug)]
    struct Refusing;

    #[async_trait]
    impl Connector for Refusing {
        fn info(&self) -> Capabilities {
            Capabilities::default()
        }

        async fn register(
            &self,
            _: &CallContext,
            _: &[DeviceIdentity],
        ) -> Result<Vec<RegisterOutcome>> {
            Err(Error::new(ErrorKind::RateLimited, "slow down"))
        }

        async fn lookup(
            &self,
            _: &CallContext,
            _: &DeviceIdentity,
        ) -> Result<Option<RemoteDevice>> {
            Err(Error::new(ErrorKind::PermissionDenied, "not allowed"))
        }

        async fn health_check(&self, _: &CallContext) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn throttled_calls_are_counted_apart_from_failed_ones() {
        let metrics = Arc::new(Metrics::default());
        let observed = Observed::new(Arc::new(Refusing), "lab", Arc::clone(&metrics));
        let ctx = CallContext::unpaced();
        assert!(observed.register(&ctx, &[]).await.is_err());
        assert!(observed.register(&ctx, &[]).await.is_err());
        assert!(observed.health_check(&ctx).await.is_ok());
        let text = metrics.render();
        for line in [
            "idbridge_connector_calls_total{target=\"lab\",api=\"register\",result=\"throttled\"} 2",
            "idbridge_connector_calls_total{target=\"lab\",api=\"health_check\",result=\"ok\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("result=\"error\""), "{text}");
    }
}
