//! A job's report summarised: counts by outcome, as every front end shows them.

use idbridge_core::engine::JobReport;
use idbridge_core::journal::Outcome;
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
