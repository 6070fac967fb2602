//! `idbridge config show`: the effective configuration (which file, every target with the
//! paths resolved), secrets redacted. `idbridge config check` loads every target as a run would.

use std::path::PathBuf;
use std::process::ExitCode;

use idbridge::app::Config;

/// `idbridge config ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the effective configuration as TOML, secrets redacted.
    Show(Args),
    /// Load the configuration and every target's keys as a run would (no network): exit 0 when
    /// all are valid, 1 otherwise, naming each bad key.
    Validate(Args),
}

/// Which file.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (default: ./idbridge.toml, else ~/.config/idbridge/idbridge.toml).
    #[arg(long, env = "IDBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs `config show` / `config validate`.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Show(args) => {
            let config = Config::load(args.config.as_deref())?;
            print!("{}", config.show()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => {
            let config = Config::load(args.config.as_deref())?;
            let mut bad = 0;
            for name in config.target_names() {
                match config
                    .target(&name)
                    .and_then(|t| idbridge::app::targets::validate(&t))
                {
                    Ok(()) => println!("ok    [targets.{name}]"),
                    Err(e) => {
                        bad += 1;
                        println!("error {e:#}");
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
