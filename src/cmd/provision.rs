//! `idbridge provision` and `idbridge deprovision`.

use std::process::ExitCode;

/// Arguments of `idbridge provision`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Arguments of `idbridge deprovision`.
#[derive(Debug, clap::Args)]
pub struct DeprovisionArgs {}

/// Runs `provision`.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge provision` is not built yet")
}

/// Runs `deprovision`.
pub async fn run_deprovision(_args: DeprovisionArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge deprovision` is not built yet")
}
