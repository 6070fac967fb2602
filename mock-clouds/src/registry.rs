//! The `mock` cloud: a simple device registry, the first target idbridge provisions into with
//! nothing installed.
//!
//! REST with JSON bodies under `/v1`, bearer-token auth, a per-second quota answered with
//! `429 Too Many Requests` and `Retry-After`, and a mutual-TLS device endpoint that admits a
//! device only while its certificate is registered and enabled.
//!
//! | call | answer |
//! |---|---|
//! | `POST /v1/devices` `{name, certificate_pem, attributes}` | 201 device; 409 `already_exists` (same name and certificate, with the device) or `conflict`; 400 `invalid_request` |
//! | `GET /v1/devices/{name}` | 200 device; 404 `not_found` |
//! | `DELETE /v1/devices/{name}` | 204; 404 `not_found` |
//! | `GET /v1/devices?page_token=T&limit=N` | 200 `{devices, next_page_token}` |
//! | `GET /v1/health` | 200 |
//!
//! Errors are `{"error": CODE, "message": ...}` with an `x-request-id` header. Every `/v1` call
//! counts against the quota, which runs on a [`MockClock`] (a test freezes and advances it
//! instead of sleeping a window out); a throttled call changes nothing. `GET /_mock/stats` (no auth)
//! reports what the registry saw, for tests: creates per device, duplicates refused, throttled
//! calls and the most calls that arrived in any one second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::clock::MockClock;
use crate::server::{RunningServer, serve};
use crate::tls::{DeviceEndpoint, DeviceHello, TestCa, device_endpoint};

/// How a registry runs.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The bearer token clients must send.
    pub token: String,
    /// Calls per second across the API; None is unlimited.
    pub quota: Option<u32>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            token: "mock-token".into(),
            quota: None,
        }
    }
}

/// A registered device, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Server-assigned id.
    pub id: String,
    /// The client's name for it (unique).
    pub name: String,
    /// Lowercase hex SHA-256 of the certificate DER (unique).
    pub fingerprint: String,
    /// The certificate.
    pub certificate_pem: String,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// `enabled`.
    pub status: String,
    /// Changes on every write.
    pub etag: String,
}

/// What the registry saw, from `GET /_mock/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Devices registered now.
    pub devices: u64,
    /// Successful creates, all time.
    pub creates: u64,
    /// The most creates of one certificate (1 unless a device was registered, deleted and
    /// registered again).
    pub max_creates_per_device: u32,
    /// Creates refused because the device existed.
    pub duplicates_refused: u64,
    /// Calls answered 429.
    pub throttled: u64,
    /// `/v1` calls that arrived (throttled included).
    pub requests: u64,
    /// The most `/v1` calls that arrived within any one second.
    pub max_requests_in_any_second: u64,
}

/// A handle on a registry's state, shared with its router.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<Mutex<Inner>>,
    config: RegistryConfig,
    clock: MockClock,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: BTreeMap<String, Device>,
    by_fingerprint: HashMap<String, String>,
    creates: HashMap<String, u32>,
    duplicates: u64,
    throttled: u64,
    /// Arrival times on the registry's clock.
    arrivals: Vec<Duration>,
    window: VecDeque<Duration>,
    next_id: u64,
}

