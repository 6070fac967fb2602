//! A Cloud ID "interop" v1 receiver, verifying bearer JWTs the way Infineon's published AWS and
//! Azure receivers do (same checks, same 401 bodies, same per-certificate messages), plus the
//! idbridge extensions (`status` by fingerprint, `deprovision`), and [`InteropSender`], a
//! CIRRENT-like sender minting the tokens of the JWT test matrix.
//!
//! What the receiver registered is admitted by its mutual-TLS device endpoint, whose address it
//! returns as `endpoint` in each `SUCCESS` result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::server::{RunningServer, serve};
use crate::tls::{DeviceEndpoint, DeviceHello, TestCa, device_endpoint};

/// Infineon's receivers' JSON body limit.
pub const BODY_LIMIT: usize = 25 * 1024 * 1024;

/// Infineon's per-certificate messages (verbatim).
pub const MSG_CANNOT_DECODE: &str = "Cannot decode certitifcate";
/// Check 2.
pub const MSG_BAD_SERIAL: &str =
    "Certificate serial cannot be decoded or is incorrect (only alphanumeric/hyphen/underscore)";
/// Check 3.
pub const MSG_VALIDITY: &str = "Certificate notBefore or notAfter is out of range";
/// Check 6.
pub const MSG_REGISTER_FAILED: &str = "Failed creating and registering thing";

/// A device the receiver registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The `ref` it came with.
    pub reference: String,
    /// Lowercase hex SHA-256 of the DER.
    pub sha256: String,
    /// `Infineon_<serial hex, lower case>`, as the AWS receiver names things.
    pub thing_name: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

/// A scripted per-certificate answer, by `ref` or SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemScript {
    /// Answer `ERROR` with this message (and idbridge `code`, if given), `times` times.
    Error {
        /// The message.
        message: String,
        /// The machine-readable code extension.
        code: Option<String>,
        /// How many requests it applies to.
        times: u32,
    },
    /// Leave the item out of the answer array, `times` times.
    Omit {
        /// How many requests it applies to.
        times: u32,
    },
}

#[derive(Debug, Default)]
struct Inner {
    registry: BTreeMap<String, Registered>,
    scripts: HashMap<String, ItemScript>,
    requests: Vec<Value>,
    provision_calls: u64,
}

/// The receiver's state: what it accepted, and the per-item script.
#[derive(Debug, Clone)]
pub struct InteropState {
    inner: Arc<Mutex<Inner>>,
    audience: Option<String>,
    key: Arc<Vec<u8>>,
    endpoint: Arc<Mutex<Option<String>>>,
    infineon_only: bool,
}

impl InteropState {
    /// A receiver for `audience`, trusting the P-256 public key `public_key_pem` (SPKI PEM).
    /// `infineon_only` answers as Infineon's receivers do: no extensions.
    pub fn new(
        audience: Option<&str>,
        public_key_pem: &str,
        infineon_only: bool,
    ) -> anyhow::Result<Self> {
        Ok(InteropState {
            inner: Arc::default(),
            audience: audience.map(str::to_owned),
            key: Arc::new(ec_point_from_spki_pem(public_key_pem)?),
            endpoint: Arc::default(),
            infineon_only,
        })
    }

    /// Every registered device, by SHA-256.
    pub fn registered(&self) -> Vec<Registered> {
        self.lock().registry.values().cloned().collect()
    }

    /// Whether a certificate (DER) is registered.
    pub fn is_registered(&self, der: &[u8]) -> bool {
        self.lock().registry.contains_key(&sha256_hex(der))
    }

    /// How many `provision` requests were authorised and answered.
    pub fn provision_calls(&self) -> u64 {
        self.lock().provision_calls
    }

