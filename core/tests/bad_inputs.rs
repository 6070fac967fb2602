//! Generated bad inputs: each gives a clear error naming the file (and line or entry), never a
//! panic, and never loses the good devices around it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use base64::Engine;
use common::{Pki, only, real, run};
use idbridge_core::intake::{Intake, IntakeOptions, Limits, RejectKind, TrustOptions, Verdict};

fn opts() -> IntakeOptions {
    IntakeOptions::default()
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn v1_pem() -> String {
    std::fs::read_to_string(real(
        "infineon/device/trust-m-v1-ca101-certificates-readme.pem",
    ))
    .unwrap()
}

#[test]
fn empty_file_is_an_unusable_input_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "empty.pem", "");
    let err = Intake::open(&[p], &opts()).unwrap_err();
    assert!(err.to_string().contains("empty.pem: empty file"), "{err}");
}

#[test]
fn garbage_is_an_unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "garbage.bin", b"\x01\x02hello world\xff");
    let err = Intake::open(&[p], &opts()).unwrap_err();
    assert!(
        err.to_string().contains("garbage.bin: unknown format"),
        "{err}"
    );
}

#[test]
fn truncated_pem_names_its_line_and_keeps_the_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = v1_pem();
    let cut: String = good.lines().take(5).collect::<Vec<_>>().join("\n");
    let p = write(&dir, "bundle.pem", format!("{good}\n{cut}\n"));
    let (ok, rejected) = run(&[p], &opts());
    assert_eq!(ok.len(), 1);
    assert!(ok[0].verdict.is_valid());
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(r.kind, RejectKind::Unreadable);
    let line = good.lines().count() as u64 + 2;
    assert_eq!(r.source.line, Some(line), "{r}");
    assert!(
        r.to_string().contains(&format!("bundle.pem:{line}")) && r.reason.contains("truncated"),
        "{r}"
    );
}

#[test]
fn corrupt_pem_base64_and_non_certificate_der_are_entry_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "corrupt.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB!!!not base64\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let (ok, rejected) = run(&[p], &opts());
    assert!(ok.is_empty());
    assert_eq!(rejected.len(), 2);
    assert!(rejected[0].reason.contains("base64"), "{}", rejected[0]);
    assert_eq!(rejected[0].source.line, Some(1));
    assert!(
        rejected[1].reason.contains("not an X.509 certificate"),
        "{}",
        rejected[1]
    );
    assert_eq!(rejected[1].source.line, Some(4));
}

#[test]
fn pem_with_a_private_key_block_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "mixed.pem",
        format!(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
            v1_pem()
        ),
    );
    let (ok, rejected) = run(&[p], &opts());
    assert_eq!(ok.len(), 1);
    assert_eq!(rejected[0].kind, RejectKind::Skipped);
    assert!(rejected[0].reason.contains("PRIVATE KEY"));
}

#[test]
fn truncated_and_garbage_der_are_unusable() {
    let der = std::fs::read(real("microchip/ca/crypto-authentication-root-ca-002.pem")).unwrap();
    let der = ::pem::parse(der).unwrap().into_contents();
    let dir = tempfile::tempdir().unwrap();
    let cut = write(&dir, "cut.der", &der[..der.len() / 2]);
    let junk = write(&dir, "junk.der", [0x30, 0x82, 0xff, 0xff, 1, 2, 3]);
    let (ok, rejected) = run(&[cut, junk], &opts());
    assert!(ok.is_empty());
    assert_eq!(rejected.len(), 2);
    for (r, name) in rejected.iter().zip(["cut.der", "junk.der"]) {
        assert_eq!(r.kind, RejectKind::InputUnusable);
        assert!(
            r.source.file.ends_with(name) && r.reason.contains("not DER"),
            "{r}"
        );
    }
}

