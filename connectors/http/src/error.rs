//! Mapping HTTP answers of interop receivers and webhook endpoints to idbridge errors: one
//! [`parse_error`] for whole responses, [`parse_item_error`] for interop per-certificate
//! `ERROR` results, [`parse_transport_error`] for failures without an answer.

use std::time::Duration;

use idbridge_core::{Error, ErrorKind};

/// The per-certificate messages of Infineon's receivers (texts verbatim, typo included).
pub const MSG_CANNOT_DECODE: &str = "Cannot decode certitifcate";
/// Infineon check 2.
pub const MSG_BAD_SERIAL: &str =
    "Certificate serial cannot be decoded or is incorrect (only alphanumeric/hyphen/underscore)";
/// Infineon check 3.
pub const MSG_VALIDITY: &str = "Certificate notBefore or notAfter is out of range";
/// Infineon check 4.
pub const MSG_EXPIRATION: &str = "Certificate expiration cannot be decoded";
/// Infineon check 5 (Azure).
pub const MSG_THUMBPRINT: &str = "Cannot get thumbprint";
/// Infineon check 6: the cloud registration failed.
pub const MSG_REGISTER_FAILED: &str = "Failed creating and registering thing";

/// Maps a non-2xx HTTP answer. `retry_after` is the raw `Retry-After` header, `body` the answer
/// (its `{"error": ...}` message is kept, truncated).
pub fn parse_error(
    operation: &'static str,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
) -> Error {
    let message = body_message(body);
    let kind = match status {
        400 | 413 | 414 | 415 | 422 => ErrorKind::InvalidInput,
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 | 405 => ErrorKind::ConfigInvalid,
        408 => ErrorKind::OutcomeUnknown,
        409 => ErrorKind::Conflict,
        410 => ErrorKind::TargetDisabled,
        429 => ErrorKind::RateLimited,
        300..=399 => ErrorKind::ConfigInvalid,
        500..=599 => ErrorKind::ServerError,
        _ => ErrorKind::Unexpected,
    };
    let mut e = Error::new(kind, format!("HTTP {status}: {message}"))
        .with_operation(operation)
        .with_context("status", status);
    if status == 404 || status == 405 {
        e = Error::new(
            kind,
            format!("HTTP {status}: {message} (is the URL right?)"),
        )
        .with_operation(operation)
        .with_context("status", status);
    }
    if (300..=399).contains(&status) {
        e = Error::new(
            kind,
            format!("HTTP {status}: redirects are not followed; configure the final URL"),
        )
        .with_operation(operation)
        .with_context("status", status);
    }
    if let Some(after) = retry_after.and_then(parse_retry_after) {
        e = e.with_retry_after(after);
    }
    e
}

/// Maps one interop `{"status":"ERROR","message":...}` result. `code` is idbridge's optional
/// machine-readable extension field; Infineon's receivers send only the message.
pub fn parse_item_error(message: &str, code: Option<&str>) -> Error {
    let kind = match code {
        Some("invalid_certificate") | Some("untrusted") | Some("not_provisionable") => {
            ErrorKind::InvalidInput
        }
        Some("rate_limited") => ErrorKind::RateLimited,
        Some("conflict") => ErrorKind::Conflict,
        Some("server_error") | Some("target_error") => ErrorKind::ServerError,
        Some("outcome_unknown") => ErrorKind::OutcomeUnknown,
        Some("permission_denied") => ErrorKind::PermissionDenied,
        _ => match message {
            MSG_CANNOT_DECODE | MSG_BAD_SERIAL | MSG_VALIDITY | MSG_EXPIRATION | MSG_THUMBPRINT => {
                ErrorKind::InvalidInput
            }
            // The receiver's cloud call failed: worth another try.
            MSG_REGISTER_FAILED => ErrorKind::ServerError,
            _ => ErrorKind::Unexpected,
        },
    };
    Error::new(kind, format!("receiver: {message}")).with_operation("interop provision")
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
    Error::new(kind, "no answer from the receiver")
        .with_operation(operation)
        .with_source(e)
}

