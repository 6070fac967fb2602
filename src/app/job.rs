//! A target ready to run jobs: its configuration, connector, engine and journal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idbridge_core::engine::{DiffEntry, DiffReport, Engine, EngineOptions, JobReport, Progress};
use idbridge_core::journal::DeviceUpdate;
use idbridge_core::journal::{self, Journal, OpenedJob, Operation};
use idbridge_core::lease::{self, LeasedProgress};
use idbridge_core::trust::Verifier;
use idbridge_core::{Connector, DeviceIdentity};
use tracing::Instrument;

use super::config::{Config, DEFAULT_JOURNAL, TargetConfig};
use super::metrics;
use super::observe::{LookupHook, Observed};
use super::targets;

/// Engine settings given on top of the target's `[targets.NAME.engine]` table (command-line
/// flags); `None` keeps the table's value, else the engine's default.
#[derive(Debug, Clone, Default)]
pub struct EngineOverrides {
    /// Calls in flight: fixed, or with `max_concurrency` the start (and at least).
    pub concurrency: Option<usize>,
    /// Calls in flight the engine may grow to from `concurrency` (default 16) as the quota and
    /// the cloud's latency need (default 256 when no concurrency is given).
    pub max_concurrency: Option<usize>,
    /// Devices per second for the whole target.
    pub rate: Option<f64>,
    /// Devices per call, where the target has bulk calls.
    pub batch_size: Option<usize>,
    /// Seconds one call may take before its outcome is unknown.
    pub timeout: Option<f64>,
    /// Whether reports hold every device's record ([`EngineOptions::report_devices`]); None
    /// keeps the engine's default (they do).
    pub report_devices: Option<bool>,
}

impl EngineOverrides {
    /// The engine options for `target` with these overrides on top. An error names the flag.
    pub fn options(&self, target: &TargetConfig) -> anyhow::Result<EngineOptions> {
        let e = &target.engine;
        let mut opts = EngineOptions::default();
        // A concurrency the operator gave is what runs, unless a ceiling is given too: then it
        // is the start, and the engine grows from it as the quota and latency need.
        let max = self.max_concurrency.or(e.max_concurrency);
        if let Some(c) = self.concurrency.or(e.concurrency) {
            anyhow::ensure!(c > 0, "--concurrency must be at least 1");
            opts.concurrency = c;
            if max.is_none() {
                opts.max_concurrency = c;
            }
        }
        if let Some(m) = max {
            anyhow::ensure!(m > 0, "--max-concurrency must be at least 1");
            opts.max_concurrency = m;
            opts.concurrency = opts.concurrency.min(m);
        }
        if let Some(r) = self.rate.or(e.rate) {
            anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be a positive number");
            opts.rate = Some(r);
        }
        if let Some(b) = self.batch_size.or(e.batch_size) {
            anyhow::ensure!(b > 0, "--batch-size must be at least 1");
            opts.batch_size = Some(b);
        }
        if let Some(t) = self.timeout.or(e.attempt_timeout_secs) {
            anyhow::ensure!(
                t.is_finite() && t > 0.0,
                "--timeout must be a positive number"
            );
            opts.attempt_timeout = Duration::from_secs_f64(t);
        }
        if let Some(r) = self.report_devices {
            opts.report_devices = r;
        }
        if let Some(m) = e.max_attempts {
            opts.retry.max_attempts = m.max(1);
        }
        Ok(opts)
    }
}

/// The lease time to live: `IDBRIDGE_LEASE_TTL` seconds, else 30 (ADR 1200).
pub fn lease_ttl() -> anyhow::Result<Duration> {
    match std::env::var("IDBRIDGE_LEASE_TTL") {
        Ok(v) => {
            let secs: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .with_context(|| format!("IDBRIDGE_LEASE_TTL={v:?} is not a positive number"))?;
            Ok(Duration::from_secs_f64(secs))
        }
        Err(_) => Ok(lease::DEFAULT_TTL),
    }
}

/// The journal URL: `explicit`, else the config's `journal`, else the default.
pub fn journal_url(explicit: Option<&str>, config: &Config) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| config.journal.clone())
        .unwrap_or_else(|| DEFAULT_JOURNAL.to_owned())
}

/// Opens the journal at `url`, naming it on error.
pub fn open_journal(url: &str) -> anyhow::Result<Arc<dyn Journal>> {
    journal::open(url).with_context(|| format!("cannot open the journal {url}"))
}

/// A target, its engine and journal, ready to run jobs.
pub struct TargetRun {
    /// The target's configuration (may hold secrets: never log it whole).
    pub target: TargetConfig,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The journal URL.
    pub journal_url: String,
    /// The config file, if any.
    pub config_path: Option<PathBuf>,
    /// The engine's connector, watched (call spans, metrics, lookup progress).
    observed: Arc<Observed>,
}

