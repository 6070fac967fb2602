//! `idbridge provision` and `idbridge deprovision`, and what `diff`, `status` and `resume`
//! share with them: target arguments, the progress bar and report printing. The work itself is
//! the application layer's (`idbridge::app`).
//!
//! Exit codes: 0 every device done, 1 some device failed or was refused (invalid, unreadable),
//! 2 unusable input or configuration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use idbridge::app::report::ReportRow;
use idbridge::app::{
    self, Config, EngineOverrides, Inputs, Refused, Summary, TargetConfig, TargetRun,
};
use idbridge_core::DeviceIdentity;
use idbridge_core::engine::{DiffReport, DiffStatus, JobReport};
use idbridge_core::journal::{DeviceState, Operation, Outcome};

use super::input::InputArgs;
pub use super::progress::{CliProgress, PlanBar};

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

    /// Show what would be removed (looks devices up in the target) and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Remove without asking. Needed when stdin is not a terminal.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Also remove devices whose certificates do not verify (expired, revoked, unknown root).
    /// Without it only verified devices are removed.
    #[arg(long)]
    include_invalid: bool,

    /// Revoke the certificates (AWS IoT: status REVOKED, which can never be undone) instead of
    /// deactivating them. Needed as well when the target sets `revoke_on_deregister = true`.
    #[arg(long)]
    revoke: bool,

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

    /// Calls in flight at once, fixed. Without it the engine starts at 16 and, where a quota
    /// binds, grows as the cloud's latency needs (up to --max-concurrency).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,

    /// The most calls in flight the engine may grow to (default 256); with --concurrency, that
    /// is the start.
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,

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
    /// Also write the full report (every device: vendor ids, serial, cloud resource ids,
    /// outcome, error, request id, timestamps) to FILE: CSV for `.csv`, JSON Lines for
    /// `.jsonl`, else one JSON document.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Serve Prometheus metrics of this run (connector calls by API and result, devices by
    /// outcome) at http://ADDR/metrics while it runs, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Output on stdout: a table, CSV, one JSON document, or JSON Lines.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl OutputArgs {
    /// Whether an output prints the per-device report rows (CSV on stdout, or `--report`):
    /// only then are they built ([`print_report`] takes them for nothing else).
    pub fn wants_rows(&self) -> bool {
        self.output == Output::Csv || self.report.is_some()
    }

    /// Whether the job can run streamed, its report paged from the journal: outputs that
    /// print device by device (a table, JSON Lines) and no `--report` file.
    pub fn streams(&self) -> bool {
        !self.wants_rows() && matches!(self.output, Output::Table | Output::Jsonl)
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Summary and the devices that did not succeed.
    Table,
    /// One CSV line per device (vendor ids, serial, cloud resource ids, outcome, error).
    Csv,
    /// One JSON document.
    Json,
    /// One JSON object per device, then a summary line.
    Jsonl,
}

