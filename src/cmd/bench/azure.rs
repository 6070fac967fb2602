//! `idbridge bench azure`: devices into the IoT Hub or DPS mock through the Azure connectors.
//!
//! Throttled run (default): an S1 hub with `--units` units (100 registry operations/min/unit,
//! each device of a bulk call counted, as the mock counts), optionally scaled by
//! `--quota-scale` for a shorter run; reports the wall time against the floor the quota sets
//! (`(devices - burst) / rate`: one full bucket, then the sustained rate) and the 429s the mock
//! answered. `--unthrottled`: no quota anywhere; reports devices/s.
//!
//! `--driver engine` (default) runs the job through idbridge's engine (its pacer, retry loop
//! and a SQLite journal in a temporary directory), as `idbridge provision` does; `--driver
//! own` paces with a plain token bucket (the connector's declared quota, full at start) and
//! runs `--concurrency` batch calls at once, without a journal.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use futures::StreamExt;
use idbridge_azure::{AzureConfig, DpsConnector, IotHubConnector};
use idbridge_core::connector::Pacer;
use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
use idbridge_core::journal::{self, Operation};
use idbridge_core::{CallContext, Connector, DeviceIdentity, RegisterOutcome, Source};
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::azure::{AzureMock, AzureMockConfig};
use secrecy::SecretString;

/// Which Azure service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// IoT Hub registry (bulk 100).
    IotHub,
    /// DPS individual enrollments (bulk 10).
    Dps,
}

/// Arguments of `idbridge bench azure`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which service.
    #[arg(long, value_enum, default_value = "iot-hub")]
    pub service: Service,
    /// Devices to register.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u64,
    /// IoT Hub S1 units (100 registry operations/min each).
    #[arg(long, default_value_t = 10)]
    pub units: u32,
    /// Multiplies the quota (mock and connector alike) for a shorter run.
    #[arg(long, default_value_t = 1.0)]
    pub quota_scale: f64,
    /// No quota: measure raw devices/s.
    #[arg(long)]
    pub unthrottled: bool,
    /// Batch calls in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// What drives the connector.
    #[arg(long, value_enum, default_value = "engine")]
    pub driver: Driver,
}

/// What drives the connector in the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// idbridge's engine with a journal, as `idbridge provision`.
    Engine,
    /// A plain token bucket and concurrent batch calls.
    Own,
}

