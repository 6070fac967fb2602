//! Holding leases while working: [`Leaseholder`] takes leases in the [journal](crate::journal),
//! renews them every third of their time to live, and gives them back on a clean stop.
//!
//! A holder that cannot renew (the database is gone, or another process took a lease after it
//! expired) marks itself [lost](Leaseholder::lost): the run it guards starts no further call
//! (the engine asks [`Progress::cancelled`](crate::engine::Progress::cancelled)), so a stalled
//! process never drives a job another has taken over. Only the renewal ticks use the wall
//! clock; the expiry rule itself is in the journal and tested there on injected time.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Result;
use crate::journal::{Journal, Lease, LeaseClaim, now_ms};

/// The default lease time to live: a process that died is replaced after this long.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// `KIND:HOST:PID`: who holds a lease, as `status` shows it and refusals name it.
pub fn owner_name(kind: &str) -> String {
    format!("{kind}:{}:{}", host_name(), std::process::id())
}

/// Whether `owner` (`KIND:HOST:PID...`) names a process of this host that no longer runs: its
/// lease is abandoned (a `kill -9`'d station rerun at once need not wait for the expiry). A
/// recycled PID only makes us wait for the expiry as before.
pub fn holder_is_dead_here(owner: &str) -> bool {
    let mut parts = owner.splitn(3, ':');
    let (Some(_kind), Some(host), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != host_name() {
        return false;
    }
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match pid.parse::<u32>() {
        Ok(pid) if pid != std::process::id() => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                && std::path::Path::new("/proc/self").exists()
        }
        _ => false,
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Takes `name`: granted, or taken over from a holder that died on this host (the upsert's
/// expiry test run at the holder's own expiry, so it succeeds only if nobody renewed it).
async fn take(journal: &dyn Journal, name: &str, owner: &str, ttl: Duration) -> Result<LeaseClaim> {
    let claim = journal
        .acquire_lease(name, owner, ttl_ms(ttl), now_ms())
        .await?;
    match claim {
        LeaseClaim::Held(held) if holder_is_dead_here(&held.owner) => {
            tracing::warn!(lease = %name, holder = %held.owner, "taking over the lease of a process that died");
            journal
                .acquire_lease(name, owner, ttl_ms(ttl), held.expires_ms)
                .await
        }
        other => Ok(other),
    }
}

/// Leases one owner holds and renews in the background until [`release`](Self::release)d or
/// dropped (then they expire on their own).
#[derive(Debug)]
pub struct Leaseholder {
    journal: Arc<dyn Journal>,
    owner: String,
    ttl: Duration,
    names: Arc<Mutex<Vec<String>>>,
    lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
    deadline: tokio::task::JoinHandle<()>,
}

impl Leaseholder {
    /// Starts renewing `names`, which `owner` was granted already (by `claim_job` or
    /// `acquire_lease`).
    pub fn hold(journal: Arc<dyn Journal>, owner: &str, names: Vec<String>, ttl: Duration) -> Self {
        let names = Arc::new(Mutex::new(names));
        let lost = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(AtomicI64::new(now_ms()));
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&journal),
            owner.to_owned(),
            Arc::clone(&names),
            Arc::clone(&lost),
            Arc::clone(&renewed),
            ttl,
        ));
        let deadline = tokio::spawn(deadline(owner.to_owned(), Arc::clone(&lost), renewed, ttl));
        Leaseholder {
            journal,
            owner: owner.to_owned(),
            ttl,
            names,
            lost,
            heartbeat,
            deadline,
        }
    }

    /// Takes lease `name` for `owner` and starts renewing it; `Err(holder)` when another live
    /// process holds it.
    pub async fn acquire(
        journal: Arc<dyn Journal>,
        owner: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Self, Lease>> {
        match take(&*journal, name, owner, ttl).await? {
            LeaseClaim::Granted(_) => {
                Ok(Ok(Self::hold(journal, owner, vec![name.to_owned()], ttl)))
            }
            LeaseClaim::Held(holder) => Ok(Err(holder)),
        }
    }

    /// Takes one more lease, waiting (polling every `poll`) while another process holds it;
    /// `waiting` is told who, each time.
    pub async fn wait_for(
        &self,
        name: &str,
        poll: Duration,
        waiting: &(dyn Fn(&Lease) + Send + Sync),
    ) -> Result<()> {
        loop {
            match take(&*self.journal, name, &self.owner, self.ttl).await? {
                LeaseClaim::Granted(_) => {
                    self.names
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(name.to_owned());
                    return Ok(());
                }
                LeaseClaim::Held(holder) => {
                    waiting(&holder);
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    /// Who holds these leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// True once a renewal showed that a lease is gone (or could not be renewed before it
    /// expired): stop starting calls.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The flag behind [`lost`](Self::lost), for a progress hook.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lost)
    }

    /// Stops renewing and gives every lease back (newest first). A lease that cannot be given
    /// back (the database is gone) expires on its own.
    pub async fn release(self) {
        self.heartbeat.abort();
        self.deadline.abort();
        let names: Vec<String> = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for name in names.iter().rev() {
            if let Err(e) = self.journal.release_lease(name, &self.owner).await {
                tracing::warn!(lease = %name, error = %e, "cannot release a lease; it will expire");
            }
        }
    }
}

impl Drop for Leaseholder {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.deadline.abort();
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

async fn heartbeat(
    journal: Arc<dyn Journal>,
    owner: String,
    names: Arc<Mutex<Vec<String>>>,
    lost: Arc<AtomicBool>,
    renewed_at: Arc<AtomicI64>,
    ttl: Duration,
) {
    let period = (ttl / 3).max(Duration::from_millis(10));
    let mut renewed = now_ms();
    loop {
        tokio::time::sleep(period).await;
        let current: Vec<String> = names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = now_ms();
        let mut ok = true;
        for name in &current {
            match journal.renew_lease(name, &owner, ttl_ms(ttl), now).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(lease = %name, owner = %owner, "lease taken over by another process; stopping");
                    lost.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot renew a lease");
                    ok = false;
                }
            }
        }
        if ok {
            renewed = now;
            renewed_at.store(now, Ordering::Release);
        } else if now_ms() >= renewed + ttl_ms(ttl) {
            tracing::warn!(owner = %owner, "leases expired unrenewed; stopping");
            lost.store(true, Ordering::Release);
            return;
        }
    }
}

/// Marks the leases lost once the last renewal is 5/6 of the TTL old, whatever the renewal in
/// progress is doing: a renewal stuck on an unreachable database must not let this process
/// start calls after another process could have taken its leases over (they expire at the
/// renewal's time + TTL).
async fn deadline(owner: String, lost: Arc<AtomicBool>, renewed: Arc<AtomicI64>, ttl: Duration) {
    let margin = ttl_ms(ttl) / 6;
    loop {
        let due = renewed.load(Ordering::Acquire) + ttl_ms(ttl) - margin;
        let now = now_ms();
        if now >= due {
            if renewed.load(Ordering::Acquire) + ttl_ms(ttl) - margin <= now {
                tracing::warn!(owner = %owner, "leases not renewed in time; stopping");
                lost.store(true, Ordering::Release);
                return;
            }
            continue;
        }
        let wait = u64::try_from(due - now).unwrap_or(0).max(1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Takes a job's leases the way every front end does: the job lease first (refused, naming the
/// holder, when another live process runs the job), then the target lease (waited for: at most
/// one process drives a target, so its pacer holds the cloud's quota). `waiting` is told who
/// holds the target while this waits.
pub async fn guard_job(
    journal: Arc<dyn Journal>,
    owner: &str,
    job_id: &str,
    target: &str,
    ttl: Duration,
    waiting: &(dyn Fn(&Lease) + Send + Sync),
) -> Result<std::result::Result<Leaseholder, Lease>> {
    let holder = match Leaseholder::acquire(journal, owner, &crate::journal::job_lease(job_id), ttl)
        .await?
    {
        Ok(h) => h,
        Err(held) => return Ok(Err(held)),
    };
    let poll = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    holder
        .wait_for(&crate::journal::target_lease(target), poll, waiting)
        .await?;
    Ok(Ok(holder))
}

/// A [`Progress`](crate::engine::Progress) that forwards to another and is cancelled once the
/// leases are lost or a shutdown was asked for.
pub struct LeasedProgress<'a> {
    /// Where progress goes.
    pub inner: &'a dyn crate::engine::Progress,
    /// [`Leaseholder::lost_flag`].
    pub lost: Arc<AtomicBool>,
    /// Set on SIGTERM / Ctrl-C: finish the calls in flight, start no more.
    pub shutdown: Arc<AtomicBool>,
}

impl crate::engine::Progress for LeasedProgress<'_> {
    fn started(&self, job_id: &str, total: u64, done: u64) {
        self.inner.started(job_id, total, done);
    }

    fn finished(&self, update: &crate::journal::DeviceUpdate) {
        self.inner.finished(update);
    }

    fn retrying(&self, devices: usize, error: &crate::error::Error, delay: Duration) {
        self.inner.retrying(devices, error, delay);
    }

    fn cancelled(&self) -> bool {
        self.lost.load(Ordering::Acquire)
            || self.shutdown.load(Ordering::Acquire)
            || self.inner.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_processes_of_this_host_are_abandoned() {
        let me = owner_name("cli");
        assert!(!holder_is_dead_here(&me), "this process is alive");
        assert!(!holder_is_dead_here(&format!("{me}#3")));
        let host = host_name();
        // PID 1 always runs.
        assert!(!holder_is_dead_here(&format!("cli:{host}:1#0")));
        // Beyond the kernel's pid_max: never a live process.
        assert!(holder_is_dead_here(&format!("cli:{host}:4194305#0")));
        assert!(holder_is_dead_here(&format!("worker:{host}:4194305/1")));
        assert!(
            !holder_is_dead_here("cli:elsewhere:4194305#0"),
            "another host"
        );
        assert!(!holder_is_dead_here("someone"));
    }
}
