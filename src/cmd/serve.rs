//! `idbridge serve`: the Cloud ID-compatible interop receiver.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `idbridge serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file with a `[serve]` table and the `[targets.NAME]` it names.
    #[arg(long, default_value = "idbridge.toml")]
    pub config: PathBuf,
    /// Listen address, overriding `[serve] listen` (port 0 picks a free port; the bound
    /// address is printed on stdout as `listening on http://ADDR`).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Runs the command until Ctrl-C.
#[cfg(feature = "http")]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;

    use crate::serve::{ServeConfig, api, auth::TokenVerifier};

    let mut cfg = ServeConfig::from_file(&args.config)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    let addr = cfg.validate()?;
    let verifier = TokenVerifier::load(&cfg.issuer_keys, &cfg.audience, cfg.leeway_secs)?;
    let backend = crate::serve::backend::build(&args.config, &cfg).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = api::router(api::AppState::new(verifier, backend, cfg));
    println!("listening on http://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(%local, "idbridge serve: interop receiver up");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// Without the `http` feature there is no receiver.
#[cfg(not(feature = "http"))]
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this idbridge was built without the `http` feature: `serve` is unavailable")
}