    /// The bodies of every authorised request, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// Scripts the answer for the item whose `ref` or SHA-256 is `key`.
    pub fn script(&self, key: &str, script: ItemScript) {
        self.lock().scripts.insert(key.to_owned(), script);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning means a test panicked; the data stays consistent (single-step updates).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_script(&self, reference: &str, sha: Option<&str>) -> Option<ItemScript> {
        let mut g = self.lock();
        let key = [Some(reference), sha]
            .into_iter()
            .flatten()
            .find(|k| g.scripts.contains_key(*k))?
            .to_owned();
        let s = g.scripts.get_mut(&key)?;
        let (out, left) = match s {
            ItemScript::Error {
                message,
                code,
                times,
            } => {
                *times = times.saturating_sub(1);
                (
                    ItemScript::Error {
                        message: message.clone(),
                        code: code.clone(),
                        times: 1,
                    },
                    *times,
                )
            }
            ItemScript::Omit { times } => {
                *times = times.saturating_sub(1);
                (ItemScript::Omit { times: 1 }, *times)
            }
        };
        if left == 0 {
            g.scripts.remove(&key);
        }
        Some(out)
    }
}

/// A running interop receiver with its device endpoint.
#[derive(Debug)]
pub struct MockInterop {
    /// The HTTP server (`url`, fault script).
    pub server: RunningServer,
    /// What it accepted.
    pub state: InteropState,
    /// The device endpoint admitting registered certificates.
    pub devices: DeviceEndpoint,
    /// The CA of the device endpoint's (and, with TLS, the API's) server certificate.
    pub ca: TestCa,
}

impl MockInterop {
    /// Starts a receiver on `addr` (`127.0.0.1:0`), over HTTPS when `tls`.
    pub async fn start(addr: &str, state: InteropState, tls: bool) -> anyhow::Result<Self> {
        let ca = TestCa::new("idbridge mock interop CA")?;
        let admit_state = state.clone();
        let devices = device_endpoint(
            "127.0.0.1:0",
            ca.mtls_config()?,
            Arc::new(move |h: &DeviceHello| {
                let sha = sha256_hex(&h.cert_der);
                admit_state
                    .lock()
                    .registry
                    .get(&sha)
                    .map(|r| r.thing_name.clone())
                    .ok_or_else(|| "certificate not registered".to_owned())
            }),
        )
        .await?;
        *state.endpoint.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("localhost:{}", devices.addr.port()));
        let tls_cfg = if tls { Some(ca.https_config()?) } else { None };
        let server = serve(router(state.clone()), addr, tls_cfg).await?;
        Ok(MockInterop {
            server,
            state,
            devices,
            ca,
        })
    }
}

/// The receiver's routes: `GET /`, `GET /auth`, `POST /interop` (also under any prefix such
/// as `/Prod`).
pub fn router(state: InteropState) -> Router {
    Router::new()
        .route("/", get(|| async { "OK" }))
        .route("/auth", get(auth_check))
        .route("/interop", post(interop))
        .route("/{stage}/interop", post(interop))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn auth_check(State(s): State<InteropState>, headers: HeaderMap) -> Response {
    match authorize(&s, &headers) {
        Ok(()) => (StatusCode::OK, "OK").into_response(),
        Err(msg) => unauthorized(msg),
    }
}

async fn interop(State(s): State<InteropState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(msg) = authorize(&s, &headers) {
        return unauthorized(msg);
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("invalid JSON: {e}")),
    };
    s.lock().requests.push(req.clone());
    let action = req.get("action").and_then(Value::as_str);
    match action {
        Some("info") if s.infineon_only => {
            Json(json!({"action":"info","compatibilityVersion":1})).into_response()
        }
        Some("info") => Json(json!({
            "action": "info",
            "compatibilityVersion": 1,
            "extensions": ["status", "deprovision"],
        }))
        .into_response(),
        Some("provision") => match certs(&req) {
            Ok(items) => {
                s.lock().provision_calls += 1;
                Json(Value::Array(provision(&s, items))).into_response()
            }
            Err(msg) => bad_request(&msg),
        },
        Some("deprovision") if !s.infineon_only => match certs(&req) {
            Ok(items) => Json(Value::Array(deprovision(&s, items))).into_response(),
            Err(msg) => bad_request(&msg),
        },
        Some("status") if !s.infineon_only => status(&s, &req),
        Some("status") | Some("message") => Json(json!({
            "message": "Not yet implemented.",
            "action": action,
        }))
        .into_response(),
        Some(_) => bad_request("\"action\" must be one of [provision, info, status, message]"),
        None => bad_request("\"action\" is required"),
    }
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

fn bad_request(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

fn unauthorized(msg: &str) -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": msg }))).into_response()
}

/// Infineon's auth middleware, check by check; `Err` is the 401 body's message.
fn authorize(s: &InteropState, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(h) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err("Missing Authorization Header");
    };
    let h = h.to_str().map_err(|_| "Token invalid")?;
    let parts: Vec<&str> = h.split(' ').collect();
    if parts.len() != 2 {
        return Err("Token invalid");
    }
    if !parts[0].eq_ignore_ascii_case("bearer") {
        return Err("Authorization Header must contain Bearer Token");
    }
    let Some(aud) = &s.audience else {
        return Err("Audience not configured");
    };
    verify_es256(parts[1], &s.key, aud, now()).map_err(|_| "Cannot verify and decode token")
}

