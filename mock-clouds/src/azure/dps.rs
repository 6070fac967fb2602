//! The Device Provisioning Service's service API for individual enrollments:
//! `PUT/GET/DELETE /enrollments/{registrationId}`, bulk `POST /enrollments` (≤10),
//! `POST /enrollments/query` with `x-ms-continuation`, and the device registration states
//! `GET/DELETE /registrations/{registrationId}`, with the stable api-versions.
//! Paths match case-insensitively and `/enrollments/` may carry a trailing slash (Node).
//!
//! Assignment is modelled: a device that registers (connects to the DPS device endpoint with
//! an enabled enrollment's certificate) is created in the linked IoT hub mock (selfSigned, its
//! certificate's SHA-256 thumbprint) and gets a registration state naming that hub. Deleting
//! the enrollment leaves both, as the real service does.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::clock::MockClock;

use super::common::{
    self, EntraApp, Gate, QuotaSettings, Refusal, ServiceStats, empty, if_match, json_response,
    lock,
};
use super::sas::Policy;

/// api-versions the mock DPS accepts: the stable service API versions of
/// `Azure/azure-rest-api-specs` (`2021-10-01`, the one every SDK sends; `2026-04-01` and
/// `2026-11-01`, which add Azure Device Registry fields to enrollment groups).
pub const API_VERSIONS: &[&str] = &["2021-10-01", "2026-04-01", "2026-11-01"];

/// A device registration state: where DPS assigned a registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Registration id, lower-cased.
    pub registration_id: String,
    /// The hub device id.
    pub device_id: String,
    /// The hub's host name.
    pub assigned_hub: String,
    created: String,
    etag: String,
}

impl Registration {
    fn to_json(&self) -> Value {
        json!({
            "registrationId": self.registration_id,
            "createdDateTimeUtc": self.created,
            "assignedHub": self.assigned_hub,
            "deviceId": self.device_id,
            "status": "assigned",
            "substatus": "initialAssignment",
            "lastUpdatedDateTimeUtc": self.created,
            "etag": format!("\"{}\"", self.etag),
        })
    }
}
/// Most enrollments in one bulk call.
pub const MAX_BULK: usize = 10;

/// One individual enrollment with X.509 attestation.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    /// Registration id, lower-cased (DPS ids are case-insensitive).
    pub registration_id: String,
    /// Explicit IoT Hub device id, if set.
    pub device_id: Option<String>,
    /// The primary client certificate, DER.
    pub cert_der: Vec<u8>,
    /// `enabled` or `disabled`.
    pub provisioning_status: String,
    /// The hub devices are assigned to, if set.
    pub iot_hub_host_name: Option<String>,
    /// Allocation policy, if set.
    pub allocation_policy: Option<String>,
    /// initialTwin as sent.
    pub initial_twin: Value,
    /// Opaque etag (unquoted).
    pub etag: String,
    created: String,
    updated: String,
}

impl Enrollment {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "registrationId": self.registration_id,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"info": cert_info(&self.cert_der)}}}},
            "etag": format!("\"{}\"", self.etag),
            "provisioningStatus": self.provisioning_status,
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
            "capabilities": {"iotEdge": false},
            "createdDateTimeUtc": self.created,
            "lastUpdatedDateTimeUtc": self.updated,
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(d) = &self.device_id {
                obj.insert("deviceId".into(), json!(d));
            }
            if let Some(h) = &self.iot_hub_host_name {
                obj.insert("iotHubHostName".into(), json!(h));
            }
            if let Some(p) = &self.allocation_policy {
                obj.insert("allocationPolicy".into(), json!(p));
            }
            if !self.initial_twin.is_null() {
                obj.insert("initialTwin".into(), self.initial_twin.clone());
            }
        }
        v
    }
}

/// The server-computed `info` of an X.509 certificate.
fn cert_info(der: &[u8]) -> Value {
    let sha1 = hex::encode_upper(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der));
    let sha256 = hex::encode_upper(digest::digest(&digest::SHA256, der));
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => {
            let t = |x: &x509_parser::time::ASN1Time| {
                x.to_datetime()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            json!({
                "subjectName": c.subject().to_string(),
                "sha1Thumbprint": sha1,
                "sha256Thumbprint": sha256,
                "issuerName": c.issuer().to_string(),
                "notBeforeUtc": t(&c.validity().not_before),
                "notAfterUtc": t(&c.validity().not_after),
                "serialNumber": hex::encode_upper(c.raw_serial()),
                "version": c.version().0 + 1,
            })
        }
        Err(_) => json!({"sha1Thumbprint": sha1, "sha256Thumbprint": sha256}),
    }
}

