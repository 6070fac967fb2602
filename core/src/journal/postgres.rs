//! The shared journal: the same schema as the SQLite file, on PostgreSQL, for several stations,
//! workers and services sharing one state.
//!
//! - A pool of connections (sqlx), each with a `statement_timeout`, so a stuck database turns
//!   into an error instead of a hung job.
//! - Device updates go through one writer task that commits everything queued in one
//!   transaction (group commit, one `UPDATE ... FROM UNNEST` per group), like the SQLite writer.
//! - Serialisation failures, deadlocks and lost connections are retried with backoff a bounded
//!   number of times; past that the call fails with a temporary `Network` error. A failed
//!   write-ahead mark fails the batch before its call, so no call is made without its record.
//! - Leases are rows of `leases` taken with one atomic upsert; `claim_job` locks the job row with
//!   `FOR UPDATE SKIP LOCKED` and takes the target lease, then the job lease, in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Row, postgres::PgRow};
use tokio::sync::{OnceCell, mpsc, oneshot};

use super::{
    DeviceRecord, DeviceState, DeviceUpdate, JobInfo, JobSpec, JobState, Journal, Lease,
    LeaseClaim, OpenedJob, Outcome, StateCounts, job_lease, schema, target_lease,
};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceId, DeviceIdentity, Source, VendorAttributes};

/// How the PostgreSQL journal connects.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub max_connections: u32,
    /// Longest one statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Longest to wait for a pooled connection (or to connect).
    pub acquire_timeout: Duration,
    /// Attempts of one operation on a lost connection, serialisation failure or deadlock.
    pub attempts: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 8,
            statement_timeout: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(5),
            attempts: 4,
        }
    }
}

/// The PostgreSQL journal. Cheap to share (`Arc`).
pub struct PostgresJournal {
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<Cmd>,
}

struct Inner {
    pool: PgPool,
    /// `postgres://HOST:PORT/DB`: what errors name (never the password).
    name: String,
    ready: OnceCell<()>,
    opts: PostgresOptions,
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("database", &self.inner.name)
            .finish()
    }
}

enum Cmd {
    Write {
        job: String,
        updates: Vec<DeviceUpdate>,
        ack: Option<oneshot::Sender<Result<()>>>,
    },
    Flush(oneshot::Sender<Result<()>>),
}

