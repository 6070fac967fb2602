//! The server key and what is derived from it: keyed hashes of claim secrets (HMAC-SHA-256),
//! token hashes, and sealing of target tables at rest (AES-256-GCM, aws-lc-rs).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The server key (32 bytes), and the keys derived from it. `Debug` shows nothing.
pub struct ServerKey {
    claims: hmac::Key,
    seal: LessSafeKey,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    /// From 64 hex characters (whitespace around is ignored); `what` names the source.
    pub fn from_hex(text: &str, what: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| anyhow::anyhow!("{what}: the server key must be 64 hex characters"))?;
        anyhow::ensure!(
            bytes.len() == 32,
            "{what}: the server key must be 32 bytes (64 hex characters), not {}",
            bytes.len()
        );
        let master = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        let derive = |label: &str| hmac::sign(&master, label.as_bytes());
        let claims = hmac::Key::new(hmac::HMAC_SHA256, derive("idbridge claims v1").as_ref());
        let seal_key = derive("idbridge seal v1");
        let seal = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, seal_key.as_ref())
                .map_err(|_| anyhow::anyhow!("{what}: unusable key"))?,
        );
        Ok(ServerKey { claims, seal })
    }

    /// A fresh random key, hex.
    pub fn generate_hex() -> anyhow::Result<String> {
        let mut b = [0u8; 32];
        rand::fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
        Ok(hex::encode(b))
    }

    /// The keyed hash of a claim (batch ID, reel ID), normalised (trimmed, case-insensitive).
    pub fn claim_hash(&self, batch_id: &str, reel_id: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.claims);
        ctx.update(b"claim\0");
        ctx.update(batch_id.trim().to_ascii_lowercase().as_bytes());
        ctx.update(b"\0");
        ctx.update(reel_id.trim().to_ascii_lowercase().as_bytes());
        hex::encode(ctx.sign().as_ref())
    }

    /// The label code printed in a batch's QR code (derived, never stored).
    pub fn label_code(&self, batch_record_id: &str) -> String {
        let tag = hmac::sign(&self.claims, format!("label\0{batch_record_id}").as_bytes());
        hex::encode(&tag.as_ref()[..16])
    }

    /// Seals `plain` (a target table as JSON) bound to `context` (account and name).
    pub fn seal(&self, plain: &[u8], context: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buf = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    /// Opens what [`ServerKey::seal`] sealed with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> anyhow::Result<Vec<u8>> {
        let bad = || anyhow::anyhow!("a sealed target does not open with this server key");
        let raw = STANDARD.decode(sealed).map_err(|_| bad())?;
        anyhow::ensure!(raw.len() > NONCE_LEN, bad());
        let (n, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| bad())?;
        let mut buf = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

/// SHA-256 hex of a token (tokens are 256-bit random: a plain hash suffices).
pub fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// A new bearer token, `idb_` + 43 base64url characters.
pub fn new_token() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    rand::fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(format!(
        "idb_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// Constant-time equality of two hex hashes.
pub fn same(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_seal_and_tokens() {
        let k = ServerKey::from_hex(&"ab".repeat(32), "test").unwrap();
        let h = k.claim_hash("B41425B9-b42b", "78211223032C7EFA");
        assert_eq!(h, k.claim_hash(" b41425b9-B42B ", "78211223032c7efa"));
        assert_ne!(h, k.claim_hash("b41425b9-b42b", "78211223032C7EFB"));
        assert!(!h.contains("78211223032"));
        let s = k.seal(b"{\"token\":\"s3cret\"}", "acct/t").unwrap();
        assert!(!s.contains("s3cret"));
        assert_eq!(k.open(&s, "acct/t").unwrap(), b"{\"token\":\"s3cret\"}");
        assert!(k.open(&s, "other/t").is_err(), "bound to its context");
        let other = ServerKey::from_hex(&"cd".repeat(32), "test").unwrap();
        assert!(other.open(&s, "acct/t").is_err());
        assert!(ServerKey::from_hex("abcd", "f").is_err());
        let t = new_token().unwrap();
        assert!(t.starts_with("idb_") && t.len() > 40);
        assert!(same(&token_hash(&t), &token_hash(&t)));
    }
}
