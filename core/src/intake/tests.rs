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