/// Runs `provision`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.target.config()?;
    if args.enqueue {
        let ctx = args.target.open_with(&config, None).await?;
        let streamed = stream_inputs(&args.input, &config, false)?;
        return enqueue_streamed(Operation::Provision, &ctx, streamed).await;
    }
    if !args.dry_run && args.out.streams() {
        let ctx = args.target.open_lean(&config, None).await?;
        let streamed = stream_inputs(&args.input, &config, false)?;
        return execute_streamed(Operation::Provision, &ctx, streamed, &args.out).await;
    }
    let ctx = args.target.open_with(&config, None).await?;
    let inputs = read_inputs(&args.input, &config, false).await?;
    if args.dry_run {
        let bar = PlanBar::new("dry run", inputs.devices.len() as u64);
        let report = ctx.diff_with_progress(&inputs.devices, bar.hook()).await?;
        bar.done();
        super::diff::print(&report, &inputs, args.out.output, "would create")?;
        if let Some(path) = &args.out.report {
            write_json(
                path,
                &serde_json::json!({"dry_run": true, "plan": report, "refused": inputs.refused}),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    execute(Operation::Provision, &ctx, inputs, &args.out).await
}

/// Runs `deprovision`: only devices whose certificates verify, unless `--include-invalid`
/// (a revoked or expired device must stay removable); `--dry-run` shows what would be
/// removed; a person at a terminal confirms the list, anything else needs `--yes`; a target
/// that revokes (AWS `revoke_on_deregister`, permanent) needs `--revoke` as well.
pub async fn run_deprovision(args: DeprovisionArgs) -> anyhow::Result<ExitCode> {
    let config = args.target.config()?;
    let mut target = config.target(&args.target.target)?;
    let revokes = app::targets::deprovision_revokes(&mut target, args.revoke)?;
    if !args.dry_run && args.yes && args.out.streams() {
        let ctx = args.target.open_lean(&config, Some(target)).await?;
        let streamed = stream_inputs(&args.input, &config, args.include_invalid)?;
        return execute_streamed(Operation::Deprovision, &ctx, streamed, &args.out).await;
    }
    let ctx = args.target.open_with(&config, Some(target)).await?;
    let inputs = read_inputs(&args.input, &config, args.include_invalid).await?;
    if args.dry_run {
        let bar = PlanBar::new("dry run", inputs.devices.len() as u64);
        let report = ctx.diff_with_progress(&inputs.devices, bar.hook()).await?;
        bar.done();
        print_removal_plan(&report, &inputs, &ctx.target, revokes, &args.out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !inputs.devices.is_empty() && !args.yes {
        let stdin = std::io::stdin();
        anyhow::ensure!(
            stdin.is_terminal(),
            "deprovision refused: {} devices would be removed from target {:?} and stdin is not a \
             terminal, so nobody can confirm; check them with --dry-run, then pass --yes",
            inputs.devices.len(),
            ctx.target.name
        );
        if !confirm(&inputs, &ctx.target, revokes)? {
            eprintln!("idbridge: nothing removed");
            return Ok(ExitCode::from(1));
        }
    }
    execute(Operation::Deprovision, &ctx, inputs, &args.out).await
}

async fn execute(
    operation: Operation,
    ctx: &TargetRun,
    mut inputs: Inputs,
    out: &OutputArgs,
) -> anyhow::Result<ExitCode> {
    if inputs.devices.is_empty() {
        eprintln!(
            "idbridge: no device to {operation} ({} refused, {} skipped)",
            inputs.refused.len(),
            inputs.skipped
        );
        let rows = app::report::rows(None, &[], &inputs.refused, &Default::default());
        print_report(None, &inputs.refused, &rows, out)?;
        return Ok(if inputs.refused.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    super::progress::catch_interrupt();
    out.serve_metrics().await?;
    let progress = CliProgress::new(operation);
    // The identities stay for the per-device rows only when an output prints them; otherwise
    // the engine takes them and drops each once its device is done.
    let wants_rows = out.wants_rows();
    let devices = if wants_rows {
        inputs.devices.clone()
    } else {
        std::mem::take(&mut inputs.devices)
    };
    let report = ctx.run_job(operation, devices, &progress).await?;
    progress.done();
    let interrupted = progress.interrupted();
    let rows = if wants_rows {
        report_rows(
            ctx.engine.journal().as_ref(),
            Some(&report),
            &inputs.devices,
            &inputs.refused,
            &progress.finished_at(),
        )
        .await?
    } else {
        Vec::new()
    };
    print_report(Some(&report), &inputs.refused, &rows, out)?;
    Ok(interrupted.unwrap_or_else(|| exit_code(&report, &inputs.refused)))
}

/// Runs a job whose devices stream from the inputs into the journal and from the journal to
/// the target (`TargetRun::run_job_streamed`); the report is paged from the journal. Memory
/// does not grow with the job.
async fn execute_streamed(
    operation: Operation,
    ctx: &TargetRun,
    streamed: app::StreamedInputs,
    out: &OutputArgs,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    let app::StreamedInputs { mut chunks, tally } = streamed;
    let first = chunks.next().await;
    let first = match first {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tally.await??;
            return Err(e.into());
        }
        None => {
            let t = tally.await??;
            let inputs = Inputs {
                devices: Vec::new(),
                refused: t.refused,
                skipped: t.skipped,
            };
            return execute(operation, ctx, inputs, out).await;
        }
    };
    super::progress::catch_interrupt();
    out.serve_metrics().await?;
    let progress = CliProgress::lean(operation);
    let chunks = futures::stream::iter([Ok(first)]).chain(chunks).boxed();
    let report = ctx.run_job_streamed(operation, chunks, &progress).await;
    // An unusable input ends the chunks with an error; the tally says it best.
    let tally = tally.await??;
    let report = report?;
    progress.done();
    let interrupted = progress.interrupted();
    print_report_paged(ctx.engine.journal().as_ref(), &report, &tally.refused, out).await?;
    Ok(interrupted.unwrap_or_else(|| exit_code(&report, &tally.refused)))
}

/// `--enqueue`: the job recorded in the journal as its devices stream in, not run.
async fn enqueue_streamed(
    operation: Operation,
    ctx: &TargetRun,
    streamed: app::StreamedInputs,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    let app::StreamedInputs { mut chunks, tally } = streamed;
    let Some(first) = chunks.next().await else {
        let t = tally.await??;
        eprintln!(
            "idbridge: no device to {operation} ({} refused, {} skipped)",
            t.refused.len(),
            t.skipped
        );
        return Ok(if t.refused.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    };
    let chunks = futures::stream::iter([first]).chain(chunks).boxed();
    let opened = ctx.enqueue_streamed(operation, chunks).await;
    let tally = tally.await??;
    let opened = opened?;
    eprintln!(
        "idbridge: job {} queued for workers ({} devices, {} refused)",
        opened.id,
        tally.devices,
        tally.refused.len()
    );
    println!("{}", opened.id);
    Ok(ExitCode::SUCCESS)
}

/// [`print_report`] for a report without its device records (table or JSON Lines): they are
/// read from the journal a page at a time.
pub async fn print_report_paged(
    journal: &dyn idbridge_core::journal::Journal,
    report: &JobReport,
    refused: &[Refused],
    out: &OutputArgs,
) -> anyhow::Result<()> {
    const PAGE: usize = 4096;
    let mut s = Summary::of(Some(report), refused);
    let mut after = None;
    let mut shown = 0usize;
    loop {
        let page = journal.devices_page(&report.job_id, after, PAGE).await?;
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        for d in &page {
            match d.outcome {
                Some(Outcome::Created) => s.created += 1,
                Some(Outcome::AlreadyPresent) => s.already_present += 1,
                Some(Outcome::Deleted) => s.deleted += 1,
                Some(Outcome::NotFound) => s.not_found += 1,
                _ => {}
            }
            match out.output {
                Output::Jsonl => {
                    serde_json::to_writer(&mut w, d)?;
                    writeln!(w)?;
                }
                _ if d.state != DeviceState::Done => {
                    if shown == 0 {
                        writeln!(
                            w,
                            "{:<14} {:<10} {:<30} REASON",
                            "DEVICE", "STATE", "SOURCE"
                        )?;
                    }
                    shown += 1;
                    writeln!(
                        w,
                        "{:<14} {:<10} {:<30} {}",
                        d.device_id.short(),
                        d.state.as_str(),
                        d.source,
                        d.reason.as_deref().unwrap_or("")
                    )?;
                }
                _ => {}
            }
        }
        if page.len() < PAGE {
            break;
        }
        after = page.last().map(|d| d.seq);
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    for x in refused {
        if out.output == Output::Jsonl {
            serde_json::to_writer(&mut w, x)?;
        } else {
            write!(
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
        writeln!(w)?;
    }
    if out.output == Output::Jsonl {
        serde_json::to_writer(&mut w, &s)?;
        writeln!(w)?;
    } else {
        summary_line(&mut w, report, &s, refused.len())?;
    }
    Ok(())
}

/// The table output's last line: the job and what became of its devices.
fn summary_line(
    w: &mut impl Write,
    r: &JobReport,
    s: &Summary,
    refused: usize,
) -> std::io::Result<()> {
    writeln!(
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
        refused,
        r.aborted
            .as_deref()
            .map(|a| format!("; stopped: {a}"))
            .unwrap_or_default()
    )
}

/// Asks the person at the terminal to confirm the removal, showing what will be removed.
fn confirm(inputs: &Inputs, target: &TargetConfig, revokes: bool) -> anyhow::Result<bool> {
    const SHOWN: usize = 20;
    let mut e = std::io::stderr().lock();
    writeln!(
        e,
        "About to remove {} devices from target {:?} (kind {}){}:",
        inputs.devices.len(),
        target.name,
        target.kind,
        if revokes {
            "; their certificates will be REVOKED, which AWS IoT never undoes"
        } else {
            ""
        }
    )?;
    for d in inputs.devices.iter().take(SHOWN) {
        writeln!(
            e,
            "  {:<14} {:<40} {}",
            d.device_id.short(),
            app::report::vendor_ids(&d.vendor),
            d.source
        )?;
    }
    if inputs.devices.len() > SHOWN {
        writeln!(e, "  ... and {} more", inputs.devices.len() - SHOWN)?;
    }
    write!(e, "Type `yes` to remove them: ")?;
    e.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "yes" | "y" | "YES"))
}

/// What a deprovision would remove: the devices the target holds; the others are absent.
fn print_removal_plan(
    plan: &DiffReport,
    inputs: &Inputs,
    target: &TargetConfig,
    revokes: bool,
    out: &OutputArgs,
) -> anyhow::Result<()> {
    let held = |s: &DiffStatus| matches!(s, DiffStatus::Identical | DiffStatus::Different);
    let entries = || {
        plan.entries
            .iter()
            .filter(|e| e.status != DiffStatus::Extra)
    };
    let would_remove = entries().filter(|e| held(&e.status)).count();
    let absent = entries()
        .filter(|e| e.status == DiffStatus::Missing)
        .count();
    let doc = serde_json::json!({
        "dry_run": true,
        "operation": "deprovision",
        "target": target.name,
        "revoke": revokes,
        "would_remove": entries().filter(|e| held(&e.status)).collect::<Vec<_>>(),
        "not_in_target": entries().filter(|e| e.status == DiffStatus::Missing).collect::<Vec<_>>(),
        "lookup_errors": entries().filter(|e| e.status == DiffStatus::Error).collect::<Vec<_>>(),
        "refused": inputs.refused,
    });
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match out.output {
        Output::Json | Output::Jsonl => {
            serde_json::to_writer(&mut w, &doc)?;
            writeln!(w)?;
        }
        Output::Table | Output::Csv => {
            for e in entries() {
                let what = match &e.status {
                    s if held(s) => "would remove",
                    DiffStatus::Missing => "not in target",
                    _ => "lookup error",
                };
                writeln!(
                    w,
                    "{:<14} {:<13} {:<30} {}",
                    e.device_id.as_ref().map_or("-", |d| d.short()),
                    what,
                    e.source.as_deref().unwrap_or(""),
                    e.details.join("; ")
                )?;
            }
            for r in &inputs.refused {
                writeln!(
                    w,
                    "{:<14} {:<13} {:<30} {}",
                    r.device_id
                        .as_deref()
                        .map_or("-", |d| &d[..12.min(d.len())]),
                    r.status,
                    r.source,
                    r.reason
                )?;
            }
            writeln!(
                w,
                "{would_remove} would remove{}, {absent} not in the target, {} lookup errors, {} refused",
                if revokes { " (REVOKED)" } else { "" },
                plan.errors,
                inputs.refused.len()
            )?;
        }
    }
    if let Some(path) = &out.report {
        write_json(path, &doc)?;
    }
    Ok(())
}

impl OutputArgs {
    /// Starts the `--metrics-listen` endpoint, if asked for; it lives as long as the process.
    pub async fn serve_metrics(&self) -> anyhow::Result<()> {
        let Some(addr) = self.metrics_listen else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
        let bound = listener.local_addr()?;
        eprintln!("idbridge: metrics at http://{bound}/metrics");
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    app::metrics::global().render(),
                )
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(%e, "the metrics endpoint stopped");
            }
        });
        Ok(())
    }
}

impl TargetArgs {
    /// The engine settings these flags give on top of the target's table.
    pub fn overrides(&self) -> EngineOverrides {
        EngineOverrides {
            concurrency: self.concurrency,
            max_concurrency: self.max_concurrency,
            rate: self.rate,
            batch_size: self.batch_size,
            timeout: self.timeout,
            report_devices: None,
        }
    }

    /// Loads the config file these flags name (or the default one).
    pub fn config(&self) -> anyhow::Result<Config> {
        Config::load(self.config.as_deref())
    }

    /// As [`TargetArgs::open_with`], for a streamed run: reports carry counts only.
    pub async fn open_lean(
        &self,
        config: &Config,
        target: Option<TargetConfig>,
    ) -> anyhow::Result<TargetRun> {
        let target = match target {
            Some(t) => t,
            None => config.target(&self.target)?,
        };
        let url = app::journal_url(self.journal.as_deref(), config);
        let journal = app::open_journal(&url)?;
        let overrides = EngineOverrides {
            report_devices: Some(false),
            ..self.overrides()
        };
        TargetRun::with_journal(config, target, journal, url, &overrides).await
    }

    /// Builds the target (`target`, else the config's table of `--target`) over the journal.
    pub async fn open_with(
        &self,
        config: &Config,
        target: Option<TargetConfig>,
    ) -> anyhow::Result<TargetRun> {
        let target = match target {
            Some(t) => t,
            None => config.target(&self.target)?,
        };
        let url = app::journal_url(self.journal.as_deref(), config);
        let journal = app::open_journal(&url)?;
        TargetRun::with_journal(config, target, journal, url, &self.overrides()).await
    }
}

/// Reads and verifies the inputs (see [`app::read_inputs`]), judged with the config's
/// `[trust]` table under the flags.
pub async fn read_inputs(
    input: &InputArgs,
    config: &Config,
    any_verdict: bool,
) -> anyhow::Result<Inputs> {
    app::read_inputs(
        input.inputs.clone(),
        input.intake_options_with(&config.trust)?,
        any_verdict,
    )
    .await
}

/// Reads and verifies the inputs as they are consumed (see [`app::stream_inputs`]).
pub fn stream_inputs(
    input: &InputArgs,
    config: &Config,
    any_verdict: bool,
) -> anyhow::Result<app::StreamedInputs> {
    Ok(app::stream_inputs(
        input.inputs.clone(),
        input.intake_options_with(&config.trust)?,
        any_verdict,
        STREAM_CHUNK,
    ))
}

/// Devices per journal transaction when a job is opened from a stream.
const STREAM_CHUNK: usize = 4096;

/// 0 all done, 1 otherwise.
pub fn exit_code(report: &JobReport, refused: &[Refused]) -> ExitCode {
    if Summary::all_done(report, refused) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The report rows of a run: the job's records joined with `identities` (vendor ids) and the
/// job's timestamps from `journal`, then the refused entries.
pub async fn report_rows(
    journal: &dyn idbridge_core::journal::Journal,
    report: Option<&JobReport>,
    identities: &[DeviceIdentity],
    refused: &[Refused],
    finished_at: &std::collections::HashMap<String, String>,
) -> anyhow::Result<Vec<ReportRow>> {
    let info = match report {
        Some(r) => journal.job(&r.job_id).await?,
        None => None,
    };
    let job = info.as_ref().zip(report.map(|r| &r.devices[..]));
    Ok(app::report::rows(job, identities, refused, finished_at))
}

/// Prints the report on stdout in the chosen format and writes `--report` (CSV, JSON or JSON
/// Lines by its extension).
pub fn print_report(
    report: Option<&JobReport>,
    refused: &[Refused],
    rows: &[ReportRow],
    out: &OutputArgs,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match out.output {
        Output::Csv => app::report::write_csv(&mut w, rows)?,
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
                Some(r) => summary_line(&mut w, r, &s, refused.len())?,
                None => writeln!(w, "nothing sent; {} refused", refused.len())?,
            }
        }
    }
    if let Some(path) = &out.report {
        app::report::write_file(
            path,
            rows,
            &Summary::of(report, refused),
            serde_json::json!({"job": report, "refused": refused}),
        )?;
    }
    Ok(())
}

/// Writes JSON to a file, naming it on error.
pub fn write_json(path: &std::path::Path, v: &serde_json::Value) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(v)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
