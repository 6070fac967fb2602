//! `idbridge inspect`: import vendor batch files, verify every certificate, print one row per
//! device and a summary. Exit 0 when every device is valid, 1 when some are not, 2 when an
//! input is unusable or the call is wrong.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use idbridge_core::identity::{DeviceIdentity, Source, VendorAttributes};
use idbridge_core::intake::{Checked, RejectKind, Rejected, Verdict};
use serde::Serialize;

use super::input::InputArgs;

/// Arguments of `idbridge inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: InputArgs,

    /// Output: a table, one JSON document, or JSON Lines (one device per line, then a summary).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// The config file, for its `[trust]` table (default: ./idbridge.toml when present, else
    /// the XDG one).
    #[arg(long, env = "IDBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
    Jsonl,
}

/// One output row.
#[derive(Debug, Serialize)]
struct Row<'a> {
    device_id: Option<&'a str>,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anchor: Option<&'a str>,
    vendor: &'a VendorAttributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha1_thumbprint: Option<&'a str>,
    source: &'a Source,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    devices: u64,
    valid: u64,
    invalid: u64,
    not_provisionable: u64,
    unreadable: u64,
    inputs_unusable: u64,
    skipped: u64,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Verification is CPU-bound and synchronous: keep it off the async workers.
    tokio::task::spawn_blocking(move || inspect(&args)).await?
}

fn inspect(args: &Args) -> anyhow::Result<ExitCode> {
    let config = idbridge::app::Config::load(args.config.as_deref())?;
    let intake = idbridge_core::intake::Intake::open(
        &args.input.inputs,
        &args.input.intake_options_with(&config.trust)?,
    )?;
    for note in intake.notes() {
        eprintln!("note: {note}");
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut summary = Summary::default();
    let mut first = true;
    if args.output == Output::Json {
        write!(out, "{{\"devices\":[")?;
    }
    if args.output == Output::Table {
        writeln!(
            out,
            "{:<12}  {:<28}  {:<34}  {:<20}  {:<10}  {:<8}  {:<17}  REASON",
            "DEVICE_ID", "VENDOR_IDS", "ISSUER", "SERIAL", "NOT_AFTER", "KEY", "STATUS"
        )?;
    }
    // A spinner counting devices when the rows go to a file or a pipe and stderr is a
    // terminal (on a terminal the rows themselves show progress).
    let bar = (!std::io::stdout().is_terminal() && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} inspect: {pos} devices {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    });
    for item in intake {
        if let Some(b) = &bar {
            b.inc(1);
        }
        let row_owned;
        let row = match &item {
            Ok(checked) => {
                summary.devices += 1;
                match checked.verdict {
                    Verdict::Valid { .. } => summary.valid += 1,
                    Verdict::NotProvisionable { .. } => summary.not_provisionable += 1,
                    _ => summary.invalid += 1,
                }
                row_owned = device_row(checked);
                &row_owned
            }
            Err(rejected) => {
                match rejected.kind {
                    RejectKind::Skipped => {
                        summary.skipped += 1;
                        eprintln!("warning: {}: {}", rejected.source, rejected.reason);
                        continue;
                    }
                    RejectKind::NotProvisionable => {
                        summary.devices += 1;
                        summary.not_provisionable += 1;
                    }
                    RejectKind::Invalid => {
                        summary.devices += 1;
                        summary.invalid += 1;
                    }
                    RejectKind::InputUnusable => {
                        summary.inputs_unusable += 1;
                        eprintln!("error: {}: {}", rejected.source, rejected.reason);
                    }
                    _ => {
                        summary.unreadable += 1;
                        eprintln!("error: {}: {}", rejected.source, rejected.reason);
                    }
                }
                row_owned = rejected_row(rejected);
                &row_owned
            }
        };
        match args.output {
            Output::Table => write_table_row(&mut out, row)?,
            Output::Jsonl => {
                serde_json::to_writer(&mut out, row)?;
                writeln!(out)?;
            }
            Output::Json => {
                if !first {
                    write!(out, ",")?;
                }
                serde_json::to_writer(&mut out, row)?;
            }
        }
        first = false;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match args.output {
        Output::Table => writeln!(
            out,
            "{} devices: {} valid, {} invalid, {} not provisionable; {} unreadable entries, {} unusable inputs, {} skipped",
            summary.devices,
            summary.valid,
            summary.invalid,
            summary.not_provisionable,
            summary.unreadable,
            summary.inputs_unusable,
            summary.skipped
        )?,
        Output::Jsonl => {
            serde_json::to_writer(&mut out, &serde_json::json!({ "summary": &summary }))?;
            writeln!(out)?;
        }
        Output::Json => {
            write!(out, "],\"summary\":")?;
            serde_json::to_writer(&mut out, &summary)?;
            writeln!(out, "}}")?;
        }
    }
    out.flush()?;
    Ok(exit_code(&summary))
}

fn exit_code(s: &Summary) -> ExitCode {
    if s.inputs_unusable > 0 {
        ExitCode::from(2)
    } else if s.invalid + s.not_provisionable + s.unreadable > 0 || s.valid == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn device_row(c: &Checked) -> Row<'_> {
    let id: &DeviceIdentity = &c.identity;
    let anchor = match &c.verdict {
        Verdict::Valid { anchor } => Some(anchor.as_str()),
        _ => None,
    };
    Row {
        device_id: Some(id.device_id.as_str()),
        status: c.verdict.status(),
        reason: c.verdict.reason(),
        anchor,
        vendor: &id.vendor,
        batch: id.batch.as_ref().map(|b| b.tag()),
        issuer: Some(&id.issuer),
        subject: Some(&id.subject),
        serial: Some(&id.serial_hex),
        not_before: Some(rfc3339(id.not_before)),
        not_after: Some(rfc3339(id.not_after)),
        key: Some(id.key.to_string()),
        sha1_thumbprint: Some(&id.sha1_thumbprint),
        source: &id.source,
        warnings: &c.warnings,
    }
}

fn rejected_row(r: &Rejected) -> Row<'_> {
    Row {
        device_id: None,
        status: r.kind.as_str(),
        reason: Some(&r.reason),
        anchor: None,
        vendor: &r.vendor,
        batch: None,
        issuer: None,
        subject: None,
        serial: None,
        not_before: None,
        not_after: None,
        key: None,
        sha1_thumbprint: None,
        source: &r.source,
        warnings: &[],
    }
}