/// The certificate string of an attestation: PEM, base64 of the PEM text, or base64 of the DER
/// (the three encodings seen from the SDKs, the C SDK and the Azure CLI).
pub fn decode_certificate(s: &str) -> Result<Vec<u8>, String> {
    let pem_der = |text: &str| -> Result<Vec<u8>, String> {
        let b64: String = text
            .lines()
            .map(str::trim)
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
            .collect();
        STANDARD.decode(b64).map_err(|e| format!("bad PEM: {e}"))
    };
    let der = if s.contains("-----BEGIN CERTIFICATE-----") {
        pem_der(s)?
    } else {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = STANDARD
            .decode(compact)
            .map_err(|_| "certificate is neither PEM nor base64".to_owned())?;
        if bytes.starts_with(b"-----BEGIN") {
            pem_der(&String::from_utf8_lossy(&bytes))?
        } else {
            bytes
        }
    };
    match x509_parser::parse_x509_certificate(&der) {
        Ok((&[], _)) => Ok(der),
        _ => Err("certificate is not a valid X.509 certificate".to_owned()),
    }
}

/// Registration ids: up to 128 of `A-Z a-z 0-9 - . _ :`, no special character first or last.
pub fn valid_registration_id(id: &str) -> bool {
    let special = |b: u8| matches!(b, b'-' | b'.' | b'_' | b':');
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || special(b))
        && !special(id.as_bytes()[0])
        && !special(id.as_bytes()[id.len() - 1])
}

/// The enrollment store and gate.
pub struct Dps {
    gate: Gate,
    enrollments: Mutex<BTreeMap<String, Enrollment>>,
    registrations: Mutex<BTreeMap<String, Registration>>,
    linked_hub: Mutex<Option<(String, Arc<super::hub::Hub>)>>,
    version: AtomicU64,
}

impl std::fmt::Debug for Dps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dps").finish_non_exhaustive()
    }
}

impl Dps {
    pub(crate) fn new(
        policies: Vec<Policy>,
        entra: EntraApp,
        quota: QuotaSettings,
        clock: MockClock,
    ) -> Self {
        Dps {
            gate: Gate::new(
                policies,
                entra,
                "https://azure-devices-provisioning.net/.default",
                quota,
                clock,
            ),
            enrollments: Mutex::new(BTreeMap::new()),
            registrations: Mutex::new(BTreeMap::new()),
            linked_hub: Mutex::new(None),
            version: AtomicU64::new(0x633f_5070_0000),
        }
    }

    /// Links the hub registered devices are assigned to, by its host name.
    pub(crate) fn link_hub(&self, host: String, hub: Arc<super::hub::Hub>) {
        *lock(&self.linked_hub) = Some((host, hub));
    }

    /// The registration state of a registered device (any case).
    pub fn registration(&self, id: &str) -> Option<Registration> {
        lock(&self.registrations)
            .get(&id.to_ascii_lowercase())
            .cloned()
    }

    /// An enrollment by registration id (any case).
    pub fn enrollment(&self, id: &str) -> Option<Enrollment> {
        lock(&self.enrollments)
            .get(&id.to_ascii_lowercase())
            .cloned()
    }

    /// Number of enrollments.
    pub fn enrollment_count(&self) -> usize {
        lock(&self.enrollments).len()
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Request, throttle, operation and token counters.
    pub fn stats(&self) -> ServiceStats {
        self.gate.stats()
    }

    /// Replaces the quota.
    pub fn set_quota(&self, q: QuotaSettings) {
        self.gate.set_quota(q);
    }

    /// Device endpoint admission: an enabled enrollment holding this certificate whose
    /// registration id equals the certificate's CN (DPS rejects any other registration).
    pub(crate) fn admit(&self, der: &[u8]) -> Result<String, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("bad certificate: {e}"))?;
        if !cert.validity().is_valid() {
            return Err("certificate expired or not yet valid".into());
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let enrollment = lock(&self.enrollments).get(&cn).cloned();
        match enrollment {
            Some(e) if e.cert_der == der && e.provisioning_status == "enabled" => {
                let device_id = e
                    .device_id
                    .clone()
                    .unwrap_or_else(|| e.registration_id.clone());
                self.assign(&e, &device_id, der)?;
                Ok(device_id)
            }
            Some(e) if e.cert_der == der => {
                Err(format!("enrollment {} is disabled", e.registration_id))
            }
            _ => Err(format!(
                "no enrollment with registration id {cn:?} and this certificate"
            )),
        }
    }

