//! Every real vendor fixture under tests/fixtures/real, with the exact counts and verdicts.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;

use common::{only, real, run};
use idbridge_core::intake::{IntakeOptions, RejectKind, Slot, Verdict};

fn opts() -> IntakeOptions {
    IntakeOptions::default()
}

#[test]
fn cloud_id_bundle_all_slots_is_600_valid_certificates_of_200_chips() {
    let o = IntakeOptions {
        slot: Slot::All,
        ..opts()
    };
    let (ok, rejected) = run(&[real("infineon/cloud-id-bundle/manifest-infineon.7z")], &o);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(ok.len(), 600);
    assert!(
        ok.iter().all(|c| c.verdict.is_valid()),
        "{:?}",
        ok.iter().find(|c| !c.verdict.is_valid())
    );
    let chips: HashSet<_> = ok
        .iter()
        .map(|c| c.identity.vendor.chip_id.clone().unwrap())
        .collect();
    assert_eq!(chips.len(), 200);
    let ids: HashSet<_> = ok.iter().map(|c| c.identity.device_id.clone()).collect();
    assert_eq!(ids.len(), 600);
    for slot in ["E0E0", "E0E1", "E0E2"] {
        assert_eq!(
            ok.iter()
                .filter(|c| c.identity.vendor.slot.as_deref() == Some(slot))
                .count(),
            200
        );
    }
    // E0E2 chains to the RSA root, the others to ECC Root CA 2.
    for c in &ok {
        let Verdict::Valid { anchor } = &c.verdict else {
            unreachable!()
        };
        let want = if c.identity.vendor.slot.as_deref() == Some("E0E2") {
            "Infineon OPTIGA(TM) RSA Root CA 2"
        } else {
            "Infineon OPTIGA(TM) ECC Root CA 2"
        };
        assert_eq!(anchor, want);
        // The batch GUID is a secret: only its tag is kept in names and output.
        let batch = c.identity.batch.as_ref().unwrap();
        assert_eq!(batch.secret(), "b41425b9-b42b-47fd-95c2-f981b4c61561");
        assert!(
            !c.identity.source.file.contains("b41425b9"),
            "{}",
            c.identity.source.file
        );
        assert!(c.identity.source.file.contains(batch.tag()));
        assert!(
            !serde_json::to_string(&c.identity)
                .unwrap()
                .contains("b41425b9")
        );
    }
}

#[test]
fn cloud_id_bundle_default_slot_is_e0e0_and_matches_extracted_sample() {
    let (ok, rejected) = run(
        &[real("infineon/cloud-id-bundle/manifest-infineon.7z")],
        &opts(),
    );
    assert!(rejected.is_empty());
    assert_eq!(ok.len(), 200);
    assert!(
        ok.iter()
            .all(|c| c.identity.vendor.slot.as_deref() == Some("E0E0"))
    );
    let golden = ok
        .iter()
        .find(|c| c.identity.vendor.chip_id.as_deref() == Some("0A091B5C001500070063"))
        .unwrap();
    assert_eq!(
        golden.identity.device_id.as_str(),
        "45e8362a0078780ddec5633508ba6f17b2df862d70b03f43ec95e4b9e59e072c"
    );
    assert_eq!(golden.identity.serial_hex, "30309D3B");
}

