//! Microchip Trust Platform manifest entries: flattened JWS (ES256), verified exactly as
//! `docs/formats.md` describes (signer chosen by `x5t#S256`, `kid` checked, signature over the
//! original `protected + "." + payload` strings, signer validity at `provisioningTimestamp`).

use std::sync::Arc;

use ::time::OffsetDateTime;
use ::time::format_description::well_known::Rfc3339;
use base64::Engine;
use serde::Deserialize;

use super::{ManifestSigner, date};

/// The parts of one manifest entry the JWS check needs, as they are in the file.
#[derive(Debug, Clone, Default)]
pub struct ManifestEntry {
    /// `protected`, base64url as in the file (never re-serialized).
    pub protected: String,
    /// `payload`, base64url as in the file.
    pub payload: String,
    /// `signature`, base64url of the 64-byte `r || s`.
    pub signature: String,
    /// The unprotected `header.uniqueId`.
    pub header_unique_id: Option<String>,
    /// `uniqueId` of the decoded payload.
    pub payload_unique_id: Option<String>,
    /// `provisioningTimestamp` of the decoded payload.
    pub provisioning_timestamp: Option<String>,
}

#[derive(Deserialize)]
struct Protected {
    alg: Option<String>,
    kid: Option<String>,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

pub(crate) fn check(
    entry: &ManifestEntry,
    signers: &[Arc<ManifestSigner>],
    allow_test: bool,
) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let protected_json = b64
        .decode(entry.protected.trim_end_matches('='))
        .map_err(|e| format!("JWS protected header is not base64url: {e}"))?;
    let protected: Protected = serde_json::from_slice(&protected_json)
        .map_err(|e| format!("JWS protected header is not JSON: {e}"))?;
    match protected.alg.as_deref() {
        Some("ES256") => {}
        Some(other) => return Err(format!("JWS alg {other:?} refused (only ES256)")),
        None => return Err("JWS protected header has no alg".to_owned()),
    }
    let x5t = protected
        .x5t_s256
        .ok_or("JWS protected header has no x5t#S256")?;
    let signer = signers
        .iter()
        .find(|s| s.x5t_s256 == x5t)
        .ok_or_else(|| format!("manifest signer x5t#S256 {x5t} is not a known Microchip signer"))?;
    match (&protected.kid, &signer.kid) {
        (Some(kid), Some(expected)) if kid == expected => {}
        (Some(kid), _) => {
            return Err(format!(
                "JWS kid {kid} does not match the subject key identifier of {:?}",
                signer.name
            ));
        }
        (None, _) => return Err("JWS protected header has no kid".to_owned()),
    }
    if signer.test && !allow_test {
        return Err(format!(
            "signed by the test signer {:?}, whose private key is public (accepted only with --allow-test-roots)",
            signer.name
        ));
    }
    let signature = b64
        .decode(entry.signature.trim_end_matches('='))
        .map_err(|e| format!("JWS signature is not base64url: {e}"))?;
    if signature.len() != 64 {
        return Err(format!(
            "JWS signature is {} bytes, ES256 needs 64 (r || s)",
            signature.len()
        ));
    }
    let mut input = Vec::with_capacity(entry.protected.len() + 1 + entry.payload.len());
    input.extend_from_slice(entry.protected.as_bytes());
    input.push(b'.');
    input.extend_from_slice(entry.payload.as_bytes());
    signer.key.verify_sig(&input, &signature).map_err(|_| {
        format!(
            "JWS signature does not verify with manifest signer {:?}",
            signer.name
        )
    })?;
    match (&entry.header_unique_id, &entry.payload_unique_id) {
        (Some(h), Some(p)) if h == p => {}
        (Some(h), Some(p)) => {
            return Err(format!(
                "header uniqueId {h} differs from the signed payload uniqueId {p}"
            ));
        }
        (None, _) => return Err("entry has no header.uniqueId".to_owned()),
        (_, None) => return Err("signed payload has no uniqueId".to_owned()),
    }
    let ts = entry
        .provisioning_timestamp
        .as_deref()
        .ok_or("signed payload has no provisioningTimestamp")?;
    let at = OffsetDateTime::parse(ts, &Rfc3339)
        .map_err(|e| format!("provisioningTimestamp {ts:?} is not RFC 3339: {e}"))?;
    if at < signer.not_before {
        return Err(format!(
            "provisioningTimestamp {ts} precedes the validity of manifest signer {:?} (not before {})",
            signer.name,
            date(signer.not_before)
        ));
    }
    if at > signer.not_after {
        return Err(format!(
            "provisioningTimestamp {ts} is after manifest signer {:?} expired ({})",
            signer.name,
            date(signer.not_after)
        ));
    }
    Ok(signer.name.clone())
}
