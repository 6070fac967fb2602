//! Request authentication: ES256 JWTs for interop, Standard Webhooks v1 signatures.

use std::fmt;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{Error, ErrorKind, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Mints the short-lived ES256 bearer tokens of the interop client.
pub struct JwtSigner {
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

impl JwtSigner {
    /// A signer from a P-256 private key in PKCS#8 PEM.
    pub fn new(key_pem: &str, issuer: &str, audience: &str, ttl_secs: u64) -> Result<Self> {
        let key = EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("`signing_key` is not a P-256 private key in PKCS#8 PEM: {e}"),
            )
            .with_operation("configure")
        })?;
        let signer = JwtSigner {
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs,
        };
        // Sign once now so a key of the wrong curve fails at configuration, not per request.
        signer.token_at(0)?;
        Ok(signer)
    }

    /// A fresh token: `iat` now, `exp` now + ttl, random `jti`.
    pub fn token(&self) -> Result<String> {
        self.token_at(unix_now())
    }

    /// A token issued at `iat` (seconds since the epoch).
    pub fn token_at(&self, iat: u64) -> Result<String> {
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            iat,
            exp: iat + self.ttl_secs,
            jti: random_hex(16),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("cannot sign an ES256 token with `signing_key`: {e}"),
            )
            .with_operation("sign")
        })
    }
}

/// A Standard Webhooks v1 symmetric signing key (the decoded bytes of a `whsec_` secret).
#[derive(Clone)]
pub struct WebhookKey(hmac::Key);

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(<redacted>)")
    }
}

impl WebhookKey {
    /// Parses `whsec_<base64>`.
    pub fn from_whsec(secret: &str) -> Result<Self> {
        let b64 = secret.strip_prefix("whsec_").ok_or_else(|| {
            Error::new(
                ErrorKind::ConfigInvalid,
                "webhook secret must start with whsec_",
            )
        })?;
        let bytes = STANDARD.decode(b64).map_err(|_| {
            Error::new(
                ErrorKind::ConfigInvalid,
                "webhook secret: the part after whsec_ is not base64",
            )
        })?;
        if bytes.is_empty() {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                "webhook secret is empty",
            ));
        }
        Ok(WebhookKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(msg_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The system RNG failing is not recoverable; a jti of zeros is still a valid (if weak) id.
    let _ = aws_lc_rs::rand::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published test vector.
    #[test]
    fn standard_webhooks_test_vector() {
        let key = WebhookKey::from_whsec("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let sig = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        let other = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user2"}"#,
        );
        assert_ne!(other, sig, "a tampered body signs differently");
    }

    #[test]
    fn bad_secrets_are_config_errors() {
        assert!(WebhookKey::from_whsec("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
        assert!(WebhookKey::from_whsec("whsec_!!!").is_err());
        assert!(
            format!("{:?}", WebhookKey::from_whsec("whsec_AAAA").unwrap()).contains("redacted")
        );
    }

    #[test]
    fn jwt_has_es256_header_and_claims() {
        let key = rcgen::KeyPair::generate().unwrap();
        let s = JwtSigner::new(&key.serialize_pem(), "idbridge", "123456789012", 120).unwrap();
        let t = s.token_at(1_764_451_200).unwrap();
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.alg, Algorithm::ES256);
        let payload = t.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "123456789012");
        assert_eq!(claims["iss"], "idbridge");
        assert_eq!(claims["exp"], 1_764_451_320u64);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        assert!(!format!("{s:?}").contains("PRIVATE"));
    }

    #[test]
    fn non_ec_key_is_refused() {
        let e = JwtSigner::new("not a key", "i", "a", 60).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    }
}
