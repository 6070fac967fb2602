//! `idbridge status [JOB]` and `idbridge resume JOB`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use idbridge::app::{self, Config, EngineOverrides, TargetRun};
use idbridge_core::journal::JobState;
use idbridge_core::trust::Verifier;

use super::input::TrustArgs;
use super::provision::{CliProgress, Output, OutputArgs, exit_code, print_report, report_rows};

/// Device records per journal read of `status JOB`.
const PAGE: usize = 10_000;

/// Arguments of `idbridge status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A job id: show its devices. Without: list the jobs.
    #[arg(value_name = "JOB")]
    job: Option<String>,

    #[command(flatten)]
    journal: JournalArgs,

    /// Output: a table, one JSON document, or JSON Lines.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Arguments of `idbridge resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The job to finish.
    #[arg(value_name = "JOB")]
    job: String,

    #[command(flatten)]
    journal: JournalArgs,

    /// Calls in flight at once.
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,

    /// Devices per second for the whole target.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,

    /// How the stored certificates are judged again (with the config's `[trust]` table).
    #[command(flatten)]
    trust: TrustArgs,

    #[command(flatten)]
    out: OutputArgs,
}

/// Where the journal is.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalArgs {
    /// The config file (default: ./idbridge.toml when present).
    #[arg(long, env = "IDBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// The journal: sqlite:PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "IDBRIDGE_JOURNAL", value_name = "URL")]
    journal: Option<String>,
}

impl JournalArgs {
    fn url(&self, config: &Config) -> String {
        app::journal_url(self.journal.as_deref(), config)
    }
}

