//! The provisioning engine: plans a job in the [journal](crate::journal), then registers (or
//! deregisters) its devices through a [`Connector`] with bounded concurrency, per-API pacing,
//! batching, one retry loop and crash-safe bookkeeping.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo(connector: std::sync::Arc<dyn idbridge_core::Connector>,
//! #               devices: Vec<idbridge_core::DeviceIdentity>) -> idbridge_core::Result<()> {
//! use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
//! use idbridge_core::journal::{self, Operation};
//!
//! let journal = journal::open("sqlite:idbridge-journal.sqlite")?;
//! let engine = Engine::new(connector, journal, EngineOptions::default());
//! let report = engine
//!     .execute(Operation::Provision, "demo", devices, serde_json::Value::Null, &NoProgress)
//!     .await?;
//! println!("{} done, {} failed", report.counts.done, report.counts.failed);
//! # Ok(()) }
//! ```
//!
//! # The protocol
//!
//! For a connector whose `register` is not idempotent, each device is written `in_flight`
//! durably before the call. A call that times out, or whose answer is lost, leaves the device
//! `unknown`; before sending it again the engine calls `lookup`: found and identical is done
//! (`already_present`), absent is sent again. After a crash, `in_flight` devices are treated the
//! same way. Batch calls report per-device outcomes and only failed devices are retried.
//!
//! # Memory
//!
//! The journal is the queue: a run reads its input (the caller's devices, or the journal's
//! pages on `resume`) a window at a time, joins each window with its journal records, and forms
//! batches only as calls in flight make room. It holds at most
//! `(max_concurrency + 3) × batch + window` devices whatever the size of the job, counted in a
//! [`HeldGauge`] ([`JobReport::peak_held`], [`Engine::held`]). See docs/adr/1500-engine-window.md.

mod call;
mod diff;
mod pacer;
mod retry;
pub mod sizing;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde::Serialize;

use crate::connector::{
    Capabilities, Connector, DeregisterOutcome, Quota, RegisterOutcome, RemoteDevice,
};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceId, DeviceIdentity};
use crate::journal::{
    DeviceRecord, DeviceState, DeviceUpdate, JobSpec, JobState, Journal, OpenedJob, Operation,
    Outcome, StateCounts,
};

pub use call::Caller;
pub use diff::{DiffEntry, DiffReport, DiffStatus};
pub use pacer::{HEADROOM, RatePacer, TARGET_API, TokioClock};
pub use retry::RetryPolicy;

use call::{Verdict, classify};
use retry::Backoff;

/// How the engine runs a job.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Calls in flight at the start, and never fewer (further capped by the connector's
    /// `max_concurrency`). Where a quota limits the calls, the run grows this towards
    /// `max_concurrency` as the cloud's observed latency needs ([`sizing`]).
    pub concurrency: usize,
    /// The most calls in flight a run may grow to; `concurrency` or less keeps it fixed.
    pub max_concurrency: usize,
    /// Devices per call, at most the connector's `max_batch_size`.
    pub batch_size: Option<usize>,
    /// Target-wide devices per second (`--rate`), on top of the per-API quotas.
    pub rate: Option<f64>,
    /// Per-API quotas replacing the connector's defaults (raised quotas).
    pub quotas: Vec<Quota>,
    /// The longest one call may take; past it the outcome is unknown.
    pub attempt_timeout: Duration,
    /// Retries.
    pub retry: RetryPolicy,
    /// Seeds the backoff jitter (tests); None draws from the OS.
    pub seed: Option<u64>,
    /// Devices the engine reads ahead of the calls in flight, from its input and the journal
    /// (at least one batch). A run holds at most `(max_concurrency + 3) × batch + window`
    /// devices, whatever the size of the job ([`JobReport::peak_held`]): the calls in flight,
    /// one batch queued, one being handed over, and the window with a batch being formed.
    pub window: usize,
    /// Whether [`JobReport::devices`] holds every device's record at the end of a run. Off,
    /// the report carries the counts only and the records stay in the journal, to be paged
    /// ([`Journal::devices_page`]): a million-device job never holds them all.
    pub report_devices: bool,
}

/// The default [`EngineOptions::max_concurrency`].
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

/// The default [`EngineOptions::window`].
pub const DEFAULT_WINDOW: usize = 1024;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            concurrency: 16,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            batch_size: None,
            rate: None,
            quotas: Vec::new(),
            attempt_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            seed: None,
            window: DEFAULT_WINDOW,
            report_devices: true,
        }
    }
}