fn write_table_row(out: &mut impl Write, row: &Row<'_>) -> std::io::Result<()> {
    let v = row.vendor;
    let ids: Vec<String> = [
        v.chip_id.as_ref().map(|c| format!("chip {c}")),
        v.slot.clone(),
        v.unique_id.as_ref().map(|u| format!("uid {u}")),
        v.mac.as_ref().map(|m| format!("mac {m}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let ids = if ids.is_empty() {
        "-".to_owned()
    } else {
        ids.join(" ")
    };
    let issuer = row
        .issuer
        .map(|i| {
            i.split(", ")
                .find_map(|p| p.strip_prefix("CN="))
                .unwrap_or(i)
                .to_owned()
        })
        .unwrap_or_else(|| "-".to_owned());
    let not_after = row
        .not_after
        .as_deref()
        .map(|d| d.get(..10).unwrap_or(d).to_owned())
        .unwrap_or_else(|| "-".to_owned());
    let reason = match row.reason {
        Some(r) => format!("{r} [{}]", row.source),
        None => format!("[{}]", row.source),
    };
    writeln!(
        out,
        "{:<12}  {:<28}  {:<34}  {:<20}  {:<10}  {:<8}  {:<17}  {}",
        row.device_id.map(|d| &d[..12.min(d.len())]).unwrap_or("-"),
        ids,
        issuer,
        row.serial.unwrap_or("-"),
        not_after,
        row.key.as_deref().unwrap_or("-"),
        row.status,
        reason
    )
}

fn rfc3339(t: time_like::OffsetDateTime) -> String {
    t.format(&time_like::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The `time` types, through the identity's field types (the binary has no direct `time`
/// dependency).
mod time_like {
    pub use ::time::OffsetDateTime;
    pub use ::time::format_description::well_known::Rfc3339;
}