    /// A device registers: DPS creates (or updates) it in the linked hub, authenticated by its
    /// certificate's SHA-256 thumbprint, and records where it went.
    fn assign(&self, e: &Enrollment, device_id: &str, der: &[u8]) -> Result<(), String> {
        let Some((host, hub)) = lock(&self.linked_hub).clone() else {
            return Err("no IoT hub is linked to this DPS instance".into());
        };
        if let Some(want) = &e.iot_hub_host_name
            && !want.eq_ignore_ascii_case(&host)
        {
            return Err(format!("enrollment names hub {want}, which is not linked"));
        }
        let thumbprint = hex::encode_upper(digest::digest(&digest::SHA256, der));
        hub.insert_self_signed(device_id, &thumbprint);
        let reg = Registration {
            registration_id: e.registration_id.clone(),
            device_id: device_id.to_owned(),
            assigned_hub: host,
            created: common::rfc3339_now(),
            etag: self.next_etag(),
        };
        lock(&self.registrations).insert(e.registration_id.clone(), reg);
        Ok(())
    }

    fn next_etag(&self) -> String {
        let n = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{:08x}-0000-0700-0000-{:012x}", n >> 16, n)
    }
}

/// The DPS router.
pub(crate) fn router(dps: Arc<Dps>) -> Router {
    Router::new().fallback(handle).with_state(dps)
}

/// A DPS error: `ProvisioningServiceErrorDetails` + `x-ms-error-code`.
pub fn error(status: StatusCode, code: u32, message: &str) -> Response<Body> {
    json_response(
        status,
        &[("x-ms-error-code", code.to_string())],
        json!({
            "errorCode": code,
            "trackingId": common::tracking_id(),
            "message": message,
            "info": {},
            "timestampUtc": common::rfc3339_now(),
        }),
    )
}

async fn handle(State(dps): State<Arc<Dps>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 96 << 10).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                413001,
                "Message size exceeds 96 KB",
            );
        }
    };
    let path = parts.uri.path().to_owned();
    if parts.method == Method::POST
        && let Some(r) = dps.gate.token_endpoint(&path, &body)
    {
        return r;
    }
    if parts.method == Method::GET
        && let Some(r) =
            dps.gate
                .managed_identity_endpoint(&path, parts.uri.query(), &parts.headers)
    {
        return r;
    }
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_ascii_lowercase()
        })
        .collect();
    let write = matches!(parts.method, Method::PUT | Method::DELETE)
        || (parts.method == Method::POST && segs == ["enrollments"]);
    if let Err(r) = dps.gate.authorize(&parts.headers, &path, write) {
        return refusal(r);
    }
    match common::api_version(parts.uri.query()) {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => {}
        Some(v) => {
            return error(
                StatusCode::BAD_REQUEST,
                400001,
                &format!("The api-version '{v}' is not supported."),
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                400001,
                "The api-version query parameter is required.",
            );
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (&parts.method, segs.as_slice()) {
        (&Method::POST, ["enrollments", "query"]) => {
            charged(&dps, 1, || query(&dps, &parts.headers, &body)).await
        }
        (&Method::POST, ["enrollments"]) => bulk(&dps, &body).await,
        (&Method::PUT, ["enrollments", id]) => {
            charged(&dps, 1, || put(&dps, id, &parts.headers, &body)).await
        }
        (&Method::GET, ["enrollments", id]) => charged(&dps, 1, || get(&dps, id)).await,
        (&Method::DELETE, ["enrollments", id]) => {
            charged(&dps, 1, || delete(&dps, id, &parts.headers)).await
        }
        (&Method::GET, ["registrations", id]) => {
            charged(&dps, 1, || get_registration(&dps, id)).await
        }
        (&Method::DELETE, ["registrations", id]) => {
            charged(&dps, 1, || delete_registration(&dps, id)).await
        }
        (_, ["enrollments" | "registrations", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, 405001, "Method not allowed")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            404001,
            &format!("No route for {} {path}", parts.method),
        ),
    }
}

fn refusal(r: Refusal) -> Response<Body> {
    match r {
        Refusal::Unauthorized(why) => {
            tracing::debug!(%why, "dps mock: 401");
            error(StatusCode::UNAUTHORIZED, 401002, "Unauthorized")
        }
        Refusal::Throttled(after) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                429001,
                "Operations are being throttled for this tenant.",
            );
            if let Ok(v) = http::HeaderValue::from_str(&after.as_secs().to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            r
        }
    }
}

async fn charged(dps: &Dps, cost: u64, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    match dps.gate.charge(cost) {
        Ok(hold) => {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            f()
        }
        Err(r) => refusal(r),
    }
}

