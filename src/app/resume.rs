//! Resuming a job from the journal: every stored certificate of a provision job is verified
//! again against today's trust store before anything is sent. The trust store may have changed
//! since the job started (a CA removed from `[trust]`, a CRL that now lists a device), and the
//! journal is not an authority on trust: what it holds is judged like any input.
//!
//! A certificate that no longer verifies is never sent. Its device is recorded `failed` with
//! the reason; when a call for it may already have reached the target (`in_flight` or
//! `unknown`), it is looked up first, and the reason says whether the target holds it (then it
//! is for `deprovision --include-invalid` to remove). A deprovision job is not filtered:
//! removing a device admits nobody, and a revoked device is exactly what one removes.
//!
//! Every process that takes a job up from the journal goes through here: `idbridge resume`
//! ([`TargetRun::resume_job`]) and `idbridge worker` ([`run_verified`], the worker holding the
//! leases of its claim), each with its own trust configuration.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use idbridge_core::connector::ChunkedCheck;
use idbridge_core::engine::{JobReport, Progress};
use idbridge_core::journal::{DeviceState, DeviceUpdate, OpenedJob, Operation, Outcome};
use idbridge_core::trust::Verifier;
use idbridge_core::{DeviceId, DeviceIdentity, ErrorKind};

use super::inputs::judge;
use super::job::TargetRun;

/// Runs the opened job `job` of `run`'s target with its stored certificates, each verified
/// again by `verifier` first ([`devices_to_send`], a page at a time). The caller holds the
/// job's and the target's leases (a worker's claim, or [`TargetRun::resume_job`]).
pub async fn run_verified(
    run: &TargetRun,
    job: &OpenedJob,
    operation: Operation,
    verifier: &Arc<Verifier>,
    progress: &dyn Progress,
) -> anyhow::Result<JobReport> {
    let devices = devices_to_send(run, &job.id, operation, verifier, run.engine.window());
    Ok(run
        .engine
        .run_stream(job, operation, &run.target.name, devices, progress)
        .await?)
}

/// The devices of job `job_id` to send on resume, read from the journal a page at a time as
/// the run needs them (so a million-device job is never held): its stored identities, for a
/// provision job only those that `verifier` admits today. The others are recorded in the
/// journal (see the module docs); each page is checked by the connector's `check_job`. Call
/// it holding the job's lease.
pub(crate) fn devices_to_send<'a>(
    run: &'a TargetRun,
    job_id: &'a str,
    operation: Operation,
    verifier: &'a Arc<Verifier>,
    page: usize,
) -> BoxStream<'a, idbridge_core::Result<DeviceIdentity>> {
    let page = page.max(1);
    // One check across every page: a rule that spans the job (DPS: one device per CN) sees it
    // all, a page at a time.
    let check = ChunkedCheck::new(run.engine.caller().connector().clone());
    let start: (Option<Option<u64>>, ChunkedCheck) = (Some(None), check);
    futures::stream::try_unfold(start, move |(cursor, mut check)| async move {
        let Some(after) = cursor else {
            return Ok(None);
        };
        let rows = run
            .engine
            .journal()
            .identities_page(job_id, after, page)
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let next = if rows.len() < page {
            None
        } else {
            rows.last().map(|(seq, _)| Some(*seq))
        };
        let identities: Vec<DeviceIdentity> = rows.into_iter().map(|(_, d)| d).collect();
        let send = page_to_send(run, job_id, operation, verifier, identities)
            .await
            .map_err(|e| {
                idbridge_core::Error::new(ErrorKind::Unexpected, format!("resuming: {e:#}"))
            })?;
        check.check(&send)?;
        Ok(Some((send, (next, check))))
    })
    .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

