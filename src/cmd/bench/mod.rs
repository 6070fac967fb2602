//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

#[cfg(feature = "http")]
pub mod receiver;

/// Arguments of `idbridge bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// `idbridge serve` throughput: certificates/s and p50/p99 latency per request for
    /// batches of 1, 100 and 4,000 into the unthrottled in-process mock cloud.
    #[cfg(feature = "http")]
    Receiver(receiver::Args),
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        #[cfg(feature = "http")]
        Bench::Receiver(a) => receiver::run(a).await,
    }
}
