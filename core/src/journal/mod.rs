//! The crash-safe record of provisioning jobs: which devices a job covers and where each one is
//! (pending, in flight, done, failed, outcome unknown), with the cloud resource ids it created.
//!
//! The engine writes a device `in_flight` durably *before* a non-idempotent call that may create
//! it, and its result afterwards. After a `kill -9` at any instant a rerun finds every device
//! either untouched (pending), finished (done/failed), or possibly sent (in flight / unknown);
//! the last are reconciled with the connector's `lookup` before anything is sent again, so no
//! device is lost or registered twice.
//!
//! [`Journal`] is the trait; [`SqliteJournal`] the embedded default: one SQLite file in WAL
//! mode, written by one thread that commits everything queued in one transaction (group commit),
//! so the journal is not the bottleneck. [`PostgresJournal`] is the same schema on PostgreSQL for
//! several stations and workers sharing one state (`postgres://` URLs). Nothing secret is stored:
//! certificates are public, batch IDs are kept only as their tag.
//!
//! # Leases
//!
//! A job has an owner: before running a job a process takes the lease `job:ID`, and before
//! driving a target the lease `target:NAME` ([`job_lease`], [`target_lease`]), each with an
//! expiry it renews while it works ([`crate::lease::Leaseholder`]). A lease that is free, expired
//! or already the caller's is granted; one held by another live process is refused with its
//! holder's name. Time is passed in ([`now_ms`] in production) so expiry is tested on injected
//! clocks, on both stores.

mod postgres;
mod schema;
mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceId, DeviceIdentity};

pub use postgres::{PostgresJournal, PostgresOptions};
pub use sqlite::SqliteJournal;

/// What a job does to its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Register devices (`idbridge provision`).
    Provision,
    /// Remove devices (`idbridge deprovision`).
    Deprovision,
}

impl Operation {
    /// `"provision"` or `"deprovision"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Provision => "provision",
            Operation::Deprovision => "deprovision",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "provision" => Ok(Operation::Provision),
            "deprovision" => Ok(Operation::Deprovision),
            other => Err(Error::new(
                ErrorKind::Unexpected,
                format!("unknown job operation {other:?} in the journal"),
            )),
        }
    }
}

/// Where a device of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Nothing sent yet.
    Pending,
    /// A call that may change the cloud was (possibly) sent; the answer is not recorded.
    InFlight,
    /// A call timed out or its answer was lost: reconcile with `lookup` before sending again.
    Unknown,
    /// Finished successfully (created, already present, deleted, not found).
    Done,
    /// Finished without success (conflict, permanent error, retries exhausted).
    Failed,
}

impl DeviceState {
    /// The snake_case name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::InFlight => "in_flight",
            DeviceState::Unknown => "unknown",
            DeviceState::Done => "done",
            DeviceState::Failed => "failed",
        }
    }

    /// Whether the device may have reached the cloud without its answer being recorded.
    pub fn needs_reconcile(self) -> bool {
        matches!(self, DeviceState::InFlight | DeviceState::Unknown)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeviceState::Pending,
            "in_flight" => DeviceState::InFlight,
            "unknown" => DeviceState::Unknown,
            "done" => DeviceState::Done,
            "failed" => DeviceState::Failed,
            other => {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("unknown device state {other:?} in the journal"),
                ));
            }
        })
    }
}

/// Whether a job still has work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Created or interrupted: `idbridge resume` (or the same command) finishes it.
    Running,
    /// Every device reached done or failed and the connector's `finish` ran.
    Finished,
}

impl JobState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Finished => "finished",
        }
    }
}

/// What a new job is: stored with it so `idbridge resume JOB` can rebuild the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Provision or deprovision.
    pub operation: Operation,
    /// The target's name in the configuration (`[targets.NAME]`).
    pub target: String,
    /// Identifies "the same command": an unfinished job with this key is resumed, not duplicated.
    pub key: String,
    /// Free-form, non-secret run parameters (config file path, options) for `resume`.
    #[serde(default)]
    pub params: serde_json::Value,
}

