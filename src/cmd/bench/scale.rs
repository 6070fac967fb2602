//! `idbridge bench scale`: N generated devices through `inspect`, `provision` into the mock
//! cloud, `status` (the job list, then one job's devices), `diff`, `deprovision`, and
//! `provision --enqueue` then `resume` of that job, each run as a child
//! process of this very binary, reporting its wall time, CPU seconds and peak RSS.
//!
//! The devices are P-256 leaves (a key each) signed by one generated P-256 root (passed with
//! `--trust`), all with the CN "Infineon IoT Node" and distinct serials. The mock registry runs
//! as its own process (`idbridge mock-cloud mock`), so the figures are idbridge's alone, not the
//! cloud's; the target is unthrottled (`quota` 10⁹/s), so the run measures idbridge, not a
//! quota.
//!
//! Peak RSS and CPU seconds (user + system) are the kernel's figures for the child, through GNU
//! time (`/usr/bin/time`) when the machine has it; else `VmHWM` sampled every 20 ms and the
//! times read from `/proc` once the child has exited.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};

/// Arguments of `idbridge bench scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices per run (repeatable: `--devices 100000 --devices 1000000`).
    #[arg(long = "devices", default_values_t = [100_000u64])]
    devices: Vec<u64>,
    /// Calls in flight for `provision` and `deprovision` (`--concurrency`).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Work (and keep the batch, journal and outputs) in DIR instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Runs the benchmark; prints one row per command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || bench(&args)).await?
}

