//! `idbridge diff`: the backfill plan — missing from the target, present and identical, present
//! but different, and (where the target can list) extra in it. Changes nothing. Exit 0 when
//! nothing is missing or different, 1 otherwise.

use std::io::Write;
use std::process::ExitCode;

use idbridge_core::engine::{DiffReport, DiffStatus};

use super::input::InputArgs;
use idbridge::app::Inputs;

use super::provision::{Output, OutputArgs, TargetArgs, read_inputs, write_json};

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
    let ctx = args.target.open().await?;
    let inputs = read_inputs(&args.input, false).await?;
    let report = ctx.diff(&inputs.devices).await?;
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
        Output::Table => {
            for e in &report.entries {
                let status = match e.status {
                    DiffStatus::Missing => missing_word,
                    DiffStatus::Identical => "identical",
                    DiffStatus::Different => "different",
                    DiffStatus::Extra => "extra",
                    DiffStatus::Error => "error",
                    _ => "other",
                };
                writeln!(
                    w,
                    "{:<14} {:<13} {:<30} {}",
                    e.device_id.as_ref().map_or("-", |d| d.short()),
                    status,
                    e.source
                        .as_deref()
                        .or(e.remote.as_ref().map(|r| r.name.as_str()))
                        .unwrap_or(""),
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
