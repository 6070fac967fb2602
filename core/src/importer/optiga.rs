//! DER files and OPTIGA object data (binary or hex; bare DER or wrapped in the TLS identity
//! tag `C0 | len(2) | chain len(3) | cert len(3) | DER ...`), and OPTIGA object dumps (JSON
//! keyed by OID, `data` in hex; chipID from the E0C2 coprocessor UID).

use std::io::{BufRead, Read};
use std::sync::Arc;

use serde::Deserialize;

use super::{EntryError, ImportOptions, Imported, Limits, Record, source};
use crate::identity::DeviceIdentity;

/// A DER file (one or more concatenated certificates) or OPTIGA object data.
pub(crate) fn binary(
    reader: Box<dyn BufRead + Send>,
    name: String,
    limits: Limits,
    optiga: bool,
) -> std::vec::IntoIter<Result<Imported, EntryError>> {
    let mut bytes = Vec::new();
    let cap = limits.max_entry;
    if let Err(e) = reader.take(cap + 1).read_to_end(&mut bytes) {
        return vec![Err(EntryError::fatal(
            source(&name, None, None),
            format!("read error: {e}"),
        ))]
        .into_iter();
    }
    if bytes.len() as u64 > cap {
        return vec![Err(EntryError::fatal(
            source(&name, None, None),
            format!("larger than {cap} bytes"),
        ))]
        .into_iter();
    }
    let items = if optiga {
        match decode_object(&bytes) {
            Ok(certs) => certificates(&name, certs, None),
            Err(msg) => vec![Err(EntryError::fatal(source(&name, None, None), msg))],
        }
    } else {
        match split_der(&bytes) {
            Ok(certs) => {
                let n = certs.len();
                certs
                    .into_iter()
                    .enumerate()
                    .map(|(i, der)| {
                        let src = source(&name, None, (n > 1).then_some(i as u64));
                        DeviceIdentity::from_der(der.to_vec(), src.clone())
                            .map(|id| Imported::Cert(Box::new(Record::new(id))))
                            .map_err(|e| {
                                EntryError::at(src, super::pem::strip_source(e.message(), &name))
                            })
                    })
                    .collect()
            }
            Err(msg) => vec![Err(EntryError::fatal(source(&name, None, None), msg))],
        }
    };
    items.into_iter()
}

/// Certificates of one OPTIGA object: the first is the device, the rest its chain.
fn certificates(
    name: &str,
    certs: Vec<Vec<u8>>,
    attrs: Option<(&str, Option<&str>)>,
) -> Vec<Result<Imported, EntryError>> {
    let mut certs = certs.into_iter();
    let Some(leaf) = certs.next() else {
        return vec![Err(EntryError::fatal(
            source(name, None, None),
            "OPTIGA object holds no certificate",
        ))];
    };
    let src = source(name, None, None);
    match DeviceIdentity::from_der(leaf, src.clone()) {
        Ok(identity) => {
            let mut record = Record::new(identity);
            record.chain = certs.map(Arc::from).collect();
            if let Some((slot, chip)) = attrs {
                let v = &mut record.identity.vendor;
                v.vendor = Some("infineon".to_owned());
                v.slot = Some(slot.to_ascii_uppercase());
                v.chip_id = chip.map(str::to_owned);
                if let Some(chip) = chip {
                    record.vendor_key =
                        Some(format!("infineon:{chip}:{}", slot.to_ascii_uppercase()));
                }
            }
            vec![Ok(Imported::Cert(Box::new(record)))]
        }
        Err(e) => vec![Err(EntryError::at(
            src,
            super::pem::strip_source(e.message(), name),
        ))],
    }
}

/// Splits concatenated DER certificates by their outer SEQUENCE lengths.
pub(crate) fn split_der(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = der_len(rest).ok_or_else(|| {
            format!(
                "not DER at byte {}: no complete SEQUENCE (truncated or garbage)",
                bytes.len() - rest.len()
            )
        })?;
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    if out.is_empty() {
        return Err("empty".to_owned());
    }
    Ok(out)
}

/// Total length (header + content) of the DER SEQUENCE at the start of `b`, if complete.
fn der_len(b: &[u8]) -> Option<usize> {
    if b.first() != Some(&0x30) {
        return None;
    }
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    (total <= b.len()).then_some(total)
}

/// OPTIGA object data as certificates: hex text is decoded; the TLS identity tag is unwrapped.
pub(crate) fn decode_object(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    // Hex text can start with "30" or "0x", whose first byte is 0x30 too: decide by content.
    let raw = if is_hex_text(bytes) {
        decode_hex_text(bytes)?
    } else {
        bytes.to_vec()
    };
    match raw.first() {
        Some(0x30) => {
            let certs = split_der(&raw)?;
            Ok(certs.into_iter().map(<[u8]>::to_vec).collect())
        }
        Some(0xC0) => unwrap_identity_tag(&raw),
        Some(b) => Err(format!(
            "OPTIGA object starts with 0x{b:02X}: neither a certificate (0x30) nor a TLS identity tag (0xC0)"
        )),
        None => Err("OPTIGA object is empty".to_owned()),
    }
}

