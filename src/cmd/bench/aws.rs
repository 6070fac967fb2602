//! `idbridge bench aws`: the AWS IoT connector against the mock AWS IoT, over a socket.
//!
//! The mock runs in a child process (`idbridge bench aws-mock`), so the CPU figure is the
//! client's alone (engine, journal, connector, SDK, SigV4, pacing). `--driver engine` (default)
//! runs idbridge's engine with a SQLite journal, as `idbridge provision` does; `--driver own` is a
//! minimal driver (per-API smooth token buckets at the connector's quotas, a concurrency limit,
//! retry of temporary failures) that isolates the connector's cost. It reports wall time against
//! the floor set by the slowest quota, and the throttled calls the mock itself counted.

use std::collections::HashMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use idbridge_aws_iot::{AwsIot, AwsIotConfig};
use idbridge_core::connector::Pacer;
use idbridge_core::{CallContext, Connector, DeviceIdentity, ErrorKind, RegisterOutcome, Source};
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::aws::{StandaloneOptions, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Arguments of `idbridge bench aws`.
#[derive(Debug, clap::Args)]
pub struct AwsArgs {
    /// Devices in the reel.
    #[arg(long, default_value_t = 4000)]
    devices: u64,
    /// No quotas in the mock and no pacing: raw devices/s and CPU per device.
    #[arg(long)]
    unthrottled: bool,
    /// Devices in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// `engine` (idbridge's engine and journal) or `own` (the bench's minimal driver).
    #[arg(long, default_value = "engine")]
    driver: String,
}

/// Arguments of the hidden `idbridge bench aws-mock` (the bench's child process).
#[derive(Debug, clap::Args)]
pub struct AwsMockArgs {
    /// Control-plane listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Enforce AWS's default quotas.
    #[arg(long)]
    default_quotas: bool,
}

/// Runs the mock for the bench.
pub async fn run_mock(args: AwsMockArgs) -> anyhow::Result<ExitCode> {
    idbridge_mock_clouds::aws::run_standalone(StandaloneOptions {
        listen: args.listen,
        device_listen: "127.0.0.1:0".to_owned(),
        ca_file: None,
        default_quotas: args.default_quotas,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the benchmark.
pub async fn run(args: AwsArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the idbridge binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["bench", "aws-mock", "--listen", "127.0.0.1:0"]);
    if !args.unthrottled {
        cmd.arg("--default-quotas");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the mock AWS IoT child process")?;
    let stdout = child.stdout.take().context("mock stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).await?; // the URL
    line.clear();
    reader.read_line(&mut line).await?; // the details
    let info: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("mock said {line:?}"))?;
    let url = info["endpoint_url"]
        .as_str()
        .context("mock endpoint_url")?
        .to_owned();
    let region = info["region"].as_str().context("mock region")?.to_owned();

    eprintln!("generating {} devices ...", args.devices);
    let pki = TestPki::infineon_like()?;
    let mut devices = Vec::with_capacity(args.devices as usize);
    for s in 1..=args.devices {
        let d = pki.device(s)?;
        let mut id = DeviceIdentity::from_der(d.cert_der, Source::default())?;
        id.vendor.vendor = Some("infineon".into());
        devices.push(id);
    }
    let cfg = AwsIotConfig {
        region: Some(region),
        endpoint_url: Some(url.clone()),
        allow_http: true,
        create_policy: true,
        ..Default::default()
    };
    let connector = Arc::new(
        AwsIot::connect_with_static_credentials(cfg, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY)
            .await?,
    );
    let ctx = if args.unthrottled {
        CallContext::unpaced()
    } else {
        let quotas = connector.info().quotas;
        CallContext::paced(Arc::new(SmoothPacer::new(
            quotas
                .iter()
                .map(|q| (q.api.clone(), q.per_second))
                .collect(),
        )))
    };
    // Warm up: the policy check and creation happen once, outside the timed run.
    connector.health_check(&ctx).await.ok();

    let throttled = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let failed = match args.driver.as_str() {
        "engine" => {
            run_engine(
                Arc::clone(&connector) as Arc<dyn Connector>,
                devices,
                args.concurrency,
                args.unthrottled,
                &retried,
            )
            .await?
        }
        "own" => {
            run_own(
                Arc::clone(&connector),
                ctx,
                devices,
                args.concurrency,
                Arc::clone(&throttled),
                Arc::clone(&retried),
            )
            .await
        }
        other => anyhow::bail!("--driver {other:?}: engine or own"),
    };
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let n = args.devices as f64;
    let mut report = serde_json::json!({
        "bench": "aws",
        "devices": args.devices,
        "failed": failed,
        "concurrency": args.concurrency,
        "unthrottled": args.unthrottled,
        "wall_seconds": round(wall),
        "devices_per_second": round(n / wall),
        "api_calls_per_second": round(4.0 * n / wall),
        "client_cpu_seconds": round(cpu),
        "client_cpu_ms_per_device": round(cpu * 1000.0 / n),
        "throttled_calls_seen_by_mock": mock_throttled(&url).await.unwrap_or(-1),
        "throttled_calls_seen_by_client": throttled.load(Ordering::Relaxed),
        "retried": retried.load(Ordering::Relaxed),
        "driver": args.driver,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    if !args.unthrottled {
        let floor = n / 10.0;
        report["floor_seconds"] = serde_json::json!(floor);
        report["percent_of_floor"] = serde_json::json!(round(100.0 * wall / floor));
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    let _ = child.kill().await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_own(
    connector: Arc<AwsIot>,
    ctx: CallContext,
    devices: Vec<DeviceIdentity>,
    concurrency: usize,
    throttled: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
) -> u64 {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for d in devices {
        let (c, ctx, sem) = (Arc::clone(&connector), ctx.clone(), Arc::clone(&sem));
        let (throttled, retried) = (Arc::clone(&throttled), Arc::clone(&retried));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            for _attempt in 0..20 {
                let out = c.register(&ctx, std::slice::from_ref(&d)).await;
                match out.map(|mut v| v.remove(0)) {
                    Ok(RegisterOutcome::Created(_) | RegisterOutcome::AlreadyPresent(_)) => {
                        return Ok(());
                    }
                    Ok(RegisterOutcome::Failed(e)) | Err(e) if e.is_temporary() => {
                        if e.kind() == ErrorKind::RateLimited {
                            throttled.fetch_add(1, Ordering::Relaxed);
                        }
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(other) => return Err(format!("{}: {other:?}", d.device_id)),
                    Err(e) => return Err(format!("{}: {e}", d.device_id)),
                }
            }
            Err(format!("{}: gave up after 20 attempts", d.device_id))
        });
    }
    let mut failed = 0u64;
    while let Some(r) = set.join_next().await {
        if let Ok(Err(e)) | Err(e) = r.map_err(|e| e.to_string()) {
            failed += 1;
            if failed <= 3 {
                eprintln!("failed: {e}");
            }
        }
    }
    failed
}

/// idbridge's engine with a fresh SQLite journal, as `idbridge provision` runs it.
async fn run_engine(
    connector: Arc<dyn Connector>,
    devices: Vec<DeviceIdentity>,
    concurrency: usize,
    unthrottled: bool,
    retried: &AtomicU64,
) -> anyhow::Result<u64> {
    use idbridge_core::engine::{Engine, EngineOptions, Progress};
    use idbridge_core::journal::{self, Operation};

    struct Count<'a>(&'a AtomicU64);
    impl Progress for Count<'_> {
        fn retrying(&self, devices: usize, _error: &idbridge_core::Error, _delay: Duration) {
            self.0.fetch_add(devices as u64, Ordering::Relaxed);
        }
    }
    let path =
        std::env::temp_dir().join(format!("idbridge-bench-aws-{}.sqlite", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let journal = journal::open(&format!("sqlite:{}", path.display()))?;
    let mut opts = EngineOptions {
        concurrency: concurrency.max(1),
        ..EngineOptions::default()
    };
    if unthrottled {
        // No quotas: every API unlimited (the mock enforces none either).
        opts.quotas = connector
            .info()
            .quotas
            .into_iter()
            .map(|mut q| {
                q.per_second = 1e9;
                q.burst = 1_000_000;
                q
            })
            .collect();
    }
    let engine = Engine::new(connector, journal, opts);
    let report = engine
        .execute(
            Operation::Provision,
            "bench-aws",
            devices,
            serde_json::json!({}),
            &Count(retried),
        )
        .await?;
    let _ = std::fs::remove_file(&path);
    Ok(report.counts.total() - report.counts.done)
}

/// The mock's own count of ThrottlingException answers (`GET /_mock/aws/stats`).
async fn mock_throttled(url: &str) -> anyhow::Result<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /_mock/aws/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body)?;
    v["throttled"].as_i64().context("no throttled count")
}

/// Per-API smooth pacing: each API's calls are spaced 1/rate apart (burst 1).
struct SmoothPacer {
    rates: HashMap<String, f64>,
    next: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
}

impl SmoothPacer {
    fn new(rates: HashMap<String, f64>) -> Self {
        SmoothPacer {
            rates,
            next: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Pacer for SmoothPacer {
    async fn acquire(&self, api: &str, units: u32) {
        let Some(rate) = self.rates.get(api).copied() else {
            return;
        };
        let at = {
            // Poisoning would only follow a panic in this block, which has no panicking calls.
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let slot = next.entry(api.to_owned()).or_insert(now);
            let at = (*slot).max(now);
            *slot = at + Duration::from_secs_f64(f64::from(units) / rate);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// User + system CPU of this process, from /proc/self/stat (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Clock ticks are 100 Hz on Linux (USER_HZ), fixed by the kernel ABI.
    (ticks(11) + ticks(12)) / 100.0
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
