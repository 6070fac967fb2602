//! A Standard Webhooks v1 receiver: verifies `webhook-signature` (HMAC-SHA256, constant time)
//! over `id.timestamp.body`, refuses timestamps outside ±5 minutes, de-duplicates on
//! `webhook-id`, records what it accepted, and answers scripted statuses per device. Devices
//! of accepted `device.provisioned` events are admitted by its mutual-TLS device endpoint until
//! a `device.deprovisioned` event removes them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::interop::{pem_to_der, sha256_hex};
use crate::server::{RunningServer, serve};
use crate::tls::{DeviceEndpoint, DeviceHello, TestCa, device_endpoint};

/// The reference libraries' tolerance: 5 minutes, past and future.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// An event the receiver accepted (signature valid, timestamp fresh, not a duplicate).
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// `webhook-id`.
    pub id: String,
    /// The event `type`.
    pub event_type: String,
    /// `data.deviceId`, when the event has one.
    pub device_id: Option<String>,
    /// The parsed body.
    pub body: Value,
}

#[derive(Debug, Default)]
struct Inner {
    accepted: Vec<Accepted>,
    seen: HashSet<String>,
    duplicates: u64,
    refused: u64,
    provisioned: BTreeMap<String, Vec<u8>>,
    scripts: HashMap<String, (u16, u32)>,
    clock_offset: i64,
}

/// The receiver's state.
#[derive(Clone)]
pub struct WebhookState {
    key: hmac::Key,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState").finish_non_exhaustive()
    }
}

