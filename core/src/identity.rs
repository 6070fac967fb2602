//! One device identity per factory certificate.
//!
//! The device id is the lowercase hex SHA-256 of the certificate DER: the only identifier that
//! is unique for every vendor and format (OPTIGA Trust M V1/V3 chips all share the CN
//! "Infineon IoT Node", so a CN is never an identity).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ::time::OffsetDateTime;
use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{Error, ErrorKind, Result};

/// Lowercase hex SHA-256 of a certificate's DER: 64 characters, always valid.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// The device id of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        DeviceId(hex::encode(digest::digest(&digest::SHA256, der)))
    }

    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, for display in narrow tables.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl FromStr for DeviceId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(DeviceId(s.to_ascii_lowercase()))
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("not a device id (64 hex characters of a SHA-256): {s:?}"),
            ))
        }
    }
}

impl TryFrom<String> for DeviceId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

/// A batch or reel reference. The batch ID is a claim secret (Infineon: "keep the batch ID and
/// QR code confidential"), so it is never displayed, serialized or logged in clear: everything
/// but [`BatchRef::secret`] shows only a short SHA-256 tag, `batch:1a2b3c4d5e6f`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BatchRef {
    secret: Arc<str>,
    tag: Arc<str>,
}

impl BatchRef {
    /// Wraps a batch ID.
    pub fn new(batch_id: &str) -> Self {
        let d = digest::digest(&digest::SHA256, batch_id.as_bytes());
        BatchRef {
            secret: Arc::from(batch_id),
            tag: Arc::from(format!("batch:{}", &hex::encode(d)[..12])),
        }
    }

    /// A batch known by its tag only (a job read back from the journal, which never stores
    /// batch IDs): [`BatchRef::secret`] is empty.
    pub fn from_tag(tag: &str) -> Self {
        BatchRef {
            secret: Arc::from(""),
            tag: Arc::from(tag),
        }
    }

    /// The non-secret tag, safe to log, store and send to a cloud as an attribute.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The batch ID in clear. Only for the one place that must send it to its owner.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Display for BatchRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag)
    }
}

impl fmt::Debug for BatchRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchRef({})", self.tag)
    }
}

impl Serialize for BatchRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.tag)
    }
}

/// The public key of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on a named curve: "P-256", "P-384", "P-521", or the curve OID if unknown.
    Ec {
        /// Curve name.
        curve: String,
    },
    /// RSA with a modulus of `bits`.
    Rsa {
        /// Modulus size.
        bits: u32,
    },
    /// Anything else, by OID.
    Other {
        /// Algorithm OID.
        oid: String,
    },
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Ec { curve } => write!(f, "EC {curve}"),
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyAlgorithm::Other { oid } => write!(f, "{oid}"),
        }
    }
}

/// Vendor identifiers: attributes of a device, never its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorAttributes {
    /// "infineon", "microchip", "espressif", or None when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Infineon chip id (from Cloud ID bundle file names or the E0C2 UID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip_id: Option<String>,
    /// Infineon certificate slot: "E0E0", "E0E1" or "E0E2".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Microchip uniqueId (lowercase hex as in the manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
    /// Microchip groupId.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Microchip partNumber.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_number: Option<String>,
    /// Microchip provisioningTimestamp (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_timestamp: Option<String>,
    /// Espressif MAC (12 upper-case hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Where an identity came from: file, and line or entry index within it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The input file (for archives: `outer.7z!inner.7z!entry.pem`).
    pub file: String,
    /// 1-based line where the certificate starts, for text formats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 0-based entry index, for manifests and archives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<u64>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(entry) = self.entry {
            write!(f, " entry {entry}")?;
        }
        Ok(())
    }
}

/// One factory certificate, parsed: everything a connector needs to register it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceIdentity {
    /// SHA-256 of the DER.
    pub device_id: DeviceId,
    /// The certificate, DER.
    #[serde(skip)]
    pub der: Arc<[u8]>,
    /// Uppercase hex SHA-1 of the DER (Azure shows this thumbprint).
    pub sha1_thumbprint: String,
    /// Issuer DN, RFC 4514-like.
    pub issuer: String,
    /// Subject DN.
    pub subject: String,
    /// Subject CN, if any (never unique for Trust M V1/V3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_cn: Option<String>,
    /// Serial number as uppercase hex, `-` prefixed when negative.
    pub serial_hex: String,
    /// Validity start.
    #[serde(with = "::time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Validity end.
    #[serde(with = "::time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Public key algorithm.
    pub key: KeyAlgorithm,
    /// Vendor attributes.
    pub vendor: VendorAttributes,
    /// The batch or reel this device belongs to, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
    /// Where it came from.
    pub source: Source,
}