/// One page of [`devices_to_send`]: what may be sent of `identities`.
async fn page_to_send(
    run: &TargetRun,
    job_id: &str,
    operation: Operation,
    verifier: &Arc<Verifier>,
    identities: Vec<DeviceIdentity>,
) -> anyhow::Result<Vec<DeviceIdentity>> {
    if operation != Operation::Provision {
        return Ok(identities);
    }
    let journal = run.engine.journal();
    let ids: Vec<DeviceId> = identities.iter().map(|d| d.device_id.clone()).collect();
    let records: HashMap<DeviceId, (DeviceState, u32)> = journal
        .records_of(job_id, &ids)
        .await?
        .into_iter()
        .map(|r| (r.device_id, (r.state, r.attempts)))
        .collect();
    let verifier = Arc::clone(verifier);
    let judged = tokio::task::spawn_blocking(move || reverify(&verifier, identities))
        .await
        .context("verifying the stored certificates")?;
    let mut send = Vec::with_capacity(judged.len());
    let mut failed = Vec::new();
    let mut in_doubt = Vec::new();
    for (identity, why) in judged {
        let Some(why) = why else {
            send.push(identity);
            continue;
        };
        let Some(&(state, attempts)) = records.get(&identity.device_id) else {
            continue;
        };
        tracing::warn!(job_id, device_id = %identity.device_id, reason = %why,
            "stored certificate no longer verifies; not sent");
        match state {
            // Finished already: it stays as recorded (a done device is in the target; a later
            // `diff` or `deprovision --include-invalid` is the way to act on it).
            DeviceState::Done => send.push(identity),
            DeviceState::Pending | DeviceState::Failed => failed.push(refusal(
                &identity,
                attempts,
                format!("{why}; not provisioned"),
            )),
            DeviceState::InFlight | DeviceState::Unknown => {
                in_doubt.push((identity, attempts, why))
            }
        }
    }
    if !in_doubt.is_empty() {
        failed.extend(look_up(run, in_doubt).await);
    }
    if !failed.is_empty() {
        journal.record(job_id, failed, true).await?;
    }
    Ok(send)
}

/// Each identity judged by `verifier` as an input would be, with why it may not be
/// provisioned today (None: it may).
pub fn reverify(
    verifier: &Verifier,
    identities: Vec<DeviceIdentity>,
) -> Vec<(DeviceIdentity, Option<String>)> {
    identities
        .into_iter()
        .map(|identity| {
            let verdict = verifier.verify_identity(&identity, &[]);
            let why = judge(identity.clone(), &verdict, false)
                .err()
                .map(|refused| {
                    format!(
                        "certificate no longer verifies ({}): {}",
                        refused.status, refused.reason
                    )
                });
            (identity, why)
        })
        .collect()
}

/// Devices whose call may have reached the target: looked up through the engine's one call
/// path (paced outside the attempt timeout, retried while temporary, through the run's watched
/// connector), then recorded `failed` with whether the target holds them, or left `unknown`
/// when the lookup failed: never sent, tried again by the next `resume`. A rare path (a crash
/// mid-call, then a trust change).
async fn look_up(
    run: &TargetRun,
    devices: Vec<(DeviceIdentity, u32, String)>,
) -> Vec<DeviceUpdate> {
    let caller = run.engine.caller();
    let mut out = Vec::with_capacity(devices.len());
    for (d, attempts, why) in devices {
        out.push(match caller.lookup(&d).await {
            Ok(None) => refusal(&d, attempts, format!("{why}; not provisioned")),
            Ok(Some(remote)) => {
                let mut u = refusal(
                    &d,
                    attempts,
                    format!(
                        "{why}; the target holds it (a call reached it before the job \
                         stopped): remove it with `idbridge deprovision --include-invalid`"
                    ),
                );
                u.remote_name = Some(remote.name);
                u
            }
            Err(e) => {
                let mut u =
                    DeviceUpdate::state(d.device_id.clone(), DeviceState::Unknown, attempts);
                u.error_kind = Some(ErrorKind::InvalidInput.as_str().to_owned());
                u.reason = Some(format!(
                    "{why}; not sent again; whether the target holds it is unknown (lookup: {e})"
                ));
                u
            }
        });
    }
    out
}

/// A `failed` record for a refused device.
fn refusal(d: &DeviceIdentity, attempts: u32, reason: String) -> DeviceUpdate {
    let mut u = DeviceUpdate::state(d.device_id.clone(), DeviceState::Failed, attempts);
    u.outcome = Some(Outcome::Error);
    u.error_kind = Some(ErrorKind::InvalidInput.as_str().to_owned());
    u.reason = Some(reason);
    u
}
