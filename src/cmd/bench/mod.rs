//! `idbridge bench ...`: throughput and memory benchmarks (never timed tests).

use std::process::ExitCode;

#[cfg(feature = "aws-iot")]
mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod engine;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod ingest;
pub mod latency;
pub mod quota;
#[cfg(feature = "http")]
pub mod receiver;
pub mod scale;
pub mod service;
pub mod workers;

/// Arguments of `idbridge bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Engine overhead: devices/s and peak RSS against an instant connector, journal on.
    Engine(engine::Args),
    /// Quota accuracy: achieved rate and throttled calls against the mock cloud at a quota.
    Quota(quota::Args),
    /// Many `idbridge worker` processes on one real PostgreSQL: devices/s with 1, 2, 4 workers
    /// (10 targets × 4,000 devices, unthrottled mock), and the takeover time of a killed worker.
    Workers(workers::Args),
    /// Import + verification throughput and peak RSS on 100k/1M synthetic devices, beside
    /// `openssl speed`.
    Ingest(ingest::Args),
    /// A 4,000-device reel into mock AWS IoT, IoT Hub and DPS answering after an injected
    /// latency (0/20/50/100 ms ± jitter) at a raised quota: wall time against the quota floor.
    Latency(latency::Args),
    /// Generated devices through `inspect`, `provision` into the mock cloud, `status` and
    /// `deprovision`, each a child process: wall time, CPU-s and peak RSS of each.
    Scale(scale::Args),
    /// `idbridge serve` throughput: certificates/s and p50/p99 latency per request for
    /// batches of 1, 100 and 4,000 into the unthrottled in-process mock cloud.
    #[cfg(feature = "http")]
    Receiver(receiver::Args),
    /// The registration service: REELS reels × DEVICES bound at once in automatic mode into
    /// the unthrottled mock cloud; binds/s, time to provisioned, the service's peak RSS.
    Service(service::Args),
    /// AWS IoT connector against the mock AWS IoT: a reel at the default quotas, or unthrottled.
    #[cfg(feature = "aws-iot")]
    Aws(aws::AwsArgs),
    /// The mock AWS IoT child process of `bench aws`.
    #[cfg(feature = "aws-iot")]
    #[command(hide = true)]
    AwsMock(aws::AwsMockArgs),
    /// Azure IoT Hub / DPS connectors against the Azure mocks (quota floor, devices/s).
    #[cfg(feature = "azure")]
    Azure(azure::Args),
    /// The Firestore allowlist connector into Google's Firestore emulator (started here):
    /// devices/s through the engine.
    #[cfg(feature = "gcp")]
    Gcp(gcp::Args),
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.which {
        Bench::Engine(a) => engine::run(a).await,
        Bench::Quota(a) => quota::run(a).await,
        Bench::Ingest(a) => ingest::run(a).await,
        Bench::Workers(a) => workers::run(a).await,
        Bench::Latency(a) => latency::run(a).await,
        Bench::Service(a) => service::run(a).await,
        Bench::Scale(a) => scale::run(a).await,
        #[cfg(feature = "http")]
        Bench::Receiver(a) => receiver::run(a).await,
        #[cfg(feature = "aws-iot")]
        Bench::Aws(a) => aws::run(a).await,
        #[cfg(feature = "aws-iot")]
        Bench::AwsMock(a) => aws::run_mock(a).await,
        #[cfg(feature = "azure")]
        Bench::Azure(a) => azure::run(a).await,
        #[cfg(feature = "gcp")]
        Bench::Gcp(a) => gcp::run(a).await,
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_mib_of("self")
}

/// Peak RSS in MiB of process `pid` (`self` or a number), if known.
pub fn peak_rss_mib_of(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds (user + system) this process used so far (Linux `/proc/self/stat`), if known.
/// On a shared machine this, not wall time, measures the engine's cost.
pub fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// CPU seconds (user + system) of process `pid` (`self` or a number), if known.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1/5/15-minute load averages (Linux `/proc/loadavg`), to print beside every figure: the
/// machine is shared, so a figure means little without the load it was taken under.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `n` distinct certificates (one key, distinct serials and names), fast to make.
pub fn certificates(n: u64) -> anyhow::Result<Vec<idbridge_core::DeviceIdentity>> {
    use idbridge_core::{DeviceIdentity, Source};
    let key = rcgen::KeyPair::generate()?;
    let mut out = Vec::with_capacity(usize::try_from(n)?);
    for i in 0..n {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Infineon IoT Node");
        let mut serial = vec![0x1f];
        serial.extend_from_slice(&i.to_be_bytes());
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = p.self_signed(&key)?;
        out.push(DeviceIdentity::from_der(
            cert.der().to_vec(),
            Source {
                file: "bench".into(),
                line: None,
                entry: Some(i),
            },
        )?);
    }
    Ok(out)
}
