//! Bearer JWT verification of the interop receiver.
//!
//! - ES256 only, against the public keys (PEM or JWKS) of the configured issuers.
//! - `iss` is required and picks the issuer: only that issuer's keys are tried, so a token
//!   signed by one issuer's key and claiming another issuer is refused.
//! - `aud` equal to the configured audience; `exp` and `iat` required; `nbf` honoured; a
//!   small leeway (at most [`MAX_LEEWAY_SECS`]) for clock skew.
//! - `exp - iat` at most the issuer's `max_token_lifetime_secs` (default 600 s); `iat` not in
//!   the future beyond the leeway.
//! - `jti` (required unless the issuer sets `require_jti = false`) is remembered until the
//!   token expires: a replayed token is refused.
//! - Each issuer may use only its scopes (`provision`, `status`, `deprovision`); deprovision is
//!   off unless listed.
//!
//! Every refusal is a 401 with Infineon's error bodies; the precise reason goes to the log.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Largest accepted clock-skew leeway, seconds.
pub const MAX_LEEWAY_SECS: u64 = 120;
/// Default longest token lifetime (`exp - iat`), seconds.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 600;
/// Tokens remembered for replay detection at once; when full (after dropping the expired
/// ones) new tokens are refused rather than remembered partially.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;
/// Longest `jti` or `iss`, characters.
const MAX_CLAIM_CHARS: usize = 256;
/// Longest token, bytes (a P-256 JWT with a few claims is ~400 bytes).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The 401 bodies' messages (as Infineon's receivers answer them).
pub mod msg {
    /// No `Authorization` header.
    pub const MISSING: &str = "Missing Authorization Header";
    /// Not two space-separated parts.
    pub const INVALID: &str = "Token invalid";
    /// Scheme other than Bearer.
    pub const NOT_BEARER: &str = "Authorization Header must contain Bearer Token";
    /// Signature, alg, iss, aud, lifetime, replay or exp check failed.
    pub const CANNOT_VERIFY: &str = "Cannot verify and decode token";
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Scope {
    /// `provision`.
    Provision,
    /// `deprovision` (off unless configured).
    Deprovision,
    /// `status` (by job or by fingerprint).
    Status,
}

impl Scope {
    /// The action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Provision => "provision",
            Scope::Deprovision => "deprovision",
            Scope::Status => "status",
        }
    }
}

/// `[serve.issuers.NAME]`: one token issuer; NAME is the `iss` its tokens must carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Files with the issuer's public keys: PEM (`PUBLIC KEY` blocks) or JWKS JSON (P-256).
    pub keys: Vec<PathBuf>,
    /// What its tokens may do; default `["provision", "status"]`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    /// Longest accepted `exp - iat`, seconds.
    #[serde(default = "default_max_lifetime")]
    pub max_token_lifetime_secs: u64,
    /// Refuse tokens without `jti` (without one a token cannot be checked for replay).
    #[serde(default = "default_true")]
    pub require_jti: bool,
}

impl IssuerConfig {
    /// Makes relative key paths relative to `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        for k in &mut self.keys {
            if k.is_relative() {
                *k = base.join(&*k);
            }
        }
    }
}

/// The policy of one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// What its tokens may do.
    pub scopes: Vec<Scope>,
    /// Longest `exp - iat`, seconds.
    pub max_lifetime_secs: u64,
    /// `jti` required.
    pub require_jti: bool,
}

impl Default for IssuerPolicy {
    fn default() -> Self {
        IssuerPolicy {
            scopes: default_scopes(),
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            require_jti: true,
        }
    }
}

/// One issuer: the `iss` it signs as, its keys and its policy.
pub struct Issuer {
    /// The `iss` value.
    pub name: String,
    /// Its verification keys.
    pub keys: Vec<DecodingKey>,
    /// What it may do.
    pub policy: IssuerPolicy,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The issuer (`iss`).
    pub issuer: Arc<str>,
    /// Its scopes.
    pub scopes: Arc<[Scope]>,
}

impl Grant {
    /// Whether `scope` is granted.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why a token was refused: the caller's 401 message and the reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The 401 body's `error` (one of [`msg`]).
    pub message: &'static str,
    /// For the server log only.
    pub reason: &'static str,
}

impl Refusal {
    fn verify(reason: &'static str) -> Self {
        Refusal {
            message: msg::CANNOT_VERIFY,
            reason,
        }
    }
}

