//! `idbridge bench quota`: the in-process mock cloud enforces a quota (default 200/s, 429
//! above it); the engine paces at the same quota for a while (default 30 s of devices). Reports
//! the achieved rate as a share of the quota, the throttled calls, and the most calls the cloud
//! saw in any one second.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
use idbridge_core::journal::{Operation, SqliteJournal};
use idbridge_mock::{MockConfig, MockConnector};

/// Arguments of `idbridge bench quota`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The quota, calls per second (the cloud enforces it; the engine is told it).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long to run at the quota.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Calls in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let n = u64::from(args.rate) * u64::from(args.seconds);
    eprintln!("generating {n} certificates ...");
    let devices = super::certificates(n)?;
    let connector = Arc::new(
        MockConnector::new(MockConfig {
            quota: Some(f64::from(args.rate)),
            server_quota: Some(args.rate),
            ..MockConfig::default()
        })
        .await?,
    );
    let dir = std::env::temp_dir().join(format!("idbridge-bench-quota-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let journal = Arc::new(SqliteJournal::open(dir.join("bench.sqlite"))?);
    let engine = Engine::new(
        connector.clone(),
        journal,
        EngineOptions {
            concurrency: args.concurrency,
            ..EngineOptions::default()
        },
    );
    let t0 = Instant::now();
    let report = engine
        .execute(
            Operation::Provision,
            "bench",
            devices,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let stats = connector
        .registry()
        .map(|r| r.stats())
        .ok_or_else(|| anyhow::anyhow!("the in-process registry is gone"))?;
    let achieved = stats.creates as f64 / elapsed;
    let result = serde_json::json!({
        "bench": "quota",
        "quota_per_second": args.rate,
        "devices": n,
        "done": report.counts.done,
        "seconds": elapsed,
        "achieved_per_second": (achieved * 10.0).round() / 10.0,
        "achieved_share_of_quota": (achieved / f64::from(args.rate) * 1000.0).round() / 1000.0,
        "throttled": stats.throttled,
        "requests": stats.requests,
        "max_requests_in_any_second": stats.max_requests_in_any_second,
    });
    println!("{result}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
