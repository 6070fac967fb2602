//! `idbridge serve`.

use std::process::ExitCode;

/// Arguments of `idbridge serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge serve` is not built yet")
}
