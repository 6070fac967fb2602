//! `idbridge provision` and `idbridge deprovision`, and what `diff`, `status` and `resume`
//! share with them: target arguments, the progress bar and report printing. The work itself is
//! the application layer's (`idbridge::app`).
//!
//! Exit codes: 0 every device done, 1 some device failed or was refused (invalid, unreadable),
//! 2 unusable input or configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use idbridge::app::{self, Config, EngineOverrides, Inputs, Refused, Summary, TargetRun};
use idbridge_core::engine::{JobReport, Progress};
use idbridge_core::journal::{DeviceState, DeviceUpdate, Operation};

use super::input::InputArgs;

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

    /// The journal: sqlite:PATH (default: the config's `journal`, else
    /// sqlite:idbridge-journal.sqlite).
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

/// Runs `provision`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        let ctx = args.target.open().await?;
        let inputs = read_inputs(&args.input, false).await?;
        let report = ctx.diff(&inputs.devices).await?;
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
    )
    .await
}

async fn execute(
    operation: Operation,
    input: &InputArgs,
    target: &TargetArgs,
    out: &OutputArgs,
    any_verdict: bool,
) -> anyhow::Result<ExitCode> {
    let ctx = target.open().await?;
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
    let progress = CliProgress::new(operation);
    let report = ctx.run_job(operation, inputs.devices, &progress).await?;
    progress.done();
    print_report(Some(&report), &inputs.refused, out)?;
    Ok(exit_code(&report, &inputs.refused))
}

impl TargetArgs {
    /// The engine settings these flags give on top of the target's table.
    pub fn overrides(&self) -> EngineOverrides {
        EngineOverrides {
            concurrency: self.concurrency,
            rate: self.rate,
            batch_size: self.batch_size,
            timeout: self.timeout,
        }
    }

    /// Loads the config, builds the target's connector and engine, and opens the journal.
    pub async fn open(&self) -> anyhow::Result<TargetRun> {
        let config = Config::load(self.config.as_deref())?;
        TargetRun::open(
            &config,
            &self.target,
            self.journal.as_deref(),
            &self.overrides(),
        )
        .await
    }
}

/// Reads and verifies the inputs (see [`app::read_inputs`]).
pub async fn read_inputs(input: &InputArgs, any_verdict: bool) -> anyhow::Result<Inputs> {
    app::read_inputs(input.inputs.clone(), input.intake_options(), any_verdict).await
}

/// 0 all done, 1 otherwise.
pub fn exit_code(report: &JobReport, refused: &[Refused]) -> ExitCode {
    if Summary::all_done(report, refused) {
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
            serde_json::to_writer(&mut w, &Summary::of(report, refused))?;
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
            let s = Summary::of(report, refused);
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
            &serde_json::json!({"job": report, "refused": refused, "summary": Summary::of(report, refused)}),
        )?;
    }
    Ok(())
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