impl PostgresJournal {
    /// A journal on the database at `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`). Connects
    /// lazily: the first call connects and applies the migrations. Needs a Tokio runtime.
    pub fn open(url: &str, opts: PostgresOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                "invalid PostgreSQL journal URL (postgres://USER@HOST:PORT/DATABASE)",
            )
            .with_source(e)
        })?;
        let name = format!(
            "postgres://{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        let timeout_ms = opts.statement_timeout.as_millis().to_string();
        let connect = connect.options([("statement_timeout", timeout_ms.as_str())]);
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Unexpected,
                "the PostgreSQL journal needs a Tokio runtime",
            )
        })?;
        let pool = {
            let _guard = handle.enter();
            PgPoolOptions::new()
                .max_connections(opts.max_connections.max(2))
                .acquire_timeout(opts.acquire_timeout)
                .connect_lazy_with(connect)
        };
        let inner = Arc::new(Inner {
            pool,
            name,
            ready: OnceCell::new(),
            opts,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        handle.spawn(writer(Arc::clone(&inner), rx));
        Ok(PostgresJournal { inner, tx })
    }

    /// `postgres://HOST:PORT/DB` (no credentials).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    async fn send_and_wait(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<()>>) -> Cmd,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

#[async_trait]
impl Journal for PostgresJournal {
    async fn open_job(&self, spec: &JobSpec, devices: &[DeviceIdentity]) -> Result<OpenedJob> {
        let rows = NewRows::of(devices)?;
        let inner = &self.inner;
        inner
            .run("open job", || open_job(&inner.pool, spec, &rows))
            .await
    }

    async fn job(&self, id: &str) -> Result<Option<JobInfo>> {
        let inner = &self.inner;
        Ok(inner
            .run("read jobs", || load_jobs(&inner.pool, Some(id)))
            .await?
            .pop())
    }

    async fn jobs(&self) -> Result<Vec<JobInfo>> {
        let inner = &self.inner;
        inner
            .run("read jobs", || load_jobs(&inner.pool, None))
            .await
    }

    async fn devices(&self, id: &str) -> Result<Vec<DeviceRecord>> {
        let inner = &self.inner;
        let rows = inner
            .run("read devices", || async {
                sqlx::query(
                    "SELECT device_id, seq, state, outcome, attempts, error_kind, reason,
                     request_id, remote_name, resources, source, updated FROM devices WHERE job = $1
                     ORDER BY seq",
                )
                .bind(id)
                .fetch_all(&inner.pool)
                .await
            })
            .await?;
        rows.iter().map(device_record).collect()
    }

    async fn identities(&self, id: &str) -> Result<Vec<DeviceIdentity>> {
        let inner = &self.inner;
        let rows = inner
            .run("read certificates", || async {
                sqlx::query(
                    "SELECT seq, device_id, der, source_json, vendor_json FROM certificates
                     WHERE job = $1 ORDER BY seq",
                )
                .bind(id)
                .fetch_all(&inner.pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|r| identity_row(inner, r).map(|(_, d)| d))
            .collect()
    }

    async fn devices_page(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>> {
        let inner = &self.inner;
        let rows = inner
            .run("read devices", || async {
                sqlx::query(
                    "SELECT device_id, seq, state, outcome, attempts, error_kind, reason,
                     request_id, remote_name, resources, source, updated FROM devices WHERE job = $1
                     AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(id)
                .bind(after_param(after))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&inner.pool)
                .await
            })
            .await?;
        rows.iter().map(device_record).collect()
    }

    async fn records_of(&self, id: &str, ids: &[DeviceId]) -> Result<Vec<DeviceRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let keys: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
        let rows = inner
            .run("read devices", || async {
                sqlx::query(
                    "SELECT device_id, seq, state, outcome, attempts, error_kind, reason,
                     request_id, remote_name, resources, source, updated FROM devices
                     WHERE device_id = ANY($2) AND job = $1",
                )
                .bind(id)
                .bind(&keys)
                .fetch_all(&inner.pool)
                .await
            })
            .await?;
        rows.iter().map(device_record).collect()
    }

    async fn identities_page(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, DeviceIdentity)>> {
        let inner = &self.inner;
        let rows = inner
            .run("read certificates", || async {
                sqlx::query(
                    "SELECT seq, device_id, der, source_json, vendor_json FROM certificates
                     WHERE job = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(id)
                .bind(after_param(after))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&inner.pool)
                .await
            })
            .await?;
        rows.iter().map(|r| identity_row(inner, r)).collect()
    }

    async fn record(&self, id: &str, updates: Vec<DeviceUpdate>, durable: bool) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let job = id.to_owned();
        if durable {
            self.send_and_wait(|ack| Cmd::Write {
                job,
                updates,
                ack: Some(ack),
            })
            .await
        } else {
            self.tx
                .send(Cmd::Write {
                    job,
                    updates,
                    ack: None,
                })
                .map_err(|_| closed())
        }
    }

    async fn set_job_state(&self, id: &str, state: JobState) -> Result<()> {
        self.flush().await?;
        let inner = &self.inner;
        inner
            .run("set job state", || async {
                sqlx::query("UPDATE jobs SET state = $1, updated = $2 WHERE id = $3")
                    .bind(state.as_str())
                    .bind(now())
                    .bind(id)
                    .execute(&inner.pool)
                    .await
                    .map(|_| ())
            })
            .await
    }

    async fn flush(&self) -> Result<()> {
        self.send_and_wait(Cmd::Flush).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<LeaseClaim> {
        let inner = &self.inner;
        inner
            .run("acquire lease", || async {
                sqlx::query(schema::ACQUIRE_LEASE)
                    .bind(name)
                    .bind(owner)
                    .bind(now_ms + ttl_ms)
                    .bind(now_ms)
                    .execute(&inner.pool)
                    .await?;
                let lease = read_lease(&inner.pool, name).await?.unwrap_or(Lease {
                    name: name.to_owned(),
                    owner: String::new(),
                    expires_ms: 0,
                });
                Ok(if lease.owner == owner {
                    LeaseClaim::Granted(lease)
                } else {
                    LeaseClaim::Held(lease)
                })
            })
            .await
    }

    async fn renew_lease(&self, name: &str, owner: &str, ttl_ms: i64, now_ms: i64) -> Result<bool> {
        let inner = &self.inner;
        inner
            .run("renew lease", || async {
                sqlx::query(schema::RENEW_LEASE)
                    .bind(name)
                    .bind(owner)
                    .bind(now_ms + ttl_ms)
                    .execute(&inner.pool)
                    .await
                    .map(|r| r.rows_affected() == 1)
            })
            .await
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        let inner = &self.inner;
        inner
            .run("release lease", || async {
                sqlx::query(schema::RELEASE_LEASE)
                    .bind(name)
                    .bind(owner)
                    .execute(&inner.pool)
                    .await
                    .map(|_| ())
            })
            .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let inner = &self.inner;
        inner
            .run("read lease", || read_lease(&inner.pool, name))
            .await
    }

    async fn claim_job(
        &self,
        owner: &str,
        targets: &[String],
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<JobInfo>> {
        let inner = &self.inner;
        let id = inner
            .run("claim job", || {
                claim(&inner.pool, owner, targets, ttl_ms, now_ms)
            })
            .await?;
        match id {
            Some(id) => self.job(&id).await,
            None => Ok(None),
        }
    }
}

impl Inner {
    /// Runs `op` once the schema is ready, retrying lost connections, serialisation failures and
    /// deadlocks with backoff.
    async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r = match self.ready.get_or_try_init(|| migrate(&self.pool)).await {
                Ok(()) => op().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < self.opts.attempts.max(1) => {
                    let delay = Duration::from_millis(100u64 << attempt.min(4));
                    tracing::debug!(operation = what, attempt, error = %e, ?delay,
                        "journal database call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(self.error(what, e)),
            }
        }
    }

    fn error(&self, what: &'static str, e: sqlx::Error) -> Error {
        let temporary = retryable(&e);
        let kind = if temporary {
            ErrorKind::Network
        } else {
            ErrorKind::Unexpected
        };
        Error::new(kind, format!("journal {} ({what}): {e}", self.name))
            .with_operation("journal")
            .set_temporary(temporary)
    }

    /// Commits a group of device updates in one transaction.
    async fn commit(&self, writes: &[Write]) -> Result<()> {
        let merged = merge(writes);
        let mut cols = Columns::default();
        for (job, u) in &merged {
            cols.push(job, u);
        }
        let mut jobs: Vec<String> = merged.iter().map(|(j, _)| (*j).to_owned()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        let stamp = now();
        self.run("record devices", || async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE devices d SET state = u.state, outcome = u.outcome,
                 attempts = u.attempts, error_kind = u.error_kind, reason = u.reason,
                 request_id = u.request_id, remote_name = COALESCE(u.remote_name, d.remote_name),
                 resources = COALESCE(u.resources, d.resources), updated = $11
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
                   AS u(job, device_id, state, outcome, attempts, error_kind, reason, request_id,
                        remote_name, resources)
                 WHERE d.device_id = u.device_id AND d.job = u.job",
            )
            .bind(&cols.job)
            .bind(&cols.device_id)
            .bind(&cols.state)
            .bind(&cols.outcome)
            .bind(&cols.attempts)
            .bind(&cols.error_kind)
            .bind(&cols.reason)
            .bind(&cols.request_id)
            .bind(&cols.remote_name)
            .bind(&cols.resources)
            .bind(&stamp)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE jobs SET updated = $1 WHERE id = ANY($2)")
                .bind(&stamp)
                .bind(&jobs)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
    }
}

type Write = (
    String,
    Vec<DeviceUpdate>,
    Option<oneshot::Sender<Result<()>>>,
);

async fn writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    // An error of a write nobody waits for is reported to the next writer who waits.
    let mut deferred: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut writes: Vec<Write> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write { job, updates, ack } => writes.push((job, updates, ack)),
                Cmd::Flush(ack) => flushes.push(ack),
            }
            if writes.len() >= 4096 {
                break;
            }
            next = rx.try_recv().ok();
        }
        let mut failure = None;
        if !writes.is_empty() {
            if let Err(e) = inner.commit(&writes).await {
                tracing::warn!(error = %e, "journal write failed");
                failure = Some(e.to_string());
            }
            for (_, _, ack) in writes {
                match ack {
                    Some(ack) => {
                        let r = match failure.clone().or_else(|| deferred.take()) {
                            Some(f) => Err(Error::new(ErrorKind::Network, f)
                                .with_operation("journal")
                                .set_temporary(true)),
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
        for ack in flushes {
            let r = match &failure {
                Some(f) => Err(Error::new(ErrorKind::Network, f.clone()).set_temporary(true)),
                None => Ok(()),
            };
            let _ = ack.send(r);
        }
    }
}

/// Later updates of the same device in one group replace earlier ones (keeping a remote name
/// and resources the later one does not repeat), so one `UPDATE ... FROM` sees each row once.
fn merge(writes: &[Write]) -> Vec<(&str, DeviceUpdate)> {
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut out: Vec<(&str, DeviceUpdate)> = Vec::new();
    for (job, updates, _) in writes {
        for u in updates {
            match index.get(&(job.as_str(), u.device_id.as_str())) {
                Some(&i) => {
                    let prev = &out[i].1;
                    let mut n = u.clone();
                    if n.remote_name.is_none() {
                        n.remote_name.clone_from(&prev.remote_name);
                    }
                    if n.resources.is_empty() {
                        n.resources.clone_from(&prev.resources);
                    }
                    out[i].1 = n;
                }
                None => {
                    index.insert((job.as_str(), u.device_id.as_str()), out.len());
                    out.push((job.as_str(), u.clone()));
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct Columns {
    job: Vec<String>,
    device_id: Vec<String>,
    state: Vec<String>,
    outcome: Vec<Option<String>>,
    attempts: Vec<i64>,
    error_kind: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    remote_name: Vec<Option<String>>,
    resources: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, job: &str, u: &DeviceUpdate) {
        self.job.push(job.to_owned());
        self.device_id.push(u.device_id.as_str().to_owned());
        self.state.push(u.state.as_str().to_owned());
        self.outcome
            .push(u.outcome.map(|o| Outcome::as_str(o).to_owned()));
        self.attempts.push(i64::from(u.attempts));
        self.error_kind.push(u.error_kind.clone());
        self.reason.push(u.reason.clone());
        self.request_id.push(u.request_id.clone());
        self.remote_name.push(u.remote_name.clone());
        self.resources.push(if u.resources.is_empty() {
            None
        } else {
            serde_json::to_string(&u.resources).ok()
        });
    }
}

/// A job's new rows, first occurrence of each device kept (as SQLite's `INSERT OR IGNORE`).
struct NewRows {
    device_id: Vec<String>,
    seq: Vec<i64>,
    source_display: Vec<String>,
    source_json: Vec<String>,
    vendor_json: Vec<String>,
    batch_tag: Vec<Option<String>>,
    der: Vec<Vec<u8>>,
}

impl NewRows {
    fn of(devices: &[DeviceIdentity]) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let mut r = NewRows {
            device_id: Vec::new(),
            seq: Vec::new(),
            source_display: Vec::new(),
            source_json: Vec::new(),
            vendor_json: Vec::new(),
            batch_tag: Vec::new(),
            der: Vec::new(),
        };
        for (seq, d) in devices.iter().enumerate() {
            if !seen.insert(d.device_id.as_str()) {
                continue;
            }
            r.device_id.push(d.device_id.as_str().to_owned());
            r.seq.push(i64::try_from(seq).unwrap_or(i64::MAX));
            r.source_display.push(d.source.to_string());
            r.source_json
                .push(serde_json::to_string(&d.source).map_err(json_error)?);
            r.vendor_json
                .push(serde_json::to_string(&d.vendor).map_err(json_error)?);
            r.batch_tag
                .push(d.batch.as_ref().map(|b| b.tag().to_owned()));
            r.der.push(d.der.to_vec());
        }
        Ok(r)
    }
}

/// Rows per INSERT statement when a job is created.
const CHUNK: usize = 5000;

async fn open_job(
    pool: &PgPool,
    spec: &JobSpec,
    rows: &NewRows,
) -> std::result::Result<OpenedJob, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Two processes opening the same command at once get one job.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(&spec.key)
        .execute(&mut *tx)
        .await?;
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE key = $1 AND operation = $2 AND target = $3
         AND state = 'running' ORDER BY created DESC LIMIT 1",
    )
    .bind(&spec.key)
    .bind(spec.operation.as_str())
    .bind(&spec.target)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = existing {
        tx.commit().await?;
        return Ok(OpenedJob { id, resumed: true });
    }
    let id = format!("job-{:016x}", rand::random::<u64>());
    let stamp = now();
    sqlx::query(
        "INSERT INTO jobs (id, key, operation, target, params, state, created, updated)
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $6)",
    )
    .bind(&id)
    .bind(&spec.key)
    .bind(spec.operation.as_str())
    .bind(&spec.target)
    .bind(spec.params.to_string())
    .bind(&stamp)
    .execute(&mut *tx)
    .await?;
    let n = rows.device_id.len();
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        sqlx::query(
            "INSERT INTO devices (job, device_id, seq, state, source)
             SELECT $1, d, s, 'pending', src FROM UNNEST($2::text[], $3::bigint[], $4::text[])
             AS t(d, s, src)",
        )
        .bind(&id)
        .bind(&rows.device_id[start..end])
        .bind(&rows.seq[start..end])
        .bind(&rows.source_display[start..end])
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO certificates (job, seq, device_id, source_json, vendor_json, batch_tag,
             der) SELECT $1, s, d, sj, vj, bt, der FROM UNNEST($2::bigint[], $3::text[],
             $4::text[], $5::text[], $6::text[], $7::bytea[]) AS t(s, d, sj, vj, bt, der)",
        )
        .bind(&id)
        .bind(&rows.seq[start..end])
        .bind(&rows.device_id[start..end])
        .bind(&rows.source_json[start..end])
        .bind(&rows.vendor_json[start..end])
        .bind(&rows.batch_tag[start..end])
        .bind(&rows.der[start..end])
        .execute(&mut *tx)
        .await?;
        start = end;
    }
    tx.commit().await?;
    Ok(OpenedJob { id, resumed: false })
}

async fn load_jobs(
    pool: &PgPool,
    only: Option<&str>,
) -> std::result::Result<Vec<JobInfo>, sqlx::Error> {
    let mut counts: BTreeMap<String, StateCounts> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT job, state, COUNT(*) FROM devices WHERE ($1::text IS NULL OR job = $1)
         GROUP BY job, state",
    )
    .bind(only)
    .fetch_all(pool)
    .await?;
    for r in &rows {
        let job: String = r.try_get(0)?;
        let state: String = r.try_get(1)?;
        let n: i64 = r.try_get(2)?;
        let Ok(state) = state.parse::<DeviceState>() else {
            continue;
        };
        let c = counts.entry(job).or_default();
        for _ in 0..n.max(0) {
            c.add(state);
        }
    }
    let rows = sqlx::query(
        "SELECT j.id, j.key, j.operation, j.target, j.params, j.state, j.created, j.updated,
         l.owner, l.expires_ms FROM jobs j LEFT JOIN leases l ON l.name = 'job:' || j.id
         WHERE ($1::text IS NULL OR j.id = $1) ORDER BY j.created DESC, j.id",
    )
    .bind(only)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get(0)?;
        let op: String = r.try_get(2)?;
        let Ok(operation) = op.parse() else {
            return Err(sqlx::Error::Decode(
                format!("unknown job operation {op:?} in the journal").into(),
            ));
        };
        let params_json: String = r.try_get(4)?;
        let state: String = r.try_get(5)?;
        let owner: Option<String> = r.try_get(8)?;
        let expires: Option<i64> = r.try_get(9)?;
        out.push(JobInfo {
            counts: counts.get(&id).copied().unwrap_or_default(),
            lease: owner.map(|owner| Lease {
                name: job_lease(&id),
                owner,
                expires_ms: expires.unwrap_or(0),
            }),
            spec: JobSpec {
                operation,
                target: r.try_get(3)?,
                key: r.try_get(1)?,
                params: serde_json::from_str(&params_json).unwrap_or(serde_json::Value::Null),
            },
            state: if state == "finished" {
                JobState::Finished
            } else {
                JobState::Running
            },
            created: r.try_get(6)?,
            updated: r.try_get(7)?,
            id,
        });
    }
    Ok(out)
}

/// One certificate row (seq, device_id, der, source_json, vendor_json) as an identity.
fn identity_row(inner: &Inner, r: &PgRow) -> Result<(u64, DeviceIdentity)> {
    let seq: i64 = r
        .try_get(0)
        .map_err(|e| inner.error("read certificates", e))?;
    let id: String = r
        .try_get(1)
        .map_err(|e| inner.error("read certificates", e))?;
    let der: Vec<u8> = r
        .try_get(2)
        .map_err(|e| inner.error("read certificates", e))?;
    let source_json: String = r.try_get(3).unwrap_or_default();
    let vendor_json: String = r.try_get(4).unwrap_or_default();
    let source: Source = serde_json::from_str(&source_json).unwrap_or_default();
    let mut identity = DeviceIdentity::from_der(der, source)?;
    if identity.device_id.as_str() != id {
        return Err(Error::new(
            ErrorKind::Unexpected,
            format!("journal row {id} holds a different certificate"),
        ));
    }
    identity.vendor = serde_json::from_str::<VendorAttributes>(&vendor_json).unwrap_or_default();
    Ok((u64::try_from(seq).unwrap_or(0), identity))
}

/// `seq > $n` for a page after `after` (every row when None).
fn after_param(after: Option<u64>) -> i64 {
    after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX))
}