impl std::fmt::Debug for TargetRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRun")
            .field("target", &self.target)
            .field("journal_url", &self.journal_url)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl TargetRun {
    /// Target `name` of `config` (`${VAR}` expanded), its connector, and the journal
    /// `journal` (else the config's, else the default).
    pub async fn open(
        config: &Config,
        name: &str,
        journal: Option<&str>,
        overrides: &EngineOverrides,
    ) -> anyhow::Result<Self> {
        let target = config.target(name)?;
        let url = journal_url(journal, config);
        let journal = open_journal(&url)?;
        Self::with_journal(config, target, journal, url, overrides).await
    }

    /// Builds the connector and engine for `target` over an open journal.
    pub async fn with_journal(
        config: &Config,
        target: TargetConfig,
        journal: Arc<dyn Journal>,
        journal_url: String,
        overrides: &EngineOverrides,
    ) -> anyhow::Result<Self> {
        let opts = overrides.options(&target)?;
        let connector = targets::build(&target).await?;
        let observed = Arc::new(Observed::new(connector, &target.name, metrics::global()));
        let connector: Arc<dyn Connector> = observed.clone();
        Ok(TargetRun {
            engine: Arc::new(Engine::new(connector, journal, opts)),
            observed,
            target,
            journal_url,
            config_path: config.path.clone(),
        })
    }

    /// What `resume` needs to rebuild this run (no secrets: names and paths only).
    pub fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.config_path.as_ref().map(|p| {
                std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string()
            }),
            "target": self.target.name,
            "journal": self.journal_url,
        })
    }

    /// Runs a provision or deprovision job for `devices` (continuing the unfinished job with
    /// the same operation, target and devices), telling `progress` as devices finish.
    pub async fn run_job(
        &self,
        operation: Operation,
        devices: Vec<DeviceIdentity>,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        self.run_job_with(operation, devices, self.params(), progress)
            .await
    }

    /// As [`TargetRun::run_job`], with the job's stored `params` chosen by the caller.
    pub async fn run_job_with(
        &self,
        operation: Operation,
        devices: Vec<DeviceIdentity>,
        params: serde_json::Value,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        let opened = self
            .engine
            .open(operation, &self.target.name, &devices, params)
            .await?;
        self.run_leased(&opened, operation, Devices::Given(devices), progress)
            .await
    }

    /// Runs a provision or deprovision job for the devices `chunks` yields: each chunk is
    /// stored in the journal as it is read, then the job runs from the journal a page at a time
    /// (the journal is the queue), so memory does not grow with the job. The unfinished job
    /// with the same operation, target and devices is continued.
    pub async fn run_job_streamed(
        &self,
        operation: Operation,
        chunks: journal::DeviceChunks<'_>,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        let opened = self
            .engine
            .open_streamed(operation, &self.target.name, chunks, self.params())
            .await?;
        self.run_leased(&opened, operation, Devices::Journaled, progress)
            .await
    }

    /// Records the job for `devices` in the journal without running it (`--enqueue`): an
    /// `idbridge worker` on the same journal runs it.
    pub async fn enqueue(
        &self,
        operation: Operation,
        devices: &[DeviceIdentity],
    ) -> anyhow::Result<OpenedJob> {
        self.enqueue_with(operation, devices, self.params()).await
    }

    /// As [`TargetRun::enqueue`], with the job's stored `params` chosen by the caller.
    pub async fn enqueue_with(
        &self,
        operation: Operation,
        devices: &[DeviceIdentity],
        params: serde_json::Value,
    ) -> anyhow::Result<OpenedJob> {
        Ok(self
            .engine
            .open(operation, &self.target.name, devices, params)
            .await?)
    }

    /// [`TargetRun::enqueue`] for devices that arrive as a stream, stored a chunk at a time.
    pub async fn enqueue_streamed(
        &self,
        operation: Operation,
        chunks: journal::DeviceChunks<'_>,
    ) -> anyhow::Result<OpenedJob> {
        Ok(self
            .engine
            .open_streamed(operation, &self.target.name, chunks, self.params())
            .await?)
    }

    /// Finishes job `job_id` with the certificates stored in the journal. A provision job's
    /// certificates are verified again by `verifier` (today's trust store) first: one that no
    /// longer verifies is recorded failed with the reason and never sent (`app::resume`).
    pub async fn resume_job(
        &self,
        job_id: &str,
        verifier: &Arc<Verifier>,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        let info = self
            .engine
            .journal()
            .job(job_id)
            .await?
            .with_context(|| format!("no job {job_id} in the journal"))?;
        let opened = OpenedJob {
            id: info.id,
            resumed: true,
        };
        self.run_leased(
            &opened,
            info.spec.operation,
            Devices::Stored(verifier),
            progress,
        )
        .await
    }

    /// Runs an opened job holding its leases (ADR 1200): refused, naming the holder, when
    /// another live process (or another request of this one) runs the same job; waits while
    /// another drives the same target, so one pacer holds the target's quota.
    async fn run_leased(
        &self,
        job: &OpenedJob,
        operation: Operation,
        devices: Devices<'_>,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let owner = format!(
            "{}#{}",
            lease::owner_name("cli"),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let told = std::sync::atomic::AtomicBool::new(false);
        let waiting = |held: &journal::Lease| {
            if !told.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(target_name = %self.target.name, holder = %held.owner,
                    "waiting for the target: another process drives it");
                eprintln!(
                    "idbridge: waiting for target {}: {} drives it now",
                    self.target.name, held.owner
                );
            }
        };
        let holder = match lease::guard_job(
            Arc::clone(self.engine.journal()),
            &owner,
            &job.id,
            &self.target.name,
            lease_ttl()?,
            &waiting,
        )
        .await?
        {
            Ok(h) => h,
            Err(held) => anyhow::bail!(
                "job {} is being run by {} (its lease runs {} s more); not running it twice",
                job.id,
                held.owner,
                (held.expires_ms - journal::now_ms()).max(0) / 1000
            ),
        };
        let leased = LeasedProgress {
            inner: progress,
            lost: holder.lost_flag(),
            shutdown: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let span = tracing::info_span!(
            "job",
            job_id = %job.id,
            operation = operation.as_str(),
            target_name = %self.target.name,
            devices = match &devices {
                Devices::Given(d) => d.len(),
                Devices::Stored(_) | Devices::Journaled => 0,
            },
            resumed = job.resumed || matches!(devices, Devices::Stored(_)),
        );
        let counted = Counted {
            inner: &leased,
            target: &self.target.name,
            operation,
        };
        let report = match devices {
            Devices::Given(d) => self
                .engine
                .run(job, operation, &self.target.name, d, &counted)
                .instrument(span)
                .await
                .map_err(anyhow::Error::from),
            Devices::Journaled => self
                .engine
                .run_journaled(job, &counted)
                .instrument(span)
                .await
                .map_err(anyhow::Error::from),
            Devices::Stored(verifier) => {
                self.run_stored(job, operation, verifier, &counted)
                    .instrument(span)
                    .await
            }
        };
        holder.release().await;
        report
    }

    /// Runs job `job` with its stored identities, verified again (`app::resume`).
    async fn run_stored(
        &self,
        job: &OpenedJob,
        operation: Operation,
        verifier: &Arc<Verifier>,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        super::resume::run_verified(self, job, operation, verifier, progress).await
    }

    /// The backfill plan for `devices`: missing, identical, different, extra.
    pub async fn diff(&self, devices: &[DeviceIdentity]) -> anyhow::Result<DiffReport> {
        Ok(self.engine.diff(devices).await?)
    }

    /// [`TargetRun::diff`] for devices that arrive in chunks: each line of the plan goes to
    /// `on_entry` as it is decided (input order, then extras); the report returned has the
    /// counts only. Memory does not grow with the input.
    pub async fn diff_streamed(
        &self,
        chunks: journal::DeviceChunks<'_>,
        on_entry: &mut (dyn FnMut(DiffEntry) -> idbridge_core::Result<()> + Send),
    ) -> anyhow::Result<DiffReport> {
        use futures::{StreamExt, TryStreamExt};
        let devices = chunks
            .map_ok(|c| futures::stream::iter(c.into_iter().map(Ok)))
            .try_flatten()
            .boxed();
        Ok(self.engine.diff_each(devices, on_entry).await?)
    }

    /// As [`TargetRun::diff`], calling `on_lookup` as each device's lookup is answered (a
    /// progress bar for `diff`, `--dry-run` and the deprovision plan).
    pub async fn diff_with_progress(
        &self,
        devices: &[DeviceIdentity],
        on_lookup: LookupHook,
    ) -> anyhow::Result<DiffReport> {
        self.observed.set_lookup_hook(Some(on_lookup));
        let r = self.engine.diff(devices).await;
        self.observed.set_lookup_hook(None);
        Ok(r?)
    }
}