/// Builds an enrollment from a request body; Err((status, code, message)).
fn parse_enrollment(
    dps: &Dps,
    v: &Value,
    created: Option<String>,
) -> Result<Enrollment, (StatusCode, u32, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, 400004, m);
    let id = v
        .get("registrationId")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("registrationId is required".into()))?;
    if !valid_registration_id(id) {
        return Err(bad(format!("The registration id '{id}' is invalid.")));
    }
    let att = v
        .get("attestation")
        .ok_or_else(|| bad("attestation is required".into()))?;
    if !att
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("x509"))
    {
        return Err(bad("The mock supports x509 attestation only".into()));
    }
    let cert = att
        .pointer("/x509/clientCertificates/primary/certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("x509.clientCertificates.primary.certificate is required".into()))?;
    let cert_der = decode_certificate(cert).map_err(bad)?;
    let status = match v.get("provisioningStatus").and_then(Value::as_str) {
        None => "enabled",
        Some(s) if s.eq_ignore_ascii_case("enabled") => "enabled",
        Some(s) if s.eq_ignore_ascii_case("disabled") => "disabled",
        Some(s) => return Err(bad(format!("Invalid provisioningStatus '{s}'"))),
    };
    let allocation_policy = v
        .get("allocationPolicy")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(p) = &allocation_policy
        && !["hashed", "geolatency", "static", "custom"].contains(&p.to_ascii_lowercase().as_str())
    {
        return Err(bad(format!("Invalid allocationPolicy '{p}'")));
    }
    let now = common::rfc3339_now();
    Ok(Enrollment {
        registration_id: id.to_ascii_lowercase(),
        device_id: v.get("deviceId").and_then(Value::as_str).map(str::to_owned),
        cert_der,
        provisioning_status: status.to_owned(),
        iot_hub_host_name: v
            .get("iotHubHostName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        allocation_policy,
        initial_twin: v.get("initialTwin").cloned().unwrap_or(Value::Null),
        etag: dps.next_etag(),
        created: created.unwrap_or_else(|| now.clone()),
        updated: now,
    })
}

fn not_found(id: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        404201,
        &format!("Enrollment with registration id '{id}' not found."),
    )
}

fn put(dps: &Dps, id: &str, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                400004,
                &format!("Malformed body: {e}"),
            );
        }
    };
    if !v
        .get("registrationId")
        .and_then(Value::as_str)
        .is_some_and(|r| r.eq_ignore_ascii_case(id))
    {
        return error(
            StatusCode::BAD_REQUEST,
            400004,
            "registrationId in the body does not match the URI",
        );
    }
    let mut store = lock(&dps.enrollments);
    let existing = store.get(id).cloned();
    match (&existing, if_match(headers).as_deref()) {
        (Some(_), None) => {
            return error(
                StatusCode::CONFLICT,
                409201,
                &format!("Enrollment '{id}' already exists."),
            );
        }
        (Some(e), Some(tag)) if tag != "*" && tag != e.etag => {
            return error(
                StatusCode::PRECONDITION_FAILED,
                412201,
                "Precondition failed: the etag does not match.",
            );
        }
        (None, Some(tag)) if tag != "*" => return not_found(id),
        _ => {}
    }
    match parse_enrollment(dps, &v, existing.map(|e| e.created)) {
        Ok(e) => {
            let out = e.to_json();
            store.insert(e.registration_id.clone(), e);
            json_response(StatusCode::OK, &[], out)
        }
        Err((s, c, m)) => error(s, c, &m),
    }
}

fn get(dps: &Dps, id: &str) -> Response<Body> {
    match lock(&dps.enrollments).get(id) {
        Some(e) => json_response(StatusCode::OK, &[], e.to_json()),
        None => not_found(id),
    }
}

fn delete(dps: &Dps, id: &str, headers: &HeaderMap) -> Response<Body> {
    let mut store = lock(&dps.enrollments);
    let Some(e) = store.get(id) else {
        return not_found(id);
    };
    if let Some(tag) = if_match(headers)
        && tag != "*"
        && tag != e.etag
    {
        return error(
            StatusCode::PRECONDITION_FAILED,
            412201,
            "Precondition failed: the etag does not match.",
        );
    }
    store.remove(id);
    empty(StatusCode::NO_CONTENT)
}

fn registration_not_found(id: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        404202,
        &format!("Registration with registration id '{id}' not found."),
    )
}

fn get_registration(dps: &Dps, id: &str) -> Response<Body> {
    match lock(&dps.registrations).get(id) {
        Some(r) => json_response(StatusCode::OK, &[], r.to_json()),
        None => registration_not_found(id),
    }
}