/// Runs `status`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.journal.config.as_deref())?;
    let url = args.journal.url(&config);
    let journal = app::open_journal(&url)?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match &args.job {
        None => {
            let jobs = journal.jobs().await?;
            match args.output {
                Output::Json => {
                    serde_json::to_writer_pretty(&mut w, &jobs)?;
                    writeln!(w)?;
                }
                Output::Jsonl => {
                    for j in &jobs {
                        serde_json::to_writer(&mut w, j)?;
                        writeln!(w)?;
                    }
                }
                Output::Csv => {
                    let mut csv = csv::Writer::from_writer(&mut w);
                    csv.write_record([
                        "job_id",
                        "operation",
                        "target",
                        "state",
                        "devices",
                        "done",
                        "failed",
                        "open",
                        "created",
                        "updated",
                    ])?;
                    for j in &jobs {
                        let c = j.counts;
                        csv.write_record([
                            j.id.clone(),
                            j.spec.operation.as_str().to_owned(),
                            j.spec.target.clone(),
                            j.state.as_str().to_owned(),
                            c.total().to_string(),
                            c.done.to_string(),
                            c.failed.to_string(),
                            (c.pending + c.in_flight + c.unknown).to_string(),
                            j.created.clone(),
                            j.updated.clone(),
                        ])?;
                    }
                    csv.flush()?;
                }
                Output::Table => {
                    writeln!(
                        w,
                        "{:<21} {:<12} {:<16} {:<9} {:>8} {:>8} {:>8} {:>8}  CREATED",
                        "JOB", "OPERATION", "TARGET", "STATE", "DEVICES", "DONE", "FAILED", "OPEN"
                    )?;
                    for j in &jobs {
                        let c = j.counts;
                        writeln!(
                            w,
                            "{:<21} {:<12} {:<16} {:<9} {:>8} {:>8} {:>8} {:>8}  {}",
                            j.id,
                            j.spec.operation.as_str(),
                            j.spec.target,
                            j.state.as_str(),
                            c.total(),
                            c.done,
                            c.failed,
                            c.pending + c.in_flight + c.unknown,
                            j.created
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(id) => {
            let Some(info) = journal.job(id).await? else {
                anyhow::bail!("no job {id} in the journal {url}");
            };
            // Every format but JSON (one document) streams the job a page at a time.
            let page = |after: Option<u64>| journal.devices_page(id, after, PAGE);
            match args.output {
                Output::Csv => {
                    let mut csv = csv::Writer::from_writer(&mut w);
                    let mut after = None;
                    let mut rows = 0usize;
                    loop {
                        let devices = page(after).await?;
                        let Some(last) = devices.last() else { break };
                        // Certificates share the devices' positions: the same page of both.
                        let identities: Vec<_> = journal
                            .identities_page(id, after, PAGE)
                            .await?
                            .into_iter()
                            .map(|(_, d)| d)
                            .collect();
                        after = Some(last.seq);
                        for row in app::report::rows(
                            Some((&info, &devices)),
                            &identities,
                            &[],
                            &Default::default(),
                        ) {
                            csv.serialize(row)?;
                            rows += 1;
                        }
                    }
                    csv.flush()?;
                    drop(csv);
                    if rows == 0 {
                        app::report::write_csv(&mut w, &[])?;
                    }
                }
                Output::Json => {
                    let devices = journal.devices(id).await?;
                    serde_json::to_writer_pretty(
                        &mut w,
                        &serde_json::json!({"job": info, "devices": devices}),
                    )?;
                    writeln!(w)?;
                }
                Output::Jsonl => {
                    let mut after = None;
                    loop {
                        let devices = page(after).await?;
                        let Some(last) = devices.last() else { break };
                        after = Some(last.seq);
                        for d in &devices {
                            serde_json::to_writer(&mut w, d)?;
                            writeln!(w)?;
                        }
                    }
                    serde_json::to_writer(&mut w, &info)?;
                    writeln!(w)?;
                }
                Output::Table => {
                    writeln!(
                        w,
                        "{:<14} {:<10} {:<16} {:>3} {:<30} REASON",
                        "DEVICE", "STATE", "OUTCOME", "TRY", "SOURCE"
                    )?;
                    let mut after = None;
                    loop {
                        let devices = page(after).await?;
                        let Some(last) = devices.last() else { break };
                        after = Some(last.seq);
                        for d in &devices {
                            writeln!(
                                w,
                                "{:<14} {:<10} {:<16} {:>3} {:<30} {}",
                                d.device_id.short(),
                                d.state.as_str(),
                                d.outcome.map_or("", |o| o.as_str()),
                                d.attempts,
                                d.source,
                                d.reason.as_deref().unwrap_or("")
                            )?;
                        }
                    }
                    let c = info.counts;
                    writeln!(
                        w,
                        "job {} ({} to {}): {}; {} devices, {} done, {} failed, {} pending, {} in flight, {} unknown",
                        info.id,
                        info.spec.operation,
                        info.spec.target,
                        info.state.as_str(),
                        c.total(),
                        c.done,
                        c.failed,
                        c.pending,
                        c.in_flight,
                        c.unknown
                    )?;
                }
            }
            Ok(
                if info.state == JobState::Finished && info.counts.done == info.counts.total() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            )
        }
    }
}

/// Runs `resume`: rebuilds the job's target from the config of this command line (`--config`,
/// else the default one; never a path stored in the journal), secrets from the environment
/// again, and finishes the job with the certificates stored in the journal, each verified again
/// against the trust store of this command line (`[trust]` and the trust flags).
pub async fn run_resume(args: ResumeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.journal.config.as_deref())?;
    let url = args.journal.url(&config);
    let journal = app::open_journal(&url)?;
    let Some(info) = journal.job(&args.job).await? else {
        anyhow::bail!("no job {} in the journal {url}", args.job);
    };
    let target = config.target(&info.spec.target).map_err(|e| {
        // The path the job ran with is a hint for the operator, never loaded from here.
        match info.spec.params.get("config").and_then(|v| v.as_str()) {
            Some(ran_with) => e.context(format!(
                "job {} ran with --config {ran_with}; resume reads the config named on its \
                 command line: pass --config",
                info.id
            )),
            None => e,
        }
    })?;
    let verifier = std::sync::Arc::new(
        Verifier::from_options(&args.trust.options_with(&config.trust)?)
            .context("cannot load the trust store")?,
    );
    let lean = args.out.streams();
    let overrides = EngineOverrides {
        concurrency: args.concurrency,
        rate: args.rate,
        report_devices: Some(!lean),
        ..EngineOverrides::default()
    };
    let ctx = TargetRun::with_journal(&config, target, journal, url, &overrides).await?;
    super::progress::catch_interrupt();
    args.out.serve_metrics().await?;
    let progress = if lean {
        CliProgress::lean(info.spec.operation)
    } else {
        CliProgress::new(info.spec.operation)
    };
    let report = ctx.resume_job(&info.id, &verifier, &progress).await?;
    progress.done();
    let interrupted = progress.interrupted();
    let journal = ctx.engine.journal();
    if lean {
        super::provision::print_report_paged(journal.as_ref(), &report, &[], &args.out).await?;
        return Ok(interrupted.unwrap_or_else(|| exit_code(&report, &[])));
    }
    let rows = if args.out.wants_rows() {
        let identities = journal.identities(&info.id).await?;
        report_rows(
            journal.as_ref(),
            Some(&report),
            &identities,
            &[],
            &progress.finished_at(),
        )
        .await?
    } else {
        Vec::new()
    };
    print_report(Some(&report), &[], &rows, &args.out)?;
    Ok(interrupted.unwrap_or_else(|| exit_code(&report, &[])))
}
