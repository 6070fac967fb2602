//! Everything the service keeps, behind one object-safe async trait ([`Store`]), so a second
//! backend (PostgreSQL) is added without touching the service code. [`SqliteStore`] is the
//! embedded default: one file, WAL, migrations from `migrations/sqlite/` applied at open.

use async_trait::async_trait;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// An account (a product company).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Account {
    /// Its id.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// The default binding mode: `manifest`, `manual` or `automatic`.
    pub mode: String,
    /// Created, unix ms.
    pub created_ms: i64,
}

/// A token: only its hash is kept.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Its id (shown in the audit log, never the token).
    pub id: String,
    /// The account (none for operator tokens).
    pub account_id: Option<String>,
    /// `binder`, `admin` or `operator`.
    pub role: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Created, unix ms.
    pub created_ms: i64,
}

/// One imported reel or file of a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchRecord {
    /// Its id.
    pub id: String,
    /// Keyed hash of (batch ID, reel ID): never returned.
    #[serde(skip)]
    pub claim_hash: String,
    /// The non-secret batch tag (`batch:1a2b...`).
    pub batch_tag: String,
    /// The file it came from (name only).
    pub source: String,
    /// Valid devices.
    pub devices: i64,
    /// Invalid or unreadable entries (recorded, never provisioned).
    pub invalid: i64,
    /// Created, unix ms.
    pub created_ms: i64,
}

/// One device of a batch.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// SHA-256 of the DER, hex.
    pub device_id: String,
    /// `valid`, `invalid`, `not_provisionable`, `unreadable`.
    pub status: String,
    /// Why, when not valid.
    pub reason: Option<String>,
    /// File and entry.
    pub source: String,
    /// The certificate, PEM (absent for unreadable entries).
    pub cert_pem: Option<String>,
}

/// A target of an account: `sealed` is the AEAD-encrypted table.
#[derive(Debug, Clone)]
pub struct TargetRecord {
    /// The account.
    pub account_id: String,
    /// The name.
    pub name: String,
    /// `kind`.
    pub kind: String,
    /// Whether it is the account's default.
    pub is_default: bool,
    /// The keys holding secrets (JSON array), shown redacted.
    pub secret_keys: String,
    /// The whole table, sealed with the server key (base64).
    pub sealed: String,
    /// Last change, unix ms.
    pub updated_ms: i64,
}

/// A binding of a batch to an account.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BindingRecord {
    /// Its id.
    pub id: String,
    /// The account.
    #[serde(skip)]
    pub account_id: String,
    /// The bound batch (reel).
    pub batch_id: String,
    /// `manifest`, `manual` or `automatic`.
    pub mode: String,
    /// The target chosen at bind time, if any.
    pub target: Option<String>,
    /// Created, unix ms.
    pub created_ms: i64,
}

/// The result of [`Store::bind`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BindOutcome {
    /// This call bound it.
    Bound(BindingRecord),
    /// The same account had bound it already.
    AlreadyYours(BindingRecord),
    /// Another account holds it.
    Taken,
}

/// A service job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// Its id.
    pub id: String,
    /// The account.
    #[serde(skip)]
    pub account_id: String,
    /// The binding.
    pub binding_id: String,
    /// `provision` or `deprovision`.
    pub operation: String,
    /// The target's name.
    pub target: String,
    /// `queued`, `running`, `finished`, `failed`.
    pub state: String,
    /// The engine's journal job, once opened.
    #[serde(skip)]
    pub journal_job: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Created, unix ms.
    pub created_ms: i64,
    /// Last change, unix ms.
    pub updated_ms: i64,
}