#[test]
fn chain_to_an_unknown_root_then_trusted_then_revoked() {
    let pki = Pki::new("Unknown Vendor");
    let dir = tempfile::tempdir().unwrap();
    let (leaf_pem, _) = pki.leaf(7, "device-7", 2044);
    let (other_pem, _) = pki.leaf(8, "device-8", 2044);
    let (expired_pem, _) = pki.leaf(9, "device-9", 2022);
    let p = write(
        &dir,
        "leaf.pem",
        format!("{leaf_pem}{other_pem}{expired_pem}"),
    );

    let (ok, _) = run(std::slice::from_ref(&p), &opts());
    let r = ok[0].verdict.reason().unwrap();
    assert!(
        r.contains("Unknown Vendor CA") && r.contains("not a known CA"),
        "{r}"
    );

    // Trust the root and give the intermediate as an anchor file too (a CA bundle).
    let bundle = write(&dir, "vendor.pem", &pki.root_pem);
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let trusting = |crls: Vec<PathBuf>| IntakeOptions {
        trust: TrustOptions {
            anchors: vec![bundle.clone()],
            crls,
            ..Default::default()
        },
        ..opts()
    };
    // The intermediate is not in the store: unknown issuer even with the root.
    let (ok, _) = run(std::slice::from_ref(&p), &trusting(vec![]));
    assert!(!ok[0].verdict.is_valid());
    // With the intermediate as an anchor too, the chain holds.
    let both = IntakeOptions {
        trust: TrustOptions {
            anchors: vec![bundle.clone(), ca.clone()],
            ..Default::default()
        },
        ..opts()
    };
    let (ok, _) = run(std::slice::from_ref(&p), &both);
    assert_eq!(
        ok[0].verdict,
        Verdict::Valid {
            anchor: "Unknown Vendor CA".into()
        }
    );
    assert!(ok[1].verdict.is_valid());
    let r = ok[2].verdict.reason().unwrap();
    assert!(r.starts_with("expired on 2022-01-01"), "{r}");

    // A CRL revoking serial 8.
    let crl = write(&dir, "ca.crl", pki.crl(&[8]));
    let mut revoking = both.clone();
    revoking.trust.crls = vec![crl.clone()];
    let (ok, _) = run(std::slice::from_ref(&p), &revoking);
    assert!(ok[0].verdict.is_valid());
    let r = ok[1].verdict.reason().unwrap();
    assert!(
        r.contains("revoked on 2025-06-01") && r.contains("ca.crl"),
        "{r}"
    );

    // A CRL nobody in the store signed is a configuration error.
    let err = Intake::open(std::slice::from_ref(&p), &trusting(vec![crl])).unwrap_err();
    assert!(err.to_string().contains("ca.crl"), "{err}");
}

fn manifest_entries(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(real(&format!("microchip/manifests/{file}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn forged_jws_signature_and_unique_id_mismatch_are_invalid() {
    let mut entries = manifest_entries("thingpress_ECC608C-TNGTLSU-B.json");
    // Entry 0: flip one signature byte.
    let sig = entries[0]["signature"].as_str().unwrap().to_owned();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = b64.decode(&sig).unwrap();
    raw[10] ^= 1;
    entries[0]["signature"] = b64.encode(raw).into();
    // Entry 1: another uniqueId in the unprotected header.
    entries[1]["header"]["uniqueId"] = "0123000000000000ff".into();
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "forged.json",
        serde_json::to_string_pretty(&entries).unwrap(),
    );
    let (ok, _) = run(&[p], &opts());
    assert_eq!(ok.len(), 10);
    let r0 = ok[0].verdict.reason().unwrap();
    assert!(
        r0.contains("JWS signature does not verify with manifest signer \"Manifest Signer 005\""),
        "{r0}"
    );
    let r1 = ok[1].verdict.reason().unwrap();
    assert!(
        r1.contains("header uniqueId 0123000000000000ff differs"),
        "{r1}"
    );
    assert_eq!(ok.iter().filter(|c| c.verdict.is_valid()).count(), 8);
}

#[test]
fn forged_lite_entry_is_invalid_not_merely_unprovisionable() {
    let mut entries = manifest_entries("thingpress_ECC608-TMNGTLSS-B.json");
    let sig = entries[3]["signature"].as_str().unwrap().to_owned();
    let mut chars: Vec<char> = sig.chars().collect();
    chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
    entries[3]["signature"] = chars.into_iter().collect::<String>().into();
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "lite.json", serde_json::to_string(&entries).unwrap());
    let (_, rejected) = run(&[p], &opts());
    assert_eq!(only(&rejected, RejectKind::NotProvisionable).len(), 9);
    let bad = only(&rejected, RejectKind::Invalid);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].source.entry, Some(3));
    assert!(bad[0].reason.contains("does not verify"), "{}", bad[0]);
}

