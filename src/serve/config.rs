//! The `[serve]` table of idbridge.toml.
//!
//! ```toml
//! journal = "sqlite:idbridge-journal.sqlite"
//!
//! [serve]
//! listen = "127.0.0.1:8443"
//! # TLS in the server ([serve.tls] cert/key, optional client_ca), or allow_http = true
//! # behind a TLS terminator; bounds: docs/security.md
//! audience = "123456789012"          # the JWT aud CIRRENT (or your sender) puts in tokens
//! targets = ["acme-aws"]             # [targets.NAME] to provision every certificate into
//! # endpoint = "xxxx-ats.iot.eu-central-1.amazonaws.com"  # answered with every SUCCESS
//! # leeway_secs = 30, max_body_bytes = 26214400, max_certs = 10000,
//! # sync_deadline_secs = 20, chunk_size = 500
//!
//! # One table per token issuer; NAME is the `iss` its tokens must carry.
//! [serve.issuers.cirrent]
//! keys = ["interop-public.key"]      # PEM `PUBLIC KEY` blocks or a JWKS file (P-256)
//! # scopes = ["provision", "status"] # add "deprovision" to allow it (off by default)
//! # max_token_lifetime_secs = 600, require_jti = true
//! ```
//!
//! Run: `idbridge serve --config idbridge.toml [--trust vendor-ca.pem] [--journal URL]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use super::auth::{IssuerConfig, MAX_LEEWAY_SECS};
use super::server::Limits;
use super::tls::TlsConfig;

/// `[serve]`: the interop receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Listen address (`--listen` overrides), default `127.0.0.1:8443`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The JWT `aud` this receiver accepts (the tenant id CIRRENT puts in tokens).
    #[serde(default)]
    pub audience: String,
    /// The token issuers (`[serve.issuers.NAME]`, NAME = the tokens' `iss`): keys, scopes,
    /// lifetime.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// Replaced by `[serve.issuers.NAME]` (tokens must name their issuer); refused with a
    /// message saying so.
    #[serde(default)]
    pub issuer_keys: Vec<PathBuf>,
    /// Target names (`[targets.NAME]`) every certificate is provisioned into.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The `endpoint` answered for every SUCCESS, overriding what the targets report (the
    /// address devices connect to, e.g. the AWS IoT data endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allowed clock skew for `exp`/`nbf`/`iat`, seconds (at most 120).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Largest request body, bytes (Infineon's receivers: 25 MB).
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Most certificates in one request.
    #[serde(default = "default_max_certs")]
    pub max_certs: usize,
    /// How long a `provision` request may take before the unfinished items are answered
    /// `ERROR` (`outcome_unknown`), or `ACCEPTED` to a caller that sent
    /// `Prefer: respond-async`, with a job id (callers time out; Lambda receivers run up to
    /// 300 s, HTTP clients commonly 30 s).
    #[serde(default = "default_sync")]
    pub sync_deadline_secs: u64,
    /// Certificates handed to the engine per step of a job (results become visible to
    /// `status` step by step).
    #[serde(default = "default_chunk")]
    pub chunk_size: usize,
    /// TLS in the server itself (`[serve.tls]`); without it `allow_http = true` is required.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP (behind a TLS terminator on the same host or network, or in tests).
    #[serde(default)]
    pub allow_http: bool,
    /// Allow `--allow-test-roots` (chains to vendor test roots, whose private keys are
    /// public): for labs only, logged loudly at start.
    #[serde(default)]
    pub insecure_test_roots: bool,
    /// Seconds for the TLS handshake and each request head (also the keep-alive wait).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds for a whole request body, from its head.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Seconds for a handler's answer (above `sync_deadline_secs`).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds a connection may move no byte while no request is being handled.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Open connections at once (more are answered 503 and closed).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests handled at once (more are answered 503 + Retry-After).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Background provisioning jobs running at once (more are answered 503 + Retry-After).
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
}

