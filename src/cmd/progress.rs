//! Progress on stderr for every long command (`provision`, `deprovision`, `resume`, `diff`,
//! `--dry-run`, `inspect`): an indicatif bar with rate and ETA on a terminal, one JSON line a
//! second otherwise; and Ctrl-C: the first stops starting calls (calls in flight finish and are
//! recorded, or stay `unknown` for the next run to look up) and the command says how to resume.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idbridge::app::observe::LookupHook;
use idbridge_core::engine::Progress;
use idbridge_core::journal::{DeviceState, DeviceUpdate, Operation};

/// A progress bar with rate and ETA on a terminal; JSON lines on stderr otherwise.
pub struct CliProgress {
    operation: Operation,
    bar: Option<indicatif::ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    start: Instant,
    last: std::sync::Mutex<Instant>,
    job: Mutex<Option<String>>,
    finished_at: Mutex<HashMap<String, String>>,
    /// Whether `finished_at` is kept (a report prints it); off for streamed runs, whose
    /// reports page the journal: a million devices' timestamps are ~200 MB.
    keep_finished_at: bool,
}

impl CliProgress {
    /// A bar when stderr is a terminal.
    pub fn new(operation: Operation) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(operation.as_str());
            b
        });
        CliProgress {
            operation,
            bar,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            start: Instant::now(),
            last: std::sync::Mutex::new(Instant::now()),
            job: Mutex::new(None),
            finished_at: Mutex::new(HashMap::new()),
            keep_finished_at: true,
        }
    }

    /// A progress that keeps no per-device timestamps (for a streamed run: its report is
    /// paged from the journal and prints none).
    pub fn lean(operation: Operation) -> Self {
        CliProgress {
            keep_finished_at: false,
            ..CliProgress::new(operation)
        }
    }

    /// When this run saw each device finish (device id → RFC 3339), for the report.
    pub fn finished_at(&self) -> HashMap<String, String> {
        self.finished_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After the run: when Ctrl-C stopped it, says so on stderr with the command that finishes
    /// the job, and returns the exit code (130, as a shell reports SIGINT); None otherwise.
    pub fn interrupted(&self) -> Option<std::process::ExitCode> {
        if !interrupt_requested() {
            return None;
        }
        let job = self.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        match job {
            Some(job) => eprintln!(
                "idbridge: interrupted: {done} of {total} devices finished; calls in flight were \
                 recorded (or left unknown, to be looked up first). Finish with:\n  \
                 idbridge resume {job}\n(with this run's --config and trust flags: resume \
                 verifies every certificate again; or run the same command again)"
            ),
            None => eprintln!("idbridge: interrupted before the job started"),
        }
        Some(std::process::ExitCode::from(130))
    }

    fn line(&self, event: &str) {
        let done = self.done.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed().as_secs_f64();
        let v = serde_json::json!({
            "event": event,
            "operation": self.operation.as_str(),
            "total": self.total.load(Ordering::Relaxed),
            "done": done,
            "failed": self.failed.load(Ordering::Relaxed),
            "elapsed_secs": (elapsed * 10.0).round() / 10.0,
        });
        eprintln!("{v}");
    }

    /// Closes the bar (or prints the last JSON line).
    pub fn done(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => self.line("finished"),
        }
    }
}

impl Progress for CliProgress {
    fn started(&self, job_id: &str, total: u64, done: u64) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job_id.to_owned());
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        match &self.bar {
            Some(b) => {
                b.set_length(total);
                b.set_position(done);
                b.reset_eta();
                b.set_message(format!("{} {job_id}", self.operation));
            }
            None => {
                eprintln!(
                    "{}",
                    serde_json::json!({"event": "started", "job": job_id,
                        "operation": self.operation.as_str(), "total": total, "done": done})
                );
            }
        }
    }

    fn finished(&self, update: &DeviceUpdate) {
        if self.keep_finished_at && matches!(update.state, DeviceState::Done | DeviceState::Failed)
        {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            self.finished_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(update.device_id.to_string(), now);
        }
        if update.state == DeviceState::Failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(update.state, DeviceState::Done | DeviceState::Failed) {
            self.done.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = &self.bar {
                b.inc(1);
            }
        }
        if self.bar.is_none() {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(1) {
                *last = Instant::now();
                drop(last);
                self.line("progress");
            }
        }
    }

    fn retrying(&self, devices: usize, error: &idbridge_core::Error, delay: Duration) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{}: retrying {devices} in {delay:.1?} ({})",
                self.operation,
                error.kind()
            ));
        }
    }

    fn cancelled(&self) -> bool {
        interrupt_requested()
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (SIGINT) was pressed since [`catch_interrupt`].
pub fn interrupt_requested() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// Catches Ctrl-C for a job run: the first one asks the run to stop starting calls (calls in
/// flight finish and are recorded); a second one exits at once (the journal still holds every
/// call's write-ahead mark, so the next run looks the unknown ones up).
pub fn catch_interrupt() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The handler is installed here, before the job starts, not when the task first runs.
        #[cfg(unix)]
        let mut sigint =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%e, "cannot catch Ctrl-C; it will kill the run");
                    return;
                }
            };
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut next = async || sigint.recv().await.is_some();
            #[cfg(not(unix))]
            let mut next = async || tokio::signal::ctrl_c().await.is_ok();
            if !next().await {
                return;
            }
            INTERRUPTED.store(true, Ordering::Release);
            eprintln!(
                "idbridge: stopping: no new calls; waiting for the calls in flight (Ctrl-C again \
                 to quit now)"
            );
            if next().await {
                std::process::exit(130);
            }
        });
    });
}

/// Progress of a read-only pass over devices (the lookups of `diff`, `--dry-run` and the
/// deprovision plan, the verification of `inspect`): a bar on a terminal, a JSON line a second
/// otherwise.
pub struct PlanBar {
    label: &'static str,
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: AtomicU64,
    start: Instant,
    last: Mutex<Instant>,
}

impl PlanBar {
    /// A bar of `total` steps named `label`.
    pub fn new(label: &'static str, total: u64) -> Arc<Self> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(label);
            b
        });
        Arc::new(PlanBar {
            label,
            bar,
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
            last: Mutex::new(Instant::now()),
        })
    }

    /// One step done.
    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(b) => b.set_position(done.min(self.total)),
            None => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= Duration::from_secs(1) {
                    *last = Instant::now();
                    drop(last);
                    self.line("progress");
                }
            }
        }
    }

    /// The callback for [`idbridge::app::TargetRun::diff_with_progress`].
    pub fn hook(self: &Arc<Self>) -> LookupHook {
        let me = Arc::clone(self);
        Arc::new(move || me.inc())
    }

    /// Closes the bar (or prints the last JSON line).
    pub fn done(&self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => self.line("finished"),
        }
    }

    fn line(&self, event: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        eprintln!(
            "{}",
            serde_json::json!({"event": event, "operation": self.label, "total": self.total,
                "done": self.done.load(Ordering::Relaxed).min(self.total),
                "elapsed_secs": (elapsed * 10.0).round() / 10.0})
        );
    }
}
