//! `idbridge provision` and `idbridge deprovision`, and what `diff`, `status` and `resume`
//! share with them: target arguments, building the engine, progress and reports.
//!
//! Exit codes: 0 every device done, 1 some device failed or was refused (invalid, unreadable),
//! 2 unusable input or configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use idbridge_core::DeviceIdentity;
use idbridge_core::engine::{Engine, EngineOptions, JobReport, Progress};
use idbridge_core::intake::{RejectKind, Verdict};
use idbridge_core::journal::{self, DeviceState, DeviceUpdate, Journal, OpenedJob, Operation};
use idbridge_core::lease;
use serde::Serialize;

use super::input::InputArgs;
use crate::config::{Config, DEFAULT_JOURNAL, TargetConfig};
use crate::targets;

/// Arguments of `idbridge provision`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: InputArgs,

    #[command(flatten)]
    target: TargetArgs,

    /// Show what would be done (looks devices up in the target) and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Record the job in the journal and exit without running it: `idbridge worker`s sharing
    /// the journal run it. Prints the job id.
    #[arg(long, conflicts_with = "dry_run")]
    enqueue: bool,

    #[command(flatten)]
    out: OutputArgs,
}

/// Arguments of `idbridge deprovision`.
#[derive(Debug, clap::Args)]
pub struct DeprovisionArgs {
    #[command(flatten)]
    input: InputArgs,

    #[command(flatten)]
    target: TargetArgs,

    #[command(flatten)]
    out: OutputArgs,
}

/// Which target, configured how, journaled where.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The target: a `[targets.NAME]` of the config file, or `demo` (the in-process mock cloud).
    #[arg(long, short = 't', value_name = "NAME")]
    pub target: String,

    /// The config file (default: ./idbridge.toml when present).
    #[arg(long, env = "IDBRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The journal: sqlite:PATH or postgres://USER@HOST:PORT/DB (default: the config's
    /// `journal`, else sqlite:idbridge-journal.sqlite).
    #[arg(long, env = "IDBRIDGE_JOURNAL", value_name = "URL")]
    pub journal: Option<String>,

    /// Calls in flight at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// Devices per second for the whole target (per-API quotas apply as well).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// Devices per call, where the target has bulk calls.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Seconds one call may take before its outcome is unknown.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// Where results go.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Also write the full report (every device's outcome) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Output on stdout: a table, one JSON document, or JSON Lines.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Summary and the devices that did not succeed.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per device, then a summary line.
    Jsonl,
}

/// An input entry that was not sent: invalid, not provisionable, unreadable.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// The device, when the entry had a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `invalid`, `not_provisionable`, `unreadable`, `input_unusable`.
    pub status: &'static str,
    /// Why.
    pub reason: String,
    /// File and line or entry.
    pub source: String,
}

/// The devices of the inputs: those to send, and those refused.
#[derive(Debug, Default)]
pub struct Inputs {
    /// To send.
    pub devices: Vec<DeviceIdentity>,
    /// Refused entries (reported, never sent).
    pub refused: Vec<Refused>,
    /// Entries skipped on purpose (duplicates, key blocks).
    pub skipped: u64,
}