impl ServeConfig {
    /// Reads `[serve]` from an idbridge.toml (other tables are left to their owners).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let doc: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        let table = doc
            .get("serve")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} has no [serve] table", path.display()))?;
        let mut cfg: ServeConfig = table
            .try_into()
            .with_context(|| format!("{}: [serve]", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for i in cfg.issuers.values_mut() {
            i.resolve(base);
        }
        if let Some(tls) = &mut cfg.tls {
            tls.resolve(base);
        }
        Ok(cfg)
    }

    /// Checks what can be checked without the keys and targets.
    pub fn validate(&self) -> anyhow::Result<SocketAddr> {
        let addr: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("[serve] listen {:?} is not ADDR:PORT", self.listen))?;
        if self.audience.trim().is_empty() {
            anyhow::bail!("[serve] audience is empty: every token would be refused");
        }
        if !self.issuer_keys.is_empty() {
            anyhow::bail!(
                "[serve] issuer_keys was replaced by one table per issuer, named after the `iss` \
                 its tokens carry: [serve.issuers.NAME] keys = [\"FILE\"] (see docs/security.md)"
            );
        }
        if self.issuers.is_empty() {
            anyhow::bail!(
                "[serve] has no [serve.issuers.NAME] (keys = PEM or JWKS files of the token issuer)"
            );
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            anyhow::bail!(
                "[serve] leeway_secs = {} is above {MAX_LEEWAY_SECS}: clock skew is seconds, not minutes",
                self.leeway_secs
            );
        }
        for (name, i) in &self.issuers {
            if i.keys.is_empty() {
                anyhow::bail!("[serve.issuers.{name}] keys is empty");
            }
            if i.max_token_lifetime_secs == 0 {
                anyhow::bail!("[serve.issuers.{name}] max_token_lifetime_secs must be at least 1");
            }
        }
        if self.targets.is_empty() {
            anyhow::bail!("[serve] targets is empty: name the [targets.NAME] to provision into");
        }
        if self.tls.is_none() && !self.allow_http {
            anyhow::bail!(
                "[serve] has no [serve.tls] (cert, key): add one, or set `allow_http = true` when \
                 a TLS terminator in front of this server does TLS (see docs/security.md)"
            );
        }
        if self.chunk_size == 0 || self.max_certs == 0 {
            anyhow::bail!("[serve] chunk_size and max_certs must be at least 1");
        }
        Ok(addr)
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            audience: String::new(),
            issuers: BTreeMap::new(),
            issuer_keys: Vec::new(),
            targets: Vec::new(),
            endpoint: None,
            leeway_secs: default_leeway(),
            max_body_bytes: default_body(),
            max_certs: default_max_certs(),
            sync_deadline_secs: default_sync(),
            chunk_size: default_chunk(),
            tls: None,
            allow_http: false,
            insecure_test_roots: false,
            header_read_timeout_secs: default_header_timeout(),
            body_timeout_secs: default_body_timeout(),
            request_timeout_secs: default_request_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            max_jobs: default_max_jobs(),
        }
    }
}

impl ServeConfig {
    /// The server bounds this table configures.
    pub fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(
                self.request_timeout_secs.max(self.sync_deadline_secs + 5),
            ),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_in_flight: self.max_in_flight.max(1),
            max_body_bytes: self.max_body_bytes,
            max_jobs: self.max_jobs.max(1),
            ..Limits::default()
        }
    }
}

fn default_header_timeout() -> u64 {
    10
}
fn default_body_timeout() -> u64 {
    30
}
fn default_request_timeout() -> u64 {
    120
}
fn default_idle_timeout() -> u64 {
    30
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_in_flight() -> usize {
    64
}
fn default_max_jobs() -> usize {
    8
}

fn default_listen() -> String {
    "127.0.0.1:8443".to_owned()
}
fn default_leeway() -> u64 {
    30
}
fn default_body() -> usize {
    25 * 1024 * 1024
}
fn default_max_certs() -> usize {
    10_000
}
fn default_sync() -> u64 {
    20
}
fn default_chunk() -> usize {
    500
}
