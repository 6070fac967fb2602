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

    /// Serve HTTP only: the registration service's jobs are recorded (queued) and run by the
    /// other `serve` processes on the same store and journal (PostgreSQL), never by this one.
    #[arg(long)]
    pub no_jobs: bool,

    /// How certificates in requests are judged (validity `now` means at start-up).
    #[command(flatten)]
    pub trust: super::input::TrustArgs,
}

/// Runs the command until Ctrl-C or SIGTERM: the interop receiver when the config has
/// `[serve]`, the registration service when it has `[service]`, both on one listener. The
/// listener's address, TLS and limits come from `[serve]` when present, else from `[service]`.
#[cfg(feature = "http")]
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;

    use crate::serve::tls::{TlsReloader, reload_on_sighup};
    use crate::serve::{ServeConfig, api, auth::TokenVerifier, server};
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
    // The config's [trust] (CRLs, stale_crl, crl_check_seconds ...) with the flags on top.
    let trust = args
        .trust
        .options_with(&idbridge::app::Config::load(Some(&args.config))?.trust)?;
    let mut app = axum::Router::new();
    let mut what = Vec::new();
    // The listener: [serve]'s when the receiver runs, else the service's own.
    let mut server_cfg = match &service_cfg {
        Some(s) => ServeConfig {
            listen: s.listen.clone(),
            tls: s.tls.clone(),
            allow_http: s.allow_http,
            max_body_bytes: s.max_body_bytes,
            ..ServeConfig::default()
        },
        None => ServeConfig::default(),
    };
    if has_serve {
        let mut cfg = ServeConfig::from_file(&args.config)?;
        if let Some(l) = &args.listen {
            cfg.listen = l.clone();
        }
        cfg.validate()?;
        if trust.allow_test_roots {
            anyhow::ensure!(
                cfg.insecure_test_roots,
                "--allow-test-roots would accept certificates signed by vendor test roots, whose \
                 private keys are public: `serve` refuses it unless [serve] has \
                 `insecure_test_roots = true` (labs only)"
            );
            tracing::warn!(
                "INSECURE: test roots accepted (--allow-test-roots with insecure_test_roots = true): \
                 anyone can mint certificates this receiver provisions; never use in production"
            );
        }
        let verifier = TokenVerifier::load(&cfg.issuers, &cfg.audience, cfg.leeway_secs)?;
        for (name, i) in &cfg.issuers {
            let scopes: Vec<&str> = i.scopes.iter().map(|s| s.as_str()).collect();
            tracing::info!(issuer = %name, scopes = ?scopes, max_token_lifetime_secs = i.max_token_lifetime_secs, require_jti = i.require_jti, "token issuer");
            if !i.require_jti {
                tracing::warn!(issuer = %name, "require_jti = false: this issuer's tokens can be replayed until they expire");
            }
        }
        let backend =
            crate::serve::backend::build(&args.config, &cfg, &trust, args.journal.clone()).await?;
        what.push(format!("interop receiver -> {}", cfg.targets.join(", ")));
        server_cfg = cfg.clone();
        app = app.merge(api::router(api::AppState::new(verifier, backend, cfg)));
    }
    if let Some(l) = &args.listen {
        server_cfg.listen = l.clone();
    }
    if let Some(cfg) = service_cfg {
        let config = idbridge::app::Config::load(Some(&args.config))?;
        let journal = idbridge::app::journal_url(args.journal.as_deref(), &config);
        let svc = Service::open(cfg, trust.clone(), journal).await?;
        let preloaded = svc.preload().await?;
        if args.no_jobs {
            svc.jobs.disable();
            what.push(format!(
                "registration service ({preloaded} batches preloaded; HTTP only: --no-jobs)"
            ));
        } else {
            let resumed = jobs::resume_unfinished(&svc).await?;
            // Jobs queued by --no-jobs processes, or left by processes that died, are taken
            // over as their leases allow (ADR 1201).
            tokio::spawn(jobs::run_queue(Arc::clone(&svc), jobs::queue_poll()));
            what.push(format!(
                "registration service ({preloaded} batches preloaded, {resumed} jobs resumed)"
            ));
        }
        // The web console (/console) reads and changes data only through the service API.
        let api_router = http::router(svc);
        let secure_cookies = server_cfg.tls.is_some();
        app = app
            .merge(api_router.clone())
            .merge(crate::console::router(api_router, secure_cookies)?);
    } else {
        // Without the service, the console has no API behind it and no token signs in.
        app = app.merge(crate::console::router(axum::Router::new(), false)?);
    }
    let addr: std::net::SocketAddr = server_cfg
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("listen address {:?}: {e}", server_cfg.listen))?;
    if server_cfg.tls.is_none() && !server_cfg.allow_http {
        anyhow::bail!(
            "no TLS configured ([serve.tls] or [service.tls]: cert, key): add it, or set \
             `allow_http = true` when a TLS terminator in front of this server does TLS \
             (see docs/security.md)"
        );
    }
    let tls = match &server_cfg.tls {
        Some(t) => Some(Arc::new(TlsReloader::new(t.clone())?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    super::announce(&format!("{scheme}://{local}"))?;
    let serving = what.join("; ");
    match &tls {
        Some(t) => {
            reload_on_sighup(Arc::clone(t));
            tracing::info!(%local, %serving, mutual_tls = t.mutual(), "idbridge serve up (TLS)");
        }
        None => tracing::warn!(
            %local, %serving,
            "idbridge serve up over PLAIN HTTP (allow_http = true): TLS must be terminated in front"
        ),
    }
    server::serve(
        listener,
        app,
        server_cfg.limits(),
        tls,
        super::wait_for_shutdown(),
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
