//! `idbridge service ...`: the operator's commands of the registration service (the same
//! store as `idbridge serve`): import batches, create accounts and tokens, make a server key.

use std::path::PathBuf;
use std::process::ExitCode;

use idbridge::service::{Service, ServiceConfig, api, http};

/// Arguments of `idbridge service`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file with a `[service]` table.
    #[arg(
        long,
        env = "IDBRIDGE_CONFIG",
        default_value = "idbridge.toml",
        global = true
    )]
    config: PathBuf,

    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, clap::Subcommand)]
enum Which {
    /// Import vendor files as one batch (reel): every certificate verified and stored.
    Import(ImportArgs),
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print a new random server key (64 hex characters) for `[service] key_file`.
    Keygen,
    /// Bind a batch (reel) through a running service's API, as a line station's script does,
    /// and follow the job it starts until it ends.
    Bind(BindArgs),
}

#[derive(Debug, clap::Args)]
struct BindArgs {
    /// The service's base URL.
    #[arg(long, env = "IDBRIDGE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The account token (binder or admin).
    #[arg(long, env = "IDBRIDGE_TOKEN", hide_env_values = true)]
    token: String,
    /// The Product Batch ID (alone: a batch imported whole).
    #[arg(long, conflicts_with = "qr", required_unless_present = "qr")]
    batch_id: Option<String>,
    /// The Reel ID (with the batch ID: one reel).
    #[arg(long, requires = "batch_id")]
    reel_id: Option<String>,
    /// The scanned QR text instead of the IDs.
    #[arg(long)]
    qr: Option<String>,
    /// manifest, manual or automatic (default: the account's).
    #[arg(long, value_parser = ["manifest", "manual", "automatic"])]
    mode: Option<String>,
    /// The target (default: the account's default).
    #[arg(long)]
    target: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The batch's files (a Cloud ID bundle REELID_GUID_vX.Y.7z, PEM, manifests ...).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The Product Batch ID (default: from the bundle's file name).
    #[arg(long)]
    batch_id: Option<String>,
    /// The Reel ID (default: from the bundle's file name; none: the files are a whole batch,
    /// claimed by its batch ID alone).
    #[arg(long)]
    reel_id: Option<String>,
    #[command(flatten)]
    trust: super::input::TrustArgs,
}

