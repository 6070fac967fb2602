//! `idbridge status` and `idbridge resume`.

use std::process::ExitCode;

/// Arguments of `idbridge status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Arguments of `idbridge resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {}

/// Runs `status`.
pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge status` is not built yet")
}

/// Runs `resume`.
pub async fn run_resume(_args: ResumeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`idbridge resume` is not built yet")
}
