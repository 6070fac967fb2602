//! One `parse_error` for both services: HTTP status, the service's error code (IoT Hub's
//! `iothub-errorcode` header, `ErrorCode:<name>;…` or JSON inside `Message`; DPS's
//! `errorCode` / `x-ms-error-code`) and `Retry-After` → idbridge's [`Error`]. Per-device bulk
//! errors go through [`parse_item_error`].

use std::time::Duration;

use idbridge_core::{Error, ErrorKind};
use serde_json::Value;

/// Which service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// IoT Hub (`azure-iot-hub`).
    IotHub,
    /// Device Provisioning Service (`azure-dps`).
    Dps,
}

impl Service {
    /// The connector name used in error context.
    pub fn connector(self) -> &'static str {
        match self {
            Service::IotHub => "azure-iot-hub",
            Service::Dps => "azure-dps",
        }
    }
}

/// What an error body said.
#[derive(Debug, Default, PartialEq, Eq)]
struct Details {
    code: Option<String>,
    message: Option<String>,
    tracking_id: Option<String>,
}

/// Maps a non-success answer to an [`Error`]: `status`, the response headers as
/// `(lower-case name, value)` pairs, and the body.
pub fn parse_error(
    service: Service,
    operation: &'static str,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Error {
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let mut d = match service {
        Service::IotHub => hub_details(body),
        Service::Dps => dps_details(body),
    };
    let header_code = match service {
        Service::IotHub => header("iothub-errorcode"),
        Service::Dps => header("x-ms-error-code"),
    };
    if d.code.is_none() {
        d.code = header_code.map(str::to_owned);
    }
    let code = d.code.clone().unwrap_or_default();
    let throttle_code = matches!(
        code.as_str(),
        "ThrottlingException"
            | "ThrottlingBacklogTimeout"
            | "ThrottleBacklogLimitExceeded"
            | "429001"
    );
    let kind = if throttle_code {
        ErrorKind::RateLimited
    } else {
        kind_of_status(status)
    };
    let mut message = d.message.clone().unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            text.chars().take(300).collect()
        }
    });
    if !code.is_empty() && !message.contains(&code) {
        message = format!("{code}: {message}");
    }
    let mut e = Error::new(kind, message)
        .with_operation(operation)
        .with_context("connector", service.connector())
        .with_context("status", status);
    if let Some(t) = d.tracking_id {
        e = e.with_context("request_id", t);
    }
    if let Some(after) = header("retry-after").and_then(parse_retry_after) {
        e = e.with_retry_after(after);
    }
    e
}

/// Maps one per-device error of a bulk answer (IoT Hub: a code name such as
/// `DeviceAlreadyExists` or a number as a string; DPS: a six-digit number) to an [`Error`].
pub fn parse_item_error(
    service: Service,
    operation: &'static str,
    code: &Value,
    status_text: &str,
) -> Error {
    let code_str = match code {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let kind = match code_str.as_str() {
        "DeviceAlreadyExists" | "ModuleAlreadyExistsOnDevice" => ErrorKind::AlreadyExists,
        "DeviceNotFound" | "ModuleNotFound" => ErrorKind::NotFound,
        "PreconditionFailed" => ErrorKind::Conflict,
        "ThrottlingException" | "ThrottlingBacklogTimeout" | "ThrottleBacklogLimitExceeded" => {
            ErrorKind::RateLimited
        }
        "ArgumentInvalid" | "ArgumentNull" | "InvalidOperation" | "DeviceDefinedMultipleTimes" => {
            ErrorKind::InvalidInput
        }
        "IotHubQuotaExceeded" | "DeviceMaximumActiveFileUploadLimitExceeded" => {
            ErrorKind::PermissionDenied
        }
        "InternalServerError" | "ServerError" | "ServiceUnavailable" | "IotHubSuspended" => {
            ErrorKind::ServerError
        }
        s if s.len() >= 3 && s.bytes().all(|b| b.is_ascii_digit()) => {
            kind_of_status(s[..3].parse().unwrap_or(0))
        }
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, format!("{code_str}: {status_text}"))
        .with_operation(operation)
        .with_context("connector", service.connector())
}

fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        400 | 405 | 413 | 415 => ErrorKind::InvalidInput,
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::AlreadyExists,
        412 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        408 => ErrorKind::OutcomeUnknown,
        500..=599 => ErrorKind::ServerError,
        _ => ErrorKind::Unexpected,
    }
}

