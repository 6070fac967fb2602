//! `idbridge bench latency`: a reel into a mock cloud that answers every call after an injected
//! latency (fixed ± jitter, seeded), at a raised quota, through idbridge's engine and a SQLite
//! journal as `idbridge provision` runs it.
//!
//! Per target and latency it reports the wall time against the floor the quota sets, the
//! throttled answers the mock counted (429 / ThrottlingException) and the retries the engine
//! made. The goal (issue 15): within 105% of the floor with no throttle a retry had to absorb.
//!
//! Targets and their raised quotas (mock and connector configured alike):
//! - `aws`: mock AWS IoT with AWS's default quotas, RegisterCertificateWithoutCA and
//!   AttachPolicy raised to `--rate`/s (AttachPolicy's default of 15/s would otherwise set the
//!   floor); floor = devices / rate.
//! - `azure-hub`: IoT Hub bulk registry (100 devices a call), `--rate` devices/s;
//!   floor = (devices - burst) / rate.
//! - `dps`: DPS bulk enrollments (10 a call), `--rate` devices/s; same floor.
//!
//! The mocks run in-process (so "CPU-s" includes the mock's own work).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use idbridge_core::engine::{Engine, EngineOptions, Progress};
use idbridge_core::journal::{self, Operation};
use idbridge_core::{Connector, DeviceIdentity, Source};
use idbridge_mock_clouds::{LatencyConfig, TestPki};

/// Arguments of `idbridge bench latency`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices in the reel.
    #[arg(long, default_value_t = 4000)]
    devices: u64,
    /// Targets (repeatable): aws, azure-hub, dps.
    #[arg(long = "target", default_values_t = ["aws".to_owned(), "azure-hub".to_owned(), "dps".to_owned()])]
    targets: Vec<String>,
    /// Injected latencies in milliseconds (repeatable).
    #[arg(long = "latency", default_values_t = [0u64, 20, 50, 100])]
    latencies: Vec<u64>,
    /// Jitter as a percentage of the latency (uniform, either way).
    #[arg(long, default_value_t = 40)]
    jitter_percent: u64,
    /// Seed of the mock's latency generator.
    #[arg(long, default_value_t = 15)]
    seed: u64,
    /// The raised quota, devices per second (see the module docs for which APIs).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Engine concurrency (calls in flight); 0 keeps the engine's default.
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
}

