//! The service store on PostgreSQL ([`PgStore`]): the same [`Store`] as the SQLite file, for
//! several `idbridge serve` processes sharing one state (issue 12).
//!
//! - Its tables live in the schema `idbridge_service` (migrations from `migrations/postgres/`,
//!   the same statements as SQLite's), so one database can hold both the service store and the
//!   journal, whose `jobs` and `devices` tables are in `public`.
//! - A pool of connections, each with a `statement_timeout`: a stuck database is an error, not
//!   a hung request.
//! - Every operation is retried a bounded number of times with backoff on a lost connection, a
//!   restarting server, a serialisation failure or a deadlock; past that the error reaches the
//!   caller (a 5xx for a request, a failed job record that the next start-up resumes).
//! - Bind-once: `bindings.batch_id` is UNIQUE and a bind is one
//!   `INSERT ... ON CONFLICT (batch_id) DO NOTHING`; of concurrent binds, on any number of
//!   processes, exactly one inserts the row and the others read the winner.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use super::store::{
    Account, AuditEntry, BatchRecord, BindOutcome, BindingRecord, DeviceRow, JobRecord, Store,
    TargetRecord, TokenRecord,
};

/// The schema holding the store's tables.
pub const SCHEMA: &str = "idbridge_service";

/// How the PostgreSQL store connects.
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    /// Connections in the pool.
    pub max_connections: u32,
    /// Longest one statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Longest to wait for a pooled connection (or to connect).
    pub acquire_timeout: Duration,
    /// Attempts of one operation on a lost connection, serialisation failure or deadlock.
    pub attempts: u32,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        PgStoreOptions {
            max_connections: 8,
            statement_timeout: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(5),
            attempts: 4,
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// `postgres://HOST:PORT/DB`: what errors name (never the password).
    name: String,
    attempts: u32,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`) and applies the
    /// migrations (one process at a time: sqlx's migrator holds an advisory lock).
    pub async fn open(url: &str, opts: PgStoreOptions) -> anyhow::Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(|_| {
            // The parse error may quote the URL, password included: name the shape only.
            anyhow::anyhow!(
                "invalid PostgreSQL store URL {}: use postgres://USER@HOST:PORT/DATABASE",
                redact(url)
            )
        })?;
        let name = format!(
            "postgres://{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        let timeout_ms = opts.statement_timeout.as_millis().to_string();
        let connect = connect.options([
            ("statement_timeout", timeout_ms.as_str()),
            ("search_path", SCHEMA),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(opts.acquire_timeout)
            .connect_lazy_with(connect);
        let store = PgStore {
            pool,
            name,
            attempts: opts.attempts.max(1),
        };
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.create_schema(SCHEMA);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match migrator.run(&store.pool).await {
                Ok(()) => break,
                Err(sqlx::migrate::MigrateError::Execute(e))
                    if retryable(&e) && attempt < store.attempts =>
                {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open the store {}", store.name));
                }
            }
        }
        Ok(store)
    }

    /// `postgres://HOST:PORT/DB` (no credentials).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `op`, again after a transient failure (at most `attempts` times).
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < self.attempts => {
                    tracing::warn!(store = %self.name, attempt, error = %e, "{what}: retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("{what} in the store {}", self.name))
                    );
                }
            }
        }
    }
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

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)))
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

fn account_of(r: &PgRow) -> Account {
    Account {
        id: r.get("id"),
        name: r.get("name"),
        mode: r.get("mode"),
        created_ms: r.get("created_ms"),
    }
}

fn batch_of(r: &PgRow) -> BatchRecord {
    BatchRecord {
        id: r.get("id"),
        claim_hash: r.get("claim_hash"),
        batch_tag: r.get("batch_tag"),
        source: r.get("source"),
        devices: r.get("devices"),
        invalid: r.get("invalid"),
        created_ms: r.get("created_ms"),
    }
}

