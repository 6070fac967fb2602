//! AWS IoT's answers mapped to idbridge's [`Error`]: one [`parse_error`], keyed by the error code
//! (`x-amzn-ErrorType`), not the status: AWS IoT throttles with 400 in the current model and
//! 429 in older documentation.

use aws_sdk_iot::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iot::operation::RequestId;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use idbridge_core::{Error, ErrorKind};

/// What came back from AWS for a failed call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: Option<u16>,
    /// Error code (`ThrottlingException` ...).
    pub code: Option<String>,
    /// Error message.
    pub message: Option<String>,
    /// `x-amzn-RequestId`.
    pub request_id: Option<String>,
}

/// Maps a failed AWS IoT answer to an idbridge error for operation `op`.
pub fn parse_error(op: &'static str, f: &Failure) -> Error {
    let msg = f.message.clone().unwrap_or_default();
    let (kind, temporary) = match f.code.as_deref() {
        Some("ThrottlingException" | "TooManyRequestsException") => (ErrorKind::RateLimited, true),
        // Too many attachments: retrying never helps (the SDK would, pointlessly).
        Some("LimitExceededException") => (ErrorKind::InvalidInput, false),
        Some("ResourceAlreadyExistsException") => (ErrorKind::AlreadyExists, false),
        Some("ResourceNotFoundException") => (ErrorKind::NotFound, false),
        // Detach propagates asynchronously: "still attached" clears by itself.
        Some("InvalidRequestException") if msg.contains("still attached") => {
            (ErrorKind::Conflict, true)
        }
        Some("DeleteConflictException") => (ErrorKind::Conflict, true),
        Some(
            "CertificateStateException"
            | "CertificateConflictException"
            | "VersionConflictException"
            | "ConflictingResourceUpdateException",
        ) => (ErrorKind::Conflict, false),
        Some(
            "InvalidRequestException"
            | "CertificateValidationException"
            | "SerializationException"
            | "ValidationException",
        ) => (ErrorKind::InvalidInput, false),
        Some("MalformedPolicyException") => (ErrorKind::ConfigInvalid, false),
        Some(
            "UnauthorizedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredTokenException",
        ) => (ErrorKind::Unauthenticated, false),
        Some("AccessDeniedException" | "ForbiddenException") => {
            (ErrorKind::PermissionDenied, false)
        }
        Some(
            "ServiceUnavailableException"
            | "InternalFailureException"
            | "InternalServerException"
            | "InternalException",
        ) => (ErrorKind::ServerError, true),
        // No or unknown code (a proxy's HTML page, an infrastructure error): go by status.
        _ => match f.status {
            Some(429) => (ErrorKind::RateLimited, true),
            Some(401 | 403) => (ErrorKind::Unauthenticated, false),
            Some(s) if s >= 500 => (ErrorKind::ServerError, true),
            _ => (ErrorKind::Unexpected, false),
        },
    };
    let mut e = Error::new(kind, msg)
        .with_operation(op)
        .set_temporary(temporary)
        .with_context("connector", "aws-iot");
    if let Some(code) = &f.code {
        e = e.with_context("code", code);
    }
    if let Some(s) = f.status {
        e = e.with_context("status", s);
    }
    if let Some(r) = &f.request_id {
        e = e.with_context("request_id", r);
    }
    e
}

/// Maps an SDK error (service answer, or a transport failure) for operation `op`.
pub fn from_sdk<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let f = Failure {
                status: Some(se.raw().status().as_u16()),
                code: se.err().code().map(str::to_owned),
                message: se.err().message().map(str::to_owned),
                request_id: se.err().meta().request_id().map(str::to_owned),
            };
            parse_error(op, &f)
        }
        SdkError::TimeoutError(_) => {
            Error::new(ErrorKind::OutcomeUnknown, "timed out waiting for AWS IoT")
                .with_operation(op)
                .with_context("connector", "aws-iot")
        }
        SdkError::DispatchFailure(df) => {
            let refused = df.as_connector_error().is_some_and(|c| connect_refused(c));
            let kind = if refused {
                ErrorKind::Network
            } else {
                // The request may have reached AWS before the connection broke.
                ErrorKind::OutcomeUnknown
            };
            let detail = df
                .as_connector_error()
                .map(|c| chain(c))
                .unwrap_or_else(|| "dispatch failure".to_owned());
            Error::new(kind, detail)
                .with_operation(op)
                .with_context("connector", "aws-iot")
        }
        SdkError::ResponseError(re) => Error::new(
            ErrorKind::OutcomeUnknown,
            format!(
                "unreadable answer from AWS IoT: {}",
                chain(&SdkError::<E, HttpResponse>::ResponseError(re))
            ),
        )
        .with_operation(op)
        .with_context("connector", "aws-iot"),
        SdkError::ConstructionFailure(cf) => Error::new(
            ErrorKind::InvalidInput,
            format!("request could not be built: {cf:?}"),
        )
        .with_operation(op)
        .with_context("connector", "aws-iot"),
        other => Error::new(ErrorKind::Unexpected, chain(&other))
            .with_operation(op)
            .with_context("connector", "aws-iot"),
    }
}