/// Verifies bearer tokens.
pub struct TokenVerifier {
    issuers: HashMap<String, Known>,
    audience: String,
    leeway: i64,
    validation: Validation,
    replay: Mutex<ReplayCache>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// A configured issuer: keys, policy, and its scopes as granted.
type Known = (Vec<DecodingKey>, IssuerPolicy, Arc<[Scope]>);

/// The claims idbridge reads (signature verified first).
#[derive(Deserialize)]
struct Claims {
    iss: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    jti: Option<serde_json::Value>,
}

impl TokenVerifier {
    /// Loads every issuer's key files; fails naming the file when one has no usable key.
    pub fn load(
        issuers: &std::collections::BTreeMap<String, IssuerConfig>,
        audience: &str,
        leeway_secs: u64,
    ) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for (name, cfg) in issuers {
            let mut keys = Vec::new();
            for f in &cfg.keys {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("[serve.issuers.{name}] key file {}", f.display()))?;
                let found = parse_keys(&text)
                    .with_context(|| format!("[serve.issuers.{name}] key file {}", f.display()))?;
                keys.extend(found);
            }
            out.push(Issuer {
                name: name.clone(),
                keys,
                policy: IssuerPolicy {
                    scopes: cfg.scopes.clone(),
                    max_lifetime_secs: cfg.max_token_lifetime_secs,
                    require_jti: cfg.require_jti,
                },
            });
        }
        Self::new(out, audience, leeway_secs)
    }

    /// A verifier over decoded keys.
    pub fn new(issuers: Vec<Issuer>, audience: &str, leeway_secs: u64) -> anyhow::Result<Self> {
        if issuers.is_empty() {
            anyhow::bail!("no token issuer configured ([serve.issuers.NAME] with keys)");
        }
        if audience.trim().is_empty() {
            anyhow::bail!("no audience configured");
        }
        if leeway_secs > MAX_LEEWAY_SECS {
            anyhow::bail!(
                "leeway_secs = {leeway_secs} is too large (at most {MAX_LEEWAY_SECS}): it would stretch every token's lifetime"
            );
        }
        let mut map = HashMap::new();
        for i in issuers {
            if i.name.trim().is_empty() || i.name.chars().count() > MAX_CLAIM_CHARS {
                anyhow::bail!("issuer name {:?} is empty or too long", i.name);
            }
            if i.keys.is_empty() {
                anyhow::bail!("issuer {:?} has no public key", i.name);
            }
            if i.policy.max_lifetime_secs == 0 {
                anyhow::bail!(
                    "issuer {:?}: max_token_lifetime_secs must be at least 1",
                    i.name
                );
            }
            let scopes: Arc<[Scope]> = i.policy.scopes.clone().into();
            map.insert(i.name, (i.keys, i.policy, scopes));
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["aud"]);
        // Time claims are checked below against one `now` (injectable in tests).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Ok(TokenVerifier {
            issuers: map,
            audience: audience.to_owned(),
            leeway: leeway_secs as i64,
            validation,
            replay: Mutex::new(ReplayCache::new(DEFAULT_REPLAY_CAPACITY)),
        })
    }

    /// A verifier with one issuer (tests, benches).
    #[cfg(any(test, feature = "bench"))]
    pub fn single(
        issuer: &str,
        keys: Vec<DecodingKey>,
        policy: IssuerPolicy,
        audience: &str,
        leeway_secs: u64,
    ) -> anyhow::Result<Self> {
        Self::new(
            vec![Issuer {
                name: issuer.to_owned(),
                keys,
                policy,
            }],
            audience,
            leeway_secs,
        )
    }

    /// Sets how many tokens the replay cache remembers.
    #[cfg(test)]
    pub fn with_replay_capacity(self, capacity: usize) -> Self {
        *lock(&self.replay) = ReplayCache::new(capacity);
        self
    }

    /// Checks an `Authorization` header value now.
    pub fn check(&self, header: Option<&[u8]>) -> Result<Grant, Refusal> {
        self.check_at(header, jsonwebtoken::get_current_timestamp() as i64)
    }

    /// Checks an `Authorization` header value at `now` (seconds since the epoch).
    pub fn check_at(&self, header: Option<&[u8]>, now: i64) -> Result<Grant, Refusal> {
        let Some(raw) = header else {
            return Err(Refusal {
                message: msg::MISSING,
                reason: "no Authorization header",
            });
        };
        let invalid = Refusal {
            message: msg::INVALID,
            reason: "malformed Authorization header",
        };
        let value = std::str::from_utf8(raw).map_err(|_| invalid)?;
        let parts: Vec<&str> = value.split(' ').collect();
        if parts.len() != 2 {
            return Err(invalid);
        }
        if !parts[0].eq_ignore_ascii_case("bearer") {
            return Err(Refusal {
                message: msg::NOT_BEARER,
                reason: "scheme is not Bearer",
            });
        }
        let token = parts[1];
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::verify("token too long"));
        }
        // The header must name ES256 before any key is tried (alg none / HS256 never reach a
        // key; jsonwebtoken also refuses an algorithm outside `validation.algorithms`).
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::verify("undecodable JWT header"))?;
        if header.alg != Algorithm::ES256 {
            return Err(Refusal::verify("alg is not ES256"));
        }
        // `iss` picks the keys: read it before verifying, trust it only after.
        let claimed = unverified_issuer(token).ok_or(Refusal::verify("no iss claim"))?;
        let (keys, policy, scopes) = self
            .issuers
            .get(&claimed)
            .ok_or(Refusal::verify("iss is not a configured issuer"))?;
        let claims = keys
            .iter()
            .find_map(|k| jsonwebtoken::decode::<Claims>(token, k, &self.validation).ok())
            .ok_or(Refusal::verify(
                "signature or aud check failed with the issuer's keys",
            ))?
            .claims;
        // Verified: the claims below are the issuer's.
        if claims.iss.as_ref().and_then(|v| v.as_str()) != Some(claimed.as_str()) {
            return Err(Refusal::verify("iss changed between reads"));
        }
        let exp = int_claim(&claims.exp).ok_or(Refusal::verify("exp missing or not a number"))?;
        let iat = int_claim(&claims.iat).ok_or(Refusal::verify("iat missing or not a number"))?;
        if exp + self.leeway < now {
            return Err(Refusal::verify("expired"));
        }
        if iat - self.leeway > now {
            return Err(Refusal::verify("iat in the future"));
        }
        if claims.nbf.is_some() {
            let nbf = int_claim(&claims.nbf).ok_or(Refusal::verify("nbf not a number"))?;
            if nbf - self.leeway > now {
                return Err(Refusal::verify("not yet valid (nbf)"));
            }
        }
        if exp < iat || (exp - iat) as u64 > policy.max_lifetime_secs {
            return Err(Refusal::verify(
                "lifetime exp - iat above the issuer's maximum",
            ));
        }
        match &claims.jti {
            None if policy.require_jti => return Err(Refusal::verify("no jti")),
            None => {}
            Some(v) => {
                let jti = v
                    .as_str()
                    .filter(|j| !j.is_empty() && j.chars().count() <= MAX_CLAIM_CHARS)
                    .ok_or(Refusal::verify("jti not a string of 1..=256 characters"))?;
                lock(&self.replay).insert(&claimed, jti, exp + self.leeway, now)?;
            }
        }
        Ok(Grant {
            issuer: Arc::from(claimed.as_str()),
            scopes: Arc::clone(scopes),
        })
    }
}