#[test]
fn unknown_signer_thumbprint_and_wrong_alg_are_refused() {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut entries = manifest_entries("thingpress_ECC608C-TNGTLSU-B.json");
    entries.truncate(2);
    entries[0]["protected"] = b64
        .encode(br#"{"alg":"ES256","kid":"x","typ":"JWT","x5t#S256":"AAAA"}"#)
        .into();
    entries[1]["protected"] = b64
        .encode(br#"{"alg":"none","kid":"x","typ":"JWT","x5t#S256":"AAAA"}"#)
        .into();
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "m.json", serde_json::to_string(&entries).unwrap());
    let (ok, _) = run(&[p], &opts());
    assert!(
        ok[0]
            .verdict
            .reason()
            .unwrap()
            .contains("not a known Microchip signer")
    );
    assert!(
        ok[1]
            .verdict
            .reason()
            .unwrap()
            .contains("alg \"none\" refused")
    );
}

#[test]
fn truncated_manifest_keeps_the_entries_before_the_cut() {
    let text = std::fs::read_to_string(real(
        "microchip/manifests/thingpress_ECC608C-TNGTLSU-B.json",
    ))
    .unwrap();
    let cut = &text[..text.len() * 45 / 100];
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "cut.json", cut);
    let (ok, rejected) = run(&[p], &opts());
    assert!(ok.len() >= 3 && ok.len() < 10, "{}", ok.len());
    assert!(ok.iter().all(|c| c.verdict.is_valid()));
    let fatal = only(&rejected, RejectKind::InputUnusable);
    assert_eq!(fatal.len(), 1, "{rejected:?}");
    assert!(fatal[0].reason.contains("truncated"), "{}", fatal[0]);
    assert!(fatal[0].source.file.ends_with("cut.json"));
}

#[test]
fn truncated_7z_is_unusable() {
    let bytes = std::fs::read(real("infineon/cloud-id-bundle/manifest-infineon.7z")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "cut.7z", &bytes[..bytes.len() / 2]);
    let (ok, rejected) = run(&[p], &opts());
    assert!(ok.is_empty());
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].kind, RejectKind::InputUnusable);
    assert!(
        rejected[0].reason.contains("not a readable 7z archive"),
        "{}",
        rejected[0]
    );
}

#[test]
fn seven_z_whose_declared_sizes_exceed_the_limits_is_refused_before_decompressing() {
    let bundle = real("infineon/cloud-id-bundle/manifest-infineon.7z");
    // The inner archives declare ~100 KB each: over a 10 KB entry limit.
    let o = IntakeOptions {
        limits: Limits {
            max_entry: 10_000,
            ..Limits::default()
        },
        ..opts()
    };
    let (ok, rejected) = run(std::slice::from_ref(&bundle), &o);
    assert!(ok.is_empty());
    assert!(
        rejected[0].reason.contains("declares") && rejected[0].reason.contains("limit"),
        "{}",
        rejected[0]
    );
    // Total declared size over the decompression budget.
    let o = IntakeOptions {
        limits: Limits {
            max_decompressed: 1_000,
            ..Limits::default()
        },
        ..opts()
    };
    let (_, rejected) = run(std::slice::from_ref(&bundle), &o);
    assert!(rejected[0].reason.contains("in total"), "{}", rejected[0]);
    // Entry count.
    let o = IntakeOptions {
        limits: Limits {
            max_archive_entries: 3,
            ..Limits::default()
        },
        ..opts()
    };
    let (_, rejected) = run(&[bundle], &o);
    assert!(
        rejected[0].reason.contains("entries, more than the limit"),
        "{}",
        rejected[0]
    );
}