impl JobSpec {
    /// A spec whose key is derived from the operation, the target and the set of devices.
    pub fn for_devices<'a>(
        operation: Operation,
        target: &str,
        devices: impl IntoIterator<Item = &'a DeviceId>,
    ) -> Self {
        let mut ids: Vec<&str> = devices.into_iter().map(DeviceId::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(operation.as_str().as_bytes());
        ctx.update(b"\0");
        ctx.update(target.as_bytes());
        for id in ids {
            ctx.update(b"\0");
            ctx.update(id.as_bytes());
        }
        JobSpec {
            operation,
            target: target.to_owned(),
            key: hex::encode(ctx.finish()),
            params: serde_json::Value::Null,
        }
    }
}

/// A job's devices as they are read, a chunk at a time ([`Journal::open_job_streamed`]).
pub type DeviceChunks<'a> = BoxStream<'a, Result<Vec<DeviceIdentity>>>;

/// [`JobSpec::for_devices`]'s key built a device at a time, holding 32 bytes per device (the
/// decoded SHA-256 device id) instead of the devices: the same key for the same set of ids.
#[derive(Debug)]
pub struct JobKeyBuilder {
    operation: Operation,
    target: String,
    /// Device ids that are 64 lowercase hex digits (all of them, in practice), decoded.
    digests: Vec<[u8; 32]>,
    /// Any other id, as is.
    other: Vec<String>,
}

impl JobKeyBuilder {
    /// An empty set of devices for `operation` on `target`.
    pub fn new(operation: Operation, target: &str) -> Self {
        JobKeyBuilder {
            operation,
            target: target.to_owned(),
            digests: Vec::new(),
            other: Vec::new(),
        }
    }

    /// Adds one device (repeats count once).
    pub fn add(&mut self, id: &DeviceId) {
        let s = id.as_str();
        let mut d = [0u8; 32];
        let lower_hex = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if lower_hex && hex::decode_to_slice(s, &mut d).is_ok() {
            self.digests.push(d);
        } else {
            self.other.push(s.to_owned());
        }
    }

    /// The job's key, as [`JobSpec::for_devices`] computes it for the same ids.
    pub fn finish(mut self) -> String {
        // Lowercase hex sorts as its bytes do, so the decoded ids sort as their strings.
        self.digests.sort_unstable();
        self.digests.dedup();
        self.other.sort_unstable();
        self.other.dedup();
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(self.operation.as_str().as_bytes());
        ctx.update(b"\0");
        ctx.update(self.target.as_bytes());
        let mut buf = [0u8; 64];
        let mut other = self.other.iter().peekable();
        for d in &self.digests {
            let Ok(hexed) = hex::encode_to_slice(d, &mut buf).map(|()| &buf[..]) else {
                continue; // 32 bytes always fit 64 hex digits
            };
            while let Some(o) = other.next_if(|o| o.as_bytes() < hexed) {
                ctx.update(b"\0");
                ctx.update(o.as_bytes());
            }
            ctx.update(b"\0");
            ctx.update(hexed);
        }
        for o in other {
            ctx.update(b"\0");
            ctx.update(o.as_bytes());
        }
        hex::encode(ctx.finish())
    }
}

/// Device counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Not sent yet.
    pub pending: u64,
    /// Possibly sent, answer not recorded.
    pub in_flight: u64,
    /// Outcome unknown.
    pub unknown: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
}

impl StateCounts {
    /// All devices.
    pub fn total(&self) -> u64 {
        self.pending + self.in_flight + self.unknown + self.done + self.failed
    }

    /// Adds one device in `state`.
    pub fn add(&mut self, state: DeviceState) {
        match state {
            DeviceState::Pending => self.pending += 1,
            DeviceState::InFlight => self.in_flight += 1,
            DeviceState::Unknown => self.unknown += 1,
            DeviceState::Done => self.done += 1,
            DeviceState::Failed => self.failed += 1,
        }
    }
}

/// A job as the journal holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobInfo {
    /// `job-` and 16 hex digits.
    pub id: String,
    /// What it was created with.
    pub spec: JobSpec,
    /// Running or finished.
    pub state: JobState,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
    /// Devices by state.
    pub counts: StateCounts,
    /// Who holds the job's lease (`job:ID`), if anyone has taken it (it may have expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A claim on a named resource (`job:ID`, `target:NAME`) until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// `job:ID` or `target:NAME`.
    pub name: String,
    /// Who holds it: `worker:HOST:PID`, `cli:HOST:PID` ... (no secrets).
    pub owner: String,
    /// Milliseconds since the Unix epoch after which anyone may take it.
    pub expires_ms: i64,
}

