//! idbridge's own manifest: JSON Lines. Line 1 is a [`ManifestHeader`], every further line a
//! [`ManifestDevice`]. Described in `docs/formats.md`; the engine writes it, this reads it.

use serde::{Deserialize, Serialize};

use super::lines::{LineError, LineReader};
use super::{EntryError, Imported, Limits, Record, source};
use crate::identity::{DeviceId, DeviceIdentity, Source, VendorAttributes};

/// `format` of the header line.
pub const MANIFEST_FORMAT: &str = "idbridge-manifest";
/// The version this build reads and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// Line 1 of an idbridge manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The batch tag (`batch:<12 hex>`, never the batch ID itself), or null.
    pub batch: Option<String>,
    /// When it was written, RFC 3339.
    pub created: String,
    /// How many device lines follow, or null when unknown.
    pub devices: Option<u64>,
}

/// A device line of an idbridge manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDevice {
    /// Lowercase hex SHA-256 of the certificate DER.
    pub device_id: String,
    /// The certificate, PEM.
    pub cert: String,
    /// Vendor attributes.
    #[serde(default)]
    pub vendor: VendorAttributes,
    /// Where the device originally came from.
    #[serde(default)]
    pub source: Source,
}

pub(crate) struct ManifestImporter {
    lines: LineReader,
    name: String,
    header_seen: bool,
    declared: Option<u64>,
    count: u64,
    done: bool,
}

impl ManifestImporter {
    pub(crate) fn new(
        reader: Box<dyn std::io::BufRead + Send>,
        name: String,
        limits: Limits,
    ) -> Self {
        ManifestImporter {
            lines: LineReader::new(reader, limits.max_line),
            name,
            header_seen: false,
            declared: None,
            count: 0,
            done: false,
        }
    }
}

impl Iterator for ManifestImporter {
    type Item = Result<Imported, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let (no, line) = match self.lines.next_line() {
                Ok(Some((no, line))) => (no, line.to_vec()),
                Ok(None) => {
                    self.done = true;
                    if !self.header_seen {
                        return Some(Err(EntryError::fatal(
                            source(&self.name, None, None),
                            "empty manifest",
                        )));
                    }
                    if let Some(n) = self.declared
                        && n != self.count
                    {
                        return Some(Err(EntryError::fatal(
                            source(&self.name, None, None),
                            format!(
                                "header declares {n} devices but {} lines follow (truncated?)",
                                self.count
                            ),
                        )));
                    }
                    return None;
                }
                Err(e @ LineError::TooLong { .. }) => {
                    if let LineError::TooLong { line, .. } = e {
                        self.count += 1;
                        return Some(Err(EntryError::at(
                            source(&self.name, Some(line), None),
                            e.to_string(),
                        )));
                    }
                    continue;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(EntryError::fatal(
                        source(&self.name, None, None),
                        e.to_string(),
                    )));
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let src = source(&self.name, Some(no), None);
            if !self.header_seen {
                self.header_seen = true;
                let header: ManifestHeader = match serde_json::from_slice(&line) {
                    Ok(h) => h,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(EntryError::fatal(
                            src,
                            format!("header line is not a manifest header: {e}"),
                        )));
                    }
                };
                if header.format != MANIFEST_FORMAT {
                    self.done = true;
                    return Some(Err(EntryError::fatal(
                        src,
                        format!("format {:?} is not {MANIFEST_FORMAT:?}", header.format),
                    )));
                }
                if header.version != MANIFEST_VERSION {
                    self.done = true;
                    return Some(Err(EntryError::fatal(
                        src,
                        format!(
                            "manifest version {} is not supported (this build reads {MANIFEST_VERSION})",
                            header.version
                        ),
                    )));
                }
                self.declared = header.devices;
                continue;
            }
            self.count += 1;
            let device: ManifestDevice = match serde_json::from_slice(&line) {
                Ok(d) => d,
                Err(e) => return Some(Err(EntryError::at(src, format!("not a device line: {e}")))),
            };
            let der = match ::pem::parse(device.cert.as_bytes()) {
                Ok(p) if p.tag() == "CERTIFICATE" => p.into_contents(),
                Ok(p) => {
                    return Some(Err(EntryError::at(
                        src,
                        format!("cert is a {:?} PEM block", p.tag()),
                    )));
                }
                Err(e) => return Some(Err(EntryError::at(src, format!("cert is not PEM: {e}")))),
            };
            let identity = match DeviceIdentity::from_der(der, src.clone()) {
                Ok(i) => i,
                Err(e) => {
                    return Some(Err(EntryError::at(
                        src,
                        super::pem::strip_source(e.message(), ""),
                    )));
                }
            };
            let mut record = Record::new(identity);
            match device.device_id.parse::<DeviceId>() {
                Ok(id) if id == record.identity.device_id => {}
                _ => record.problems.push(format!(
                    "device_id {:?} does not match the certificate (SHA-256 {})",
                    device.device_id, record.identity.device_id
                )),
            }
            record.vendor_key = vendor_key(&device.vendor);
            record.identity.vendor = device.vendor;
            if !device.source.file.is_empty() {
                record
                    .warnings
                    .push(format!("originally from {}", device.source));
            }
            return Some(Ok(Imported::Cert(Box::new(record))));
        }
    }
}

/// The vendor identifier a device claims, from its attributes.
pub(crate) fn vendor_key(v: &VendorAttributes) -> Option<String> {
    if let (Some(chip), Some(slot)) = (&v.chip_id, &v.slot) {
        return Some(format!(
            "infineon:{}:{}",
            chip.to_ascii_uppercase(),
            slot.to_ascii_uppercase()
        ));
    }
    if let Some(mac) = &v.mac {
        return Some(format!("espressif:{}", mac.to_ascii_uppercase()));
    }
    None
}