impl DeviceIdentity {
    /// Parses a DER certificate. Fails with `InvalidInput` naming `source` when it is not one.
    pub fn from_der(der: impl Into<Arc<[u8]>>, source: Source) -> Result<Self> {
        let der: Arc<[u8]> = der.into();
        let (rest, cert) = X509Certificate::from_der(&der).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{source}: not an X.509 certificate: {e}"),
            )
        })?;
        if !rest.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{source}: {} bytes of garbage after the certificate",
                    rest.len()
                ),
            ));
        }
        let tbs = &cert.tbs_certificate;
        let subject_cn = tbs
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let identity = DeviceIdentity {
            device_id: DeviceId::of_der(&der),
            sha1_thumbprint: hex::encode_upper(digest::digest(
                &digest::SHA1_FOR_LEGACY_USE_ONLY,
                &der,
            )),
            issuer: tbs.issuer.to_string(),
            subject: tbs.subject.to_string(),
            subject_cn,
            serial_hex: serial_hex(tbs.raw_serial()),
            not_before: tbs.validity.not_before.to_datetime(),
            not_after: tbs.validity.not_after.to_datetime(),
            key: key_algorithm(tbs.public_key()),
            vendor: VendorAttributes::default(),
            batch: None,
            source,
            der: Arc::clone(&der),
        };
        Ok(identity)
    }

    /// The certificate as PEM (LF line endings).
    pub fn to_pem(&self) -> String {
        ::pem::encode(&::pem::Pem::new("CERTIFICATE", self.der.to_vec()))
    }
}

/// Serial as uppercase hex of its two's-complement magnitude; negative serials get a `-`.
fn serial_hex(raw: &[u8]) -> String {
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        // Negative: magnitude = two's complement of the raw bytes.
        let mut mag: Vec<u8> = raw.iter().map(|b| !b).collect();
        for byte in mag.iter_mut().rev() {
            let (v, carry) = byte.overflowing_add(1);
            *byte = v;
            if !carry {
                break;
            }
        }
        let s = hex::encode_upper(&mag);
        format!("-{}", s.trim_start_matches('0'))
    } else {
        let s = hex::encode_upper(raw);
        let t = s.trim_start_matches("00");
        if t.is_empty() {
            "00".to_owned()
        } else {
            t.to_owned()
        }
    }
}

fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> KeyAlgorithm {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_else(|| format!("{} bits", point.key_size()));
            KeyAlgorithm::Ec { curve }
        }
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => KeyAlgorithm::Rsa {
            bits: u32::try_from(rsa.key_size()).unwrap_or(u32::MAX),
        },
        _ => KeyAlgorithm::Other {
            oid: spki.algorithm.algorithm.to_id_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert_eq!(serial_hex(&[0x00, 0x80]), "80");
        assert_eq!(serial_hex(&[0x32, 0xB7, 0xEA, 0x75]), "32B7EA75");
        assert_eq!(serial_hex(&[0xFF]), "-1");
        assert_eq!(serial_hex(&[0xA3, 0xED]), "-5C13");
    }

    #[test]
    fn device_id_parse() {
        assert!("abc".parse::<DeviceId>().is_err());
        let id = DeviceId::of_der(b"x");
        assert_eq!(id.as_str().parse::<DeviceId>().unwrap(), id);
    }

    #[test]
    fn batch_ref_never_shows_secret() {
        let b = BatchRef::new("b41425b9-b42b-47fd-95c2-f981b4c61561");
        assert!(!format!("{b} {b:?}").contains("b41425b9"));
        assert!(!serde_json::to_string(&b).unwrap().contains("b41425b9"));
        assert_eq!(b.secret(), "b41425b9-b42b-47fd-95c2-f981b4c61561");
    }
}
