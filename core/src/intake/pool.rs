//! The verification pool behind [`Intake`](super::Intake): one reader thread imports the inputs
//! and does the order-dependent checks, in chunks; `workers` threads judge the chunks; the
//! consumer takes the results back chunk by chunk in input order.
//!
//! Order without a reorder buffer: for every chunk the reader makes a one-shot channel, queues
//! its receiving end on a bounded "order" channel, then hands the chunk and the sending end to
//! the workers. The consumer waits on the receivers in the order they were queued. The order
//! channel's capacity bounds the chunks in flight, so memory is bounded whatever the input size,
//! and a slow consumer stops the reader (back-pressure). Dropping the consumer closes the order
//! channel: the reader stops at its next chunk and the workers run dry.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::{Checked, ManifestCache, Reader, RejectKind, Rejected, Work, judge};
use crate::identity::{Source, VendorAttributes};
use crate::trust::Verifier;

/// Entries per chunk: large enough that channel traffic is noise beside ~100 µs of
/// verification per entry, small enough that a chunk is a few hundred KiB at most.
pub(super) const CHUNK: usize = 64;
/// Chunks in flight (queued, being judged or waiting for the consumer) per worker.
const IN_FLIGHT_PER_WORKER: usize = 4;

type Judged = Vec<std::result::Result<Checked, Rejected>>;
type Job = (Vec<Work>, SyncSender<Judged>);

/// The running pool, seen from the consumer.
pub(super) struct Pool {
    order: Receiver<Receiver<Judged>>,
    ready: VecDeque<std::result::Result<Checked, Rejected>>,
}

impl Pool {
    /// Starts the reader and `workers` verifier threads.
    pub(super) fn start(
        reader: Reader,
        verifier: Arc<Verifier>,
        workers: usize,
        chunk: usize,
    ) -> Pool {
        let workers = workers.max(1);
        let chunk = chunk.max(1);
        let (order_tx, order) = mpsc::sync_channel(workers * IN_FLIGHT_PER_WORKER);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..workers {
            let jobs = Arc::clone(&job_rx);
            let verifier = Arc::clone(&verifier);
            let spawned = std::thread::Builder::new()
                .name(format!("intake-verify-{i}"))
                .spawn(move || work(&jobs, &verifier));
            if let Err(e) = spawned {
                // Fewer workers is slower, not wrong; with none at all the job channel is
                // closed and the reader judges (see `read`).
                tracing::warn!(%e, "cannot start a verification thread");
            }
        }
        // Only the workers hold the job receiver now.
        drop(job_rx);
        let spawned = std::thread::Builder::new()
            .name("intake-read".to_owned())
            .spawn(move || read(reader, chunk, &order_tx, &job_tx, &verifier));
        let mut ready = VecDeque::new();
        if let Err(e) = spawned {
            // The order channel's sender is gone with the closure, so the stream ends after
            // this one item.
            ready.push_back(Err(internal(format!(
                "cannot start the intake reader thread: {e}"
            ))));
        }
        Pool { order, ready }
    }

    /// The next item in input order; `None` at the end.
    pub(super) fn next(&mut self) -> Option<std::result::Result<Checked, Rejected>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            let chunk = self.order.recv().ok()?;
            match chunk.recv() {
                Ok(items) => self.ready.extend(items),
                // A worker died (a panic while judging): say so rather than lose the chunk
                // silently; the other chunks still come.
                Err(_) => {
                    return Some(Err(internal(
                        "a verification thread failed; the entries it held were not judged"
                            .to_owned(),
                    )));
                }
            }
        }
    }
}

/// The reader thread: chunks of sequentially checked work, queued in order.
fn read(
    mut reader: Reader,
    chunk: usize,
    order: &SyncSender<Receiver<Judged>>,
    jobs: &mpsc::Sender<Job>,
    verifier: &Verifier,
) {
    loop {
        let mut works = Vec::with_capacity(chunk);
        while works.len() < chunk {
            match reader.next_work() {
                Some(w) => works.push(w),
                None => break,
            }
        }
        if works.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        // Blocks while the pool is full; fails once the consumer is gone.
        if order.send(rx).is_err() {
            return;
        }
        if let Err(mpsc::SendError((works, tx))) = jobs.send((works, tx)) {
            // No worker left at all (none could start, or all died): judge here.
            let mut cache = None;
            let _ = tx.send(judge_all(verifier, works, &mut cache));
        }
    }
}

/// A worker thread: judges chunks until the reader is done.
fn work(jobs: &Mutex<Receiver<Job>>, verifier: &Verifier) {
    loop {
        // A poisoned lock means another worker panicked while holding it, which `recv` cannot
        // do; carry on with the receiver either way.
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok((works, tx)) = job else { return };
        let mut cache: ManifestCache = None;
        // The consumer may have gone: nothing to do with the result then.
        let _ = tx.send(judge_all(verifier, works, &mut cache));
    }
}

fn internal(reason: String) -> Rejected {
    Rejected {
        source: Source {
            file: "<intake>".to_owned(),
            line: None,
            entry: None,
        },
        vendor: VendorAttributes::default(),
        kind: RejectKind::InputUnusable,
        reason: format!("internal error: {reason}"),
    }
}

// Same sizes as `judge`: see there.
#[allow(clippy::result_large_err)]
fn judge_all(verifier: &Verifier, works: Vec<Work>, cache: &mut ManifestCache) -> Judged {
    works
        .into_iter()
        .map(|w| judge(verifier, w, cache))
        .collect()
}
