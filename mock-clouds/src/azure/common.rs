//! What the IoT Hub and DPS mocks share: auth (SAS and Entra bearer tokens), the token
//! endpoint, api-version parsing, the quota bucket, tracking ids and timestamps.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, Response, StatusCode};

use super::sas::{self, Policy, SasRefusal};
use crate::clock::MockClock;

/// A quota as the mock enforces it.
#[derive(Debug, Clone)]
pub struct QuotaSettings {
    /// Operations per minute; None = unlimited.
    pub per_minute: Option<f64>,
    /// Bucket size.
    pub burst: f64,
    /// Whether each device of a bulk call costs one operation.
    pub bulk_counts_per_device: bool,
    /// Traffic shaping: a call the bucket cannot pay yet is held up to this long (IoT Hub
    /// "queues bursts for a while", then answers 429) instead of refused.
    pub shaping: Duration,
}

/// Counters of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Requests that reached the service (after faults, including refused ones).
    pub requests: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// Operations charged against the quota.
    pub operations: u64,
    /// Bearer tokens issued for this service (token endpoint, managed identity endpoint,
    /// [`AzureMock::issue_hub_token`](super::AzureMock::issue_hub_token)).
    pub tokens_issued: u64,
}

/// An Entra application the mock token endpoint issues tokens to.
#[derive(Clone)]
pub(crate) struct EntraApp {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// The federated (Kubernetes service account) token the app trusts: workload identity
    /// sends it as a `client_assertion`.
    pub federated_token: String,
    /// The `X-IDENTITY-HEADER` secret of the mock managed identity endpoint.
    pub identity_header: String,
}

/// The client-assertion type of a federated credential (workload identity).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Auth, quota and counters of one service.
pub(crate) struct Gate {
    policies: Vec<Policy>,
    entra: EntraApp,
    scope: &'static str,
    tokens: Mutex<HashSet<String>>,
    quota: Mutex<QuotaSettings>,
    bucket: Mutex<(f64, Duration)>,
    clock: MockClock,
    requests: AtomicU64,
    throttled: AtomicU64,
    operations: AtomicU64,
    tokens_issued: AtomicU64,
}

/// Why a request was refused before reaching the service logic.
pub(crate) enum Refusal {
    Unauthorized(String),
    Throttled(Duration),
}

impl Gate {
    pub fn new(
        policies: Vec<Policy>,
        entra: EntraApp,
        scope: &'static str,
        quota: QuotaSettings,
        clock: MockClock,
    ) -> Self {
        let burst = quota.burst;
        Gate {
            policies,
            entra,
            scope,
            tokens: Mutex::new(HashSet::new()),
            quota: Mutex::new(quota),
            bucket: Mutex::new((burst, clock.now())),
            clock,
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            operations: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            operations: self.operations.load(Ordering::Relaxed),
            tokens_issued: self.tokens_issued.load(Ordering::Relaxed),
        }
    }

    pub fn set_quota(&self, q: QuotaSettings) {
        *lock(&self.bucket) = (q.burst, self.clock.now());
        *lock(&self.quota) = q;
    }

    pub fn bulk_counts_per_device(&self) -> bool {
        lock(&self.quota).bulk_counts_per_device
    }

    /// Checks the Authorization header for `path` on this service.
    pub fn authorize(&self, headers: &HeaderMap, path: &str, write: bool) -> Result<(), Refusal> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(token) = auth.strip_prefix("Bearer ") {
            return if lock(&self.tokens).contains(token.trim()) {
                Ok(())
            } else {
                Err(Refusal::Unauthorized("unknown bearer token".into()))
            };
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        sas::verify(auth, &self.policies, host, path, unix_now(), write).map_err(|r| {
            Refusal::Unauthorized(
                match r {
                    SasRefusal::Missing => "no SharedAccessSignature",
                    SasRefusal::Malformed(_) => "malformed token",
                    SasRefusal::UnknownPolicy => "unknown policy",
                    SasRefusal::BadSignature => "signature mismatch",
                    SasRefusal::Expired => "token expired",
                    SasRefusal::WrongResource => "token not valid for this resource",
                    SasRefusal::Permission => "policy lacks the permission",
                }
                .to_owned(),
            )
        })
    }

    /// Charges `cost` operations: Ok(how long to hold the call) when the bucket can pay within
    /// the shaping window, Err(retry after) otherwise.
    pub fn charge(&self, cost: u64) -> Result<Duration, Refusal> {
        let q = lock(&self.quota).clone();
        let Some(per_minute) = q.per_minute else {
            self.operations.fetch_add(cost, Ordering::Relaxed);
            return Ok(Duration::ZERO);
        };
        let rate = per_minute / 60.0;
        let mut b = lock(&self.bucket);
        let now = self.clock.now();
        let tokens = (b.0 + now.saturating_sub(b.1).as_secs_f64() * rate).min(q.burst);
        // A call bigger than the bucket is paid as a full bucket (a 100-device bulk on a 1-unit
        // S1 hub is allowed when the bucket is full).
        let cost_f = (cost as f64).min(q.burst);
        let hold = if tokens >= cost_f {
            0.0
        } else {
            (cost_f - tokens) / rate
        };
        if hold <= q.shaping.as_secs_f64() {
            *b = (tokens - cost_f, now);
            self.operations.fetch_add(cost, Ordering::Relaxed);
            Ok(Duration::from_secs_f64(hold))
        } else {
            *b = (tokens, now);
            self.throttled.fetch_add(1, Ordering::Relaxed);
            let secs = hold.ceil().max(1.0);
            Err(Refusal::Throttled(Duration::from_secs_f64(secs)))
        }
    }

