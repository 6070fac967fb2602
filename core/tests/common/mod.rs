//! Shared helpers for the core integration tests: fixture paths and a generated PKI.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use idbridge_core::intake::{Checked, Intake, IntakeOptions, RejectKind, Rejected};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    RevokedCertParams, SerialNumber,
};

/// `tests/fixtures/real/<rel>` of the repository.
pub fn real(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/real")
        .join(rel)
}

/// Every item of an intake over `inputs`.
pub fn run(inputs: &[PathBuf], opts: &IntakeOptions) -> (Vec<Checked>, Vec<Rejected>) {
    let intake = Intake::open(inputs, opts).expect("inputs open");
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for item in intake {
        match item {
            Ok(c) => ok.push(c),
            Err(r) => rejected.push(r),
        }
    }
    (ok, rejected)
}

pub fn only(rejected: &[Rejected], kind: RejectKind) -> Vec<&Rejected> {
    rejected.iter().filter(|r| r.kind == kind).collect()
}

/// A generated root (P-384) and intermediate (P-384) issuing P-256 leaves.
pub struct Pki {
    pub root_pem: String,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.distinguished_name
            .push(DnType::CommonName, format!("{name} Root"));
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.not_before = rcgen::date_time_ymd(2020, 1, 1);
        root.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, root_key);
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca.not_after = rcgen::date_time_ymd(2055, 1, 1);
        let ca_cert = ca.signed_by(&ca_key, &root_issuer).unwrap();
        Pki {
            root_pem: root_cert.pem(),
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            ca: Issuer::new(ca, ca_key),
        }
    }

    /// A leaf with `serial`, CN `cn`, valid 2024..2044 unless `years` says otherwise.
    pub fn leaf(&self, serial: u64, cn: &str, not_after_year: i32) -> (String, Vec<u8>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from_slice(&serial_bytes(serial)));
        p.not_before = rcgen::date_time_ymd(2021, 1, 1);
        p.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), cert.der().to_vec())
    }

    /// A CRL of the CA revoking `serials`, PEM.
    pub fn crl(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial_bytes(*s)),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.ca).unwrap().pem().unwrap()
    }
}

fn serial_bytes(serial: u64) -> Vec<u8> {
    let mut bytes = vec![0x1f];
    bytes.extend_from_slice(&serial.to_be_bytes());
    bytes
}
