//! The IoT Hub identity registry: `PUT/GET/DELETE /devices/{id}`, bulk `POST /devices`, twin
//! query `POST /devices/query`, `GET /statistics/devices`, with `api-version=2021-04-12`.

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// api-versions the mock hub accepts.
pub const API_VERSIONS: &[&str] = &["2021-04-12", "2020-05-31-preview", "2020-03-13"];
/// Most devices in one bulk call.
pub const MAX_BULK: usize = 100;

/// One registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// deviceId (case-sensitive).
    pub id: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    pub auth_type: String,
    /// Primary X.509 thumbprint (upper-case hex) for selfSigned.
    pub primary: Option<String>,
    /// Secondary X.509 thumbprint.
    pub secondary: Option<String>,
    /// Registry version; the etag is base64 of it.
    pub version: u64,
    /// Twin tags.
    pub tags: Value,
    generation_id: String,
    iot_edge: bool,
}

impl Device {
    /// The device's etag (base64 of the decimal version, as the hub does).
    pub fn etag(&self) -> String {
        STANDARD.encode(self.version.to_string())
    }

    fn to_json(&self) -> Value {
        json!({
            "deviceId": self.id,
            "moduleId": null,
            "generationId": self.generation_id,
            "etag": self.etag(),
            "connectionState": "Disconnected",
            "status": self.status,
            "statusReason": null,
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
            "statusUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": 0,
            "authentication": {
                "symmetricKey": {"primaryKey": null, "secondaryKey": null},
                "x509Thumbprint": {"primaryThumbprint": self.primary, "secondaryThumbprint": self.secondary},
                "type": self.auth_type,
            },
            "capabilities": {"iotEdge": self.iot_edge},
        })
    }

    fn to_twin(&self) -> Value {
        json!({
            "deviceId": self.id,
            "etag": "AAAAAAAAAAE=",
            "deviceEtag": self.etag(),
            "status": self.status,
            "statusUpdateTime": "0001-01-01T00:00:00Z",
            "connectionState": "Disconnected",
            "lastActivityTime": "0001-01-01T00:00:00Z",
            "cloudToDeviceMessageCount": 0,
            "authenticationType": self.auth_type,
            "x509Thumbprint": {"primaryThumbprint": self.primary, "secondaryThumbprint": self.secondary},
            "modelId": "",
            "version": 2,
            "tags": self.tags,
            "properties": {
                "desired": {"$metadata": {"$lastUpdated": "0001-01-01T00:00:00Z"}, "$version": 1},
                "reported": {"$metadata": {"$lastUpdated": "0001-01-01T00:00:00Z"}, "$version": 1},
            },
            "capabilities": {"iotEdge": self.iot_edge},
        })
    }
}

/// The hub's registry and gate.
pub struct Hub {
    gate: Gate,
    devices: Mutex<BTreeMap<String, Device>>,
    version: AtomicU64,
    item_faults: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn new(
        policies: Vec<Policy>,
        entra: EntraApp,
        quota: QuotaSettings,
        clock: MockClock,
    ) -> Self {
        Hub {
            gate: Gate::new(
                policies,
                entra,
                "https://iothubs.azure.net/.default",
                quota,
                clock,
            ),
            devices: Mutex::new(BTreeMap::new()),
            version: AtomicU64::new(510_934_660),
            item_faults: Mutex::new(HashMap::new()),
        }
    }

    /// A registered device.
    pub fn device(&self, id: &str) -> Option<Device> {
        lock(&self.devices).get(id).cloned()
    }

