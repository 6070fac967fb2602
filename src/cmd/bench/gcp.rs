//! `idbridge bench gcp`: devices/s into Google's Firestore emulator through the `gcp-firestore`
//! connector and idbridge's engine (pacer, retry loop, SQLite journal in a temporary
//! directory), as `idbridge provision` runs it.
//!
//! Starts the emulator itself (Cloud SDK + Java, on a free loopback port; killed with its
//! process group at the end). Unpaced by default (the emulator's and idbridge's own cost);
//! `--paced` keeps the connector's default quota (500 document writes/s).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
use idbridge_core::journal::{self, Operation};
use idbridge_core::{CallContext, Connector};
use idbridge_gcp::{FirestoreConfig, FirestoreConnector};
use idbridge_mock_clouds::{Emulator, EmulatorKind};

/// Arguments of `idbridge bench gcp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices to register.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u64,
    /// Documents per batchWrite (at most 500).
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Batch calls in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Keep the connector's default quota (500 writes/s) instead of running unpaced.
    #[arg(long)]
    pub paced: bool,
}

/// Runs the benchmark and prints one JSON line.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let t_gen = Instant::now();
    let identities = super::certificates(args.devices)?;
    let gen_secs = t_gen.elapsed().as_secs_f64();

    let t_emu = Instant::now();
    let emulator = tokio::task::spawn_blocking(|| {
        Emulator::start(EmulatorKind::Firestore, Duration::from_secs(180))
    })
    .await??;
    let emulator_secs = t_emu.elapsed().as_secs_f64();

    let mut cfg = FirestoreConfig::new("bench");
    cfg.endpoint_url = Some(emulator.url());
    cfg.allow_http = true;
    cfg.emulator_admin = Some(true);
    cfg.batch_size = args.batch_size;
    let connector: Arc<dyn Connector> = Arc::new(FirestoreConnector::new("bench", cfg)?);
    connector.health_check(&CallContext::unpaced()).await?;

    let dir =
        std::env::temp_dir().join(format!("idbridge-bench-gcp-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let journal = journal::open(&format!("sqlite:{}", dir.join("journal.sqlite").display()))?;
    let mut opts = EngineOptions {
        concurrency: args.concurrency.max(1),
        attempt_timeout: Duration::from_secs(120),
        ..EngineOptions::default()
    };
    if !args.paced {
        // A rate of 0 is not enforced: replace the connector's quotas by unlimited ones.
        opts.quotas = connector
            .info()
            .quotas
            .into_iter()
            .map(|q| idbridge_core::Quota::new(q.api, 0.0))
            .collect();
    }
    let engine = Engine::new(connector, journal, opts);
    let cpu_before = super::cpu_seconds();
    let started = Instant::now();
    let report = engine
        .execute(
            Operation::Provision,
            "bench",
            identities,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, super::cpu_seconds()) {
        (Some(a), Some(b)) => Some(round(b - a)),
        _ => None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    drop(emulator);
    let n = args.devices as f64;
    let out = serde_json::json!({
        "bench": "gcp",
        "target": "gcp-firestore (Firestore emulator)",
        "devices": args.devices,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "paced": args.paced,
        "created": report.counts.done,
        "failed": report.counts.failed,
        "wall_secs": round(wall),
        "devices_per_sec": round(n / wall),
        "idbridge_cpu_secs": cpu,
        "emulator_start_secs": round(emulator_secs),
        "generate_secs": round(gen_secs),
        "peak_rss_mib": super::peak_rss_mib().map(round),
    });
    println!("{out}");
    Ok(if report.all_done() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
