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
    /// address is printed on stdout's first line as `https://ADDR`, or `http://ADDR` with
    /// `allow_http = true`).
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
    use std::sync::Arc;

    use crate::serve::tls::{TlsReloader, reload_on_sighup};
    use crate::serve::{ServeConfig, api, auth::TokenVerifier, server};

    let mut cfg = ServeConfig::from_file(&args.config)?;
    if let Some(l) = &args.listen {
        cfg.listen = l.clone();
    }
    let addr = cfg.validate()?;
    let tls = match &cfg.tls {
        Some(t) => Some(Arc::new(TlsReloader::new(t.clone())?)),
        None => None,
    };
    let verifier = TokenVerifier::load(&cfg.issuers, &cfg.audience, cfg.leeway_secs)?;
    for (name, i) in &cfg.issuers {
        let scopes: Vec<&str> = i.scopes.iter().map(|s| s.as_str()).collect();
        tracing::info!(issuer = %name, scopes = ?scopes, max_token_lifetime_secs = i.max_token_lifetime_secs, require_jti = i.require_jti, "token issuer");
        if !i.require_jti {
            tracing::warn!(issuer = %name, "require_jti = false: this issuer's tokens can be replayed until they expire");
        }
    }
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
    let limits = cfg.limits();
    let app = api::router(api::AppState::new(verifier, backend, cfg)).merge(console);
    let scheme = if tls.is_some() { "https" } else { "http" };
    super::mock_cloud::announce(&format!("{scheme}://{local}"))?;
    match &tls {
        Some(t) => {
            reload_on_sighup(Arc::clone(t));
            tracing::info!(%local, %targets, mutual_tls = t.mutual(), "idbridge serve: interop receiver up (TLS)");
        }
        None => tracing::warn!(
            %local, %targets,
            "idbridge serve: interop receiver up over PLAIN HTTP (allow_http = true): TLS must be terminated in front"
        ),
    }
    server::serve(
        listener,
        app,
        limits,
        tls,
        super::mock_cloud::wait_for_shutdown(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Without the `http` feature there is no receiver.
#[cfg(not(feature = "http"))]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args.trust.options();
    anyhow::bail!("this idbridge was built without the `http` feature: `serve` is unavailable")
}
