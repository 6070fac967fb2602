//! A target ready to run jobs: its configuration, connector, engine and journal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idbridge_core::DeviceIdentity;
use idbridge_core::engine::{DiffReport, Engine, EngineOptions, JobReport, Progress};
use idbridge_core::journal::{self, Journal, Operation};

use super::config::{Config, DEFAULT_JOURNAL, TargetConfig};
use super::targets;

/// Engine settings given on top of the target's `[targets.NAME.engine]` table (command-line
/// flags); `None` keeps the table's value, else the engine's default.
#[derive(Debug, Clone, Default)]
pub struct EngineOverrides {
    /// Calls in flight at once.
    pub concurrency: Option<usize>,
    /// Devices per second for the whole target.
    pub rate: Option<f64>,
    /// Devices per call, where the target has bulk calls.
    pub batch_size: Option<usize>,
    /// Seconds one call may take before its outcome is unknown.
    pub timeout: Option<f64>,
}

impl EngineOverrides {
    /// The engine options for `target` with these overrides on top. An error names the flag.
    pub fn options(&self, target: &TargetConfig) -> anyhow::Result<EngineOptions> {
        let e = &target.engine;
        let mut opts = EngineOptions::default();
        if let Some(c) = self.concurrency.or(e.concurrency) {
            anyhow::ensure!(c > 0, "--concurrency must be at least 1");
            opts.concurrency = c;
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
        if let Some(m) = e.max_attempts {
            opts.retry.max_attempts = m.max(1);
        }
        Ok(opts)
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
        Ok(TargetRun {
            engine: Arc::new(Engine::new(connector, journal, opts)),
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
        Ok(self
            .engine
            .execute(operation, &self.target.name, devices, params, progress)
            .await?)
    }

    /// Finishes job `job_id` with the certificates stored in the journal.
    pub async fn resume_job(
        &self,
        job_id: &str,
        progress: &dyn Progress,
    ) -> anyhow::Result<JobReport> {
        Ok(self.engine.resume(job_id, progress).await?)
    }

    /// The backfill plan for `devices`: missing, identical, different, extra.
    pub async fn diff(&self, devices: &[DeviceIdentity]) -> anyhow::Result<DiffReport> {
        Ok(self.engine.diff(devices).await?)
    }
}
