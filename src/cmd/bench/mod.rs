//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

#[cfg(feature = "azure")]
pub mod azure;
pub mod ingest;

/// Arguments of `idbridge bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Import + verification throughput and peak RSS on 100k/1M synthetic devices, beside
    /// `openssl speed`.
    Ingest(ingest::Args),
    /// Azure IoT Hub / DPS connectors against the Azure mocks (quota floor, devices/s).
    #[cfg(feature = "azure")]
    Azure(azure::Args),
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Bench::Ingest(a) => ingest::run(a).await,
        #[cfg(feature = "azure")]
        Bench::Azure(a) => azure::run(a).await,
    }
}