#[test]
fn non_utf8_csv_names_its_line() {
    let text = std::fs::read(real("espressif/thingpress_manifest-espressif.csv")).unwrap();
    let mut bytes = text.clone();
    // Corrupt the second row's cn (line 23 starts the second record).
    let pos = bytes
        .windows(12)
        .position(|w| w == b"E5B314DA749D")
        .unwrap();
    bytes[pos + 13] = 0xff;
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.csv", bytes);
    let (ok, rejected) = run(&[p], &opts());
    assert_eq!(ok.len(), 6);
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(r.kind, RejectKind::Unreadable);
    assert_eq!(r.source.line, Some(23), "{r}");
    assert!(r.reason.contains("not UTF-8"), "{r}");
}

#[test]
fn csv_cn_mismatch_is_invalid() {
    let text =
        std::fs::read_to_string(real("espressif/thingpress_manifest-espressif.csv")).unwrap();
    let text = text.replacen("6d1d54ba-ed81-4c32-8e08-f9f8c885a6ed", "someone-else", 1);
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "mismatch.csv", text);
    let (ok, _) = run(&[p], &opts());
    let r = ok[0].verdict.reason().unwrap();
    assert!(
        r.contains("CSV cn \"someone-else\" differs from the certificate CN"),
        "{r}"
    );
}

#[test]
fn same_certificate_twice_is_one_device_and_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "twice.pem", format!("{}{}", v1_pem(), v1_pem()));
    let (ok, rejected) = run(&[p], &opts());
    assert_eq!(ok.len(), 1);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].kind, RejectKind::Skipped);
    assert!(rejected[0].reason.contains("same certificate again"));
}

#[test]
fn two_certificates_claiming_one_chip_slot_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = real("infineon/cloud-id-bundle/extracted-sample/0A091B5C001500070063_E0E0.pem");
    let b = std::fs::read(real(
        "infineon/cloud-id-bundle/extracted-sample/0A091B5C0015000C0069_E0E0.pem",
    ))
    .unwrap();
    let sub = dir.path().join("other");
    std::fs::create_dir(&sub).unwrap();
    let b_path = sub.join("0A091B5C001500070063_E0E0.pem");
    std::fs::write(&b_path, b).unwrap();
    let (ok, _) = run(&[a, b_path], &opts());
    assert_eq!(ok.len(), 2);
    assert!(ok[0].verdict.is_valid());
    let r = ok[1].verdict.reason().unwrap();
    assert!(
        r.contains("infineon:0A091B5C001500070063:E0E0 is claimed by two different certificates"),
        "{r}"
    );
    assert!(
        r.contains("45e8362a0078780ddec5633508ba6f17")
            && r.contains(ok[1].identity.device_id.as_str()),
        "{r}"
    );
}

#[test]
fn optiga_hex_with_identity_tag_and_truncated_tag() {
    let dump: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(real("infineon/object-dumps/trust_m_express_json.txt")).unwrap(),
    )
    .unwrap();
    let hex_data = dump["e0e0"]["data"].as_str().unwrap();
    assert!(hex_data.starts_with("c002c1"));
    let dir = tempfile::tempdir().unwrap();
    let spaced: String = hex_data
        .as_bytes()
        .chunks(2)
        .map(|c| format!("0x{} ", std::str::from_utf8(c).unwrap()))
        .collect();
    let good = write(&dir, "e0e0.hex", spaced);
    let bin = write(&dir, "e0e0.bin", hex::decode(hex_data).unwrap());
    let cut = write(&dir, "cut.bin", &hex::decode(hex_data).unwrap()[..200]);
    let (ok, rejected) = run(&[good, bin, cut], &opts());
    assert_eq!(ok.len(), 1, "the binary is the same certificate as the hex");
    assert!(ok[0].verdict.is_valid());
    assert_eq!(
        ok[0].identity.device_id.as_str(),
        "7de6a2548c740f30da70b3ee21b572ca58707b8701eaa1bb758d7852437e04fe"
    );
    assert_eq!(rejected[0].kind, RejectKind::Skipped);
    assert_eq!(rejected[1].kind, RejectKind::InputUnusable);
    assert!(
        rejected[1].reason.contains("TLS identity tag says"),
        "{}",
        rejected[1]
    );
}

