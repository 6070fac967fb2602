//! The registry's answers mapped to idbridge's error kinds, in one place.

use std::time::Duration;

use idbridge_core::{Error, ErrorKind};

/// Maps an error answer (status, `Retry-After`, `x-request-id`, JSON body) to an [`Error`].
pub fn parse_error(
    operation: &'static str,
    status: u16,
    retry_after: Option<&str>,
    request_id: Option<&str>,
    body: &str,
) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(200).collect());
    let kind = match (status, code) {
        (429, _) | (_, "throttled") => ErrorKind::RateLimited,
        (401, _) => ErrorKind::Unauthenticated,
        (403, _) => ErrorKind::PermissionDenied,
        (404, _) => ErrorKind::NotFound,
        (409, "already_exists") => ErrorKind::AlreadyExists,
        (409, _) => ErrorKind::Conflict,
        (400 | 413 | 422, _) => ErrorKind::InvalidInput,
        (500..=599, _) => ErrorKind::ServerError,
        _ => ErrorKind::Unexpected,
    };
    let mut e = Error::new(kind, format!("HTTP {status} {code}: {message}"))
        .with_operation(operation)
        .with_context("connector", "mock");
    if let Some(id) = request_id {
        e = e.with_context("request_id", id);
    }
    if let Some(secs) = retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
        e = e.with_retry_after(Duration::from_secs(secs));
    }
    e
}

/// Maps a transport failure. A call that may have reached the registry (anything but a failure
/// to connect) has an unknown outcome.
pub fn transport_error(operation: &'static str, e: reqwest::Error) -> Error {
    let kind = if e.is_connect() {
        ErrorKind::Network
    } else {
        ErrorKind::OutcomeUnknown
    };
    Error::new(kind, "no answer from the registry")
        .with_operation(operation)
        .with_context("connector", "mock")
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_recorded_answers() {
        let e = parse_error(
            "register",
            429,
            Some("1"),
            Some("req-00000007"),
            r#"{"error":"throttled","message":"rate exceeded"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(e.request_id(), Some("req-00000007"));
        let e = parse_error(
            "register",
            401,
            None,
            None,
            r#"{"error":"unauthenticated","message":"missing or wrong bearer token"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(!e.is_temporary());
        let e = parse_error("register", 409, None, None, r#"{"error":"conflict"}"#);
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let e = parse_error("register", 409, None, None, r#"{"error":"already_exists"}"#);
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e = parse_error("lookup", 503, None, None, "upstream down");
        assert_eq!(e.kind(), ErrorKind::ServerError);
        assert!(e.is_temporary());
        let e = parse_error(
            "register",
            400,
            None,
            None,
            r#"{"error":"invalid_request"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.is_temporary());
    }
}
