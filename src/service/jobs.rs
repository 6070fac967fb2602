//! Running service jobs: the one place a job runs ([`run`]), so leases (issue 12) can wrap it.
//! A job loads the binding's valid devices from the store, builds the account's target from
//! its sealed table, and runs through the application layer (engine + journal), from the
//! journal as `resume` runs a job: every certificate of a provision job is verified again
//! against this process's trust first (an `idbridge worker` taking the job up judges it by its
//! own `[trust]`). A restarted
//! service calls [`resume_unfinished`]: the engine reopens the unfinished journal job with the
//! same devices, so nothing is done twice.
//!
//! Many `serve` processes may share one store and journal (PostgreSQL): a process runs a
//! service job only while it holds the job's lease `service-job:ID` in the journal (taken,
//! renewed every third of the lease TTL and released like a worker's, [`Leaseholder`]); the
//! run itself then takes the journal job's and the target's leases as every front end does.
//! [`run_queue`] looks for unfinished jobs every few seconds, so jobs queued by a
//! `serve --no-jobs` process ([`Runner::disable`]) or left by a dead process (its lease expired,
//! or its PID gone on this host) are taken over. A job held by another live process is left
//! alone, never marked failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idbridge_core::DeviceIdentity;
use idbridge_core::engine::Progress;
use idbridge_core::journal::{DeviceState, DeviceUpdate, Operation};
use idbridge_core::lease::{self, Leaseholder};
use serde::Serialize;
use tokio::sync::watch;

use super::store::JobRecord;
use super::{Service, api};
use crate::app::{self, EngineOverrides, TargetConfig, TargetRun};

/// Live progress of a running job.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Live {
    /// Devices of the job.
    pub total: u64,
    /// Finished (done or failed), this run and earlier ones.
    pub finished: u64,
    /// Failed in this run.
    pub failed: u64,
    /// The journal job.
    #[serde(skip)]
    pub journal_job: Option<String>,
    /// The job ended.
    pub ended: bool,
}

/// Running jobs and built targets.
#[derive(Default)]
pub struct Runner {
    live: Mutex<HashMap<String, watch::Sender<Live>>>,
    targets: tokio::sync::Mutex<HashMap<String, Arc<TargetRun>>>,
    /// `serve --no-jobs`: jobs are recorded (queued) for other processes, never run here.
    disabled: AtomicBool,
    /// Shutting down (a worker's SIGTERM): no new job or call starts here; the calls in flight
    /// finish and are recorded; the jobs stay unfinished for another process.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    /// A receiver of `job`'s progress, if it runs in this process.
    pub fn watch(&self, job: &str) -> Option<watch::Receiver<Live>> {
        lock(&self.live).get(job).map(watch::Sender::subscribe)
    }

