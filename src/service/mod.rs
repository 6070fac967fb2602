//! The registration service: vendor batches are pre-populated by the operator; an account's
//! binder binds a batch (reel) by batch ID + reel ID or by the QR payload; the devices reach the
//! account's cloud by manifest download, a manual trigger, or automatically on bind. Routes are
//! in [`http`], request/response types in [`api`], what is kept in [`store`].

pub mod api;
pub mod http;
pub mod jobs;
pub mod openapi;
pub mod secrets;
pub mod store;
pub mod store_pg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use idbridge_core::intake::{IntakeOptions, TrustOptions};
use idbridge_core::journal::Journal;
use serde::Deserialize;

use crate::app;
pub use secrets::ServerKey;
pub use store::Store;

/// `[service]` of idbridge.toml.
///
/// ```toml
/// [service]
/// listen = "127.0.0.1:8080"             # unless [serve] is there too
/// store = "sqlite:idbridge-service.sqlite"
/// key_file = "service.key"          # or key_env = "IDBRIDGE_SERVICE_KEY"; 64 hex characters
/// # signing_key = "manifest-signing.pem"   # P-256 PKCS#8: signs the jsonl manifest
/// # bind_attempts = 10, bind_window_secs = 900
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Listen address when there is no `[serve]` table (`--listen` overrides).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The store URL.
    #[serde(default = "default_store")]
    pub store: String,
    /// File holding the server key (hex).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the server key (hex).
    #[serde(default)]
    pub key_env: Option<String>,
    /// P-256 PKCS#8 PEM key signing the jsonl manifest.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Failed binds allowed per account and per client address within the window.
    #[serde(default = "default_attempts")]
    pub bind_attempts: u32,
    /// The attempt window, seconds.
    #[serde(default = "default_window")]
    pub bind_window_secs: u64,
    /// TLS in the server (`[service.tls]`: cert, key, optional client_ca) when there is no
    /// `[serve]` table; without it `allow_http = true` is required.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Serve plain HTTP (behind a TLS terminator, or on loopback for a demo and tests).
    #[serde(default)]
    pub allow_http: bool,
    /// Largest request body, bytes (a batch upload is the largest request).
    #[serde(default = "default_service_body")]
    pub max_body_bytes: usize,
    /// Vendor batches imported at start-up unless already there (`[[service.preload]]`):
    /// the operator's pre-population, also what the demo uses.
    #[serde(default)]
    pub preload: Vec<Preload>,
}

/// `[[service.preload]]`: one batch (reel) imported at start-up unless already imported.
/// `Debug` never shows the claim (batch ID, reel ID).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preload {
    /// The batch's files (relative to the config file).
    pub files: Vec<PathBuf>,
    /// The Product Batch ID (default: from a Cloud ID bundle's file name).
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The Reel ID (default: from a Cloud ID bundle's file name).
    #[serde(default)]
    pub reel_id: Option<String>,
}

fn default_service_body() -> usize {
    64 * 1024 * 1024
}

impl std::fmt::Debug for Preload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preload")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_store() -> String {
    "sqlite:idbridge-service.sqlite".into()
}
fn default_attempts() -> u32 {
    10
}
fn default_window() -> u64 {
    900
}

