//! `idbridge mock-cloud`.

use std::process::ExitCode;

/// Arguments of `idbridge mock-cloud`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the command.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge mock-cloud` is not built yet")
}