    /// Runs no job in this process: [`start`] only queues them (`serve --no-jobs`).
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::Release);
    }

    /// Whether this process runs jobs.
    pub fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::Acquire)
    }

    /// Stops running jobs here: no job or call starts from now on, the calls in flight finish
    /// and are recorded, and each job's lease is given back for another process to take the
    /// job over. [`Runner::idle`] tells when the last one is out.
    pub fn stop(&self) {
        self.disabled.store(true, Ordering::Release);
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether [`Runner::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits until no job runs in this process.
    pub async fn idle(&self) {
        loop {
            let busy = lock(&self.live).values().any(|tx| !tx.borrow().ended);
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `job` runs in this process now.
    fn running_here(&self, job: &str) -> bool {
        lock(&self.live)
            .get(job)
            .is_some_and(|tx| !tx.borrow().ended)
    }

    /// Forgets `job`'s progress channel if it is still `tx` (the job runs elsewhere).
    fn forget(&self, job: &str, tx: &watch::Sender<Live>) {
        let mut live = lock(&self.live);
        if live.get(job).is_some_and(|t| t.same_channel(tx)) {
            live.remove(job);
        }
    }

    fn register(&self, job: &str) -> watch::Sender<Live> {
        let (tx, _) = watch::channel(Live::default());
        lock(&self.live).insert(job.to_owned(), tx.clone());
        tx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning follows a panic elsewhere; the map stays consistent (single inserts).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct LiveProgress {
    tx: watch::Sender<Live>,
    svc: Arc<Service>,
}

impl Progress for LiveProgress {
    fn started(&self, job_id: &str, total: u64, done: u64) {
        self.tx.send_modify(|l| {
            l.total = total;
            l.finished = done;
            l.journal_job = Some(job_id.to_owned());
        });
    }

    fn finished(&self, update: &DeviceUpdate) {
        let failed = update.state == DeviceState::Failed;
        if failed {
            self.svc
                .metrics
                .devices_failed
                .fetch_add(1, Ordering::Relaxed);
        } else if update.state == DeviceState::Done {
            self.svc
                .metrics
                .devices_done
                .fetch_add(1, Ordering::Relaxed);
        }
        if matches!(update.state, DeviceState::Done | DeviceState::Failed) {
            self.tx.send_modify(|l| {
                l.finished += 1;
                l.failed += u64::from(failed);
            });
        }
    }

    fn retrying(
        &self,
        _devices: usize,
        _error: &idbridge_core::Error,
        _delay: std::time::Duration,
    ) {
        self.svc.metrics.retries.fetch_add(1, Ordering::Relaxed);
    }

    fn cancelled(&self) -> bool {
        self.svc.jobs.stopping()
    }
}

/// Creates a job record and starts it in the background; returns the record.
pub async fn start(
    svc: &Arc<Service>,
    account_id: &str,
    binding_id: &str,
    operation: Operation,
    target: &str,
) -> anyhow::Result<JobRecord> {
    let now = super::now_ms();
    let job = JobRecord {
        id: super::new_id("job"),
        account_id: account_id.to_owned(),
        binding_id: binding_id.to_owned(),
        operation: operation.as_str().to_owned(),
        target: target.to_owned(),
        state: "queued".into(),
        journal_job: None,
        error: None,
        created_ms: now,
        updated_ms: now,
    };
    svc.store.create_job(&job).await?;
    if svc.jobs.enabled() {
        spawn(svc, job.clone());
    }
    Ok(job)
}

/// The lease name of a service job.
pub fn service_job_lease(job_id: &str) -> String {
    format!("service-job:{job_id}")
}

/// Starts `job` in the background: it runs only once this process holds its lease
/// ([`service_job_lease`]); held by another live process, it is left to that one.
pub fn spawn(svc: &Arc<Service>, job: JobRecord) {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let svc = Arc::clone(svc);
    let tx = svc.jobs.register(&job.id);
    tokio::spawn(async move {
        let id = job.id.clone();
        // One owner per run: a second spawn of the same job in this process is refused too.
        let owner = format!(
            "{}#{}",
            lease::owner_name("service"),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let ttl = match app::job::lease_ttl() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "falling back to the default lease TTL");
                lease::DEFAULT_TTL
            }
        };
        let lease_name = service_job_lease(&id);
        let holder = match Leaseholder::acquire(Arc::clone(&svc.journal), &owner, &lease_name, ttl)
            .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(held)) => {
                tracing::debug!(job = %id, holder = %held.owner, "another process runs this job");
                svc.jobs.forget(&id, &tx);
                return;
            }
            Err(e) => {
                // The database is away: the job stays queued; run_queue tries again.
                tracing::warn!(job = %id, error = %e, "cannot take the job's lease; will retry");
                svc.jobs.forget(&id, &tx);
                return;
            }
        };
        if svc.jobs.stopping() {
            holder.release().await;
            svc.jobs.forget(&id, &tx);
            return;
        }
        svc.metrics.jobs_started.fetch_add(1, Ordering::Relaxed);
        let result = run(&svc, &job, tx.clone()).await;
        if result.is_err() && svc.jobs.stopping() {
            // Stopped by shutdown, not failed: the job stays unfinished and its lease is given
            // back, so another process resumes it at once.
            tracing::warn!(job = %id, "stopped by shutdown; left for another process");
            holder.release().await;
            tx.send_modify(|l| l.ended = true);
            svc.jobs.forget(&id, &tx);
            return;
        }
        if holder.lost() {
            // Our lease expired and another process took the job over: it records the end.
            tracing::warn!(job = %id, "lost the job's lease; another process finishes it");
            drop(holder);
            tx.send_modify(|l| l.ended = true);
            svc.jobs.forget(&id, &tx);
            return;
        }
        let (state, error) = match &result {
            Ok(()) => ("finished", None),
            Err(e) => ("failed", Some(format!("{e:#}"))),
        };
        if state == "finished" {
            svc.metrics.jobs_finished.fetch_add(1, Ordering::Relaxed);
        } else {
            svc.metrics.jobs_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = %id, error = error.as_deref().unwrap_or(""), "service job failed");
        }
        let journal_job = tx.borrow().journal_job.clone();
        if let Err(e) = svc
            .store
            .update_job(&id, state, journal_job.as_deref(), error.as_deref())
            .await
        {
            tracing::error!(job = %id, error = %e, "cannot record the end of a job");
        }
        holder.release().await;
        tx.send_modify(|l| l.ended = true);
    });
}

/// Takes over unfinished jobs that no live process holds, every `poll`, forever: jobs queued
/// by `serve --no-jobs` processes and jobs of processes that died (once their lease expired).
pub async fn run_queue(svc: Arc<Service>, poll: Duration) {
    loop {
        tokio::time::sleep(poll).await;
        if svc.jobs.stopping() {
            return;
        }
        match svc.store.unfinished_jobs().await {
            Ok(jobs) => {
                for j in jobs {
                    if !svc.jobs.running_here(&j.id) {
                        spawn(&svc, j);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for unfinished jobs; retrying"),
        }
    }
}

/// How often [`run_queue`] looks: a sixth of the lease TTL, between 0.2 and 5 seconds.
pub fn queue_poll() -> Duration {
    app::job::lease_ttl()
        .unwrap_or(lease::DEFAULT_TTL)
        .div_f64(6.0)
        .clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// Runs one job to its end. The one place a job runs.
pub async fn run(
    svc: &Arc<Service>,
    job: &JobRecord,
    tx: watch::Sender<Live>,
) -> anyhow::Result<()> {
    svc.store.update_job(&job.id, "running", None, None).await?;
    let operation = match job.operation.as_str() {
        "provision" => Operation::Provision,
        "deprovision" => Operation::Deprovision,
        other => anyhow::bail!("unknown operation {other}"),
    };
    let binding = svc
        .store
        .binding(&job.account_id, &job.binding_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the binding is gone"))?;
    let devices = binding_devices(svc, &binding.batch_id).await?;
    let target = target_run(svc, &job.account_id, &job.target).await?;
    let progress = LiveProgress {
        tx,
        svc: Arc::clone(svc),
    };
    // The job is opened (or found) with every device of the binding, then run from the
    // journal as `resume` runs a job: each stored certificate of a provision job verified
    // again against this process's trust (a worker's own `[trust]`, which may have changed
    // since the upload: a CA removed, a CRL that now lists a device). One that no longer
    // verifies is recorded failed with the reason and never sent.
    let verifier = Arc::new(
        idbridge_core::trust::Verifier::from_options(&svc.trust)
            .map_err(|e| anyhow::anyhow!("cannot load the trust store: {e}"))?,
    );
    let opened = target
        .enqueue_with(
            operation,
            &devices,
            serde_json::json!({"via": "service", "service_job": job.id}),
        )
        .await?;
    drop(devices);
    let report = target.resume_job(&opened.id, &verifier, &progress).await?;
    svc.store
        .update_job(&job.id, "running", Some(&report.job_id), None)
        .await?;
    if let Some(why) = report.aborted {
        anyhow::bail!("{why}");
    }
    Ok(())
}

/// Resumes the jobs a killed service left unfinished.
pub async fn resume_unfinished(svc: &Arc<Service>) -> anyhow::Result<usize> {
    let jobs = svc.store.unfinished_jobs().await?;
    let n = jobs.len();
    for j in jobs {
        tracing::info!(job = %j.id, "resuming an unfinished job");
        spawn(svc, j);
    }
    Ok(n)
}

/// The valid devices of a batch, page by page from the store.
pub async fn binding_devices(svc: &Service, batch_id: &str) -> anyhow::Result<Vec<DeviceIdentity>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = svc
            .store
            .devices(batch_id, after.as_deref(), 1000, true)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.device_id.clone());
        for d in &page {
            let Some(pem_text) = &d.cert_pem else {
                continue;
            };
            let der = pem::parse(pem_text)?.into_contents();
            let source = idbridge_core::Source {
                file: d.source.clone(),
                line: None,
                entry: None,
            };
            out.push(DeviceIdentity::from_der(der, source)?);
        }
    }
    Ok(out)
}

/// The journal's target name of an account's target: accounts never share journal jobs.
pub fn journal_target(account_id: &str, name: &str) -> String {
    format!("svc/{account_id}/{name}")
}

/// The account's target `name` as a built engine (cached per version). `demo` without a
/// stored table is the in-process mock cloud.
pub async fn target_run(
    svc: &Arc<Service>,
    account_id: &str,
    name: &str,
) -> anyhow::Result<Arc<TargetRun>> {
    let record = svc.store.target(account_id, name).await?;
    let (table, version) = match &record {
        Some(r) => {
            let plain = svc
                .key
                .open(&r.sealed, &api::seal_context(account_id, name))?;
            let table: toml::Table = serde_json::from_slice(&plain)?;
            (table, r.updated_ms)
        }
        None if name == app::DEMO => {
            let mut t = toml::Table::new();
            t.insert("kind".into(), toml::Value::String("mock".into()));
            (t, 0)
        }
        None => anyhow::bail!("no target {name:?}"),
    };
    let cache_key = format!("{account_id}\0{name}\0{version}");
    let mut cache = svc.jobs.targets.lock().await;
    if let Some(t) = cache.get(&cache_key) {
        return Ok(Arc::clone(t));
    }
    let target = target_config(account_id, name, table)?;
    let run = TargetRun::with_journal(
        &app::Config::default(),
        target,
        Arc::clone(&svc.journal),
        svc.journal_url.clone(),
        &EngineOverrides::default(),
    )
    .await?;
    let run = Arc::new(run);
    cache.insert(cache_key, Arc::clone(&run));
    Ok(run)
}

/// A stored table (`kind`, connector keys, `engine`) as a target configuration.
pub fn target_config(
    account_id: &str,
    name: &str,
    mut table: toml::Table,
) -> anyhow::Result<TargetConfig> {
    let engine = match table.remove("engine") {
        Some(v) => v
            .try_into::<app::EngineSection>()
            .map_err(|e| anyhow::anyhow!("target {name}: engine: {e}"))?,
        None => app::EngineSection::default(),
    };
    let kind = table
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| anyhow::anyhow!("target {name}: missing kind"))?
        .to_owned();
    Ok(TargetConfig {
        name: journal_target(account_id, name),
        kind,
        table,
        engine,
        file: None,
    })
}