fn target_of(r: &PgRow) -> TargetRecord {
    TargetRecord {
        account_id: r.get("account_id"),
        name: r.get("name"),
        kind: r.get("kind"),
        is_default: r.get::<i64, _>("is_default") != 0,
        secret_keys: r.get("secret_keys"),
        sealed: r.get("sealed"),
        updated_ms: r.get("updated_ms"),
    }
}

fn binding_of(r: &PgRow) -> BindingRecord {
    BindingRecord {
        id: r.get("id"),
        account_id: r.get("account_id"),
        batch_id: r.get("batch_id"),
        mode: r.get("mode"),
        target: r.get("target"),
        created_ms: r.get("created_ms"),
    }
}

fn job_of(r: &PgRow) -> JobRecord {
    JobRecord {
        id: r.get("id"),
        account_id: r.get("account_id"),
        binding_id: r.get("binding_id"),
        operation: r.get("operation"),
        target: r.get("target"),
        state: r.get("state"),
        journal_job: r.get("journal_job"),
        error: r.get("error"),
        created_ms: r.get("created_ms"),
        updated_ms: r.get("updated_ms"),
    }
}

fn audit_of(r: &PgRow) -> AuditEntry {
    AuditEntry {
        id: r.get("id"),
        at_ms: r.get("at_ms"),
        account_id: r.get("account_id"),
        actor: r.get("actor"),
        client: r.get("client"),
        action: r.get("action"),
        subject: r.get("subject"),
        outcome: r.get("outcome"),
        detail: r.get("detail"),
    }
}

