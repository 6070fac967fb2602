//! Detached JWS (RFC 7515 appendix F) with ES256: `BASE64URL(header)..BASE64URL(signature)`,
//! the payload being the manifest file's bytes.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use idbridge_core::{Error, ErrorKind, Result};

/// The operator's signing key. `Debug` shows only the key id.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// Reads a P-256 PKCS#8 private key from PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem_text: &str, what: &str) -> Result<Self> {
        let p = ::pem::parse(pem_text).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("{what}: not a PEM private key"),
            )
            .with_source(e)
        })?;
        if p.tag() != "PRIVATE KEY" {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "{what}: expected a PKCS#8 \"PRIVATE KEY\", found {:?}",
                    p.tag()
                ),
            ));
        }
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p.contents())
            .map_err(|e| {
                Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("{what}: not a P-256 (ES256) private key: {e}"),
                )
            })?;
        let kid = hex_sha256(pair.public_key().as_ref())[..16].to_owned();
        Ok(SigningKey { pair, kid })
    }

    /// The key id in the JWS header: 16 hex digits of the SHA-256 of the public point.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as an uncompressed SEC1 point.
    pub fn public_point(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `payload`, returning the detached compact JWS.
    pub fn sign_detached(&self, payload: &[u8]) -> Result<String> {
        let header = serde_json::json!({
            "alg": "ES256",
            "typ": "idbridge-manifest+jws",
            "kid": self.kid,
        });
        let h = B64.encode(header.to_string());
        let input = format!("{h}.{}", B64.encode(payload));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| Error::new(ErrorKind::Unexpected, "ES256 signing failed"))?;
        Ok(format!("{h}..{}", B64.encode(sig.as_ref())))
    }
}

/// Verifies a detached JWS over `payload` with an uncompressed P-256 public point.
pub fn verify_detached(payload: &[u8], jws: &str, public_point: &[u8]) -> Result<()> {
    let bad = |m: &str| Error::new(ErrorKind::InvalidInput, format!("manifest signature: {m}"));
    let (h, rest) = jws
        .trim()
        .split_once('.')
        .ok_or_else(|| bad("not a compact JWS"))?;
    let sig = rest
        .strip_prefix('.')
        .ok_or_else(|| bad("not a detached JWS (payload part must be empty)"))?;
    let header: serde_json::Value = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("bad header"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
        return Err(bad("alg is not ES256"));
    }
    let sig = B64.decode(sig).map_err(|_| bad("bad signature encoding"))?;
    let input = format!("{h}.{}", B64.encode(payload));
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_point)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| bad("does not verify"))
}

fn hex_sha256(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = SigningKey::from_pem(&kp.serialize_pem(), "test key").unwrap();
        let jws = key.sign_detached(b"hello").unwrap();
        assert!(jws.contains(".."));
        verify_detached(b"hello", &jws, &key.public_point()).unwrap();
        assert!(verify_detached(b"hellO", &jws, &key.public_point()).is_err());
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let err = SigningKey::from_pem("nope", "k.pem").unwrap_err();
        assert!(err.to_string().contains("k.pem"));
    }
}
