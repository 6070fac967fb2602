//! Microchip Trust Platform manifest: a JSON array of flattened JWS, streamed entry by entry.
//! The JWS itself is checked by the verifier ([`crate::trust::ManifestEntry`]); here each entry
//! is decoded into its device certificates (`publicKeySet.keys[].x5c[0]`, with `x5c[1]` as
//! chain) or, for version 2 "lite" entries, a record without certificate.

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::json_array::{ArrayScanner, ScanError};
use super::{EntryError, Imported, Limits, Record, source};
use crate::identity::{DeviceIdentity, Source, VendorAttributes};
use crate::trust::ManifestEntry;

#[derive(Deserialize)]
struct Jws {
    payload: String,
    protected: String,
    signature: String,
    #[serde(default)]
    header: Option<Header>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "uniqueId")]
    unique_id: Option<String>,
}

#[derive(Deserialize)]
struct SecureElement {
    version: Option<serde_json::Value>,
    #[serde(rename = "partNumber")]
    part_number: Option<String>,
    #[serde(rename = "groupId")]
    group_id: Option<String>,
    #[serde(rename = "provisioningTimestamp")]
    provisioning_timestamp: Option<String>,
    #[serde(rename = "uniqueId")]
    unique_id: Option<String>,
    #[serde(rename = "publicKeySet")]
    public_key_set: Option<KeySet>,
}

#[derive(Deserialize)]
struct KeySet {
    #[serde(default)]
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    x: Option<String>,
    y: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

pub(crate) struct MicrochipImporter {
    scanner: ArrayScanner,
    name: String,
    pending: std::vec::IntoIter<Result<Imported, EntryError>>,
    done: bool,
}

impl MicrochipImporter {
    pub(crate) fn new(
        reader: Box<dyn std::io::BufRead + Send>,
        name: String,
        limits: Limits,
    ) -> Self {
        MicrochipImporter {
            scanner: ArrayScanner::new(reader, limits.max_line),
            name,
            pending: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl Iterator for MicrochipImporter {
    type Item = Result<Imported, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.pending.next() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            match self.scanner.next_element() {
                Ok(Some(el)) => {
                    let src = source(&self.name, Some(el.line), Some(el.index));
                    self.pending = decode_entry(&el.bytes, src).into_iter();
                }
                Ok(None) => {
                    self.done = true;
                }
                Err(ScanError::TooLarge { index, line, max }) => {
                    return Some(Err(EntryError::at(
                        source(&self.name, Some(line), Some(index)),
                        format!("entry larger than {max} bytes, skipped"),
                    )));
                }
                Err(ScanError::Syntax { line, message }) => {
                    self.done = true;
                    return Some(Err(EntryError::fatal(
                        source(&self.name, Some(line), None),
                        format!("manifest unreadable from here: {message}"),
                    )));
                }
                Err(ScanError::Io(e)) => {
                    self.done = true;
                    return Some(Err(EntryError::fatal(
                        source(&self.name, None, None),
                        format!("read error: {e}"),
                    )));
                }
            }
        }
    }
}

fn decode_entry(bytes: &[u8], src: Source) -> Vec<Result<Imported, EntryError>> {
    let err = |msg: String| vec![Err(EntryError::at(src.clone(), msg))];
    let jws: Jws = match serde_json::from_slice(bytes) {
        Ok(j) => j,
        Err(e) => return err(format!("not a flattened JWS object: {e}")),
    };
    let payload_json = match base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jws.payload.trim_end_matches('='))
    {
        Ok(p) => p,
        Err(e) => return err(format!("JWS payload is not base64url: {e}")),
    };
    let se: SecureElement = match serde_json::from_slice(&payload_json) {
        Ok(s) => s,
        Err(e) => {
            return err(format!(
                "JWS payload is not a SecureElement JSON object: {e}"
            ));
        }
    };
    let manifest = Arc::new(ManifestEntry {
        protected: jws.protected,
        payload: jws.payload,
        signature: jws.signature,
        header_unique_id: jws.header.and_then(|h| h.unique_id),
        payload_unique_id: se.unique_id.clone(),
        provisioning_timestamp: se.provisioning_timestamp.clone(),
    });
    let vendor = VendorAttributes {
        vendor: Some("microchip".to_owned()),
        unique_id: se.unique_id.clone(),
        group_id: se.group_id,
        part_number: se.part_number,
        provisioning_timestamp: se.provisioning_timestamp,
        ..VendorAttributes::default()
    };
    let version = se
        .version
        .as_ref()
        .map(|v| v.to_string().trim_matches('"').to_owned())
        .unwrap_or_else(|| "?".to_owned());
    let keys: Vec<Jwk> = se
        .public_key_set
        .map(|k| k.keys)
        .unwrap_or_default()
        .into_iter()
        .filter(|k| !k.x5c.is_empty())
        .collect();
    if keys.is_empty() {
        let reason = if version == "2" {
            "version 2 (lite) manifest entry: no keys or certificates, only the uniqueId; nothing to provision (the device certificates must come from elsewhere)".to_owned()
        } else {
            format!("version {version} manifest entry has no certificate (no x5c in publicKeySet)")
        };
        return vec![Ok(Imported::NoCertificate {
            source: src,
            vendor,
            manifest: Some(manifest),
            reason,
        })];
    }
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = Vec::new();
    for key in keys {
        let kid = key.kid.clone().unwrap_or_else(|| "?".to_owned());
        let ders: Result<Vec<Vec<u8>>, _> = key.x5c.iter().map(|c| std_b64.decode(c)).collect();
        let ders = match ders {
            Ok(d) => d,
            Err(e) => {
                out.push(Err(EntryError::at(
                    src.clone(),
                    format!("key {kid}: x5c is not base64: {e}"),
                )));
                continue;
            }
        };
        let mut ders = ders.into_iter();
        let Some(leaf) = ders.next() else { continue };
        let identity = match DeviceIdentity::from_der(leaf, src.clone()) {
            Ok(id) => id,
            Err(e) => {
                out.push(Err(EntryError::at(
                    src.clone(),
                    format!(
                        "key {kid}: x5c[0] {}",
                        super::pem::strip_source(e.message(), "")
                    ),
                )));
                continue;
            }
        };
        let mut record = Record::new(identity);
        record.identity.vendor = vendor.clone();
        record.chain = ders.map(Arc::from).collect();
        record.manifest = Some(Arc::clone(&manifest));
        record.stated_key = match (&key.x, &key.y) {
            (Some(x), Some(y)) => match (
                url_b64.decode(x.trim_end_matches('=')),
                url_b64.decode(y.trim_end_matches('=')),
            ) {
                (Ok(x), Ok(y)) => {
                    let mut p = vec![0x04];
                    p.extend(x);
                    p.extend(y);
                    Some(p)
                }
                _ => {
                    record
                        .problems
                        .push(format!("key {kid}: JWK x/y are not base64url"));
                    None
                }
            },
            _ => {
                record.problems.push(format!("key {kid}: JWK has no x/y"));
                None
            }
        };
        if record.chain.is_empty() {
            record
                .problems
                .push(format!("key {kid}: x5c has no signer certificate (x5c[1])"));
        }
        if let Some(uid) = &se.unique_id {
            record.vendor_key = Some(format!("microchip:{}:{kid}", uid.to_ascii_lowercase()));
        }
        out.push(Ok(Imported::Cert(Box::new(record))));
    }
    out
}
