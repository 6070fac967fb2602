//! Microchip-style manifests signed by a generated signer: the checks the real fixtures cannot
//! reach (JWK/key mismatch, x5c[1] not the issuer, signer expired at the timestamp).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Cursor;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use common::Pki;
use idbridge_core::intake::{Format, Intake, IntakeOptions};
use idbridge_core::trust::{TrustOptions, TrustStore, Verifier};
use rcgen::{CertificateParams, DnType, IsCa, KeyIdMethod, KeyPair, PKCS_ECDSA_P256_SHA256};

struct Signer {
    der: Vec<u8>,
    key: EcdsaKeyPair,
    kid: String,
    x5t: String,
}

fn signer(from: i32, to: i32) -> Signer {
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "Generated Signer");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(to, 1, 1);
    let der = p.self_signed(&k).unwrap().der().to_vec();
    let (_, cert) = <x509_parser::certificate::X509Certificate<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(&der).unwrap();
    let ski = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(s) => Some(s.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Signer {
        kid: b64.encode(ski),
        x5t: b64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)),
        key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &k.serialize_der())
            .unwrap(),
        der,
    }
}

fn entry(s: &Signer, uid: &str, leaf: &[u8], ca: &[u8], xy_from: &[u8]) -> serde_json::Value {
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (_, cert) = <x509_parser::certificate::X509Certificate<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(xy_from).unwrap();
    let point = cert.public_key().subject_public_key.data.to_vec();
    let payload = b64u.encode(
        serde_json::json!({
            "version": 1, "uniqueId": uid, "provisioningTimestamp": "2025-06-01T20:14:53.773Z",
            "publicKeySet": {"keys": [{"kid": "0", "kty": "EC", "crv": "P-256",
                "x": b64u.encode(&point[1..33]), "y": b64u.encode(&point[33..65]),
                "x5c": [b64.encode(leaf), b64.encode(ca)]}]}
        })
        .to_string(),
    );
    let protected = b64u.encode(format!(
        r#"{{"alg":"ES256","kid":"{}","x5t#S256":"{}"}}"#,
        s.kid, s.x5t
    ));
    let sig = s
        .key
        .sign(
            &SystemRandom::new(),
            format!("{protected}.{payload}").as_bytes(),
        )
        .unwrap();
    serde_json::json!({"payload": payload, "protected": protected,
        "header": {"uniqueId": uid}, "signature": b64u.encode(sig.as_ref())})
}

fn judge(signer: &Signer, pki: &Pki, entries: Vec<serde_json::Value>) -> Vec<String> {
    let mut store = TrustStore::builtin();
    store.add_manifest_signer_der(&signer.der).unwrap();
    store
        .add_anchor_der(&::pem::parse(&pki.root_pem).unwrap().into_contents())
        .unwrap();
    let verifier = Arc::new(Verifier::new(store, &TrustOptions::default()).unwrap());
    let text = serde_json::to_vec(&entries).unwrap();
    Intake::from_reader(
        Box::new(Cursor::new(text)),
        "generated.json",
        Format::MicrochipManifest,
        &IntakeOptions::default(),
        verifier,
    )
    .map(|i| match i {
        Ok(c) => c.verdict.to_string(),
        Err(r) => r.to_string(),
    })
    .collect()
}

#[test]
fn generated_manifest_checks() {
    let pki = Pki::new("Generated Microchip");
    let other = Pki::new("Other");
    let s = signer(2020, 2040);
    let (_, leaf1) = pki.leaf(1, "sn0123000000000001", 2050);
    let (_, leaf2) = pki.leaf(2, "sn0123000000000002", 2050);
    let (_, leaf3) = pki.leaf(3, "sn0123000000000003", 2050);
    let got = judge(
        &s,
        &pki,
        vec![
            entry(&s, "0123000000000001", &leaf1, &pki.ca_der, &leaf1),
            entry(&s, "0123000000000002", &leaf2, &pki.ca_der, &leaf1),
            entry(&s, "0123000000000003", &leaf3, &other.ca_der, &leaf3),
        ],
    );
    assert_eq!(got[0], "valid (Generated Microchip Root)", "{got:?}");
    assert!(
        got[1].contains("the JWK x/y differ from the certificate's public key"),
        "{}",
        got[1]
    );
    assert!(
        got[2].contains("x5c[0] is not signed by x5c[1]"),
        "{}",
        got[2]
    );

    // A signer that expired before the entry's provisioningTimestamp.
    let old = signer(2020, 2022);
    let got = judge(
        &old,
        &pki,
        vec![entry(&old, "0123000000000001", &leaf1, &pki.ca_der, &leaf1)],
    );
    assert!(
        got[0].contains("provisioningTimestamp 2025-06-01T20:14:53.773Z is after manifest signer \"Generated Signer\" expired"),
        "{}",
        got[0]
    );
}
