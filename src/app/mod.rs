//! The application layer: the one home of what every front end does with idbridge — load the
//! configuration (`${VAR}` secrets), build a target's connector and engine, open the journal,
//! read and judge inputs (verdicts → refusals), run or resume a provision/deprovision job with a
//! progress callback, and summarise its report.
//!
//! The CLI (`src/cmd/*`), the interop receiver (`idbridge serve`), the registration service
//! (`idbridge serve` with the service enabled) and embedding programs call this module; they only translate their
//! arguments or requests into its calls and its results into their output.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use idbridge::app::{self, EngineOverrides, TargetRun};
//! use idbridge_core::engine::NoProgress;
//! use idbridge_core::journal::Operation;
//!
//! let config = app::Config::load(None)?;
//! let run = TargetRun::open(&config, "demo", None, &EngineOverrides::default()).await?;
//! let inputs = app::read_inputs(vec!["reel.7z".into()], Default::default(), false).await?;
//! let report = run.run_job(Operation::Provision, inputs.devices, &NoProgress).await?;
//! println!("{:?}", app::Summary::of(Some(&report), &inputs.refused));
//! # Ok(()) }
//! ```

pub mod config;
pub mod inputs;
pub mod job;
pub mod metrics;
pub mod observe;
pub mod report;
pub mod resume;
pub mod targets;

pub use config::{Config, DEFAULT_JOURNAL, DEMO, EngineSection, TargetConfig};
pub use inputs::{Inputs, Refused, StreamedInputs, Tally, judge, read_inputs, stream_inputs};
pub use job::{EngineOverrides, ProgressFn, TargetRun, journal_url, open_journal};
pub use report::Summary;
