//! The embedded journal: one SQLite file in WAL mode, owned by one writer thread.
//!
//! Every request goes to the thread through a channel. Writes queued while the previous group
//! committed are committed together in one transaction (group commit), so 100,000 devices cost a
//! few hundred transactions, not 300,000. `synchronous = NORMAL` in WAL mode survives a killed
//! process (the WAL is in the OS's page cache); only a power loss can lose those commits. A
//! group holding a write-ahead record (`durable = true`: a device marked in flight before a
//! non-idempotent call) is committed with `synchronous = FULL`, so the WAL is synced before the
//! call is made: a power loss can never forget that a call may have gone out. A deferred write
//! that fails is reported to the next caller who waits: a durable `record` or `flush`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    DeviceChunks, DeviceRecord, DeviceState, DeviceUpdate, JobInfo, JobKeyBuilder, JobSpec,
    JobState, Journal, Lease, LeaseClaim, OpenedJob, Operation, Outcome, StateCounts, job_lease,
    schema, target_lease,
};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{BatchRef, DeviceId, DeviceIdentity, Source, VendorAttributes};

/// The SQLite journal. Cheap to share (`Arc`); dropping the last handle stops its thread after
/// committing what was queued.
pub struct SqliteJournal {
    tx: mpsc::Sender<Cmd>,
    path: PathBuf,
    synced: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.path)
            .finish()
    }
}

type ReadFn = Box<dyn FnOnce(&mut Connection) + Send>;

enum Cmd {
    Write {
        job: String,
        updates: Vec<DeviceUpdate>,
        ack: Option<oneshot::Sender<Result<()>>>,
    },
    /// Runs on the writer thread after everything queued before it is committed.
    Exec(ReadFn),
    /// Answers once everything queued before it is committed, with the failure of any
    /// deferred write since the last report.
    Flush(oneshot::Sender<Result<()>>),
}

impl SqliteJournal {
    /// Opens (creating if needed) the journal file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("cannot create the journal directory {}", dir.display()),
                )
                .with_source(e)
            })?;
        }
        let conn = Connection::open(&path).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("cannot open the journal {}", path.display()),
            )
            .with_source(e)
        })?;
        init(&conn).map_err(|e| db_error(&path, e))?;
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let synced = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&synced);
        std::thread::Builder::new()
            .name("idbridge-journal".into())
            .spawn(move || writer(conn, rx, p, &counter))
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot start the journal thread").with_source(e)
            })?;
        Ok(SqliteJournal { tx, path, synced })
    }

    /// Groups committed with `synchronous = FULL` (those holding a write-ahead record).
    pub fn synced_commits(&self) -> u64 {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Exec(Box::new(move |c| {
                let _ = tx.send(f(c));
            })))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

#[async_trait]
impl Journal for SqliteJournal {
    async fn open_job(&self, spec: &JobSpec, devices: &[DeviceIdentity]) -> Result<OpenedJob> {
        let spec = spec.clone();
        let rows: Vec<NewDevice> = devices.iter().map(NewDevice::of).collect::<Result<_>>()?;
        let path = self.path.clone();
        self.exec(move |c| open_job(c, &spec, &rows).map_err(|e| db_error(&path, e)))
            .await?
    }