/// Runs `provision`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        let ctx = Prepared::open(&args.target).await?;
        let inputs = read_inputs(&args.input, false).await?;
        let report = ctx.engine.diff(&inputs.devices).await?;
        super::diff::print(&report, &inputs, args.out.output, "would create")?;
        if let Some(path) = &args.out.report {
            write_json(
                path,
                &serde_json::json!({"dry_run": true, "plan": report, "refused": inputs.refused}),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    execute(
        Operation::Provision,
        &args.input,
        &args.target,
        &args.out,
        false,
        args.enqueue,
    )
    .await
}

/// Runs `deprovision`. Every certificate of the inputs is removed, whatever its verdict: a
/// revoked or expired device must be removable.
pub async fn run_deprovision(args: DeprovisionArgs) -> anyhow::Result<ExitCode> {
    execute(
        Operation::Deprovision,
        &args.input,
        &args.target,
        &args.out,
        true,
        false,
    )
    .await
}

async fn execute(
    operation: Operation,
    input: &InputArgs,
    target: &TargetArgs,
    out: &OutputArgs,
    any_verdict: bool,
    enqueue: bool,
) -> anyhow::Result<ExitCode> {
    let ctx = Prepared::open(target).await?;
    let inputs = read_inputs(input, any_verdict).await?;
    if inputs.devices.is_empty() {
        eprintln!(
            "idbridge: no device to {operation} ({} refused, {} skipped)",
            inputs.refused.len(),
            inputs.skipped
        );
        print_report(None, &inputs.refused, out)?;
        return Ok(if inputs.refused.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let opened = ctx
        .engine
        .open(operation, &ctx.target.name, &inputs.devices, ctx.params())
        .await?;
    if enqueue {
        eprintln!(
            "idbridge: job {} queued for workers ({} devices, {} refused)",
            opened.id,
            inputs.devices.len(),
            inputs.refused.len()
        );
        println!("{}", opened.id);
        return Ok(ExitCode::SUCCESS);
    }
    let progress = CliProgress::new(operation);
    let report = run_leased(&ctx, &opened, operation, Some(inputs.devices), &progress).await?;
    progress.done();
    print_report(Some(&report), &inputs.refused, out)?;
    Ok(exit_code(&report, &inputs.refused))
}

/// Runs an opened job holding its leases: refused (naming the holder) when another live
/// process runs the same job; waits while another process drives the same target. `devices`
/// None resumes with the identities stored in the journal.
pub async fn run_leased(
    ctx: &Prepared,
    job: &OpenedJob,
    operation: Operation,
    devices: Option<Vec<DeviceIdentity>>,
    progress: &dyn Progress,
) -> anyhow::Result<JobReport> {
    let owner = lease::owner_name("cli");
    let told = std::sync::atomic::AtomicBool::new(false);
    let waiting = |held: &journal::Lease| {
        if !told.swap(true, Ordering::Relaxed) {
            eprintln!(
                "idbridge: waiting for target {}: {} drives it now",
                ctx.target.name, held.owner
            );
        }
    };
    let holder = match lease::guard_job(
        Arc::clone(ctx.engine.journal()),
        &owner,
        &job.id,
        &ctx.target.name,
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
    let leased = lease::LeasedProgress {
        inner: progress,
        lost: holder.lost_flag(),
        shutdown: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let report = match devices {
        Some(d) => {
            ctx.engine
                .run(job, operation, &ctx.target.name, d, &leased)
                .await
        }
        None => ctx.engine.resume(&job.id, &leased).await,
    };
    holder.release().await;
    Ok(report?)
}

/// The lease time to live: `IDBRIDGE_LEASE_TTL` seconds, else 30.
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

/// A target, its engine and journal, ready to run.
pub struct Prepared {
    /// The target's configuration.
    pub target: TargetConfig,
    /// The engine.
    pub engine: Engine,
    /// The journal URL.
    pub journal_url: String,
    /// The config file, if any.
    pub config_path: Option<PathBuf>,
}

impl Prepared {
    /// Loads the config, builds the connector and opens the journal.
    pub async fn open(args: &TargetArgs) -> anyhow::Result<Self> {
        let config = Config::load(args.config.as_deref())?;
        let target = config.target(&args.target)?;
        let journal_url = args
            .journal
            .clone()
            .or_else(|| config.journal.clone())
            .unwrap_or_else(|| DEFAULT_JOURNAL.to_owned());
        let journal = journal::open(&journal_url)
            .with_context(|| format!("cannot open the journal {journal_url}"))?;
        Self::with_journal(args, config, target, journal, journal_url).await
    }

    /// Builds the engine for `target` over an open journal.
    pub async fn with_journal(
        args: &TargetArgs,
        config: Config,
        target: TargetConfig,
        journal: Arc<dyn Journal>,
        journal_url: String,
    ) -> anyhow::Result<Self> {
        let connector = targets::build(&target).await?;
        let e = &target.engine;
        let mut opts = EngineOptions::default();
        if let Some(c) = args.concurrency.or(e.concurrency) {
            anyhow::ensure!(c > 0, "--concurrency must be at least 1");
            opts.concurrency = c;
        }
        if let Some(r) = args.rate.or(e.rate) {
            anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be a positive number");
            opts.rate = Some(r);
        }
        if let Some(b) = args.batch_size.or(e.batch_size) {
            anyhow::ensure!(b > 0, "--batch-size must be at least 1");
            opts.batch_size = Some(b);
        }
        if let Some(t) = args.timeout.or(e.attempt_timeout_secs) {
            anyhow::ensure!(
                t.is_finite() && t > 0.0,
                "--timeout must be a positive number"
            );
            opts.attempt_timeout = Duration::from_secs_f64(t);
        }
        if let Some(m) = e.max_attempts {
            opts.retry.max_attempts = m.max(1);
        }
        let engine = Engine::new(connector, journal, opts);
        Ok(Prepared {
            target,
            engine,
            journal_url,
            config_path: config.path,
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
}

/// Reads and verifies the inputs off the async workers. Valid devices (or, with
/// `any_verdict`, every certificate) are returned to send; the rest are refused.
pub async fn read_inputs(input: &InputArgs, any_verdict: bool) -> anyhow::Result<Inputs> {
    let input = input.clone();
    tokio::task::spawn_blocking(move || {
        let intake = input.open()?;
        let mut inputs = Inputs::default();
        for item in intake {
            match item {
                Ok(checked) => match checked.verdict {
                    Verdict::Valid { .. } => inputs.devices.push(checked.identity),
                    _ if any_verdict => inputs.devices.push(checked.identity),
                    Verdict::Invalid { reason } => inputs.refused.push(Refused {
                        device_id: Some(checked.identity.device_id.to_string()),
                        status: "invalid",
                        reason,
                        source: checked.identity.source.to_string(),
                    }),
                    Verdict::NotProvisionable { reason } => inputs.refused.push(Refused {
                        device_id: Some(checked.identity.device_id.to_string()),
                        status: "not_provisionable",
                        reason,
                        source: checked.identity.source.to_string(),
                    }),
                    other => inputs.refused.push(Refused {
                        device_id: Some(checked.identity.device_id.to_string()),
                        status: "invalid",
                        reason: format!("{other:?}"),
                        source: checked.identity.source.to_string(),
                    }),
                },
                Err(r) if r.kind == RejectKind::Skipped => inputs.skipped += 1,
                Err(r) => inputs.refused.push(Refused {
                    device_id: None,
                    status: r.kind.as_str(),
                    reason: r.reason.clone(),
                    source: r.source.to_string(),
                }),
            }
        }
        Ok(inputs)
    })
    .await?
}

/// 0 all done, 1 otherwise.
pub fn exit_code(report: &JobReport, refused: &[Refused]) -> ExitCode {
    if report.all_done() && refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints the report on stdout in the chosen format and writes `--report`.
pub fn print_report(
    report: Option<&JobReport>,
    refused: &[Refused],
    out: &OutputArgs,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match out.output {
        Output::Json => {
            serde_json::to_writer_pretty(
                &mut w,
                &serde_json::json!({"job": report, "refused": refused}),
            )?;
            writeln!(w)?;
        }
        Output::Jsonl => {
            if let Some(r) = report {
                for d in &r.devices {
                    serde_json::to_writer(&mut w, d)?;
                    writeln!(w)?;
                }
            }
            for x in refused {
                serde_json::to_writer(&mut w, x)?;
                writeln!(w)?;
            }
            serde_json::to_writer(&mut w, &summary(report, refused))?;
            writeln!(w)?;
        }
        Output::Table => {
            if let Some(r) = report {
                let not_done = r.devices.iter().filter(|d| d.state != DeviceState::Done);
                for (shown, d) in not_done.enumerate() {
                    if shown == 0 {
                        writeln!(
                            w,
                            "{:<14} {:<10} {:<30} REASON",
                            "DEVICE", "STATE", "SOURCE"
                        )?;
                    }
                    writeln!(
                        w,
                        "{:<14} {:<10} {:<30} {}",
                        d.device_id.short(),
                        d.state.as_str(),
                        d.source,
                        d.reason.as_deref().unwrap_or("")
                    )?;
                }
            }
            for x in refused {
                writeln!(
                    w,
                    "{:<14} {:<10} {:<30} {}",
                    x.device_id
                        .as_deref()
                        .map_or("-", |d| &d[..12.min(d.len())]),
                    x.status,
                    x.source,
                    x.reason
                )?;
            }
            let s = summary(report, refused);
            match report {
                Some(r) => writeln!(
                    w,
                    "job {} ({} to {}{}): {} done ({} created, {} already present, {} deleted, \
                     {} not found), {} failed, {} unfinished, {} refused{}",
                    r.job_id,
                    r.operation,
                    r.target,
                    if r.resumed { ", resumed" } else { "" },
                    r.counts.done,
                    s.created,
                    s.already_present,
                    s.deleted,
                    s.not_found,
                    r.counts.failed,
                    r.counts.pending + r.counts.in_flight + r.counts.unknown,
                    refused.len(),
                    r.aborted
                        .as_deref()
                        .map(|a| format!("; stopped: {a}"))
                        .unwrap_or_default()
                )?,
                None => writeln!(w, "nothing sent; {} refused", refused.len())?,
            }
        }
    }
    if let Some(path) = &out.report {
        write_json(
            path,
            &serde_json::json!({"job": report, "refused": refused, "summary": summary(report, refused)}),
        )?;
    }
    Ok(())
}

/// Counts by outcome.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// The job, if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Devices of the job.
    pub devices: u64,
    /// Done.
    pub done: u64,
    /// Created.
    pub created: u64,
    /// Already present.
    pub already_present: u64,
    /// Deleted.
    pub deleted: u64,
    /// Not found when deprovisioning.
    pub not_found: u64,
    /// Failed.
    pub failed: u64,
    /// Not finished (the job stopped early).
    pub unfinished: u64,
    /// Refused input entries.
    pub refused: u64,
}

fn summary(report: Option<&JobReport>, refused: &[Refused]) -> Summary {
    use idbridge_core::journal::Outcome;
    let mut s = Summary {
        refused: refused.len() as u64,
        ..Default::default()
    };
    if let Some(r) = report {
        s.job_id = Some(r.job_id.clone());
        s.devices = r.counts.total();
        s.done = r.counts.done;
        s.failed = r.counts.failed;
        s.unfinished = r.counts.pending + r.counts.in_flight + r.counts.unknown;
        for d in &r.devices {
            match d.outcome {
                Some(Outcome::Created) => s.created += 1,
                Some(Outcome::AlreadyPresent) => s.already_present += 1,
                Some(Outcome::Deleted) => s.deleted += 1,
                Some(Outcome::NotFound) => s.not_found += 1,
                _ => {}
            }
        }
    }
    s
}

/// Writes JSON to a file, naming it on error.
pub fn write_json(path: &std::path::Path, v: &serde_json::Value) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(v)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A progress bar with rate and ETA on a terminal; JSON lines on stderr otherwise.
pub struct CliProgress {
    operation: Operation,
    bar: Option<indicatif::ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    start: Instant,
    last: std::sync::Mutex<Instant>,
}

impl CliProgress {
    /// A bar when stderr is a terminal.
    pub fn new(operation: Operation) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(operation.as_str());
            b
        });
        CliProgress {
            operation,
            bar,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            start: Instant::now(),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn line(&self, event: &str) {
        let done = self.done.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed().as_secs_f64();
        let v = serde_json::json!({
            "event": event,
            "operation": self.operation.as_str(),
            "total": self.total.load(Ordering::Relaxed),
            "done": done,
            "failed": self.failed.load(Ordering::Relaxed),
            "elapsed_secs": (elapsed * 10.0).round() / 10.0,
        });
        eprintln!("{v}");
    }

    /// Closes the bar (or prints the last JSON line).
    pub fn done(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => self.line("finished"),
        }
    }
}

impl Progress for CliProgress {
    fn started(&self, job_id: &str, total: u64, done: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        match &self.bar {
            Some(b) => {
                b.set_length(total);
                b.set_position(done);
                b.reset_eta();
                b.set_message(format!("{} {job_id}", self.operation));
            }
            None => {
                eprintln!(
                    "{}",
                    serde_json::json!({"event": "started", "job": job_id,
                        "operation": self.operation.as_str(), "total": total, "done": done})
                );
            }
        }
    }

    fn finished(&self, update: &DeviceUpdate) {
        if update.state == DeviceState::Failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(update.state, DeviceState::Done | DeviceState::Failed) {
            self.done.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = &self.bar {
                b.inc(1);
            }
        }
        if self.bar.is_none() {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(1) {
                *last = Instant::now();
                drop(last);
                self.line("progress");
            }
        }
    }

    fn retrying(&self, devices: usize, error: &idbridge_core::Error, delay: Duration) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{}: retrying {devices} in {delay:.1?} ({})",
                self.operation,
                error.kind()
            ));
        }
    }
}