/// Told about a job's progress (a progress bar, JSON lines, a receiver's response).
pub trait Progress: Send + Sync {
    /// The job starts: `total` devices of which `done` were finished by an earlier run.
    fn started(&self, job_id: &str, total: u64, done: u64) {
        let _ = (job_id, total, done);
    }

    /// A device finished (done or failed) in this run.
    fn finished(&self, update: &DeviceUpdate) {
        let _ = update;
    }

    /// Devices will be retried after `delay`.
    fn retrying(&self, devices: usize, error: &Error, delay: Duration) {
        let _ = (devices, error, delay);
    }

    /// True once the run must start no further call (shutdown, lease lost): calls in flight
    /// finish and are recorded, the rest stays pending for whoever runs the job next.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// The result of a run: every device's record in the journal, in input order.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// The job.
    pub job_id: String,
    /// What it did.
    pub operation: Operation,
    /// Where.
    pub target: String,
    /// Whether an unfinished job was continued.
    pub resumed: bool,
    /// Whether every device reached done or failed and the job is closed.
    pub finished: bool,
    /// Why the run stopped early (bad credentials, the target disabled), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Devices by state.
    pub counts: StateCounts,
    /// Every device, in input order (empty when [`EngineOptions::report_devices`] is off:
    /// page them from the journal).
    pub devices: Vec<DeviceRecord>,
    /// The most devices this run held in memory at once (read ahead or in flight): bounded by
    /// concurrency, batch size and window, not by the size of the job.
    pub peak_held: usize,
}

impl JobReport {
    /// Whether every device is done.
    pub fn all_done(&self) -> bool {
        self.finished && self.counts.done == self.counts.total()
    }
}

/// Runs jobs against one connector. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    connector: Arc<dyn Connector>,
    journal: Arc<dyn Journal>,
    opts: EngineOptions,
    caps: Capabilities,
    caller: Caller,
    held: Arc<HeldGauge>,
}

impl Engine {
    /// An engine for `connector`, recording in `journal`.
    pub fn new(
        connector: Arc<dyn Connector>,
        journal: Arc<dyn Journal>,
        opts: EngineOptions,
    ) -> Self {
        let caps = connector.info();
        Engine {
            caller: Caller::new(connector.clone(), &opts),
            held: Arc::new(HeldGauge::default()),
            connector,
            journal,
            opts,
            caps,
        }
    }

    /// The connector's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The quotas in force, per API (`*` is the target-wide `--rate`).
    pub fn quotas(&self) -> &[Quota] {
        self.caller.pacer().quotas()
    }