    async fn open_job_streamed(
        &self,
        operation: Operation,
        target: &str,
        params: serde_json::Value,
        mut chunks: DeviceChunks<'_>,
    ) -> Result<OpenedJob> {
        use futures::StreamExt;
        // Staged under a job of its own, invisible until sealed: the key is known only once
        // the last device is read.
        let id = format!("job-{:016x}", rand::random::<u64>());
        let path = self.path.clone();
        {
            let (id, target, path) = (id.clone(), target.to_owned(), path.clone());
            let params = params.to_string();
            self.exec(move |c| {
                stage_job(c, &id, operation, &target, &params).map_err(|e| db_error(&path, e))
            })
            .await?;
        }
        let mut key = JobKeyBuilder::new(operation, target);
        let mut seq = 0u64;
        let staged: Result<()> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                for d in &chunk {
                    key.add(&d.device_id);
                }
                let rows: Vec<NewDevice> =
                    chunk.iter().map(NewDevice::of).collect::<Result<_>>()?;
                drop(chunk);
                let first = seq;
                seq += rows.len() as u64;
                let (id, path) = (id.clone(), path.clone());
                self.exec(move |c| {
                    append_devices(c, &id, first, &rows).map_err(|e| db_error(&path, e))
                })
                .await?;
            }
            Ok(())
        }
        .await;
        let key = key.finish();
        let (sid, spath) = (id.clone(), path.clone());
        if let Err(e) = staged {
            let _ = self
                .exec(move |c| discard_staged(c, &sid).map_err(|e| db_error(&spath, e)))
                .await;
            return Err(e);
        }
        let target = target.to_owned();
        self.exec(move |c| {
            seal_job(c, &id, &key, operation, &target).map_err(|e| db_error(&path, e))
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<JobInfo>> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.exec(move |c| load_jobs(c, Some(&id)).map_err(|e| db_error(&path, e)))
            .await?
            .map(|mut v| v.pop())
    }

    async fn jobs(&self) -> Result<Vec<JobInfo>> {
        let path = self.path.clone();
        self.exec(move |c| load_jobs(c, None).map_err(|e| db_error(&path, e)))
            .await?
    }

    async fn devices(&self, id: &str) -> Result<Vec<DeviceRecord>> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.exec(move |c| load_devices(c, &id).map_err(|e| db_error(&path, e)))
            .await?
    }

    async fn identities(&self, id: &str) -> Result<Vec<DeviceIdentity>> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.exec(move |c| load_identities(c, &id).map_err(|e| db_error(&path, e)))
            .await?
    }

    async fn devices_page(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.exec(move |c| load_devices_page(c, &id, after, limit).map_err(|e| db_error(&path, e)))
            .await?
    }

    async fn records_of(&self, id: &str, ids: &[DeviceId]) -> Result<Vec<DeviceRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id = id.to_owned();
        let ids = ids.to_vec();
        let path = self.path.clone();
        self.exec(move |c| load_records_of(c, &id, &ids).map_err(|e| db_error(&path, e)))
            .await?
    }

    async fn identities_page(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, DeviceIdentity)>> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.exec(move |c| {
            load_identities_page(c, &id, after, limit).map_err(|e| db_error(&path, e))
        })
        .await?
    }

    async fn record(&self, id: &str, updates: Vec<DeviceUpdate>, durable: bool) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let (ack, rx) = if durable {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.tx
            .send(Cmd::Write {
                job: id.to_owned(),
                updates,
                ack,
            })
            .map_err(|_| closed())?;
        match rx {
            Some(rx) => rx.await.map_err(|_| closed())?,
            None => Ok(()),
        }
    }

    async fn set_job_state(&self, id: &str, state: JobState) -> Result<()> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.exec(move |c| {
            c.execute(
                "UPDATE jobs SET state = ?1, updated = ?2 WHERE id = ?3",
                params![state.as_str(), now(), id],
            )
            .map(|_| ())
            .map_err(|e| db_error(&path, e))
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Flush(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<LeaseClaim> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        let path = self.path.clone();
        self.exec(move |c| {
            acquire(c, &name, &owner, ttl_ms, now_ms).map_err(|e| db_error(&path, e))
        })
        .await
    }

    async fn renew_lease(&self, name: &str, owner: &str, ttl_ms: i64, now_ms: i64) -> Result<bool> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        let path = self.path.clone();
        self.exec(move |c| {
            c.execute(
                schema::RENEW_LEASE,
                rusqlite::named_params! {"$1": name, "$2": owner, "$3": now_ms + ttl_ms},
            )
            .map(|n| n == 1)
            .map_err(|e| db_error(&path, e))
        })
        .await
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        let path = self.path.clone();
        self.exec(move |c| {
            c.execute(
                schema::RELEASE_LEASE,
                rusqlite::named_params! {"$1": name, "$2": owner},
            )
            .map(|_| ())
            .map_err(|e| db_error(&path, e))
        })
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let name = name.to_owned();
        let path = self.path.clone();
        self.exec(move |c| read_lease(c, &name).map_err(|e| db_error(&path, e)))
            .await
    }

    async fn claim_job(
        &self,
        owner: &str,
        targets: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<JobInfo>> {
        let owner = owner.to_owned();
        let targets = targets.to_vec();
        let path = self.path.clone();
        let id = self
            .exec(move |c| {
                claim(c, &owner, &targets, ttl_ms, now_ms).map_err(|e| db_error(&path, e))
            })
            .await?;
        match id {
            Some(id) => self.job(&id).await,
            None => Ok(None),
        }
    }
}

fn acquire(
    c: &Connection,
    name: &str,
    owner: &str,
    ttl_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<LeaseClaim> {
    c.execute(
        schema::ACQUIRE_LEASE,
        rusqlite::named_params! {"$1": name, "$2": owner, "$3": now_ms + ttl_ms, "$4": now_ms},
    )?;
    let lease = read_lease(c, name)?.unwrap_or(Lease {
        name: name.to_owned(),
        owner: String::new(),
        expires_ms: 0,
    });
    Ok(if lease.owner == owner {
        LeaseClaim::Granted(lease)
    } else {
        LeaseClaim::Held(lease)
    })
}

fn read_lease(c: &Connection, name: &str) -> rusqlite::Result<Option<Lease>> {
    c.query_row(
        "SELECT owner, expires_ms FROM leases WHERE name = ?1",
        params![name],
        |r| {
            Ok(Lease {
                name: name.to_owned(),
                owner: r.get(0)?,
                expires_ms: r.get(1)?,
            })
        },
    )
    .optional()
}

/// In one write transaction: the oldest running job of `targets` whose job and target leases
/// are free, both leases taken.
fn claim(
    c: &mut Connection,
    owner: &str,
    targets: &[String],
    ttl_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<Option<String>> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let candidates: Vec<(String, String)> = {
        let mut st = tx.prepare(
            "SELECT j.id, j.target FROM jobs j WHERE j.state = 'running'
             AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'job:' || j.id
                             AND l.owner <> ?1 AND l.expires_ms > ?2)
             AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'target:' || j.target
                             AND l.owner <> ?1 AND l.expires_ms > ?2)
             ORDER BY j.created, j.id",
        )?;
        st.query_map(params![owner, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let Some((id, target)) = candidates
        .into_iter()
        .find(|(_, t)| targets.iter().any(|x| x == t))
    else {
        return Ok(None);
    };
    for name in [target_lease(&target), job_lease(&id)] {
        if !matches!(
            acquire(&tx, &name, owner, ttl_ms, now_ms)?,
            LeaseClaim::Granted(_)
        ) {
            return Ok(None);
        }
    }
    tx.commit()?;
    Ok(Some(id))
}

struct NewDevice {
    device_id: String,
    der: Arc<[u8]>,
    vendor: String,
    source: String,
    source_display: String,
    batch_tag: Option<String>,
}

impl NewDevice {
    fn of(d: &DeviceIdentity) -> Result<Self> {
        Ok(NewDevice {
            device_id: d.device_id.as_str().to_owned(),
            der: Arc::clone(&d.der),
            vendor: serde_json::to_string(&d.vendor).map_err(json_error)?,
            source: serde_json::to_string(&d.source).map_err(json_error)?,
            source_display: d.source.to_string(),
            batch_tag: d.batch.as_ref().map(|b| b.tag().to_owned()),
        })
    }
}

fn init(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    // 64 MiB of page cache: a 100,000-device job's rows stay in memory.
    c.pragma_update(None, "cache_size", -65536)?;
    migrate(c)
}

/// Applies the migrations this file lacks, in one write transaction (several processes may open
/// the same file at once).
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        c.execute_batch(schema::VERSIONS_TABLE)?;
        let have: i64 = c.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        for m in schema::MIGRATIONS.iter().filter(|m| m.version > have) {
            c.execute_batch(m.sqlite)?;
            c.execute(
                "INSERT INTO schema_migrations (version, name, applied) VALUES (?1, ?2, ?3)",
                params![m.version, m.name, now()],
            )?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => c.execute_batch("COMMIT"),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    path: PathBuf,
    synced: &std::sync::atomic::AtomicU64,
) {
    // An error of a write nobody waits for is reported to the next writer who waits.
    let mut deferred: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut writes: Vec<Write> = Vec::new();
        let mut next = Some(first);
        let mut exec: Option<ReadFn> = None;
        let mut flush: Option<oneshot::Sender<Result<()>>> = None;
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write { job, updates, ack } => writes.push((job, updates, ack)),
                Cmd::Exec(f) => {
                    exec = Some(f);
                    break;
                }
                Cmd::Flush(ack) => {
                    flush = Some(ack);
                    break;
                }
            }
            if writes.len() >= 4096 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !writes.is_empty() {
            let write_ahead = writes.iter().any(|(_, _, ack)| ack.is_some());
            let result = commit(&mut conn, &writes, write_ahead).map_err(|e| e.to_string());
            if write_ahead && result.is_ok() {
                synced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let failure = result
                .err()
                .map(|e| format!("journal {}: {e}", path.display()));
            if let Some(f) = &failure {
                tracing::error!(error = %f, "journal write failed");
            }
            for (_, _, ack) in writes {
                match ack {
                    Some(ack) => {
                        let r = match failure.clone().or_else(|| deferred.take()) {
                            Some(f) => Err(Error::new(ErrorKind::Unexpected, f)),
                            None => Ok(()),
                        };
                        let _ = ack.send(r);
                    }
                    None => {
                        if let Some(f) = &failure {
                            deferred = Some(f.clone());
                        }
                    }
                }
            }
        }
        if let Some(f) = exec {
            f(&mut conn);
        }
        if let Some(ack) = flush {
            let r = match deferred.take() {
                Some(f) => Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("an earlier journal write failed: {f}"),
                )),
                None => Ok(()),
            };
            let _ = ack.send(r);
        }
    }
}