impl Registry {
    /// A new, empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry {
            state: Arc::default(),
            config,
            clock: MockClock::default(),
        }
    }

    /// The clock the quota runs on: freeze and advance it instead of sleeping.
    pub fn clock(&self) -> &MockClock {
        &self.clock
    }

    /// Its router, for [`serve`].
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/devices", get(list).post(create))
            .route("/v1/devices/{name}", get(read).delete(remove))
            .route("/v1/health", get(health))
            .route("/_mock/stats", get(stats))
            .with_state(self.clone())
    }

    /// Serves it on `addr` (`127.0.0.1:0` for a free port).
    pub async fn serve(&self, addr: &str) -> std::io::Result<RunningServer> {
        serve(self.router(), addr, None).await
    }

    /// The device registered with this certificate DER's fingerprint, if any.
    pub fn by_fingerprint(&self, fingerprint: &str) -> Option<Device> {
        let s = self.lock();
        s.by_fingerprint
            .get(fingerprint)
            .and_then(|n| s.by_name.get(n))
            .cloned()
    }

    /// Every registered device, by name.
    pub fn devices(&self) -> Vec<Device> {
        self.lock().by_name.values().cloned().collect()
    }

    /// What it saw.
    pub fn stats(&self) -> Stats {
        let s = self.lock();
        let mut max = 0usize;
        let mut lo = 0usize;
        for hi in 0..s.arrivals.len() {
            while s.arrivals[hi].saturating_sub(s.arrivals[lo]) >= Duration::from_secs(1) {
                lo += 1;
            }
            max = max.max(hi - lo + 1);
        }
        Stats {
            devices: s.by_name.len() as u64,
            creates: s.creates.values().map(|&n| u64::from(n)).sum(),
            max_creates_per_device: s.creates.values().copied().max().unwrap_or(0),
            duplicates_refused: s.duplicates,
            throttled: s.throttled,
            requests: s.arrivals.len() as u64,
            max_requests_in_any_second: max as u64,
        }
    }

    /// Starts the mutual-TLS device endpoint on `addr`, with a server certificate from `ca`:
    /// a device is admitted while its certificate is registered and enabled.
    pub async fn device_endpoint(&self, addr: &str, ca: &TestCa) -> anyhow::Result<DeviceEndpoint> {
        let me = self.clone();
        let ep = device_endpoint(
            addr,
            ca.mtls_config()?,
            Arc::new(move |hello: &DeviceHello| {
                let fp = hex::encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &hello.cert_der,
                ));
                match me.by_fingerprint(&fp) {
                    Some(d) if d.status == "enabled" => Ok(d.name),
                    Some(_) => Err("device disabled".into()),
                    None => Err("certificate not registered".into()),
                }
            }),
        )
        .await?;
        Ok(ep)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a handler panicked; the maps are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Auth and quota, common to every `/v1` call.
    fn admit(&self, headers: &HeaderMap) -> Result<String, Box<Response>> {
        let request_id = {
            let mut s = self.lock();
            s.next_id += 1;
            format!("req-{:08}", s.next_id)
        };
        let now = self.clock.now();
        {
            let mut s = self.lock();
            s.arrivals.push(now);
            if let Some(q) = self.config.quota {
                while s
                    .window
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) >= Duration::from_secs(1))
                {
                    s.window.pop_front();
                }
                if s.window.len() >= q as usize {
                    s.throttled += 1;
                    let mut r = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "throttled",
                        "rate exceeded",
                        &request_id,
                    );
                    r.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("1"));
                    return Err(Box::new(r));
                }
                s.window.push_back(now);
            }
        }
        let expected = format!("Bearer {}", self.config.token);
        let ok = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
        if !ok {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing or wrong bearer token",
                &request_id,
            )));
        }
        Ok(request_id)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn ok<T: Serialize>(status: StatusCode, body: &T, request_id: &str) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

#[derive(Debug, Deserialize)]
struct NewDevice {
    name: String,
    certificate_pem: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

async fn create(
    State(reg): State<Registry>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let rid = match reg.admit(&headers) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let new: NewDevice = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("bad JSON body: {e}"),
                &rid,
            );
        }
    };
    if new.name.is_empty() || new.name.len() > 128 || new.name.contains('/') {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "name must be 1-128 characters without '/'",
            &rid,
        );
    }
    let der = match ::pem::parse(new.certificate_pem.as_bytes()) {
        Ok(p) if p.tag() == "CERTIFICATE" => p.into_contents(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "certificate_pem is not a PEM certificate",
                &rid,
            );
        }
    };
    if x509_parser::parse_x509_certificate(&der).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "certificate_pem does not parse as X.509",
            &rid,
        );
    }
    let fp = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der));
    let mut s = reg.lock();
    if let Some(existing) = s.by_name.get(&new.name).cloned() {
        s.duplicates += 1;
        drop(s);
        let code = if existing.fingerprint == fp {
            "already_exists"
        } else {
            "conflict"
        };
        let body = serde_json::json!({
            "error": code,
            "message": format!("a device named {} exists", new.name),
            "device": existing,
        });
        let mut r = (StatusCode::CONFLICT, axum::Json(body)).into_response();
        if let Ok(v) = http::HeaderValue::from_str(&rid) {
            r.headers_mut().insert("x-request-id", v);
        }
        return r;
    }
    if let Some(other) = s.by_fingerprint.get(&fp).cloned() {
        s.duplicates += 1;
        drop(s);
        return error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("this certificate is registered as {other}"),
            &rid,
        );
    }
    s.next_id += 1;
    let device = Device {
        id: format!("dev-{:08}", s.next_id),
        name: new.name.clone(),
        fingerprint: fp.clone(),
        certificate_pem: new.certificate_pem,
        attributes: new.attributes,
        status: "enabled".into(),
        etag: format!("\"{:x}\"", s.next_id),
    };
    s.by_fingerprint.insert(fp.clone(), new.name.clone());
    s.by_name.insert(new.name, device.clone());
    *s.creates.entry(fp).or_default() += 1;
    drop(s);
    ok(StatusCode::CREATED, &device, &rid)
}

