//! Bearer JWT verification of the interop receiver: ES256 only, against the configured issuer
//! public keys (PEM or JWKS), `aud` equal to the configured audience, `exp` required and
//! enforced with a small leeway. Every failure is a 401 with Infineon's error bodies.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The 401 bodies' messages (as Infineon's receivers answer them).
pub mod msg {
    /// No `Authorization` header.
    pub const MISSING: &str = "Missing Authorization Header";
    /// Not two space-separated parts.
    pub const INVALID: &str = "Token invalid";
    /// Scheme other than Bearer.
    pub const NOT_BEARER: &str = "Authorization Header must contain Bearer Token";
    /// Signature, alg, aud or exp check failed.
    pub const CANNOT_VERIFY: &str = "Cannot verify and decode token";
}

/// Verifies bearer tokens.
pub struct TokenVerifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Loads every key of every file; fails naming the file when one has no usable key.
    pub fn load(
        files: &[impl AsRef<Path>],
        audience: &str,
        leeway_secs: u64,
    ) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for f in files {
            let f = f.as_ref();
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("issuer key file {}", f.display()))?;
            let found =
                parse_keys(&text).with_context(|| format!("issuer key file {}", f.display()))?;
            keys.extend(found);
        }
        Self::new(keys, audience, leeway_secs)
    }

    /// A verifier over decoded keys.
    pub fn new(keys: Vec<DecodingKey>, audience: &str, leeway_secs: u64) -> anyhow::Result<Self> {
        if keys.is_empty() {
            anyhow::bail!("no issuer public key configured");
        }
        if audience.trim().is_empty() {
            anyhow::bail!("no audience configured");
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Ok(TokenVerifier { keys, validation })
    }

    /// Checks an `Authorization` header value; `Err` is the 401 body's message.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), &'static str> {
        let Some(raw) = header else {
            return Err(msg::MISSING);
        };
        let value = std::str::from_utf8(raw).map_err(|_| msg::INVALID)?;
        let parts: Vec<&str> = value.split(' ').collect();
        if parts.len() != 2 {
            return Err(msg::INVALID);
        }
        if !parts[0].eq_ignore_ascii_case("bearer") {
            return Err(msg::NOT_BEARER);
        }
        let token = parts[1];
        // The header must name ES256 before any key is tried (alg none / HS256 never reach a
        // key; jsonwebtoken also refuses an algorithm outside `validation.algorithms`).
        let header = jsonwebtoken::decode_header(token).map_err(|_| msg::CANNOT_VERIFY)?;
        if header.alg != Algorithm::ES256 {
            return Err(msg::CANNOT_VERIFY);
        }
        for key in &self.keys {
            if jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation).is_ok() {
                return Ok(());
            }
        }
        Err(msg::CANNOT_VERIFY)
    }
}