/// Seconds form of `Retry-After` (the HTTP-date form is ignored: the engine backs off anyway).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `error` field of a JSON error body, else the body itself; at most 300 characters.
fn body_message(body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    let msg = if msg.is_empty() {
        "(empty body)".to_owned()
    } else {
        msg
    };
    msg.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_401_is_permanent_and_keeps_message() {
        let e = parse_error(
            "interop provision",
            401,
            None,
            r#"{"error":"Cannot verify and decode token"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(!e.is_temporary());
        assert!(
            e.to_string().contains("Cannot verify and decode token"),
            "{e}"
        );
    }

    #[test]
    fn forbidden_403() {
        let e = parse_error("x", 403, None, "");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_temporary());
    }

    #[test]
    fn validation_400_is_permanent_invalid_input() {
        let e = parse_error(
            "x",
            400,
            None,
            r#"{"error":"\"certs[0].ref\" is required"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("certs[0].ref"));
    }

    #[test]
    fn too_large_413_is_invalid_input() {
        assert_eq!(
            parse_error("x", 413, None, "").kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn not_found_404_is_a_configuration_problem() {
        let e = parse_error("x", 404, None, "Cannot POST /interop");
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(e.to_string().contains("URL"));
    }

    #[test]
    fn timeout_408_is_outcome_unknown_and_temporary() {
        let e = parse_error("x", 408, None, "");
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown);
        assert!(e.is_temporary());
    }

    #[test]
    fn conflict_409() {
        assert_eq!(parse_error("x", 409, None, "").kind(), ErrorKind::Conflict);
    }

    #[test]
    fn gone_410_disables_the_target() {
        let e = parse_error("webhook deliver", 410, None, "");
        assert_eq!(e.kind(), ErrorKind::TargetDisabled);
        assert!(!e.is_temporary());
    }

    #[test]
    fn throttled_429_with_retry_after() {
        let e = parse_error("x", 429, Some("7"), "slow down");
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let e = parse_error("x", 429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), "");
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn redirect_3xx_is_not_followed() {
        let e = parse_error("x", 302, None, "");
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.is_temporary());
    }

    #[test]
    fn server_errors_5xx_are_temporary() {
        for s in [500, 502, 503, 504] {
            let e = parse_error("x", s, None, r#"{"error":"boom"}"#);
            assert_eq!(e.kind(), ErrorKind::ServerError, "{s}");
            assert!(e.is_temporary());
        }
    }

    #[test]
    fn odd_status_is_unexpected() {
        assert_eq!(
            parse_error("x", 299, None, "").kind(),
            ErrorKind::Unexpected
        );
    }

    #[test]
    fn long_bodies_are_truncated() {
        let e = parse_error("x", 500, None, &"a".repeat(10_000));
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn infineon_item_messages() {
        for m in [
            MSG_CANNOT_DECODE,
            MSG_BAD_SERIAL,
            MSG_VALIDITY,
            MSG_EXPIRATION,
            MSG_THUMBPRINT,
        ] {
            let e = parse_item_error(m, None);
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{m}");
            assert!(!e.is_temporary());
        }
        let e = parse_item_error(MSG_REGISTER_FAILED, None);
        assert_eq!(e.kind(), ErrorKind::ServerError);
        assert!(e.is_temporary());
        assert_eq!(
            parse_item_error("something new", None).kind(),
            ErrorKind::Unexpected
        );
    }

    #[test]
    fn idbridge_item_codes() {
        assert_eq!(
            parse_item_error("x", Some("rate_limited")).kind(),
            ErrorKind::RateLimited
        );
        assert_eq!(
            parse_item_error("x", Some("untrusted")).kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            parse_item_error("x", Some("conflict")).kind(),
            ErrorKind::Conflict
        );
        assert!(parse_item_error("x", Some("target_error")).is_temporary());
        assert_eq!(
            parse_item_error("x", Some("outcome_unknown")).kind(),
            ErrorKind::OutcomeUnknown
        );
        assert_eq!(
            parse_item_error("x", Some("permission_denied")).kind(),
            ErrorKind::PermissionDenied
        );
    }
}
