//! File-system failures mapped to idbridge's error kinds, in one place.

use std::path::Path;

use idbridge_core::{Error, ErrorKind};

/// Maps an I/O error on `path` during `operation`.
pub fn parse_error(operation: &'static str, path: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind as Io;
    let kind = match e.kind() {
        Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
        Io::NotFound => ErrorKind::ConfigInvalid,
        Io::StorageFull | Io::QuotaExceeded => ErrorKind::TargetDisabled,
        Io::Interrupted | Io::WouldBlock | Io::TimedOut => ErrorKind::Network,
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, format!("{}", path.display()))
        .with_operation(operation)
        .with_context("connector", "manifest")
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_io_errors() {
        let p = Path::new("/x");
        let e = parse_error(
            "register",
            p,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_temporary());
        let e = parse_error(
            "register",
            p,
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(e.kind(), ErrorKind::TargetDisabled);
        let e = parse_error(
            "register",
            p,
            std::io::Error::from(std::io::ErrorKind::Interrupted),
        );
        assert!(e.is_temporary());
    }
}