#[derive(Debug, clap::Subcommand)]
enum AccountCmd {
    /// Create an account.
    Create {
        /// Its unique name.
        name: String,
        /// Its default binding mode.
        #[arg(long, value_parser = ["manifest", "manual", "automatic"], default_value = "manual")]
        mode: String,
        /// Also create a token of this role for it and print it (shown once).
        #[arg(long, value_parser = ["binder", "admin"])]
        token: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCmd {
    /// Create a token (printed once; only its hash is stored).
    Create {
        /// The account (not for `operator`).
        #[arg(long)]
        account: Option<String>,
        /// binder, admin or operator.
        #[arg(long, value_parser = ["binder", "admin", "operator"])]
        role: String,
    },
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Which::Keygen => {
            println!("{}", idbridge::service::ServerKey::generate_hex()?);
            return Ok(ExitCode::SUCCESS);
        }
        Which::Bind(b) => return bind(b).await,
        _ => {}
    }
    let cfg = ServiceConfig::from_file(&args.config)?
        .ok_or_else(|| anyhow::anyhow!("{} has no [service] table", args.config.display()))?;
    let config = idbridge::app::Config::load(Some(&args.config))?;
    let journal = idbridge::app::journal_url(None, &config);
    let trust = match &args.which {
        Which::Import(i) => i.trust.options(),
        _ => Default::default(),
    };
    let svc = Service::open(cfg, trust, journal).await?;
    let cli = idbridge::service::Caller {
        actor: "cli".into(),
        account_id: None,
        role: "operator".into(),
        client: "local".into(),
    };
    match args.which {
        Which::Keygen | Which::Bind(_) => unreachable!("handled above"),
        Which::Import(i) => {
            let name = i
                .files
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let b = svc.import(i.files, &name, i.batch_id, i.reel_id).await?;
            svc.audit(
                &cli,
                None,
                "batch.import",
                Some(&b.id),
                "ok",
                Some(b.source.clone()),
            )
            .await;
            println!("{}", serde_json::to_string(&b)?);
            Ok(if b.invalid == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Which::Account(AccountCmd::Create { name, mode, token }) => {
            let mode = match mode.as_str() {
                "manifest" => api::Mode::Manifest,
                "automatic" => api::Mode::Automatic,
                _ => api::Mode::Manual,
            };
            let Some(a) = http::create_account_in(&svc, &name, mode).await? else {
                anyhow::bail!("an account named {name:?} exists");
            };
            svc.audit(
                &cli,
                Some(&a.id),
                "account.create",
                Some(&a.name),
                "ok",
                None,
            )
            .await;
            match token {
                // The token alone on stdout, for `T=$(idbridge service account create ...)`.
                Some(role) => {
                    let t = http::create_token_in(&svc, Some(&a.name), &role).await?;
                    svc.audit(
                        &cli,
                        Some(&a.id),
                        "token.create",
                        Some(&t.id),
                        "ok",
                        Some(role),
                    )
                    .await;
                    println!("{}", t.token);
                    eprintln!(
                        "account {} ({}) and {} token {} created; the token is shown this once",
                        a.name, a.mode, t.role, t.id
                    );
                }
                None => println!("{}", serde_json::to_string(&a)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Which::Token(TokenCmd::Create { account, role }) => {
            let t = http::create_token_in(&svc, account.as_deref(), &role).await?;
            svc.audit(
                &cli,
                None,
                "token.create",
                Some(&t.id),
                "ok",
                Some(t.role.clone()),
            )
            .await;
            println!("{}", t.token);
            eprintln!("token {} ({}) created; it is shown this once", t.id, t.role);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `idbridge service bind`: POST /api/v1/bindings, then follow the job's events to the end.
async fn bind(b: BindArgs) -> anyhow::Result<ExitCode> {
    let base = b.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let body = serde_json::json!({
        "batch_id": b.batch_id, "reel_id": b.reel_id, "qr": b.qr,
        "mode": b.mode, "target": b.target,
    });
    // Absent fields are left out (the service refuses unknown and null-only shapes alike).
    let body: serde_json::Map<String, serde_json::Value> = body
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let resp = http
        .post(format!("{base}/api/v1/bindings"))
        .bearer_auth(&b.token)
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the service at {base}: {e}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        eprintln!(
            "bind refused: {} {} ({})",
            status.as_u16(),
            v["message"].as_str().unwrap_or("no message"),
            v["code"].as_str().unwrap_or("?")
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "bound {} devices as {} (mode {}{})",
        v["devices"],
        v["id"].as_str().unwrap_or("?"),
        v["mode"].as_str().unwrap_or("?"),
        v["target"]
            .as_str()
            .map(|t| format!(", target {t}"))
            .unwrap_or_default()
    );
    let Some(job) = v["job"]["id"].as_str() else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut resp = http
        .get(format!("{base}/api/v1/jobs/{job}/events"))
        .bearer_auth(&b.token)
        .send()
        .await?
        .error_for_status()?;
    let mut buf = String::new();
    let mut last = serde_json::Value::Null;
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            if let Ok(j) = serde_json::from_str::<serde_json::Value>(&data) {
                if j.get("counts").is_some() {
                    // `end`: the job as stored.
                    let c = &j["counts"];
                    println!(
                        "job {job}: {}, {}/{} done, {} failed",
                        j["state"].as_str().unwrap_or("?"),
                        c["done"],
                        c["total"],
                        c["failed"]
                    );
                    last = j;
                } else if j.get("finished").is_some() {
                    // `progress`: live counts.
                    println!(
                        "job {job}: running, {}/{} finished, {} failed",
                        j["finished"], j["total"], j["failed"]
                    );
                }
            }
            if event.contains("event: end") {
                let ok = last["state"] == "finished" && last["counts"]["failed"] == 0;
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
        }
    }
    anyhow::bail!("the event stream of job {job} ended before the job did")
}