type Write = (
    String,
    Vec<DeviceUpdate>,
    Option<oneshot::Sender<Result<()>>>,
);

/// Commits one group; a group with a write-ahead record is synced to disk (`FULL`).
fn commit(conn: &mut Connection, writes: &[Write], write_ahead: bool) -> rusqlite::Result<()> {
    if write_ahead {
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    let r = commit_group(conn, writes);
    if write_ahead {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    r
}

fn commit_group(conn: &mut Connection, writes: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "UPDATE devices SET state = ?1, outcome = ?2, attempts = ?3, error_kind = ?4,
             reason = ?5, request_id = ?6, remote_name = COALESCE(?7, remote_name),
             resources = COALESCE(?8, resources), updated = ?11
             WHERE device_id = ?10 AND job = ?9",
        )?;
        let stamp = now();
        for (job, updates, _) in writes {
            for u in updates {
                let resources = if u.resources.is_empty() {
                    None
                } else {
                    serde_json::to_string(&u.resources).ok()
                };
                st.execute(params![
                    u.state.as_str(),
                    u.outcome.map(Outcome::as_str),
                    u.attempts,
                    u.error_kind,
                    u.reason,
                    u.request_id,
                    u.remote_name,
                    resources,
                    job,
                    u.device_id.as_str(),
                    stamp,
                ])?;
            }
        }
        let mut touch = tx.prepare_cached("UPDATE jobs SET updated = ?1 WHERE id = ?2")?;
        let mut last: Option<&str> = None;
        for (job, _, _) in writes {
            if last != Some(job.as_str()) {
                touch.execute(params![stamp, job])?;
                last = Some(job);
            }
        }
    }
    tx.commit()
}