/// `Retry-After` in seconds (integer or decimal); HTTP dates are not used by these services.
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// IoT Hub: `{"Message":"ErrorCode:<name>;<text>","ExceptionMessage":"Tracking ID:<id>-G:…"}`
/// or `{"Message":"{\"errorCode\":404103,\"trackingId\":…,\"message\":…}", …}`.
fn hub_details(body: &[u8]) -> Details {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Details::default();
    };
    let mut d = Details::default();
    let msg = v
        .get("Message")
        .or_else(|| v.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if msg.trim_start().starts_with('{')
        && let Ok(inner) = serde_json::from_str::<Value>(msg)
    {
        return dps_details(inner.to_string().as_bytes());
    }
    if let Some(rest) = msg.strip_prefix("ErrorCode:") {
        let (code, text) = rest.split_once(';').unwrap_or((rest, ""));
        d.code = Some(code.trim().to_owned());
        d.message = Some(text.trim().to_owned());
    } else if !msg.is_empty() {
        d.message = Some(msg.to_owned());
    }
    if let Some(ex) = v.get("ExceptionMessage").and_then(Value::as_str)
        && let Some(rest) = ex.strip_prefix("Tracking ID:")
    {
        let id = rest.split("-G:").next().unwrap_or(rest).trim();
        if !id.is_empty() {
            d.tracking_id = Some(id.to_owned());
        }
    }
    d
}

