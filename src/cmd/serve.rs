//! `idbridge serve`: the Cloud ID-compatible interop receiver.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `idbridge serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file with a `[serve]` table and the `[targets.NAME]` it names.
    #[arg(long, env = "IDBRIDGE_CONFIG", default_value = "idbridge.toml")]
    pub config: PathBuf,

    /// Listen address, overriding `[serve] listen` (port 0 picks a free port; the bound
    /// address is printed on stdout's first line as `http://ADDR`).
    #[arg(long)]
    pub listen: Option<String>,

    /// The journal: sqlite:PATH (default: the config's `journal`, else
    /// sqlite:idbridge-journal.sqlite).
    #[arg(long, env = "IDBRIDGE_JOURNAL", value_name = "URL")]
    pub journal: Option<String>,

    /// How certificates in requests are judged (validity `now` means at start-up).
    #[command(flatten)]
    pub trust: super::input::TrustArgs,
}

/// Runs the command until Ctrl-C or SIGTERM.
#[cfg(feature = "http")]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    use crate::serve::{ServeConfig, api, auth::TokenVerifier};

    let mut cfg = ServeConfig::from_file(&args.config)?;
    if let Some(l) = &args.listen {
        cfg.listen = l.clone();
    }
    let addr = cfg.validate()?;
    let verifier = TokenVerifier::load(&cfg.issuer_keys, &cfg.audience, cfg.leeway_secs)?;
    let backend = crate::serve::backend::build(
        &args.config,
        &cfg,
        &args.trust.options(),
        args.journal.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let targets = cfg.targets.join(", ");
    // The web console (/console) reads and changes data only through the service API router.
    // Until the registration service is mounted here, that router is empty and no token signs in.
    let service_api = axum::Router::new();
    let console = crate::console::router(service_api, false)?;
    let app = api::router(api::AppState::new(verifier, backend, cfg)).merge(console);
    super::mock_cloud::announce(&format!("http://{local}"))?;
    tracing::info!(%local, %targets, "idbridge serve: interop receiver up");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(super::mock_cloud::wait_for_shutdown())
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Without the `http` feature there is no receiver.
#[cfg(not(feature = "http"))]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args.trust.options();
    anyhow::bail!("this idbridge was built without the `http` feature: `serve` is unavailable")
}
