//! `idbridge worker --store URL`: runs jobs only. Any number of workers, on any machines that
//! reach the database, share the queued jobs (`idbridge provision --enqueue`) and the jobs that
//! a dead process left behind:
//!
//! - each of `--jobs` slots claims the oldest running job of a configured target whose job and
//!   target leases are free (`Journal::claim_job`), renews both every third of `--lease-ttl`,
//!   runs it from the journal exactly as `resume` does (every stored certificate of a
//!   provision job verified again against this worker's `[trust]`: one that no longer verifies
//!   is recorded failed with the reason and never sent; devices in flight reconciled), and
//!   releases both leases when it stops;
//! - SIGTERM or Ctrl-C: no new call starts, the calls in flight finish and are recorded, the
//!   leases are released, exit 0;
//! - a killed worker's leases expire after `--lease-ttl` and another worker takes the job over;
//! - the database going away fails the job's journal writes, so its calls stop (none is made
//!   without its write-ahead record); the slot retries, and the job continues when the
//!   database is back.
//!
//! With a `[service]` table in the config, a worker also runs the registration service's jobs
//! (binds in automatic mode, "provision now", deprovisions) from the service's store, as
//! `idbridge serve` does; `serve --no-jobs` front ends then only queue them. Each service job
//! is held under its own lease (`service-job:ID`, TTL from `IDBRIDGE_LEASE_TTL`); SIGTERM stops
//! them the same way: calls in flight finish, the lease is given back, another process resumes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use idbridge_core::engine::NoProgress;
use idbridge_core::journal::{self, JobInfo, Journal, OpenedJob};
use idbridge_core::lease::{self, LeasedProgress, Leaseholder};
use idbridge_core::trust::Verifier;

use idbridge::app::{Config, EngineOverrides, TargetRun};

/// Arguments of `idbridge worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shared journal: postgres://USER@HOST:PORT/DB (sqlite:PATH works for workers on one
    /// machine).
    #[arg(long, env = "IDBRIDGE_JOURNAL", value_name = "URL")]
    store: Option<String>,

    /// The config file naming the targets this worker may drive (default: ./idbridge.toml).
    #[arg(long, env = "IDBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Jobs run at once (each on a different target).
    #[arg(long, default_value_t = 4, value_name = "N")]
    jobs: usize,

    /// Seconds a lease lives unrenewed: a dead worker's job is taken over after this.
    #[arg(
        long,
        env = "IDBRIDGE_LEASE_TTL",
        default_value_t = 30.0,
        value_name = "SECS"
    )]
    lease_ttl: f64,

    /// Seconds between looks for work when idle.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    poll: f64,

    /// The name leases are held under (default: worker:HOST:PID).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Exit once no running job of a configured target is left (batch runs, benches).
    #[arg(long)]
    exit_when_idle: bool,
}

/// Runs `worker`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let url = args
        .store
        .clone()
        .or_else(|| config.journal.clone())
        .context("no store: give --store postgres://... (or `journal =` in the config)")?;
    anyhow::ensure!(
        args.lease_ttl.is_finite() && args.lease_ttl > 0.0,
        "--lease-ttl must be a positive number of seconds"
    );
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    let journal =
        journal::open(&url).with_context(|| format!("cannot open the store {}", redact(&url)))?;
    // The trust this worker judges stored certificates by: its own config's, not whatever the
    // process that queued the job trusted.
    let verifier = Arc::new(
        Verifier::from_options(&config.trust.options()?).context("cannot load the trust store")?,
    );
    let targets = config.target_names();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| lease::owner_name("worker"));
    let service = match &config.path {
        Some(p) => idbridge::service::ServiceConfig::from_file(p)?,
        None => None,
    };
    let service = match service {
        Some(cfg) => {
            use idbridge::service::{Service, jobs};
            let svc = Service::open(cfg, config.trust.options()?, url.clone())
                .await
                .context("cannot open the registration service's store")?;
            let resumed = jobs::resume_unfinished(&svc).await?;
            tokio::spawn(jobs::run_queue(Arc::clone(&svc), jobs::queue_poll()));
            eprintln!("idbridge worker: registration service jobs ({resumed} taken up at start)");
            Some(svc)
        }
        None => None,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = Arc::clone(&shutdown);
        let service = service.clone();
        // Both handlers are installed here, before any job is claimed: a SIGTERM that arrives
        // as the first job starts is a clean stop, never the default action (exit by signal).
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("idbridge worker: stopping: finishing the calls in flight");
            shutdown.store(true, Ordering::Release);
            if let Some(svc) = &service {
                svc.jobs.stop();
            }
        });
    }
    eprintln!(
        "idbridge worker {name}: {} slot(s), targets {}, lease {} s",
        args.jobs,
        targets.join(", "),
        args.lease_ttl
    );
    let w = Arc::new(Worker {
        journal,
        verifier,
        url,
        config,
        targets,
        ttl: Duration::from_secs_f64(args.lease_ttl),
        poll: Duration::from_secs_f64(args.poll.max(0.01)),
        shutdown,
        exit_when_idle: args.exit_when_idle,
    });
    let slots: Vec<_> = (0..args.jobs)
        .map(|i| {
            let w = Arc::clone(&w);
            let owner = if args.jobs == 1 {
                name.clone()
            } else {
                format!("{name}/{i}")
            };
            tokio::spawn(async move { w.slot(owner).await })
        })
        .collect();
    for s in slots {
        let _ = s.await;
    }
    if let Some(svc) = &service {
        svc.jobs.stop();
        svc.jobs.idle().await;
    }
    eprintln!("idbridge worker {name}: stopped");
    Ok(ExitCode::SUCCESS)
}