    /// Devices a run reads ahead ([`EngineOptions::window`]): the page size of runs from the
    /// journal.
    pub fn window(&self) -> usize {
        self.opts.window.max(1)
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    /// The engine's call path, for calls outside jobs (a health check, a lookup): paced,
    /// timed and retried like a job's calls.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Opens (or continues) the job for `devices` and runs it: the one call an embedding
    /// program (or `idbridge serve`) needs. `params` is stored with the job for `resume`.
    pub async fn execute(
        &self,
        operation: Operation,
        target: &str,
        devices: Vec<DeviceIdentity>,
        params: serde_json::Value,
        progress: &dyn Progress,
    ) -> Result<JobReport> {
        let opened = self.open(operation, target, &devices, params).await?;
        self.run(&opened, operation, target, devices, progress)
            .await
    }

    /// Opens the job for `devices`: the unfinished one with the same operation, target and
    /// devices, or a new one with every device pending.
    pub async fn open(
        &self,
        operation: Operation,
        target: &str,
        devices: &[DeviceIdentity],
        params: serde_json::Value,
    ) -> Result<OpenedJob> {
        self.connector.check_job(devices)?;
        let mut spec =
            JobSpec::for_devices(operation, target, devices.iter().map(|d| &d.device_id));
        spec.params = params;
        self.journal.open_job(&spec, devices).await
    }

    /// Opens the job for the devices `chunks` yields, as they are read: each chunk is checked
    /// by the connector's `check_job` and stored in the journal (in one transaction where the
    /// journal can), so the job's devices are never all in memory. The unfinished job with the
    /// same operation, target and devices is continued. Run it with [`Engine::run_journaled`].
    pub async fn open_streamed(
        &self,
        operation: Operation,
        target: &str,
        chunks: crate::journal::DeviceChunks<'_>,
        params: serde_json::Value,
    ) -> Result<OpenedJob> {
        use futures::TryStreamExt;
        let mut check = crate::connector::ChunkedCheck::new(self.connector.clone());
        let checked = chunks
            .and_then(move |c| futures::future::ready(check.check(&c).map(|()| c)))
            .boxed();
        self.journal
            .open_job_streamed(operation, target, params, checked)
            .await
    }

    /// Continues job `job_id` with the identities stored in the journal, read a page (one
    /// window) at a time as the run needs them. Each page is checked by the connector's
    /// `check_job` as it is read (the whole job was checked when it was opened); the first page
    /// before anything runs.
    pub async fn resume(&self, job_id: &str, progress: &dyn Progress) -> Result<JobReport> {
        let opened = OpenedJob {
            id: job_id.to_owned(),
            resumed: true,
        };
        self.run_journaled(&opened, progress).await
    }

    /// Runs an opened job with the identities stored in the journal, a page at a time (as
    /// [`Engine::resume`]): the way to run a job opened by [`Engine::open_streamed`].
    pub async fn run_journaled(
        &self,
        job: &OpenedJob,
        progress: &dyn Progress,
    ) -> Result<JobReport> {
        let job_id = job.id.as_str();
        let info = self.journal.job(job_id).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no job {job_id} in the journal"),
            )
        })?;
        let page = self.opts.window.max(1);
        let first = self.journal.identities_page(&info.id, None, page).await?;
        let after = if first.len() < page {
            None
        } else {
            first.last().map(|(seq, _)| Some(*seq))
        };
        let first: Vec<DeviceIdentity> = first.into_iter().map(|(_, d)| d).collect();
        let mut check = crate::connector::ChunkedCheck::new(self.connector.clone());
        check.check(&first)?;
        let rest = stored_identities(self.journal.clone(), check, info.id.clone(), after, page);
        let devices = futures::stream::iter(first.into_iter().map(Ok))
            .chain(rest)
            .boxed();
        let opened = OpenedJob {
            id: info.id.clone(),
            resumed: job.resumed,
        };
        self.run_stream(
            &opened,
            info.spec.operation,
            &info.spec.target,
            devices,
            progress,
        )
        .await
    }

    /// Runs an opened job to the end (or until the target refuses all further work).
    /// `devices` are the job's identities; devices the journal has finished are skipped.
    pub async fn run(
        &self,
        job: &OpenedJob,
        operation: Operation,
        target: &str,
        devices: Vec<DeviceIdentity>,
        progress: &dyn Progress,
    ) -> Result<JobReport> {
        let devices = futures::stream::iter(devices.into_iter().map(Ok)).boxed();
        self.run_stream(job, operation, target, devices, progress)
            .await
    }

    /// As [`Engine::run`], taking the job's identities from a stream as the run needs them:
    /// the engine holds only the devices in flight and a window ahead (joined with their
    /// journal records a window at a time), so its memory does not grow with the job. Each
    /// device is worked on once, in input order; devices the job does not have are skipped.
    pub async fn run_stream(
        &self,
        job: &OpenedJob,
        operation: Operation,
        target: &str,
        devices: BoxStream<'_, Result<DeviceIdentity>>,
        progress: &dyn Progress,
    ) -> Result<JobReport> {
        let before = self
            .journal
            .job(&job.id)
            .await?
            .map(|info| info.counts)
            .unwrap_or_default();
        let (total, done) = (before.total(), before.done);
        progress.started(&job.id, total, done);
        let mut concurrency = self.opts.concurrency.max(1);
        let mut ceiling = self.opts.max_concurrency.max(concurrency);
        if self.caps.max_concurrency > 0 {
            concurrency = concurrency.min(self.caps.max_concurrency);
            ceiling = ceiling.min(self.caps.max_concurrency);
        }
        let sizer = sizing::Sizer::new(concurrency, ceiling);
        let run = Run {
            engine: self,
            job: &job.id,
            operation,
            backoff: self
                .caller
                .budget(usize::try_from(total - done).unwrap_or(usize::MAX)),
            abort: AtomicBool::new(false),
            abort_reason: std::sync::Mutex::new(None),
            progress,
            sizer,
        };
        let limit = match operation {
            Operation::Deprovision if self.caps.max_deregister_batch_size > 0 => {
                self.caps.max_deregister_batch_size
            }
            _ => self.caps.max_batch_size,
        };
        let batch = self.opts.batch_size.unwrap_or(usize::MAX).min(limit).max(1);
        let held = Arc::new(HeldGauge::default());
        let feed = Feed {
            journal: self.journal.as_ref(),
            job: &job.id,
            input: devices,
            ahead: VecDeque::new(),
            seen: Seen::default(),
            exhausted: false,
            window: self.opts.window.max(batch),
            held: HeldCounters {
                run: held.clone(),
                engine: self.held.clone(),
            },
        };
        let run_ref = &run;
        // Batches are formed as the calls in flight make room (the channel holds one): a run or
        // a shutdown that stops early leaves the rest of the input unread, pending in the
        // journal. A producer and a channel rather than `unfold`: a closure taking the feed
        // trips the compiler's higher-ranked lifetime checks on the run's `Send` future.
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<Item>>>(0);
        let produce = async move {
            let mut feed = feed;
            while !run_ref.stopped() {
                match feed.next_batch(batch).await {
                    Ok(Some(b)) => {
                        if tx.send(Ok(b)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        };
        // `buffer_unordered` with a limit the sizer moves as calls finish.
        let consume = async move {
            let mut rx = rx;
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut first: Option<Error> = None;
            let mut open = true;
            loop {
                let room = in_flight.len() < run_ref.sizer.limit();
                tokio::select! {
                    biased;
                    Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                        if let Err(e) = r {
                            first.get_or_insert(e);
                        }
                    }
                    b = rx.next(), if open && room => match b {
                        Some(b) => in_flight.push(async move {
                            match b {
                                Ok(b) => run_ref.batch(b).await,
                                Err(e) => Err(e),
                            }
                        }),
                        None => open = false,
                    },
                    else => break,
                }
            }
            first
        };
        let ((), first_error) = futures::join!(produce, consume);
        if let Some(e) = first_error {
            return Err(e);
        }
        self.journal.flush().await?;
        let peak_held = held.peak();
        let mut aborted = run
            .abort_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (mut devices, counts) = self.report_devices(&job.id).await?;
        let mut finished = false;
        let complete = counts.done + counts.failed == counts.total();
        if aborted.is_none() && !complete && progress.cancelled() {
            aborted = Some("stopped before the end (shutdown or lease lost)".to_owned());
        }
        if aborted.is_none() && complete {
            // Through the one call path, its retries from the job's budget. A job-stopping
            // error stops the job as one from register would; any other leaves it running
            // (every device recorded), for `resume` to finish.
            let finish = self
                .caller
                .retried(&run.backoff, Some(&job.id), "finish", |ctx| async move {
                    self.connector.finish(&ctx).await
                })
                .await;
            match finish {
                Ok(()) => {
                    self.journal
                        .set_job_state(&job.id, JobState::Finished)
                        .await?;
                    finished = true;
                }
                Err(e) => {
                    if classify(&e) == Verdict::Stop {
                        run.stop(&e);
                    }
                    aborted = Some(format!("finishing the target failed: {e}"));
                    devices = self.report_devices(&job.id).await?.0;
                }
            }
        }
        Ok(JobReport {
            job_id: job.id.clone(),
            operation,
            target: target.to_owned(),
            resumed: job.resumed,
            finished,
            aborted,
            counts,
            devices,
            peak_held,
        })
    }

    /// The records a report holds (all, or none under `report_devices = false`) and the
    /// job's counts by state.
    async fn report_devices(&self, job: &str) -> Result<(Vec<DeviceRecord>, StateCounts)> {
        if !self.opts.report_devices {
            let counts = self
                .journal
                .job(job)
                .await?
                .map(|info| info.counts)
                .unwrap_or_default();
            return Ok((Vec::new(), counts));
        }
        let devices = self.journal.devices(job).await?;
        let mut counts = StateCounts::default();
        for d in &devices {
            counts.add(d.state);
        }
        Ok((devices, counts))
    }

    /// Devices held by every run of this engine now (read ahead or in flight), and the most
    /// held at once since it was made.
    pub fn held(&self) -> &HeldGauge {
        &self.held
    }
}

/// A device being worked on.
struct Item {
    identity: DeviceIdentity,
    attempts: u32,
    /// A call may have reached the cloud without its answer: lookup before sending again.
    unknown: bool,
    error: Option<Error>,
    /// Counted in the gauges while the engine holds the device.
    _held: Held,
}

/// A count of devices held in memory, now and at most.
#[derive(Debug, Default)]
pub struct HeldGauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl HeldGauge {
    /// Devices held now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// The most devices held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn add(&self) {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
    }

    fn sub(&self) {
        self.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One device in the run's and the engine's gauges, from when the engine reads it from its
/// input until it is dropped (skipped, or its batch is over).
#[derive(Debug)]
struct Held {
    run: Arc<HeldGauge>,
    engine: Arc<HeldGauge>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.run.sub();
        self.engine.sub();
    }
}

/// Makes [`Held`] tokens for one run.
#[derive(Debug)]
struct HeldCounters {
    run: Arc<HeldGauge>,
    engine: Arc<HeldGauge>,
}

impl HeldCounters {
    fn hold(&self) -> Held {
        self.run.add();
        self.engine.add();
        Held {
            run: self.run.clone(),
            engine: self.engine.clone(),
        }
    }
}

/// The work of one run: the caller's input read a window at a time, joined with the journal,
/// devices already done (or not in the job, or repeated) dropped.
struct Feed<'a> {
    journal: &'a dyn Journal,
    job: &'a str,
    input: BoxStream<'a, Result<DeviceIdentity>>,
    /// Devices read and still to be batched: fewer than one batch plus one window.
    ahead: VecDeque<Item>,
    /// The input positions (journal `seq`) already taken, so a repeated device runs once.
    seen: Seen,
    exhausted: bool,
    window: usize,
    held: HeldCounters,
}

impl Feed<'_> {
    /// The next batch of up to `n` devices, None at the end of the input.
    async fn next_batch(&mut self, n: usize) -> Result<Option<Vec<Item>>> {
        while self.ahead.len() < n && !self.exhausted {
            self.refill().await?;
        }
        if self.ahead.is_empty() {
            return Ok(None);
        }
        let k = n.min(self.ahead.len());
        Ok(Some(self.ahead.drain(..k).collect()))
    }

    /// Reads up to one window of the input and joins it with its journal records.
    async fn refill(&mut self) -> Result<()> {
        let mut chunk = Vec::with_capacity(self.window.min(4096));
        while chunk.len() < self.window {
            match self.input.next().await {
                Some(Ok(d)) => chunk.push((d, self.held.hold())),
                Some(Err(e)) => return Err(e),
                None => {
                    self.exhausted = true;
                    break;
                }
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let ids: Vec<DeviceId> = chunk.iter().map(|(d, _)| d.device_id.clone()).collect();
        let records = self.journal.records_of(self.job, &ids).await?;
        let mut by_id: HashMap<DeviceId, DeviceRecord> = records
            .into_iter()
            .map(|r| (r.device_id.clone(), r))
            .collect();
        for (identity, held) in chunk {
            let Some(rec) = by_id.remove(&identity.device_id) else {
                continue;
            };
            if !self.seen.insert(rec.seq) || rec.state == DeviceState::Done {
                continue;
            }
            self.ahead.push_back(Item {
                identity,
                attempts: rec.attempts,
                unknown: rec.state.needs_reconcile(),
                error: None,
                _held: held,
            });
        }
        Ok(())
    }
}

/// A set of input positions: one bit per device of the job, not a device.
#[derive(Debug, Default)]
struct Seen(Vec<u64>);

impl Seen {
    /// Adds `seq`; false when it was there.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = (usize::try_from(seq / 64).unwrap_or(usize::MAX), seq % 64);
        if word >= self.0.len() {
            self.0.resize(word.saturating_add(1), 0);
        }
        let Some(w) = self.0.get_mut(word) else {
            return true;
        };
        let fresh = *w & (1 << bit) == 0;
        *w |= 1 << bit;
        fresh
    }
}

/// A job's identities from the journal a page at a time after position `after`, each page
/// checked by the connector.
fn stored_identities(
    journal: Arc<dyn Journal>,
    check: crate::connector::ChunkedCheck,
    job: String,
    after: Option<Option<u64>>,
    page: usize,
) -> BoxStream<'static, Result<DeviceIdentity>> {
    use futures::TryStreamExt;
    futures::stream::try_unfold((after, check), move |(cursor, mut check)| {
        let (journal, job) = (journal.clone(), job.clone());
        async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            let rows = journal.identities_page(&job, after, page).await?;
            let next = if rows.len() < page {
                None
            } else {
                rows.last().map(|(seq, _)| Some(*seq))
            };
            let devices: Vec<DeviceIdentity> = rows.into_iter().map(|(_, d)| d).collect();
            if devices.is_empty() {
                return Ok(None);
            }
            check.check(&devices)?;
            Ok(Some((devices, (next, check))))
        }
    })
    .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