/// Hex digits with whitespace, `0x`, `,` or `:` separators only.
pub(crate) fn is_hex_text(bytes: &[u8]) -> bool {
    bytes.iter().any(u8::is_ascii_hexdigit)
        && bytes.iter().all(|b| {
            b.is_ascii_hexdigit()
                || b.is_ascii_whitespace()
                || matches!(b, b',' | b':' | b'x' | b'X')
        })
}

fn decode_hex_text(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not hex text (not UTF-8)".to_owned())?;
    let mut digits = String::with_capacity(text.len());
    for token in text.split(|c: char| c.is_whitespace() || c == ',' || c == ':') {
        let t = token
            .strip_prefix("0x")
            .or_else(|| token.strip_prefix("0X"))
            .unwrap_or(token);
        digits.push_str(t);
    }
    hex::decode(&digits).map_err(|e| format!("not hex text: {e}"))
}

/// `C0 | len(2) | chain len(3) | (cert len(3) | cert)*`.
fn unwrap_identity_tag(raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let be = |b: &[u8]| b.iter().fold(0usize, |acc, x| (acc << 8) | *x as usize);
    if raw.len() < 6 {
        return Err("TLS identity tag truncated (shorter than its header)".to_owned());
    }
    let tag_len = be(&raw[1..3]);
    let body = raw.get(3..3 + tag_len).ok_or_else(|| {
        format!(
            "TLS identity tag says {tag_len} bytes, only {} follow",
            raw.len() - 3
        )
    })?;
    let chain_len = be(body
        .get(..3)
        .ok_or("TLS identity tag too short for its chain length")?);
    let mut chain = body
        .get(3..3 + chain_len)
        .ok_or_else(|| format!("TLS identity chain length {chain_len} exceeds the tag"))?;
    let mut out = Vec::new();
    while !chain.is_empty() {
        if chain.len() < 3 {
            return Err("TLS identity certificate length truncated".to_owned());
        }
        let len = be(&chain[..3]);
        let cert = chain
            .get(3..3 + len)
            .ok_or_else(|| format!("TLS identity certificate length {len} exceeds the chain"))?;
        out.push(cert.to_vec());
        chain = &chain[3 + len..];
    }
    if out.is_empty() {
        return Err("TLS identity tag holds no certificate".to_owned());
    }
    Ok(out)
}

#[derive(Deserialize)]
struct DumpObject {
    #[serde(default)]
    data: String,
}

/// An OPTIGA object dump (JSON object keyed by lower-case OID).
pub(crate) fn dump(
    reader: Box<dyn BufRead + Send>,
    name: String,
    opts: &ImportOptions,
) -> std::vec::IntoIter<Result<Imported, EntryError>> {
    let fail =
        |msg: String| vec![Err(EntryError::fatal(source(&name, None, None), msg))].into_iter();
    let mut bytes = Vec::new();
    let cap = opts.limits.max_entry;
    if let Err(e) = reader.take(cap + 1).read_to_end(&mut bytes) {
        return fail(format!("read error: {e}"));
    }
    if bytes.len() as u64 > cap {
        return fail(format!("larger than {cap} bytes"));
    }
    let objects: std::collections::BTreeMap<String, DumpObject> =
        match serde_json::from_slice(&bytes) {
            Ok(o) => o,
            Err(e) => return fail(format!("not an OPTIGA object dump: {e}")),
        };
    let get = |oid: &str| {
        objects
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(oid))
            .map(|(_, v)| v.data.as_str())
            .filter(|d| !d.is_empty())
    };
    let chip_id = get("e0c2").and_then(|hex_uid| {
        let uid = hex::decode(hex_uid).ok()?;
        uid.get(11..21).map(hex::encode_upper)
    });
    let mut items = Vec::new();
    for slot in ["E0E0", "E0E1", "E0E2"] {
        if !opts.slot.includes(slot) {
            continue;
        }
        let Some(data) = get(slot) else { continue };
        let slot_name = format!("{name}!{slot}");
        if data.bytes().all(|b| b == b'0') {
            items.push(Ok(Imported::Skipped {
                source: source(&slot_name, None, None),
                reason: format!("slot {slot} is empty (all zero)"),
            }));
            continue;
        }
        match decode_object(data.as_bytes()) {
            Ok(certs) => items.extend(certificates(
                &slot_name,
                certs,
                Some((slot, chip_id.as_deref())),
            )),
            Err(msg) => items.push(Err(EntryError::at(source(&slot_name, None, None), msg))),
        }
    }
    if !items
        .iter()
        .any(|i| matches!(i, Ok(Imported::Cert(_)) | Err(_)))
    {
        return fail(format!(
            "no certificate object for slot {} in the dump",
            opts.slot
        ));
    }
    items.into_iter()
}
