//! The `/interop` request body, parsed and validated: pure functions over bytes (std,
//! `serde_json`, `base64` and `pem` only), so the fuzz target `interop_request` compiles this
//! very file (docs/adr/1001-fuzzing-root-crate-parsers-by-path.md). The handlers in
//! [`super::api`] call these, then do the work.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// Longest `ref` accepted, characters (after control characters are removed).
pub const MAX_REF_CHARS: usize = 256;

/// One certificate of a request, decoded.
#[derive(Debug, Clone)]
pub struct Item {
    /// The caller's `ref`.
    pub reference: String,
    /// The certificate DER.
    pub der: Arc<[u8]>,
}

/// The `action` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `info`.
    Info,
    /// `provision`.
    Provision,
    /// `deprovision` (extension).
    Deprovision,
    /// `status` (extension).
    Status,
    /// `message` (not implemented, answered as Infineon's receivers do).
    Message,
}

/// A validated certificate entry: decoded DER, or the item error it gets.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Decoded.
    Ok(Item),
    /// Base64, but not a PEM certificate: answered per item, never sent on.
    Undecodable(String),
}

/// What a `status` request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusQuery {
    /// The items of a job.
    Job(String),
    /// Devices by fingerprint (lowercase hex SHA-256 of the DER).
    Fingerprints(Vec<String>),
}

/// Parses the body as a JSON object with a known `action`. `Err` is the 400 message.
pub fn parse_body(body: &[u8]) -> Result<(Action, Value), String> {
    let req: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Some(obj) = req.as_object() else {
        return Err("\"value\" must be of type object".into());
    };
    let action = match obj.get("action").map(|a| a.as_str()) {
        None => return Err("\"action\" is required".into()),
        Some(Some("info")) => Action::Info,
        Some(Some("provision")) => Action::Provision,
        Some(Some("deprovision")) => Action::Deprovision,
        Some(Some("status")) => Action::Status,
        Some(Some("message")) => Action::Message,
        Some(_) => {
            return Err(
                "\"action\" must be one of [provision, info, status, message, deprovision]".into(),
            );
        }
    };
    Ok((action, req))
}

/// Validates `certs` like Infineon's Joi schema (every violation listed, joined by ", ");
/// more than `max` items is refused before any is looked at.
pub fn parse_certs(req: &Value, max: usize) -> Result<Vec<Entry>, String> {
    let certs = match req.get("certs") {
        None => return Err("\"certs\" is required".into()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"certs\" must be an array".into()),
    };
    if certs.len() > max {
        return Err(format!(
            "\"certs\" has {} items; this receiver takes at most {max} per request",
            certs.len()
        ));
    }
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        if !c.is_object() {
            errors.push(format!("\"certs[{i}]\" must be of type object"));
            continue;
        }
        let reference = match c.get("ref") {
            None => {
                errors.push(format!("\"certs[{i}].ref\" is required"));
                None
            }
            Some(Value::String(r)) if r.chars().count() > MAX_REF_CHARS => {
                errors.push(format!(
                    "\"certs[{i}].ref\" length must be less than or equal to {MAX_REF_CHARS} characters long"
                ));
                None
            }
            Some(Value::String(r)) if !clean_text(r, MAX_REF_CHARS).is_empty() => {
                Some(clean_text(r, MAX_REF_CHARS))
            }
            Some(Value::String(_)) => {
                errors.push(format!("\"certs[{i}].ref\" is not allowed to be empty"));
                None
            }
            Some(_) => {
                errors.push(format!("\"certs[{i}].ref\" must be a string"));
                None
            }
        };
        let decoded = match c.get("cert") {
            None => {
                errors.push(format!("\"certs[{i}].cert\" is required"));
                None
            }
            Some(Value::String(b)) => match STANDARD.decode(b) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    errors.push(format!("\"certs[{i}].cert\" must be a valid base64 string"));
                    None
                }
            },
            Some(_) => {
                errors.push(format!("\"certs[{i}].cert\" must be a string"));
                None
            }
        };
        if let (Some(reference), Some(bytes)) = (reference, decoded) {
            out.push(match pem_der(&bytes) {
                Some(der) => Entry::Ok(Item {
                    reference,
                    der: der.into(),
                }),
                None => Entry::Undecodable(reference),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join(", "))
    }
}

/// Validates a `status` request: a `job` id, or at most `max` fingerprints (counted before
/// any is looked at).
pub fn parse_status(req: &Value, max: usize) -> Result<StatusQuery, String> {
    if let Some(job) = req.get("job") {
        return match job.as_str() {
            Some(id) => Ok(StatusQuery::Job(id.to_owned())),
            None => Err("\"job\" must be a string".into()),
        };
    }
    let Some(fps) = req.get("fingerprints") else {
        return Err("\"job\" or \"fingerprints\" is required".into());
    };
    let Some(arr) = fps.as_array() else {
        return Err("\"fingerprints\" must be an array".into());
    };
    if arr.len() > max {
        return Err("too many fingerprints".into());
    }
    let mut list = Vec::with_capacity(arr.len());
    for (i, f) in arr.iter().enumerate() {
        match f.as_str() {
            Some(f) if f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()) => {
                list.push(f.to_ascii_lowercase())
            }
            _ => {
                return Err(format!(
                    "\"fingerprints[{i}]\" must be 64 hex characters (SHA-256 of the DER)"
                ));
            }
        }
    }
    Ok(StatusQuery::Fingerprints(list))
}

/// The DER of the first CERTIFICATE block of a PEM text (LF or CRLF).
pub fn pem_der(bytes: &[u8]) -> Option<Vec<u8>> {
    let blocks = pem::parse_many(bytes).ok()?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
}

/// A caller-supplied string made safe for the journal, logs and terminals: control and
/// bidirectional-override characters removed, at most `max_chars` characters kept.
pub fn clean_text(s: &str, max_chars: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .take(max_chars)
        .collect()
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}
