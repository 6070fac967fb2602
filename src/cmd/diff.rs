//! `idbridge diff`.

use std::process::ExitCode;

/// Arguments of `idbridge diff`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge diff` is not built yet")
}
