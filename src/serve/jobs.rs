//! Provisioning jobs of the receiver: every `provision` request runs as a job in the
//! background, step by step; the request waits for it up to the sync deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idbridge_http::ItemResult;
use tokio::sync::watch;

/// Jobs kept for `status`, at most this many (oldest finished ones evicted first).
const MAX_JOBS: usize = 1000;
/// Finished jobs are kept this long.
const KEEP: Duration = Duration::from_secs(3600);

/// One job: the refs in request order and their results as they arrive.
#[derive(Debug)]
pub struct Job {
    /// The job id.
    pub id: String,
    refs: Vec<String>,
    results: Mutex<Vec<Option<ItemResult>>>,
    done: watch::Sender<bool>,
    finished_at: Mutex<Option<Instant>>,
}

impl Job {
    /// Records the final result of item `idx`.
    pub fn set(&self, idx: usize, result: ItemResult) {
        if let Some(slot) = lock(&self.results).get_mut(idx) {
            *slot = Some(result);
        }
    }

    /// Marks the job finished.
    pub fn finish(&self) {
        *lock(&self.finished_at) = Some(Instant::now());
        self.done.send_replace(true);
    }

    /// Waits until finished or `deadline` passes; true when finished.
    pub async fn wait(&self, deadline: Duration) -> bool {
        let mut rx = self.done.subscribe();
        if *rx.borrow() {
            return true;
        }
        matches!(
            tokio::time::timeout(deadline, rx.wait_for(|d| *d)).await,
            Ok(Ok(_))
        )
    }

    /// Whether every item has its final result.
    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// The answer so far: final results, and `unfinished(ref)` for the rest.
    pub fn snapshot(&self, unfinished: impl Fn(&str) -> ItemResult) -> Vec<ItemResult> {
        let g = lock(&self.results);
        self.refs
            .iter()
            .zip(g.iter())
            .map(|(r, res)| res.clone().unwrap_or_else(|| unfinished(r)))
            .collect()
    }
}

/// The receiver's jobs.
#[derive(Debug, Default, Clone)]
pub struct Jobs(Arc<Mutex<HashMap<String, Arc<Job>>>>);

impl Jobs {
    /// A new job over `refs`, with slots pre-filled from `known` (items already answered,
    /// e.g. undecodable certificates).
    pub fn create(&self, refs: Vec<String>, known: Vec<Option<ItemResult>>) -> Arc<Job> {
        let id = new_id();
        let (done, _) = watch::channel(false);
        let job = Arc::new(Job {
            id: id.clone(),
            refs,
            results: Mutex::new(known),
            done,
            finished_at: Mutex::new(None),
        });
        let mut g = lock(&self.0);
        g.retain(|_, j| lock(&j.finished_at).is_none_or(|t| t.elapsed() < KEEP));
        if g.len() >= MAX_JOBS {
            let oldest = g
                .values()
                .filter_map(|j| lock(&j.finished_at).map(|t| (t, j.id.clone())))
                .min()
                .map(|(_, id)| id);
            if let Some(o) = oldest {
                g.remove(&o);
            }
        }
        g.insert(id, Arc::clone(&job));
        job
    }

    /// A job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.0).get(id).cloned()
    }
}

fn new_id() -> String {
    let mut b = [0u8; 12];
    // RNG failure leaves zeros; ids then still differ by the timestamp prefix.
    let _ = aws_lc_rs::rand::fill(&mut b);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("job-{t:x}-{}", hex::encode(b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the data is still consistent (single writes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}