/// One audit entry: who, what, when, from where. Never a secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Time-ordered id.
    pub id: String,
    /// When, unix ms.
    pub at_ms: i64,
    /// The account concerned, if any.
    #[serde(skip)]
    pub account_id: Option<String>,
    /// Token id, or `cli`.
    pub actor: String,
    /// Client address, or `local`.
    pub client: String,
    /// What (`bind`, `target.put`, `job.provision` ...).
    pub action: String,
    /// On what (binding, target, job id).
    pub subject: Option<String>,
    /// `ok`, `denied`, `not_found`, `limited`, `conflict`, `error`.
    pub outcome: String,
    /// Extra, non-secret detail.
    pub detail: Option<String>,
}

/// Everything the service keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers.
    async fn ping(&self) -> anyhow::Result<()>;
    /// Creates an account; `false` when the name exists.
    async fn create_account(&self, a: &Account) -> anyhow::Result<bool>;
    /// An account by name.
    async fn account_by_name(&self, name: &str) -> anyhow::Result<Option<Account>>;
    /// An account by id.
    async fn account(&self, id: &str) -> anyhow::Result<Option<Account>>;
    /// Stores a token.
    async fn create_token(&self, t: &TokenRecord) -> anyhow::Result<()>;
    /// A token by hash.
    async fn token_by_hash(&self, hash: &str) -> anyhow::Result<Option<TokenRecord>>;
    /// Stores a batch and its devices in one transaction; `false` when the same claim exists.
    async fn insert_batch(&self, b: &BatchRecord, devices: &[DeviceRow]) -> anyhow::Result<bool>;
    /// A batch by id.
    async fn batch(&self, id: &str) -> anyhow::Result<Option<BatchRecord>>;
    /// A batch by claim hash.
    async fn batch_by_claim(&self, claim_hash: &str) -> anyhow::Result<Option<BatchRecord>>;
    /// Every batch, newest first.
    async fn batches(&self) -> anyhow::Result<Vec<BatchRecord>>;
    /// Up to `limit` devices of a batch after `after` (device id order); `valid_only` skips the
    /// refused ones.
    async fn devices(
        &self,
        batch_id: &str,
        after: Option<&str>,
        limit: i64,
        valid_only: bool,
    ) -> anyhow::Result<Vec<DeviceRow>>;
    /// Creates or replaces a target; `is_default` clears the others' flag.
    async fn put_target(&self, t: &TargetRecord) -> anyhow::Result<()>;
    /// A target of an account.
    async fn target(&self, account_id: &str, name: &str) -> anyhow::Result<Option<TargetRecord>>;
    /// The account's targets.
    async fn targets(&self, account_id: &str) -> anyhow::Result<Vec<TargetRecord>>;
    /// Deletes a target; `false` when absent.
    async fn delete_target(&self, account_id: &str, name: &str) -> anyhow::Result<bool>;
    /// Binds a batch: exactly one account wins a race.
    async fn bind(&self, b: &BindingRecord) -> anyhow::Result<BindOutcome>;
    /// A binding of an account (`None` for another account's).
    async fn binding(&self, account_id: &str, id: &str) -> anyhow::Result<Option<BindingRecord>>;
    /// The account's bindings.
    async fn bindings(&self, account_id: &str) -> anyhow::Result<Vec<BindingRecord>>;
    /// Deletes a binding; `false` when absent.
    async fn delete_binding(&self, account_id: &str, id: &str) -> anyhow::Result<bool>;
    /// Stores a new job.
    async fn create_job(&self, j: &JobRecord) -> anyhow::Result<()>;
    /// Updates a job's state, journal job and error.
    async fn update_job(
        &self,
        id: &str,
        state: &str,
        journal_job: Option<&str>,
        error: Option<&str>,
    ) -> anyhow::Result<()>;
    /// A job of an account (`None` for another account's).
    async fn job(&self, account_id: &str, id: &str) -> anyhow::Result<Option<JobRecord>>;
    /// The jobs of a binding, newest first.
    async fn binding_jobs(&self, binding_id: &str) -> anyhow::Result<Vec<JobRecord>>;
    /// Jobs not finished (`queued`, `running`), oldest first: resumed at start-up.
    async fn unfinished_jobs(&self) -> anyhow::Result<Vec<JobRecord>>;
    /// Appends to the audit log.
    async fn audit(&self, e: &AuditEntry) -> anyhow::Result<()>;
    /// Audit entries of an account (all for `None`) after `after`, oldest first.
    async fn audit_entries(
        &self,
        account_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditEntry>>;
}

