//! `idbridge inspect`.

use std::process::ExitCode;

/// Arguments of `idbridge inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge inspect` is not built yet")
}
