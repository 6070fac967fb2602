//! A job's report: counts by outcome, as every front end shows them, and the per-device rows
//! of the CSV / JSON / JSON Lines reports (vendor ids beside the cloud's resource ids).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use idbridge_core::DeviceIdentity;
use idbridge_core::engine::JobReport;
use idbridge_core::identity::VendorAttributes;
use idbridge_core::journal::{DeviceRecord, DeviceState, JobInfo, Outcome};
use serde::Serialize;

use super::inputs::Refused;

/// Counts by outcome.
#[derive(Debug, Default, Clone, Serialize)]
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

impl Summary {
    /// The summary of a job's report (if one ran) and the refused entries.
    pub fn of(report: Option<&JobReport>, refused: &[Refused]) -> Summary {
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

    /// Whether every device of the job is done and nothing was refused (exit code 0).
    pub fn all_done(report: &JobReport, refused: &[Refused]) -> bool {
        report.all_done() && refused.is_empty()
    }
}

/// One device of a report, flat, as the CSV, JSON and JSON Lines reports and
/// `status JOB --output csv` write it: vendor ids beside the cloud's resource ids.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReportRow {
    /// The job, if one ran.
    pub job_id: String,
    /// `provision` or `deprovision`.
    pub operation: String,
    /// The target's name.
    pub target: String,
    /// SHA-256 of the certificate (hex), when the entry had one.
    pub device_id: String,
    /// `infineon`, `microchip`, `espressif`, or empty.
    pub vendor: String,
    /// Infineon chip id.
    pub chip_id: String,
    /// Infineon certificate slot (E0E0, E0E1, E0E2).
    pub slot: String,
    /// Microchip uniqueId.
    pub unique_id: String,
    /// Espressif MAC.
    pub mac: String,
    /// Certificate serial number (hex).
    pub serial: String,
    /// Where the device came from (`file:line`).
    pub source: String,
    /// Journal state (`done`, `failed`, `pending`, `unknown` ...), or the refusal status
    /// (`invalid`, `not_provisionable`, `unreadable` ...) of an entry never sent.
    pub state: String,
    /// `created`, `already_present`, `deleted`, `not_found`, or empty.
    pub outcome: String,
    /// The error kind of the last failure.
    pub error_kind: String,
    /// One line: why it failed, is unknown, or was refused.
    pub error: String,
    /// The cloud's request id of the last failure.
    pub request_id: String,
    /// Calls made for the device.
    pub attempts: u32,
    /// The name the cloud knows it by (AWS thing name, Azure device or registration id ...).
    pub cloud_name: String,
    /// AWS certificate ARN, when the target gave one.
    pub certificate_arn: String,
    /// Every resource id the target gave, `key=value` pairs joined by `;`.
    pub resources: String,
    /// When the job was created (RFC 3339).
    pub job_created: String,
    /// When the job was last changed (RFC 3339).
    pub job_updated: String,
    /// When the device's outcome was recorded in the journal (RFC 3339), if it finished.
    pub finished_at: String,
}

/// The vendor ids of a device in one short string (`chip 0123.. E0E0`, `uniqueId ..`,
/// `MAC ..`), for tables and prompts.
pub fn vendor_ids(v: &VendorAttributes) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &v.chip_id {
        parts.push(format!("chip {c}"));
    }
    if let Some(s) = &v.slot {
        parts.push(s.clone());
    }
    if let Some(u) = &v.unique_id {
        parts.push(format!("uniqueId {u}"));
    }
    if let Some(m) = &v.mac {
        parts.push(format!("MAC {m}"));
    }
    parts.join(" ")
}