impl ServiceConfig {
    /// Reads `[service]` from an idbridge.toml; `None` when absent. Relative paths are taken
    /// from the file's directory.
    pub fn from_file(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let doc: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        let Some(table) = doc.get("service").cloned() else {
            return Ok(None);
        };
        let mut cfg: ServiceConfig = table
            .try_into()
            .with_context(|| format!("{}: [service]", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.key_file, &mut cfg.signing_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(tls) = &mut cfg.tls {
            tls.resolve(base);
        }
        for p in cfg.preload.iter_mut().flat_map(|p| p.files.iter_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(rest) = cfg.store.strip_prefix("sqlite:") {
            let p = Path::new(rest);
            if p.is_relative() {
                cfg.store = format!("sqlite:{}", base.join(p).display());
            }
        }
        Ok(Some(cfg))
    }

    /// The server key, from `key_file` or `key_env`; an error says how to make one.
    pub fn server_key(&self) -> anyhow::Result<ServerKey> {
        if let Some(f) = &self.key_file
            && !f.exists()
        {
            create_key_file(f)?;
        }
        if let Some(f) = &self.key_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the server key file {}", f.display()))?;
            return ServerKey::from_hex(&text, &f.display().to_string());
        }
        if let Some(v) = &self.key_env {
            let text = std::env::var(v)
                .map_err(|_| anyhow::anyhow!("[service] key_env: {v} is not set"))?;
            return ServerKey::from_hex(&text, v);
        }
        anyhow::bail!(
            "[service] needs a server key: key_file = \"FILE\" or key_env = \"VAR\" \
             (make one with `idbridge service keygen > FILE`)"
        )
    }
}

/// Writes a new random server key to `path` (mode 0600, never over an existing file), as SSH
/// does for host keys: the first start of a new deployment needs no extra step.
fn create_key_file(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let hex = ServerKey::generate_hex()?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot create the server key file {}", path.display()))?;
    f.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write the server key file {}", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        "created a new server key: keep this file (and back it up); without it the stored \
         target secrets cannot be read and claims no longer match"
    );
    Ok(())
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// A new time-ordered id with a prefix (`acc`, `bnd`, `job` ...).
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    // RNG failure leaves zeros; ids still differ by the time prefix.
    let _ = aws_lc_rs::rand::fill(&mut b);
    format!("{prefix}_{:012x}{}", now_ms(), hex::encode(b))
}

/// Who calls: from a token, or the local CLI.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token id, or `cli`.
    pub actor: String,
    /// The account, none for the operator.
    pub account_id: Option<String>,
    /// `binder`, `admin`, `operator`.
    pub role: String,
    /// Client address, or `local`.
    pub client: String,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Binds by result.
    pub binds_ok: AtomicU64,
    /// Failed binds (wrong pair).
    pub binds_not_found: AtomicU64,
    /// Binds refused: taken.
    pub binds_conflict: AtomicU64,
    /// Binds refused: attempt limit.
    pub binds_limited: AtomicU64,
    /// Jobs started.
    pub jobs_started: AtomicU64,
    /// Jobs finished.
    pub jobs_finished: AtomicU64,
    /// Jobs failed.
    pub jobs_failed: AtomicU64,
    /// Devices done.
    pub devices_done: AtomicU64,
    /// Devices failed.
    pub devices_failed: AtomicU64,
    /// Retries (throttles and temporary errors) by the engine.
    pub retries: AtomicU64,
}

/// Failed-attempt windows per key (account, client address).
#[derive(Debug, Default)]
pub struct Attempts {
    map: std::sync::Mutex<HashMap<String, (Instant, u32)>>,
}

impl Attempts {
    /// Seconds to wait when `key` is over `limit` in `window`, else `None`.
    pub fn blocked(&self, key: &str, limit: u32, window: Duration) -> Option<u64> {
        let g = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(key) {
            Some((start, n)) if *n >= limit && start.elapsed() < window => {
                Some((window - start.elapsed()).as_secs().max(1))
            }
            _ => None,
        }
    }

