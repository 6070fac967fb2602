//! `idbridge diff`: the backfill plan — missing from the target, present and identical, present
//! but different, and (where the target can list) extra in it. Changes nothing. Exit 0 when
//! nothing is missing or different, 1 otherwise.

use std::io::Write;
use std::process::ExitCode;

use idbridge_core::engine::{DiffEntry, DiffReport, DiffStatus};

use super::input::InputArgs;
use idbridge::app::Inputs;

use super::provision::{
    Output, OutputArgs, PlanBar, TargetArgs, read_inputs, stream_inputs, write_json,
};

/// Arguments of `idbridge diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: InputArgs,

    #[command(flatten)]
    target: TargetArgs,

    #[command(flatten)]
    out: OutputArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.target.config()?;
    let ctx = args.target.open_with(&config, None).await?;
    if args.out.streams() {
        return run_streamed(&args, &config, &ctx).await;
    }
    let inputs = read_inputs(&args.input, &config, false).await?;
    let bar = PlanBar::new("diff", inputs.devices.len() as u64);
    let report = ctx.diff_with_progress(&inputs.devices, bar.hook()).await?;
    bar.done();
    print(&report, &inputs, args.out.output, "missing")?;
    if let Some(path) = &args.out.report {
        write_json(
            path,
            &serde_json::json!({"plan": report, "refused": inputs.refused}),
        )?;
    }
    Ok(
        if report.missing + report.different + report.errors == 0 && inputs.refused.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// The plan of a large input (a table or JSON Lines, no `--report` file): the devices stream
/// from the inputs through the lookups, each line printed as it is decided.
async fn run_streamed(
    args: &Args,
    config: &idbridge::app::Config,
    ctx: &idbridge::app::TargetRun,
) -> anyhow::Result<ExitCode> {
    let streamed = stream_inputs(&args.input, config, false)?;
    let output = args.out.output;
    let mut print_entry = |e: DiffEntry| -> idbridge_core::Result<()> {
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        let r = if output == Output::Jsonl {
            serde_json::to_writer(&mut w, &e)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(w))
        } else {
            write_entry(&mut w, &e, "missing")
        };
        r.map_err(|e| {
            idbridge_core::Error::new(idbridge_core::ErrorKind::Unexpected, "cannot write stdout")
                .with_source(e)
        })
    };
    let report = ctx.diff_streamed(streamed.chunks, &mut print_entry).await;
    let tally = streamed.tally.await??;
    let report = report?;
    let inputs = Inputs {
        devices: Vec::new(),
        refused: tally.refused,
        skipped: tally.skipped,
    };
    // The entries are printed: what is left is the refused entries and the counts.
    print(&report, &inputs, output, "missing")?;
    Ok(
        if report.missing + report.different + report.errors == 0 && inputs.refused.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// Prints a plan. `missing_word` names the missing devices ("missing", "would create").
pub fn print(
    report: &DiffReport,
    inputs: &Inputs,
    output: Output,
    missing_word: &str,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(
                &mut w,
                &serde_json::json!({"plan": report, "refused": inputs.refused}),
            )?;
            writeln!(w)?;
        }
        Output::Jsonl => {
            for e in &report.entries {
                serde_json::to_writer(&mut w, e)?;
                writeln!(w)?;
            }
            for r in &inputs.refused {
                serde_json::to_writer(&mut w, r)?;
                writeln!(w)?;
            }
            serde_json::to_writer(
                &mut w,
                &serde_json::json!({"missing": report.missing, "identical": report.identical,
                    "different": report.different, "extra": report.extra,
                    "errors": report.errors, "listed": report.listed,
                    "refused": inputs.refused.len()}),
            )?;
            writeln!(w)?;
        }
        Output::Csv => {
            let mut csv = csv::Writer::from_writer(&mut w);
            csv.write_record(["device_id", "status", "source", "cloud_name", "details"])?;
            for e in &report.entries {
                csv.write_record([
                    e.device_id
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    status_word(&e.status, missing_word).to_owned(),
                    e.source.clone().unwrap_or_default(),
                    e.remote
                        .as_ref()
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                    e.details.join("; "),
                ])?;
            }
            for r in &inputs.refused {
                csv.write_record([
                    r.device_id.clone().unwrap_or_default(),
                    r.status.to_owned(),
                    r.source.clone(),
                    String::new(),
                    r.reason.clone(),
                ])?;
            }
            csv.flush()?;
        }
        Output::Table => {
            for e in &report.entries {
                write_entry(&mut w, e, missing_word)?;
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
                "{} {missing_word}, {} identical, {} different, {}, {} lookup errors, {} refused",
                report.missing,
                report.identical,
                report.different,
                if report.listed {
                    format!("{} extra in the target", report.extra)
                } else {
                    "extras unknown (the target cannot list)".to_owned()
                },
                report.errors,
                inputs.refused.len()
            )?;
        }
    }
    Ok(())
}

/// One line of the plan's table.
fn write_entry(w: &mut impl Write, e: &DiffEntry, missing_word: &str) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<14} {:<13} {:<30} {}",
        e.device_id.as_ref().map_or("-", |d| d.short()),
        status_word(&e.status, missing_word),
        e.source
            .as_deref()
            .or(e.remote.as_ref().map(|r| r.name.as_str()))
            .unwrap_or(""),
        e.details.join("; ")
    )
}

fn status_word<'a>(status: &DiffStatus, missing_word: &'a str) -> &'a str {
    match status {
        DiffStatus::Missing => missing_word,
        DiffStatus::Identical => "identical",
        DiffStatus::Different => "different",
        DiffStatus::Extra => "extra",
        DiffStatus::Error => "error",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}
