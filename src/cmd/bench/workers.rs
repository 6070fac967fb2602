//! `idbridge bench workers`: many worker processes on one real PostgreSQL (started here with
//! initdb + pg_ctl, fsync on). 10 targets × 4,000 devices into unthrottled in-process mock
//! clouds, queued as one job per target; devices/s with 1, 2 and 4 `idbridge worker` processes
//! (each with `--jobs` slots), every device checked registered once. Then the takeover: a
//! worker is `kill -9`'d mid-job and the time until another worker resumes that job is
//! measured (lease TTL + one poll, by design).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use idbridge_core::DeviceIdentity;
use idbridge_core::journal::{self, JobSpec, JobState, Operation};
use idbridge_local_postgres::{LocalPostgres, Options};
use idbridge_mock_clouds::{Registry, RegistryConfig};

/// Arguments of `idbridge bench workers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Targets (one mock cloud and one job each).
    #[arg(long, default_value_t = 10)]
    targets: usize,
    /// Devices per target.
    #[arg(long, default_value_t = 4000)]
    devices: u64,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Job slots per worker.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Lease TTL (seconds) of the takeover measurement.
    #[arg(long, default_value_t = 5.0)]
    lease_ttl: f64,
}

const TOKEN: &str = "bench-token";

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.targets > 0 && args.devices > 0, "nothing to do");
    let total = args.devices * args.targets as u64;
    eprintln!("generating {total} certificates ...");
    // Signed by a test CA the workers trust: a worker verifies every stored certificate of
    // the job it claims against the `[trust]` of its config.
    let pki = idbridge_mock_clouds::TestPki::infineon_like()?;
    let trust_pem = format!("{}{}", pki.root_pem(), pki.ca_pem());
    let all = {
        let (devices, _) = pki.batch(1, total)?;
        devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                DeviceIdentity::from_der(
                    d.cert_der,
                    idbridge_core::Source {
                        file: "bench".into(),
                        line: None,
                        entry: Some(i as u64),
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let per_target: Vec<Vec<DeviceIdentity>> = all
        .chunks(usize::try_from(args.devices)?)
        .map(<[DeviceIdentity]>::to_vec)
        .collect();
    let pg = tokio::task::spawn_blocking(|| {
        LocalPostgres::start_with(Options {
            fsync: true,
            ..Options::default()
        })
    })
    .await?
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile_dir()?;
    let exe = std::env::current_exe()?;
    let mut runs = Vec::new();
    for &n in &args.workers {
        let (url, registries, _servers) = setup(&pg, &dir, &per_target, &trust_pem).await?;
        eprintln!("{n} worker(s) ...");
        let t0 = Instant::now();
        let mut children: Vec<Child> = (0..n)
            .map(|i| {
                worker(
                    &exe,
                    &dir,
                    &url,
                    args.jobs,
                    30.0,
                    &format!("bench-{n}-{i}"),
                    true,
                )
                .map(|(c, _)| c)
            })
            .collect::<anyhow::Result<_>>()?;
        for c in &mut children {
            let status = c.wait()?;
            anyhow::ensure!(status.success(), "a worker failed: {status}");
        }
        let secs = t0.elapsed().as_secs_f64();
        let created: u64 = registries.iter().map(|r| r.stats().creates).sum();
        let dup: u64 = registries
            .iter()
            .map(|r| r.stats().duplicates_refused)
            .sum();
        anyhow::ensure!(
            created == total,
            "{created} of {total} devices registered with {n} workers"
        );
        finished_jobs(&url, args.targets).await?;
        runs.push(serde_json::json!({
            "workers": n,
            "slots_per_worker": args.jobs,
            "seconds": (secs * 100.0).round() / 100.0,
            "devices_per_second": (total as f64 / secs).round(),
            "duplicates_refused": dup,
        }));
        eprintln!("  {:.0} devices/s", total as f64 / secs);
    }

    // Takeover: one job on one target, its worker killed mid-job, another resumes it.
    let (url, registries, _servers) = setup(&pg, &dir, &per_target[..1], &trust_pem).await?;
    let (mut a, a_lines) = worker(&exe, &dir, &url, 1, args.lease_ttl, "victim", false)?;
    wait_line(&a_lines, "claimed job", Duration::from_secs(120))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill()?;
    let killed = Instant::now();
    a.wait()?;
    let (mut b, b_lines) = worker(&exe, &dir, &url, 1, args.lease_ttl, "heir", true)?;
    wait_line(&b_lines, "claimed job", Duration::from_secs(300))?;
    let resumed = killed.elapsed().as_secs_f64();
    b.wait()?;
    let created = registries[0].stats().creates;
    anyhow::ensure!(
        created == args.devices,
        "takeover: {created} of {} registered",
        args.devices
    );
    let result = serde_json::json!({
        "bench": "workers",
        "targets": args.targets,
        "devices_per_target": args.devices,
        "postgres": "local, fsync on",
        "runs": runs,
        "takeover": {
            "lease_ttl_seconds": args.lease_ttl,
            "seconds_from_kill_to_resume": (resumed * 100.0).round() / 100.0,
            "devices_exactly_once": created == args.devices,
        },
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{result}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

type Servers = Vec<idbridge_mock_clouds::RunningServer>;

/// A fresh database with one queued job per target, fresh mock clouds, and the config.
async fn setup(
    pg: &LocalPostgres,
    dir: &Path,
    per_target: &[Vec<DeviceIdentity>],
    trust_pem: &str,
) -> anyhow::Result<(String, Vec<Registry>, Servers)> {
    let url = {
        let db = tokio::task::block_in_place(|| pg.database());
        db.map_err(|e| anyhow::anyhow!("{e}"))?
    };
    std::fs::write(dir.join("root.pem"), trust_pem)?;
    let mut config = String::from("[trust]\nanchors = [\"root.pem\"]\n");
    let mut registries = Vec::new();
    let mut servers = Vec::new();
    for i in 0..per_target.len() {
        let r = Registry::new(RegistryConfig {
            token: TOKEN.into(),
            quota: None,
        });
        let s = r.serve("127.0.0.1:0").await?;
        config.push_str(&format!(
            "[targets.t{i}]\nkind = \"mock\"\nurl = \"{}\"\nallow_http = true\ntoken = \"{TOKEN}\"\n\
             [targets.t{i}.engine]\nconcurrency = 16\n",
            s.url
        ));
        registries.push(r);
        servers.push(s);
    }
    std::fs::write(dir.join("idbridge.toml"), config)?;
    let j = journal::open(&url)?;
    for (i, devices) in per_target.iter().enumerate() {
        let spec = JobSpec::for_devices(
            Operation::Provision,
            &format!("t{i}"),
            devices.iter().map(|d| &d.device_id),
        );
        j.open_job(&spec, devices).await?;
    }
    Ok((url, registries, servers))
}

fn worker(
    exe: &Path,
    dir: &Path,
    url: &str,
    jobs: usize,
    ttl: f64,
    name: &str,
    exit_when_idle: bool,
) -> anyhow::Result<(Child, mpsc::Receiver<String>)> {
    let mut c = Command::new(exe);
    c.current_dir(dir)
        .args(["worker", "--store", url, "--poll", "0.2", "--name", name])
        .arg("--jobs")
        .arg(jobs.to_string())
        .arg("--lease-ttl")
        .arg(ttl.to_string())
        .env_remove("IDBRIDGE_LEASE_TTL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if exit_when_idle {
        c.arg("--exit-when-idle");
    }
    let mut child = c.spawn().context("cannot start a worker")?;
    let (tx, rx) = mpsc::channel();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
    }
    Ok((child, rx))
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str, limit: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = tokio::task::block_in_place(|| rx.recv_timeout(left))
            .map_err(|_| anyhow::anyhow!("no {what:?} from a worker within {limit:?}"))?;
        if line.contains(what) {
            return Ok(());
        }
    }
}

async fn finished_jobs(url: &str, n: usize) -> anyhow::Result<()> {
    let j = journal::open(url)?;
    let jobs = j.jobs().await?;
    let finished = jobs
        .iter()
        .filter(|i| i.state == JobState::Finished && i.counts.done == i.counts.total())
        .count();
    anyhow::ensure!(finished == n, "{finished} of {n} jobs finished");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("idbridge-bench-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
