//! Signature verification with aws-lc-rs, over certificates parsed by x509-parser.
//!
//! x509-parser's own `verify_signature` has no ecdsa-with-SHA512, which Infineon's ECC Root CA 2
//! (P-521) uses for itself and for CA 300/306; so keys are mapped to aws-lc-rs algorithms here,
//! and a parsed key is kept per hash so a CA key is parsed once, not once per device.

use std::sync::OnceLock;

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

/// The curve or RSA of a signer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    P256,
    P384,
    P521,
    Rsa,
}

/// Hash of a signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256 = 0,
    Sha384 = 1,
    Sha512 = 2,
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigError {
    /// The algorithm (or key/algorithm pair) is not one idbridge accepts.
    Unsupported(String),
    /// The key is malformed.
    BadKey,
    /// The signature is wrong.
    Mismatch,
}

impl std::fmt::Display for SigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigError::Unsupported(what) => write!(f, "unsupported signature algorithm {what}"),
            SigError::BadKey => f.write_str("malformed issuer public key"),
            SigError::Mismatch => f.write_str("signature does not verify"),
        }
    }
}

/// A signer's public key, parsed lazily once per hash algorithm.
pub(crate) struct PublicKey {
    kind: KeyKind,
    bytes: Box<[u8]>,
    parsed: [OnceLock<Option<ParsedPublicKey>>; 3],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?})", self.kind)
    }
}

impl PublicKey {
    /// The key of a SubjectPublicKeyInfo, if it is P-256/384/521 or RSA.
    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, SigError> {
        let alg = spki.algorithm.algorithm.to_id_string();
        let kind = match alg.as_str() {
            "1.2.840.10045.2.1" => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    "1.2.840.10045.3.1.7" => KeyKind::P256,
                    "1.3.132.0.34" => KeyKind::P384,
                    "1.3.132.0.35" => KeyKind::P521,
                    other => return Err(SigError::Unsupported(format!("EC curve {other}"))),
                }
            }
            "1.2.840.113549.1.1.1" => KeyKind::Rsa,
            other => return Err(SigError::Unsupported(format!("key {other}"))),
        };
        Ok(PublicKey {
            kind,
            bytes: spki.subject_public_key.data.to_vec().into_boxed_slice(),
            parsed: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        })
    }

    /// The raw key: the EC point (`04 || x || y`) or the PKCS#1 RSAPublicKey.
    pub(crate) fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// Verifies `signature` (as in an X.509 certificate or CRL) over `message`.
    pub(crate) fn verify(
        &self,
        algorithm: &AlgorithmIdentifier<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SigError> {
        let oid = algorithm.algorithm.to_id_string();
        let (is_rsa, hash) = match oid.as_str() {
            "1.2.840.10045.4.3.2" => (false, Hash::Sha256),
            "1.2.840.10045.4.3.3" => (false, Hash::Sha384),
            "1.2.840.10045.4.3.4" => (false, Hash::Sha512),
            "1.2.840.113549.1.1.11" => (true, Hash::Sha256),
            "1.2.840.113549.1.1.12" => (true, Hash::Sha384),
            "1.2.840.113549.1.1.13" => (true, Hash::Sha512),
            other => return Err(SigError::Unsupported(other.to_owned())),
        };
        if is_rsa != (self.kind == KeyKind::Rsa) {
            return Err(SigError::Unsupported(format!(
                "{oid} with a {:?} key",
                self.kind
            )));
        }
        let slot = &self.parsed[hash as usize];
        let parsed = slot.get_or_init(|| {
            ParsedPublicKey::new(verification_algorithm(self.kind, hash), &self.bytes).ok()
        });
        let key = parsed.as_ref().ok_or(SigError::BadKey)?;
        key.verify_sig(message, signature)
            .map_err(|_| SigError::Mismatch)
    }
}

fn verification_algorithm(kind: KeyKind, hash: Hash) -> &'static dyn VerificationAlgorithm {
    match (kind, hash) {
        (KeyKind::P256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyKind::P256, Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyKind::P256, Hash::Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
        (KeyKind::P384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyKind::P384, Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyKind::P384, Hash::Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
        (KeyKind::P521, Hash::Sha256) => &signature::ECDSA_P521_SHA256_ASN1,
        (KeyKind::P521, Hash::Sha384) => &signature::ECDSA_P521_SHA384_ASN1,
        (KeyKind::P521, Hash::Sha512) => &signature::ECDSA_P521_SHA512_ASN1,
        (KeyKind::Rsa, Hash::Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (KeyKind::Rsa, Hash::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (KeyKind::Rsa, Hash::Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
    }
}