/// Verifies a compact JWS: header alg ES256 (what a P-256 key allows), signature, `aud`
/// (string or array) and `exp` (rejected when in the past).
pub fn verify_es256(token: &str, ec_point: &[u8], audience: &str, now: i64) -> Result<(), String> {
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(sig), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err("not three parts".into());
    };
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err("alg not allowed for an EC P-256 key".into());
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|e| e.to_string())?;
    let signed = &token[..h.len() + 1 + p.len()];
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ec_point)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err("aud".into());
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_i64().ok_or("exp not a number")?;
        if exp <= now {
            return Err("expired".into());
        }
    }
    Ok(())
}

#[derive(Debug)]
struct CertIn {
    reference: String,
    cert_b64: String,
}

/// Joi-like validation of `certs`.
fn certs(req: &Value) -> Result<Vec<CertIn>, String> {
    let Some(arr) = req.get("certs") else {
        return Err("\"certs\" is required".into());
    };
    let Some(arr) = arr.as_array() else {
        return Err("\"certs\" must be an array".into());
    };
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, c) in arr.iter().enumerate() {
        let reference = c.get("ref").and_then(Value::as_str);
        let cert = c.get("cert").and_then(Value::as_str);
        if reference.is_none() {
            errors.push(format!("\"certs[{i}].ref\" is required"));
        }
        match cert {
            None => errors.push(format!("\"certs[{i}].cert\" is required")),
            Some(b) if STANDARD.decode(b).is_err() => {
                errors.push(format!("\"certs[{i}].cert\" must be a valid base64 string"))
            }
            _ => {}
        }
        if let (Some(r), Some(c)) = (reference, cert) {
            out.push(CertIn {
                reference: r.to_owned(),
                cert_b64: c.to_owned(),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join(", "))
    }
}

struct Parsed {
    der: Vec<u8>,
    serial: String,
}

/// Infineon checks 1–3.
fn check(cert_b64: &str) -> Result<Parsed, &'static str> {
    let pem = STANDARD.decode(cert_b64).map_err(|_| MSG_CANNOT_DECODE)?;
    let pem = String::from_utf8(pem).map_err(|_| MSG_CANNOT_DECODE)?;
    let der = pem_to_der(&pem).ok_or(MSG_CANNOT_DECODE)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| MSG_CANNOT_DECODE)?;
    let serial = hex::encode(cert.tbs_certificate.raw_serial());
    if serial.is_empty() {
        return Err(MSG_BAD_SERIAL);
    }
    let now = now();
    let v = &cert.tbs_certificate.validity;
    if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
        return Err(MSG_VALIDITY);
    }
    Ok(Parsed { der, serial })
}

fn provision(s: &InteropState, items: Vec<CertIn>) -> Vec<Value> {
    let endpoint = s.endpoint.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = Vec::new();
    for it in items {
        let parsed = check(&it.cert_b64);
        let sha = parsed.as_ref().ok().map(|p| sha256_hex(&p.der));
        match s.take_script(&it.reference, sha.as_deref()) {
            Some(ItemScript::Omit { .. }) => continue,
            Some(ItemScript::Error { message, code, .. }) => {
                let mut v = json!({"ref": it.reference, "status": "ERROR", "message": message});
                if let Some(c) = code {
                    v["code"] = json!(c);
                }
                out.push(v);
                continue;
            }
            None => {}
        }
        let p = match parsed {
            Ok(p) => p,
            Err(msg) => {
                out.push(json!({"ref": it.reference, "status": "ERROR", "message": msg}));
                continue;
            }
        };
        let sha = sha256_hex(&p.der);
        let mut g = s.lock();
        let created = !g.registry.contains_key(&sha);
        if created {
            g.registry.insert(
                sha.clone(),
                Registered {
                    reference: it.reference.clone(),
                    sha256: sha,
                    thing_name: format!("Infineon_{}", p.serial),
                    der: p.der,
                },
            );
        }
        let mut v = json!({
            "ref": it.reference,
            "status": "SUCCESS",
            "endpoint": endpoint,
            "topic": "iqs",
            "policyApplied": true,
        });
        if !s.infineon_only {
            v["created"] = json!(created);
        }
        out.push(v);
    }
    out
}