    /// Number of registered devices.
    pub fn device_count(&self) -> usize {
        lock(&self.devices).len()
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Request, throttle, operation and token counters.
    pub fn stats(&self) -> ServiceStats {
        self.gate.stats()
    }

    /// Replaces the quota (e.g. to throttle a running mock).
    pub fn set_quota(&self, q: QuotaSettings) {
        self.gate.set_quota(q);
    }

    /// Inserts a device directly (test setup), e.g. one with a different thumbprint.
    pub fn insert_self_signed(&self, id: &str, thumbprint: &str) {
        let d = self.new_device(
            id,
            "enabled",
            "selfSigned",
            Some(thumbprint.to_ascii_uppercase()),
            Some(thumbprint.to_ascii_uppercase()),
            json!({}),
            false,
        );
        lock(&self.devices).insert(id.to_owned(), d);
    }

    /// Sets a device's status (`enabled`/`disabled`).
    pub fn set_status(&self, id: &str, status: &str) -> bool {
        let v = self.next_version();
        match lock(&self.devices).get_mut(id) {
            Some(d) => {
                d.status = status.to_owned();
                d.version = v;
                true
            }
            None => false,
        }
    }

    /// The next bulk call that touches `device_id` reports `error_code` for it (e.g.
    /// `InternalServerError`, `ThrottlingException`) without applying its operation.
    pub fn fail_item_once(&self, device_id: &str, error_code: &str) {
        lock(&self.item_faults).insert(device_id.to_owned(), error_code.to_owned());
    }

    /// Device endpoint admission: an enabled selfSigned device with this certificate's SHA-256
    /// or SHA-1 thumbprint, the certificate within its validity.
    pub(crate) fn admit(&self, der: &[u8]) -> Result<String, String> {
        let sha256 = hex::encode_upper(digest::digest(&digest::SHA256, der));
        let sha1 = hex::encode_upper(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der));
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("bad certificate: {e}"))?;
        if !cert.validity().is_valid() {
            return Err("certificate expired or not yet valid".into());
        }
        let devices = lock(&self.devices);
        let found = devices.values().find(|d| {
            d.auth_type.eq_ignore_ascii_case("selfSigned")
                && [&d.primary, &d.secondary].iter().any(|t| {
                    t.as_deref().is_some_and(|t| {
                        t.eq_ignore_ascii_case(&sha256) || t.eq_ignore_ascii_case(&sha1)
                    })
                })
        });
        match found {
            Some(d) if d.status == "enabled" => Ok(d.id.clone()),
            Some(d) => Err(format!("device {} is disabled", d.id)),
            None => Err("no device with this thumbprint".into()),
        }
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    #[allow(clippy::too_many_arguments)]
    fn new_device(
        &self,
        id: &str,
        status: &str,
        auth_type: &str,
        primary: Option<String>,
        secondary: Option<String>,
        tags: Value,
        iot_edge: bool,
    ) -> Device {
        let generation_id = format!("63{:016}", self.version.load(Ordering::Relaxed));
        Device {
            id: id.to_owned(),
            status: status.to_owned(),
            auth_type: auth_type.to_owned(),
            primary,
            secondary,
            version: self.next_version(),
            tags,
            generation_id,
            iot_edge,
        }
    }
}

/// The hub's router (everything goes through one handler: paths match case-insensitively).
pub(crate) fn router(hub: Arc<Hub>) -> Router {
    Router::new().fallback(handle).with_state(hub)
}

/// An IoT Hub error in the legacy shape:
/// `{"Message":"ErrorCode:<name>;<text>","ExceptionMessage":"Tracking ID:…"}` + `iothub-errorcode`.
pub fn error(status: StatusCode, code: &str, text: &str) -> Response<Body> {
    let tracking = common::tracking_id().replace('-', "");
    json_response(
        status,
        &[("iothub-errorcode", code.to_owned())],
        json!({
            "Message": format!("ErrorCode:{code};{text}"),
            "ExceptionMessage": format!("Tracking ID:{tracking}-G:0-TimeStamp:{}", common::hub_timestamp()),
        }),
    )
}

/// An IoT Hub error in the newer shape: the JSON error object inside `Message`.
fn error_json(status: StatusCode, code: &str, number: u32, text: &str) -> Response<Body> {
    let inner = json!({
        "errorCode": number,
        "trackingId": format!("{}-G:0-TimeStamp:{}", common::tracking_id().replace('-', ""), common::hub_timestamp()),
        "message": text,
        "info": {},
        "timestampUtc": common::rfc3339_now(),
    });
    json_response(
        status,
        &[("iothub-errorcode", code.to_owned())],
        json!({"Message": inner.to_string(), "ExceptionMessage": ""}),
    )
}