/// Runs the benchmark and prints one JSON line.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let t_gen = Instant::now();
    let identities = generate(args.service, args.devices)?;
    let gen_secs = t_gen.elapsed().as_secs_f64();

    let per_minute = match args.service {
        Service::IotHub => 100.0 * f64::from(args.units.max(1)),
        Service::Dps => 1000.0,
    } * args.quota_scale;
    let mut mock_cfg = AzureMockConfig::default();
    if !args.unthrottled {
        match args.service {
            Service::IotHub => mock_cfg.hub_ops_per_minute = Some(per_minute),
            Service::Dps => mock_cfg.dps_ops_per_minute = Some(per_minute),
        }
    }
    let mock = AzureMock::start(mock_cfg).await?;
    let ca_path =
        std::env::temp_dir().join(format!("idbridge-bench-azure-{}.pem", std::process::id()));
    std::fs::write(&ca_path, mock.ca_pem()).context("writing the mock CA")?;
    let mut cfg = AzureConfig {
        ca_file: Some(ca_path.clone()),
        operations_per_minute: Some(per_minute),
        ..Default::default()
    };
    let connector: Arc<dyn Connector> = match args.service {
        Service::IotHub => {
            cfg.kind = Some("azure-iot-hub".into());
            cfg.connection_string = Some(SecretString::from(mock.hub_connection_string()));
            Arc::new(IotHubConnector::new(&cfg)?)
        }
        Service::Dps => {
            cfg.kind = Some("azure-dps".into());
            cfg.connection_string = Some(SecretString::from(mock.dps_connection_string()));
            Arc::new(DpsConnector::new(&cfg)?)
        }
    };
    let info = connector.info();
    let quota = info.quotas[0].clone();
    let batch = info.max_batch_size;
    let started = Instant::now();
    let (created, failed, retried_calls) = match args.driver {
        Driver::Engine => run_engine(Arc::clone(&connector), identities, &args).await?,
        Driver::Own => run_own(Arc::clone(&connector), identities, &args, &quota, batch).await,
    };
    let wall = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&ca_path);
    let stats = match args.service {
        Service::IotHub => mock.hub().stats(),
        Service::Dps => mock.dps().stats(),
    };
    let n = args.devices as f64;
    let rate = quota.per_second;
    let burst = f64::from(quota.burst);
    let floor = ((n - burst).max(0.0)) / rate;
    let report = serde_json::json!({
        "bench": "azure",
        "service": format!("{:?}", args.service),
        "devices": args.devices,
        "batch_size": batch,
        "concurrency": args.concurrency,
        "unthrottled": args.unthrottled,
        "quota_per_minute": if args.unthrottled { None } else { Some(per_minute) },
        "quota_scale": args.quota_scale,
        "created": created,
        "failed": failed,
        "wall_secs": round(wall),
        "devices_per_sec": round(n / wall),
        "floor_secs": if args.unthrottled { None } else { Some(round(floor)) },
        "wall_vs_floor_pct": if args.unthrottled { None } else { Some(round(100.0 * wall / floor)) },
        "throttled_calls": stats.throttled,
        "http_requests": stats.requests,
        "driver_retries": retried_calls,
        "generate_secs": round(gen_secs),
        "driver": format!("{:?}", args.driver),
    });
    println!("{report}");
    Ok(if failed == 0 && created == args.devices {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_engine(
    connector: Arc<dyn Connector>,
    identities: Vec<DeviceIdentity>,
    args: &Args,
) -> anyhow::Result<(u64, u64, u64)> {
    let dir = std::env::temp_dir().join(format!(
        "idbridge-bench-azure-journal-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let journal = journal::open(&format!("sqlite:{}", dir.join("journal.sqlite").display()))?;
    let mut opts = EngineOptions {
        concurrency: args.concurrency.max(1),
        ..EngineOptions::default()
    };
    if args.unthrottled {
        // Replace the connector's quotas by unlimited ones (a rate of 0 is not enforced).
        opts.quotas = connector
            .info()
            .quotas
            .into_iter()
            .map(|q| idbridge_core::Quota::new(q.api, 0.0))
            .collect();
    }
    let engine = Engine::new(connector, journal, opts);
    let report = engine
        .execute(
            Operation::Provision,
            "bench",
            identities,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((report.counts.done, report.counts.failed, 0))
}

async fn run_own(
    connector: Arc<dyn Connector>,
    identities: Vec<DeviceIdentity>,
    args: &Args,
    quota: &idbridge_core::Quota,
    batch: usize,
) -> (u64, u64, u64) {
    let ctx = if args.unthrottled {
        CallContext::unpaced()
    } else {
        CallContext::paced(Arc::new(BucketPacer::new(
            &quota.api,
            quota.per_second,
            quota.burst,
        )))
    };

    let chunks: Vec<Vec<DeviceIdentity>> = identities.chunks(batch).map(<[_]>::to_vec).collect();
    let mut created = 0u64;
    let mut failed = 0u64;
    let mut retried_calls = 0u64;
    let mut pending = chunks;
    while !pending.is_empty() {
        let results: Vec<(Vec<DeviceIdentity>, anyhow::Result<Vec<RegisterOutcome>>)> =
            futures::stream::iter(pending.drain(..).map(|chunk| {
                let c = Arc::clone(&connector);
                let ctx = ctx.clone();
                async move {
                    let r = c.register(&ctx, &chunk).await.map_err(anyhow::Error::from);
                    (chunk, r)
                }
            }))
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await;
        for (chunk, r) in results {
            match r {
                Ok(outcomes) => {
                    for (o, d) in outcomes.into_iter().zip(chunk) {
                        match o {
                            RegisterOutcome::Created(_) | RegisterOutcome::AlreadyPresent(_) => {
                                created += 1
                            }
                            RegisterOutcome::Failed(e) if e.is_temporary() => {
                                retried_calls += 1;
                                tokio::time::sleep(
                                    e.retry_after().unwrap_or(Duration::from_secs(1)),
                                )
                                .await;
                                pending.push(vec![d]);
                            }
                            _ => failed += 1,
                        }
                    }
                }
                Err(e) => {
                    // Throttled or failed whole call: the driver retries it once the cloud's
                    // Retry-After passes (a correctly paced run never gets here).
                    retried_calls += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tracing::warn!(error = %e, "batch call failed; retrying");
                    pending.push(chunk);
                }
            }
        }
    }
    (created, failed, retried_calls)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Test devices: Trust M V1-like (same CN) for IoT Hub, unique CNs for DPS.
fn generate(service: Service, n: u64) -> anyhow::Result<Vec<DeviceIdentity>> {
    let pki = TestPki::infineon_like()?;
    (0..n)
        .map(|i| {
            let d = match service {
                Service::IotHub => pki.device(i)?,
                Service::Dps => pki.device_with_cn(i, &format!("{:064x}", i))?,
            };
            let source = Source {
                file: "bench".into(),
                line: None,
                entry: Some(i),
            };
            Ok(DeviceIdentity::from_der(
                Arc::<[u8]>::from(d.cert_der),
                source,
            )?)
        })
        .collect()
}

/// A token bucket per API: `burst` full at start, refilled at `per_second`.
#[derive(Debug)]
struct BucketPacer {
    api: String,
    per_second: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl BucketPacer {
    fn new(api: &str, per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        BucketPacer {
            api: api.to_owned(),
            per_second,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }
}

#[async_trait]
impl Pacer for BucketPacer {
    async fn acquire(&self, api: &str, units: u32) {
        if api != self.api {
            return;
        }
        let need = f64::from(units).min(self.burst);
        // The lock is held while waiting so callers are served in order.
        let mut s = self.state.lock().await;
        loop {
            let now = Instant::now();
            let tokens =
                (s.0 + now.duration_since(s.1).as_secs_f64() * self.per_second).min(self.burst);
            if tokens >= need {
                *s = (tokens - need, now);
                return;
            }
            *s = (tokens, now);
            let wait = (need - tokens) / self.per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}