fn bench(args: &Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    println!(
        "machine: {} cores available; load average at start: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        super::load_average()
    );
    println!("executable: {}", exe.display());
    for &n in &args.devices {
        let tmp;
        let dir = match &args.dir {
            Some(d) => {
                let d = d.join(format!("scale-{n}"));
                std::fs::create_dir_all(&d)?;
                d
            }
            None => {
                tmp = TempDir::new(n)?;
                tmp.0.clone()
            }
        };
        one_size(&exe, &dir, n, args.concurrency)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole sequence for `n` devices in `dir`.
fn one_size(exe: &Path, dir: &Path, n: u64, concurrency: usize) -> anyhow::Result<()> {
    let root = dir.join("root.pem");
    let batch = dir.join("batch.pem");
    let journal = dir.join("journal.sqlite");
    for stale in ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let t0 = Instant::now();
    generate(&root, &batch, n)?;
    eprintln!(
        "generated {n} certificates in {:.1} s ({} MiB of PEM)",
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&batch).map_or(0, |m| m.len()) / (1024 * 1024)
    );

    let mut mock = MockCloud::start(exe)?;
    let config = dir.join("idbridge.toml");
    std::fs::write(
        &config,
        format!(
            "journal = \"sqlite:{}\"\n\n[targets.scale]\nkind = \"mock\"\nurl = \"{}\"\n\
             allow_http = true\nquota = 1000000000\n",
            journal.display(),
            mock.url
        ),
    )?;

    let s = |p: &Path| p.display().to_string();
    let conc = concurrency.to_string();
    let common_target = [
        "--trust".to_owned(),
        s(&root),
        "--target".to_owned(),
        "scale".to_owned(),
        "--config".to_owned(),
        s(&config),
        "--concurrency".to_owned(),
        conc,
    ];
    println!(
        "\n{n} devices (work dir {}; mock cloud {} in its own process)",
        dir.display(),
        mock.url
    );
    println!(
        "{:<13} {:>9} {:>9} {:>8} {:>9} {:>10}  load (1/5/15 min)",
        "command", "devices", "wall s", "CPU-s", "peak MiB", "devices/s"
    );
    let mut steps: Vec<(&str, Vec<String>, Option<PathBuf>)> = vec![
        (
            "inspect",
            vec![
                "inspect".into(),
                s(&batch),
                "--trust".into(),
                s(&root),
                "--output".into(),
                "jsonl".into(),
            ],
            None,
        ),
        (
            "provision",
            {
                let mut a = vec!["provision".to_owned(), s(&batch)];
                a.extend(common_target.iter().cloned());
                a
            },
            None,
        ),
        (
            "status",
            vec![
                "status".into(),
                "--config".into(),
                s(&config),
                "--output".into(),
                "csv".into(),
            ],
            Some(dir.join("jobs.csv")),
        ),
    ];
    for (name, argv, out) in steps.drain(..) {
        step(exe, name, &argv, out.as_deref(), n)?;
    }
    let job = newest_job(&dir.join("jobs.csv"))?;
    step(
        exe,
        "status JOB",
        &[
            "status".into(),
            job.clone(),
            "--config".into(),
            s(&config),
            "--output".into(),
            "csv".into(),
        ],
        None,
        n,
    )?;
    let mut argv = vec!["diff".to_owned(), s(&batch)];
    argv.extend(common_target.iter().cloned());
    step(exe, "diff", &argv, None, n)?;
    let mut argv = vec!["deprovision".to_owned(), s(&batch), "--yes".to_owned()];
    argv.extend(common_target.iter().cloned());
    step(exe, "deprovision", &argv, None, n)?;

    let bytes: u64 = ["journal.sqlite", "journal.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    // A million-device job run by `resume`: recorded by `provision --enqueue`, run from the
    // journal alone.
    let mut argv = vec!["provision".to_owned(), s(&batch), "--enqueue".to_owned()];
    argv.extend(common_target.iter().cloned());
    let queued = dir.join("enqueued.txt");
    step(exe, "enqueue", &argv, Some(&queued), n)?;
    let job = std::fs::read_to_string(&queued)?.trim().to_owned();
    anyhow::ensure!(
        job.starts_with("job-"),
        "provision --enqueue printed no job id"
    );
    step(
        exe,
        "resume",
        &[
            "resume".into(),
            job,
            "--config".into(),
            s(&config),
            "--trust".into(),
            s(&root),
            "--concurrency".into(),
            concurrency.to_string(),
        ],
        None,
        n,
    )?;
    println!(
        "journal: {:.1} MiB for 2 jobs of {n} devices ({:.0} bytes per device per job); mock cloud peak RSS {}",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / (2.0 * n as f64),
        super::peak_rss_mib_of(&mock.child.id().to_string())
            .map_or_else(|| "unknown".to_owned(), |m| format!("{m:.1} MiB")),
    );
    mock.stop();
    Ok(())
}

/// Runs `exe argv` to the end, prints its row; fails when it does not exit 0.
fn step(exe: &Path, name: &str, argv: &[String], out: Option<&Path>, n: u64) -> anyhow::Result<()> {
    let out = match out {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::null(),
    };
    let err_path = std::env::temp_dir().join(format!(
        "idbridge-bench-scale-{}-{}.stderr",
        std::process::id(),
        name.replace(' ', "-")
    ));
    let err = Stdio::from(std::fs::File::create(&err_path)?);
    let m = measure(exe, argv, out, err).with_context(|| format!("running {name}"))?;
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    if !m.success {
        bail!("{name} failed: {}", stderr.trim());
    }
    println!(
        "{:<13} {:>9} {:>9.1} {:>8.1} {:>9.1} {:>10.0}  {}",
        name,
        n,
        m.wall,
        m.cpu,
        m.peak_mib,
        n as f64 / m.wall.max(1e-9),
        super::load_average()
    );
    println!("    idbridge {}", argv.join(" "));
    Ok(())
}

struct Measured {
    success: bool,
    wall: f64,
    cpu: f64,
    peak_mib: f64,
}

/// Runs `exe argv` and follows it to its end. With GNU time (`/usr/bin/time`) the child's
/// peak RSS and CPU time are the kernel's own (`wait4` rusage); without, peak RSS is `VmHWM`
/// sampled every 20 ms (a short command may be under-read) and CPU time is read from the
/// exited, not yet reaped, process.
fn measure(exe: &Path, argv: &[String], out: Stdio, err: Stdio) -> anyhow::Result<Measured> {
    let gnu_time = Path::new("/usr/bin/time");
    let times =
        std::env::temp_dir().join(format!("idbridge-bench-scale-{}.time", std::process::id()));
    let mut cmd = if gnu_time.exists() {
        let mut c = Command::new(gnu_time);
        c.arg("-o")
            .arg(&times)
            .args(["-f", "%e %U %S %M"])
            .arg(exe)
            .args(argv);
        c
    } else {
        let mut c = Command::new(exe);
        c.args(argv);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL");
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id().to_string();
    let mut peak = 0.0f64;
    let mut cpu = 0.0f64;
    loop {
        if let Some(p) = super::peak_rss_mib_of(&pid) {
            peak = peak.max(p);
        }
        let state = process_state(&pid);
        if let Some(c) = super::cpu_seconds_of(&pid) {
            cpu = c;
        }
        // A zombie keeps its CPU times but no memory figures: it has exited.
        if matches!(state, None | Some('Z' | 'X')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait()?;
    let wall = t0.elapsed().as_secs_f64();
    if gnu_time.exists() {
        let text = std::fs::read_to_string(&times).unwrap_or_default();
        let _ = std::fs::remove_file(&times);
        // GNU time writes "Command exited with non-zero status N" first on a failure.
        let f: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [_, user, sys, kib] = f[..] {
            return Ok(Measured {
                success: status.success(),
                wall,
                cpu: user + sys,
                peak_mib: kib / 1024.0,
            });
        }
    }
    Ok(Measured {
        success: status.success(),
        wall,
        cpu,
        peak_mib: peak,
    })
}

/// The state letter of process `pid` (`R`, `S`, `Z` ...), None when it is gone.
fn process_state(pid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The newest job's id in `status --output csv` (newest first, after the header).
fn newest_job(csv: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(csv)?;
    text.lines()
        .nth(1)
        .and_then(|l| l.split(',').next())
        .filter(|id| id.starts_with("job-"))
        .map(str::to_owned)
        .with_context(|| format!("no job in {}", csv.display()))
}

/// Writes the root to `root` and `n` leaves it signed to `batch`, PEM.
fn generate(root: &Path, batch: &Path, n: u64) -> anyhow::Result<()> {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "idbridge bench scale root");
    ca.distinguished_name
        .push(DnType::OrganizationName, "idbridge bench");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2054, 1, 1);
    let ca_cert = ca.self_signed(&root_key)?;
    std::fs::write(root, ca_cert.pem())?;
    let issuer = Issuer::new(ca, root_key);
    let mut w = BufWriter::new(std::fs::File::create(batch)?);
    for i in 0..n {
        // A key per device: idbridge refuses two certificates for one public key.
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "Infineon IoT Node");
        let mut serial = vec![0x1f];
        serial.extend_from_slice(&i.to_be_bytes());
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2044, 1, 1);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        let cert = p.signed_by(&leaf_key, &issuer)?;
        w.write_all(cert.pem().as_bytes())?;
    }
    w.flush()?;
    Ok(())
}

/// `idbridge mock-cloud mock` as a child process, stopped on drop.
struct MockCloud {
    child: Child,
    url: String,
}

impl MockCloud {
    fn start(exe: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(["mock-cloud", "mock", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start idbridge mock-cloud mock")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let url = line.trim().to_owned();
        if !url.starts_with("http") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("idbridge mock-cloud mock printed {url:?}, not its URL");
        }
        Ok(MockCloud { child, url })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MockCloud {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(n: u64) -> std::io::Result<Self> {
        let p =
            std::env::temp_dir().join(format!("idbridge-bench-scale-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