fn not_found(id: &str) -> Response<Body> {
    error_json(
        StatusCode::NOT_FOUND,
        "DeviceNotFound",
        404001,
        &format!("Device {id} not registered"),
    )
}

async fn handle(State(hub): State<Arc<Hub>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 4 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                "Request too large",
            );
        }
    };
    let path = parts.uri.path().to_owned();
    if parts.method == Method::POST
        && let Some(r) = hub.gate.token_endpoint(&path, &body)
    {
        return r;
    }
    if parts.method == Method::GET
        && let Some(r) =
            hub.gate
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
                .into_owned()
        })
        .collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let write = matches!(parts.method, Method::PUT | Method::DELETE)
        || (parts.method == Method::POST && lower == ["devices"]);
    if let Err(r) = hub.gate.authorize(&parts.headers, &path, write) {
        return refusal(r);
    }
    match common::api_version(parts.uri.query()) {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => {}
        Some(v) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidProtocolVersion",
                &format!("Invalid API version '{v}'"),
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidProtocolVersion",
                "API version is missing",
            );
        }
    }
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match (&parts.method, lower.as_slice()) {
        (&Method::PUT, ["devices", _]) => {
            charged(&hub, 1, || {
                put_device(&hub, &segs[1], &parts.headers, &body)
            })
            .await
        }
        (&Method::GET, ["devices", _]) => charged(&hub, 1, || get_device(&hub, &segs[1])).await,
        (&Method::DELETE, ["devices", _]) => {
            charged(&hub, 1, || delete_device(&hub, &segs[1], &parts.headers)).await
        }
        (&Method::POST, ["devices"]) => bulk(&hub, &body).await,
        (&Method::POST, ["devices", "query"]) => {
            charged(&hub, 1, || query(&hub, &parts.headers, &body)).await
        }
        (&Method::GET, ["statistics", "devices"]) => statistics(&hub),
        _ => error(
            StatusCode::NOT_FOUND,
            "GenericNotFound",
            &format!("No route for {} {path}", parts.method),
        ),
    }
}

fn refusal(r: Refusal) -> Response<Body> {
    match r {
        Refusal::Unauthorized(why) => {
            tracing::debug!(%why, "iot hub mock: 401");
            error(
                StatusCode::UNAUTHORIZED,
                "IotHubUnauthorizedAccess",
                "Unauthorized",
            )
        }
        Refusal::Throttled(after) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlingException",
                "The request has been throttled. Operation type: CRUD",
            );
            if let Ok(v) = http::HeaderValue::from_str(&after.as_secs().to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            r
        }
    }
}

async fn charged(hub: &Hub, cost: u64, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    match hub.gate.charge(cost) {
        Ok(hold) => {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            f()
        }
        Err(r) => refusal(r),
    }
}

/// Device ids as documented ("a case-sensitive string, up to 128 characters long, of ASCII
/// 7-bit alphanumeric characters plus `- : . + % _ # * ? ! ( ) , = @ ; $ '`").
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-:.+%_#*?!(),=@;$'".contains(&b))
}

/// The six-digit code IoT Hub sends for an error name (common error codes page).
pub fn error_number(name: &str) -> u32 {
    match name {
        "InvalidProtocolVersion" => 400001,
        "ArgumentInvalid" | "DeviceDefinedMultipleTimes" => 400004,
        "ArgumentNull" => 400005,
        "IotHubUnauthorizedAccess" => 401002,
        "IotHubQuotaExceeded" => 403002,
        "DeviceNotFound" => 404001,
        "DeviceAlreadyExists" => 409001,
        "PreconditionFailed" => 412001,
        "ThrottlingException" => 429001,
        "ServiceUnavailable" => 503001,
        _ => 500001,
    }
}

fn valid_thumbprint(t: &str) -> bool {
    (t.len() == 40 || t.len() == 64) && t.bytes().all(|b| b.is_ascii_hexdigit())
}

