//! `idbridge mock-cloud <KIND> --listen ADDR`: a mock cloud in the foreground, printing its URL
//! on the first line of stdout, until Ctrl-C or SIGTERM. One `match` on the kind; each mock
//! cloud adds an arm.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `idbridge mock-cloud`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which mock cloud: `mock` (the device registry), `azure` (IoT Hub + DPS).
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

    /// Calls per second the cloud accepts before answering 429 (`mock`, `azure`; default
    /// unlimited).
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
        "azure" => {
            // IoT Hub on --listen's port, DPS and the two device endpoints on the next three.
            // Line 1: the hub URL; line 2: JSON with connection strings, endpoints and the CA.
            use idbridge_mock_clouds::azure::{AzureMock, AzureMockAddrs, AzureMockConfig};
            let mut cfg = AzureMockConfig::default();
            cfg.hub_ops_per_minute = args.quota.map(|q| f64::from(q) * 60.0);
            cfg.dps_ops_per_minute = cfg.hub_ops_per_minute;
            let mock = AzureMock::start_on(&AzureMockAddrs::from_listen(&args.listen)?, cfg)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            announce(mock.hub_url())?;
            announce(&mock.describe().to_string())?;
            wait_for_shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("unknown mock cloud {other:?} (this build has: mock, azure)"),
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