fn open_job(
    c: &mut Connection,
    spec: &JobSpec,
    devices: &[NewDevice],
) -> rusqlite::Result<Result<OpenedJob>> {
    // One write transaction from the lookup to the insert: two processes opening the same
    // command at once get one job.
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT id FROM jobs WHERE key = ?1 AND operation = ?2 AND target = ?3
             AND state = 'running' ORDER BY created DESC LIMIT 1",
            params![spec.key, spec.operation.as_str(), spec.target],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Ok(Ok(OpenedJob { id, resumed: true }));
    }
    let id = format!("job-{:016x}", rand::random::<u64>());
    let stamp = now();
    let params_json = spec.params.to_string();
    tx.execute(
        "INSERT INTO jobs (id, key, operation, target, params, state, created, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?6)",
        params![
            id,
            spec.key,
            spec.operation.as_str(),
            spec.target,
            params_json,
            stamp
        ],
    )?;
    insert_devices(&tx, &id, 0, devices)?;
    tx.commit()?;
    Ok(Ok(OpenedJob { id, resumed: false }))
}

/// A job being opened from a stream: state `opening` (no front end lists it), key unknown.
fn stage_job(
    c: &mut Connection,
    id: &str,
    operation: Operation,
    target: &str,
    params: &str,
) -> rusqlite::Result<()> {
    let stamp = now();
    c.execute(
        "INSERT INTO jobs (id, key, operation, target, params, state, created, updated)
         VALUES (?1, ?1, ?2, ?3, ?4, 'opening', ?5, ?5)",
        params![id, operation.as_str(), target, params, stamp],
    )?;
    Ok(())
}