struct Parsed {
    status: String,
    auth_type: String,
    primary: Option<String>,
    secondary: Option<String>,
    iot_edge: bool,
}

/// Validates a Device / ExportImportDevice body's common fields.
fn parse_device(v: &Value) -> Result<Parsed, String> {
    let status = match v.get("status").and_then(Value::as_str) {
        None => "enabled".to_owned(),
        Some(s) if s.eq_ignore_ascii_case("enabled") => "enabled".to_owned(),
        Some(s) if s.eq_ignore_ascii_case("disabled") => "disabled".to_owned(),
        Some(s) => return Err(format!("Invalid status '{s}'")),
    };
    let auth = v.get("authentication").cloned().unwrap_or(Value::Null);
    let auth_type = match auth.get("type").and_then(Value::as_str).unwrap_or("sas") {
        t if t.eq_ignore_ascii_case("sas") => "sas",
        t if t.eq_ignore_ascii_case("selfSigned") => "selfSigned",
        t if t.eq_ignore_ascii_case("certificateAuthority") => "certificateAuthority",
        t if t.eq_ignore_ascii_case("none") => "none",
        t => return Err(format!("Invalid authentication type '{t}'")),
    }
    .to_owned();
    let thumb = |k: &str| {
        auth.get("x509Thumbprint")
            .and_then(|x| x.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (primary, secondary) = (thumb("primaryThumbprint"), thumb("secondaryThumbprint"));
    if auth_type == "selfSigned" {
        if primary.is_none() && secondary.is_none() {
            return Err("Authentication type selfSigned needs a thumbprint".into());
        }
        for t in primary.iter().chain(secondary.iter()) {
            if !valid_thumbprint(t) {
                return Err(format!("Thumbprint '{t}' is not 40 or 64 hex characters"));
            }
        }
        if let (Some(p), Some(s)) = (&primary, &secondary)
            && p.len() != s.len()
        {
            return Err("Primary and secondary thumbprints must be of the same type".into());
        }
    } else if primary.is_some() || secondary.is_some() {
        return Err(format!(
            "Thumbprints are only valid with selfSigned authentication, not {auth_type}"
        ));
    }
    Ok(Parsed {
        status,
        auth_type,
        primary: primary.map(|s| s.to_ascii_uppercase()),
        secondary: secondary.map(|s| s.to_ascii_uppercase()),
        iot_edge: v
            .pointer("/capabilities/iotEdge")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

fn put_device(hub: &Hub, id: &str, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                &format!("Malformed body: {e}"),
            );
        }
    };
    if !valid_device_id(id) {
        return error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            &format!("DeviceId '{id}' is invalid"),
        );
    }
    if v.get("deviceId").and_then(Value::as_str) != Some(id) {
        return error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "DeviceId in the body does not match the URI",
        );
    }
    let p = match parse_device(&v) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "ArgumentInvalid", &e),
    };
    let cond = if_match(headers);
    let mut devices = lock(&hub.devices);
    let existing = devices.get(id).cloned();
    match (&existing, cond.as_deref()) {
        (Some(_), None) => {
            return error(
                StatusCode::CONFLICT,
                "DeviceAlreadyExists",
                &format!("A device with ID '{id}' is already registered."),
            );
        }
        (Some(d), Some(tag)) if tag != "*" && tag != d.etag() => {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                &format!(
                    "Precondition failed: Device version did not match, existingVersion:{} newVersion:{tag}",
                    d.version
                ),
            );
        }
        (None, Some(tag)) if tag != "*" => return not_found(id),
        _ => {}
    }
    let tags = existing
        .as_ref()
        .map(|d| d.tags.clone())
        .unwrap_or_else(|| json!({}));
    let mut d = hub.new_device(
        id,
        &p.status,
        &p.auth_type,
        p.primary,
        p.secondary,
        tags,
        p.iot_edge,
    );
    if let Some(old) = existing {
        d.generation_id = old.generation_id;
    }
    let out = d.to_json();
    devices.insert(id.to_owned(), d);
    json_response(StatusCode::OK, &[], out)
}

