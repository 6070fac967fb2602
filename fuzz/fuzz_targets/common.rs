//! Shared by every target: run one format over the input through the whole intake (import,
//! JWS and chain verification) and drain it. Any panic is a bug.
#![allow(dead_code)] // each target uses part of this module

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use idbridge_core::intake::{Format, Intake, IntakeOptions, Limits, Slot};
use idbridge_core::trust::{TrustOptions, Verifier};

pub fn verifier() -> Arc<Verifier> {
    static V: OnceLock<Arc<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        Arc::new(Verifier::from_options(&TrustOptions::default()).expect("built-in store"))
    })
    .clone()
}

pub fn run(format: Format, data: &[u8]) {
    // Small bounds: the fuzzer must not find "allocates the declared 4 GiB".
    let opts = IntakeOptions {
        slot: Slot::All,
        limits: Limits {
            max_archive_entries: 1_000,
            max_decompressed: 8 << 20,
            max_entry: 1 << 20,
            max_archive_file: 8 << 20,
            max_line: 64 << 10,
        },
        ..IntakeOptions::default()
    };
    let intake = Intake::from_reader(
        Box::new(Cursor::new(data.to_vec())),
        "fuzz-input",
        format,
        &opts,
        verifier(),
    );
    for item in intake.take(10_000) {
        let _ = item.map(|c| c.verdict.to_string()).map_err(|r| r.to_string());
    }
}