/// Opens the store at `url`: `sqlite:PATH`, or `postgres://USER@HOST:PORT/DB`
/// ([`PgStore`](super::store_pg::PgStore)).
pub async fn open(url: &str) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Ok(std::sync::Arc::new(SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = super::store_pg::PgStore::open(url, Default::default()).await?;
        return Ok(std::sync::Arc::new(store));
    }
    anyhow::bail!("unsupported store: use sqlite:PATH or postgres://USER@HOST:PORT/DATABASE")
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating) the file at `path` in WAL mode and applies the migrations.
    pub async fn open(path: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot open the store sqlite:{path}"))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate the store sqlite:{path}"))?;
        Ok(SqliteStore { pool })
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn account_of(r: &sqlx::sqlite::SqliteRow) -> Account {
    Account {
        id: r.get("id"),
        name: r.get("name"),
        mode: r.get("mode"),
        created_ms: r.get("created_ms"),
    }
}

fn batch_of(r: &sqlx::sqlite::SqliteRow) -> BatchRecord {
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

fn target_of(r: &sqlx::sqlite::SqliteRow) -> TargetRecord {
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

fn binding_of(r: &sqlx::sqlite::SqliteRow) -> BindingRecord {
    BindingRecord {
        id: r.get("id"),
        account_id: r.get("account_id"),
        batch_id: r.get("batch_id"),
        mode: r.get("mode"),
        target: r.get("target"),
        created_ms: r.get("created_ms"),
    }
}

fn job_of(r: &sqlx::sqlite::SqliteRow) -> JobRecord {
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

fn audit_of(r: &sqlx::sqlite::SqliteRow) -> AuditEntry {
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

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_account(&self, a: &Account) -> anyhow::Result<bool> {
        let r = sqlx::query(
            "INSERT INTO accounts (id, name, mode, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.mode)
        .bind(a.created_ms)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn account_by_name(&self, name: &str) -> anyhow::Result<Option<Account>> {
        let r = sqlx::query("SELECT * FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(account_of))
    }

    async fn account(&self, id: &str) -> anyhow::Result<Option<Account>> {
        let r = sqlx::query("SELECT * FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(account_of))
    }

    async fn create_token(&self, t: &TokenRecord) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, account_id, role, token_hash, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.id)
        .bind(&t.account_id)
        .bind(&t.role)
        .bind(&t.token_hash)
        .bind(t.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> anyhow::Result<Option<TokenRecord>> {
        let r = sqlx::query("SELECT * FROM tokens WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO batches (id, claim_hash, batch_tag, source, devices, invalid, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&b.id)
        .bind(&b.claim_hash)
        .bind(&b.batch_tag)
        .bind(&b.source)
        .bind(b.devices)
        .bind(b.invalid)
        .bind(b.created_ms)
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        for d in devices {
            sqlx::query(
                "INSERT INTO devices (batch_id, device_id, status, reason, source, cert_pem) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (batch_id, device_id) DO NOTHING",
            )
            .bind(&b.id)
            .bind(&d.device_id)
            .bind(&d.status)
            .bind(&d.reason)
            .bind(&d.source)
            .bind(&d.cert_pem)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn batch(&self, id: &str) -> anyhow::Result<Option<BatchRecord>> {
        let r = sqlx::query("SELECT * FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(batch_of))
    }

    async fn batch_by_claim(&self, claim_hash: &str) -> anyhow::Result<Option<BatchRecord>> {
        let r = sqlx::query("SELECT * FROM batches WHERE claim_hash = $1")
            .bind(claim_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(batch_of))
    }

    async fn batches(&self) -> anyhow::Result<Vec<BatchRecord>> {
        let rows = sqlx::query("SELECT * FROM batches ORDER BY created_ms DESC, id")
            .fetch_all(&self.pool)
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
        let rows = sqlx::query(
            "SELECT * FROM devices WHERE batch_id = $1 AND device_id > $2 \
             AND (status = 'valid' OR $3 = 0) ORDER BY device_id LIMIT $4",
        )
        .bind(batch_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(valid_only))
        .bind(limit)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        if t.is_default {
            sqlx::query("UPDATE targets SET is_default = 0 WHERE account_id = $1")
                .bind(&t.account_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO targets (account_id, name, kind, is_default, secret_keys, sealed, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
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
        tx.commit().await?;
        Ok(())
    }

    async fn target(&self, account_id: &str, name: &str) -> anyhow::Result<Option<TargetRecord>> {
        let r = sqlx::query("SELECT * FROM targets WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(target_of))
    }

    async fn targets(&self, account_id: &str) -> anyhow::Result<Vec<TargetRecord>> {
        let rows = sqlx::query("SELECT * FROM targets WHERE account_id = $1 ORDER BY name")
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(target_of).collect())
    }

    async fn delete_target(&self, account_id: &str, name: &str) -> anyhow::Result<bool> {
        let r = sqlx::query("DELETE FROM targets WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn bind(&self, b: &BindingRecord) -> anyhow::Result<BindOutcome> {
        let r = sqlx::query(
            "INSERT INTO bindings (id, account_id, batch_id, mode, target, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&b.id)
        .bind(&b.account_id)
        .bind(&b.batch_id)
        .bind(&b.mode)
        .bind(&b.target)
        .bind(b.created_ms)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(BindOutcome::Bound(b.clone())),
            Err(e) if is_unique_violation(&e) => {
                let existing = sqlx::query("SELECT * FROM bindings WHERE batch_id = $1")
                    .bind(&b.batch_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match existing.as_ref().map(binding_of) {
                    Some(x) if x.account_id == b.account_id => BindOutcome::AlreadyYours(x),
                    _ => BindOutcome::Taken,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn binding(&self, account_id: &str, id: &str) -> anyhow::Result<Option<BindingRecord>> {
        let r = sqlx::query("SELECT * FROM bindings WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(binding_of))
    }

    async fn bindings(&self, account_id: &str) -> anyhow::Result<Vec<BindingRecord>> {
        let rows =
            sqlx::query("SELECT * FROM bindings WHERE account_id = $1 ORDER BY created_ms, id")
                .bind(account_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(binding_of).collect())
    }

    async fn delete_binding(&self, account_id: &str, id: &str) -> anyhow::Result<bool> {
        let r = sqlx::query("DELETE FROM bindings WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn create_job(&self, j: &JobRecord) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, account_id, binding_id, operation, target, state, journal_job, \
             error, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .execute(&self.pool)
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
        sqlx::query(
            "UPDATE jobs SET state = $1, journal_job = COALESCE($2, journal_job), error = $3, \
             updated_ms = $4 WHERE id = $5",
        )
        .bind(state)
        .bind(journal_job)
        .bind(error)
        .bind(super::now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job(&self, account_id: &str, id: &str) -> anyhow::Result<Option<JobRecord>> {
        let r = sqlx::query("SELECT * FROM jobs WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(job_of))
    }

    async fn binding_jobs(&self, binding_id: &str) -> anyhow::Result<Vec<JobRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE binding_id = $1 ORDER BY created_ms DESC, id DESC",
        )
        .bind(binding_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_of).collect())
    }

    async fn unfinished_jobs(&self) -> anyhow::Result<Vec<JobRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_of).collect())
    }

    async fn audit(&self, e: &AuditEntry) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO audit (id, at_ms, account_id, actor, client, action, subject, outcome, \
             detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_entries(
        &self,
        account_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM audit WHERE ($1 IS NULL OR account_id = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(account_id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(audit_of).collect())
    }
}