fn get_device(hub: &Hub, id: &str) -> Response<Body> {
    match lock(&hub.devices).get(id) {
        Some(d) => json_response(StatusCode::OK, &[], d.to_json()),
        None => not_found(id),
    }
}

fn delete_device(hub: &Hub, id: &str, headers: &HeaderMap) -> Response<Body> {
    let mut devices = lock(&hub.devices);
    let Some(d) = devices.get(id) else {
        return not_found(id);
    };
    // No If-Match deletes unconditionally (the SDKs always send "*"); an etag must match.
    if let Some(tag) = if_match(headers)
        && tag != "*"
        && tag != d.etag()
    {
        return error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            &format!(
                "Precondition failed: Device version did not match, existingVersion:{} newVersion:{tag}",
                d.version
            ),
        );
    }
    devices.remove(id);
    empty(StatusCode::NO_CONTENT)
}

async fn bulk(hub: &Hub, body: &[u8]) -> Response<Body> {
    let items: Vec<Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) => a,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                "Request body must be an array of ExportImportDevice",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                &format!("Malformed body: {e}"),
            );
        }
    };
    if items.len() > MAX_BULK {
        return error(
            StatusCode::BAD_REQUEST,
            "TooManyDevices",
            &format!(
                "Too many devices specified in the request: {}. Maximum allowed: {MAX_BULK}",
                items.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    for it in &items {
        let Some(id) = it.get("id").and_then(Value::as_str) else {
            return error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                "Every device needs an 'id'",
            );
        };
        if !seen.insert(id.to_owned()) {
            return error(
                StatusCode::BAD_REQUEST,
                "DeviceDefinedMultipleTimes",
                &format!("Device '{id}' is defined multiple times"),
            );
        }
        if !valid_device_id(id) {
            return error(
                StatusCode::BAD_REQUEST,
                "ArgumentInvalid",
                &format!("DeviceId '{id}' is invalid"),
            );
        }
    }
    let cost = if hub.gate.bulk_counts_per_device() {
        items.len() as u64
    } else {
        1
    };
    match hub.gate.charge(cost.max(1)) {
        Ok(hold) if !hold.is_zero() => tokio::time::sleep(hold).await,
        Ok(_) => {}
        Err(r) => return refusal(r),
    }
    let mut errors = Vec::new();
    let mut devices = lock(&hub.devices);
    for it in &items {
        let id = it.get("id").and_then(Value::as_str).unwrap_or_default();
        let mode_raw = it
            .get("importMode")
            .and_then(Value::as_str)
            .unwrap_or("createOrUpdate");
        let mode = mode_raw.to_ascii_lowercase();
        let etag = it
            .get("eTag")
            .and_then(Value::as_str)
            .map(|s| s.trim_matches('"').to_owned());
        // The service sends the numeric code (409001), with the name in `errorStatus`.
        let mut fail = |code: &str, status: String| {
            errors.push(json!({"deviceId": id, "moduleId": null, "errorCode": error_number(code), "errorStatus": format!("ErrorCode:{code};{status}"), "operation": mode_raw}));
        };
        if let Some(code) = lock(&hub.item_faults).remove(id) {
            fail(&code, format!("Scripted failure {code} for device {id}"));
            continue;
        }
        let existing = devices.get(id).cloned();
        let etag_ok = |d: &Device| etag.as_deref().is_some_and(|t| t == "*" || t == d.etag());
        let is_delete = mode.starts_with("delete");
        let is_twin = mode.starts_with("updatetwin");
        match (mode.as_str(), &existing) {
            ("create", Some(_)) => {
                fail(
                    "DeviceAlreadyExists",
                    format!("A device with ID '{id}' is already registered."),
                );
                continue;
            }
            (
                "update"
                | "updateifmatchetag"
                | "delete"
                | "deleteifmatchetag"
                | "updatetwin"
                | "updatetwinifmatchetag",
                None,
            ) => {
                fail("DeviceNotFound", format!("Device {id} not registered"));
                continue;
            }
            (
                "updateifmatchetag"
                | "deleteifmatchetag"
                | "createorupdateifmatchetag"
                | "updatetwinifmatchetag",
                Some(d),
            ) if !etag_ok(d) => {
                fail(
                    "PreconditionFailed",
                    format!(
                        "Precondition failed: Device version did not match, existingVersion:{}",
                        d.version
                    ),
                );
                continue;
            }
            (
                "create"
                | "createorupdate"
                | "createorupdateifmatchetag"
                | "update"
                | "updateifmatchetag"
                | "delete"
                | "deleteifmatchetag"
                | "updatetwin"
                | "updatetwinifmatchetag",
                _,
            ) => {}
            _ => {
                fail(
                    "ArgumentInvalid",
                    format!("Invalid importMode '{mode_raw}'"),
                );
                continue;
            }
        }
        if is_delete {
            devices.remove(id);
            continue;
        }
        let tags = match (it.get("tags"), &existing) {
            (Some(t), _) if t.is_object() => t.clone(),
            (_, Some(d)) => d.tags.clone(),
            _ => json!({}),
        };
        if is_twin {
            if let Some(d) = devices.get_mut(id) {
                d.tags = tags;
            }
            continue;
        }
        let p = match parse_device(it) {
            Ok(p) => p,
            Err(e) => {
                fail("ArgumentInvalid", e);
                continue;
            }
        };
        let mut d = hub.new_device(
            id,
            &p.status,
            &p.auth_type,
            p.primary,
            p.secondary,
            tags,
            p.iot_edge,
        );
        if let Some(old) = existing {
            d.generation_id = old.generation_id;
        }
        devices.insert(id.to_owned(), d);
    }
    let ok = errors.is_empty();
    json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        },
        &[],
        json!({"isSuccessful": ok, "errors": errors, "warnings": []}),
    )
}

