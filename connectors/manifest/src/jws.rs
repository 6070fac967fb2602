//! Detached JWS (RFC 7515 appendix F) with ES256: `BASE64URL(header)..BASE64URL(signature)`,
//! the payload being the manifest file's bytes.

use aws_lc_rs::digest;
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
        let mut signer = self.detached_signer();
        signer.update(payload);
        signer.finish()
    }

    /// A signer fed the payload piece by piece, for a manifest too large to hold: the JWS
    /// signing input (`header.BASE64URL(payload)`) is hashed as it streams past.
    pub fn detached_signer(&self) -> DetachedSigner<'_> {
        let header = serde_json::json!({
            "alg": "ES256",
            "typ": "idbridge-manifest+jws",
            "kid": self.kid,
        });
        let header = B64.encode(header.to_string());
        let mut hash = digest::Context::new(&digest::SHA256);
        hash.update(header.as_bytes());
        hash.update(b".");
        DetachedSigner {
            key: self,
            header,
            hash,
            carry: Vec::new(),
        }
    }
}

/// A detached JWS over a payload given in pieces ([`SigningKey::detached_signer`]).
pub struct DetachedSigner<'a> {
    key: &'a SigningKey,
    header: String,
    hash: digest::Context,
    /// Payload bytes not yet base64-encoded (fewer than 3 between calls).
    carry: Vec<u8>,
}

impl std::fmt::Debug for DetachedSigner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DetachedSigner({})", self.key.kid)
    }
}

impl DetachedSigner<'_> {
    /// The next piece of the payload.
    pub fn update(&mut self, piece: &[u8]) {
        self.carry.extend_from_slice(piece);
        // Base64 of whole 3-byte groups concatenates to the base64 of the whole.
        let whole = self.carry.len() / 3 * 3;
        if whole > 0 {
            self.hash
                .update(B64.encode(&self.carry[..whole]).as_bytes());
            self.carry.drain(..whole);
        }
    }

    /// The detached compact JWS `header..signature`.
    pub fn finish(mut self) -> Result<String> {
        self.hash.update(B64.encode(&self.carry).as_bytes());
        let sig = self
            .key
            .pair
            .sign_digest(&self.hash.finish())
            .map_err(|_| Error::new(ErrorKind::Unexpected, "ES256 signing failed"))?;
        Ok(format!("{}..{}", self.header, B64.encode(sig.as_ref())))
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

    #[test]
    fn a_payload_signed_in_pieces_verifies_as_a_whole() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = SigningKey::from_pem(&kp.serialize_pem(), "test key").unwrap();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        // Piece sizes that cut base64 groups everywhere, empty pieces included.
        for sizes in [
            &[1usize][..],
            &[2, 0, 5],
            &[3],
            &[999, 1],
            &[1000],
            &[4, 1, 1, 7],
        ] {
            let mut signer = key.detached_signer();
            let mut at = 0;
            for size in sizes.iter().cycle() {
                if at >= payload.len() {
                    break;
                }
                let end = (at + size).min(payload.len());
                signer.update(&payload[at..end]);
                at = end;
            }
            let jws = signer.finish().unwrap();
            verify_detached(&payload, &jws, &key.public_point())
                .unwrap_or_else(|e| panic!("pieces {sizes:?}: {e}"));
            assert!(verify_detached(&payload[1..], &jws, &key.public_point()).is_err());
        }
        // An empty payload too.
        let jws = key.detached_signer().finish().unwrap();
        verify_detached(b"", &jws, &key.public_point()).unwrap();
    }
}