/// One run of one job.
struct Run<'a> {
    engine: &'a Engine,
    job: &'a str,
    operation: Operation,
    backoff: Backoff,
    abort: AtomicBool,
    abort_reason: std::sync::Mutex<Option<String>>,
    progress: &'a dyn Progress,
    /// Calls in flight, sized from quotas and latency.
    sizer: sizing::Sizer,
}

impl Run<'_> {
    /// Whether no further call may start: the target refused all work, or the run was
    /// cancelled (shutdown, lease lost).
    fn stopped(&self) -> bool {
        self.abort.load(Ordering::Acquire) || self.progress.cancelled()
    }

    /// The register-side write-ahead: needed when sending twice could create twice.
    fn write_ahead(&self) -> bool {
        self.operation == Operation::Provision && !self.engine.caps.idempotent_register
    }

    /// Runs one batch call for `n` devices through the engine's call path. An `Err` is the
    /// whole call's failure: the connector's own error, a wrong number of outcomes, or no
    /// answer in time (outcome unknown).
    async fn batch_call<T, F, Fut>(
        &self,
        operation: &'static str,
        n: usize,
        call: F,
    ) -> Result<Vec<T>>
    where
        F: FnOnce(crate::connector::CallContext) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let (out, clock, elapsed) = self
            .engine
            .caller
            .measured_attempt(Some(self.job), operation, call)
            .await;
        let out = out?;
        if out.len() == n {
            let target = self.engine.caller.pacer().rate_of(TARGET_API);
            let device_rate = match (clock.device_rate(n), target) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.sizer.observe(sizing::Observation {
                devices: n,
                device_rate,
                service: elapsed.saturating_sub(clock.waited()),
            });
            return Ok(out);
        }
        Err(Error::new(
            ErrorKind::Unexpected,
            format!("connector returned {} outcomes for {n} devices", out.len()),
        )
        .with_operation(operation)
        .set_temporary(false))
    }

    fn stop(&self, e: &Error) {
        if !self.abort.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "the target refuses all further work; stopping the job");
            *self.abort_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
    }

    async fn batch(&self, mut items: Vec<Item>) -> Result<()> {
        let engine = self.engine;
        if self.progress.cancelled() {
            return Ok(());
        }
        let units = u32::try_from(items.len()).unwrap_or(u32::MAX);
        engine.caller.pacer().wait(TARGET_API, units).await;
        let mut round = 0u32;
        loop {
            if self.abort.load(Ordering::Acquire) || self.progress.cancelled() || items.is_empty() {
                return Ok(());
            }
            round += 1;
            if self.write_ahead() {
                items = self.reconcile(items).await?;
                if items.is_empty() {
                    return Ok(());
                }
                let marks = items
                    .iter()
                    .map(|i| {
                        DeviceUpdate::state(
                            i.identity.device_id.clone(),
                            DeviceState::InFlight,
                            i.attempts + 1,
                        )
                    })
                    .collect();
                engine.journal.record(self.job, marks, true).await?;
                // The mark may have waited for the database long enough for this process's
                // leases to lapse: no call starts; the devices stay in flight and whoever
                // holds the job next looks them up.
                if self.progress.cancelled() {
                    return Ok(());
                }
            } else {
                // Unknown devices are simply sent again: the call is idempotent.
                for i in &mut items {
                    i.unknown = false;
                }
            }
            for i in &mut items {
                i.attempts += 1;
                i.error = None;
            }
            let retry = match self.operation {
                Operation::Provision => self.register(items).await?,
                Operation::Deprovision => self.deregister(items).await?,
            };
            items = self.schedule(retry, round).await?;
        }
    }

    /// Calls `register` once for `items`; records finished devices; returns those to retry.
    async fn register(&self, items: Vec<Item>) -> Result<Vec<Item>> {
        let engine = self.engine;
        let ids: Vec<DeviceIdentity> = items.iter().map(|i| i.identity.clone()).collect();
        let ids = &ids;
        let outcomes = match self
            .batch_call("register", items.len(), |ctx| async move {
                engine.connector.register(&ctx, ids).await
            })
            .await
        {
            Ok(out) => out,
            Err(e) => return self.whole_call_failed(items, e).await,
        };
        let mut finished = Vec::new();
        let mut retry = Vec::new();
        for (mut item, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                RegisterOutcome::Created(r) => {
                    finished.push(done(&item, Outcome::Created, Some(r)));
                }
                RegisterOutcome::AlreadyPresent(r) => {
                    finished.push(done(&item, Outcome::AlreadyPresent, Some(r)));
                }
                RegisterOutcome::Conflict { remote, reason } => {
                    let mut u = failed_update(&item, Outcome::Conflict, "conflict", reason, None);
                    if let Some(r) = remote {
                        u.remote_name = Some(r.name);
                        u.resources = r.resources;
                    }
                    finished.push(u);
                }
                RegisterOutcome::Failed(e) if classify(&e) == Verdict::Stop => {
                    self.stop(&e);
                    finished.push(left_pending(&item, &e));
                }
                RegisterOutcome::Failed(e) => {
                    if e.kind() == ErrorKind::OutcomeUnknown {
                        item.unknown = true;
                    }
                    if classify(&e) == Verdict::Retry {
                        item.error = Some(e);
                        retry.push(item);
                    } else {
                        finished.push(error_update(&item, &e));
                    }
                }
            }
        }
        self.record_finished(finished).await?;
        Ok(retry)
    }

    async fn deregister(&self, items: Vec<Item>) -> Result<Vec<Item>> {
        let engine = self.engine;
        let ids: Vec<DeviceIdentity> = items.iter().map(|i| i.identity.clone()).collect();
        let ids = &ids;
        let outcomes = match self
            .batch_call("deregister", items.len(), |ctx| async move {
                engine.connector.deregister(&ctx, ids).await
            })
            .await
        {
            Ok(out) => out,
            Err(e) => return self.whole_call_failed(items, e).await,
        };
        let mut finished = Vec::new();
        let mut retry = Vec::new();
        for (mut item, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                DeregisterOutcome::Deleted => finished.push(done(&item, Outcome::Deleted, None)),
                DeregisterOutcome::NotFound => {
                    finished.push(done(&item, Outcome::NotFound, None));
                }
                DeregisterOutcome::Failed(e) if classify(&e) == Verdict::Stop => {
                    self.stop(&e);
                    finished.push(left_pending(&item, &e));
                }
                DeregisterOutcome::Failed(e) if classify(&e) == Verdict::Retry => {
                    item.error = Some(e);
                    retry.push(item);
                }
                DeregisterOutcome::Failed(e) => finished.push(error_update(&item, &e)),
            }
        }
        self.record_finished(finished).await?;
        Ok(retry)
    }

    /// The whole call failed: temporary → every device retried (unknown on a lost answer);
    /// permanent → every device failed, or the job stopped if nothing can work.
    async fn whole_call_failed(&self, mut items: Vec<Item>, e: Error) -> Result<Vec<Item>> {
        match classify(&e) {
            Verdict::Retry => {
                let unknown = e.kind() == ErrorKind::OutcomeUnknown;
                for i in &mut items {
                    i.unknown |= unknown;
                    i.error = Some(e.for_device(&i.identity.device_id));
                }
                return Ok(items);
            }
            Verdict::Stop => {
                self.stop(&e);
                return Ok(Vec::new());
            }
            Verdict::Fail => {}
        }
        let finished = items.iter().map(|i| error_update(i, &e)).collect();
        self.record_finished(finished).await?;
        Ok(Vec::new())
    }

    /// Checks the retry budget and attempt limits, records unknowns, waits the backoff.
    async fn schedule(&self, mut retry: Vec<Item>, round: u32) -> Result<Vec<Item>> {
        if retry.is_empty() {
            return Ok(retry);
        }
        let max = self.backoff.policy().max_attempts;
        let mut finished = Vec::new();
        let mut unknown = Vec::new();
        let budget_ok = self.backoff.take_budget();
        retry.retain(|i| {
            let e = i.error.as_ref().map(Error::report).unwrap_or_default();
            if !budget_ok || i.attempts >= max {
                let why = if budget_ok {
                    format!("gave up after {} attempts: {e}", i.attempts)
                } else {
                    format!("retry budget of the job spent: {e}")
                };
                let mut u = failed_update(
                    i,
                    Outcome::Error,
                    i.error.as_ref().map_or("unexpected", |e| e.kind().as_str()),
                    why,
                    i.error
                        .as_ref()
                        .and_then(|e| e.request_id())
                        .map(str::to_owned),
                );
                if i.unknown && self.write_ahead() {
                    // It may exist in the cloud: leave it for a later run to reconcile.
                    u.state = DeviceState::Unknown;
                    u.outcome = None;
                }
                finished.push(u);
                false
            } else {
                if i.unknown {
                    let mut u = DeviceUpdate::state(
                        i.identity.device_id.clone(),
                        DeviceState::Unknown,
                        i.attempts,
                    );
                    u.reason = Some(e);
                    unknown.push(u);
                }
                true
            }
        });
        self.record_finished(finished).await?;
        self.engine.journal.record(self.job, unknown, false).await?;
        if retry.is_empty() {
            return Ok(retry);
        }
        let retry_after = retry
            .iter()
            .filter_map(|i| i.error.as_ref().and_then(Error::retry_after))
            .max();
        let delay = self.backoff.delay(round, retry_after);
        if let Some(e) = retry.iter().find_map(|i| i.error.as_ref()) {
            tracing::debug!(devices = retry.len(), error = %e, ?delay, "retrying");
            self.progress.retrying(retry.len(), e, delay);
        }
        tokio::time::sleep(delay).await;
        Ok(retry)
    }

    /// Before resending devices whose earlier call may have taken effect, asks the cloud.
    async fn reconcile(&self, items: Vec<Item>) -> Result<Vec<Item>> {
        if !items.iter().any(|i| i.unknown) {
            return Ok(items);
        }
        let engine = self.engine;
        let looked = futures::future::join_all(items.into_iter().map(|mut item| async move {
            if !item.unknown {
                return (item, None);
            }
            // One attempt through the call path; a temporary failure joins the device's
            // retries below.
            let identity = &item.identity;
            let r = engine
                .caller
                .attempt(Some(self.job), "lookup", |ctx| async move {
                    engine.connector.lookup(&ctx, identity).await
                })
                .await;
            match r {
                Ok(Some(remote)) => {
                    let same = remote.differences.is_empty()
                        && remote
                            .device_id
                            .as_ref()
                            .is_none_or(|d| *d == item.identity.device_id);
                    let u = if same {
                        done(&item, Outcome::AlreadyPresent, Some(remote))
                    } else {
                        let reason = if remote.differences.is_empty() {
                            format!("{} holds a different certificate", remote.name)
                        } else {
                            remote.differences.join("; ")
                        };
                        let mut u =
                            failed_update(&item, Outcome::Conflict, "conflict", reason, None);
                        u.remote_name = Some(remote.name);
                        u.resources = remote.resources;
                        u
                    };
                    (item, Some(Ok(u)))
                }
                Ok(None) => {
                    item.unknown = false;
                    (item, None)
                }
                Err(e) => (item, Some(Err(e))),
            }
        }))
        .await;
        let mut keep = Vec::new();
        let mut finished = Vec::new();
        let mut retry = Vec::new();
        for (mut item, r) in looked {
            match r {
                None => keep.push(item),
                Some(Ok(u)) => finished.push(u),
                Some(Err(e)) if classify(&e) == Verdict::Retry => {
                    item.attempts += 1;
                    item.error = Some(e);
                    retry.push(item);
                }
                Some(Err(e)) => {
                    if classify(&e) == Verdict::Stop {
                        self.stop(&e);
                        return Ok(Vec::new());
                    }
                    let mut u = error_update(&item, &e);
                    // It may exist: keep it reconcilable rather than failed for good.
                    u.state = DeviceState::Unknown;
                    u.outcome = None;
                    finished.push(u);
                }
            }
        }
        self.record_finished(finished).await?;
        if !retry.is_empty() {
            // Lookups that failed temporarily wait a backoff, then join the next round.
            let again = self.schedule(retry, 1).await?;
            keep.extend(again);
        }
        Ok(keep)
    }

    async fn record_finished(&self, updates: Vec<DeviceUpdate>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        for u in updates.iter().filter(|u| u.state != DeviceState::Pending) {
            self.progress.finished(u);
        }
        self.engine.journal.record(self.job, updates, false).await
    }
}