/// DPS: `{"errorCode":404201,"trackingId":…,"message":…,"timestampUtc":…}`.
fn dps_details(body: &[u8]) -> Details {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Details::default();
    };
    let code = match v.get("errorCode") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Details {
        code,
        message: v.get("message").and_then(Value::as_str).map(str::to_owned),
        tracking_id: v
            .get("trackingId")
            .and_then(Value::as_str)
            .map(|t| t.split("-G:").next().unwrap_or(t).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // Recorded IoT Hub answers (reference §2.2, §2.5; azure-iot-explorer#214,
    // Iot-Telemetry-Simulator#39, azure-iot-sdk-csharp ExceptionHandlingHelperTests).

    #[test]
    fn hub_409_device_already_exists() {
        let body = br#"{"Message":"ErrorCode:DeviceAlreadyExists;A device with ID 'x' is already registered.","ExceptionMessage":"Tracking ID:0f1e2d3c4b5a-G:0-TimeStamp:10/12/2021 07:18:02"}"#;
        let e = parse_error(
            Service::IotHub,
            "register",
            409,
            &h(&[("iothub-errorcode", "DeviceAlreadyExists")]),
            body,
        );
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(!e.is_temporary());
        assert_eq!(e.request_id(), Some("0f1e2d3c4b5a"));
        assert!(e.to_string().contains("DeviceAlreadyExists"), "{e}");
    }

    #[test]
    fn hub_412_precondition_failed() {
        let body = br#"{"Message":"ErrorCode:PreconditionFailed;Precondition failed: Device version did not match, existingVersion:957482805 newVersion:957482804","ExceptionMessage":"Tracking ID:abc-G:0-TimeStamp:01/01/2024 00:00:00"}"#;
        let e = parse_error(Service::IotHub, "register", 412, &[], body);
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.message().contains("PreconditionFailed"));
    }

    #[test]
    fn hub_404_json_inside_message() {
        let body = br#"{"Message":"{\"errorCode\":404103,\"trackingId\":\"9f8e-G:0-TimeStamp:01/01/2024\",\"message\":\"Device not found\",\"info\":{},\"timestampUtc\":\"2024-01-01T00:00:00Z\"}","ExceptionMessage":""}"#;
        let e = parse_error(
            Service::IotHub,
            "lookup",
            404,
            &h(&[("iothub-errorcode", "DeviceNotFound")]),
            body,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.request_id(), Some("9f8e"));
        assert!(e.message().contains("404103"), "{e}");
    }

    #[test]
    fn hub_429_throttled_with_retry_after() {
        let body = br#"{"Message":"ErrorCode:ThrottlingBacklogTimeout;The request has been throttled. Wait 10 seconds and try again. Operation type: CRUD","ExceptionMessage":"Tracking ID:55f0-G:0-TimeStamp:10/12/2021 07:18:02"}"#;
        let e = parse_error(
            Service::IotHub,
            "register",
            429,
            &h(&[("Retry-After", "10")]),
            body,
        );
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn hub_throttle_code_on_503_is_rate_limited() {
        let body =
            br#"{"Message":"ErrorCode:ThrottlingBacklogTimeout;throttled","ExceptionMessage":""}"#;
        let e = parse_error(Service::IotHub, "register", 503, &[], body);
        assert_eq!(e.kind(), ErrorKind::RateLimited);
    }

    #[test]
    fn hub_401_unauthorized_is_permanent() {
        let body = br#"{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":"Tracking ID:1-G:0-TimeStamp:x"}"#;
        let e = parse_error(Service::IotHub, "health_check", 401, &[], body);
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(!e.is_temporary());
    }

    #[test]
    fn hub_400_invalid_protocol_version() {
        let body = br#"{"Message":"ErrorCode:InvalidProtocolVersion;Invalid API version '1999-01-01'","ExceptionMessage":""}"#;
        let e = parse_error(Service::IotHub, "register", 400, &[], body);
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("InvalidProtocolVersion"));
    }

    #[test]
    fn hub_403_quota_exceeded() {
        let body = br#"{"Message":"ErrorCode:IotHubQuotaExceeded;Total number of devices on IotHub exceeded the allocated quota","ExceptionMessage":""}"#;
        let e = parse_error(Service::IotHub, "register", 403, &[], body);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }

    #[test]
    fn hub_500_and_empty_body_are_temporary() {
        let e = parse_error(Service::IotHub, "register", 500, &[], b"");
        assert_eq!(e.kind(), ErrorKind::ServerError);
        assert!(e.is_temporary());
        assert!(e.message().contains("500"));
    }

    // Recorded DPS answers (reference §1.4; MicrosoftDocs/azure-docs#57082).

    #[test]
    fn dps_404_enrollment_not_found() {
        let body = br#"{"errorCode":404201,"trackingId":"7e5c7f63-24ed-43da-b6c9-29227e6d4c52","message":"Enrollment not found","timestampUtc":"2024-01-01T00:00:00.000Z"}"#;
        let e = parse_error(
            Service::Dps,
            "lookup",
            404,
            &h(&[("x-ms-error-code", "404201")]),
            body,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.request_id(), Some("7e5c7f63-24ed-43da-b6c9-29227e6d4c52"));
    }

    #[test]
    fn dps_401_409_412_429() {
        let b = |code: u32| {
            format!(
                r#"{{"errorCode":{code},"trackingId":"t","message":"m","info":{{}},"timestampUtc":"2024-01-01T00:00:00Z"}}"#
            )
        };
        assert_eq!(
            parse_error(Service::Dps, "x", 401, &[], b(401002).as_bytes()).kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            parse_error(Service::Dps, "x", 409, &[], b(409201).as_bytes()).kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            parse_error(Service::Dps, "x", 412, &[], b(412201).as_bytes()).kind(),
            ErrorKind::Conflict
        );
        let t = parse_error(
            Service::Dps,
            "x",
            429,
            &h(&[("retry-after", "2")]),
            b(429001).as_bytes(),
        );
        assert_eq!(t.kind(), ErrorKind::RateLimited);
        assert_eq!(t.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn item_errors() {
        let k = |s: Service, c: Value| parse_item_error(s, "register", &c, "x").kind();
        assert_eq!(
            k(Service::IotHub, "DeviceAlreadyExists".into()),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            k(Service::IotHub, "DeviceNotFound".into()),
            ErrorKind::NotFound
        );
        assert_eq!(
            k(Service::IotHub, "409001".into()),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            k(Service::IotHub, "ThrottlingException".into()),
            ErrorKind::RateLimited
        );
        assert_eq!(
            k(Service::IotHub, "InternalServerError".into()),
            ErrorKind::ServerError
        );
        assert_eq!(
            k(Service::IotHub, "ArgumentInvalid".into()),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            k(Service::Dps, serde_json::json!(409201)),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            k(Service::Dps, serde_json::json!(500001)),
            ErrorKind::ServerError
        );
        assert!(
            parse_item_error(Service::Dps, "r", &serde_json::json!(429001), "t").is_temporary()
        );
    }
}