impl Lease {
    /// Whether it is still held at `now_ms`.
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

/// The answer to [`Journal::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseClaim {
    /// The caller holds it now, until the lease's expiry.
    Granted(Lease),
    /// Another owner holds it, live.
    Held(Lease),
}

/// The lease name of a job.
pub fn job_lease(job_id: &str) -> String {
    format!("job:{job_id}")
}

/// The lease name of a target: at most one process drives a target at a time, so the engine's
/// per-API pacer holds the cloud's quota across processes. A service puts its account in the
/// target name (`ACCOUNT/TARGET`).
pub fn target_lease(target: &str) -> String {
    format!("target:{target}")
}

/// Milliseconds since the Unix epoch on this host's clock (lease times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What happened to a device, as a stable word for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Registered now.
    Created,
    /// Was registered already, identical.
    AlreadyPresent,
    /// Something different is registered under its name or certificate.
    Conflict,
    /// Removed now.
    Deleted,
    /// Was not registered (deprovision).
    NotFound,
    /// An error, see the reason.
    Error,
}

impl Outcome {
    /// The snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::AlreadyPresent => "already_present",
            Outcome::Conflict => "conflict",
            Outcome::Deleted => "deleted",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

impl FromStr for Outcome {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "created" => Outcome::Created,
            "already_present" => Outcome::AlreadyPresent,
            "conflict" => Outcome::Conflict,
            "deleted" => Outcome::Deleted,
            "not_found" => Outcome::NotFound,
            "error" => Outcome::Error,
            other => {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("unknown outcome {other:?} in the journal"),
                ));
            }
        })
    }
}

/// One device of a job, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRecord {
    /// The device.
    pub device_id: DeviceId,
    /// Its position in the job's input (0-based).
    pub seq: u64,
    /// Where it is.
    pub state: DeviceState,
    /// What happened, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Calls made for it so far (across runs).
    pub attempts: u32,
    /// The error kind of the last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// One line: why it failed or is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The cloud's request id of the last failure, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The name the cloud knows it by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_name: Option<String>,
    /// Cloud resource ids created or found (certificate ARN, thing name, etag ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, String>,
    /// Where the device came from (`file:line`).
    pub source: String,
    /// When the record last changed (RFC 3339): for a finished device, when its outcome was
    /// recorded. None for records written before the journal kept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// A change to one device's record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceUpdate {
    /// The device.
    pub device_id: DeviceId,
    /// Its new state.
    pub state: DeviceState,
    /// Its outcome, when finished.
    pub outcome: Option<Outcome>,
    /// Calls made so far.
    pub attempts: u32,
    /// The error kind of the last failure.
    pub error_kind: Option<String>,
    /// Why it failed or is unknown.
    pub reason: Option<String>,
    /// The cloud's request id.
    pub request_id: Option<String>,
    /// The cloud's name for it.
    pub remote_name: Option<String>,
    /// Cloud resource ids.
    pub resources: BTreeMap<String, String>,
}

impl DeviceUpdate {
    /// An update to `state` with nothing else known.
    pub fn state(device_id: DeviceId, state: DeviceState, attempts: u32) -> Self {
        DeviceUpdate {
            device_id,
            state,
            outcome: None,
            attempts,
            error_kind: None,
            reason: None,
            request_id: None,
            remote_name: None,
            resources: BTreeMap::new(),
        }
    }
}

/// The result of [`Journal::open_job`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedJob {
    /// The job id.
    pub id: String,
    /// True when an unfinished job with the same key was found and is being continued.
    pub resumed: bool,
}

/// The record of jobs. Object-safe; the engine holds `Arc<dyn Journal>`.
///
/// `record` with `durable = true` returns only once the updates are committed (the write-ahead
/// mark before a non-idempotent call); with `false` it may return before, and the updates are
/// committed with the next group (a lost one is harmless: the device is then still in flight and
/// gets reconciled).
#[async_trait]
pub trait Journal: Send + Sync + fmt::Debug {
    /// Continues the unfinished job with `spec.key`, or creates one with `devices` pending.
    async fn open_job(&self, spec: &JobSpec, devices: &[DeviceIdentity]) -> Result<OpenedJob>;

