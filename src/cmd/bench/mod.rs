//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

#[cfg(feature = "azure")]
pub mod azure;

/// Arguments of `idbridge bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Azure IoT Hub / DPS connectors against the Azure mocks (quota floor, devices/s).
    #[cfg(feature = "azure")]
    Azure(azure::Args),
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        #[cfg(feature = "azure")]
        Bench::Azure(a) => azure::run(a).await,
    }
}