fn query(hub: &Hub, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let q: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(text) = q.get("query").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "Query body needs 'query'",
        );
    };
    if !text
        .trim()
        .to_ascii_lowercase()
        .starts_with("select * from devices")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "The mock only answers SELECT * FROM devices",
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
    let devices = lock(&hub.devices);
    let mut page: Vec<Value> = Vec::new();
    let mut last = None;
    let mut more = false;
    let iter = devices
        .iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_str() > a.as_str()));
    for (k, d) in iter {
        if page.len() == max {
            more = true;
            break;
        }
        page.push(d.to_twin());
        last = Some(k.clone());
    }
    let mut hdrs = vec![("x-ms-item-type", "Twin".to_owned())];
    if more && let Some(l) = last {
        hdrs.push(("x-ms-continuation", STANDARD.encode(l)));
    }
    json_response(StatusCode::OK, &hdrs, Value::Array(page))
}

fn statistics(hub: &Hub) -> Response<Body> {
    let devices = lock(&hub.devices);
    let enabled = devices.values().filter(|d| d.status == "enabled").count();
    json_response(
        StatusCode::OK,
        &[],
        json!({"totalDeviceCount": devices.len(), "enabledDeviceCount": enabled, "disabledDeviceCount": devices.len() - enabled}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_documented_rules() {
        for ok in [
            "optiga-0001",
            "1F0000000000000007",
            "Case-Sensitive",
            "line-7;station:3",
            "a#b+c%d_e*f?g!h(i)j,k=l@m$n'o.p",
            &"x".repeat(128),
        ] {
            assert!(valid_device_id(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a&b",
            "a\"b",
            "é",
            "a<b",
            &"x".repeat(129),
        ] {
            assert!(!valid_device_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn bulk_error_codes_are_numbers() {
        assert_eq!(error_number("DeviceAlreadyExists"), 409001);
        assert_eq!(error_number("DeviceNotFound"), 404001);
        assert_eq!(error_number("PreconditionFailed"), 412001);
        assert_eq!(error_number("ThrottlingException"), 429001);
        assert_eq!(error_number("InternalServerError"), 500001);
    }
}
