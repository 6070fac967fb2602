//! `idbridge bench service`: the registration service as users run it. A real `idbridge serve`
//! child process with `[service]` on SQLite; the operator pre-populates REELS reels of DEVICES
//! generated Infineon-like devices each (`idbridge service import`, not timed); one account in
//! automatic mode binds every reel at once over HTTP; the devices land in the mock cloud
//! (unthrottled, over a socket, in this process).
//!
//! Reports binds/s (bind calls answered, each of which has started its job), the time from the
//! first bind to every device provisioned, devices/s, and the service process's peak RSS
//! (`VmHWM` of the child) and CPU seconds.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use idbridge_mock_clouds::{Registry, RegistryConfig, TestPki};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

/// Arguments of `idbridge bench service`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reels (batches) to bind.
    #[arg(long, default_value_t = 10)]
    pub reels: u64,
    /// Devices per reel.
    #[arg(long, default_value_t = 4000)]
    pub devices: u64,
}

const CLOUD_TOKEN: &str = "bench-service";

/// Runs the benchmark and prints one JSON object.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let exe = std::env::current_exe()?;
    let pki = TestPki::infineon_like()?;
    std::fs::write(
        dir.path().join("trust.pem"),
        format!("{}{}", pki.root_pem(), pki.ca_pem()),
    )?;
    let registry = Registry::new(RegistryConfig {
        token: CLOUD_TOKEN.into(),
        quota: None,
    });
    let cloud = registry.serve("127.0.0.1:0").await?;
    let config = dir.path().join("idbridge.toml");
    std::fs::write(
        &config,
        format!(
            "journal = \"sqlite:{}\"\n\n[service]\nallow_http = true\nstore = \"sqlite:service.sqlite\"\n\
             key_file = \"service.key\"\n",
            dir.path().join("journal.sqlite").display()
        ),
    )?;
    let trust = dir.path().join("trust.pem").display().to_string();
    let config_s = config.display().to_string();
    let cli = |args: Vec<String>| {
        let exe = exe.clone();
        async move {
            let out = tokio::process::Command::new(exe)
                .args(&args)
                .env_remove("IDBRIDGE_CONFIG")
                .env_remove("IDBRIDGE_JOURNAL")
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "idbridge {}: {}",
                args.first().map(String::as_str).unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };

    // Pre-population (not timed): generated reels, imported by the operator command.
    eprintln!(
        "bench service: generating and importing {} reels x {} devices ...",
        args.reels, args.devices
    );
    let t_import = Instant::now();
    for r in 0..args.reels {
        let (_, bundle) = pki.batch(1 + r * args.devices, args.devices)?;
        let file = dir.path().join(format!("reel-{r}.pem"));
        std::fs::write(&file, bundle)?;
        cli([
            "service",
            "--config",
            &config_s,
            "import",
            &file.display().to_string(),
            "--batch-id",
            "BENCH-BATCH",
            "--reel-id",
            &format!("REEL-{r:04}"),
            "--trust",
            &trust,
            "--no-builtin-roots",
        ]
        .map(str::to_owned)
        .to_vec())
        .await?;
    }
    let import_secs = t_import.elapsed().as_secs_f64();
    let token = cli([
        "service",
        "--config",
        &config_s,
        "account",
        "create",
        "bench",
        "--mode",
        "automatic",
        "--token",
        "admin",
    ]
    .map(str::to_owned)
    .to_vec())
    .await?;

    let mut child = tokio::process::Command::new(&exe)
        .args([
            "serve",
            "--config",
            &config_s,
            "--listen",
            "127.0.0.1:0",
            "--trust",
            &trust,
            "--no-builtin-roots",
        ])
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("no child pid")?;
    let stdout = child.stdout.take().context("no child stdout")?;
    let url = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .context("serve did not start within 60 s")??
    .context("serve exited before listening")?;
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{url}/api/v1/targets/cloud?default=true"))
        .bearer_auth(&token)
        .json(&json!({
            "kind": "mock", "url": cloud.url, "allow_http": true, "token": CLOUD_TOKEN,
            // Unthrottled: the mock registry enforces no quota, so the engine need not pace.
            "quota": 1_000_000.0,
        }))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "PUT target: {}", resp.status());

    // Timed: every reel bound at once; each bind answers with its started job.
    let cpu_before = child_cpu_seconds(pid);
    let t0 = Instant::now();
    let binds = (0..args.reels).map(|r| {
        let http = http.clone();
        let (url, token) = (url.clone(), token.clone());
        async move {
            let resp = http
                .post(format!("{url}/api/v1/bindings"))
                .bearer_auth(&token)
                .json(&json!({"batch_id": "BENCH-BATCH", "reel_id": format!("REEL-{r:04}")}))
                .send()
                .await?;
            let status = resp.status();
            let v: Value = resp.json().await?;
            anyhow::ensure!(status.as_u16() == 201, "bind reel {r}: {status} {v}");
            v["job"]["id"]
                .as_str()
                .map(str::to_owned)
                .context("an automatic bind answers with its job")
        }
    });
    let jobs: Vec<String> = futures::future::try_join_all(binds).await?;
    let binds_secs = t0.elapsed().as_secs_f64();
    let total = args.reels * args.devices;
    let mut per_job = Vec::new();
    for job in &jobs {
        loop {
            let v: Value = http
                .get(format!("{url}/api/v1/jobs/{job}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if v["state"] == "finished" || v["state"] == "failed" {
                anyhow::ensure!(
                    v["state"] == "finished" && v["counts"]["failed"] == 0,
                    "job {job} did not finish cleanly: {v}"
                );
                per_job.push(t0.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let all_secs = t0.elapsed().as_secs_f64();
    let landed = registry.stats().devices;
    anyhow::ensure!(
        landed == total,
        "{landed} of {total} devices in the mock cloud"
    );
    let rss = child_peak_rss_mib(pid);
    let cpu = child_cpu_seconds(pid).zip(cpu_before).map(|(a, b)| a - b);
    child.start_kill()?;
    let _ = child.wait().await;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "service",
            "reels": args.reels,
            "devices_per_reel": args.devices,
            "devices": total,
            "import_secs_untimed_setup": round(import_secs),
            "binds_secs": round(binds_secs),
            "binds_per_sec": round(args.reels as f64 / binds_secs),
            "first_reel_provisioned_secs": per_job.iter().copied().reduce(f64::min).map(round),
            "all_provisioned_secs": round(all_secs),
            "devices_per_sec": round(total as f64 / all_secs),
            "service_cpu_secs": cpu.map(round),
            "service_peak_rss_mib": rss.map(round),
            "load_average": super::load_average(),
        }))?
    );
    Ok(ExitCode::SUCCESS)
}

fn child_peak_rss_mib(pid: u32) -> Option<f64> {
    super::peak_rss_mib_of(&pid.to_string())
}

fn child_cpu_seconds(pid: u32) -> Option<f64> {
    super::cpu_seconds_of(&pid.to_string())
}
