//! Embedding idbridge in another program: import and verify a batch file with
//! `idbridge_core::intake`, then provision the valid devices into a target through the engine
//! and its crash-safe journal, and print each device's outcome.
//!
//! ```sh
//! cargo run --example embed -- examples/batch.pem
//! ```
//!
//! The target here is the in-process mock cloud (`idbridge-mock` with no URL), which lives as
//! long as the program; any `Arc<dyn Connector>` works the same way (point `MockConfig::url` at
//! a standalone `idbridge mock-cloud mock` to keep the cloud across runs).

use std::path::PathBuf;
use std::sync::Arc;

use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
use idbridge_core::intake::{Intake, IntakeOptions};
use idbridge_core::journal::{self, Operation};
use idbridge_mock::{MockConfig, MockConnector};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let inputs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(!inputs.is_empty(), "usage: embed BATCH_FILE...");

    // 1. Import and verify. Only valid devices are provisioned; the rest are reported.
    let mut devices = Vec::new();
    for item in Intake::open(&inputs, &IntakeOptions::default())? {
        match item {
            Ok(checked) if checked.verdict.is_valid() => devices.push(checked.identity),
            Ok(checked) => eprintln!(
                "refused {} ({}): {:?}",
                checked.identity.device_id.short(),
                checked.identity.source,
                checked.verdict
            ),
            Err(rejected) => eprintln!("skipped: {rejected}"),
        }
    }

    // 2. A target and a journal.
    let connector = Arc::new(MockConnector::new(MockConfig::default()).await?);
    let journal = journal::open("sqlite:embed-journal.sqlite")?;
    let engine = Engine::new(connector, journal, EngineOptions::default());

    // 3. One call: opens (or resumes) the job and runs it to the end.
    let report = engine
        .execute(
            Operation::Provision,
            "embedded-demo",
            devices,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await?;
    for d in &report.devices {
        println!(
            "{} {} {}",
            d.device_id.short(),
            d.state,
            d.outcome.map_or("", |o| o.as_str())
        );
    }
    println!(
        "job {}: {} done, {} failed",
        report.job_id, report.counts.done, report.counts.failed
    );
    Ok(())
}
