//! One module per subcommand. Each `run` returns the exit code; an `Err` is an unusable input
//! or configuration (exit 2).

#[cfg(feature = "bench")]
pub mod bench;
pub mod check;

pub mod completions;
pub mod config;
pub mod diff;
pub mod input;
pub mod inspect;
pub mod man;
#[cfg(feature = "mock-clouds")]
pub mod mock_cloud;
pub mod progress;
pub mod provision;
pub mod serve;
pub mod service;
pub mod status;
pub mod worker;

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, with the fields of the enclosing spans (job, call).
    Json,
}

/// Logs go to stderr so stdout stays machine-readable; colours only on a terminal (a log
/// file or journald must not get escape sequences).
pub fn init_tracing(filter: &str, format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Prints the URL on stdout's first line and flushes, so a parent process can read it.
#[cfg(any(feature = "http", feature = "mock-clouds"))]
pub fn announce(url: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{url}")?;
    out.flush()?;
    Ok(())
}

/// Returns on Ctrl-C or SIGTERM.
#[cfg(any(feature = "http", feature = "mock-clouds"))]
pub async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