/// `(iss, jti)` of accepted tokens until they expire.
struct ReplayCache {
    capacity: usize,
    seen: HashMap<(String, String), i64>,
    by_expiry: BTreeSet<(i64, String, String)>,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Remembers the token until `until`; refuses one already seen.
    fn insert(&mut self, iss: &str, jti: &str, until: i64, now: i64) -> Result<(), Refusal> {
        while let Some(first) = self.by_expiry.first() {
            if first.0 >= now {
                break;
            }
            if let Some((_, i, j)) = self.by_expiry.pop_first() {
                self.seen.remove(&(i, j));
            }
        }
        let key = (iss.to_owned(), jti.to_owned());
        if self.seen.contains_key(&key) {
            return Err(Refusal::verify("replayed token (jti already used)"));
        }
        if self.seen.len() >= self.capacity {
            return Err(Refusal::verify(
                "replay cache full: token refused rather than unchecked",
            ));
        }
        self.by_expiry.insert((until, key.0.clone(), key.1.clone()));
        self.seen.insert(key, until);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A NumericDate claim as whole seconds (JWT allows fractions; they are truncated).
fn int_claim(v: &Option<serde_json::Value>) -> Option<i64> {
    let v = v.as_ref()?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// The `iss` string of a JWT's payload, unverified.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let iss: Iss = serde_json::from_slice(&bytes).ok()?;
    iss.iss.filter(|s| s.chars().count() <= MAX_CLAIM_CHARS)
}

/// Keys of a PEM (one or more `PUBLIC KEY` blocks) or JWKS (`{"keys": [...]}`) text. JWKS
/// entries other than EC P-256 are skipped; a file with no usable key is an error.
pub fn parse_keys(text: &str) -> anyhow::Result<Vec<DecodingKey>> {
    let trimmed = text.trim_start();
    let mut keys = Vec::new();
    if trimmed.starts_with('{') {
        let set: JwkSet = serde_json::from_str(trimmed).context("not a JWKS document")?;
        for jwk in &set.keys {
            if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm
                && p.curve == EllipticCurve::P256
            {
                keys.push(DecodingKey::from_jwk(jwk).context("bad EC key in JWKS")?);
            }
        }
        if keys.is_empty() {
            anyhow::bail!("the JWKS has no EC P-256 key (only ES256 is accepted)");
        }
        return Ok(keys);
    }
    let blocks = pem::parse_many(text.as_bytes()).context("not PEM")?;
    for b in blocks.iter().filter(|b| b.tag() == "PUBLIC KEY") {
        let one = pem::encode(b);
        keys.push(DecodingKey::from_ec_pem(one.as_bytes()).context("not an EC public key")?);
    }
    if keys.is_empty() {
        anyhow::bail!("no `-----BEGIN PUBLIC KEY-----` block (an EC P-256 SPKI) in it");
    }
    Ok(keys)
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Provision, Scope::Status]
}
fn default_max_lifetime() -> u64 {
    DEFAULT_MAX_LIFETIME_SECS
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests;
