//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

#[cfg(feature = "aws-iot")]
mod aws;
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
    /// AWS IoT connector against the mock AWS IoT: a reel at the default quotas, or unthrottled.
    #[cfg(feature = "aws-iot")]
    Aws(aws::AwsArgs),
    /// The mock AWS IoT child process of `bench aws`.
    #[cfg(feature = "aws-iot")]
    #[command(hide = true)]
    AwsMock(aws::AwsMockArgs),
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Bench::Ingest(a) => ingest::run(a).await,
        #[cfg(feature = "aws-iot")]
        Bench::Aws(a) => aws::run(a).await,
        #[cfg(feature = "aws-iot")]
        Bench::AwsMock(a) => aws::run_mock(a).await,
    }
}
