//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

/// Arguments of `idbridge bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {}
}