/// Runs the benchmark; prints one line per run.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    println!(
        "bench latency: {} devices, quota {}/s, jitter ±{}%, seed {}; load average {}; build {}",
        args.devices,
        args.rate,
        args.jitter_percent,
        args.seed,
        super::load_average(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>7} {:>7}",
        "target",
        "latency",
        "devices",
        "wall s",
        "floor s",
        "% floor",
        "throttled",
        "retries",
        "failed",
        "CPU-s"
    );
    let mut all_ok = true;
    for target in &args.targets {
        let devices = generate(args.devices)?;
        for &ms in &args.latencies {
            let latency = LatencyConfig::new(ms, ms * args.jitter_percent / 100, args.seed);
            let r = one(target, devices.clone(), latency, &args).await?;
            all_ok &= r.failed == 0;
            println!(
                "{:<10} {:>5} ms {:>8} {:>8.1} {:>8.1} {:>8.1}% {:>10} {:>8} {:>7} {:>7.1} (load {})",
                target,
                ms,
                args.devices,
                r.wall,
                r.floor,
                100.0 * r.wall / r.floor,
                r.throttled,
                r.retries,
                r.failed,
                r.cpu,
                super::load_average()
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Outcome {
    wall: f64,
    floor: f64,
    throttled: u64,
    retries: u64,
    failed: u64,
    cpu: f64,
}

/// Counts the devices the engine had to retry.
struct Retries(AtomicU64);

impl Progress for Retries {
    fn retrying(&self, devices: usize, _error: &idbridge_core::Error, _delay: Duration) {
        self.0.fetch_add(devices as u64, Ordering::Relaxed);
    }
}

async fn one(
    target: &str,
    devices: Vec<DeviceIdentity>,
    latency: LatencyConfig,
    args: &Args,
) -> anyhow::Result<Outcome> {
    let n = devices.len() as f64;
    let ca_path = std::env::temp_dir().join(format!(
        "idbridge-bench-latency-{}-{target}.pem",
        std::process::id()
    ));
    // The mock is kept alive (and its counters read) through this closure's result.
    let (connector, floor, throttled): (Arc<dyn Connector>, f64, Box<dyn Fn() -> u64>) =
        match target {
            #[cfg(feature = "aws-iot")]
            "aws" => {
                use idbridge_aws_iot::{AwsIot, AwsIotConfig};
                use idbridge_mock_clouds::aws::{
                    AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
                };
                let raised = ["RegisterCertificateWithoutCA", "AttachPolicy"];
                let mut mock_cfg = AwsMockConfig::default().with_default_quotas();
                for api in raised {
                    mock_cfg.quotas.insert(api.to_owned(), args.rate);
                }
                let mock = MockAws::start(mock_cfg).await?;
                let mut cfg = AwsIotConfig {
                    region: Some(mock.region().to_owned()),
                    endpoint_url: Some(mock.endpoint_url().to_owned()),
                    allow_http: true,
                    create_policy: true,
                    ..Default::default()
                };
                for api in raised {
                    cfg.quotas.insert(api.to_owned(), args.rate);
                }
                let c = AwsIot::connect_with_static_credentials(
                    cfg,
                    TEST_ACCESS_KEY_ID,
                    TEST_SECRET_ACCESS_KEY,
                )
                .await?;
                // The policy check and creation happen once, before the timed run.
                c.health_check(&idbridge_core::CallContext::unpaced())
                    .await
                    .ok();
                mock.latency().set(latency);
                let mock = Arc::new(mock);
                (
                    Arc::new(c),
                    n / args.rate,
                    Box::new(move || mock.throttled()),
                )
            }
            #[cfg(feature = "azure")]
            "azure-hub" | "dps" => {
                use idbridge_azure::{AzureConfig, DpsConnector, IotHubConnector};
                use idbridge_mock_clouds::azure::{AzureMock, AzureMockConfig};
                use secrecy::SecretString;
                let per_minute = args.rate * 60.0;
                let hub = target == "azure-hub";
                let mut mock_cfg = AzureMockConfig::default();
                if hub {
                    mock_cfg.hub_ops_per_minute = Some(per_minute);
                } else {
                    mock_cfg.dps_ops_per_minute = Some(per_minute);
                }
                let mock = AzureMock::start(mock_cfg).await?;
                std::fs::write(&ca_path, mock.ca_pem()).context("writing the mock CA")?;
                let mut cfg = AzureConfig {
                    ca_file: Some(ca_path.clone()),
                    operations_per_minute: Some(per_minute),
                    ..Default::default()
                };
                let c: Arc<dyn Connector> = if hub {
                    cfg.kind = Some("azure-iot-hub".into());
                    cfg.connection_string = Some(SecretString::from(mock.hub_connection_string()));
                    mock.hub_latency().set(latency);
                    Arc::new(IotHubConnector::new(&cfg)?)
                } else {
                    cfg.kind = Some("azure-dps".into());
                    cfg.connection_string = Some(SecretString::from(mock.dps_connection_string()));
                    mock.dps_latency().set(latency);
                    Arc::new(DpsConnector::new(&cfg)?)
                };
                let burst = c.info().quotas.first().map_or(0.0, |q| f64::from(q.burst));
                let mock = Arc::new(mock);
                let floor = (n - burst).max(1.0) / args.rate;
                (
                    c,
                    floor,
                    Box::new(move || {
                        if hub {
                            mock.hub().stats().throttled
                        } else {
                            mock.dps().stats().throttled
                        }
                    }),
                )
            }
            other => anyhow::bail!(
                "--target {other:?}: one of aws, azure-hub, dps (in a build with its feature)"
            ),
        };
    let journal_path = std::env::temp_dir().join(format!(
        "idbridge-bench-latency-{}-{target}.sqlite",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&journal_path);
    let journal = journal::open(&format!("sqlite:{}", journal_path.display()))?;
    let mut opts = EngineOptions::default();
    if args.concurrency > 0 {
        opts.concurrency = args.concurrency;
    }
    let engine = Engine::new(connector, journal, opts);
    let retries = Retries(AtomicU64::new(0));
    let cpu0 = super::cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let report = engine
        .execute(
            Operation::Provision,
            "bench-latency",
            devices,
            serde_json::json!({}),
            &retries,
        )
        .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = super::cpu_seconds().unwrap_or(0.0) - cpu0;
    let _ = std::fs::remove_file(&ca_path);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", journal_path.display()));
    }
    Ok(Outcome {
        wall,
        floor,
        throttled: throttled(),
        retries: retries.0.load(Ordering::Relaxed),
        failed: report.counts.total() - report.counts.done,
        cpu,
    })
}

/// `n` Infineon-shaped devices with distinct CNs (DPS registration ids come from the CN).
fn generate(n: u64) -> anyhow::Result<Vec<DeviceIdentity>> {
    let pki = TestPki::infineon_like()?;
    (0..n)
        .map(|i| {
            let d = pki.device_with_cn(i, &format!("{i:064x}"))?;
            let source = Source {
                file: "bench".into(),
                line: None,
                entry: Some(i),
            };
            let mut id = DeviceIdentity::from_der(Arc::<[u8]>::from(d.cert_der), source)?;
            id.vendor.vendor = Some("infineon".into());
            Ok(id)
        })
        .collect()
}