/// The devices of a run: given by the caller, or those stored with the job, verified again.
enum Devices<'a> {
    Given(Vec<DeviceIdentity>),
    Stored(&'a Arc<Verifier>),
    /// Stored in the journal as they were read ([`TargetRun::run_job_streamed`]).
    Journaled,
}

/// Progress that also counts finished devices into the metrics.
struct Counted<'a> {
    inner: &'a dyn Progress,
    target: &'a str,
    operation: Operation,
}

impl Progress for Counted<'_> {
    fn started(&self, job_id: &str, total: u64, done: u64) {
        self.inner.started(job_id, total, done);
    }

    fn finished(&self, update: &DeviceUpdate) {
        let outcome = update.outcome.map_or(update.state.as_str(), |o| o.as_str());
        metrics::global().device(self.target, self.operation.as_str(), outcome);
        self.inner.finished(update);
    }

    fn retrying(&self, devices: usize, error: &idbridge_core::Error, delay: Duration) {
        self.inner.retrying(devices, error, delay);
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// A progress callback from a closure, for embedders: `f` is called with every device update
/// as devices finish (done or failed).
///
/// ```
/// use idbridge::app::ProgressFn;
/// let progress = ProgressFn(|u: &idbridge_core::journal::DeviceUpdate| {
///     eprintln!("{} {}", u.device_id.short(), u.state);
/// });
/// # let _ = progress;
/// ```
pub struct ProgressFn<F>(pub F);

impl<F: Fn(&DeviceUpdate) + Send + Sync> Progress for ProgressFn<F> {
    fn finished(&self, update: &DeviceUpdate) {
        (self.0)(update);
    }
}
