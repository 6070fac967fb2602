-- The registration service's store, version 1 (PostgreSQL): the same tables, columns and
-- constraints as migrations/sqlite/0001_service.sql, in the schema `idbridge_service` (the
-- store's connections set `search_path` to it), so the service can share a database with the
-- journal, whose `jobs` and `devices` tables live in `public`. Ids and device ids that the
-- store orders or pages by compare bytewise (COLLATE "C"), as SQLite's TEXT does.

CREATE TABLE accounts (
    id           TEXT COLLATE "C" PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    mode         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL
);

CREATE TABLE tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    account_id   TEXT REFERENCES accounts(id),
    role         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_ms   BIGINT NOT NULL
);

-- One imported reel (or file) of a batch. The batch ID and reel ID are claim secrets: only
-- their keyed hash (HMAC-SHA-256 under the server key) is stored.
CREATE TABLE batches (
    id           TEXT COLLATE "C" PRIMARY KEY,
    claim_hash   TEXT NOT NULL UNIQUE,
    batch_tag    TEXT NOT NULL,
    source       TEXT NOT NULL,
    devices      BIGINT NOT NULL,
    invalid      BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL
);

CREATE TABLE devices (
    batch_id     TEXT NOT NULL REFERENCES batches(id),
    device_id    TEXT COLLATE "C" NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT,
    source       TEXT NOT NULL,
    cert_pem     TEXT,
    PRIMARY KEY (batch_id, device_id)
);

CREATE TABLE targets (
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    name         TEXT COLLATE "C" NOT NULL,
    kind         TEXT NOT NULL,
    is_default   BIGINT NOT NULL,
    secret_keys  TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

-- Bind-once: one binding per batch, whoever races.
CREATE TABLE bindings (
    id           TEXT COLLATE "C" PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    batch_id     TEXT NOT NULL UNIQUE REFERENCES batches(id),
    mode         TEXT NOT NULL,
    target       TEXT,
    created_ms   BIGINT NOT NULL
);

CREATE TABLE jobs (
    id           TEXT COLLATE "C" PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    binding_id   TEXT NOT NULL,
    operation    TEXT NOT NULL,
    target       TEXT NOT NULL,
    state        TEXT NOT NULL,
    journal_job  TEXT,
    error        TEXT,
    created_ms   BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_binding ON jobs (binding_id);

CREATE TABLE audit (
    id           TEXT COLLATE "C" PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    account_id   TEXT,
    actor        TEXT NOT NULL,
    client       TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT,
    outcome      TEXT NOT NULL,
    detail       TEXT
);
CREATE INDEX audit_account ON audit (account_id, id);
