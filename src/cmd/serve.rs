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

/// Runs the command until Ctrl-C or SIGTERM: the interop receiver when the config has
/// `[serve]`, the registration service when it has `[service]`, both on one listener.
#[cfg(feature = "http")]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    use crate::serve::{ServeConfig, api, auth::TokenVerifier};
    use idbridge::service::{Service, ServiceConfig, http, jobs};

    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let has_serve = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("serve"))
        .unwrap_or(true);
    let service_cfg = ServiceConfig::from_file(&args.config)?;
    anyhow::ensure!(
        has_serve || service_cfg.is_some(),
        "{} has neither a [serve] (interop receiver) nor a [service] (registration service) table",
        args.config.display()
    );
    let mut app = axum::Router::new();
    let mut listen = service_cfg.as_ref().map(|c| c.listen.clone());
    let mut what = Vec::new();
    if has_serve {
        let mut cfg = ServeConfig::from_file(&args.config)?;
        if let Some(l) = &args.listen {
            cfg.listen = l.clone();
        }
        cfg.validate()?;
        listen = Some(cfg.listen.clone());
        let verifier = TokenVerifier::load(&cfg.issuer_keys, &cfg.audience, cfg.leeway_secs)?;
        let backend = crate::serve::backend::build(
            &args.config,
            &cfg,
            &args.trust.options(),
            args.journal.clone(),
        )
        .await?;
        what.push(format!("interop receiver -> {}", cfg.targets.join(", ")));
        app = app.merge(api::router(api::AppState::new(verifier, backend, cfg)));
    }
    if let Some(cfg) = service_cfg {
        let config = idbridge::app::Config::load(Some(&args.config))?;
        let journal = idbridge::app::journal_url(args.journal.as_deref(), &config);
        let svc = Service::open(cfg, args.trust.options(), journal).await?;
        let resumed = jobs::resume_unfinished(&svc).await?;
        what.push(format!("registration service ({resumed} jobs resumed)"));
        // The web console (/console) reads and changes data only through the service API.
        let api_router = http::router(svc);
        app = app
            .merge(api_router.clone())
            .merge(crate::console::router(api_router, false)?);
    }
    if !what.iter().any(|w| w.starts_with("registration service")) {
        // Without the service, the console has no API behind it and no token signs in.
        app = app.merge(crate::console::router(axum::Router::new(), false)?);
    }
    let listen = args.listen.clone().or(listen).unwrap_or_default();
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("listen address {listen:?}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    super::mock_cloud::announce(&format!("http://{local}"))?;
    tracing::info!(%local, serving = %what.join("; "), "idbridge serve up");
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