struct Worker {
    journal: Arc<dyn Journal>,
    verifier: Arc<Verifier>,
    url: String,
    config: Config,
    targets: Vec<String>,
    ttl: Duration,
    poll: Duration,
    shutdown: Arc<AtomicBool>,
    exit_when_idle: bool,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// One slot: claim, run, release, until shut down.
    async fn slot(&self, owner: String) {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        while !self.stopping() {
            match self
                .journal
                .claim_job(&owner, &self.targets, ttl_ms, journal::now_ms())
                .await
            {
                Ok(Some(job)) => self.run_job(&owner, job).await,
                Ok(None) => {
                    if self.exit_when_idle && self.idle().await {
                        return;
                    }
                    self.pause().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for jobs; retrying");
                    self.pause().await;
                }
            }
        }
    }

    /// No running job of our targets is left.
    async fn idle(&self) -> bool {
        match self.journal.jobs().await {
            Ok(jobs) => !jobs.iter().any(|j| {
                j.state == journal::JobState::Running && self.targets.contains(&j.spec.target)
            }),
            Err(_) => false,
        }
    }

    async fn pause(&self) {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        while waited < self.poll && !self.stopping() {
            tokio::time::sleep(step).await;
            waited += step;
        }
    }

    async fn run_job(&self, owner: &str, job: JobInfo) {
        let target = job.spec.target.clone();
        eprintln!(
            "idbridge worker {owner}: claimed job {} ({} into {target}, {} of {} done)",
            job.id,
            job.spec.operation,
            job.counts.done,
            job.counts.total()
        );
        let holder = Leaseholder::hold(
            Arc::clone(&self.journal),
            owner,
            vec![journal::target_lease(&target), journal::job_lease(&job.id)],
            self.ttl,
        );
        match self.drive(&job, &holder).await {
            Ok(report) => {
                eprintln!(
                    "idbridge worker {owner}: job {} {} ({} done, {} failed, {} left){}",
                    job.id,
                    if report.finished {
                        "finished"
                    } else {
                        "stopped"
                    },
                    report.counts.done,
                    report.counts.failed,
                    report.counts.total() - report.counts.done - report.counts.failed,
                    report
                        .aborted
                        .as_deref()
                        .map(|a| format!(": {a}"))
                        .unwrap_or_default()
                );
                if holder.lost() {
                    // Another worker holds it now: nothing of ours to release.
                    drop(holder);
                } else {
                    holder.release().await;
                    eprintln!("idbridge worker {owner}: released job {}", job.id);
                }
                if !report.finished && !self.stopping() {
                    // Aborted by the target (bad credentials ...): let others try later.
                    self.pause().await;
                }
            }
            Err(e) => {
                // The database or the target went away mid-run: keep the leases (they expire
                // if we die) and claim the job again when things are back.
                eprintln!("idbridge worker {owner}: job {} interrupted: {e:#}", job.id);
                drop(holder);
                self.pause().await;
            }
        }
    }

    async fn drive(
        &self,
        job: &JobInfo,
        holder: &Leaseholder,
    ) -> anyhow::Result<idbridge_core::engine::JobReport> {
        let target = self.config.target(&job.spec.target)?;
        // The leases come from the claim: run the verified job directly (not
        // TargetRun::resume_job, which would take them again under another name).
        let run = TargetRun::with_journal(
            &self.config,
            target,
            Arc::clone(&self.journal),
            self.url.clone(),
            &EngineOverrides::default(),
        )
        .await?;
        let progress = LeasedProgress {
            inner: &NoProgress,
            lost: holder.lost_flag(),
            shutdown: Arc::clone(&self.shutdown),
        };
        let opened = OpenedJob {
            id: job.id.clone(),
            resumed: true,
        };
        idbridge::app::resume::run_verified(
            &run,
            &opened,
            job.spec.operation,
            &self.verifier,
            &progress,
        )
        .await
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}