fn connect_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        cur = c.source();
    }
    false
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded AWS answer: status, `x-amzn-ErrorType`, body `message`, `x-amzn-RequestId`.
    fn recorded(status: u16, code: &str, message: &str) -> Failure {
        Failure {
            status: Some(status),
            code: Some(code.to_owned()),
            message: Some(message.to_owned()),
            request_id: Some("5f0c5a8e-0f6c-4b8e-9d8b-2f2a8f3c1d10".to_owned()),
        }
    }

    fn check(f: Failure, kind: ErrorKind, temporary: bool) {
        let e = parse_error("Op", &f);
        assert_eq!(e.kind(), kind, "{e}");
        assert_eq!(e.is_temporary(), temporary, "{e}");
        if f.request_id.is_some() {
            assert_eq!(e.request_id(), f.request_id.as_deref());
        }
    }

    #[test]
    fn throttling_400_current_model() {
        check(
            recorded(400, "ThrottlingException", "Rate exceeded"),
            ErrorKind::RateLimited,
            true,
        );
    }

    #[test]
    fn throttling_429_old_docs() {
        check(
            recorded(429, "ThrottlingException", "Rate exceeded"),
            ErrorKind::RateLimited,
            true,
        );
    }

    #[test]
    fn limit_exceeded_410_is_permanent() {
        check(
            recorded(
                410,
                "LimitExceededException",
                "The number of attached policies cannot exceed 10.",
            ),
            ErrorKind::InvalidInput,
            false,
        );
    }

    #[test]
    fn already_exists_409() {
        check(
            recorded(
                409,
                "ResourceAlreadyExistsException",
                "The certificate is already provisioned or registered",
            ),
            ErrorKind::AlreadyExists,
            false,
        );
    }

    #[test]
    fn not_found_404() {
        check(
            recorded(
                404,
                "ResourceNotFoundException",
                "The certificate 7de6 does not exist.",
            ),
            ErrorKind::NotFound,
            false,
        );
    }

    #[test]
    fn still_attached_is_temporary() {
        check(
            recorded(
                400,
                "InvalidRequestException",
                "Cannot delete. Thing Infineon_1F is still attached to one or more principals",
            ),
            ErrorKind::Conflict,
            true,
        );
        check(
            recorded(
                409,
                "DeleteConflictException",
                "Things must be detached before deletion (arn: arn:aws:iot:eu-central-1:123456789012:cert/7de6)",
            ),
            ErrorKind::Conflict,
            true,
        );
    }

    #[test]
    fn invalid_request_400() {
        check(
            recorded(
                400,
                "InvalidRequestException",
                "1 validation error detected: Value 'a b' at 'thingName' failed to satisfy constraint",
            ),
            ErrorKind::InvalidInput,
            false,
        );
        check(
            recorded(
                400,
                "CertificateValidationException",
                "The certificate is not valid",
            ),
            ErrorKind::InvalidInput,
            false,
        );
    }

    #[test]
    fn certificate_state_406() {
        check(
            recorded(
                406,
                "CertificateStateException",
                "Certificate is revoked and cannot be reactivated.",
            ),
            ErrorKind::Conflict,
            false,
        );
    }

    #[test]
    fn bad_credentials_403_and_401() {
        check(
            recorded(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            ErrorKind::Unauthenticated,
            false,
        );
        check(
            recorded(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            ),
            ErrorKind::Unauthenticated,
            false,
        );
        check(
            recorded(401, "UnauthorizedException", "Unauthorized"),
            ErrorKind::Unauthenticated,
            false,
        );
        check(
            recorded(
                403,
                "AccessDeniedException",
                "User is not authorized to perform: iot:CreateThing",
            ),
            ErrorKind::PermissionDenied,
            false,
        );
    }

    #[test]
    fn server_errors_are_temporary() {
        check(
            recorded(503, "ServiceUnavailableException", "Service unavailable"),
            ErrorKind::ServerError,
            true,
        );
        check(
            recorded(500, "InternalFailureException", "Internal failure"),
            ErrorKind::ServerError,
            true,
        );
    }

    #[test]
    fn no_code_goes_by_status() {
        let html = Failure {
            status: Some(502),
            code: None,
            message: None,
            request_id: None,
        };
        check(html, ErrorKind::ServerError, true);
        let xml = Failure {
            status: Some(403),
            ..Default::default()
        };
        check(xml, ErrorKind::Unauthenticated, false);
        let odd = Failure {
            status: Some(418),
            ..Default::default()
        };
        check(odd, ErrorKind::Unexpected, false);
    }

    #[test]
    fn malformed_policy_is_config() {
        check(
            recorded(
                400,
                "MalformedPolicyException",
                "Policy document is malformed",
            ),
            ErrorKind::ConfigInvalid,
            false,
        );
    }
}