async fn read(
    State(reg): State<Registry>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let rid = match reg.admit(&headers) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let found = reg.lock().by_name.get(&name).cloned();
    match found {
        Some(d) => ok(StatusCode::OK, &d, &rid),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such device", &rid),
    }
}

async fn remove(
    State(reg): State<Registry>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let rid = match reg.admit(&headers) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let mut s = reg.lock();
    match s.by_name.remove(&name) {
        Some(d) => {
            s.by_fingerprint.remove(&d.fingerprint);
            drop(s);
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = http::HeaderValue::from_str(&rid) {
                r.headers_mut().insert("x-request-id", v);
            }
            r
        }
        None => {
            drop(s);
            error(StatusCode::NOT_FOUND, "not_found", "no such device", &rid)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    page_token: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(reg): State<Registry>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let rid = match reg.admit(&headers) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let s = reg.lock();
    let range = match &q.page_token {
        Some(t) => s.by_name.range::<String, _>((
            std::ops::Bound::Excluded(t.clone()),
            std::ops::Bound::Unbounded,
        )),
        None => s.by_name.range::<String, _>(..),
    };
    let devices: Vec<Device> = range.take(limit + 1).map(|(_, d)| d.clone()).collect();
    drop(s);
    let (page, next) = if devices.len() > limit {
        let page = devices[..limit].to_vec();
        let next = page.last().map(|d| d.name.clone());
        (page, next)
    } else {
        (devices, None)
    };
    ok(
        StatusCode::OK,
        &serde_json::json!({ "devices": page, "next_page_token": next }),
        &rid,
    )
}

async fn health(State(reg): State<Registry>, headers: HeaderMap) -> Response {
    match reg.admit(&headers) {
        Ok(rid) => ok(StatusCode::OK, &serde_json::json!({"status": "ok"}), &rid),
        Err(r) => *r,
    }
}

async fn stats(State(reg): State<Registry>) -> Response {
    axum::Json(reg.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stats_count_requests_in_a_sliding_second() {
        let reg = Registry::new(RegistryConfig {
            token: "t".into(),
            quota: Some(2),
        });
        // Stopped: however slow the machine, the three calls fall in one second.
        reg.clock().freeze();
        let h = {
            let mut h = HeaderMap::new();
            h.insert("authorization", "Bearer t".parse().unwrap());
            h
        };
        assert!(reg.admit(&h).is_ok());
        assert!(reg.admit(&h).is_ok());
        let throttled = reg.admit(&h).unwrap_err();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(throttled.headers()["retry-after"], "1");
        let st = reg.stats();
        assert_eq!(
            (st.requests, st.throttled, st.max_requests_in_any_second),
            (3, 1, 3)
        );
        // A second later (by hand, no sleep) the window has room again.
        reg.clock().advance(Duration::from_millis(999));
        assert!(reg.admit(&h).is_err(), "still the same second");
        reg.clock().advance(Duration::from_millis(1));
        assert!(reg.admit(&h).is_ok());
        assert_eq!(reg.stats().max_requests_in_any_second, 4);
        let bad = Registry::new(RegistryConfig::default());
        let r = bad.admit(&HeaderMap::new()).unwrap_err();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn device_endpoint_admits_only_registered_devices() {
        use tower::ServiceExt;
        let reg = Registry::new(RegistryConfig::default());
        let pki = crate::TestPki::infineon_like().unwrap();
        let (good, bad) = (pki.device(1).unwrap(), pki.device(2).unwrap());
        let body = serde_json::json!({"name": "dev-1", "certificate_pem": good.cert_pem});
        let req = http::Request::post("/v1/devices")
            .header("authorization", "Bearer mock-token")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let resp = reg.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let ca = TestCa::new("registry test").unwrap();
        let ep = reg.device_endpoint("127.0.0.1:0", &ca).await.unwrap();
        let chain = format!("{}{}", good.cert_pem, pki.ca_pem());
        let ok = crate::tls::connect_device(
            ep.addr,
            ca.cert_pem(),
            &chain,
            &good.key_pem,
            Some("localhost"),
        )
        .await
        .unwrap();
        assert_eq!(ok, crate::tls::Connect::Accepted("dev-1".into()));
        let refused = crate::tls::connect_device(
            ep.addr,
            ca.cert_pem(),
            &bad.cert_pem,
            &bad.key_pem,
            Some("localhost"),
        )
        .await
        .unwrap();
        assert!(
            matches!(refused, crate::tls::Connect::Refused(_)),
            "{refused:?}"
        );
        let st = reg.stats();
        assert_eq!(
            (st.devices, st.creates, st.max_creates_per_device),
            (1, 1, 1)
        );
    }
}
