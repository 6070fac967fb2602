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
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The batch's files (a Cloud ID bundle REELID_GUID_vX.Y.7z, PEM, manifests ...).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The Product Batch ID (default: from the bundle's file name).
    #[arg(long)]
    batch_id: Option<String>,
    /// The Reel ID (default: from the bundle's file name).
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
    if matches!(args.which, Which::Keygen) {
        println!("{}", idbridge::service::ServerKey::generate_hex()?);
        return Ok(ExitCode::SUCCESS);
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
        Which::Keygen => unreachable!("handled above"),
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
        Which::Account(AccountCmd::Create { name, mode }) => {
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
            println!("{}", serde_json::to_string(&a)?);
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
