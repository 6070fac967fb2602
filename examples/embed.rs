//! Embedding idbridge in another program through its application layer (`idbridge::app`), the
//! same calls the CLI makes: load `idbridge.toml` (secrets from `${VAR}`), build the connector
//! of a target table, read and verify batch files, and run a crash-safe provision job with a
//! progress callback.
//!
//! ```sh
//! # a real account: credentials from the AWS chain, [targets.aws] in idbridge.toml
//! cargo run --example embed -- --config idbridge.toml --target aws reel-42.7z
//!
//! # against the mock AWS IoT (speaks the real wire protocol, checks SigV4)
//! idbridge mock-cloud aws --listen 127.0.0.1:4566 &
//! AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 \
//!   AWS_ACCESS_KEY_ID=AKIDEXAMPLE AWS_SECRET_ACCESS_KEY=... \
//!   cargo run --example embed -- --config examples/embed.toml --target aws examples/batch.pem
//! ```
//!
//! Without `--config`, `./idbridge.toml` (then the XDG one) is used; without `--target`, the
//! built-in `demo` mock cloud.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use idbridge::app::{self, Config, EngineOverrides, ProgressFn, Summary, TargetRun};
use idbridge_core::journal::{DeviceUpdate, Operation};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config_file: Option<PathBuf> = None;
    let mut target = app::DEMO.to_owned();
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--config") => config_file = args.next().map(PathBuf::from),
            Some("--target") => {
                target = args
                    .next()
                    .and_then(|t| t.into_string().ok())
                    .unwrap_or_default()
            }
            _ => inputs.push(PathBuf::from(a)),
        }
    }
    anyhow::ensure!(
        !inputs.is_empty(),
        "usage: embed [--config FILE] [--target NAME] BATCH_FILE..."
    );

    // 1. The configuration, and the target's connector and engine over the journal.
    let config = Config::load(config_file.as_deref())?;
    let run = TargetRun::open(&config, &target, None, &EngineOverrides::default()).await?;

    // 2. Read and verify the inputs (the config's [trust] table applies). Only valid devices
    //    are sent; the others are refused with the reason.
    let opts = idbridge_core::intake::IntakeOptions {
        trust: config.trust.options()?,
        ..Default::default()
    };
    let inputs = app::read_inputs(inputs, opts, false).await?;
    for r in &inputs.refused {
        eprintln!("refused {}: {} ({})", r.source, r.reason, r.status);
    }

    // 3. Run the job with a progress callback; a rerun after a crash continues it.
    let finished = AtomicU64::new(0);
    let total = inputs.devices.len();
    let progress = ProgressFn(|u: &DeviceUpdate| {
        let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!("[{n}/{total}] {} {}", u.device_id.short(), u.state);
    });
    let report = run
        .run_job(Operation::Provision, inputs.devices, &progress)
        .await?;

    for d in &report.devices {
        println!(
            "{} {} {} {}",
            d.device_id.short(),
            d.state,
            d.outcome.map_or("", |o| o.as_str()),
            d.remote_name.as_deref().unwrap_or("")
        );
    }
    let s = Summary::of(Some(&report), &inputs.refused);
    println!(
        "job {}: {} done ({} created, {} already present), {} failed, {} refused",
        report.job_id, s.done, s.created, s.already_present, s.failed, s.refused
    );
    Ok(())
}