#[test]
fn extracted_sample_crlf_pems_carry_chip_and_slot_from_their_names() {
    let (ok, rejected) = run(
        &[real("infineon/cloud-id-bundle/extracted-sample")],
        &opts(),
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(ok.len(), 9);
    assert!(ok.iter().all(|c| c.verdict.is_valid()));
    let c = ok
        .iter()
        .find(|c| {
            c.identity
                .source
                .file
                .ends_with("0A091B5C001500070063_E0E0.pem")
        })
        .unwrap();
    assert_eq!(
        c.identity.vendor.chip_id.as_deref(),
        Some("0A091B5C001500070063")
    );
    assert_eq!(c.identity.vendor.slot.as_deref(), Some("E0E0"));
    assert_eq!(
        c.identity.device_id.as_str(),
        "45e8362a0078780ddec5633508ba6f17b2df862d70b03f43ec95e4b9e59e072c"
    );
}

#[test]
fn each_infineon_device_chains_to_its_root() {
    let cases = [
        (
            "trust-m-v1-ca101-certificates-readme.pem",
            "Infineon OPTIGA(TM) ECC Root CA",
            "62e5764990af4dbbd079d5520656b15796216e1ae52542910796b27a44f0eeda",
            "32B7EA75",
        ),
        (
            "trust-m-v1-ca101-linux-readme.pem",
            "Infineon OPTIGA(TM) ECC Root CA",
            "",
            "1110851A",
        ),
        (
            "trust-m-v1-ca101-python-docs.pem",
            "Infineon OPTIGA(TM) ECC Root CA",
            "",
            "6BD9B021",
        ),
        (
            "trust-m-v1-ca101-objdump-e0e0.pem",
            "Infineon OPTIGA(TM) ECC Root CA",
            "",
            "",
        ),
        (
            "trust-m-v3-ca300-objdump-e0e0.pem",
            "Infineon OPTIGA(TM) ECC Root CA 2",
            "0256deb03b3661f9be8181764bcdba94299aa3c1ca5a83cd81c0410d6ce0e4b4",
            "6F211A80",
        ),
        (
            "trust-m-v3-ca300-python-docs.pem",
            "Infineon OPTIGA(TM) ECC Root CA 2",
            "",
            "72830A75",
        ),
        (
            "trust-m-express-ca306-objdump-e0e0.pem",
            "Infineon OPTIGA(TM) ECC Root CA 2",
            "7de6a2548c740f30da70b3ee21b572ca58707b8701eaa1bb758d7852437e04fe",
            "1784F7E0",
        ),
        (
            "trust-m-express-ca306-cirrent-quickstart-ecdsa.pem",
            "Infineon OPTIGA(TM) ECC Root CA 2",
            "65004333ae92af7881649fdeddc1b64fa9f8f6e268f829ae32f37bd33c34fd69",
            "15FC8EA1",
        ),
        (
            "trust-m-express-ca309-rsa-objdump-e0e2.pem",
            "Infineon OPTIGA(TM) RSA Root CA 2",
            "",
            "",
        ),
        (
            "trust-m-express-ca309-cirrent-quickstart-rsa.pem",
            "Infineon OPTIGA(TM) RSA Root CA 2",
            "",
            "",
        ),
        (
            "trust-m-mtr-ca306-objdump-e0e0.pem",
            "Infineon OPTIGA(TM) ECC Root CA 2",
            "",
            "",
        ),
        (
            "trust-m-mtr-ca306-objdump-e0e1.pem",
            "Infineon OPTIGA(TM) ECC Root CA 2",
            "",
            "",
        ),
        (
            "trust-m-mtr-ca309-rsa-objdump-e0e2.pem",
            "Infineon OPTIGA(TM) RSA Root CA 2",
            "",
            "",
        ),
    ];
    for (file, root, sha, serial) in cases {
        let (ok, rejected) = run(&[real(&format!("infineon/device/{file}"))], &opts());
        assert!(rejected.is_empty(), "{file}: {rejected:?}");
        assert_eq!(ok.len(), 1, "{file}");
        assert_eq!(
            ok[0].verdict,
            Verdict::Valid {
                anchor: root.to_owned()
            },
            "{file}"
        );
        if !sha.is_empty() {
            assert_eq!(ok[0].identity.device_id.as_str(), sha, "{file}");
        }
        if !serial.is_empty() {
            assert_eq!(ok[0].identity.serial_hex, serial, "{file}");
        }
        assert_eq!(ok[0].identity.vendor.vendor.as_deref(), Some("infineon"));
    }
}

#[test]
fn an_infineon_chain_fails_without_its_root() {
    // Only the V1 root as anchor: a V3 device (Root CA 2) must not verify.
    let o = IntakeOptions {
        trust: idbridge_core::intake::TrustOptions {
            no_builtin: true,
            anchors: vec![real("infineon/ca/infineon-optiga-ecc-root-ca-v1.pem")],
            ..Default::default()
        },
        ..opts()
    };
    let (ok, _) = run(
        &[real("infineon/device/trust-m-v3-ca300-objdump-e0e0.pem")],
        &o,
    );
    let reason = ok[0].verdict.reason().unwrap();
    assert!(
        reason.contains("Trust M CA 300") && reason.contains("not a known CA"),
        "{reason}"
    );
}

#[test]
fn test_ca_and_expired_negative_serial_certificate_are_rejected_with_reasons() {
    let (ok, _) = run(
        &[real("infineon/ca/infineon-optiga-trust-m-test-ca-000.pem")],
        &opts(),
    );
    let reason = ok[0].verdict.reason().expect("invalid");
    assert!(
        reason.contains("test root") && reason.contains("--allow-test-roots"),
        "{reason}"
    );

    let (ok, _) = run(
        &[real(
            "infineon/device/cirrent-selfsigned-expired-negative-serial.pem",
        )],
        &opts(),
    );
    let c = &ok[0];
    assert_eq!(
        c.identity.serial_hex,
        "-5C1265326631EF7EB255206A926117A8E33D0309"
    );
    let reason = c.verdict.reason().expect("invalid");
    assert!(reason.contains("expired on 2022-05-19"), "{reason}");
    assert!(
        reason.contains("not a known CA") || reason.contains("not a trusted anchor"),
        "{reason}"
    );
}

#[test]
fn microchip_manifests_12_valid_10_lite_not_provisionable_1_test_signer() {
    let dir = real("microchip/manifests");
    let files: Vec<_> = [
        "pytrustplatform_manifest_ATECC608A-MAH4I.json",
        "pytrustplatform_tool-output_manifest_dummy-signer.json",
        "thingpress_ECC608C-TNGTLSU-B.json",
        "thingpress_ECC608-TMNGTLSS-B.json",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    let (ok, rejected) = run(&files, &opts());
    assert_eq!(ok.len() + rejected.len(), 23);
    let valid: Vec<_> = ok.iter().filter(|c| c.verdict.is_valid()).collect();
    assert_eq!(valid.len(), 12);
    assert!(valid.iter().all(|c| c.identity.vendor.unique_id.is_some()));
    let lite = only(&rejected, RejectKind::NotProvisionable);
    assert_eq!(lite.len(), 10, "{rejected:?}");
    assert!(
        lite.iter()
            .all(|r| r.reason.contains("version 2") && r.reason.contains("signature valid"))
    );
    assert!(lite.iter().all(|r| r.vendor.unique_id.is_some()));
    let invalid: Vec<_> = ok.iter().filter(|c| !c.verdict.is_valid()).collect();
    assert_eq!(invalid.len(), 1);
    let reason = invalid[0].verdict.reason().unwrap();
    assert!(
        reason.contains("test signer") && reason.contains("Example Signer FFFF"),
        "{reason}"
    );
    assert_eq!(
        invalid[0].identity.vendor.unique_id.as_deref(),
        Some("01232b4e0931d16901")
    );

    // Even with test roots allowed, the timestamp precedes the signer's validity.
    let o = IntakeOptions {
        trust: idbridge_core::intake::TrustOptions {
            allow_test_roots: true,
            ..Default::default()
        },
        ..opts()
    };
    let (ok, _) = run(&files[1..2], &o);
    let reason = ok[0].verdict.reason().expect("still invalid");
    assert!(
        reason.contains("provisioningTimestamp 2020-06-09") && reason.contains("precedes"),
        "{reason}"
    );
}

#[test]
fn microchip_device_certificates_chain_to_their_roots() {
    let (ok, _) = run(&[real("microchip/device")], &opts());
    let by = |name: &str| {
        ok.iter()
            .find(|c| c.identity.source.file.ends_with(name))
            .unwrap()
    };
    assert_eq!(
        by("sn01230390B3D1450C01.pem").identity.device_id.as_str(),
        "5e59332479e5e750c44c064a4c21adb9da30bd2cdabb51409dce54ecba4927a5"
    );
    for f in ["sn01230390B3D1450C01.pem", "sn0123D26E26E688C901.pem"] {
        assert_eq!(
            by(f).verdict,
            Verdict::Valid {
                anchor: "Crypto Authentication Root CA 002".into()
            }
        );
    }
    assert_eq!(
        by("ATECC608A-MAH1H_device.pem").verdict,
        Verdict::Valid {
            anchor: "ATECC Root CA 001".into()
        }
    );
    // Issued by Signer 2700, which is not shipped: unknown issuer.
    let r = by("ATECC608B-TNGTLS_sn0123A2D268F6D9FA01.pem")
        .verdict
        .reason()
        .unwrap();
    assert!(r.contains("not a known CA"), "{r}");
}

#[test]
fn espressif_csv_rows_carry_mac_and_fail_on_the_test_ca() {
    let (ok, rejected) = run(
        &[real("espressif/thingpress_manifest-espressif.csv")],
        &opts(),
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(ok.len(), 7);
    assert_eq!(ok[0].identity.vendor.mac.as_deref(), Some("4BA2BB8764BD"));
    assert!(
        ok.iter()
            .all(|c| c.identity.vendor.vendor.as_deref() == Some("espressif"))
    );
    // The Espressif test CA is not shipped: every row is invalid for that reason only.
    for c in &ok {
        let r = c.verdict.reason().unwrap();
        assert!(r.contains("esp-test-cn") && !r.contains("cn "), "{r}");
    }
}

#[test]
fn optiga_object_dumps_give_chip_ids_from_e0c2() {
    let o = IntakeOptions {
        slot: Slot::All,
        ..opts()
    };
    let (ok, rejected) = run(&[real("infineon/object-dumps")], &o);
    assert_eq!(ok.len(), 7, "{rejected:?}");
    assert!(ok.iter().all(|c| c.verdict.is_valid()));
    assert!(rejected.iter().all(|r| r.kind == RejectKind::Skipped));
    let express = ok
        .iter()
        .find(|c| {
            c.identity
                .source
                .file
                .ends_with("trust_m_express_json.txt!E0E0")
        })
        .unwrap();
    assert_eq!(
        express.identity.vendor.chip_id.as_deref(),
        Some("0A091B5C0015007A0040")
    );
    assert_eq!(
        express.identity.device_id.as_str(),
        "7de6a2548c740f30da70b3ee21b572ca58707b8701eaa1bb758d7852437e04fe"
    );
}
