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

    /// Device (mutual TLS) endpoint listen address (`aws`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub device_listen: String,

    /// Write the device endpoint's CA certificate (PEM) here (`aws`).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Enforce AWS IoT's default per-API quotas (`aws`).
    #[arg(long)]
    pub default_quotas: bool,
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
        "aws" => {
            // First stdout line: the control-plane URL; second: a JSON line with the region,
            // test keys, device endpoint and SNI.
            idbridge_mock_clouds::aws::run_standalone(
                idbridge_mock_clouds::aws::StandaloneOptions {
                    listen: args.listen.clone(),
                    device_listen: args.device_listen.clone(),
                    ca_file: args.ca_file.clone(),
                    default_quotas: args.default_quotas,
                },
            )
            .await
            .with_context(|| format!("mock AWS IoT on {}", args.listen))?;
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("unknown mock cloud {other:?} (this build has: mock, aws)"),
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