    /// `POST /{tenant}/oauth2/v2.0/token` with the client-credentials grant.
    pub fn token_endpoint(&self, path: &str, body: &[u8]) -> Option<Response<Body>> {
        let mut segs = path.trim_matches('/').split('/');
        let tenant = segs.next()?;
        if segs.collect::<Vec<_>>() != ["oauth2", "v2.0", "token"] {
            return None;
        }
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let entra_error = |status: StatusCode, code: &str, aadsts: &str, desc: &str| {
            json_response(
                status,
                &[],
                serde_json::json!({
                    "error": code,
                    "error_description": format!("{aadsts}: {desc}"),
                    "error_codes": [aadsts.trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
                    "timestamp": rfc3339_now(),
                    "trace_id": tracking_id(),
                    "correlation_id": tracking_id(),
                }),
            )
        };
        if tenant != self.entra.tenant {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "AADSTS90002",
                &format!("Tenant '{tenant}' not found."),
            ));
        }
        if field("grant_type") != "client_credentials" {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "AADSTS70003",
                "The app requested an unsupported grant type.",
            ));
        }
        let by_secret = !field("client_secret").is_empty()
            && field("client_secret") == self.entra.client_secret;
        let by_assertion = field("client_assertion_type") == JWT_BEARER
            && !field("client_assertion").is_empty()
            && field("client_assertion") == self.entra.federated_token;
        if field("client_id") != self.entra.client_id || !(by_secret || by_assertion) {
            return Some(entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215",
                "Invalid client secret provided.",
            ));
        }
        if field("scope") != self.scope {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "AADSTS70011",
                &format!(
                    "The provided value for scope {} is not valid.",
                    field("scope")
                ),
            ));
        }
        let token = self.issue_token();
        Some(json_response(
            StatusCode::OK,
            &[],
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }),
        ))
    }
}

impl Gate {
    /// A fresh bearer token this service accepts (one hour, like Entra's).
    pub fn issue_token(&self) -> String {
        let token = format!(
            "eyJ0eXAiOiJKV1QifQ.{}.mock",
            URL_SAFE_NO_PAD.encode(super::random_bytes(32))
        );
        lock(&self.tokens).insert(token.clone());
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        token
    }

    /// `GET /msi/token?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER`: the App
    /// Service / Functions / Container Apps managed identity endpoint (`IDENTITY_ENDPOINT`).
    /// Answers for this service's resource only (the scope without `/.default`).
    pub fn managed_identity_endpoint(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        if path.trim_end_matches('/') != "/msi/token" {
            return None;
        }
        let q: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let q = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let refuse = |status: StatusCode, msg: &str| {
            json_response(
                status,
                &[],
                serde_json::json!({"statusCode": status.as_u16(), "message": msg, "correlationId": tracking_id()}),
            )
        };
        let header = headers
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if header.is_empty() || header != self.entra.identity_header {
            return Some(refuse(
                StatusCode::UNAUTHORIZED,
                "The X-IDENTITY-HEADER is missing or wrong.",
            ));
        }
        if q("api-version") != "2019-08-01" {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                "Unsupported or missing api-version (2019-08-01).",
            ));
        }
        let resource = self.scope.trim_end_matches("/.default");
        if q("resource") != resource {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                &format!("This mock issues tokens for {resource} only."),
            ));
        }
        let expires_on = unix_now() + 3599;
        Some(json_response(
            StatusCode::OK,
            &[],
            serde_json::json!({
                "access_token": self.issue_token(),
                "expires_on": expires_on.to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": self.entra.client_id,
            }),
        ))
    }
}

/// The `api-version` query parameter.
pub(crate) fn api_version(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.into_owned())
}

/// A JSON response with extra headers.
pub(crate) fn json_response(
    status: StatusCode,
    headers: &[(&str, String)],
    body: serde_json::Value,
) -> Response<Body> {
    let mut b = Response::builder().status(status).header(
        http::header::CONTENT_TYPE,
        "application/json; charset=utf-8",
    );
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Body::from(body.to_string()))
        .unwrap_or_else(|_| empty(StatusCode::INTERNAL_SERVER_ERROR))
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// IoT Hub's `MM/dd/yyyy HH:mm:ss` timestamp in `ExceptionMessage`.
pub(crate) fn hub_timestamp() -> String {
    let f = time::macros::format_description!("[month]/[day]/[year] [hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

/// A GUID-shaped tracking id.
pub(crate) fn tracking_id() -> String {
    let h = hex::encode(super::random_bytes(16));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The If-Match header with surrounding quotes removed (`*`, `"*"`, `"etag"`, `etag`).
pub(crate) fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_owned())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a handler panicked mid-update in a test; the data is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
