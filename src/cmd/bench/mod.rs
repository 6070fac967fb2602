//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

pub mod ingest;
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
    /// Import + verification throughput and peak RSS on 100k/1M synthetic devices, beside
    /// `openssl speed`.
    Ingest(ingest::Args),
    /// `idbridge serve` throughput: certificates/s and p50/p99 latency per request for
    /// batches of 1, 100 and 4,000 into the unthrottled in-process mock cloud.
    #[cfg(feature = "http")]
    Receiver(receiver::Args),
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Bench::Ingest(a) => ingest::run(a).await,
        #[cfg(feature = "http")]
        Bench::Receiver(a) => receiver::run(a).await,
    }
}
