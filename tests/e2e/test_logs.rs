//! The run-wide log directory and the list of secrets the tests use.
//!
//! Every `idbridge` process the e2e tests run leaves its output in one directory
//! (`$IDBRIDGE_TEST_LOG_DIR`, default `target/test-logs`); `scripts/test` tees cargo's own
//! output there too, then `scripts/check-secrets` greps it all for every secret of
//! `tests/fixtures/secrets.txt` plus the run-time ones the tests registered with
//! [`note_secret`]. None may appear.
#![allow(clippy::unwrap_used)] // test helpers

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};

/// `tests/fixtures/secrets.txt`: `LABEL VALUE` lines.
const LIST: &str = include_str!("../fixtures/secrets.txt");

/// The file run-time secrets are appended to (label, tab, value), inside [`dir`].
pub(crate) const DYNAMIC: &str = "secrets.dynamic.tsv";

/// The run-wide log directory (created).
pub(crate) fn dir() -> PathBuf {
    let d = std::env::var_os("IDBRIDGE_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh file name in [`dir`] for `stem` (unique per process and call).
pub(crate) fn path(stem: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    dir().join(format!(
        "e2e-{}-{}-{clean}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Keeps what a finished `idbridge` run printed (`args` name it), for the secrets grep.
pub(crate) fn record<S: AsRef<std::ffi::OsStr>>(args: &[S], out: &Output) {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let stem = shown.first().map(String::as_str).unwrap_or("idbridge");
    let mut text = format!(
        "idbridge {}\n{:?}\n--- stdout\n",
        shown.join(" "),
        out.status
    )
    .into_bytes();
    text.extend_from_slice(&out.stdout);
    text.extend_from_slice(b"\n--- stderr\n");
    text.extend_from_slice(&out.stderr);
    std::fs::write(path(stem), text).unwrap();
}

/// The value of the listed secret `label`.
pub(crate) fn secret(label: &str) -> &'static str {
    listed()
        .find(|(l, _)| *l == label)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{label} is not in tests/fixtures/secrets.txt"))
}

/// Registers a secret made at run time (a bearer token, a random webhook secret): the grep
/// looks for it too.
pub(crate) fn note_secret(label: &str, value: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir().join(DYNAMIC))
        .unwrap();
    // One write per line: appends from parallel tests do not interleave.
    f.write_all(format!("{label}\t{value}\n").as_bytes())
        .unwrap();
}

fn listed() -> impl Iterator<Item = (&'static str, &'static str)> {
    LIST.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?, parts.next()?))
        })
}

/// The constants of the tests that hold secrets are on the list (so the grep knows them).
#[test]
fn the_secret_constants_of_the_tests_are_listed() {
    let values: Vec<&str> = listed().map(|(_, v)| v).collect();
    #[cfg(feature = "http")]
    assert!(values.contains(&super::serve_support::CLOUD_TOKEN));
    #[cfg(feature = "aws-iot")]
    assert!(values.contains(&idbridge_mock_clouds::aws::TEST_SECRET_ACCESS_KEY));
    for (label, value) in listed() {
        assert!(
            value.len() >= 8,
            "{label}: too short to grep for without noise"
        );
    }
}

/// `scripts/check-secrets` fails on a planted secret, naming the file and the label but not
/// the value, and passes on a clean directory.
#[test]
fn check_secrets_catches_a_planted_secret() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-secrets");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        "# a comment\nplanted-key   s3cr3t-planted-value-42\n",
    )
    .unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    std::fs::write(logs.join("clean.log"), "nothing to see\n").unwrap();
    let run = || {
        std::process::Command::new(&script)
            .arg(&logs)
            .env("IDBRIDGE_SECRETS_LIST", &list)
            .output()
            .unwrap()
    };
    let clean = run();
    assert!(clean.status.success(), "{clean:?}");

    std::fs::write(
        logs.join("sub/leaky.log"),
        "line 1\nauth failed for s3cr3t-planted-value-42 oops\n",
    )
    .unwrap();
    // A run-time secret too.
    std::fs::write(
        logs.join(DYNAMIC),
        "bearer-token\teyJhbGciOiJFUzI1NiJ9.planted.token\n",
    )
    .unwrap();
    std::fs::write(
        logs.join("server.log"),
        "authorization: Bearer eyJhbGciOiJFUzI1NiJ9.planted.token\n",
    )
    .unwrap();
    let leaky = run();
    let err = String::from_utf8_lossy(&leaky.stderr);
    assert!(!leaky.status.success(), "{err}");
    assert!(
        err.contains("sub/leaky.log") && err.contains("planted-key"),
        "{err}"
    );
    assert!(
        err.contains("server.log") && err.contains("bearer-token"),
        "{err}"
    );
    let all = format!("{err}{}", String::from_utf8_lossy(&leaky.stdout));
    assert!(
        !all.contains("s3cr3t-planted-value-42"),
        "the value was printed: {all}"
    );
    assert!(
        !all.contains("planted.token"),
        "the value was printed: {all}"
    );
}