/// Deletes the registration state only: the hub device stays (as on the real service).
fn delete_registration(dps: &Dps, id: &str) -> Response<Body> {
    match lock(&dps.registrations).remove(id) {
        Some(_) => empty(StatusCode::NO_CONTENT),
        None => registration_not_found(id),
    }
}

async fn bulk(dps: &Dps, body: &[u8]) -> Response<Body> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                400004,
                &format!("Malformed body: {e}"),
            );
        }
    };
    let mode = v
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    if !["create", "update", "updateifmatchetag", "delete"].contains(&mode.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            400004,
            &format!("Invalid bulk mode {:?}", v.get("mode")),
        );
    }
    let Some(items) = v.get("enrollments").and_then(Value::as_array) else {
        return error(StatusCode::BAD_REQUEST, 400004, "enrollments is required");
    };
    if items.is_empty() || items.len() > MAX_BULK {
        return error(
            StatusCode::BAD_REQUEST,
            400004,
            &format!(
                "A bulk operation takes 1 to {MAX_BULK} enrollments, got {}.",
                items.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    for it in items {
        let id = it
            .get("registrationId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        if !seen.insert(id.clone()) {
            return error(
                StatusCode::BAD_REQUEST,
                400004,
                &format!("Registration id '{id}' appears more than once."),
            );
        }
    }
    let cost = if dps.gate.bulk_counts_per_device() {
        items.len() as u64
    } else {
        1
    };
    match dps.gate.charge(cost) {
        Ok(hold) if !hold.is_zero() => tokio::time::sleep(hold).await,
        Ok(_) => {}
        Err(r) => return refusal(r),
    }
    let mut errors = Vec::new();
    let mut store = lock(&dps.enrollments);
    for it in items {
        let raw_id = it
            .get("registrationId")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = raw_id.to_ascii_lowercase();
        let mut fail = |code: u32, status: String| {
            errors
                .push(json!({"registrationId": raw_id, "errorCode": code, "errorStatus": status}));
        };
        let existing = store.get(&id).cloned();
        match (mode.as_str(), &existing) {
            ("create", Some(_)) => {
                fail(409201, format!("Enrollment '{id}' already exists."));
                continue;
            }
            ("update" | "updateifmatchetag" | "delete", None) if mode != "update" => {
                fail(
                    404201,
                    format!("Enrollment with registration id '{id}' not found."),
                );
                continue;
            }
            ("updateifmatchetag", Some(e)) => {
                let tag = it
                    .get("etag")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .trim_matches('"');
                if tag != "*" && tag != e.etag {
                    fail(
                        412201,
                        "Precondition failed: the etag does not match.".into(),
                    );
                    continue;
                }
            }
            _ => {}
        }
        if mode == "delete" {
            store.remove(&id);
            continue;
        }
        match parse_enrollment(dps, it, existing.map(|e| e.created)) {
            Ok(e) => {
                store.insert(e.registration_id.clone(), e);
            }
            Err((_, c, m)) => fail(c, m),
        }
    }
    json_response(
        StatusCode::OK,
        &[],
        json!({"isSuccessful": errors.is_empty(), "errors": errors}),
    )
}

fn query(dps: &Dps, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let q: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if q.get("query").and_then(Value::as_str) != Some("*") {
        return error(
            StatusCode::BAD_REQUEST,
            400004,
            "The mock answers the query \"*\" only",
        );
    }
    let max = headers
        .get("x-ms-max-item-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let after = headers
        .get("x-ms-continuation")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let store = lock(&dps.enrollments);
    let mut page = Vec::new();
    let mut last = None;
    let mut more = false;
    for (k, e) in store
        .iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_str() > a.as_str()))
    {
        if page.len() == max {
            more = true;
            break;
        }
        page.push(e.to_json());
        last = Some(k.clone());
    }
    let mut hdrs = vec![
        ("x-ms-item-type", "Enrollment".to_owned()),
        ("x-ms-max-item-count", max.to_string()),
    ];
    if more && let Some(l) = last {
        hdrs.push(("x-ms-continuation", STANDARD.encode(l)));
    }
    json_response(StatusCode::OK, &hdrs, Value::Array(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_rules() {
        assert!(valid_registration_id("optiga-0001"));
        assert!(valid_registration_id(&"a".repeat(128)));
        assert!(!valid_registration_id(&"a".repeat(129)));
        assert!(!valid_registration_id("Infineon IoT Node"));
        assert!(!valid_registration_id("-lead"));
        assert!(!valid_registration_id("trail."));
        assert!(!valid_registration_id("\"\""));
        assert!(!valid_registration_id(""));
    }
}