/// Devices inserted per statement (`UNNEST` of six arrays).
const DEVICE_CHUNK: usize = 1000;

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> anyhow::Result<()> {
        let pool = &self.pool;
        self.retry("ping", move || async move {
            sqlx::query("SELECT 1").execute(pool).await
        })
        .await?;
        Ok(())
    }

    async fn create_account(&self, a: &Account) -> anyhow::Result<bool> {
        let pool = &self.pool;
        let r = self
            .retry("create an account", move || async move {
                sqlx::query(
                    "INSERT INTO accounts (id, name, mode, created_ms) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&a.id)
                .bind(&a.name)
                .bind(&a.mode)
                .bind(a.created_ms)
                .execute(pool)
                .await
            })
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn account_by_name(&self, name: &str) -> anyhow::Result<Option<Account>> {
        let pool = &self.pool;
        let r = self
            .retry("read an account", move || async move {
                sqlx::query("SELECT * FROM accounts WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(account_of))
    }

    async fn account(&self, id: &str) -> anyhow::Result<Option<Account>> {
        let pool = &self.pool;
        let r = self
            .retry("read an account", move || async move {
                sqlx::query("SELECT * FROM accounts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(account_of))
    }

    async fn create_token(&self, t: &TokenRecord) -> anyhow::Result<()> {
        let pool = &self.pool;
        self.retry("store a token", move || async move {
            sqlx::query(
                "INSERT INTO tokens (id, account_id, role, token_hash, created_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&t.id)
            .bind(&t.account_id)
            .bind(&t.role)
            .bind(&t.token_hash)
            .bind(t.created_ms)
            .execute(pool)
            .await
        })
        .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> anyhow::Result<Option<TokenRecord>> {
        let pool = &self.pool;
        let r = self
            .retry("read a token", move || async move {
                sqlx::query("SELECT * FROM tokens WHERE token_hash = $1")
                    .bind(hash)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.map(|r| TokenRecord {
            id: r.get("id"),
            account_id: r.get("account_id"),
            role: r.get("role"),
            token_hash: r.get("token_hash"),
            created_ms: r.get("created_ms"),
        }))
    }

    async fn insert_batch(&self, b: &BatchRecord, devices: &[DeviceRow]) -> anyhow::Result<bool> {
        let pool = &self.pool;
        self.retry("store a batch", move || async move {
            let mut tx = pool.begin().await?;
            // The claim hash (or the id) taken already: nothing is written.
            let r = sqlx::query(
                "INSERT INTO batches (id, claim_hash, batch_tag, source, devices, invalid, \
                 created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&b.id)
            .bind(&b.claim_hash)
            .bind(&b.batch_tag)
            .bind(&b.source)
            .bind(b.devices)
            .bind(b.invalid)
            .bind(b.created_ms)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                return Ok(false);
            }
            for chunk in devices.chunks(DEVICE_CHUNK) {
                let ids: Vec<&str> = chunk.iter().map(|d| d.device_id.as_str()).collect();
                let status: Vec<&str> = chunk.iter().map(|d| d.status.as_str()).collect();
                let reason: Vec<Option<&str>> = chunk.iter().map(|d| d.reason.as_deref()).collect();
                let source: Vec<&str> = chunk.iter().map(|d| d.source.as_str()).collect();
                let pem: Vec<Option<&str>> = chunk.iter().map(|d| d.cert_pem.as_deref()).collect();
                sqlx::query(
                    "INSERT INTO devices (batch_id, device_id, status, reason, source, cert_pem) \
                     SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[]) ON CONFLICT (batch_id, device_id) DO NOTHING",
                )
                .bind(&b.id)
                .bind(&ids)
                .bind(&status)
                .bind(&reason)
                .bind(&source)
                .bind(&pem)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn batch(&self, id: &str) -> anyhow::Result<Option<BatchRecord>> {
        let pool = &self.pool;
        let r = self
            .retry("read a batch", move || async move {
                sqlx::query("SELECT * FROM batches WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(batch_of))
    }

    async fn batch_by_claim(&self, claim_hash: &str) -> anyhow::Result<Option<BatchRecord>> {
        let pool = &self.pool;
        let r = self
            .retry("read a batch", move || async move {
                sqlx::query("SELECT * FROM batches WHERE claim_hash = $1")
                    .bind(claim_hash)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(batch_of))
    }

    async fn batches(&self) -> anyhow::Result<Vec<BatchRecord>> {
        let pool = &self.pool;
        let rows = self
            .retry("list batches", move || async move {
                sqlx::query("SELECT * FROM batches ORDER BY created_ms DESC, id")
                    .fetch_all(pool)
                    .await
            })
            .await?;
        Ok(rows.iter().map(batch_of).collect())
    }

    async fn devices(
        &self,
        batch_id: &str,
        after: Option<&str>,
        limit: i64,
        valid_only: bool,
    ) -> anyhow::Result<Vec<DeviceRow>> {
        let pool = &self.pool;
        let rows = self
            .retry("list devices", move || async move {
                sqlx::query(
                    "SELECT * FROM devices WHERE batch_id = $1 AND device_id > $2 \
                     AND (status = 'valid' OR NOT $3) ORDER BY device_id LIMIT $4",
                )
                .bind(batch_id)
                .bind(after.unwrap_or(""))
                .bind(valid_only)
                .bind(limit)
                .fetch_all(pool)
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeviceRow {
                device_id: r.get("device_id"),
                status: r.get("status"),
                reason: r.get("reason"),
                source: r.get("source"),
                cert_pem: r.get("cert_pem"),
            })
            .collect())
    }

    async fn put_target(&self, t: &TargetRecord) -> anyhow::Result<()> {
        let pool = &self.pool;
        self.retry("store a target", move || async move {
            let mut tx = pool.begin().await?;
            // Lock the account's row first: concurrent puts of one account queue here instead
            // of racing on the default flag.
            sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
                .bind(&t.account_id)
                .execute(&mut *tx)
                .await?;
            if t.is_default {
                sqlx::query("UPDATE targets SET is_default = 0 WHERE account_id = $1")
                    .bind(&t.account_id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO targets (account_id, name, kind, is_default, secret_keys, sealed, \
                 updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (account_id, name) DO UPDATE SET kind = excluded.kind, \
                 is_default = excluded.is_default, secret_keys = excluded.secret_keys, \
                 sealed = excluded.sealed, updated_ms = excluded.updated_ms",
            )
            .bind(&t.account_id)
            .bind(&t.name)
            .bind(&t.kind)
            .bind(i64::from(t.is_default))
            .bind(&t.secret_keys)
            .bind(&t.sealed)
            .bind(t.updated_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
        .await
    }

    async fn target(&self, account_id: &str, name: &str) -> anyhow::Result<Option<TargetRecord>> {
        let pool = &self.pool;
        let r = self
            .retry("read a target", move || async move {
                sqlx::query("SELECT * FROM targets WHERE account_id = $1 AND name = $2")
                    .bind(account_id)
                    .bind(name)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(target_of))
    }

    async fn targets(&self, account_id: &str) -> anyhow::Result<Vec<TargetRecord>> {
        let pool = &self.pool;
        let rows = self
            .retry("list targets", move || async move {
                sqlx::query("SELECT * FROM targets WHERE account_id = $1 ORDER BY name")
                    .bind(account_id)
                    .fetch_all(pool)
                    .await
            })
            .await?;
        Ok(rows.iter().map(target_of).collect())
    }

    async fn delete_target(&self, account_id: &str, name: &str) -> anyhow::Result<bool> {
        let pool = &self.pool;
        let r = self
            .retry("delete a target", move || async move {
                sqlx::query("DELETE FROM targets WHERE account_id = $1 AND name = $2")
                    .bind(account_id)
                    .bind(name)
                    .execute(pool)
                    .await
            })
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn bind(&self, b: &BindingRecord) -> anyhow::Result<BindOutcome> {
        let pool = &self.pool;
        self.retry("bind a batch", move || async move {
            // One statement decides: the UNIQUE batch_id makes every other concurrent insert
            // wait for the winner's commit and then do nothing.
            let won = sqlx::query(
                "INSERT INTO bindings (id, account_id, batch_id, mode, target, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (batch_id) DO NOTHING",
            )
            .bind(&b.id)
            .bind(&b.account_id)
            .bind(&b.batch_id)
            .bind(&b.mode)
            .bind(&b.target)
            .bind(b.created_ms)
            .execute(pool)
            .await?
            .rows_affected()
                > 0;
            if won {
                return Ok(BindOutcome::Bound(b.clone()));
            }
            let existing = sqlx::query("SELECT * FROM bindings WHERE batch_id = $1")
                .bind(&b.batch_id)
                .fetch_optional(pool)
                .await?;
            Ok(match existing.as_ref().map(binding_of) {
                // A retry after a commit whose answer was lost finds its own row.
                Some(x) if x.id == b.id => BindOutcome::Bound(x),
                Some(x) if x.account_id == b.account_id => BindOutcome::AlreadyYours(x),
                _ => BindOutcome::Taken,
            })
        })
        .await
    }

    async fn binding(&self, account_id: &str, id: &str) -> anyhow::Result<Option<BindingRecord>> {
        let pool = &self.pool;
        let r = self
            .retry("read a binding", move || async move {
                sqlx::query("SELECT * FROM bindings WHERE id = $1 AND account_id = $2")
                    .bind(id)
                    .bind(account_id)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(binding_of))
    }

    async fn bindings(&self, account_id: &str) -> anyhow::Result<Vec<BindingRecord>> {
        let pool = &self.pool;
        let rows = self
            .retry("list bindings", move || async move {
                sqlx::query("SELECT * FROM bindings WHERE account_id = $1 ORDER BY created_ms, id")
                    .bind(account_id)
                    .fetch_all(pool)
                    .await
            })
            .await?;
        Ok(rows.iter().map(binding_of).collect())
    }

    async fn delete_binding(&self, account_id: &str, id: &str) -> anyhow::Result<bool> {
        let pool = &self.pool;
        let r = self
            .retry("delete a binding", move || async move {
                sqlx::query("DELETE FROM bindings WHERE id = $1 AND account_id = $2")
                    .bind(id)
                    .bind(account_id)
                    .execute(pool)
                    .await
            })
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn create_job(&self, j: &JobRecord) -> anyhow::Result<()> {
        let pool = &self.pool;
        self.retry("store a job", move || async move {
            // A retry after a lost answer finds the row there: ON CONFLICT keeps it one.
            sqlx::query(
                "INSERT INTO jobs (id, account_id, binding_id, operation, target, state, \
                 journal_job, error, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&j.id)
            .bind(&j.account_id)
            .bind(&j.binding_id)
            .bind(&j.operation)
            .bind(&j.target)
            .bind(&j.state)
            .bind(&j.journal_job)
            .bind(&j.error)
            .bind(j.created_ms)
            .bind(j.updated_ms)
            .execute(pool)
            .await
        })
        .await?;
        Ok(())
    }

    async fn update_job(
        &self,
        id: &str,
        state: &str,
        journal_job: Option<&str>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let pool = &self.pool;
        let now = super::now_ms();
        self.retry("update a job", move || async move {
            sqlx::query(
                "UPDATE jobs SET state = $1, journal_job = COALESCE($2, journal_job), \
                 error = $3, updated_ms = $4 WHERE id = $5",
            )
            .bind(state)
            .bind(journal_job)
            .bind(error)
            .bind(now)
            .bind(id)
            .execute(pool)
            .await
        })
        .await?;
        Ok(())
    }

    async fn job(&self, account_id: &str, id: &str) -> anyhow::Result<Option<JobRecord>> {
        let pool = &self.pool;
        let r = self
            .retry("read a job", move || async move {
                sqlx::query("SELECT * FROM jobs WHERE id = $1 AND account_id = $2")
                    .bind(id)
                    .bind(account_id)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        Ok(r.as_ref().map(job_of))
    }

    async fn binding_jobs(&self, binding_id: &str) -> anyhow::Result<Vec<JobRecord>> {
        let pool = &self.pool;
        let rows = self
            .retry("list jobs", move || async move {
                sqlx::query(
                    "SELECT * FROM jobs WHERE binding_id = $1 ORDER BY created_ms DESC, id DESC",
                )
                .bind(binding_id)
                .fetch_all(pool)
                .await
            })
            .await?;
        Ok(rows.iter().map(job_of).collect())
    }

    async fn unfinished_jobs(&self) -> anyhow::Result<Vec<JobRecord>> {
        let pool = &self.pool;
        let rows = self
            .retry("list unfinished jobs", move || async move {
                sqlx::query(
                    "SELECT * FROM jobs WHERE state IN ('queued', 'running') \
                     ORDER BY created_ms, id",
                )
                .fetch_all(pool)
                .await
            })
            .await?;
        Ok(rows.iter().map(job_of).collect())
    }

    async fn audit(&self, e: &AuditEntry) -> anyhow::Result<()> {
        let pool = &self.pool;
        self.retry("append to the audit log", move || async move {
            sqlx::query(
                "INSERT INTO audit (id, at_ms, account_id, actor, client, action, subject, \
                 outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&e.id)
            .bind(e.at_ms)
            .bind(&e.account_id)
            .bind(&e.actor)
            .bind(&e.client)
            .bind(&e.action)
            .bind(&e.subject)
            .bind(&e.outcome)
            .bind(&e.detail)
            .execute(pool)
            .await
        })
        .await?;
        Ok(())
    }

    async fn audit_entries(
        &self,
        account_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        let pool = &self.pool;
        let rows = self
            .retry("read the audit log", move || async move {
                sqlx::query(
                    "SELECT * FROM audit WHERE ($1::text IS NULL OR account_id = $1) \
                     AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(account_id)
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(pool)
                .await
            })
            .await?;
        Ok(rows.iter().map(audit_of).collect())
    }
}