/// Keys of a PEM (one or more `PUBLIC KEY` blocks) or JWKS (`{"keys": [...]}`) text. JWKS
/// entries other than EC P-256 are skipped; a file with no usable key is an error.
pub fn parse_keys(text: &str) -> anyhow::Result<Vec<DecodingKey>> {
    let trimmed = text.trim_start();
    let mut keys = Vec::new();
    if trimmed.starts_with('{') {
        let set: JwkSet = serde_json::from_str(trimmed).context("not a JWKS document")?;
        for jwk in &set.keys {
            if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm
                && p.curve == EllipticCurve::P256
            {
                keys.push(DecodingKey::from_jwk(jwk).context("bad EC key in JWKS")?);
            }
        }
        if keys.is_empty() {
            anyhow::bail!("the JWKS has no EC P-256 key (only ES256 is accepted)");
        }
        return Ok(keys);
    }
    let blocks = pem::parse_many(text.as_bytes()).context("not PEM")?;
    for b in blocks.iter().filter(|b| b.tag() == "PUBLIC KEY") {
        let one = pem::encode(b);
        keys.push(DecodingKey::from_ec_pem(one.as_bytes()).context("not an EC public key")?);
    }
    if keys.is_empty() {
        anyhow::bail!("no `-----BEGIN PUBLIC KEY-----` block (an EC P-256 SPKI) in it");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idbridge_mock_clouds::interop::{InteropSender, TokenKind};

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    /// The JWT matrix: only the first is accepted.
    #[test]
    fn jwt_matrix_pem_and_jwks() {
        let s = InteropSender::new("123456789012").unwrap();
        for keys in [
            parse_keys(&s.public_key_pem()).unwrap(),
            parse_keys(&s.jwks()).unwrap(),
        ] {
            let v = TokenVerifier::new(keys, "123456789012", 5).unwrap();
            assert_eq!(v.check(Some(&bearer(&s.token(TokenKind::Valid)))), Ok(()));
            for k in [
                TokenKind::WrongAudience,
                TokenKind::Expired,
                TokenKind::OtherKey,
                TokenKind::AlgNone,
                TokenKind::Hs256WithPublicKey,
            ] {
                assert_eq!(
                    v.check(Some(&bearer(&s.token(k)))),
                    Err(msg::CANNOT_VERIFY),
                    "{k:?} must be refused"
                );
            }
            assert_eq!(v.check(None), Err(msg::MISSING));
            assert_eq!(v.check(Some(b"Bearer")), Err(msg::INVALID));
            assert_eq!(v.check(Some(b"Bearer a b")), Err(msg::INVALID));
            assert_eq!(
                v.check(Some(
                    format!("Basic {}", s.token(TokenKind::Valid)).as_bytes()
                )),
                Err(msg::NOT_BEARER)
            );
            assert_eq!(v.check(Some(b"Bearer not.a.jwt")), Err(msg::CANNOT_VERIFY));
            assert_eq!(v.check(Some(b"bearer \xff\xfe")), Err(msg::INVALID));
        }
    }

    /// `exp` is enforced with the configured leeway, and is required.
    #[test]
    fn exp_leeway_and_required_claims() {
        let s = InteropSender::new("aud-1").unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(s.private_key_pem().as_bytes()).unwrap();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let mint = |claims: serde_json::Value| {
            jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::ES256), &claims, &key)
                .unwrap()
        };
        let v = TokenVerifier::new(parse_keys(&s.public_key_pem()).unwrap(), "aud-1", 30).unwrap();
        let just_expired = mint(serde_json::json!({"aud": "aud-1", "exp": now - 10}));
        assert_eq!(
            v.check(Some(&bearer(&just_expired))),
            Ok(()),
            "within leeway"
        );
        let expired = mint(serde_json::json!({"aud": "aud-1", "exp": now - 120}));
        assert_eq!(v.check(Some(&bearer(&expired))), Err(msg::CANNOT_VERIFY));
        let no_exp = mint(serde_json::json!({"aud": "aud-1"}));
        assert_eq!(
            v.check(Some(&bearer(&no_exp))),
            Err(msg::CANNOT_VERIFY),
            "exp required"
        );
        let aud_list = mint(serde_json::json!({"aud": ["x", "aud-1"], "exp": now + 60}));
        assert_eq!(
            v.check(Some(&bearer(&aud_list))),
            Ok(()),
            "aud array containing ours"
        );
        let strict =
            TokenVerifier::new(parse_keys(&s.public_key_pem()).unwrap(), "aud-1", 0).unwrap();
        assert_eq!(
            strict.check(Some(&bearer(&just_expired))),
            Err(msg::CANNOT_VERIFY)
        );
    }

    #[test]
    fn key_files_without_keys_are_refused() {
        assert!(parse_keys("hello").is_err());
        assert!(parse_keys(r#"{"keys":[]}"#).is_err());
        assert!(TokenVerifier::new(Vec::new(), "a", 0).is_err());
    }
}