fn deprovision(s: &InteropState, items: Vec<CertIn>) -> Vec<Value> {
    items
        .into_iter()
        .map(|it| match check(&it.cert_b64) {
            Ok(p) => {
                let removed = s.lock().registry.remove(&sha256_hex(&p.der)).is_some();
                json!({"ref": it.reference, "status": if removed { "SUCCESS" } else { "NOT_FOUND" }})
            }
            Err(msg) => json!({"ref": it.reference, "status": "ERROR", "message": msg}),
        })
        .collect()
}

fn status(s: &InteropState, req: &Value) -> Response {
    let Some(fps) = req.get("fingerprints").and_then(Value::as_array) else {
        return bad_request("\"fingerprints\" is required (this mock has no jobs)");
    };
    let endpoint = s.endpoint.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let g = s.lock();
    let devices: Vec<Value> = fps
        .iter()
        .filter_map(Value::as_str)
        .map(|fp| {
            let present = g.registry.contains_key(&fp.to_ascii_lowercase());
            json!({
                "fingerprint": fp,
                "status": if present { "PRESENT" } else { "ABSENT" },
                "endpoint": if present { endpoint.clone() } else { None },
            })
        })
        .collect();
    Json(json!({"action": "status", "devices": devices})).into_response()
}

/// Which token the [`InteropSender`] mints: the receiver JWT matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// ES256, right key, issuer and audience, a fresh `jti`, valid for 300 s.
    Valid,
    /// Like `Valid` but valid for a year (`exp - iat` = 365 days).
    YearLong,
    /// Like `Valid` without `iss` (CIRRENT's own test tokens carry only `aud`, `iat`, `exp`).
    NoIssuer,
    /// Like `Valid` without `jti`.
    NoJti,
    /// Right key, another audience.
    WrongAudience,
    /// Right key and audience, `exp` an hour ago.
    Expired,
    /// Signed by a different P-256 key.
    OtherKey,
    /// `alg: none`, empty signature.
    AlgNone,
    /// HS256 with the receiver's public key PEM as the HMAC secret (key-confusion attack).
    Hs256WithPublicKey,
}

/// A CIRRENT-like sender: holds a P-256 key and mints tokens for a receiver.
pub struct InteropSender {
    key: EcdsaKeyPair,
    pkcs8_pem: String,
    other: EcdsaKeyPair,
    audience: String,
    issuer: String,
}

/// The `iss` of an [`InteropSender`] made with [`InteropSender::new`].
pub const DEFAULT_ISSUER: &str = "cirrent";

