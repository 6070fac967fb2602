//! Mapping Google API answers to idbridge errors, in one place.
//!
//! Google's REST APIs answer errors as `{"error":{"code":403,"message":…,"status":"PERMISSION_DENIED"}}`
//! (AIP-193); Firestore's `batchWrite` reports each write as a `google.rpc.Status`
//! `{"code":6,"message":…}` with the numeric gRPC code. Both go through the same table,
//! [`kind_of`]: 429/`RESOURCE_EXHAUSTED` and 503/`UNAVAILABLE` are temporary, `PERMISSION_DENIED`
//! and `UNAUTHENTICATED` are permanent (the engine stops the job), `INVALID_ARGUMENT` is
//! permanent for the device.

use std::time::Duration;

use idbridge_core::{Error, ErrorKind};
use serde::Deserialize;

/// Maps a non-2xx HTTP answer of a Google API. `retry_after` is the raw `Retry-After` header.
pub fn parse_error(
    operation: &'static str,
    http_status: u16,
    retry_after: Option<&str>,
    body: &str,
) -> Error {
    let parsed = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let status = parsed
        .as_ref()
        .and_then(|e| e.status.clone())
        .unwrap_or_else(|| status_of_http(http_status).to_owned());
    let message = parsed
        .and_then(|e| e.message)
        .unwrap_or_else(|| body.trim().to_owned());
    let message = if message.is_empty() {
        "(empty body)".to_owned()
    } else {
        message.chars().take(300).collect()
    };
    let mut e = Error::new(
        kind_of(&status),
        format!("HTTP {http_status} {status}: {message}"),
    )
    .with_operation(operation)
    .with_context("status", http_status);
    if let Some(after) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        e = e.with_retry_after(Duration::from_secs(after));
    }
    e
}

/// Maps one `google.rpc.Status` of a `batchWrite` answer (`code` is the numeric gRPC code).
/// Returns None for code 0 (OK).
pub fn parse_write_status(operation: &'static str, code: i32, message: &str) -> Option<Error> {
    if code == 0 {
        return None;
    }
    let status = status_of_code(code);
    let message: String = message.chars().take(300).collect();
    Some(
        Error::new(kind_of(status), format!("{status}: {message}"))
            .with_operation(operation)
            .with_context("code", code),
    )
}

/// Maps a transport failure (no HTTP answer). A connect failure means nothing was sent; any
/// later failure (timeout, reset while waiting) leaves the outcome unknown.
pub fn parse_transport_error(operation: &'static str, e: reqwest::Error) -> Error {
    let kind = if e.is_connect() {
        ErrorKind::Network
    } else if e.is_builder() {
        ErrorKind::ConfigInvalid
    } else {
        ErrorKind::OutcomeUnknown
    };
    Error::new(kind, "no answer from Google")
        .with_operation(operation)
        .with_source(e)
}

/// Maps a failure of google-cloud-auth to produce request headers (a token it could not sign
/// or fetch). Transient failures (metadata server busy) are temporary.
pub fn parse_auth_error(
    operation: &'static str,
    e: google_cloud_auth::errors::CredentialsError,
) -> Error {
    let temporary = e.is_transient();
    Error::new(
        ErrorKind::Unauthenticated,
        "cannot obtain Google credentials for the request",
    )
    .with_operation(operation)
    .set_temporary(temporary)
    .with_source(e)
}

/// The idbridge error kind of a canonical Google status name.
pub fn kind_of(status: &str) -> ErrorKind {
    match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorKind::InvalidInput,
        "ALREADY_EXISTS" => ErrorKind::AlreadyExists,
        "NOT_FOUND" => ErrorKind::NotFound,
        "PERMISSION_DENIED" => ErrorKind::PermissionDenied,
        "UNAUTHENTICATED" => ErrorKind::Unauthenticated,
        "RESOURCE_EXHAUSTED" => ErrorKind::RateLimited,
        "UNAVAILABLE" | "INTERNAL" | "ABORTED" => ErrorKind::ServerError,
        "DEADLINE_EXCEEDED" | "CANCELLED" => ErrorKind::OutcomeUnknown,
        "UNIMPLEMENTED" => ErrorKind::Unsupported,
        _ => ErrorKind::Unexpected,
    }
}