/// One chunk of a staged job's devices, in one transaction, from input position `first`.
fn append_devices(
    c: &mut Connection,
    id: &str,
    first: u64,
    devices: &[NewDevice],
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    insert_devices(&tx, id, first, devices)?;
    tx.commit()
}

/// The staged job's key is known: continue the unfinished job with the same key (the staged
/// rows are dropped), else the staged job becomes a running one. One write transaction, as
/// in `open_job`.
fn seal_job(
    c: &mut Connection,
    id: &str,
    key: &str,
    operation: Operation,
    target: &str,
) -> rusqlite::Result<OpenedJob> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT id FROM jobs WHERE key = ?1 AND operation = ?2 AND target = ?3
             AND state = 'running' ORDER BY created DESC LIMIT 1",
            params![key, operation.as_str(), target],
            |r| r.get(0),
        )
        .optional()?;
    let opened = match existing {
        Some(existing) => {
            delete_job_rows(&tx, id)?;
            OpenedJob {
                id: existing,
                resumed: true,
            }
        }
        None => {
            tx.execute(
                "UPDATE jobs SET key = ?2, state = 'running', updated = ?3 WHERE id = ?1",
                params![id, key, now()],
            )?;
            OpenedJob {
                id: id.to_owned(),
                resumed: false,
            }
        }
    };
    tx.commit()?;
    Ok(opened)
}

/// Drops a staged job whose input failed.
fn discard_staged(c: &mut Connection, id: &str) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    delete_job_rows(&tx, id)?;
    tx.commit()
}

fn delete_job_rows(tx: &rusqlite::Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM devices WHERE job = ?1", params![id])?;
    tx.execute("DELETE FROM certificates WHERE job = ?1", params![id])?;
    tx.execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
    Ok(())
}

/// Inserts devices pending from input position `first` (a device already in the job is
/// skipped, keeping its first position).
fn insert_devices(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    first: u64,
    devices: &[NewDevice],
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT OR IGNORE INTO devices (job, device_id, seq, state, source)
         VALUES (?1, ?2, ?3, 'pending', ?4)",
    )?;
    let mut cert = tx.prepare_cached(
        "INSERT INTO certificates (job, seq, device_id, source_json, vendor_json, batch_tag,
         der) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (i, d) in devices.iter().enumerate() {
        let seq = i64::try_from(first + i as u64).unwrap_or(i64::MAX);
        if st.execute(params![id, d.device_id, seq, d.source_display])? == 1 {
            cert.execute(params![
                id,
                seq,
                d.device_id,
                d.source,
                d.vendor,
                d.batch_tag,
                &d.der[..],
            ])?;
        }
    }
    Ok(())
}

fn load_jobs(c: &mut Connection, only: Option<&str>) -> rusqlite::Result<Result<Vec<JobInfo>>> {
    let mut counts: BTreeMap<String, StateCounts> = BTreeMap::new();
    {
        let sql = if only.is_some() {
            "SELECT job, state, COUNT(*) FROM devices WHERE job = ?1 GROUP BY job, state"
        } else {
            "SELECT job, state, COUNT(*) FROM devices WHERE ?1 IS NULL GROUP BY job, state"
        };
        let mut st = c.prepare(sql)?;
        let rows = st.query_map(params![only], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (job, state, n) = row?;
            let Ok(state) = state.parse::<DeviceState>() else {
                continue;
            };
            let c = counts.entry(job).or_default();
            for _ in 0..n.max(0) {
                c.add(state);
            }
        }
    }
    let mut st = c.prepare(
        "SELECT j.id, j.key, j.operation, j.target, j.params, j.state, j.created, j.updated,
         l.owner, l.expires_ms FROM jobs j LEFT JOIN leases l ON l.name = 'job:' || j.id
         WHERE (?1 IS NULL OR j.id = ?1) AND j.state <> 'opening'
         ORDER BY j.created DESC, j.id",
    )?;
    let rows = st.query_map(params![only], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<i64>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key, op, target, params_json, state, created, updated, owner, expires) = row?;
        let operation = match op.parse() {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let state = if state == "finished" {
            JobState::Finished
        } else {
            JobState::Running
        };
        out.push(JobInfo {
            counts: counts.get(&id).copied().unwrap_or_default(),
            lease: owner.map(|owner| Lease {
                name: job_lease(&id),
                owner,
                expires_ms: expires.unwrap_or(0),
            }),
            id,
            spec: JobSpec {
                operation,
                target,
                key,
                params: serde_json::from_str(&params_json).unwrap_or(serde_json::Value::Null),
            },
            state,
            created,
            updated,
        });
    }
    Ok(Ok(out))
}

