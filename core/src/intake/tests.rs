#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::*;

#[test]
fn reject_kinds_name_themselves_and_only_skips_are_not_failures() {
    for (k, s) in [
        (RejectKind::Invalid, "invalid"),
        (RejectKind::NotProvisionable, "not_provisionable"),
        (RejectKind::Unreadable, "unreadable"),
        (RejectKind::InputUnusable, "input_unusable"),
    ] {
        assert_eq!(k.as_str(), s);
        assert!(k.is_failure());
    }
    assert!(!RejectKind::Skipped.is_failure());
}

#[test]
fn no_input_and_missing_file_are_errors() {
    assert!(Intake::open(&[], &IntakeOptions::default()).is_err());
    let err = Intake::open(
        &[PathBuf::from("/nonexistent/x.pem")],
        &IntakeOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/x.pem: cannot open"),
        "{err}"
    );
}

#[test]
fn vendors_are_guessed_from_the_issuer() {
    assert_eq!(
        guess_vendor("C=DE, O=Infineon Technologies AG").as_deref(),
        Some("infineon")
    );
    assert_eq!(
        guess_vendor("O=Microchip Technology Inc").as_deref(),
        Some("microchip")
    );
    assert_eq!(guess_vendor("CN=x"), None);
}

fn real_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/real")
}

/// Every item of the whole real-fixture tree (valid, invalid, duplicates, unreadable entries,
/// manifests with several keys per entry), on `workers` threads in chunks of `chunk`.
fn everything(workers: usize, chunk: usize) -> Vec<std::result::Result<Checked, Rejected>> {
    let opts = IntakeOptions {
        slot: Slot::All,
        ..IntakeOptions::default()
    };
    let mut intake = Intake::open(&[real_fixtures()], &opts)
        .unwrap()
        .with_workers(workers);
    intake.chunk = chunk;
    intake.collect()
}

#[test]
fn the_pool_yields_exactly_what_one_thread_does_in_the_same_order() {
    let serial = everything(1, 1);
    assert!(serial.len() > 600, "{} items", serial.len());
    assert!(serial.iter().any(|i| i.is_err()), "some rejected entries");
    assert!(
        serial
            .iter()
            .any(|i| matches!(i, Ok(c) if !c.verdict.is_valid())),
        "some invalid certificates"
    );
    for (workers, chunk) in [(2, 64), (4, 1), (3, 7), (8, 1000)] {
        let pooled = everything(workers, chunk);
        assert_eq!(
            pooled.len(),
            serial.len(),
            "workers {workers} chunk {chunk}"
        );
        for (i, (a, b)) in serial.iter().zip(&pooled).enumerate() {
            assert_eq!(a, b, "item {i}, workers {workers} chunk {chunk}");
        }
    }
}

#[test]
fn dropping_a_pooled_intake_early_stops_it() {
    let opts = IntakeOptions {
        slot: Slot::All,
        ..IntakeOptions::default()
    };
    for _ in 0..20 {
        let mut intake = Intake::open(&[real_fixtures()], &opts)
            .unwrap()
            .with_workers(2);
        intake.chunk = 2;
        assert_eq!(intake.by_ref().take(5).count(), 5);
        drop(intake);
    }
    let intake = Intake::open(&[real_fixtures()], &opts)
        .unwrap()
        .with_workers(0);
    assert!(intake.workers() >= 1);
}