impl WebhookState {
    /// A receiver for the `whsec_<base64>` secret.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let b64 = secret
            .strip_prefix("whsec_")
            .ok_or_else(|| anyhow::anyhow!("secret must start with whsec_"))?;
        let bytes = STANDARD.decode(b64)?;
        Ok(WebhookState {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            inner: Arc::default(),
        })
    }

    /// A random `whsec_` secret of 32 bytes.
    pub fn random_secret() -> String {
        let mut b = [0u8; 32];
        // RNG failure leaves zeros: still a valid (test-only) secret.
        let _ = aws_lc_rs::rand::fill(&mut b);
        format!("whsec_{}", STANDARD.encode(b))
    }

    /// Every accepted event, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.lock().accepted.clone()
    }

    /// Deliveries answered 2xx without effect because their `webhook-id` was seen.
    pub fn duplicates(&self) -> u64 {
        self.lock().duplicates
    }

    /// Deliveries refused for a bad signature, stale timestamp or malformed body.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// Device ids currently provisioned.
    pub fn provisioned(&self) -> Vec<String> {
        self.lock().provisioned.keys().cloned().collect()
    }

    /// Answers `status` (409, 410, 429, 500 ...) to the next `times` events of `device_id`.
    pub fn script(&self, device_id: &str, status: u16, times: u32) {
        self.lock()
            .scripts
            .insert(device_id.to_owned(), (status, times));
    }

    /// Shifts the receiver's clock (seconds) to test the replay window.
    pub fn set_clock_offset(&self, secs: i64) {
        self.lock().clock_offset = secs;
    }

    /// Checks headers and signature of one delivery at `now`; `Err` is the refusal text.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<String, String> {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| format!("missing {n} header"))
        };
        let id = get("webhook-id")?;
        let ts_raw = get("webhook-timestamp")?;
        let sigs = get("webhook-signature")?;
        let ts: i64 = ts_raw
            .parse()
            .map_err(|_| "webhook-timestamp is not an integer".to_owned())?;
        if (now - ts).abs() > TOLERANCE_SECS {
            return Err("timestamp outside the ±5 min tolerance".into());
        }
        let mut signed = Vec::with_capacity(id.len() + ts_raw.len() + body.len() + 2);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(ts_raw.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        let ok = sigs.split(' ').any(|s| {
            s.strip_prefix("v1,")
                .and_then(|b| STANDARD.decode(b).ok())
                .is_some_and(|tag| hmac::verify(&self.key, &signed, &tag).is_ok())
        });
        if ok {
            Ok(id)
        } else {
            Err("no valid v1 signature".into())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning means a test panicked; updates are single-step, the data stays consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running webhook receiver with its device endpoint.
#[derive(Debug)]
pub struct MockWebhook {
    /// The HTTP server; events go to `{url}/hook`.
    pub server: RunningServer,
    /// What it accepted.
    pub state: WebhookState,
    /// Admits provisioned devices.
    pub devices: DeviceEndpoint,
    /// The CA of the device endpoint's (and, with TLS, the receiver's) certificate.
    pub ca: TestCa,
}

impl MockWebhook {
    /// Starts a receiver on `addr`, over HTTPS when `tls`.
    pub async fn start(addr: &str, state: WebhookState, tls: bool) -> anyhow::Result<Self> {
        let ca = TestCa::new("idbridge mock webhook CA")?;
        let admit = state.clone();
        let devices = device_endpoint(
            "127.0.0.1:0",
            ca.mtls_config()?,
            Arc::new(move |h: &DeviceHello| {
                let id = sha256_hex(&h.cert_der);
                if admit.lock().provisioned.contains_key(&id) {
                    Ok(id)
                } else {
                    Err("not provisioned".into())
                }
            }),
        )
        .await?;
        let tls_cfg = if tls { Some(ca.https_config()?) } else { None };
        let server = serve(router(state.clone()), addr, tls_cfg).await?;
        Ok(MockWebhook {
            server,
            state,
            devices,
            ca,
        })
    }

    /// The URL events are POSTed to.
    pub fn url(&self) -> String {
        format!("{}/hook", self.server.url)
    }
}

/// `POST /hook`.
pub fn router(state: WebhookState) -> Router {
    Router::new().route("/hook", post(hook)).with_state(state)
}

async fn hook(State(s): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() + s.lock().clock_offset;
    let id = match s.verify(&headers, &body, now) {
        Ok(id) => id,
        Err(reason) => {
            s.lock().refused += 1;
            return (StatusCode::UNAUTHORIZED, reason).into_response();
        }
    };
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            s.lock().refused += 1;
            return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")).into_response();
        }
    };
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let device_id = event
        .pointer("/data/deviceId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut g = s.lock();
    if let Some(dev) = &device_id
        && let Some((status, times)) = g.scripts.get_mut(dev)
    {
        let status = *status;
        *times -= 1;
        if *times == 0 {
            g.scripts.remove(dev);
        }
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "scripted",
        )
            .into_response();
    }
    if g.seen.contains(&id) {
        g.duplicates += 1;
        return (StatusCode::OK, "duplicate").into_response();
    }
    match event_type.as_str() {
        "device.provisioned" => {
            let pem = event
                .pointer("/data/certificate/pem")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(der) = pem_to_der(pem) else {
                g.refused += 1;
                return (
                    StatusCode::BAD_REQUEST,
                    "data.certificate.pem is not a PEM certificate",
                )
                    .into_response();
            };
            let sha = sha256_hex(&der);
            if device_id.as_deref() != Some(sha.as_str()) {
                g.refused += 1;
                return (
                    StatusCode::BAD_REQUEST,
                    "data.deviceId is not the SHA-256 of the certificate",
                )
                    .into_response();
            }
            g.provisioned.insert(sha, der);
        }
        "device.deprovisioned" => {
            if let Some(dev) = &device_id {
                g.provisioned.remove(dev);
            }
        }
        "idbridge.health_check" => {}
        other => {
            g.refused += 1;
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown event type {other:?}"),
            )
                .into_response();
        }
    }
    g.seen.insert(id.clone());
    g.accepted.push(Accepted {
        id,
        event_type,
        device_id,
        body: event,
    });
    (StatusCode::NO_CONTENT, "").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    /// The Standard Webhooks published test vector, verified by the mock.
    #[test]
    fn verifies_the_published_test_vector() {
        let s = WebhookState::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let h = headers(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        );
        assert_eq!(
            s.verify(&h, body, 1649367553).as_deref(),
            Ok("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk")
        );
        // Several signatures (key rotation): one valid is enough.
        let h2 = headers(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            "v1,AAAA v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        );
        assert!(s.verify(&h2, body, 1649367553).is_ok());
        // Tampered body.
        let tampered = br#"{"email":"test@example.com","username":"test_user2"}"#;
        assert!(s.verify(&h, tampered, 1649367553).is_err());
        // Stale and future timestamps.
        assert!(s.verify(&h, body, 1649367553 + 301).is_err());
        assert!(s.verify(&h, body, 1649367553 - 301).is_err());
        assert!(s.verify(&h, body, 1649367553 + 299).is_ok());
        // Missing header.
        let mut h3 = h.clone();
        h3.remove("webhook-signature");
        assert!(s.verify(&h3, body, 1649367553).is_err());
    }
}