impl std::fmt::Debug for InteropSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InteropSender")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl InteropSender {
    /// A sender with a fresh key for tokens with `aud = audience`, `iss` [`DEFAULT_ISSUER`].
    pub fn new(audience: &str) -> anyhow::Result<Self> {
        Self::with_issuer(audience, DEFAULT_ISSUER)
    }

    /// A sender with a fresh key for tokens with `aud = audience` and `iss = issuer`.
    pub fn with_issuer(audience: &str, issuer: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("cannot load the P-256 key"))?;
        let other_pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let other = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            other_pkcs8.as_ref(),
        )
        .map_err(|_| anyhow::anyhow!("cannot load the P-256 key"))?;
        Ok(InteropSender {
            pkcs8_pem: pem_encode("PRIVATE KEY", pkcs8.as_ref()),
            key,
            other,
            audience: audience.to_owned(),
            issuer: issuer.to_owned(),
        })
    }

    /// The private key, PKCS#8 PEM (what idbridge's interop client takes as `signing_key`).
    pub fn private_key_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// The public key, SPKI PEM (what a receiver trusts).
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &spki_p256(self.key.public_key().as_ref()))
    }

    /// The public key as a JWKS document (`{"keys":[{kty EC, crv P-256, x, y}]}`).
    pub fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "cirrent-test",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string()
    }

    /// The `iss` its tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A bearer token of `kind`.
    pub fn token(&self, kind: TokenKind) -> String {
        let now = now();
        let (aud, iat, exp) = match kind {
            TokenKind::WrongAudience => (self.audience.clone(), now, now + 300),
            TokenKind::Expired => (self.audience.clone(), now - 4000, now - 3600),
            TokenKind::YearLong => (self.audience.clone(), now, now + 365 * 86_400),
            _ => (self.audience.clone(), now, now + 300),
        };
        let aud = if kind == TokenKind::WrongAudience {
            "999999999999".to_owned()
        } else {
            aud
        };
        let mut claims =
            json!({"iss": self.issuer, "aud": aud, "iat": iat, "exp": exp, "jti": random_id()});
        if let Some(o) = claims.as_object_mut() {
            match kind {
                TokenKind::NoIssuer => {
                    o.remove("iss");
                }
                TokenKind::NoJti => {
                    o.remove("jti");
                }
                _ => {}
            }
        }
        let alg = match kind {
            TokenKind::AlgNone => "none",
            TokenKind::Hs256WithPublicKey => "HS256",
            _ => "ES256",
        };
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig: Vec<u8> = match kind {
            TokenKind::AlgNone => Vec::new(),
            TokenKind::Hs256WithPublicKey => {
                let k = aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    self.public_key_pem().as_bytes(),
                );
                aws_lc_rs::hmac::sign(&k, signed.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            TokenKind::OtherKey => sign(&self.other, signed.as_bytes()),
            _ => sign(&self.key, signed.as_bytes()),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// An ES256 token over exactly `claims`, signed with this sender's key.
    pub fn sign_claims(&self, claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string());
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// 16 random bytes, hex (a `jti`).
fn random_id() -> String {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    // On RNG failure the id is all zeros: a replay cache then refuses the second token,
    // which is what a broken sender deserves.
    let _ = SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sign(key: &EcdsaKeyPair, msg: &[u8]) -> Vec<u8> {
    key.sign(&SystemRandom::new(), msg)
        .map(|s| s.as_ref().to_vec())
        // Signing with a valid in-memory key only fails if the RNG fails; a garbage signature
        // then makes the receiver refuse, which is what a broken sender deserves.
        .unwrap_or_default()
}

/// SPKI DER of an uncompressed P-256 point.
fn spki_p256(point: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 00 || point } }
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(point);
    der
}

/// The EC point of a SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn ec_point_from_spki_pem(pem: &str) -> anyhow::Result<Vec<u8>> {
    let der =
        pem_block(pem, "PUBLIC KEY").ok_or_else(|| anyhow::anyhow!("no PUBLIC KEY PEM block"))?;
    let (_, spki) =
        <x509_parser::x509::SubjectPublicKeyInfo<'_> as x509_parser::prelude::FromDer<
            '_,
            x509_parser::error::X509Error,
        >>::from_der(&der)
        .map_err(|e| anyhow::anyhow!("not a SubjectPublicKeyInfo: {e}"))?;
    Ok(spki.subject_public_key.data.to_vec())
}

/// The DER of the first `CERTIFICATE` block of a PEM text (LF or CRLF).
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    pem_block(pem, "CERTIFICATE")
}

fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matrix_against_the_verifier() {
        let s = InteropSender::new("123456789012").unwrap();
        let point = ec_point_from_spki_pem(&s.public_key_pem()).unwrap();
        let v = |k| verify_es256(&s.token(k), &point, "123456789012", now());
        assert!(v(TokenKind::Valid).is_ok());
        for k in [
            TokenKind::WrongAudience,
            TokenKind::Expired,
            TokenKind::OtherKey,
            TokenKind::AlgNone,
            TokenKind::Hs256WithPublicKey,
        ] {
            assert!(v(k).is_err(), "{k:?} accepted");
        }
        assert!(verify_es256("garbage", &point, "123456789012", now()).is_err());
    }

    #[test]
    fn joi_like_validation() {
        let e =
            certs(&json!({"action":"provision","certs":[{"cert":"dGVzdGluZw=="}]})).unwrap_err();
        assert_eq!(e, "\"certs[0].ref\" is required");
        let e = certs(&json!({"certs":[{"ref":"a","cert":"%%%"}]})).unwrap_err();
        assert!(e.contains("base64"), "{e}");
        assert_eq!(check("dGVzdGluZw==").err(), Some(MSG_CANNOT_DECODE));
    }
}
