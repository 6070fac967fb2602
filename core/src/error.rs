//! The one error type of idbridge: a kind, whether it is temporary, the operation, context
//! pairs (connector, device id, the cloud's request id) and the source.

use std::fmt;

/// Result with idbridge's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of which cloud said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The resource exists already (and could not be confirmed identical).
    AlreadyExists,
    /// The resource does not exist.
    NotFound,
    /// The cloud throttled the call; always temporary.
    RateLimited,
    /// Credentials are valid but not allowed to do this.
    PermissionDenied,
    /// Credentials are missing, wrong or expired.
    Unauthenticated,
    /// The request was refused as malformed or invalid.
    InvalidInput,
    /// The target's configuration is unusable.
    ConfigInvalid,
    /// The target cannot do this operation.
    Unsupported,
    /// The resource exists with different content (a different certificate, configuration ...).
    Conflict,
    /// The call timed out or the answer was lost: the call may or may not have taken effect.
    OutcomeUnknown,
    /// A network-level failure (connect, reset) before any answer.
    Network,
    /// The cloud failed on its side (5xx).
    ServerError,
    /// The target refuses further calls for good (e.g. a webhook answered 410 Gone).
    TargetDisabled,
    /// Anything else.
    Unexpected,
}

impl ErrorKind {
    /// Whether errors of this kind are, by default, worth retrying.
    pub fn default_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::OutcomeUnknown
                | ErrorKind::Network
                | ErrorKind::ServerError
        )
    }

    /// A stable snake_case name, for reports and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::ConfigInvalid => "config_invalid",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Conflict => "conflict",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Network => "network",
            ErrorKind::ServerError => "server_error",
            ErrorKind::TargetDisabled => "target_disabled",
            ErrorKind::Unexpected => "unexpected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// idbridge's error: build with [`Error::new`], add context with the `with_*` methods.
///
/// `Clone` (the source is shared), so one whole-call failure can be handed to every device of
/// the call; [`Error::for_device`] makes such a copy name its own device.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    temporary: bool,
    operation: &'static str,
    context: Vec<(&'static str, String)>,
    retry_after: Option<std::time::Duration>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`; temporary if the kind is by default.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            temporary: kind.default_temporary(),
            operation: "",
            context: Vec::new(),
            retry_after: None,
            source: None,
        }
    }

    /// The operation that failed (`"register"`, `"CreateThing"` ...).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = operation;
        self
    }

    /// Sets a context pair such as `("device_id", ...)` or `("request_id", ...)`, replacing an
    /// earlier value of the same key. Never put a secret here: context is printed.
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        let value = value.to_string();
        match self.context.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.context.push((key, value)),
        }
        self
    }

    /// This error as it concerns `device`: the same kind, message, temporariness, request id,
    /// Retry-After and source, naming `device` (not the device it was first reported for).
    pub fn for_device(&self, device: impl fmt::Display) -> Self {
        self.clone().with_context("device_id", device)
    }

    /// One line with the source chain (`error: cause: cause`), for reports and the journal,
    /// where no error reporter walks [`std::error::Error::source`].
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    /// Marks the error temporary (retryable) or permanent.
    pub fn set_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// The delay the cloud asked for (`Retry-After`).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(std::sync::Arc::from(source.into()));
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying may succeed.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The operation that failed, or `""`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The delay the cloud asked for, if any.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// A context value by key (`"request_id"` ...).
    pub fn context(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The cloud's request id, if the connector recorded one.
    pub fn request_id(&self) -> Option<&str> {
        self.context("request_id")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.operation.is_empty() {
            write!(f, " at {}", self.operation)?;
        }
        if !self.context.is_empty() {
            f.write_str(" [")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
            }
            f.write_str("]")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        // The source is not repeated: reporters walk `source()` ([`Error::report`], anyhow's
        // `{:#}`), and printing it here too would show it twice.
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_context() {
        let e = Error::new(ErrorKind::RateLimited, "slow down")
            .with_operation("CreateThing")
            .with_context("request_id", "abc");
        let s = e.to_string();
        assert_eq!(
            s,
            "rate_limited at CreateThing [request_id: abc]: slow down"
        );
        assert!(e.is_temporary());
        assert_eq!(e.request_id(), Some("abc"));
        assert!(!Error::new(ErrorKind::InvalidInput, "x").is_temporary());
    }

    #[test]
    fn permanent_errors_do_not_say_so_and_the_source_is_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::new(ErrorKind::InvalidInput, "bad certificate")
            .with_operation("register")
            .with_source(io);
        assert_eq!(e.to_string(), "invalid_input at register: bad certificate");
        assert!(!e.is_temporary());
        assert_eq!(
            std::error::Error::source(&e).map(ToString::to_string),
            Some("disk on fire".to_owned())
        );
        assert_eq!(
            e.report(),
            "invalid_input at register: bad certificate: disk on fire"
        );
    }

    #[test]
    fn a_copy_per_device_names_its_own_device() {
        let e = Error::new(ErrorKind::TargetDisabled, "410 Gone")
            .with_operation("webhook provision")
            .with_context("device_id", "aaa")
            .with_context("request_id", "r-1")
            .with_retry_after(std::time::Duration::from_secs(3))
            .with_source(std::io::Error::other("gone"));
        let c = e.for_device("bbb");
        assert_eq!(c.context("device_id"), Some("bbb"));
        assert!(!c.to_string().contains("aaa"), "{c}");
        assert_eq!(c.request_id(), Some("r-1"));
        assert_eq!(c.retry_after(), e.retry_after());
        assert_eq!((c.kind(), c.is_temporary()), (e.kind(), e.is_temporary()));
        assert!(
            std::error::Error::source(&c).is_some(),
            "the source is shared"
        );
    }
}
