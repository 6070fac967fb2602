//! Test devices: generated key pairs with certificates under a generated Infineon-like chain
//! (P-521 root, ecdsa-with-SHA512 → P-384 CA, ecdsa-with-SHA384 → P-256 leaf, ~20-year
//! validity, CN "Infineon IoT Node" on every leaf as on OPTIGA Trust M V1/V3). Tests pin the
//! generated root in idbridge's trust store (`--trust root.pem`) and connect as the device with
//! its key through a mock's device endpoint.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ECDSA_P521_SHA512, RevokedCertParams, SerialNumber,
};

/// A generated vendor PKI: root and intermediate.
pub struct TestPki {
    root_pem: String,
    ca_pem: String,
    ca: Issuer<'static, KeyPair>,
    leaf_cn: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("leaf_cn", &self.leaf_cn)
            .finish_non_exhaustive()
    }
}

/// One generated device: its certificate and private key.
#[derive(Debug, Clone)]
pub struct TestDevice {
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// Leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The device's private key, PKCS#8 PEM (on a real chip it never leaves the chip).
    pub key_pem: String,
    /// Serial, uppercase hex.
    pub serial_hex: String,
}

impl TestPki {
    /// An Infineon-like PKI whose leaves all share the CN "Infineon IoT Node".
    pub fn infineon_like() -> anyhow::Result<Self> {
        Self::new(
            "Test OPTIGA(TM) ECC Root CA 2",
            "Test OPTIGA(TM) Trust M CA 300",
            "Infineon IoT Node",
        )
    }

    /// A PKI with the given names; every leaf gets `leaf_cn` (use [`TestPki::device_with_cn`]
    /// for unique CNs).
    pub fn new(root_cn: &str, ca_cn: &str, leaf_cn: &str) -> anyhow::Result<Self> {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512)?;
        let mut root = CertificateParams::new(Vec::<String>::new())?;
        root.distinguished_name.push(DnType::CommonName, root_cn);
        root.distinguished_name
            .push(DnType::OrganizationName, "idbridge test vendor");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root.not_before = rcgen::date_time_ymd(2020, 1, 1);
        root.not_after = rcgen::date_time_ymd(2054, 1, 1);
        let root_cert = root.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root, root_key);

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, ca_cn);
        ca.distinguished_name
            .push(DnType::OrganizationName, "idbridge test vendor");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca.not_after = rcgen::date_time_ymd(2050, 1, 1);
        let ca_cert = ca.signed_by(&ca_key, &root_issuer)?;
        Ok(TestPki {
            root_pem: root_cert.pem(),
            ca_pem: ca_cert.pem(),
            ca: Issuer::new(ca, ca_key),
            leaf_cn: leaf_cn.to_owned(),
        })
    }

    /// The root certificate, PEM: the trust anchor tests pin.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The intermediate CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A new device with serial `serial` (must be unique within this PKI).
    pub fn device(&self, serial: u64) -> anyhow::Result<TestDevice> {
        let cn = self.leaf_cn.clone();
        self.device_with_cn(serial, &cn)
    }

    /// A new device with serial `serial` and subject CN `cn`.
    pub fn device_with_cn(&self, serial: u64, cn: &str) -> anyhow::Result<TestDevice> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let bytes = serial_bytes(serial);
        p.serial_number = Some(SerialNumber::from_slice(&bytes));
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2044, 1, 1);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        let cert = p.signed_by(&key, &self.ca)?;
        Ok(TestDevice {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            serial_hex: hex::encode_upper(&bytes),
        })
    }

    /// A CRL of the intermediate CA revoking the devices with `serials` (as given to
    /// [`TestPki::device`]), PEM.
    pub fn crl(&self, serials: &[u64]) -> anyhow::Result<String> {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2050, 1, 1),
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
        Ok(params.signed_by(&self.ca)?.pem()?)
    }

    /// `n` devices with serials `first..first+n`, and all their certificates as one PEM bundle.
    pub fn batch(&self, first: u64, n: u64) -> anyhow::Result<(Vec<TestDevice>, String)> {
        let mut devices = Vec::with_capacity(n as usize);
        let mut bundle = String::new();
        for s in first..first + n {
            let d = self.device(s)?;
            bundle.push_str(&d.cert_pem);
            devices.push(d);
        }
        Ok((devices, bundle))
    }
}

/// Serial bytes with a leading non-zero nibble below 0x80 so the DER is positive.
fn serial_bytes(serial: u64) -> Vec<u8> {
    let mut bytes = vec![0x1f];
    bytes.extend_from_slice(&serial.to_be_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_shapes() {
        let pki = TestPki::infineon_like().unwrap();
        let d = pki.device(7).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&d.cert_der).unwrap();
        assert_eq!(
            leaf.issuer().to_string(),
            "CN=Test OPTIGA(TM) Trust M CA 300, O=idbridge test vendor"
        );
        assert_eq!(d.serial_hex, "1F0000000000000007");
        assert_eq!(
            leaf.tbs_certificate.raw_serial_as_string(),
            "1f:00:00:00:00:00:00:00:07"
        );
        assert!(pki.root_pem().contains("BEGIN CERTIFICATE"));
    }
}