#[test]
fn idbridge_manifest_round_trip_mismatch_and_truncation() {
    use idbridge_core::importer::{ManifestDevice, ManifestHeader};
    let (ok, _) = run(
        &[real("infineon/cloud-id-bundle/extracted-sample")],
        &opts(),
    );
    let header = ManifestHeader {
        format: "idbridge-manifest".into(),
        version: 1,
        batch: None,
        created: "2026-11-29T00:00:00Z".into(),
        devices: Some(ok.len() as u64),
    };
    let mut text = serde_json::to_string(&header).unwrap() + "\n";
    for (i, c) in ok.iter().enumerate() {
        let mut d = ManifestDevice {
            device_id: c.identity.device_id.to_string(),
            cert: c.identity.to_pem(),
            vendor: c.identity.vendor.clone(),
            source: c.identity.source.clone(),
        };
        if i == 2 {
            d.device_id = "0".repeat(64);
        }
        text += &(serde_json::to_string(&d).unwrap() + "\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "export.jsonl", &text);
    let (back, rejected) = run(&[p], &opts());
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(back.len(), 9);
    assert_eq!(back.iter().filter(|c| c.verdict.is_valid()).count(), 8);
    assert!(
        back[2]
            .verdict
            .reason()
            .unwrap()
            .contains("does not match the certificate")
    );
    assert_eq!(back[0].identity.vendor, ok[0].identity.vendor);
    assert_eq!(back[0].identity.source.line, Some(2));

    // Cut the last line: the header's count no longer matches.
    let cut: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    let p = write(&dir, "cut.jsonl", cut);
    let (back, rejected) = run(&[p], &opts());
    assert_eq!(back.len(), 4);
    assert!(
        rejected[0].reason.contains("declares 9 devices but 4"),
        "{}",
        rejected[0]
    );
}

#[test]
fn verify_der_from_memory() {
    let verifier = idbridge_core::trust::Verifier::from_options(&TrustOptions::default()).unwrap();
    let pem = ::pem::parse(v1_pem()).unwrap();
    let (id, verdict) = verifier.verify_der(pem.contents());
    assert_eq!(id.unwrap().serial_hex, "32B7EA75");
    assert_eq!(
        verdict,
        Verdict::Valid {
            anchor: "Infineon OPTIGA(TM) ECC Root CA".into()
        }
    );
    let (id, verdict) = verifier.verify_der(b"\x30\x03\x02\x01\x01");
    assert!(id.is_err());
    assert!(
        verdict
            .reason()
            .unwrap()
            .contains("not an X.509 certificate")
    );
    let mut tampered = pem.contents().to_vec();
    let n = tampered.len();
    tampered[n - 5] ^= 0x55;
    let (_, verdict) = verifier.verify_der(&tampered);
    assert!(
        verdict.reason().unwrap().contains("does not verify"),
        "{verdict}"
    );
}

#[test]
fn csv_with_an_endless_field_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("MAC,cn,cert\r\n4BA2BB8764BD,x,\"");
    text.push_str(&"A".repeat(3 << 20));
    let p = write(&dir, "endless.csv", text);
    let (ok, rejected) = run(&[p], &opts());
    assert!(ok.is_empty());
    assert_eq!(rejected[0].kind, RejectKind::InputUnusable);
    assert!(
        rejected[0].reason.contains("larger than"),
        "{}",
        rejected[0]
    );
}
