//! `idbridge mock-cloud <KIND> --listen ADDR`: a mock cloud in the foreground, printing its URL
//! on the first line of stdout, until Ctrl-C or SIGTERM. One `match` on the kind; each mock
//! cloud adds an arm.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `idbridge mock-cloud`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which mock cloud: `mock` (the device registry).
    #[arg(value_name = "KIND")]
    pub kind: String,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,

    /// Bearer token the registry requires (`mock`).
    #[arg(
        long,
        env = "IDBRIDGE_MOCK_TOKEN",
        default_value = "mock-token",
        hide_env_values = true
    )]
    pub token: String,

    /// Calls per second the cloud accepts before answering 429 (`mock`; default unlimited).
    #[arg(long)]
    pub quota: Option<u32>,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.kind.as_str() {
        "mock" => {
            let registry =
                idbridge_mock_clouds::Registry::new(idbridge_mock_clouds::RegistryConfig {
                    token: args.token.clone(),
                    quota: args.quota,
                });
            let server = registry
                .serve(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            announce(&server.url)?;
            wait_for_shutdown().await;
            server.stop();
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("unknown mock cloud {other:?} (this build has: mock)"),
    }
}

/// Prints the URL on stdout's first line and flushes, so a parent process can read it.
pub fn announce(url: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{url}")?;
    out.flush()?;
    Ok(())
}

/// Returns on Ctrl-C or SIGTERM.
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
