//! One module per subcommand. Each `run` returns the exit code; an `Err` is an unusable input
//! or configuration (exit 2).

pub mod bench;
pub mod diff;
pub mod input;
pub mod inspect;
pub mod mock_cloud;
pub mod provision;
pub mod serve;
pub mod status;
pub mod worker;

/// Logs go to stderr so stdout stays machine-readable; colours only on a terminal (a log
/// file or journald must not get escape sequences).
pub fn init_tracing(filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