fn device_record(r: &PgRow) -> Result<DeviceRecord> {
    let get = |e: sqlx::Error| {
        Error::new(ErrorKind::Unexpected, "unreadable journal device row").with_source(e)
    };
    let id: String = r.try_get(0).map_err(get)?;
    let state: String = r.try_get(2).map_err(get)?;
    let outcome: Option<String> = r.try_get(3).map_err(get)?;
    let resources: Option<String> = r.try_get(9).map_err(get)?;
    Ok(DeviceRecord {
        device_id: id.parse()?,
        seq: u64::try_from(r.try_get::<i64, _>(1).unwrap_or(0)).unwrap_or(0),
        state: state.parse()?,
        outcome: outcome.as_deref().map(str::parse).transpose()?,
        attempts: u32::try_from(r.try_get::<i64, _>(4).unwrap_or(0)).unwrap_or(0),
        error_kind: r.try_get(5).unwrap_or(None),
        reason: r.try_get(6).unwrap_or(None),
        request_id: r.try_get(7).unwrap_or(None),
        remote_name: r.try_get(8).unwrap_or(None),
        resources: resources
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default(),
        source: r.try_get(10).unwrap_or_default(),
        updated: r.try_get(11).unwrap_or(None),
    })
}

async fn read_lease(pool: &PgPool, name: &str) -> std::result::Result<Option<Lease>, sqlx::Error> {
    let row = sqlx::query("SELECT owner, expires_ms FROM leases WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(Lease {
            name: name.to_owned(),
            owner: r.try_get(0)?,
            expires_ms: r.try_get(1)?,
        })
    })
    .transpose()
}