/// The rows of a job: its device records joined with their identities (vendor ids, serial) by
/// device id, then the refused entries. A finished device's `finished_at` is when the journal
/// recorded its outcome; `seen` (device id to when this run saw it finish) stands in for a
/// journal written before it kept the time.
pub fn rows(
    job: Option<(&JobInfo, &[DeviceRecord])>,
    identities: &[DeviceIdentity],
    refused: &[Refused],
    seen: &HashMap<String, String>,
) -> Vec<ReportRow> {
    let by_id: HashMap<String, &DeviceIdentity> = identities
        .iter()
        .map(|d| (d.device_id.to_string(), d))
        .collect();
    let mut out = Vec::new();
    let (job_id, operation, target, created, updated) = match job {
        Some((info, _)) => (
            info.id.clone(),
            info.spec.operation.as_str().to_owned(),
            info.spec.target.clone(),
            info.created.clone(),
            info.updated.clone(),
        ),
        None => Default::default(),
    };
    let base = ReportRow {
        job_id,
        operation,
        target,
        job_created: created,
        job_updated: updated,
        ..Default::default()
    };
    for r in job.map_or(&[][..], |(_, r)| r) {
        let id = r.device_id.to_string();
        let mut row = ReportRow {
            device_id: id.clone(),
            source: r.source.clone(),
            state: r.state.as_str().to_owned(),
            outcome: r.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
            error_kind: r.error_kind.clone().unwrap_or_default(),
            error: r.reason.clone().unwrap_or_default(),
            request_id: r.request_id.clone().unwrap_or_default(),
            attempts: r.attempts,
            cloud_name: r.remote_name.clone().unwrap_or_default(),
            certificate_arn: r
                .resources
                .get("certificate_arn")
                .cloned()
                .unwrap_or_default(),
            resources: r
                .resources
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            finished_at: finished(r, seen.get(&id)),
            ..base.clone()
        };
        if let Some(d) = by_id.get(&id) {
            fill_identity(&mut row, d);
        }
        out.push(row);
    }
    for x in refused {
        let mut row = ReportRow {
            device_id: x.device_id.clone().unwrap_or_default(),
            source: x.source.clone(),
            state: x.status.to_owned(),
            error: x.reason.clone(),
            ..base.clone()
        };
        if let Some(d) = x.device_id.as_ref().and_then(|i| by_id.get(i)) {
            fill_identity(&mut row, d);
        }
        if let Some(v) = &x.vendor {
            fill_vendor(&mut row, v);
        }
        if let Some(s) = &x.serial {
            row.serial = s.clone();
        }
        out.push(row);
    }
    out
}

/// The report format a file name asks for: `.csv`, `.jsonl`, else JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportFormat {
    /// One header line, then one line per device.
    Csv,
    /// One JSON document.
    Json,
    /// One JSON object per device, then the summary.
    Jsonl,
}

impl ReportFormat {
    /// The format for `path`, by its extension (`.csv`, `.jsonl`, else JSON).
    pub fn of(path: &Path) -> ReportFormat {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
        {
            Some(e) if e == "csv" => ReportFormat::Csv,
            Some(e) if e == "jsonl" || e == "ndjson" => ReportFormat::Jsonl,
            _ => ReportFormat::Json,
        }
    }
}

/// Writes rows as CSV (a header line first).
pub fn write_csv(w: impl Write, rows: &[ReportRow]) -> anyhow::Result<()> {
    let mut w = w;
    if rows.is_empty() {
        // serde writes the header with the first record: take it from a default one.
        let mut header = csv::Writer::from_writer(Vec::new());
        header.serialize(ReportRow::default())?;
        let bytes = header.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        w.write_all(first)?;
        w.write_all(b"\n")?;
        return Ok(());
    }
    let mut csv = csv::Writer::from_writer(w);
    for r in rows {
        csv.serialize(r)?;
    }
    csv.flush()?;
    Ok(())
}

/// Writes a report to `path` in the format its extension asks for. `json` is the whole
/// document of the JSON format (the rows are added to it as `devices`).
pub fn write_file(
    path: &Path,
    rows: &[ReportRow],
    summary: &Summary,
    mut json: serde_json::Value,
) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot write the report {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    match ReportFormat::of(path) {
        ReportFormat::Csv => write_csv(&mut w, rows)?,
        ReportFormat::Jsonl => {
            for r in rows {
                serde_json::to_writer(&mut w, r)?;
                writeln!(w)?;
            }
            serde_json::to_writer(&mut w, &serde_json::json!({ "summary": summary }))?;
            writeln!(w)?;
        }
        ReportFormat::Json => {
            if let Some(o) = json.as_object_mut() {
                o.insert("devices".into(), serde_json::to_value(rows)?);
                o.insert("summary".into(), serde_json::to_value(summary)?);
            }
            serde_json::to_writer_pretty(&mut w, &json)?;
            writeln!(w)?;
        }
    }
    w.flush()
        .with_context(|| format!("cannot write the report {}", path.display()))
}

/// When `r` finished: the journal's time of its last change once it is done or failed.
fn finished(r: &DeviceRecord, seen: Option<&String>) -> String {
    match r.state {
        DeviceState::Done | DeviceState::Failed => r
            .updated
            .clone()
            .or_else(|| seen.cloned())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn fill_identity(row: &mut ReportRow, d: &DeviceIdentity) {
    row.serial = d.serial_hex.clone();
    fill_vendor(row, &d.vendor);
}

fn fill_vendor(row: &mut ReportRow, v: &VendorAttributes) {
    row.vendor = v.vendor.clone().unwrap_or_default();
    row.chip_id = v.chip_id.clone().unwrap_or_default();
    row.slot = v.slot.clone().unwrap_or_default();
    row.unique_id = v.unique_id.clone().unwrap_or_default();
    row.mac = v.mac.clone().unwrap_or_default();
}