    /// [`Journal::open_job`] for devices that arrive as a stream: the unfinished job with the
    /// same operation, target and set of devices is continued, else a new one holds every
    /// device pending. A journal that can stores each chunk as it comes (one transaction per
    /// chunk) so the devices are never all in memory; this default collects them first.
    async fn open_job_streamed(
        &self,
        operation: Operation,
        target: &str,
        params: serde_json::Value,
        mut chunks: DeviceChunks<'_>,
    ) -> Result<OpenedJob> {
        let mut devices = Vec::new();
        while let Some(chunk) = chunks.next().await {
            devices.extend(chunk?);
        }
        let mut spec =
            JobSpec::for_devices(operation, target, devices.iter().map(|d| &d.device_id));
        spec.params = params;
        self.open_job(&spec, &devices).await
    }

    /// One job.
    async fn job(&self, id: &str) -> Result<Option<JobInfo>>;

    /// Every job, newest first.
    async fn jobs(&self) -> Result<Vec<JobInfo>>;

    /// A job's device records, in input order.
    async fn devices(&self, id: &str) -> Result<Vec<DeviceRecord>>;

    /// A job's device identities (certificates, vendor attributes, source), in input order, to
    /// resume a job without its input files. Batch IDs are not stored, so `batch` is None.
    async fn identities(&self, id: &str) -> Result<Vec<DeviceIdentity>>;

    /// Up to `limit` of a job's device records after input position `after` (from the start
    /// when None), in input order: [`Journal::devices`] a page at a time, for reports and
    /// `status` of jobs too large to hold.
    async fn devices_page(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>>;

    /// The records of the devices `ids` of a job (those it has), in no particular order: the
    /// engine joins each window of its input with the journal this way.
    async fn records_of(&self, id: &str, ids: &[DeviceId]) -> Result<Vec<DeviceRecord>>;

    /// Up to `limit` of a job's identities after input position `after` (from the start when
    /// None), in input order, each with its position: [`Journal::identities`] a page at a time,
    /// so `resume` of a large job holds one page.
    async fn identities_page(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, DeviceIdentity)>>;

    /// Records device updates; see the trait docs for `durable`.
    async fn record(&self, id: &str, updates: Vec<DeviceUpdate>, durable: bool) -> Result<()>;

    /// Sets the job's state, durably.
    async fn set_job_state(&self, id: &str, state: JobState) -> Result<()>;

    /// Waits until everything recorded so far is committed.
    async fn flush(&self) -> Result<()>;

    /// Takes lease `name` for `owner` until `now_ms + ttl_ms` when it is free, expired at
    /// `now_ms`, or already `owner`'s (then it is extended); else says who holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<LeaseClaim>;

    /// Extends a lease `owner` still holds (even expired, as long as nobody took it); false
    /// when another owner has it now.
    async fn renew_lease(&self, name: &str, owner: &str, ttl_ms: i64, now_ms: i64) -> Result<bool>;

    /// Gives a lease back (nothing when `owner` does not hold it).
    async fn release_lease(&self, name: &str, owner: &str) -> Result<()>;

    /// The lease `name`, live or expired, if it was ever taken and not released.
    async fn lease(&self, name: &str) -> Result<Option<Lease>>;

    /// Claims the oldest running job of one of `targets` whose job lease and target lease are
    /// both free (or `owner`'s), taking both atomically; None when there is none.
    async fn claim_job(
        &self,
        owner: &str,
        targets: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<JobInfo>>;
}

/// Opens a journal from a URL: `postgres://...` (or `postgresql://`), `sqlite:PATH`,
/// `sqlite://PATH` or a plain path. A PostgreSQL journal connects lazily (the first call
/// connects and migrates), so this needs a Tokio runtime but does no I/O.
pub fn open(url: &str) -> Result<std::sync::Arc<dyn Journal>> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(std::sync::Arc::new(PostgresJournal::open(
            url,
            PostgresOptions::default(),
        )?));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(Error::new(ErrorKind::ConfigInvalid, "empty journal path"));
    }
    Ok(std::sync::Arc::new(SqliteJournal::open(path)?))
}

#[cfg(test)]
mod tests;
