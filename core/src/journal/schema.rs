//! The journal's schema: one ordered list of migrations, each in the two dialects it runs on.
//! Both stores record what they applied in `schema_migrations`, so a file or database written by
//! an older idbridge is brought forward the same way on SQLite and PostgreSQL.

/// One step of the schema.
pub(crate) struct Migration {
    /// Applied in increasing order, once.
    pub version: i64,
    /// What it does, for the record.
    pub name: &'static str,
    /// SQLite dialect.
    pub sqlite: &'static str,
    /// PostgreSQL dialect.
    pub postgres: &'static str,
}

/// Every migration, oldest first. Never edit one that has shipped: add another.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs, devices, certificates",
        sqlite: "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    operation TEXT NOT NULL,
    target TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key, state);
CREATE TABLE IF NOT EXISTS devices (
    job TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    reason TEXT,
    request_id TEXT,
    remote_name TEXT,
    resources TEXT,
    source TEXT NOT NULL
);
-- Rows are stored in rowid (= input) order, so the devices a run updates together share pages;
-- the key is looked up through this index, device id first (it differs in the first bytes).
CREATE UNIQUE INDEX IF NOT EXISTS devices_key ON devices (device_id, job);
CREATE INDEX IF NOT EXISTS devices_seq ON devices (job, seq);
-- Certificates are written once and read only by `resume`: kept apart so the rows the engine
-- updates stay small.
CREATE TABLE IF NOT EXISTS certificates (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    source_json TEXT NOT NULL,
    vendor_json TEXT NOT NULL,
    batch_tag TEXT,
    der BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_seq ON certificates (job, seq);
",
        postgres: "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    operation TEXT NOT NULL,
    target TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key, state);
CREATE TABLE IF NOT EXISTS devices (
    job TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    error_kind TEXT,
    reason TEXT,
    request_id TEXT,
    remote_name TEXT,
    resources TEXT,
    source TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS devices_key ON devices (device_id, job);
CREATE INDEX IF NOT EXISTS devices_seq ON devices (job, seq);
CREATE TABLE IF NOT EXISTS certificates (
    job TEXT NOT NULL,
    seq BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    source_json TEXT NOT NULL,
    vendor_json TEXT NOT NULL,
    batch_tag TEXT,
    der BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_seq ON certificates (job, seq);
",
    },
    Migration {
        version: 2,
        name: "leases",
        sqlite: "
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    acquired_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, target);
",
        postgres: "
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    acquired_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, target);
",
    },
    Migration {
        version: 3,
        name: "devices.updated",
        // When the device's record last changed (RFC 3339): for a finished device, when its
        // outcome was recorded (the reports' `finished_at`). Rows written before stay NULL.
        sqlite: "ALTER TABLE devices ADD COLUMN updated TEXT;",
        postgres: "ALTER TABLE devices ADD COLUMN IF NOT EXISTS updated TEXT;",
    },
];

/// The table both stores keep their applied versions in.
pub(crate) const VERSIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied TEXT NOT NULL
)";

/// Takes a lease when free, expired or already the caller's (both dialects: `$n` parameters
/// are accepted by SQLite too). $1 name, $2 owner, $3 new expiry, $4 now.
pub(crate) const ACQUIRE_LEASE: &str = "INSERT INTO leases (name, owner, expires_ms, acquired_ms)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms,
    acquired_ms = CASE WHEN leases.owner = excluded.owner THEN leases.acquired_ms
                  ELSE excluded.acquired_ms END
WHERE leases.owner = excluded.owner OR leases.expires_ms <= $4";

/// Extends a lease the caller still holds. $1 name, $2 owner, $3 new expiry.
pub(crate) const RENEW_LEASE: &str =
    "UPDATE leases SET expires_ms = $3 WHERE name = $1 AND owner = $2";

/// Gives a lease back. $1 name, $2 owner.
pub(crate) const RELEASE_LEASE: &str = "DELETE FROM leases WHERE name = $1 AND owner = $2";