    /// Counts a failure of `key`.
    pub fn fail(&self, key: &str, window: Duration) {
        let mut g = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.entry(key.to_owned()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= window {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// The running service: store, key, trust, journal and the job runner.
pub struct Service {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The server key.
    pub key: ServerKey,
    /// The configuration.
    pub cfg: ServiceConfig,
    /// How imported certificates are judged.
    pub trust: TrustOptions,
    /// The engine's journal (every service job runs through it).
    pub journal: Arc<dyn Journal>,
    /// The journal URL.
    pub journal_url: String,
    /// Manifest signing key.
    pub signing_key: Option<idbridge_manifest::SigningKey>,
    /// Counters.
    pub metrics: Metrics,
    /// Failed-bind windows.
    pub attempts: Attempts,
    /// Running jobs (progress for SSE).
    pub jobs: jobs::Runner,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Opens the store, reads the key, opens the journal.
    pub async fn open(
        cfg: ServiceConfig,
        trust: TrustOptions,
        journal_url: String,
    ) -> anyhow::Result<Arc<Self>> {
        let key = cfg.server_key()?;
        let store = store::open(&cfg.store).await?;
        let journal = app::open_journal(&journal_url)?;
        let signing_key = match &cfg.signing_key {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Some(idbridge_manifest::SigningKey::from_pem(
                    &text,
                    &p.display().to_string(),
                )?)
            }
            None => None,
        };
        Ok(Arc::new(Service {
            store,
            key,
            cfg,
            trust,
            journal,
            journal_url,
            signing_key,
            metrics: Metrics::default(),
            attempts: Attempts::default(),
            jobs: jobs::Runner::default(),
        }))
    }

    /// Writes an audit entry; a failure to write is logged, never fatal to the request.
    pub async fn audit(
        &self,
        caller: &Caller,
        account_id: Option<&str>,
        action: &str,
        subject: Option<&str>,
        outcome: &str,
        detail: Option<String>,
    ) {
        let e = store::AuditEntry {
            id: new_id("aud"),
            at_ms: now_ms(),
            account_id: account_id.map(str::to_owned),
            actor: caller.actor.clone(),
            client: caller.client.clone(),
            action: action.to_owned(),
            subject: subject.map(str::to_owned),
            outcome: outcome.to_owned(),
            detail,
        };
        if let Err(err) = self.store.audit(&e).await {
            tracing::error!(error = %err, action, "cannot write the audit log");
        }
    }

    /// Imports the `[[service.preload]]` batches that are not in the store yet; returns how
    /// many it imported. A batch that fails to import stops the start-up with its file named.
    pub async fn preload(&self) -> anyhow::Result<usize> {
        let mut imported = 0;
        for p in &self.cfg.preload {
            let name = p
                .files
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default();
            let (b, r) = claim_of(p.batch_id.clone(), p.reel_id.clone(), &name)
                .with_context(|| format!("[[service.preload]] {name}"))?;
            if self
                .store
                .batch_by_claim(&self.key.claim_hash(&b, &r))
                .await?
                .is_some()
            {
                continue;
            }
            let batch = self
                .import(p.files.clone(), &name, Some(b), Some(r))
                .await
                .with_context(|| format!("[[service.preload]] {name}"))?;
            tracing::info!(batch = %batch.id, devices = batch.devices, invalid = batch.invalid, "preloaded a batch");
            imported += 1;
        }
        Ok(imported)
    }

    /// Imports vendor files as one batch (reel): every certificate verified, the invalid ones
    /// recorded with the reason. The claim (batch ID, reel ID) comes from the arguments or
    /// from a Cloud ID bundle file name `REELID_GUID_vX.Y.7z`; a batch ID without a reel ID
    /// imports a whole batch, claimed by its batch ID alone (see [`claim_of`]).
    pub async fn import(
        &self,
        files: Vec<PathBuf>,
        display_name: &str,
        batch_id: Option<String>,
        reel_id: Option<String>,
    ) -> anyhow::Result<store::BatchRecord> {
        let (batch_id, reel_id) =
            claim_of(batch_id, reel_id, display_name).with_context(|| display_name.to_owned())?;
        if reel_id.trim().is_empty() && batch_id.trim().len() < 16 {
            tracing::warn!(
                file = %redact_claim(display_name, &batch_id, ""),
                "a whole batch is claimed by its batch ID alone: this one is shorter than 16 \
                 characters and may be guessed; prefer a random ID (a UUID)"
            );
        }
        let opts = IntakeOptions {
            trust: self.trust.clone(),
            ..IntakeOptions::default()
        };
        let inputs = app::read_inputs(files, opts, false).await?;
        let mut rows = Vec::with_capacity(inputs.devices.len() + inputs.refused.len());
        for d in &inputs.devices {
            rows.push(store::DeviceRow {
                device_id: d.device_id.to_string(),
                status: "valid".into(),
                reason: None,
                source: redact_claim(&d.source.to_string(), &batch_id, &reel_id),
                cert_pem: Some(d.to_pem()),
            });
        }
        let mut unreadable = 0u64;
        for r in &inputs.refused {
            let device_id = match &r.device_id {
                Some(d) => d.clone(),
                None => {
                    unreadable += 1;
                    format!("unreadable-{unreadable:06}")
                }
            };
            rows.push(store::DeviceRow {
                device_id,
                status: r.status.to_owned(),
                reason: Some(r.reason.clone()),
                source: redact_claim(&r.source, &batch_id, &reel_id),
                cert_pem: None,
            });
        }
        let batch = store::BatchRecord {
            id: new_id("bat"),
            claim_hash: self.key.claim_hash(&batch_id, &reel_id),
            batch_tag: idbridge_core::BatchRef::new(batch_id.trim())
                .tag()
                .to_owned(),
            source: redact_claim(display_name, &batch_id, &reel_id),
            devices: inputs.devices.len() as i64,
            invalid: inputs.refused.len() as i64,
            created_ms: now_ms(),
        };
        anyhow::ensure!(
            self.store.insert_batch(&batch, &rows).await?,
            "{}",
            if reel_id.trim().is_empty() {
                "this whole batch is already imported"
            } else {
                "this batch and reel are already imported"
            }
        );
        Ok(batch)
    }
}

/// `text` (a file name or path) with the claim secrets replaced: a Cloud ID bundle's name (and
/// the names inside it) carry the reel ID and batch ID, which are never stored in clear.
pub fn redact_claim(text: &str, batch_id: &str, reel_id: &str) -> String {
    let mut out = text.to_owned();
    for (secret, shown) in [(batch_id.trim(), "BATCHID"), (reel_id.trim(), "REELID")] {
        if secret.is_empty() {
            continue;
        }
        let needle = secret.to_ascii_lowercase();
        let mut from = 0;
        // ASCII lowercasing keeps byte offsets, so matches index `out` itself.
        while let Some(at) = out.to_ascii_lowercase()[from..].find(&needle) {
            let at = from + at;
            out.replace_range(at..at + needle.len(), shown);
            from = at + shown.len();
        }
    }
    out
}

/// The claim `(batch ID, reel ID)` of an import: the arguments where given, else a Cloud ID
/// bundle's file name. A batch ID with no reel ID (given or in the name) is a whole batch: its
/// reel ID is empty and the batch ID alone claims it. Vendors that ship reels (Infineon) print
/// a letter per reel with both IDs, and such a batch is imported and claimed reel by reel, so
/// that knowing a batch ID never claims another company's reel of the same batch; vendors that
/// ship an order as one file (Microchip manifests, Espressif CSVs) are imported whole.
pub fn claim_of(
    batch_id: Option<String>,
    reel_id: Option<String>,
    file_name: &str,
) -> anyhow::Result<(String, String)> {
    let from_name = claim_from_file_name(file_name);
    let (batch_id, reel_id) = match (batch_id, reel_id, from_name) {
        (Some(b), Some(r), _) => (b, r),
        (b, r, Some((fr, fb))) => (b.unwrap_or(fb), r.unwrap_or(fr)),
        (Some(b), None, None) => (b, String::new()),
        (None, _, None) => anyhow::bail!(
            "give the batch ID (and the reel ID for a reel): the file name is not a Cloud ID \
             bundle name REELID_GUID_vX.Y.7z"
        ),
    };
    anyhow::ensure!(
        !batch_id.trim().is_empty(),
        "the batch ID must not be empty"
    );
    Ok((batch_id, reel_id))
}

/// `(reel ID, batch ID)` from a Cloud ID bundle name `REELID_GUID_vX.Y.7z` (path allowed).
pub fn claim_from_file_name(name: &str) -> Option<(String, String)> {
    let base = Path::new(name).file_name()?.to_str()?;
    let stem = base.strip_suffix(".7z")?;
    let mut parts = stem.split('_');
    let reel = parts.next()?;
    let guid = parts.next()?;
    let ok_reel = !reel.is_empty() && reel.bytes().all(|b| b.is_ascii_hexdigit());
    let ok_guid = guid.len() == 36 && guid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (ok_reel && ok_guid).then(|| (reel.to_owned(), guid.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_from_bundle_name() {
        assert_eq!(
            claim_from_file_name(
                "/x/78211223032C7EFA_b41425b9-b42b-47fd-95c2-f981b4c61561_v1.2.7z"
            ),
            Some((
                "78211223032C7EFA".into(),
                "b41425b9-b42b-47fd-95c2-f981b4c61561".into()
            ))
        );
        assert_eq!(claim_from_file_name("manifest-infineon.7z"), None);
        assert_eq!(claim_from_file_name("batch.pem"), None);
    }

    #[test]
    fn a_claim_is_a_reel_or_a_whole_batch() {
        let bundle = "78211223032C7EFA_b41425b9-b42b-47fd-95c2-f981b4c61561_v1.2.7z";
        let s = |v: &str| Some(v.to_owned());
        let pair = |b: &str, r: &str| (b.to_owned(), r.to_owned());
        assert_eq!(claim_of(s("B"), s("R"), "x.pem").unwrap(), pair("B", "R"));
        assert_eq!(claim_of(s("B"), None, "x.pem").unwrap(), pair("B", ""));
        assert_eq!(
            claim_of(None, None, bundle).unwrap(),
            pair("b41425b9-b42b-47fd-95c2-f981b4c61561", "78211223032C7EFA")
        );
        assert_eq!(
            claim_of(s("B"), None, bundle).unwrap(),
            pair("B", "78211223032C7EFA")
        );
        assert!(claim_of(None, s("R"), "x.pem").is_err());
        assert!(claim_of(None, None, "x.pem").is_err());
        assert!(claim_of(s("  "), None, "x.pem").is_err());
    }

    #[test]
    fn claim_secrets_are_cut_from_file_names() {
        assert_eq!(
            redact_claim(
                "/x/78211223032c7efa_b41425b9-b42b-47fd-95c2-f981b4c61561_v1.2.7z!a_E0E0.pem",
                "b41425b9-b42b-47fd-95c2-f981b4c61561",
                "78211223032C7EFA"
            ),
            "/x/REELID_BATCHID_v1.2.7z!a_E0E0.pem"
        );
        assert_eq!(redact_claim("devices.pem", "BATCH-1", ""), "devices.pem");
        assert_eq!(redact_claim("batchid.pem", "batchid", "r"), "BATCHID.pem");
    }

    #[test]
    fn attempts_block_after_the_limit() {
        let a = Attempts::default();
        let w = Duration::from_secs(60);
        for _ in 0..3 {
            assert!(a.blocked("k", 3, w).is_none());
            a.fail("k", w);
        }
        assert!(a.blocked("k", 3, w).is_some());
        assert!(a.blocked("other", 3, w).is_none());
    }
}
