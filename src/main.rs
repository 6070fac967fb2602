//! `idbridge`: carry factory-provisioned secure-element identities into a product cloud.
//!
//! The binary is a thin front end: `cmd/*` translates arguments into calls of the library's
//! application layer (`idbridge::app`) and its results into output.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
#[cfg(feature = "http")]
mod console;
#[cfg(feature = "http")]
mod serve;

/// Carry factory-provisioned secure-element identities (Infineon OPTIGA Trust M, Microchip
/// ATECC608, Espressif) into a product cloud, verified against the vendors' pinned roots.
#[derive(Debug, Parser)]
#[command(name = "idbridge", version, about)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `idbridge_core=debug`.
    #[arg(long, global = true, env = "IDBRIDGE_LOG", default_value = "warn")]
    log: String,

    /// Log format on stderr: `text` for people, `json` (one object per event, with the job and
    /// call spans) for log collectors.
    #[arg(long, global = true, env = "IDBRIDGE_LOG_FORMAT", value_enum, default_value_t = cmd::LogFormat::Text)]
    log_format: cmd::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Import vendor batch files, verify every certificate, and print one row per device.
    Inspect(cmd::inspect::Args),
    /// Register devices into a target cloud.
    Provision(cmd::provision::Args),
    /// Remove devices from a target cloud.
    Deprovision(cmd::provision::DeprovisionArgs),
    /// The backfill plan: what is missing from, identical in, different in, or extra in a target.
    Diff(cmd::diff::Args),
    /// Show jobs, or one job's per-device state.
    Status(cmd::status::Args),
    /// Finish an interrupted job.
    Resume(cmd::status::ResumeArgs),
    /// Run the Cloud ID-compatible interop receiver.
    Serve(cmd::serve::Args),
    /// Run jobs from a shared journal (PostgreSQL): claim, run, release; any number of workers.
    Worker(cmd::worker::Args),
    /// The registration service's operator commands (import, accounts, tokens, keygen).
    Service(cmd::service::Args),
    /// Run a local mock cloud (speaking the real wire protocol) in the foreground.
    #[cfg(feature = "mock-clouds")]
    MockCloud(cmd::mock_cloud::Args),
    /// Measure throughput and memory.
    #[cfg(feature = "bench")]
    Bench(cmd::bench::Args),
    /// Check a target before a run: credentials, permissions, resources, quotas, endpoint.
    Check(cmd::check::Args),
    /// Inspect the configuration (`idbridge config show`).
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::Args),
    /// Write the man pages (idbridge.1 and one per subcommand), generated from this CLI.
    Man(cmd::man::Args),
}

/// The cargo features this binary was built with (`--version`).
const FEATURES: &[(&str, bool)] = &[
    ("aws-iot", cfg!(feature = "aws-iot")),
    ("azure", cfg!(feature = "azure")),
    ("http", cfg!(feature = "http")),
    ("gcp", cfg!(feature = "gcp")),
    ("mock-clouds", cfg!(feature = "mock-clouds")),
    ("bench", cfg!(feature = "bench")),
];

/// The CLI definition with `--version` naming the connectors and features this build has.
pub fn cli_command() -> clap::Command {
    let connectors = idbridge::app::targets::known_kinds().join(", ");
    let features: Vec<&str> = FEATURES
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    // Leaked once per process: clap wants a `'static` version string.
    let long: &'static str = Box::leak(
        format!(
            "{}\nconnectors: {connectors}\nfeatures: {}",
            env!("CARGO_PKG_VERSION"),
            features.join(", ")
        )
        .into_boxed_str(),
    );
    Cli::command().long_version(long)
}

fn main() -> ExitCode {
    // IDBRIDGE_PARSE_ONLY=1: parse the arguments exactly as a run would, then exit 0 (or with
    // clap's error, 2) without running anything; the docs test checks every command line of
    // the documentation this way (ADR 1700).
    if std::env::var_os("IDBRIDGE_PARSE_ONLY").is_some() {
        return match cli_command().try_get_matches_from(std::env::args_os()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => e.exit(),
        };
    }
    let matches = cli_command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    cmd::init_tracing(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Inspect(args) => cmd::inspect::run(args).await,
            Command::Provision(args) => cmd::provision::run(args).await,
            Command::Deprovision(args) => cmd::provision::run_deprovision(args).await,
            Command::Diff(args) => cmd::diff::run(args).await,
            Command::Status(args) => cmd::status::run(args).await,
            Command::Resume(args) => cmd::status::run_resume(args).await,
            Command::Serve(args) => cmd::serve::run(args).await,
            Command::Worker(args) => cmd::worker::run(args).await,
            Command::Service(args) => cmd::service::run(args).await,
            #[cfg(feature = "mock-clouds")]
            Command::MockCloud(args) => cmd::mock_cloud::run(args).await,
            #[cfg(feature = "bench")]
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Check(args) => cmd::check::run(args).await,
            Command::Config(c) => cmd::config::run(c).await,
            Command::Completions(args) => cmd::completions::run(args, cli_command()),
            Command::Man(args) => cmd::man::run(args, cli_command()),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