/// The oldest running job of `targets` whose leases are free: its row locked
/// (`FOR UPDATE SKIP LOCKED`, so claimers pass each other), then the target lease and the job
/// lease taken, in one transaction.
async fn claim(
    pool: &PgPool,
    owner: &str,
    targets: &[String],
    ttl_ms: i64,
    now_ms: i64,
) -> std::result::Result<Option<String>, sqlx::Error> {
    let candidates: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.id, j.target FROM jobs j WHERE j.state = 'running' AND j.target = ANY($3)
         AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'job:' || j.id
                         AND l.owner <> $1 AND l.expires_ms > $2)
         AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'target:' || j.target
                         AND l.owner <> $1 AND l.expires_ms > $2)
         ORDER BY j.created, j.id LIMIT 32",
    )
    .bind(owner)
    .bind(now_ms)
    .bind(targets)
    .fetch_all(pool)
    .await?;
    'next: for (id, target) in candidates {
        let mut tx = pool.begin().await?;
        let locked: Option<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = $1 AND state = 'running' FOR UPDATE SKIP LOCKED",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        if locked.is_none() {
            continue;
        }
        for name in [target_lease(&target), job_lease(&id)] {
            let taken = sqlx::query(schema::ACQUIRE_LEASE)
                .bind(&name)
                .bind(owner)
                .bind(now_ms + ttl_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if taken == 0 {
                continue 'next;
            }
        }
        tx.commit().await?;
        return Ok(Some(id));
    }
    Ok(None)
}

async fn migrate(pool: &PgPool) -> std::result::Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One migrating process at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(7262001)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(schema::VERSIONS_TABLE)
        .execute(&mut *tx)
        .await?;
    let have: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?;
    for m in schema::MIGRATIONS.iter().filter(|m| m.version > have) {
        sqlx::raw_sql(m.postgres).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, name, applied) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(now())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Lost connections, an unreachable or restarting server, serialisation failures, deadlocks.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c == "40001" // serialization_failure
                || c == "40P01" // deadlock_detected
                || c.starts_with("08") // connection exception
                || c == "57P01" // admin_shutdown
                || c == "57P02" // crash_shutdown
                || c == "57P03" // cannot_connect_now (starting up)
        }),
        _ => false,
    }
}

fn now() -> String {
    ::time::OffsetDateTime::now_utc()
        .format(&::time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn json_error(e: serde_json::Error) -> Error {
    Error::new(ErrorKind::Unexpected, "cannot encode a journal row").with_source(e)
}

fn closed() -> Error {
    Error::new(ErrorKind::Unexpected, "the journal writer stopped")
}