/// The columns [`device_row`] reads, in its order.
const DEVICE_COLUMNS: &str = "device_id, seq, state, outcome, attempts, error_kind, reason, \
    request_id, remote_name, resources, source, updated";

fn load_devices(c: &mut Connection, job: &str) -> rusqlite::Result<Result<Vec<DeviceRecord>>> {
    let mut st = c.prepare(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE job = ?1 ORDER BY seq"
    ))?;
    let mut rows = st.query(params![job])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match device_row(r) {
            Ok(rec) => out.push(rec),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}

fn load_devices_page(
    c: &mut Connection,
    job: &str,
    after: Option<u64>,
    limit: usize,
) -> rusqlite::Result<Result<Vec<DeviceRecord>>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE job = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let mut rows = st.query(params![job, after_param(after), limit_param(limit)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match device_row(r) {
            Ok(rec) => out.push(rec),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}

fn load_records_of(
    c: &mut Connection,
    job: &str,
    ids: &[DeviceId],
) -> rusqlite::Result<Result<Vec<DeviceRecord>>> {
    // One indexed point query per device (`devices_key` is device id first): a window of the
    // engine's input costs a window of index probes.
    let mut st = c.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1 AND job = ?2"
    ))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut rows = st.query(params![id.as_str(), job])?;
        if let Some(r) = rows.next()? {
            match device_row(r) {
                Ok(rec) => out.push(rec),
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    Ok(Ok(out))
}

/// One row of [`DEVICE_COLUMNS`]; an `Err` inside is a row this version cannot read.
fn device_row(r: &rusqlite::Row<'_>) -> Result<DeviceRecord> {
    let id: String = r.get(0).map_err(row_error)?;
    let state: String = r.get(2).map_err(row_error)?;
    let outcome: Option<String> = r.get(3).map_err(row_error)?;
    let resources: Option<String> = r.get(9).map_err(row_error)?;
    Ok(DeviceRecord {
        device_id: id.parse()?,
        seq: u64::try_from(r.get::<_, i64>(1).unwrap_or(0)).unwrap_or(0),
        state: state.parse()?,
        outcome: outcome.as_deref().map(str::parse).transpose()?,
        attempts: r.get::<_, u32>(4).unwrap_or(0),
        error_kind: r.get(5).unwrap_or(None),
        reason: r.get(6).unwrap_or(None),
        request_id: r.get(7).unwrap_or(None),
        remote_name: r.get(8).unwrap_or(None),
        resources: resources
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default(),
        source: r.get(10).unwrap_or_default(),
        updated: r.get(11).unwrap_or(None),
    })
}

fn load_identities(c: &mut Connection, job: &str) -> rusqlite::Result<Result<Vec<DeviceIdentity>>> {
    let mut st = c.prepare(
        "SELECT seq, device_id, der, source_json, vendor_json, batch_tag FROM certificates
         WHERE job = ?1 ORDER BY seq",
    )?;
    let mut rows = st.query(params![job])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match identity_row(r) {
            Ok((_, identity)) => out.push(identity),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}

fn load_identities_page(
    c: &mut Connection,
    job: &str,
    after: Option<u64>,
    limit: usize,
) -> rusqlite::Result<Result<Vec<(u64, DeviceIdentity)>>> {
    let mut st = c.prepare_cached(
        "SELECT seq, device_id, der, source_json, vendor_json, batch_tag FROM certificates
         WHERE job = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = st.query(params![job, after_param(after), limit_param(limit)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match identity_row(r) {
            Ok(x) => out.push(x),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}

/// One certificate row (seq, device_id, der, source_json, vendor_json, batch_tag) as an
/// identity; its batch is known by its tag only (the batch ID is never stored).
fn identity_row(r: &rusqlite::Row<'_>) -> Result<(u64, DeviceIdentity)> {
    let seq = u64::try_from(r.get::<_, i64>(0).map_err(row_error)?).unwrap_or(0);
    let id: String = r.get(1).map_err(row_error)?;
    let der: Vec<u8> = r.get(2).map_err(row_error)?;
    let source_json: String = r.get(3).map_err(row_error)?;
    let vendor_json: String = r.get(4).map_err(row_error)?;
    let source: Source = serde_json::from_str(&source_json).unwrap_or_default();
    let mut identity = DeviceIdentity::from_der(der, source)?;
    if identity.device_id.as_str() != id {
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!("journal row {id} holds a different certificate"),
        ));
    }
    identity.vendor = serde_json::from_str::<VendorAttributes>(&vendor_json).unwrap_or_default();
    let tag: Option<String> = r.get(5).map_err(row_error)?;
    identity.batch = tag.as_deref().map(BatchRef::from_tag);
    Ok((seq, identity))
}

/// `seq > ?` for a page after `after` (every row when None).
fn after_param(after: Option<u64>) -> i64 {
    after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX))
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn row_error(e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Unexpected, "unreadable journal row").with_source(e)
}

fn now() -> String {
    ::time::OffsetDateTime::now_utc()
        .format(&::time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Unexpected, format!("journal {}", path.display())).with_source(e)
}

fn json_error(e: serde_json::Error) -> Error {
    Error::new(ErrorKind::Unexpected, "cannot encode a journal row").with_source(e)
}

fn closed() -> Error {
    Error::new(ErrorKind::Unexpected, "the journal thread stopped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Operation;

    pub(crate) fn cert(n: u32) -> DeviceIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("dev {n}"));
        let c = p.self_signed(&key).unwrap();
        DeviceIdentity::from_der(
            c.der().to_vec(),
            Source {
                file: "t.pem".into(),
                line: Some(u64::from(n)),
                entry: None,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn jobs_resume_by_key_and_updates_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let devs: Vec<_> = (0..3).map(cert).collect();
        let spec = JobSpec::for_devices(
            Operation::Provision,
            "demo",
            devs.iter().map(|d| &d.device_id),
        );
        let id = {
            let j = SqliteJournal::open(&path).unwrap();
            let opened = j.open_job(&spec, &devs).await.unwrap();
            assert!(!opened.resumed);
            let mut u = DeviceUpdate::state(devs[1].device_id.clone(), DeviceState::Done, 1);
            u.outcome = Some(Outcome::Created);
            u.resources.insert("etag".into(), "e1".into());
            j.record(&opened.id, vec![u], false).await.unwrap();
            j.record(
                &opened.id,
                vec![DeviceUpdate::state(
                    devs[2].device_id.clone(),
                    DeviceState::InFlight,
                    1,
                )],
                true,
            )
            .await
            .unwrap();
            opened.id
        };
        let j = SqliteJournal::open(&path).unwrap();
        let again = j.open_job(&spec, &devs).await.unwrap();
        assert_eq!(again.id, id);
        assert!(again.resumed);
        let recs = j.devices(&id).await.unwrap();
        let states: Vec<_> = recs.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [
                DeviceState::Pending,
                DeviceState::Done,
                DeviceState::InFlight
            ]
        );
        assert_eq!(recs[1].resources["etag"], "e1");
        assert_eq!(recs[1].outcome, Some(Outcome::Created));
        let ids = j.identities(&id).await.unwrap();
        assert_eq!(ids, devs);
        let info = j.job(&id).await.unwrap().unwrap();
        assert_eq!(info.counts.total(), 3);
        assert_eq!(info.counts.done, 1);
        j.set_job_state(&id, JobState::Finished).await.unwrap();
        let fresh = j.open_job(&spec, &devs).await.unwrap();
        assert!(!fresh.resumed, "a finished job is not reopened");
        assert_ne!(fresh.id, id);
        assert_eq!(j.jobs().await.unwrap().len(), 2);
    }
}