/// The canonical status name of a numeric gRPC code (google.rpc.Code).
fn status_of_code(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The status an HTTP code stands for when the body names none (a proxy's bare answer).
fn status_of_http(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies recorded from the Firestore and Pub/Sub emulators (Cloud SDK 528) and from
    // Google's production front ends, see shared/reference/gcp.md.

    #[test]
    fn batch_write_without_admin_auth_is_permission_denied_and_permanent() {
        let e = parse_error(
            "batchWrite",
            403,
            None,
            r#"{"error":{"code":403,"message":"Batch writes require admin authentication.","status":"PERMISSION_DENIED"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("admin authentication"), "{e}");
    }

    #[test]
    fn invalid_token_is_unauthenticated_and_permanent() {
        let e = parse_error(
            "publish",
            401,
            None,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(!e.is_temporary());
    }

    #[test]
    fn create_again_is_already_exists() {
        let e = parse_error(
            "create",
            409,
            None,
            r#"{"error":{"code":409,"message":"entity already exists: EntityRef{partitionRef=dev~fake-project, path=/device_allowlist/7de6}","status":"ALREADY_EXISTS"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    }

    #[test]
    fn get_missing_is_not_found() {
        let e = parse_error(
            "get",
            404,
            None,
            r#"{"error":{"code":404,"message":"Document (projects/fake-project/databases/(default)/documents/device_allowlist/nosuch) not found.","status":"NOT_FOUND"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = parse_error(
            "publish",
            404,
            None,
            r#"{"error":{"code":404,"message":"Topic not found","status":"NOT_FOUND"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("Topic not found"));
    }

    #[test]
    fn same_document_twice_is_invalid_argument_and_permanent() {
        let e = parse_error(
            "batchWrite",
            400,
            None,
            r#"{"error":{"code":400,"message":"the same document cannot be written more than once in a single request","status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.is_temporary());
    }

    #[test]
    fn empty_message_is_invalid_argument() {
        let e = parse_error(
            "publish",
            400,
            None,
            r#"{"error":{"code":400,"message":"Some messages are empty","status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn quota_exceeded_is_rate_limited_with_retry_after() {
        let e = parse_error(
            "batchWrite",
            429,
            Some("2"),
            r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute' of service 'firestore.googleapis.com'.","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn unavailable_is_temporary() {
        let e = parse_error(
            "publish",
            503,
            None,
            r#"{"error":{"code":503,"message":"The service is currently unavailable.","status":"UNAVAILABLE"}}"#,
        );
        assert_eq!(e.kind(), ErrorKind::ServerError);
        assert!(e.is_temporary());
    }

    #[test]
    fn bare_proxy_answers_fall_back_to_the_http_status() {
        let e = parse_error("publish", 502, None, "<html>Bad Gateway</html>");
        assert_eq!(e.kind(), ErrorKind::ServerError);
        assert!(e.is_temporary());
        assert_eq!(
            parse_error("x", 429, None, "").kind(),
            ErrorKind::RateLimited
        );
        assert_eq!(
            parse_error("x", 504, None, "").kind(),
            ErrorKind::OutcomeUnknown
        );
        assert_eq!(
            parse_error("x", 418, None, "").kind(),
            ErrorKind::Unexpected
        );
    }

    #[test]
    fn long_messages_are_truncated() {
        let body = format!(
            r#"{{"error":{{"code":500,"message":"{}","status":"INTERNAL"}}}}"#,
            "a".repeat(5000)
        );
        assert!(parse_error("x", 500, None, &body).to_string().len() < 400);
    }

    #[test]
    fn write_statuses() {
        assert!(parse_write_status("batchWrite", 0, "").is_none());
        let e = parse_write_status(
            "batchWrite",
            6,
            "entity already exists: EntityRef{partitionRef=dev~fake-project, path=/device_allowlist/ab}",
        )
        .unwrap();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e = parse_write_status("batchWrite", 5, "no entity to update").unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = parse_write_status("batchWrite", 3, "bad field").unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.is_temporary());
        let e = parse_write_status("batchWrite", 8, "too many writes").unwrap();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        let e = parse_write_status("batchWrite", 14, "unavailable").unwrap();
        assert!(e.is_temporary());
        let e = parse_write_status("batchWrite", 10, "contention").unwrap();
        assert!(
            e.is_temporary(),
            "ABORTED (contention) is worth another try"
        );
        let e = parse_write_status("batchWrite", 7, "denied").unwrap();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_temporary());
        let e = parse_write_status("batchWrite", 16, "who").unwrap();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    }
}