fn done(item: &Item, outcome: Outcome, remote: Option<RemoteDevice>) -> DeviceUpdate {
    let mut u = DeviceUpdate::state(
        item.identity.device_id.clone(),
        DeviceState::Done,
        item.attempts,
    );
    u.outcome = Some(outcome);
    if let Some(r) = remote {
        u.remote_name = Some(r.name);
        u.resources = r.resources;
    }
    u
}

/// A device the target refused with a job-stopping error (credentials, permissions, target
/// disabled): nothing was done to it, so it goes back to pending for whoever resumes the job.
fn left_pending(item: &Item, e: &Error) -> DeviceUpdate {
    let mut u = DeviceUpdate::state(
        item.identity.device_id.clone(),
        DeviceState::Pending,
        item.attempts,
    );
    u.error_kind = Some(e.kind().as_str().to_owned());
    u.reason = Some(e.report());
    u.request_id = e.request_id().map(str::to_owned);
    u
}

fn failed_update(
    item: &Item,
    outcome: Outcome,
    kind: &str,
    reason: String,
    request_id: Option<String>,
) -> DeviceUpdate {
    let mut u = DeviceUpdate::state(
        item.identity.device_id.clone(),
        DeviceState::Failed,
        item.attempts,
    );
    u.outcome = Some(outcome);
    u.error_kind = Some(kind.to_owned());
    u.reason = Some(reason);
    u.request_id = request_id;
    u
}

fn error_update(item: &Item, e: &Error) -> DeviceUpdate {
    failed_update(
        item,
        if e.kind() == ErrorKind::Conflict {
            Outcome::Conflict
        } else {
            Outcome::Error
        },
        e.kind().as_str(),
        e.report(),
        e.request_id().map(str::to_owned),
    )
}

#[cfg(test)]
mod tests;
