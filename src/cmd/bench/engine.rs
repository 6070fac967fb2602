//! `idbridge bench engine`: the engine's own cost. 100,000 devices (by default) against a
//! connector that answers at once, with the SQLite journal on (write-ahead included: the
//! connector says its register is not idempotent), reporting devices/s and peak RSS.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
use idbridge_core::journal::{Operation, SqliteJournal};
use idbridge_core::{
    CallContext, Capabilities, Connector, DeviceId, DeviceIdentity, RegisterOutcome, RemoteDevice,
    Result,
};

/// Arguments of `idbridge bench engine`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices.
    #[arg(long, default_value_t = 100_000)]
    devices: u64,
    /// Devices per call.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Declare the connector idempotent (no write-ahead before each call).
    #[arg(long)]
    idempotent: bool,
}

/// A connector that registers instantly in memory.
#[derive(Debug, Default)]
struct Instant_ {
    idempotent: bool,
    batch: usize,
    held: Mutex<HashSet<DeviceId>>,
}

#[async_trait]
impl Connector for Instant_ {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "instant",
            max_batch_size: self.batch,
            max_deregister_batch_size: 0,
            idempotent_register: self.idempotent,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        _ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(devices
            .iter()
            .map(|d| {
                let r = RemoteDevice::named(d.device_id.short());
                if held.insert(d.device_id.clone()) {
                    RegisterOutcome::Created(r)
                } else {
                    RegisterOutcome::AlreadyPresent(r)
                }
            })
            .collect())
    }

    async fn lookup(
        &self,
        _ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(held
            .contains(&device.device_id)
            .then(|| RemoteDevice::named(device.device_id.short())))
    }

    async fn health_check(&self, _ctx: &CallContext) -> Result<()> {
        Ok(())
    }
}

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    eprintln!("generating {} certificates ...", args.devices);
    let devices = super::certificates(args.devices)?;
    let dir = tempfile_dir()?;
    let journal = Arc::new(SqliteJournal::open(dir.join("bench.sqlite"))?);
    let connector = Arc::new(Instant_ {
        idempotent: args.idempotent,
        batch: args.batch_size,
        ..Default::default()
    });
    let engine = Engine::new(
        connector.clone(),
        journal,
        EngineOptions {
            concurrency: args.concurrency,
            ..EngineOptions::default()
        },
    );
    let rss_before = super::peak_rss_mib();
    let cpu0 = super::cpu_seconds();
    let t0 = Instant::now();
    let opened = engine
        .open(
            Operation::Provision,
            "bench",
            &devices,
            serde_json::Value::Null,
        )
        .await?;
    let t_open = t0.elapsed();
    let cpu_open = super::cpu_seconds();
    let report = engine
        .run(&opened, Operation::Provision, "bench", devices, &NoProgress)
        .await?;
    let elapsed = t0.elapsed();
    let cpu1 = super::cpu_seconds();
    anyhow::ensure!(
        report.all_done(),
        "not every device is done: {:?}",
        report.counts
    );
    let held = connector.held.lock().map(|h| h.len()).unwrap_or(0);
    anyhow::ensure!(held as u64 == args.devices, "connector holds {held}");
    let rate = args.devices as f64 / elapsed.as_secs_f64();
    let result = serde_json::json!({
        "bench": "engine",
        "devices": args.devices,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "write_ahead": !args.idempotent,
        "seconds": elapsed.as_secs_f64(),
        "open_job_seconds": t_open.as_secs_f64(),
        "devices_per_second": rate.round(),
        "cpu_seconds": cpu0.zip(cpu1).map(|(a, b)| b - a),
        "open_job_cpu_seconds": cpu0.zip(cpu_open).map(|(a, b)| b - a),
        "devices_per_cpu_second": cpu0.zip(cpu1).map(|(a, b)| (args.devices as f64 / (b - a)).round()),
        "peak_rss_mib_before_job": rss_before,
        "peak_rss_mib": super::peak_rss_mib(),
    });
    println!("{result}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("idbridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
