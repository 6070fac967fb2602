//! The backfill plan: which devices are missing from a target, present and identical, present
//! but different, and (where the target can list) extra in it. Read-only: `diff` and
//! `provision --dry-run` change nothing.

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;

use super::Engine;
use super::call::{Verdict, classify};
use crate::connector::RemoteDevice;
use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceIdentity};

/// Where a device stands in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DiffStatus {
    /// Not in the target: provisioning would create it.
    Missing,
    /// In the target as idbridge would create it.
    Identical,
    /// In the target, but different.
    Different,
    /// In the target, not in the input.
    Extra,
    /// The lookup failed.
    Error,
}

/// One line of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    /// The device, when known (an extra remote device may not tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Its status.
    pub status: DiffStatus,
    /// Where it came from (input devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What the target holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteDevice>,
    /// What differs, or why the lookup failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// The plan, input devices first in input order, then extras.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    /// Every line.
    pub entries: Vec<DiffEntry>,
    /// Missing devices.
    pub missing: u64,
    /// Identical devices.
    pub identical: u64,
    /// Different devices.
    pub different: u64,
    /// Extra remote devices (only when `listed`).
    pub extra: u64,
    /// Failed lookups.
    pub errors: u64,
    /// Whether the target was listed for extras.
    pub listed: bool,
}

impl Engine {
    /// Looks every device up (paced, concurrent, retried) and, where the target can list,
    /// finds the extras. Every call goes through the engine's call path, retries from one
    /// budget for the whole plan. A job-stopping error (credentials, permissions, the target
    /// disabled) stops the plan: no further call starts and the error is returned.
    pub async fn diff(&self, devices: &[DeviceIdentity]) -> Result<DiffReport> {
        let mut entries = Vec::with_capacity(devices.len());
        let input = futures::stream::iter(devices.iter().cloned().map(Ok)).boxed();
        let mut report = self
            .plan(input, devices.len(), &mut |e| {
                entries.push(e);
                Ok(())
            })
            .await?;
        report.entries = entries;
        Ok(report)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// [`Engine::diff`] for devices that arrive as a stream (a million-device input): each
    /// entry is handed to `on_entry` as it is decided, in input order, then the extras; the
    /// report returned has the counts and no entries. Holds the lookups in flight and one
    /// 32-byte key per input device (to tell the extras), not the devices.
    pub async fn diff_each(
        &self,
        devices: BoxStream<'_, Result<DeviceIdentity>>,
        on_entry: &mut (dyn FnMut(DiffEntry) -> Result<()> + Send),
    ) -> Result<DiffReport> {
        // The length of a stream is not known: the budget of a million-device plan.
        self.plan(devices, 1 << 20, on_entry).await
    }

    /// The plan of both: every lookup and list page through the engine's call path, retries
    /// from one budget sized for `calls` lookups; a job-stopping error stops the plan.
    async fn plan(
        &self,
        devices: BoxStream<'_, Result<DeviceIdentity>>,
        calls: usize,
        on_entry: &mut (dyn FnMut(DiffEntry) -> Result<()> + Send),
    ) -> Result<DiffReport> {
        let caller = &self.caller;
        let budget = &caller.budget(calls);
        let concurrency = match self.caps.max_concurrency {
            0 => self.opts.concurrency.max(1),
            n => self.opts.concurrency.clamp(1, n),
        };
        let mut report = DiffReport::default();
        let mut known: Vec<[u8; 32]> = Vec::new();
        let stop: &std::sync::Mutex<Option<Error>> = &std::sync::Mutex::new(None);
        let stopped = || lock(stop).is_some();
        let mut entries = devices
            .take_while(|_| futures::future::ready(!stopped()))
            .map(|d| async move {
                let d = d?;
                let r = caller.lookup_within(budget, &d).await;
                if let Err(e) = &r
                    && classify(e) == Verdict::Stop
                {
                    lock(stop).get_or_insert_with(|| e.clone());
                }
                Ok::<_, crate::error::Error>((id_key(&d.device_id), entry_for(&d, r)))
            })
            .buffered(concurrency);
        while let Some(next) = entries.next().await {
            if let Some(e) = lock(stop).take() {
                return Err(e);
            }
            let (key, entry) = next?;
            known.push(key);
            count(&mut report, &entry.status);
            on_entry(entry)?;
        }
        drop(entries);
        if let Some(e) = lock(stop).take() {
            return Err(e);
        }
        if self.caps.supports_list {
            known.sort_unstable();
            let mut cursor = None;
            loop {
                let c = &cursor;
                let page = caller
                    .retried(budget, None, "list", |ctx| async move {
                        self.connector.list(&ctx, c.clone()).await
                    })
                    .await?;
                for remote in page.devices {
                    let extra = remote
                        .device_id
                        .as_ref()
                        .is_some_and(|id| known.binary_search(&id_key(id)).is_err());
                    if extra {
                        report.extra += 1;
                        on_entry(DiffEntry {
                            device_id: remote.device_id.clone(),
                            status: DiffStatus::Extra,
                            source: None,
                            remote: Some(remote),
                            details: Vec::new(),
                        })?;
                    }
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            report.listed = true;
        }
        Ok(report)
    }
}

/// The plan's line for input device `d` from its lookup.
fn entry_for(d: &DeviceIdentity, r: Result<Option<RemoteDevice>>) -> DiffEntry {
    let (status, remote, details) = match r {
        Ok(None) => (DiffStatus::Missing, None, Vec::new()),
        Ok(Some(remote)) => {
            let mut details = remote.differences.clone();
            if let Some(id) = &remote.device_id
                && *id != d.device_id
            {
                details.push(format!("holds certificate {id}"));
            }
            if details.is_empty() {
                (DiffStatus::Identical, Some(remote), details)
            } else {
                (DiffStatus::Different, Some(remote), details)
            }
        }
        Err(e) => (DiffStatus::Error, None, vec![e.to_string()]),
    };
    DiffEntry {
        device_id: Some(d.device_id.clone()),
        status,
        source: Some(d.source.to_string()),
        remote,
        details,
    }
}

fn count(report: &mut DiffReport, status: &DiffStatus) {
    match status {
        DiffStatus::Missing => report.missing += 1,
        DiffStatus::Identical => report.identical += 1,
        DiffStatus::Different => report.different += 1,
        DiffStatus::Extra => report.extra += 1,
        DiffStatus::Error => report.errors += 1,
    }
}

/// 32 bytes naming a device id: the SHA-256 it is (hex), else the SHA-256 of the id.
fn id_key(id: &DeviceId) -> [u8; 32] {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(id.as_str(), &mut out).is_err() {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_str().as_bytes());
        out.copy_from_slice(d.as_ref());
    }
    out
}
